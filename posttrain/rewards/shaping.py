"""Shaping rewards: terms added to a verifiable reward to shape the form of a completion
rather than to judge its answer.

    think_format   1 iff the completion is one <think>...</think> block at the start and a
                   non-empty answer after it, else 0 (with the reason)
    overlong       DAPO's soft overlong punishment, in [-1, 0]

Both are pure, linear-time string and arithmetic functions, so they run in the calling
process (`isolate=False`): no worker round trip.

overlong (Yu et al. 2025, "DAPO", arXiv 2503.14476, Eq. 13), with L the completion length,
L_max = `max_len` and L_cache = `cache`:

    R(L) = 0                                 if L <= L_max - L_cache
         = ((L_max - L_cache) - L) / L_cache if L_max - L_cache < L <= L_max
         = -1                                if L_max < L

So R reaches -1 at L = L_max itself: a completion cut at the generation limit gets the
full punishment. DAPO generates up to 20,480 tokens with L_cache = 4,096 (a ramp over the
last fifth); `cache=None` keeps that proportion, `max_len // 5`. `cache=0` is the hard
form (0 up to L_max, -1 beyond).

L is `example["completion_tokens"]`, which the RL trainer fills in with the token count,
and `max_len=None` reads `example["max_new_tokens"]`; `max_len` and `cache` are in the
unit of L. Without a token count, L falls back
to `len(completion)` in characters, but only when `max_len` was given as an option (then
in characters too): a character count against a token limit would punish nearly every
completion, so that combination scores 0 with the reason "no_token_count".
"""

from __future__ import annotations

from posttrain.rewards.base import RewardResult, register_reward

# ----------------------------------------------------------------------------- think_format


@register_reward(
    "think_format",
    checks="1 iff the completion is exactly one `<think>...</think>` block (after optional "
           "whitespace, no tag inside it) followed by a non-empty answer with no think tags; "
           "else 0.",
    limits="Linear in the completion length.", isolate=False)
def think_format(completion: str, example: dict, *, tag: str = "think",
                 min_think_chars: int = 0) -> RewardResult:
    """Reasons: ok, no_think (the completion does not start with the open tag),
    unclosed_think, nested_think (a second open tag inside the block), short_think (fewer
    than `min_think_chars` non-space characters of thinking), extra_think (a tag after the
    block), empty_answer."""
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    text = completion.lstrip()
    if not text.startswith(open_tag):
        return RewardResult(0.0, "no_think", f"does not start with {open_tag}")
    close = text.find(close_tag, len(open_tag))
    if close == -1:
        return RewardResult(0.0, "unclosed_think", f"no {close_tag}")
    thinking = text[len(open_tag):close]
    if open_tag in thinking:
        return RewardResult(0.0, "nested_think", f"{open_tag} inside the {tag} block")
    if len(thinking.strip()) < min_think_chars:
        return RewardResult(0.0, "short_think",
                            f"{len(thinking.strip())} < {min_think_chars} characters of thinking")
    answer = text[close + len(close_tag):]
    if open_tag in answer or close_tag in answer:
        return RewardResult(0.0, "extra_think", f"a {tag} tag after the {tag} block")
    if not answer.strip():
        return RewardResult(0.0, "empty_answer", f"nothing after {close_tag}")
    return RewardResult(1.0, "ok")


# ----------------------------------------------------------------------------- overlong


def overlong_penalty(length: float, max_len: float, cache: float) -> float:
    """DAPO Eq. 13 (see the module docstring): 0, a linear ramp to -1 over the last `cache`
    units before `max_len`, -1 beyond it."""
    if length <= max_len - cache:
        return 0.0
    if length <= max_len:
        return ((max_len - cache) - length) / cache  # cache > 0 here: length > max_len - cache
    return -1.0


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


@register_reward(
    "overlong",
    checks="DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13): 0 up to max_len - "
           "cache tokens, then linear down to -1 at max_len, -1 beyond; the length is "
           "example['completion_tokens'] and max_len defaults to example['max_new_tokens'].",
    limits="Constant time.", floor=-1.0, ceiling=0.0, isolate=False)
def overlong(completion: str, example: dict, *, max_len: int | None = None,
             cache: int | None = None) -> RewardResult:
    """Reasons: ok, no_max_len (neither the option nor example['max_new_tokens']),
    no_token_count (a token limit but no example['completion_tokens']), bad_example."""
    if max_len is not None and not (_is_count(max_len) and max_len > 0):
        raise ValueError(f"overlong: max_len must be a positive int, got {max_len!r}")
    if cache is not None and not (_is_count(cache) and (max_len is None or cache <= max_len)):
        raise ValueError(f"overlong: cache must be an int in [0, max_len], got {cache!r}")
    limit = max_len
    if limit is None:
        limit = example.get("max_new_tokens")
        if limit is None:
            return RewardResult(0.0, "no_max_len", "set the max_len option or "
                                "example['max_new_tokens']")
        if not (_is_count(limit) and limit > 0):
            return RewardResult(0.0, "bad_example",
                                f"example['max_new_tokens'] must be a positive int, got {limit!r}")
    length = example.get("completion_tokens")
    if length is None:
        if max_len is None:
            return RewardResult(0.0, "no_token_count", "example['completion_tokens'] is missing "
                                "and max_new_tokens counts tokens, not characters")
        length = len(completion)
    elif not _is_count(length):
        return RewardResult(0.0, "bad_example",
                            f"example['completion_tokens'] must be an int >= 0, got {length!r}")
    window = limit // 5 if cache is None else min(cache, limit)
    score = overlong_penalty(length, limit, window)
    return RewardResult(score, "ok", f"L={length} L_max={limit} L_cache={window}")
