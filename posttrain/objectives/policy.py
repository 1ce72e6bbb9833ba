"""Per-token policy surrogates and the registry of RLVR policy objectives.

An objective is a declaration, not a code path: a surrogate (below), a ratio level
(`ratio.py`), a default aggregation (`aggregate.py`), default parameters, and the paper.
`policy_loss` (`loss.py`) composes them. Adding an objective is one `POLICY_LOSSES`
entry at the bottom of this file (plus a surrogate here if none fits) and its test; the
docs table is rendered from the entry.

Every surrogate is a per-token function with signature

    fn(ratio (B, T), adv (B, 1) or (B, T), logp (B, T) or None, stats, **params)
        -> per-token loss (B, T)

`ratio` is pi_theta / pi_old at the objective's level (differentiable), `adv` the advantage,
(B, 1) when it is one per sequence (it broadcasts; no (B, T) copy is made). `logp` is the
policy's log-prob with padding set to 0, passed only to surrogates declared `uses_logp`
(None otherwise, which saves the clean-up ops). A surrogate declared `score_function`
(cispo, reinforce: loss c_it * logp_it with a constant c) returns c instead of the loss,
and `policy_loss` folds it into the aggregation weights (`aggregate.score_function_sum`). `stats`
(`stats.TokenStats`) collects the surrogate's metrics, which `policy_loss` reduces
together with its own. The loss is the
negative of the paper's objective (we minimise).

    clip       -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
               PPO (Schulman et al. 2017) with decoupled bounds (DAPO's clip-higher). A
               clipped token -- A > 0 and r > 1 + eps_high, or A < 0 and r < 1 - eps_low --
               takes the constant branch and gets exactly zero gradient; those are the
               reported high / low clip fractions.
    sapo       -f(r) A,  f(r) = (4 / tau) sigmoid(tau (r - 1)),  tau = tau_pos if A > 0 else
               tau_neg (SAPO, arXiv:2511.20347). df/dr = 4 p (1 - p) with
               p = sigmoid(tau (r - 1)): 1 at r = 1 for any tau, so on-policy SAPO is the plain
               policy gradient; it decays smoothly as r leaves 1 (no hard cut).
    cispo      -sg(min(r, is_cap)) A logp   (MiniMax-M1, arXiv:2506.13585). The
               paper sets no lower bound and tunes only the upper one; every token keeps a
               gradient, only its weight is capped. Default cap 5.0: TRL's recommended
               epsilon_high for CISPO after ScaleRL (arXiv:2510.13786), applied as
               `clamp(ratio, max=epsilon_high)` in trl/trainer/grpo_trainer.py.
    reinforce  -sg(r) A logp, optionally 0 where the token is stale: A > 0 and
               r > 1 + eps_high, or A < 0 and r < 1 - eps_low (each side on only when its
               eps is set). With the default `mismatch="token"` the weight becomes
               sg(pi_theta / pi_old) * pi_old / pi_rollout = sg(pi_theta / pi_rollout): the
               REINFORCE-with-IS-correction of Zheng et al. 2025 (arXiv:2512.01374, "MiniRL"),
               with its decoupled PPO-style mask for off-policy updates. Truncation
               (`mismatch="token_truncate"`, TIS) caps the pi_old / pi_rollout factor; on
               the first update of a rollout pi_theta = pi_old in value, so that is the cap
               on pi_theta / pi_rollout itself. The paper does not length-normalise (it finds
               that normalisation biases the token-level surrogate), hence the default
               seq-mean-token-sum.

Checked against verl `verl/trainer/ppo/core_algos.py` (`compute_policy_loss_vanilla`,
`_gspo`, `_sapo`, `_cispo`) and TRL `trl/trainer/grpo_trainer.py` (`_compute_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from posttrain.registry import Registry

from .stats import TokenStats


@dataclass(frozen=True)
class Surrogate:
    fn: Callable[..., Tensor]
    params: Mapping[str, Any]
    """Every keyword parameter it takes, with its default."""
    formula: str
    check: Callable[[Mapping[str, Any]], None] = lambda p: None
    """Raises ValueError on a bad parameter value (pure Python, no tensors)."""
    uses_logp: bool = False
    """Whether fn reads logp itself (else it is passed None)."""
    score_function: bool = False
    """fn returns the constant coefficient c_it of a score-function loss c_it * logp_it
    (REINFORCE-type, the ratio detached) instead of the loss: `policy_loss` folds c into
    the aggregation weights and takes one weighted sum of logp, one autograd node
    (`aggregate.score_function_sum`)."""


SURROGATES: Registry[Surrogate] = Registry("surrogate")


def _check_eps(p: Mapping[str, Any]) -> None:
    for key in ("eps_low", "eps_high"):
        if p.get(key) is not None and not p[key] >= 0:
            raise ValueError(f"{key} must be >= 0, got {p[key]}")
    if p.get("eps_low") is not None and p["eps_low"] >= 1:
        raise ValueError(f"eps_low must be < 1 (the lower bound is 1 - eps_low), got {p['eps_low']}")


def clip_surrogate(ratio, adv, logp, stats: TokenStats, *, eps_low: float, eps_high: float):
    # -min(r A, c A) = max(r (-A), c (-A)), c = clip(r): the negation on A, often (B, 1).
    # The clipped branch is a constant (clip's gradient is 0 wherever it wins the max: it
    # wins only outside the band, and inside it equals r A), so the max is a `where` on
    # whether it wins: the same value and gradient as torch.max of the two branches, with
    # one cheap backward instead of the max's and the clamp's (benchmarks/objectives.py).
    neg_adv = -adv
    r = ratio.detach()
    free = ratio * neg_adv  # (B, T), or (B, 1) for a sequence ratio with a per-sequence A
    clipped = r.clamp(1 - eps_low, 1 + eps_high) * neg_adv  # constant
    loss = torch.where(clipped > free.detach(), clipped, free)
    if stats:
        stats.frac("clip/low_frac", (adv < 0) & (r < 1 - eps_low))
        stats.frac("clip/high_frac", (adv > 0) & (r > 1 + eps_high))
    return loss


def sapo_surrogate(ratio, adv, logp, stats: TokenStats, *, tau_pos: float, tau_neg: float):
    full = lambda v: torch.full((), v, dtype=ratio.dtype, device=ratio.device)  # noqa: E731
    tau = torch.where(adv > 0, full(tau_pos), full(tau_neg))  # shaped like adv
    p = torch.sigmoid(tau * (ratio - 1))
    loss = -(4 / tau) * p * adv  # (B, T)
    if stats:
        pd = p.detach()
        weight = 4 * pd * (1 - pd)  # df/dr, 1 at r = 1
        stats.mean("sapo/gate_weight_mean", weight)
        stats.frac("sapo/gate_weight_lt_half_frac", weight < 0.5)
    return loss


def _check_sapo(p):
    for key in ("tau_pos", "tau_neg"):
        if not p[key] > 0:
            raise ValueError(f"{key} must be > 0, got {p[key]}")


def cispo_surrogate(ratio, adv, logp, stats: TokenStats, *, is_cap: float):
    """The coefficient sg(min(r, is_cap)) (-A) of logp (a score-function surrogate)."""
    r = ratio.detach()
    coef = r.clamp(max=is_cap) * -adv  # (B, T); -adv is (B, 1) for a per-sequence A
    if stats:
        stats.frac("cispo/capped_frac", r > is_cap)
    return coef


def _check_cispo(p):
    if not p["is_cap"] > 0:
        raise ValueError(f"is_cap must be > 0, got {p['is_cap']}")


def reinforce_surrogate(ratio, adv, logp, stats: TokenStats, *, eps_low: float | None,
                        eps_high: float | None):
    """The coefficient sg(r) (-A) of logp, 0 where stale (a score-function surrogate)."""
    r = ratio.detach()
    coef = r * -adv  # (B, T); -adv is (B, 1) for a per-sequence A
    stale = None
    if eps_high is not None:
        stale = (adv > 0) & (r > 1 + eps_high)
    if eps_low is not None:
        low = (adv < 0) & (r < 1 - eps_low)
        stale = low if stale is None else stale | low
    if stale is None:  # no mask configured: nothing is stale, no (B, T) op spent on it
        if stats:
            stats.frac("reinforce/stale_masked_frac", torch.zeros((1, 1), dtype=torch.bool, device=r.device))
        return coef
    if stats:
        stats.frac("reinforce/stale_masked_frac", stale)
    return torch.where(stale, torch.zeros((), dtype=r.dtype, device=r.device), coef)


SURROGATES.register("clip", Surrogate(
    clip_surrogate, {"eps_low": 0.2, "eps_high": 0.2},
    "-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)", _check_eps))
SURROGATES.register("sapo", Surrogate(
    sapo_surrogate, {"tau_pos": 1.0, "tau_neg": 1.05},
    "-(4 / tau) sigmoid(tau (r - 1)) A, tau = tau_pos if A > 0 else tau_neg", _check_sapo))
SURROGATES.register("cispo", Surrogate(
    cispo_surrogate, {"is_cap": 5.0}, "-sg(min(r, is_cap)) A logp", _check_cispo, score_function=True))
SURROGATES.register("reinforce", Surrogate(
    reinforce_surrogate, {"eps_low": None, "eps_high": None},
    "-sg(r) A logp, 0 where stale (A > 0, r > 1 + eps_high or A < 0, r < 1 - eps_low)", _check_eps,
    score_function=True))


# ---------------------------------------------------------------- objectives


@dataclass(frozen=True)
class PolicyObjective:
    """A named combination of the three axes, with its defaults and source."""

    surrogate: str
    ratio: str
    """'token', 'sequence' or 'sequence_token' (`ratio.RATIOS`)."""
    aggregation: str
    """Default aggregation (`aggregate.AGGREGATIONS`); `aggregation=` overrides it."""
    formula: str
    """One line, plain text, for the docs."""
    paper: str
    params: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of the surrogate's parameter defaults."""
    mismatch: str = "none"
    """Default training-inference mismatch correction (`ratio.MISMATCH_MODES`)."""
    note: str = ""
    """Where this deviates from or interprets the paper (docs)."""

    def defaults(self) -> dict[str, Any]:
        """The surrogate parameters this objective takes, with its defaults."""
        return {**SURROGATES.get(self.surrogate).params, **self.params}


POLICY_LOSSES: Registry[PolicyObjective] = Registry("policy objective")


def register_objective(name: str, obj: PolicyObjective) -> PolicyObjective:
    """Register after checking the spec names known pieces and known parameters."""
    from .aggregate import AGGREGATIONS
    from .ratio import MISMATCH_MODES, RATIOS

    sur = SURROGATES.get(obj.surrogate)
    RATIOS.get(obj.ratio), AGGREGATIONS.get(obj.aggregation), MISMATCH_MODES.get(obj.mismatch)
    unknown = sorted(set(obj.params) - set(sur.params))
    if unknown:
        raise ValueError(f"objective {name!r}: surrogate {obj.surrogate!r} has no parameter "
                         f"{', '.join(unknown)}; it takes: {', '.join(sur.params)}")
    return POLICY_LOSSES.register(name, obj)


register_objective("grpo", PolicyObjective(
    "clip", "token", "seq-mean-token-mean",
    "-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = exp(logp - old_logp)",
    "Shao et al. 2024, DeepSeekMath, arXiv:2402.03300",
    note="The paper's KL term (beta = 0.04, k3) is off by default here: pass beta, ref_logp."))
register_objective("dr_grpo", PolicyObjective(
    "clip", "token", "constant",
    "-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A); sum over tokens / (num_seqs * max_completion_len)",
    "Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO), arXiv:2503.20783",
    note="max_completion_len is required (the generation cap, never the tensor width)."))
register_objective("dapo", PolicyObjective(
    "clip", "token", "token-mean",
    "-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), eps_high > eps_low (clip-higher); token-mean",
    "Yu et al. 2025, DAPO, arXiv:2503.14476",
    params={"eps_high": 0.28}))
register_objective("gspo", PolicyObjective(
    "clip", "sequence", "seq-mean-token-mean",
    "-min(s A, clip(s, 1 - eps_low, 1 + eps_high) A), s_i = exp(mean_t (logp - old_logp))",
    "Zheng et al. 2025, GSPO, arXiv:2507.18071",
    params={"eps_low": 3e-4, "eps_high": 4e-4}))
register_objective("gspo_token", PolicyObjective(
    "clip", "sequence_token", "seq-mean-token-mean",
    "gspo with s_it = sg(s_i) exp(logp - sg(logp)); equals gspo for per-sequence A",
    "Zheng et al. 2025, GSPO (its GSPO-token variant), arXiv:2507.18071",
    params={"eps_low": 3e-4, "eps_high": 4e-4}))
register_objective("sapo", PolicyObjective(
    "sapo", "token", "seq-mean-token-mean",
    "-(4 / tau) sigmoid(tau (r - 1)) A, tau = tau_pos if A > 0 else tau_neg",
    "Gao et al. 2025, SAPO, arXiv:2511.20347",
    note="tau_neg = 1.05 as in the paper and verl/TRL; one published model card uses 1.1."))
register_objective("cispo", PolicyObjective(
    "cispo", "token", "token-mean",
    "-sg(min(r, is_cap)) A logp",
    "MiniMax 2025, MiniMax-M1, arXiv:2506.13585",
    note="No lower bound on the weight, as in the paper; cap 5.0 after ScaleRL / TRL."))
register_objective("reinforce_is", PolicyObjective(
    "reinforce", "token", "seq-mean-token-sum",
    "-sg(r) w A logp, r = pi / pi_old, w = pi_old / pi_rollout (mismatch), 0 where stale",
    "Zheng et al. 2025, Stabilizing RL with LLMs (MiniRL), arXiv:2512.01374",
    mismatch="token",
    note="Needs rollout_logp (or mismatch='none' when the sampler is the trained model). "
         "No length normalisation, as the paper; truncate with mismatch='token_truncate'; "
         "the stale-token mask is on when eps_low / eps_high are set."))
