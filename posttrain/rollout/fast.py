"""A lean decode path for dense Qwen3-architecture models: static KV cache, few ops per step.

`rollout.engine: fast` (the default). On the tiny model (and any small model on CPU) a
transformers forward call costs about 1.5 ms of fixed Python and dispatch overhead before
any arithmetic (docs/benchmarks.md, RL step profile), and decoding L tokens is L calls.
This engine runs the same math with the HF module's own parameters (no copy of the model;
the weights it reads are the live ones) in a hand-written functional forward (its pieces
are in `models/qwen3.py`, shared with the update's shared-prompt forward):

    x  = embed(ids)                                                    (B, S, H)
    per layer:
      h      = rmsnorm(x) ;  q, k, v = h @ [Wq; Wk; Wv]^T              one fused matmul
      q, k   = rmsnorm_head(q), rmsnorm_head(k)                        Qwen3's q/k norms, one op pair
      q, k   = q cos + rot(q) sin                                      RoPE, rot as a +-1 matmul
      K^T[..., t], V[:, :, t] = k, v                                   static cache, preallocated;
                                                                       keys stored transposed
      x     += o_proj(attn(q, K[:, :, :t+1], V[:, :, :t+1], key mask, GQA))  SDPA in the
                                                                       prefill, batched matmuls
                                                                       + softmax per decode step
      x     += down(silu(g) * u),  (g, u) = rmsnorm(x) @ [Wg; Wu]^T    one fused matmul
    logits = lm_head(rmsnorm(x[:, -1]))                                last position only

The fused [Wq; Wk; Wv] and [Wg; Wu] are concatenated once per `generate` call (the weights
change after every update), so the copy follows the trained weights. Sampling is
`hf.sample_next` on the live rows only, with the global RNG drawing exactly what the HF
engine draws, so a seeded run gives the same tokens as `rollout.engine: hf` (tested, up to
the float rounding of a different matmul blocking) and resume stays exact.

The n completions of a prompt share its prefill: each distinct prompt of a batch is
prefilled once and its cache rows copied to its n rows.

Finished rows stay in the batch (they cost a row of arithmetic, not a call) until fewer
than 3/4 of the rows are live, then the cache is compacted to the live rows.

`rollout.compile: true` runs each decode step through `torch.compile` instead
(`decode_step`): the step's cache slot is a tensor (written with `index_copy_`) and the
rows and the attended slots are marked dynamic, so one graph serves every step of every
batch of the run. It compiles once per process, on the first rollout (C++ through
inductor on CPU, with `cpp_wrapper`); the prefill and the sampling stay eager, so the
random stream is the eager engine's, but the fused kernels round differently and a seeded
run's tokens match the eager engine's only up to that rounding. Measured on the tiny
model in docs/benchmarks.md (1.1-1.36x per rollout token on CPU); not run on CUDA.

A LoRA policy (PEFT, no dropout, not DoRA) runs here too: each generate merges W0 + s B A
into the fused weights (`models/qwen3.linear_weight`), so the rollout follows the adapter
as trained; the same math as PEFT's forward, rounded differently (log-probs agree to ~1e-6).
Anything else -- another architecture, MoE (whose routing another path captures), DoRA,
LoRA dropout, quantised layers (QLoRA), sliding-window or scaled RoPE, stop strings --
falls back to `HFEngine`, so the engine is always correct and only sometimes fast.
`FastEngine.supports(model)` says which, and why not.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from posttrain.models.qwen3 import Qwen3Weights, rms, unsupported_reason
from posttrain.rollout.base import ENGINES, Rollout, SamplingParams
from posttrain.rollout.hf import HFEngine, sample_next

log = logging.getLogger("posttrain")

COMPACT_BELOW = 0.75
"""Compact the batch (drop finished rows from the cache) when fewer than this share of its
rows are live; until then finished rows ride along (cheaper than copying the cache)."""


class _Decoder:
    """One batch: static KV cache per layer, keys (rows, nkv, hd, prompt + max_new) and
    values (rows, nkv, prompt + max_new, hd)."""

    def __init__(self, w: Qwen3Weights, rows: int, max_len: int, device):
        self.w = w
        dt = w.embed.dtype
        # keys stored transposed, (rows, nkv, hd, slots): the decode's q k^T then reads a
        # plain (hd, slots) matrix per head, ~1.7x faster than the transposed view of a
        # (slots, hd) layout on CPU (docs/benchmarks.md)
        self.kt = [torch.zeros(rows, w.nkv, w.hd, max_len, dtype=dt, device=device) for _ in w.layers]
        self.v = [torch.zeros(rows, w.nkv, max_len, w.hd, dtype=dt, device=device) for _ in w.layers]
        self.cos, self.sin = w.rope_tables(max_len)

    def select(self, idx: Tensor) -> None:
        self.kt = [t.index_select(0, idx) for t in self.kt]
        self.v = [t.index_select(0, idx) for t in self.v]

    def forward(self, ids: Tensor, pos: Tensor, start: int, mask: Tensor) -> Tensor:
        """Logits (B, V) of the last position. ids, pos (B, S); the S new keys go to cache
        slots start .. start + S - 1; mask (B, 1, S, start + S) bool, True = may attend, or
        for S = 1 (decode) an additive float mask (B, 1, 1, start + 1): 0 or -inf. A call
        with S > 1 (the prefill) starts at slot 0."""
        w = self.w
        B, S = ids.shape
        nh, nkv, hd = w.nh, w.nkv, w.hd
        end = start + S
        if S > 1 and start:
            raise ValueError("_Decoder.forward: a multi-token call (prefill) starts at slot 0")
        x = F.embedding(ids, w.embed)  # (B, S, H)
        cos, sin = self.cos[pos][:, :, None, :], self.sin[pos][:, :, None, :]  # (B, S, 1, hd)
        g = nh // nkv  # GQA: the query heads of each kv head
        if S == 1:  # the additive mask (B, 1, 1, end), 0 or -inf at padding, per (row, kv head)
            bias = mask.expand(B, nkv, g, end).reshape(B * nkv, g, end)
        for li, L in enumerate(w.layers):
            q, k, v = w.qkv(L, x, cos, sin)  # (B, S, heads, hd)
            q = q.transpose(1, 2)  # (B, nh, S, hd)
            self.kt[li][:, :, :, start:end] = k.permute(0, 2, 3, 1)
            self.v[li][:, :, start:end] = v.transpose(1, 2)
            if S == 1:  # decode: plain batched matmuls (the CPU SDPA kernel is slow at q_len 1)
                qg = q.reshape(B * nkv, g, hd)
                kt = self.kt[li][:, :, :, :end].reshape(B * nkv, hd, end)
                # scale * q k^T + mask in one op
                scores = torch.baddbmm(bias, qg, kt, alpha=w.scale)
                vc = self.v[li][:, :, :end].reshape(B * nkv, end, hd)
                att = torch.bmm(torch.softmax(scores, dim=-1), vc).view(B, nh, 1, hd)
            else:  # prefill (start 0): the keys are this call's own
                att = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                                     enable_gqa=nh != nkv)
            x = x + F.linear(att.transpose(1, 2).reshape(B, S, nh * hd), L.w_o, L.b_o)
            x = x + w.mlp(L, x)
        h = rms(x[:, -1], w.norm, w.eps)  # (B, H)
        return F.linear(h, w.head.weight, w.head.bias)


def decode_step(w: Qwen3Weights, kt: list[Tensor], v: list[Tensor], cos: Tensor, sin: Tensor, ids: Tensor,
                pos: Tensor, slot: Tensor, bias: Tensor) -> Tensor:
    """One decode step, written for `torch.compile` (`rollout.compile`): `_Decoder.forward`
    with S = 1, where the step's position is data, not a Python int.

    ids, pos (B, 1); slot (1,) long, the cache slot the new key and value go to
    (`index_copy_`); bias (B, n) additive, 0 where a row may attend and -inf at its padding,
    over the first n = slot + 1 slots, which attention reads. With the rows and n marked
    dynamic, one graph serves every step of every rollout. The same math as `forward`;
    compiled, it is rounded differently (fused kernels)."""
    B, n = bias.shape
    nh, nkv, hd = w.nh, w.nkv, w.hd
    g = nh // nkv
    x = F.embedding(ids, w.embed)  # (B, 1, H)
    c, s = cos[pos][:, :, None, :], sin[pos][:, :, None, :]  # (B, 1, 1, hd)
    mask = bias[:, None, None, :].expand(B, nkv, g, n).reshape(B * nkv, g, n)
    for li, L in enumerate(w.layers):
        q, k, vv = w.qkv(L, x, c, s)  # (B, 1, heads, hd)
        kt[li].index_copy_(3, slot, k.permute(0, 2, 3, 1))
        v[li].index_copy_(2, slot, vv.transpose(1, 2))
        keys = kt[li][..., :n].reshape(B * nkv, hd, n)
        scores = torch.baddbmm(mask, q.reshape(B * nkv, g, hd), keys, alpha=w.scale)
        vals = v[li][:, :, :n].reshape(B * nkv, n, hd)
        att = torch.bmm(torch.softmax(scores, dim=-1), vals)  # (B nkv, g, hd)
        x = x + F.linear(att.reshape(B, 1, nh * hd), L.w_o, L.b_o)
        x = x + w.mlp(L, x)
    h = rms(x[:, -1], w.norm, w.eps)  # (B, H)
    return F.linear(h, w.head.weight, w.head.bias)


_COMPILED: dict[str, object] = {}
"""device type -> the compiled `decode_step`, one per process: with dynamic shapes one
graph serves every batch size and cache length, so it compiles once."""


def compiled_decode_step(device: torch.device):
    if device.type not in _COMPILED:
        # cpp_wrapper: the compiled graph is called from C++ instead of a Python wrapper,
        # which is most of what is left per step at the tiny model's sizes
        options = {"cpp_wrapper": True} if device.type == "cpu" else {}
        _COMPILED[device.type] = torch.compile(decode_step, options=options)
    return _COMPILED[device.type]


def _mark_dynamic(t: Tensor, *dims: int) -> Tensor:
    for d in dims:
        torch._dynamo.maybe_mark_dynamic(t, d)
    return t


def mark_cache(dec: _Decoder) -> None:
    """Mark the rows and cache-slots dims of the decoder's tensors dynamic (the per-step
    inputs are marked at each call), so that one graph serves every batch size, prompt
    length and step, while the model's own sizes stay static (kernels specialised to them)."""
    for kt, v in zip(dec.kt, dec.v):
        _mark_dynamic(kt, 0, 3)
        _mark_dynamic(v, 0, 2)
    _mark_dynamic(dec.cos, 0)
    _mark_dynamic(dec.sin, 0)


def run_step(step, w: Qwen3Weights, dec: _Decoder, ids: Tensor, pos: Tensor, slot: Tensor, bias: Tensor) -> Tensor:
    """`step(...)` (compiled `decode_step`) with its per-step inputs marked dynamic. Only the
    marked dims are dynamic: with `dynamic=True` every size is, the kernels are generic over
    the model's sizes too, and two sizes equal at compile time (rows = head_dim = 32) were
    assumed equal and recompiled when they parted (measured); with the marks, a first batch
    whose rows equal its cache slots (128) and a second of 9 rows and 129 slots share one
    graph (measured)."""
    return step(w, dec.kt, dec.v, dec.cos, dec.sin, _mark_dynamic(ids, 0), _mark_dynamic(pos, 0), slot,
                _mark_dynamic(bias, 0, 1))


class FastEngine(HFEngine):
    """`HFEngine` with the lean decode above for dense Qwen3 models; falls back to the HF
    path (same results, slower) for anything `unsupported_reason` names."""

    def __init__(self, model, tokenizer, batch_size: int = 64, compile: bool = False):
        super().__init__(model, tokenizer, batch_size)
        self.compile = compile
        self._warned = False

    @staticmethod
    def supports(model) -> str | None:
        return unsupported_reason(model, training=False)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, n: int = 1) -> Rollout:
        why = unsupported_reason(self.model, training=False) or ("stop strings" if params.stop else None)
        if why is not None:
            if not self._warned:
                log.info("rollout.engine=fast: %s; using the hf decode path", why)
                self._warned = True
            return super().generate(prompts, params, n)
        with torch.no_grad():  # per call: the weights change after each update
            self._weights = Qwen3Weights(self.model)
        try:
            return super().generate(prompts, params, n)
        finally:
            self._weights = None

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, ends: list[int]):
        if getattr(self, "_weights", None) is None:  # the fallback path
            return super()._generate_batch(prompts, params, ends)
        w = self._weights
        device = w.embed.device
        B, L = len(prompts), max(len(p) for p in prompts)
        T = params.max_new_tokens
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        key_ok = torch.ones((B, L + T), dtype=torch.bool)  # (B, slots): False = left padding
        for b, p in enumerate(prompts):  # left padding: every row's next token is at L
            ids[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
            key_ok[b, :L - len(p)] = False
        ids, key_ok = ids.to(device), key_ok.to(device)
        key_bias = torch.zeros(key_ok.shape, dtype=w.embed.dtype, device=device).masked_fill_(
            ~key_ok, float("-inf"))  # (B, slots) additive mask of the decode steps
        step = compiled_decode_step(device) if self.compile else None
        slot_ids = torch.arange(L, L + T, device=device)  # the compiled step's slots, as data
        # compiled, the cache keeps 2 rows or more: a batch of 1 is a new graph (size 1 is
        # special-cased by torch.compile's dynamic shapes) and would compile again
        min_rows = 2 if step is not None else 1
        pos = (key_ok[:, :L].long().cumsum(-1) - 1).clamp(min=0)  # (B, L), as the HF engine
        # the n completions of a prompt share its prefill: run each distinct prompt once,
        # then copy its cache rows (the group's rows are identical up to here)
        first: dict[tuple[int, ...], int] = {}
        owner = [first.setdefault(tuple(p), b) for b, p in enumerate(prompts)]
        uniq = sorted(set(owner))
        U = len(uniq)
        dec = _Decoder(w, U, L + T, device)
        # prefill mask: causal, padding keys off; a padding query sees itself (no empty row,
        # so no NaN reaches the cache; its output is never read)
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=device)
        u_idx = torch.tensor(uniq, device=device)
        mask = (causal[None] & key_ok[u_idx, None, :L]) | eye[None]  # (U, L, L)
        logits = dec.forward(ids[u_idx], pos[u_idx], 0, mask[:, None])
        if U < B:
            expand = torch.tensor([uniq.index(o) for o in owner], device=device)  # (B,) row -> prefill row
            dec.select(expand)
            logits = logits.index_select(0, expand)
        next_pos = pos[:, -1] + 1  # (B,)
        end_ids = torch.tensor(ends, dtype=torch.long, device=device)
        out_tok = torch.zeros((B, T), dtype=torch.long, device=device)
        out_lp = torch.zeros((B, T), dtype=torch.float32, device=device)
        length = torch.full((B,), T, dtype=torch.long, device=device)  # (B,) tokens per row
        stopped = torch.zeros(B, dtype=torch.bool, device=device)
        rows = torch.arange(B, device=device)  # original row of each batch row
        alive = torch.ones(B, dtype=torch.bool, device=device)  # (rows,) still generating
        n_alive = B
        for t in range(T):
            all_alive = n_alive == rows.numel()
            live_idx = None if all_alive else alive.nonzero().squeeze(1)
            lg = logits if all_alive else logits.index_select(0, live_idx)
            tok, lp = sample_next(lg, params)  # (n_alive,): the draws the HF engine makes
            orig = rows if all_alive else rows.index_select(0, live_idx)
            out_tok[orig, t] = tok
            out_lp[orig, t] = lp.float()
            fin = torch.isin(tok, end_ids)
            n_fin = int(fin.sum())
            if n_fin:
                done = orig[fin]
                length[done] = t + 1
                stopped[done] = True
                if all_alive:
                    alive = ~fin
                else:
                    alive[live_idx[fin]] = False
                n_alive -= n_fin
            if t == T - 1 or n_alive == 0:
                break
            compacted = n_alive < COMPACT_BELOW * rows.numel() and rows.numel() > min_rows
            if compacted:  # drop finished rows from the cache
                keep = alive.nonzero().squeeze(1)
                if n_alive < min_rows:  # finished rows ride along
                    keep = torch.cat([keep, (~alive).nonzero()[:min_rows - n_alive, 0]])
                dec.select(keep)
                rows, key_bias, next_pos, alive = rows[keep], key_bias[keep], next_pos[keep], alive[keep]
                step_tok = out_tok[rows, t]
            else:
                step_tok = out_tok[rows, t]  # finished rows feed their last token; never read
            slot = L + t
            if step is None:
                logits = dec.forward(step_tok[:, None], next_pos[:, None], slot,
                                     key_bias[:, None, None, :slot + 1])
            else:
                if t == 0 or compacted:
                    mark_cache(dec)
                logits = run_step(step, w, dec, step_tok[:, None], next_pos[:, None], slot_ids[t:t + 1],
                                  key_bias[:, :slot + 1].contiguous())
            next_pos = next_pos + 1
        lengths, stop_l = length.tolist(), stopped.tolist()
        tok_l, lp_l = out_tok.tolist(), out_lp.tolist()
        tokens = [tok_l[b][:lengths[b]] for b in range(B)]
        logps = [lp_l[b][:lengths[b]] for b in range(B)]
        reasons = ["stop" if s else "length" for s in stop_l]
        return tokens, logps, reasons, None  # no routes: dense models only


ENGINES.register("fast", FastEngine)
