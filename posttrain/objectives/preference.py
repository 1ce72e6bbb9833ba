"""Offline preference objectives (DPO, ORPO, SimPO): pure functions on per-sequence log-probs.

    out = preference_loss("dpo", chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    out.loss.backward()        # 0-dim, differentiable w.r.t. chosen_logp and rejected_logp
    out.metrics                # dict of detached 0-dim tensors

Inputs, all shape (B,), one row per (prompt, chosen, rejected) pair:

    chosen_logp, rejected_logp          policy log-probs, the SUM over the response's tokens
    ref_chosen_logp, ref_rejected_logp  the same under the frozen reference (detached)
    chosen_len, rejected_len            response token counts (int or float, >= 1; detached)

Write h = logp_w - logp_l style margins, sigma the logistic function, |y| a token count.
Every objective is a per-pair loss l_b, and the loss is the mean over pairs (or
sum_b l_b / num_pairs when the trainer passes the pair count of the whole step, so that
micro-batches of any size add up to the full batch):

    dpo    l = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h),
           h = (logp_w - ref_w) - (logp_l - ref_l)
           Rafailov et al. 2023, arXiv 2305.18290, Eq. 7; eps = label_smoothing is the
           authors' conservative DPO (cDPO, "a note on DPO with noisy preferences", and
           `label_smoothing` in their reference code); eps = 0 is Eq. 7 exactly.
    orpo   l = -logp_w / |y_w| + lam * (-log sigma(log odds(y_w) - log odds(y_l))),
           odds(y) = P / (1 - P),  P = exp(logp / |y|)
           Hong et al. 2024, arXiv 2403.07691, Eq. 6-7 (lambda, written `lam`: Python reserves
           `lambda`; TRL's ORPOConfig calls it `beta`).
    simpo  l = -log sigma(beta logp_w / |y_w| - beta logp_l / |y_l| - gamma)
           Meng et al. 2024, arXiv 2405.14734, Eq. 6.

Each spec says what the trainer must supply (`needs_reference`, `needs_lengths`) and
whether the loss already contains an NLL (SFT) term on the chosen response (`adds_nll`),
so the trainer asks the spec instead of switching on names.

Decisions and deviations, each checked against the source named:

- ORPO's NLL term is the token-mean NLL of each chosen response, averaged over pairs:
  mean_b(-logp_w,b / |y_w,b|) (seq-mean-token-mean). The paper writes L_SFT as the NLL
  without saying how it is normalised across a batch; TRL (`trl/trainer/orpo_trainer.py`,
  `concatenated_forward`) takes `nn.CrossEntropyLoss()` over all chosen tokens of the batch,
  a token-mean pooled over the batch, which weights long responses more. The two agree
  when all chosen responses have the same length. We keep the per-pair form so that the
  loss is a mean of per-pair terms (micro-batching and `num_pairs` then work exactly like
  the other objectives). P is from the length-normalised log-prob, as the paper's Eq. 3
  and TRL (`average_log_prob=True`).
- ORPO's log(1 - P) is computed as log1mexp(x), x = logp / |y| (Maechler 2012: log(-expm1(x))
  near 0, log1p(-exp(x)) below -log 2), with x clamped to <= -1e-6 so that P = 1 (a
  response predicted with certainty, or rounding) does not give log(0). A pair whose mean
  token log-prob is above -1e-6 gets no odds-ratio gradient through that response; its
  NLL gradient is kept. TRL computes log1p(-exp(x)) unclamped.
- SimPO defaults beta = 2.0, gamma = 0.5 are the authors' code defaults
  (princeton-nlp/SimPO `scripts/simpo_config.py`: beta 2.0, gamma_beta_ratio 0.25, so
  gamma = 0.25 * 2.0 = 0.5). gamma here is the margin of Eq. 6 in reward units, as TRL's
  CPO `simpo_gamma` (also 0.5 by default; TRL's `beta` default 0.1 is CPO's, not SimPO's).
  The paper tunes beta in [2, 10] and gamma/beta in [0, 1] per model; set both per recipe.

Metrics (detached, 0-dim): `loss`; `rewards/chosen`, `rewards/rejected` (means of the
implicit rewards r_w, r_l below), `rewards/margin` (mean r_w - r_l), `rewards/accuracy`
(fraction of pairs with r_w > r_l, strictly: 0 at initialisation for DPO); `logps/chosen`,
`logps/rejected` (mean summed log-probs as passed). The implicit reward is the quantity
whose chosen-minus-rejected difference goes inside sigma:

    dpo    r = beta (logp - ref_logp)
    simpo  r = beta logp / |y|
    orpo   r = log odds(y), so rewards/margin is the mean log-odds ratio. TRL logs
           beta * logp / |y| instead; accuracy is the same either way (log odds is
           increasing in P).

ORPO adds `nll` (its NLL term) and `loss/odds_ratio` (the mean of -log sigma(log-odds
ratio), before lam).

Errors: an unknown parameter, or one another objective owns, is a TypeError naming it; so
is an input the objective does not read (reference log-probs for orpo / simpo, lengths for
dpo): nothing is silently ignored. A missing input the objective needs is a ValueError
naming it; shapes are checked. No `.item()` and no host sync in the math: checks are on
Python values and shapes only, so lengths are not checked to be >= 1 (0 gives inf).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from posttrain.registry import Registry

from .loss import LossOut

Metrics = dict[str, Tensor]

PREFERENCE_MODIFIERS: Mapping[str, tuple[Any, str]] = {
    "num_pairs": (None, "loss = sum of per-pair losses / num_pairs (pairs in the whole step; "
                        "default B)"),
}

_MAX_MEAN_LOGP = -1e-6
"""ORPO clamps logp / |y| to at most this, so log(1 - P) stays finite (P <= 1 - 1e-6)."""


@dataclass(frozen=True)
class PreferenceObjective:
    """One registered preference objective: the per-pair loss and what the trainer must know."""

    fn: Callable[..., tuple[Tensor, Tensor, Tensor, Metrics]]
    """(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, **params), all
    (B,) -> (per-pair loss (B,), reward chosen (B,), reward rejected (B,), extra metrics)."""
    params: Mapping[str, Any]
    """Every keyword parameter it takes, with its default."""
    formula: str
    """One line, plain text, for the docs."""
    paper: str
    needs_reference: bool
    """Needs ref_chosen_logp and ref_rejected_logp (the trainer keeps a reference model)."""
    needs_lengths: bool
    """Needs chosen_len and rejected_len (token counts of the responses)."""
    adds_nll: bool
    """The loss already contains an NLL (SFT) term on the chosen response."""
    check: Callable[[Mapping[str, Any]], None] = lambda p: None
    """Raises ValueError on a bad parameter value (pure Python, no tensors)."""
    note: str = ""
    """Where this deviates from or interprets the paper (docs)."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Names other code (papers, TRL, the authors' repos) uses -> what to pass instead; for
    the unknown-parameter message only, never accepted."""

    def defaults(self) -> dict[str, Any]:
        return dict(self.params)


PREFERENCE_LOSSES: Registry[PreferenceObjective] = Registry("preference objective")


# ---------------------------------------------------------------- per-pair losses


def dpo_pair_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, *,
                  beta: float, label_smoothing: float):
    """DPO, Rafailov et al. 2023 (arXiv 2305.18290) Eq. 7, with cDPO label smoothing.

        h = (logp_w - ref_w) - (logp_l - ref_l)                     (B,)
        l = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)   (B,)

    dl/dlogp_w = -beta ((1 - eps) sigma(-beta h) - eps sigma(beta h)) = -dl/dlogp_l.
    Policy equal to the reference gives h = 0 and l = log 2 for any eps.
    """
    r_w, r_l = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)  # (B,)
    z = r_w - r_l
    loss = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return loss, r_w, r_l, {}


def _check_dpo(p):
    if not p["beta"] > 0:
        raise ValueError(f"beta must be > 0, got {p['beta']}")
    if not 0 <= p["label_smoothing"] < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) (the assumed fraction of flipped "
                         f"labels; 0.5 makes them uninformative), got {p['label_smoothing']}")


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere (Maechler 2012, "Accurately Computing
    log(1 - exp(-|a|))"): log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2. Both branches
    are finite for every x < 0, so the gradient through torch.where is never NaN."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(logp: Tensor, length: Tensor) -> Tensor:
    """log(P / (1 - P)), P = exp(logp / length): ORPO's Eq. 3-4 odds, in log space. (B,)"""
    x = (logp / length).clamp(max=_MAX_MEAN_LOGP)
    return x - log1mexp(x)


def orpo_pair_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, *,
                   lam: float):
    """ORPO, Hong et al. 2024 (arXiv 2403.07691) Eq. 6-7.

        nll  = -logp_w / |y_w|                                           (B,)
        lor  = log odds(y_w) - log odds(y_l)                             (B,)
        l    = nll + lam * (-log sigma(lor))                             (B,)

    With x = logp / |y| and P = e^x, d log odds / dx = 1 / (1 - P), so
    dl/dlogp_w = -1/|y_w| - lam sigma(-lor) / (|y_w| (1 - P_w)) and
    dl/dlogp_l = lam sigma(-lor) / (|y_l| (1 - P_l)).
    """
    lo_w, lo_l = log_odds(chosen, chosen_len), log_odds(rejected, rejected_len)  # (B,)
    nll = -chosen / chosen_len
    l_or = -F.logsigmoid(lo_w - lo_l)
    return nll + lam * l_or, lo_w, lo_l, {"nll": nll, "loss/odds_ratio": l_or}


def _check_orpo(p):
    if not p["lam"] >= 0:
        raise ValueError(f"lam must be >= 0 (0 is plain SFT on the chosen responses), "
                         f"got {p['lam']}")


def simpo_pair_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, *,
                    beta: float, gamma: float):
    """SimPO, Meng et al. 2024 (arXiv 2405.14734) Eq. 6.

        r = beta logp / |y|                                              (B,)
        l = -log sigma(r_w - r_l - gamma)                                (B,)

    With s = sigma(-(r_w - r_l - gamma)): dl/dlogp_w = -(beta / |y_w|) s and
    dl/dlogp_l = (beta / |y_l|) s.
    """
    r_w, r_l = beta * chosen / chosen_len, beta * rejected / rejected_len  # (B,)
    return -F.logsigmoid(r_w - r_l - gamma), r_w, r_l, {}


def _check_simpo(p):
    if not p["beta"] > 0:
        raise ValueError(f"beta must be > 0, got {p['beta']}")
    if not p["gamma"] >= 0:
        raise ValueError(f"gamma (the target reward margin) must be >= 0, got {p['gamma']}")


PREFERENCE_LOSSES.register("dpo", PreferenceObjective(
    dpo_pair_loss, {"beta": 0.1, "label_smoothing": 0.0},
    "-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), "
    "h = (logp_w - ref_w) - (logp_l - ref_l)",
    "Rafailov et al. 2023, Direct Preference Optimization, arXiv 2305.18290 (Eq. 7)",
    needs_reference=True, needs_lengths=False, adds_nll=False, check=_check_dpo,
    note="label_smoothing > 0 is the authors' conservative DPO (cDPO); 0 is Eq. 7."))
PREFERENCE_LOSSES.register("orpo", PreferenceObjective(
    orpo_pair_loss, {"lam": 0.1},
    "-logp_w / |y_w| - lam log sigmoid(log odds(y_w) - log odds(y_l)), "
    "odds = P / (1 - P), P = exp(logp / |y|)",
    "Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model, "
    "arXiv 2403.07691 (Eq. 6-7)",
    needs_reference=False, needs_lengths=True, adds_nll=True, check=_check_orpo,
    note="NLL is the per-response token mean, averaged over pairs (TRL pools tokens over the "
         "batch); logp / |y| is clamped to <= -1e-6 before log(1 - P).",
    aliases={"lambda": "lam", "beta": "lam (TRL's ORPOConfig calls it beta)"}))
PREFERENCE_LOSSES.register("simpo", PreferenceObjective(
    simpo_pair_loss, {"beta": 2.0, "gamma": 0.5},
    "-log sigmoid(beta logp_w / |y_w| - beta logp_l / |y_l| - gamma)",
    "Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, "
    "arXiv 2405.14734 (Eq. 6)",
    needs_reference=False, needs_lengths=True, adds_nll=False, check=_check_simpo,
    note="Defaults are the authors' code defaults (beta 2.0, gamma / beta 0.25); the paper "
         "tunes both per model.",
    aliases={"simpo_gamma": "gamma", "gamma_beta_ratio": "gamma = gamma_beta_ratio * beta"}))


# ---------------------------------------------------------------- the loss


def preference_params(name: str) -> dict[str, Any]:
    """Every parameter `preference_loss(name, ...)` takes, with its default."""
    modifiers = {k: d for k, (d, _) in PREFERENCE_MODIFIERS.items()}
    return {**PREFERENCE_LOSSES.get(name).defaults(), **modifiers}


def _reject_unknown(name: str, obj: PreferenceObjective, params: Mapping[str, Any]) -> None:
    allowed = preference_params(name)
    for key in params:
        if key in allowed:
            continue
        hints = []
        if key in obj.aliases:
            hints.append(f"pass {obj.aliases[key]} instead")
        owners = [n for n, o in PREFERENCE_LOSSES.items() if key in o.params]
        if owners:
            hints.append(f"it belongs to {', '.join(owners)}")
        if not hints:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hints.append(f"did you mean {close[0]!r}?" if close else "no close match")
        raise TypeError(f"preference objective {name!r} has no parameter {key!r} "
                        f"({'; '.join(hints)}); it takes: {', '.join(allowed)}")


def _check_inputs(name: str, obj: PreferenceObjective, chosen: Tensor,
                  inputs: Mapping[str, Tensor | None]) -> None:
    """Presence by the spec's needs, then shapes: everything (B,) like chosen_logp."""
    for needed, keys, what in ((obj.needs_reference, ("ref_chosen_logp", "ref_rejected_logp"),
                                "the reference model's summed log-probs"),
                               (obj.needs_lengths, ("chosen_len", "rejected_len"),
                                "the responses' token counts")):
        given = [k for k in keys if inputs[k] is not None]
        if needed and len(given) < 2:
            missing = [k for k in keys if inputs[k] is None]
            raise ValueError(f"{name} needs {' and '.join(missing)} ({what})")
        if not needed and given:
            raise TypeError(f"{name} does not read {', '.join(given)}; pass inputs by the spec's "
                            f"needs_reference / needs_lengths")
    if chosen.dim() != 1:
        raise ValueError(f"chosen_logp must be (B,) (one summed log-prob per pair), "
                         f"got shape {tuple(chosen.shape)}")
    for key, t in inputs.items():
        if t is not None and t.shape != chosen.shape:
            raise ValueError(f"{key} must have chosen_logp's shape {tuple(chosen.shape)}, "
                             f"got {tuple(t.shape)}")


def preference_loss(name: str, chosen_logp: Tensor, rejected_logp: Tensor,
                    ref_chosen_logp: Tensor | None = None, ref_rejected_logp: Tensor | None = None,
                    chosen_len: Tensor | None = None, rejected_len: Tensor | None = None,
                    **params) -> LossOut:
    """The named preference objective's loss (mean over pairs) and metrics; see the module
    docstring. All tensors (B,); log-probs are per-response sums of token log-probs."""
    obj = PREFERENCE_LOSSES.get(name)
    _reject_unknown(name, obj, params)
    p = {**obj.defaults(), **{k: v for k, v in params.items() if k in obj.params}}
    obj.check(p)
    num_pairs = params.get("num_pairs")
    if num_pairs is not None and not num_pairs > 0:
        raise ValueError(f"num_pairs must be > 0, got {num_pairs}")
    _check_inputs(name, obj, chosen_logp, {
        "rejected_logp": rejected_logp, "ref_chosen_logp": ref_chosen_logp,
        "ref_rejected_logp": ref_rejected_logp, "chosen_len": chosen_len,
        "rejected_len": rejected_len})

    dt = torch.promote_types(chosen_logp.dtype, torch.float32)

    def const(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to(dt)

    chosen, rejected = chosen_logp.to(dt), rejected_logp.to(dt)  # (B,), differentiable
    loss_b, r_w, r_l, extra = obj.fn(chosen, rejected, const(ref_chosen_logp),
                                     const(ref_rejected_logp), const(chosen_len),
                                     const(rejected_len), **p)  # each (B,)
    loss = loss_b.mean() if num_pairs is None else loss_b.sum() / num_pairs

    r_w, r_l = r_w.detach(), r_l.detach()
    metrics: Metrics = {
        "loss": loss.detach(),
        "rewards/chosen": r_w.mean(),
        "rewards/rejected": r_l.mean(),
        "rewards/margin": (r_w - r_l).mean(),
        "rewards/accuracy": (r_w > r_l).to(dt).mean(),
        "logps/chosen": chosen.detach().mean(),
        "logps/rejected": rejected.detach().mean(),
    }
    metrics.update({k: v.detach().mean() for k, v in extra.items()})
    return LossOut(loss, metrics)
