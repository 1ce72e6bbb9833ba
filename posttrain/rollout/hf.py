"""Batched sampling with a KV cache on any Hugging Face causal LM (CPU or GPU).

One prefill over the left-padded prompts, then one forward per new token with the cache;
logits are computed for the last position only (`logits_to_keep=1`), so memory holds
(B, V) logits, never (B, T, V). Rows that have finished leave the batch (their cache rows
are dropped), so a batch costs what its live rows cost. Sampling uses the global torch
RNG: a seeded run is reproducible and its RNG state is what checkpoints save.

The rollout model can be the trained model itself (`precision="same"`) or a separate copy
at another precision, refreshed from the trained weights after each update
(`RolloutWeights`): `bf16_weights` rounds the weights to bfloat16 and computes in fp32 (what
a bf16 inference engine's weights are, at CPU-friendly speed), `bf16` computes in bfloat16
(as vLLM does on a GPU). Either makes the training-inference mismatch real and measurable.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor

from posttrain.models.routing import RouteCollector
from posttrain.rollout.base import ENGINES, Rollout, SamplingParams

PRECISIONS = ("same", "bf16_weights", "bf16")


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """(B, V) temperature-scaled logits with tokens outside top-k / top-p / min-p at -inf."""
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        floor = params.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, -math.inf)
    if params.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(-1) - probs  # mass strictly above each token
        drop_sorted = before >= params.top_p  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def sample_next(logits: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor]:
    """(B, V) raw logits -> (tokens (B,), engine log-probs (B,)); see rollout.base."""
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)
        logp = torch.log_softmax(logits, dim=-1)
    else:
        scaled = logits if params.temperature == 1 else logits / params.temperature  # x / 1 == x
        logp = torch.log_softmax(scaled, dim=-1)
        kept = filter_logits(scaled, params)
        probs = torch.softmax(kept, dim=-1)
        # Exponential race: argmax p / E with E ~ Exp(1) samples from p. E = -log U from
        # the global RNG's uniforms: on CPU about 3x cheaper than exponential_ (0.17 against
        # 0.59 ms at (32, 1024); docs/benchmarks.md), and still one seeded global stream.
        noise = torch.rand_like(probs).log_().neg_()  # (B, V) Exp(1); U = 0 gives inf: p / inf = 0
        tokens = (probs / noise).argmax(dim=-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def stop_ids(tokenizer, params: SamplingParams) -> list[int]:
    """EOS, the chat template's end-of-turn token (ChatML <|im_end|>) and the extra ones."""
    ids = set(params.stop_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(ids)


class HFEngine:
    """Generate with `model` (a transformers or PEFT causal LM) in batches of `batch_size`
    sequences (the memory bound: the KV cache of batch_size x (prompt + max_new_tokens))."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.routing = None
        """A `models.routing.MoERouting` over `model`: when set, every completion's expert
        routes (prompt and completion positions) come back in `Rollout.routes`."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, n: int = 1) -> Rollout:
        rows = [list(p) for p in prompts for _ in range(n)]
        index = [i for i in range(len(prompts)) for _ in range(n)]
        ends = stop_ids(self.tokenizer, params)
        completions, logps, reasons, routes = [], [], [], []
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(rows), self.batch_size):
                c, lp, r, ro = self._generate_batch(rows[s:s + self.batch_size], params, ends)
                completions += c
                logps += lp
                reasons += r
                routes += ro or []
        finally:
            self.model.train(was_training)
        texts = [self._text(c, params) for c in completions]
        return Rollout(rows, completions, logps, reasons, texts, index, n,
                       routes=routes if self.routing is not None else None)

    def _text(self, ids: list[int], params: SamplingParams) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for s in params.stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        return text

    def _generate_batch(self, prompts, params: SamplingParams, ends: list[int]):
        if self.routing is None:
            return *self._sample_batch(prompts, params, ends, None), None
        collector = RouteCollector(len(prompts))
        with self.routing.session():
            out = self._sample_batch(prompts, params, ends, collector)
        return *out, collector.rows()

    @torch.no_grad()
    def _sample_batch(self, prompts: list[list[int]], params: SamplingParams, ends: list[int], routes):
        """Sample one batch; `routes` (a RouteCollector or None) takes each forward's routes."""
        device = next(self.model.parameters()).device
        B, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every row's next token is at L
            ids[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, L - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        end_ids = torch.tensor(ends, dtype=torch.long, device=device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1]
        if routes is not None:
            routes.prefill(self.routing.take(), mask)
        live = torch.arange(B, device=device)  # original row of each row still generating
        next_pos = pos[:, -1] + 1  # (B,)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        reasons = ["length"] * B
        max_stop = max((len(s) for s in params.stop), default=0)
        for t in range(params.max_new_tokens):
            tok, lp = sample_next(logits, params)  # (b,), (b,)
            tok_l, lp_l, live_l = tok.tolist(), lp.tolist(), live.tolist()
            finished = torch.isin(tok, end_ids)
            for j, row in enumerate(live_l):
                tokens[row].append(tok_l[j])
                logps[row].append(lp_l[j])
            if max_stop:  # stop strings: decode a short tail of each live row
                hits = [self._hits_stop(tokens[row], params.stop, max_stop) for row in live_l]
                finished |= torch.tensor(hits, device=device)
            for j in finished.nonzero().flatten().tolist():
                reasons[live_l[j]] = "stop"
            if t == params.max_new_tokens - 1:
                break
            keep = ~finished
            if not keep.any():
                break
            if not keep.all():  # drop finished rows from the batch and the cache
                idx = keep.nonzero().flatten()
                live, tok, mask, next_pos = live[idx], tok[idx], mask[idx], next_pos[idx]
                _select_cache_rows(cache, idx)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache, logits = out.past_key_values, out.logits[:, -1]
            if routes is not None:
                routes.decode(self.routing.take(), live.tolist())
            next_pos = next_pos + 1
        return tokens, logps, reasons

    def _hits_stop(self, ids: list[int], stops: tuple[str, ...], max_len: int) -> bool:
        tail = self.tokenizer.decode(ids[-(max_len + 2):], skip_special_tokens=True)
        return any(s in tail for s in stops)


def _select_cache_rows(cache, idx: Tensor) -> None:
    """Keep rows `idx` of a transformers Cache in place (DynamicCache and its layers)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(idx)
        return
    for layer in cache.layers:  # pragma: no cover - older cache classes
        layer.keys, layer.values = layer.keys[idx], layer.values[idx]


ENGINES.register("hf", HFEngine)


# --------------------------------------------------------------------------- weight copies


class RolloutWeights:
    """The model the engine samples from, and how it follows the trained weights.

    precision "same": the trained model itself (no copy, no sync, no mismatch beyond the
    numerics of cached decoding). "bf16_weights" / "bf16": a deep copy, refreshed by
    `sync()` after every optimizer update with each weight rounded to bfloat16 (and, for
    "bf16", kept in bfloat16 so the arithmetic is bf16 too).
    """

    def __init__(self, policy, precision: str = "same"):
        if precision not in PRECISIONS:
            raise ValueError(f"rollout precision {precision!r}; known: {', '.join(PRECISIONS)}")
        self.policy, self.precision = policy, precision
        if precision == "same":
            self.model = policy
        else:
            self.model = copy.deepcopy(policy)
            for p in self.model.parameters():
                p.requires_grad_(False)
            if precision == "bf16":
                self.model.to(torch.bfloat16)
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        if self.model is self.policy:
            return
        for (name, src), dst in zip(self.policy.named_parameters(), self.model.parameters()):
            dst.copy_(src.detach().to(torch.bfloat16).to(dst.dtype))
        for src, dst in zip(self.policy.buffers(), self.model.buffers()):
            dst.copy_(src)
