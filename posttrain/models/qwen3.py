"""Functional pieces of a dense Qwen3 forward, over the HF module's own parameters.

Two lean paths compute exactly what `transformers`' Qwen3ForCausalLM computes, with fewer
ops than its module tree: the rollout engine's decode (`rollout/fast.py`, no gradient) and
the RL update's shared-prompt forward (`models/prefix.py`, with gradient). Both read the
live parameters through `Qwen3Weights`; the fused [Wq; Wk; Wv] and [Wg; Wu] are
`torch.cat`s of them, so under autograd the gradient reaches the original parameters.

The math (Qwen3, as in transformers' modeling_qwen3.py):

    h      = rmsnorm(x) ;  q, k, v = h Wq^T, h Wk^T, h Wv^T         (one fused matmul)
    q, k   = rmsnorm_head(q), rmsnorm_head(k)                       per-head q/k norms
    q, k   = q cos + rotate_half(q) sin                             RoPE (rotate_half as a +-1 matmul)
    x     += o_proj(softmax(q k^T / sqrt(hd) + mask) v)             grouped-query heads
    x     += down(silu(g) * u),  (g, u) = rmsnorm(x) [Wg; Wu]^T     (one fused matmul)
    logits = lm_head(rmsnorm(x))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (its LoRA layers still in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


def _lora_reason(m: nn.Module) -> str | None:
    """None for an unmerged PEFT LoRA Linear whose forward is x W0^T + b + s B A x exactly
    (no dropout, DoRA, LoRA bias or other variant); else why not."""
    if type(m).__name__ != "Linear" or not type(m).__module__.startswith("peft.tuners.lora"):
        return f"a projection is a {type(m).__name__}, not a plain or LoRA nn.Linear (quantised?)"
    if type(m.base_layer) is not nn.Linear:
        return f"a LoRA layer wraps a {type(m.base_layer).__name__} (quantised base, e.g. QLoRA)"
    for name in m.active_adapters:
        if name not in m.lora_A:
            continue
        if m.use_dora.get(name, False) or getattr(m, "lora_variant", {}).get(name) is not None:
            return "DoRA or another LoRA variant"
        if not isinstance(m.lora_dropout[name], nn.Identity):
            return "LoRA dropout (adapter.dropout > 0)"
        if m.lora_B[name].bias is not None:
            return "a LoRA bias"
    return None


def linear_weight(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(W, b) with m(x) = x W^T + b: an nn.Linear's own, or for a LoRA Linear (passing
    `_lora_reason`) the merged W0 + s B A of its active adapters (W0 alone while adapters are
    disabled, e.g. under `disable_adapter()` for the reference). Differentiable in A and B
    where autograd is on; built per forward, so it follows every update."""
    if type(m) is nn.Linear:
        return m.weight, m.bias
    base = m.base_layer
    if m.disable_adapters or m.merged:
        return base.weight, base.bias
    w = base.weight
    for name in m.active_adapters:
        if name in m.lora_A:
            a, b = m.lora_A[name].weight, m.lora_B[name].weight  # (r, in), (out, r)
            w = w + (m.scaling[name] * (b @ a)).to(w.dtype)
    return w, base.bias


def unsupported_reason(model: nn.Module, training: bool | None = None) -> str | None:
    """None when the functional path computes what the HF model does; else why not. A PEFT
    LoRA model qualifies (its adapters merged into the weights per forward: the same math,
    rounded differently). `training` (default: model.training): whether the forward runs
    in training mode, where attention dropout would apply."""
    peft = getattr(model, "peft_config", None)
    if peft and any(getattr(c, "is_prompt_learning", False) for c in peft.values()):
        return "PEFT prompt learning (virtual tokens the functional forward would skip)"
    model = causal_lm(model)
    cfg = getattr(model, "config", None)
    if type(model).__name__ != "Qwen3ForCausalLM" or getattr(cfg, "model_type", None) != "qwen3":
        return f"{type(model).__name__} is not a dense Qwen3ForCausalLM"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope_type {rope.get('rope_type')!r}"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])) or getattr(
            cfg, "use_sliding_window", False):
        return "sliding-window attention"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    if (model.training if training is None else training) and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout in training mode"
    inner = model.model
    linears = [m for layer in inner.layers for m in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
    if type(model.lm_head) is not nn.Linear:
        return "the LM head is not a plain nn.Linear"
    for m in linears:
        if type(m) is not nn.Linear:
            why = _lora_reason(m)
            if why is not None:
                return why
    return None


def rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Qwen3RMSNorm: weight * (x / sqrt(mean(x^2) + eps)), computed in fp32, in Qwen3's
    order of ops: torch's `F.rms_norm` is a little faster on CPU but rounds differently,
    and a seeded rollout would no longer draw the HF engine's tokens."""
    dt = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dt)


@dataclass
class Layer:
    w_in: Tensor  # (H,) input_layernorm
    w_qkv: Tensor  # ((nh + 2 nkv) hd, H)
    b_qkv: Tensor | None
    w_qk_norm: Tensor  # (nh + nkv, hd): q_norm rows then k_norm rows
    w_o: Tensor
    b_o: Tensor | None
    w_post: Tensor  # (H,) post_attention_layernorm
    w_gu: Tensor  # (2 I, H)
    w_down: Tensor


class Qwen3Weights:
    """The model's parameters in the layout the functional forwards read (fused where it
    helps). Build it where the weights are read: the fused copies are taken at construction
    (with autograd on, they are differentiable functions of the live parameters)."""

    def __init__(self, model: nn.Module):
        model = causal_lm(model)
        cfg, inner = model.config, model.model
        self.eps = cfg.rms_norm_eps
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.nh
        self.embed, self.norm, self.head = inner.embed_tokens.weight, inner.norm.weight, model.lm_head
        self.inv_freq = inner.rotary_emb.inv_freq
        self.scale = self.hd ** -0.5  # Qwen3Attention.scaling
        self.scaling = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            (wq, bq), (wk, bk), (wv, bv) = (linear_weight(p) for p in (a.q_proj, a.k_proj, a.v_proj))
            (wo, bo), (wg, _), (wu, _), (wd, _) = (linear_weight(p) for p in (a.o_proj, m.gate_proj, m.up_proj,
                                                                               m.down_proj))
            self.layers.append(Layer(
                w_in=layer.input_layernorm.weight,
                w_qkv=torch.cat([wq, wk, wv]),
                b_qkv=torch.cat([bq, bk, bv]) if bq is not None else None,
                w_qk_norm=torch.cat([a.q_norm.weight.expand(self.nh, -1), a.k_norm.weight.expand(self.nkv, -1)]),
                w_o=wo, b_o=bo, w_post=layer.post_attention_layernorm.weight,
                w_gu=torch.cat([wg, wu]), w_down=wd))
        hd = self.hd
        rot = torch.zeros(hd, hd, dtype=self.embed.dtype, device=self.embed.device)
        half = hd // 2
        idx = torch.arange(half, device=rot.device)
        rot[idx + half, idx] = -1.0  # rot(x)[:half] = -x[half:]
        rot[idx, idx + half] = 1.0  # rot(x)[half:] = x[:half]
        self.rot = rot  # x @ rot == rotate_half(x), exactly (one +-1 term per output)

    def rope_tables(self, n_pos: int) -> tuple[Tensor, Tensor]:
        """(n_pos, hd) cos and sin, as Qwen3RotaryEmbedding computes them (fp32, then the dtype)."""
        pos = torch.arange(n_pos, device=self.inv_freq.device, dtype=torch.float)
        freqs = pos[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        dt = self.embed.dtype
        return (emb.cos() * self.scaling).to(dt), (emb.sin() * self.scaling).to(dt)

    def qkv(self, L: Layer, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., S, H) -> q (..., S, nh, hd), k and v (..., S, nkv, hd): normed and rotated.
        cos / sin broadcast against (..., S, 1, hd)."""
        nh, nkv, hd = self.nh, self.nkv, self.hd
        qkv = F.linear(rms(x, L.w_in, self.eps), L.w_qkv, L.b_qkv)  # (..., S, (nh + 2 nkv) hd)
        lead = qkv.shape[:-1]
        nqk = (nh + nkv) * hd
        qk = rms(qkv[..., :nqk].reshape(*lead, nh + nkv, hd), L.w_qk_norm, self.eps)
        qk = qk * cos + (qk @ self.rot) * sin  # RoPE on q and k at once
        return qk[..., :nh, :], qk[..., nh:, :], qkv[..., nqk:].reshape(*lead, nkv, hd)

    def mlp(self, L: Layer, x: Tensor) -> Tensor:
        """The SwiGLU MLP of the post-attention residual stream x (..., H)."""
        g, u = F.linear(rms(x, L.w_post, self.eps), L.w_gu).chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, L.w_down)
