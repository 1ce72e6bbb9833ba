"""The unbiased pass@k estimator of Chen et al. 2021, "Evaluating Large Language Models
Trained on Code" (arXiv 2107.03374), Eq. 1.

With n samples drawn for a problem, c of them correct, the chance that at least one of k
samples drawn without replacement from those n is correct is

    pass@k = 1 - C(n - c, k) / C(n, k)
           = 1 - prod_{i = n-c+1}^{n} (1 - k / i)          (1 when n - c < k)

The product form (the paper's numpy snippet, Fig. 3) never builds the binomials, so it stays
exact to float precision for any n: C(1000, 500) overflows a float, the product does not.
The benchmark score is the mean of pass@k over problems.

    pass_at_k(5, 2, 1)  -> 0.4       (= c / n for k = 1)
    pass_at_k(5, 2, 2)  -> 0.7       (1 - C(3,2)/C(5,2) = 1 - 3/10)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["pass_at_k", "mean_pass_at_k"]


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"pass@k: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k of the n samples is correct, c of the n being
    correct (Chen et al. 2021, Eq. 1). Needs 0 <= c <= n and 1 <= k <= n; ValueError else."""
    n, c, k = _count("n", n), _count("c", c), _count("k", k)
    if n < 0 or c < 0:
        raise ValueError(f"pass@k: n and c must be >= 0, got n={n}, c={c}")
    if c > n:
        raise ValueError(f"pass@k: c={c} correct samples is more than the n={n} drawn")
    if k < 1 or k > n:
        raise ValueError(f"pass@k: k must be in 1..n, got k={k} with n={n} samples; "
                         f"draw at least k samples per problem")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i); each factor is in (0, 1)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(results: Sequence[tuple[int, int]], k: int) -> float:
    """Mean of pass@k over problems, `results` holding one (n, c) pair per problem. Each
    problem needs n >= k; the error names the first that does not."""
    if len(results) == 0:
        raise ValueError("mean_pass_at_k: no results (need one (n, c) pair per problem)")
    total = 0.0
    for i, pair in enumerate(results):
        try:
            n, c = pair
        except (TypeError, ValueError):
            raise ValueError(f"mean_pass_at_k: results[{i}] must be an (n, c) pair, "
                             f"got {pair!r}") from None
        try:
            total += pass_at_k(n, c, k)
        except ValueError as e:
            raise ValueError(f"mean_pass_at_k: results[{i}]: {e}") from None
    return total / len(results)
