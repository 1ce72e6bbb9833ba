"""Mixing: exact largest-remainder counts, no repeats by default, even cycling beyond a
source's length, determinism per seed, and clear errors."""

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.data.mix import mix, mix_counts


def tagged(name, n):
    return [f"{name}{i}" for i in range(n)]


def test_75_25_of_400_plus_400_is_exactly_300_100_and_seeded():
    a, b = tagged("a", 400), tagged("b", 400)
    out = mix([a, b], [0.75, 0.25], seed=0, total=400)
    assert len(out) == 400 and len(set(out)) == 400
    assert sum(x.startswith("a") for x in out) == 300
    assert sum(x.startswith("b") for x in out) == 100
    assert out == mix([a, b], [0.75, 0.25], seed=0, total=400)
    assert out != mix([a, b], [0.75, 0.25], seed=1, total=400)
    assert out[:100] != sorted(out)[:100]  # interleaved, not blocked by source
    assert mix_counts([400, 400], [3, 1], total=400) == [300, 100]  # weights need not sum to 1


def test_default_total_is_the_largest_without_repeats():
    # 400 / 0.75 = 533.3 and 400 / 0.25 = 1600 -> 533 = 400 + 133 (hand-checked)
    assert mix_counts([400, 400], [0.75, 0.25]) == [400, 133]
    out = mix([tagged("a", 400), tagged("b", 400)], [0.75, 0.25], seed=0)
    assert len(out) == 533 and len(set(out)) == 533
    assert mix_counts([10, 1000], [1, 1]) == [10, 10]


def test_largest_remainder_hand_checked():
    # quotas 10/3 each: floors 3+3+3, the one leftover goes to the first source on a tie
    assert mix_counts([10, 10, 10], [1, 1, 1], total=10) == [4, 3, 3]
    # quotas 0.7, 2.1, 4.2 -> floors 0, 2, 4; leftover 1 to the largest remainder (0.7)
    assert mix_counts([9, 9, 9], [1, 3, 6], total=7) == [1, 2, 4]


def test_oversampled_source_is_cycled_evenly():
    small, big = tagged("s", 10), tagged("b", 100)
    out = mix([small, big], [1, 1], seed=3, total=50)  # 25 from a source of 10
    uses = Counter(x for x in out if x.startswith("s"))
    assert sum(uses.values()) == 25 and set(uses) == set(small)
    assert set(uses.values()) == {2, 3}  # every item 2 or 3 times, none left out
    assert Counter(x for x in out if x.startswith("b")).most_common(1)[0][1] == 1


@pytest.mark.parametrize("sources,weights,kw,match", [
    ([[1], []], [1, 1], {}, "source 1 is empty"),
    ([[1], [2]], [1, 0], {}, "source 1 has weight 0"),
    ([[1], [2]], [1, -2.0], {}, "weights must be positive"),
    ([[1], [2]], [1, float("nan")], {}, "weights must be positive"),
    ([[1], [2]], [1], {}, "2 sources but 1 weights"),
    ([], [], {}, "no sources"),
    ([[1]], [1], {"total": -1}, "total must be a non-negative integer"),
])
def test_errors(sources, weights, kw, match):
    with pytest.raises(ValueError, match=match):
        mix(sources, weights, **kw)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.floats(0.01, 100)), min_size=1, max_size=5),
       st.one_of(st.none(), st.integers(0, 400)), st.integers(0, 2**32))
def test_counts_sum_to_total_and_follow_weights(pairs, total, seed):
    lengths, weights = [p[0] for p in pairs], [p[1] for p in pairs]
    counts = mix_counts(lengths, weights, total)
    shares = [Fraction(w) / sum(Fraction(x) for x in weights) for w in weights]
    if total is None:
        assert all(c <= n for c, n in zip(counts, lengths))  # nothing repeated
        assert any(c == n for c, n in zip(counts, lengths)) or \
            any((sum(counts) + 1) * p > n for p, n in zip(shares, lengths))  # and largest
        total = sum(counts)
    assert sum(counts) == total
    assert all(abs(c - total * p) < 1 for c, p in zip(counts, shares))
    sources = [tagged(f"s{i}_", n) for i, n in enumerate(lengths)]
    out = mix(sources, weights, seed=seed, total=total)
    assert len(out) == total and out == mix(sources, weights, seed=seed, total=total)
    for i, (c, n) in enumerate(zip(counts, lengths)):
        uses = Counter(x for x in out if x.startswith(f"s{i}_"))
        assert sum(uses.values()) == c
        if uses:
            assert max(uses.values()) - min(uses.values() if len(uses) == n else [0]) <= 1
