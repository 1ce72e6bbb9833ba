"""Mix several example lists by weight, deterministically.

    mix([math, structured], [3, 1], seed=0, total=400)   # exactly 300 + 100, shuffled

Counts. Source i gets the share p_i = w_i / sum(w) of `total`; the quotas total * p_i
are rounded by largest remainder (floors first, then one more to the largest fractional
parts, ties to the earlier source), so the counts sum to `total` exactly. The arithmetic
is done in exact fractions, so 75/25 of 400 is 300/100 and never 301/99.

Default total. With `total=None` the mix is the largest one that repeats no example:
floor(min_i len_i / p_i). Every count then stays within its source's length.

Repeats. A source asked for more examples than it has is cycled: each pass is a fresh
shuffle of the whole source, and the last pass is cut short, so every example appears
either k or k+1 times (never sampled with replacement, which would leave some out).
A source asked for fewer examples contributes a random subset (the start of one shuffle).

Order. The chosen examples are shuffled together. Everything is driven by one
`random.Random(seed)`: the same inputs and seed give the same list, another seed another
order. The returned list holds the input `Example` objects themselves (a repeat is the
same object twice), not copies.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Sequence, TypeVar

T = TypeVar("T")


def _check(lengths: Sequence[int], weights: Sequence[float]) -> list[Fraction]:
    if len(lengths) != len(weights):
        raise ValueError(f"mix: {len(lengths)} sources but {len(weights)} weights; "
                         f"give one weight per source")
    if not lengths:
        raise ValueError("mix: no sources given")
    for i, (n, w) in enumerate(zip(lengths, weights)):
        if n == 0:
            raise ValueError(f"mix: source {i} is empty; remove it or check its path and n")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"mix: source {i} has weight {w!r}; weights must be positive "
                             f"numbers (drop a source rather than giving it weight 0)")
    total_w = sum(Fraction(w) for w in weights)
    return [Fraction(w) / total_w for w in weights]  # exact shares


def mix_counts(lengths: Sequence[int], weights: Sequence[float],
               total: int | None = None) -> list[int]:
    """How many examples each source contributes (see the module docstring)."""
    shares = _check(lengths, weights)
    if total is None:
        total = min(math.floor(n / p) for n, p in zip(lengths, shares))
    elif isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"mix: total must be a non-negative integer or None, got {total!r}")
    quotas = [total * p for p in shares]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _take(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """k items from a source: fresh shuffles end to end, the last one cut short."""
    out: list[T] = []
    while len(out) < k:
        order = list(items)
        rng.shuffle(order)
        out.extend(order[: k - len(out)])
    return out


def mix(sources: list[list[T]], weights: list[float], seed: int = 0,
        total: int | None = None) -> list[T]:
    """Examples from each source in proportion to `weights`, shuffled together by `seed`."""
    counts = mix_counts([len(s) for s in sources], weights, total)
    rng = random.Random(seed)
    out: list[T] = []
    for items, k in zip(sources, counts):
        out.extend(_take(items, k, rng))
    rng.shuffle(out)
    return out
