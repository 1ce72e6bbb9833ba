"""Mixture-of-Experts routing: capture the experts each token was sent to, and replay them.

A Qwen3-MoE layer's router computes logits z = h @ W_r.T over E experts, p = softmax(z),
picks the top-k experts of p and weights their outputs by g = p[top-k] (renormalised to
sum to 1 when the model's `norm_topk_prob` is set, as Qwen3-MoE does). Two forward passes
over the same tokens with slightly different numbers (a bf16 inference engine vs the fp32
trainer; the policy after one optimizer step vs before) can pick different experts for a
token, and a different expert set is a different function: the log-prob ratios the RL
objectives rely on then move for reasons that are not the policy update.

Routing replay (Zheng et al. 2025, "Stabilizing Reinforcement Learning with LLMs:
Formulation and Practices", arXiv:2512.01374, Sec. on Routing Replay; R3 from Ma et al.
2025, "Stabilizing MoE Reinforcement Learning by Aligning Training and Inference Routers",
arXiv:2510.11370) fixes the expert *selection* of a forward pass to a recorded one:

    e_t   = recorded top-k expert indices of token t at this layer       (k,)
    g_t,i = p_t,e_i            for i < k, from the live router's p = softmax(z_t)
    g_t   = g_t / sum_i g_t,i  when the model renormalises its top-k weights

Only the discrete choice is replayed; the gate weights are recomputed from the current
router logits, so the router still receives gradient (for Qwen3-MoE this is R3's
"softmax over the router logits masked to the replayed experts"). Checked against the
transformers 5 router (`Qwen3MoeTopKRouter.forward`: softmax in fp32, top-k, renormalise,
cast back) so that replaying a forward's own routing reproduces it bit for bit.

`MoERouting(model)` hooks every router module of the model (forward hooks: the model code
is not patched, and PEFT wrappers around a router still call it). Inside
`with routing.session(replay=routes):`

    - every forward pass records the expert indices it used, per layer; `take()` returns
      them as one (n_tokens, L, k) tensor for the last forward (tokens in the flattened
      (B, T) order of the input), in int8 when E <= 128, else int16;
    - with `replay` (a (B, T, L, k) tensor, or (n_tokens, L, k)), each router uses the
      given experts instead of its own top-k; a token whose row holds -1 routes naturally
      (padding, positions an engine never saw). Keep the session open through
      `backward()`: activation checkpointing re-runs the routers there.

Routes are position-major ((T, L, k) per sequence) so a batch of them pads like input_ids.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from posttrain.config import ConfigError

# Router classes of transformers 5 whose forward is exactly: p = softmax(z) in fp32,
# (values, indices) = topk(p, k), values /= values.sum() if normalising. The value says
# when they normalise: "attr" = the module's norm_topk_prob, True = always.
ROUTERS: dict[str, str | bool] = {
    "Qwen3MoeTopKRouter": "attr",
    "Qwen2MoeTopKRouter": "attr",
    "OlmoeTopKRouter": "attr",
    "Qwen3NextTopKRouter": "attr",
    "MixtralTopKRouter": True,
    "Qwen3VLMoeTextTopKRouter": True,
}


def route_dtype(num_experts: int) -> torch.dtype:
    """int8 when every index and the -1 sentinel fit (E <= 128), else int16."""
    if num_experts <= 128:
        return torch.int8
    if num_experts <= 32768:
        return torch.int16
    raise ValueError(f"{num_experts} experts do not fit int16 routes")


def find_routers(model: nn.Module) -> list[nn.Module]:
    """The model's router modules in layer order (module registration order)."""
    return [m for m in model.modules() if type(m).__name__ in ROUTERS]


def is_moe(model: nn.Module) -> bool:
    return bool(find_routers(model))


@dataclass
class _Layer:
    module: nn.Module
    normalise: bool
    handle: torch.utils.hooks.RemovableHandle | None = None


class MoERouting:
    """Capture and replay of a model's MoE routing (see the module docstring)."""

    def __init__(self, model: nn.Module):
        routers = find_routers(model)
        if not routers:
            kinds = sorted({type(m).__name__ for m in model.modules() if "Router" in type(m).__name__})
            extra = f" (found unsupported router classes {kinds})" if kinds else ""
            raise ConfigError(
                f"rl.routing_replay: {type(model).__name__} has no supported MoE router{extra}; "
                f"routing replay needs a mixture-of-experts model such as builtin:tiny-moe or "
                f"Qwen3-MoE (supported routers: {', '.join(ROUTERS)}); set rl.routing_replay=none")
        ks = {int(m.top_k) for m in routers}
        es = {int(m.num_experts) for m in routers}
        if len(ks) != 1 or len(es) != 1:
            raise ConfigError(f"routing replay needs one top_k and expert count in every layer, got {ks}, {es}")
        self.top_k, self.num_experts = ks.pop(), es.pop()
        self.num_layers = len(routers)
        self.dtype = route_dtype(self.num_experts)
        self._layers = []
        for m in routers:
            rule = ROUTERS[type(m).__name__]
            self._layers.append(_Layer(m, bool(getattr(m, "norm_topk_prob", False)) if rule == "attr" else rule))
        self._active = False
        self._replay: Tensor | None = None  # (n_tokens, L, k) long on the model's device
        self._last: list[Tensor | None] = [None] * self.num_layers
        for i, layer in enumerate(self._layers):
            layer.handle = layer.module.register_forward_hook(self._hook(i))

    def remove(self) -> None:
        """Detach the hooks (the model routes as if never hooked)."""
        for layer in self._layers:
            if layer.handle is not None:
                layer.handle.remove()
                layer.handle = None

    def bytes_per_token(self) -> int:
        return self.num_layers * self.top_k * torch.empty((), dtype=self.dtype).element_size()

    def empty(self, *shape: int) -> Tensor:
        """A (*shape, L, k) route tensor filled with -1 (route naturally)."""
        return torch.full((*shape, self.num_layers, self.top_k), -1, dtype=self.dtype)

    @contextlib.contextmanager
    def session(self, replay: Tensor | None = None) -> Iterator["MoERouting"]:
        """Record every forward's routing; replay `replay` ((B, T, L, k) or (n, L, k)) if given."""
        if self._active:
            raise RuntimeError("MoERouting.session is not re-entrant")
        if replay is not None:
            if tuple(replay.shape[-2:]) != (self.num_layers, self.top_k):
                raise ValueError(f"replay routes must end in (L, k) = ({self.num_layers}, {self.top_k}), "
                                 f"got {tuple(replay.shape)}")
            self._replay = replay.reshape(-1, self.num_layers, self.top_k).long()
        self._active = True
        self._last = [None] * self.num_layers
        try:
            yield self
        finally:
            self._active, self._replay = False, None
            self._last = [None] * self.num_layers

    def take(self) -> Tensor:
        """(n_tokens, L, k) routes the last forward used, on CPU, in `self.dtype`."""
        if any(t is None for t in self._last):
            raise RuntimeError("no forward pass was recorded in this session")
        out = torch.stack(self._last, dim=1).cpu()  # (n, L, k)
        self._last = [None] * self.num_layers
        return out

    def _hook(self, layer: int):
        def hook(module, args, output):
            if not self._active:
                return None
            logits, scores, idx = output  # (n, E), (n, k), (n, k)
            if self._replay is not None:
                given = self._replay[:, layer].to(idx.device)  # (n, k)
                if given.shape != idx.shape:
                    raise ValueError(f"replay routes cover {given.shape[0]} tokens, this forward has "
                                     f"{idx.shape[0]} (routes must align with the flattened input)")
                use = (given >= 0).all(dim=-1, keepdim=True)  # (n, 1): -1 rows route naturally
                idx = torch.where(use, given, idx)
                # the gate weights of the replayed experts from the live router: gradient flows
                probs = torch.softmax(logits.float(), dim=-1)  # (n, E)
                w = probs.gather(-1, idx)  # (n, k)
                if self._layers[layer].normalise:
                    w = w / w.sum(dim=-1, keepdim=True)
                scores = w.to(scores.dtype)
                output = (logits, scores, idx)
            self._last[layer] = idx.detach().to(self.dtype)
            return output
        return hook


def expert_sets_differ(a: Tensor, b: Tensor) -> Tensor:
    """(..., L) bool: whether the expert *sets* of two (..., L, k) route tensors differ per
    layer (the order of the k indices does not matter; -1 rows compare like any other)."""
    return (a.long().sort(dim=-1).values != b.long().sort(dim=-1).values).any(dim=-1)


class RouteCollector:
    """Routes of one engine batch, aligned to sequence positions.

    The engine runs one prefill over left-padded prompts, then one decode forward per new
    token for the rows still live. Row b's routes are (P_b + C_b - 1, L, k): its prompt
    positions and every completion token but the last, which is never fed back (the
    position whose output would follow the final token). These are exactly the positions
    whose outputs the trainer's labels read."""

    def __init__(self, n_rows: int):
        self.chunks: list[list[Tensor]] = [[] for _ in range(n_rows)]

    def prefill(self, routes: Tensor, attention_mask: Tensor) -> None:
        """routes (B * L_pad, L, k) of the prefill; attention_mask (B, L_pad), left padded."""
        B, L_pad = attention_mask.shape
        per_row = routes.reshape(B, L_pad, *routes.shape[1:])
        lengths = attention_mask.sum(dim=1).tolist()
        for b, n in enumerate(lengths):
            self.chunks[b].append(per_row[b, L_pad - int(n):])

    def decode(self, routes: Tensor, live: list[int]) -> None:
        """routes (b, L, k) of one decode step; live[j] = the original row of batch row j."""
        for j, row in enumerate(live):
            self.chunks[row].append(routes[j:j + 1])

    def rows(self) -> list[Tensor]:
        return [torch.cat(c, dim=0) for c in self.chunks]
