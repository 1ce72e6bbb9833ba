"""The rollout engine interface: prompts in, completions with per-token log-probs out.

    engine = ENGINES.get("hf")(model, tokenizer)
    out = engine.generate(prompt_ids, SamplingParams(temperature=0.8, max_new_tokens=128), n=4)
    out.completion_ids[i], out.logprobs[i], out.finish_reasons[i], out.texts[i]

Completions of one prompt sit on contiguous rows (prompt p -> rows p*n .. p*n + n - 1), the
layout the group-relative advantage estimators expect.

The engine's log-probs are log softmax(logits / temperature) at the sampled token, before
top-k / top-p / min-p truncation: the distribution the trainer's log-probs are computed
under, so the two can be compared token by token (the training-inference mismatch). vLLM's
default `logprobs_mode="raw_logprobs"` differs (no temperature); use processed log-probs
when comparing with it. Greedy decoding (temperature 0) reports the temperature-1 log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from posttrain.registry import Registry

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with probability >= top_p."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = all)."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p x the most likely one."""
    max_new_tokens: int = 256
    """Generation cap; a completion that reaches it finishes with reason "length"."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends once the completion text contains one (the text is cut
    before it; the tokens up to the one that completed it are kept)."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra stop tokens, besides the tokenizer's EOS and the chat template's end-of-turn."""

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or not 0 <= self.min_p < 1:
            raise ValueError(f"need top_k >= 0 and 0 <= min_p < 1, got {self.top_k}, {self.min_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Rollout:
    """N = len(prompts) x n completions; row i belongs to prompt prompt_index[i]."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    """The engine's log-prob of each completion token (see the module docstring)."""
    finish_reasons: list[str]
    texts: list[str]
    prompt_index: list[int]
    n: int = 1
    routes: list | None = field(default=None)
    """MoE expert choices, for routing replay (engines that capture them, else None): per
    row an int8/int16 (P + C - 1, L, k) tensor of the top-k experts of every layer at
    every position the engine fed (the prompt, and the completion but its last token);
    see posttrain.models.routing."""

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def truncated(self) -> list[bool]:
        return [r == "length" for r in self.finish_reasons]


class Engine(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, n: int = 1) -> Rollout:
        ...


ENGINES: Registry[type] = Registry("rollout engine")


def make_engine(rc, model, tokenizer, batch_size: int | None = None) -> Engine:
    """The engine a `RolloutConfig` names, over `model`; `rollout.compile` goes to the
    engine that has it (config validation allows it with engine fast only)."""
    extra = {"compile": True} if getattr(rc, "compile", False) else {}
    return ENGINES.get(rc.engine)(model, tokenizer, batch_size=batch_size or rc.batch_size, **extra)
