"""Greedy speculative decoding with a target KV cache, and the plain greedy baseline.

One prompt at a time (batch 1). A verify cycle:

    block   = [g, d_1 .. d_k]          g: the last token emitted (not yet in the target's
                                       cache), d: k <= B - 1 drafted tokens
    target  -> greedy p_0 .. p_k       one forward of k + 1 tokens on top of the cache
    n       = longest prefix with d_{i+1} == p_i
    emit      d_1 .. d_n, p_n          p_n is the target's "bonus" token
    cache   : cropped to prompt + everything up to d_n (p_n enters next cycle as g)

Every emitted token is the target's own greedy choice given the tokens before it, so the
output equals plain greedy decoding token for token (up to floating-point differences
between a (k+1)-token forward and k+1 one-token forwards, which the tests and the
evaluation check rather than assume). Stop tokens and `max_new_tokens` are applied to the
emitted stream exactly as the plain loop applies them, one token at a time.

Acceptance length: a cycle's tau is the number of tokens it emitted (n + 1, or fewer when
a stop token or the length cap ends generation inside the cycle), so the generated
tokens = 1 (from the prefill) + sum of the cycle taus. The ceiling is B (DFlash, Chen et
al. 2026: a block of B = [g, B - 1 masks] yields at most B - 1 accepted + 1 bonus).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache


class Drafter(Protocol):
    """What the speculative loop needs from a draft model.

    `feature_layers`: indices into the target's `hidden_states` tuple (0 = embeddings,
    i = output of decoder layer i) whose states the drafter is conditioned on; empty
    tuple for a drafter that needs none (a plain autoregressive draft).
    """

    feature_layers: tuple[int, ...]

    def reset(self) -> None:
        """Forget the previous prompt."""

    def extend(self, token_ids: Sequence[int], features: Tensor | None) -> None:
        """Commit tokens (verified, in order) with their target features (T_new, F) or None."""

    def propose(self, last_token: int, n: int) -> list[int]:
        """n draft tokens to follow the committed context and `last_token` (not committed)."""


@dataclass
class DecodeResult:
    tokens: list[int]
    """Generated ids (stop token included when one ended generation)."""
    finish_reason: str
    """stop or length."""
    cycle_taus: list[int] = field(default_factory=list)
    """Tokens emitted by each verify cycle (empty for plain decoding)."""
    seconds: float = 0.0
    target_forwards: int = 0
    draft_seconds: float = 0.0
    """Time spent inside the drafter (speculative only)."""


def crop_cache(cache, length: int) -> None:
    """Drop cached positions beyond `length` (a negative argument to `crop` counts tokens to
    remove in every transformers version that has DynamicCache.crop)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _features(hidden_states, layers: tuple[int, ...]) -> Tensor | None:
    """(1, T, H) states of the chosen layers -> (T, len(layers) * H), or None."""
    if not layers:
        return None
    return torch.cat([hidden_states[i][0] for i in layers], dim=-1)


def cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: `cache` in transformers >= 5.x (where
    `past_key_values` is deprecated), `past_key_values` before."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward(target, ids: list[int], cache, start: int, want_hidden: bool):
    """Target forward of `ids` at positions start.. on top of `cache` (batch 1, no padding)."""
    device = target.device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    pos = torch.arange(start, start + len(ids), device=device)[None]
    return target(input_ids=x, position_ids=pos, use_cache=True,
                  output_hidden_states=want_hidden, **{cache_kwarg(target): cache})


@torch.no_grad()
def greedy_decode(target, prompt_ids: Sequence[int], max_new_tokens: int,
                  stop_ids: Sequence[int]) -> DecodeResult:
    """Plain greedy decoding, one target forward per token, with a DynamicCache."""
    t0 = time.perf_counter()
    stops = set(stop_ids)
    cache = DynamicCache()
    out = _forward(target, list(prompt_ids), cache, 0, False)
    tokens, reason, pos = [], "length", len(prompt_ids)
    forwards = 1
    while True:
        tok = int(out.logits[0, -1].argmax())
        tokens.append(tok)
        if tok in stops:
            reason = "stop"
            break
        if len(tokens) >= max_new_tokens:
            break
        out = _forward(target, [tok], cache, pos, False)
        pos += 1
        forwards += 1
    return DecodeResult(tokens, reason, seconds=time.perf_counter() - t0, target_forwards=forwards)


@torch.no_grad()
def speculative_decode(target, drafter: Drafter, prompt_ids: Sequence[int], block_size: int,
                       max_new_tokens: int, stop_ids: Sequence[int]) -> DecodeResult:
    """Greedy speculative decoding of one prompt; see the module docstring."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (one known token + drafted ones), got {block_size}")
    t0 = time.perf_counter()
    stops = set(stop_ids)
    layers = tuple(drafter.feature_layers)
    cache = DynamicCache()
    out = _forward(target, list(prompt_ids), cache, 0, bool(layers))
    td = time.perf_counter()
    drafter.reset()
    drafter.extend(list(prompt_ids), _features(out.hidden_states, layers) if layers else None)
    draft_s = time.perf_counter() - td
    committed = len(prompt_ids)  # tokens in the target cache (and the drafter's context)
    g = int(out.logits[0, -1].argmax())
    tokens, taus, forwards = [g], [], 1
    if g in stops:
        return DecodeResult(tokens, "stop", taus, time.perf_counter() - t0, forwards, draft_s)
    while len(tokens) < max_new_tokens:
        k = min(block_size - 1, max_new_tokens - len(tokens))  # drafts past the cap are wasted
        td = time.perf_counter()
        drafts = [int(d) for d in drafter.propose(g, k)][:k]
        draft_s += time.perf_counter() - td
        out = _forward(target, [g, *drafts], cache, committed, bool(layers))
        forwards += 1
        preds = out.logits[0].argmax(-1).tolist()  # (k + 1,) target greedy after each input
        n = 0
        while n < len(drafts) and drafts[n] == preds[n]:
            n += 1
        new = drafts[:n] + [preds[n]]
        emitted, stopped = 0, False
        for tok in new:
            tokens.append(tok)
            emitted += 1
            if tok in stops:
                stopped = True
                break
            if len(tokens) >= max_new_tokens:
                break
        taus.append(emitted)
        if stopped:
            return DecodeResult(tokens, "stop", taus, time.perf_counter() - t0, forwards, draft_s)
        if len(tokens) >= max_new_tokens:
            break
        # keep g, d_1 .. d_n in the cache; p_n is the next cycle's g
        crop_cache(cache, committed + n + 1)
        td = time.perf_counter()
        drafter.extend([g, *drafts[:n]],
                       _features(out.hidden_states, layers)[: n + 1] if layers else None)
        draft_s += time.perf_counter() - td
        committed += n + 1
        g = preds[n]
    return DecodeResult(tokens, "length", taus, time.perf_counter() - t0, forwards, draft_s)


def pooled_tau(cycle_taus: Sequence[Sequence[int]]) -> tuple[float, int]:
    """Pool cycles over prompts: (sum of per-cycle tau / number of cycles, cycles)."""
    total = sum(sum(t) for t in cycle_taus)
    cycles = sum(len(t) for t in cycle_taus)
    return (total / cycles if cycles else float("nan")), cycles


class OracleDrafter:
    """Proposes a known continuation (e.g. the target's greedy output): every draft is
    accepted, so each full cycle emits B tokens. `wrong_after[c]`, when given, makes cycle
    c's drafts wrong from position wrong_after[c] on (a scripted acceptance for tests)."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, prompt_ids: Sequence[int], continuation: Sequence[int],
                 wrong_after: Sequence[int] | None = None, vocab_size: int = 2):
        self.full = list(prompt_ids) + list(continuation)
        self.wrong_after, self.vocab_size = wrong_after, vocab_size
        self.reset()

    def reset(self) -> None:
        self.length, self.cycle = 0, 0

    def extend(self, token_ids, features) -> None:
        self.length += len(token_ids)

    def propose(self, last_token: int, n: int) -> list[int]:
        start = self.length + 1  # the committed context, then last_token
        drafts = self.full[start:start + n]
        drafts += [0] * (n - len(drafts))
        if self.wrong_after is not None and self.cycle < len(self.wrong_after):
            cut = self.wrong_after[self.cycle]
            # a token the target cannot have chosen there: anything but the right one
            drafts = drafts[:cut] + [(t + 1) % self.vocab_size for t in drafts[cut:]]
        self.cycle += 1
        return drafts
