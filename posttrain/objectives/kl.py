"""Per-token estimators of KL(pi || pi_ref) from the sampled token's log-probs.

With d = logp - ref_logp (tokens sampled from the policy, so E[d] = KL):

    k1 = d                           unbiased, can be negative
    k2 = d^2 / 2                     biased, >= 0; its gradient is the KL gradient's
    k3 = exp(-d) - (-d) - 1          unbiased, >= 0 (exp(x) >= 1 + x), low variance

J. Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html;
k3 is the estimator GRPO adds to its loss (DeepSeekMath, arXiv:2402.03300). Checked
against verl `verl/trainer/ppo/core_algos.py` (`kl_penalty_forward`). No clamping: the
estimators are exact, so a test can hand-work them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from posttrain.registry import Registry


@dataclass(frozen=True)
class KLEstimator:
    fn: Callable[[Tensor, Tensor], Tensor]
    """(logp (B, T), ref_logp (B, T)) -> per-token estimate (B, T)."""
    formula: str


KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")

KL_ESTIMATORS.register("k1", KLEstimator(lambda logp, ref: logp - ref, "logp - ref_logp"))
KL_ESTIMATORS.register("k2", KLEstimator(
    lambda logp, ref: 0.5 * (logp - ref) ** 2, "0.5 (logp - ref_logp)^2"))
KL_ESTIMATORS.register("k3", KLEstimator(
    lambda logp, ref: torch.exp(ref - logp) - (ref - logp) - 1,
    "exp(ref_logp - logp) - (ref_logp - logp) - 1"))


def kl_estimate(name: str, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """(B, T) per-token KL estimate with the named estimator."""
    return KL_ESTIMATORS.get(name).fn(logp, ref_logp)
