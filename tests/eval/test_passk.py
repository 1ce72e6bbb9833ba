"""pass@k (Chen et al. 2021, Eq. 1) against hand-worked values and the exact binomial form."""

import math
from fractions import Fraction

import pytest

from posttrain.eval.passk import mean_pass_at_k, pass_at_k


def _exact(n, c, k):
    """1 - C(n-c, k) / C(n, k) in exact rationals (math.comb is 0 when n - c < k)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n, c, k, want", [
    (5, 2, 1, 0.4),          # c / n
    (5, 2, 2, 0.7),          # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 3, 0.9),          # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (5, 2, 4, 1.0),          # n - c = 3 < 4: every 4-subset holds a correct sample
    (10, 0, 1, 0.0), (10, 0, 10, 0.0),
    (10, 10, 1, 1.0), (10, 10, 10, 1.0),
    (4, 1, 2, 0.5),          # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (1, 1, 1, 1.0), (1, 0, 1, 0.0),
])
def test_hand_worked_values(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-15)


def test_matches_exact_binomial_form_on_a_grid():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(_exact(n, c, k)), abs=1e-12)


def test_pass_at_1_is_the_fraction_correct():
    for n, c in [(7, 3), (100, 1), (200, 199)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-15)


@pytest.mark.parametrize("n, c, k", [(10_000, 37, 100), (1000, 500, 500), (2000, 3, 1000)])
def test_stable_for_large_n(n, c, k):
    # C(1000, 500) ~ 2.7e299 and C(2000, 1000) overflows a float; the product form does not
    got = pass_at_k(n, c, k)
    assert math.isfinite(got) and 0.0 <= got <= 1.0
    assert got == pytest.approx(float(_exact(n, c, k)), rel=1e-9)


def test_monotone_in_c_and_k():
    n = 30
    for k in range(1, n + 1):
        vals = [pass_at_k(n, c, k) for c in range(n + 1)]
        assert vals == sorted(vals)
    for c in range(n + 1):
        vals = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert vals == sorted(vals)


@pytest.mark.parametrize("n, c, k, msg", [
    (5, 2, 6, "k must be in 1..n"), (5, 2, 0, "k must be in 1..n"),
    (5, 6, 1, "more than the n=5"), (-1, 0, 1, ">= 0"), (5, -1, 1, ">= 0"),
    (5.0, 2, 1, "must be an int"), (5, True, 1, "must be an int"),
])
def test_rejects_bad_counts(n, c, k, msg):
    with pytest.raises(ValueError, match=msg):
        pass_at_k(n, c, k)


def test_mean_over_problems():
    assert mean_pass_at_k([(5, 2), (10, 0), (3, 3)], 1) == pytest.approx((0.4 + 0 + 1) / 3)
    assert mean_pass_at_k([(5, 2), (4, 1)], 2) == pytest.approx((0.7 + 0.5) / 2)


def test_mean_names_the_bad_problem():
    with pytest.raises(ValueError, match=r"results\[1\].*k must be in 1\.\.n"):
        mean_pass_at_k([(5, 2), (1, 0)], 2)
    with pytest.raises(ValueError, match=r"results\[0\] must be an \(n, c\) pair"):
        mean_pass_at_k([5], 1)
    with pytest.raises(ValueError, match="no results"):
        mean_pass_at_k([], 1)
