"""RLVR policy objectives: pure functions on tensors, one registry per axis.

    from posttrain.objectives import policy_loss, POLICY_LOSSES
    out = policy_loss("gspo", logp, old_logp, advantages, mask)
    out.loss, out.metrics

Axes (each a `posttrain.registry.Registry`):

    SURROGATES       per-token surrogate: clip, sapo, cispo, reinforce       (policy.py)
    RATIOS           ratio level: token, sequence, sequence_token            (ratio.py)
    AGGREGATIONS     token-mean, seq-mean-token-mean, seq-mean-token-sum,
                     constant                                                (aggregate.py)
    KL_ESTIMATORS    k1, k2, k3                                              (kl.py)
    MISMATCH_MODES   none, token, token_truncate, token_mask,
                     sequence_truncate, sequence_mask                        (ratio.py)
    POLICY_LOSSES    the named objectives: declarations over the axes        (policy.py)

Preference objectives (`preference_loss`, PREFERENCE_LOSSES, preference.py) and the
draft-distillation losses for speculative decoding (`distill_loss`, DISTILL_LOSSES:
kd, eal, survival_eal, eal_exact; distill.py) are their own registries.

`python -m posttrain.objectives.docs` rewrites the objectives section of docs/objectives.md
from these registries (a test checks it is current).
"""

from .aggregate import AGGREGATIONS, aggregate
from .distill import DISTILL_LOSSES, distill_loss
from .kl import KL_ESTIMATORS, kl_estimate
from .loss import MODIFIERS, LossOut, objective_normalisers, objective_params, policy_loss
from .masks import entropy_mask, entropy_threshold
from .policy import POLICY_LOSSES, SURROGATES, PolicyObjective, Surrogate, register_objective
from .preference import PREFERENCE_LOSSES, preference_loss
from .ratio import MISMATCH_MODES, RATIOS, mismatch_weights

__all__ = [
    "AGGREGATIONS", "KL_ESTIMATORS", "MISMATCH_MODES", "MODIFIERS", "POLICY_LOSSES", "RATIOS",
    "SURROGATES", "LossOut", "PolicyObjective", "Surrogate", "aggregate", "entropy_mask",
    "entropy_threshold", "kl_estimate", "mismatch_weights", "objective_normalisers",
    "objective_params", "policy_loss", "register_objective", "PREFERENCE_LOSSES", "preference_loss",
    "DISTILL_LOSSES", "distill_loss",
]
