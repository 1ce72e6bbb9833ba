"""Importance ratios: the policy ratio (token or sequence level) and the
training-inference mismatch correction.

Policy ratio, pi_theta / pi_old, one registry entry per level; every level returns a
tensor that broadcasts to (B, T) -- (B, T), or (B, 1) for a per-sequence ratio, so that
the surrogate's work is done once per sequence rather than once per token -- and the
surrogate that follows is the same per-token function:

    token            r_it = exp(logp_it - old_logp_it)
    sequence         s_i  = exp( (1/n_i) sum_t (logp_it - old_logp_it) ),  broadcast over t
                     (GSPO, arXiv:2507.18071: the length-normalised sequence ratio)
    sequence_token   s_it = sg(s_i) * exp(logp_it - sg(logp_it))
                     (GSPO-token, same paper: value s_i, gradient s_i * grad logp_it)

With a per-sequence advantage and seq-mean-token-mean aggregation, `sequence` and
`sequence_token` give the same loss and gradient (tested); `sequence_token` additionally
lets a per-token advantage weight each token. Checked against verl
`verl/trainer/ppo/core_algos.py` (`compute_policy_loss_gspo`). No clamping of the log-ratio
(verl clamps to +-20): the math stays exact, and a log-ratio that large is a bug upstream.

Mismatch correction. The rollout engine (vLLM, or our own sampler) samples from pi_rollout,
which differs numerically from the training engine's pi_old at the same weights. The
per-token correction weight is

    w_it = pi_old / pi_rollout = exp(old_logp_it - rollout_logp_it)      (detached)

and the modes (`mismatch=`) are

    none               no weight (metrics of the mismatch are still reported)
    token              w_it, untruncated (the plain IS weight; `reinforce_is` default)
    token_truncate     min(w_it, C)                                     TIS: Yao et al. 2025,
                       "Your efficient RL framework secretly brings you off-policy RL training"
    token_mask         w_it if lo <= w_it <= hi else 0                  MIS / IcePop (Ling Team,
                       arXiv:2510.18855): tokens outside the band get no gradient; kept
                       tokens keep their weight, as in verl's `rollout_is` with a band
    sequence_truncate  min(W_i, C),  W_i = prod_t w_it                  broadcast over the row
    sequence_mask      W_i if lo <= W_i <= hi else 0                    whole row dropped

The sequence weight is the product of token weights, i.e. the exact sequence-level IS
ratio pi_old(y) / pi_rollout(y) (verl `rollout_corr_helper.py`, `rollout_is="sequence"`;
unbiased but high variance, hence truncated or banded). It is computed in log space, so a
product that overflows still truncates to C or is masked. C = `mismatch_cap` (default 2.0,
verl's default `rollout_is_threshold` and the TIS paper's C = 2); (lo, hi) =
`mismatch_bounds` (default (0.5, 2.0), a band symmetric in log-space, |log w| <= log 2).

The weight multiplies the surrogate's per-token loss (verl multiplies `pg_losses` by
`rollout_is_weights` the same way); the KL and entropy terms are not weighted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from posttrain.registry import Registry

from .aggregate import masked_sum
from .padding import Padding
from .stats import TokenStats


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of x over valid positions (0 for an empty batch), detached."""
    return (masked_sum(x.detach(), valid) / valid.sum().clamp(min=1)).detach()


def masked_max(x: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, x.detach(), torch.full_like(x, -math.inf, dtype=x.dtype)).amax()


def masked_min(x: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, x.detach(), torch.full_like(x, math.inf, dtype=x.dtype)).amin()


def _log_ratio(logp: Tensor, old_logp: Tensor, valid: Tensor, pad: Padding | None = None) -> Tensor:
    """(B, T) logp - old_logp, 0 at padding (so exp() there is 1, never inf); `pad`, the
    caller's `padding.Padding` for `valid`, if it has one."""
    d = logp - old_logp
    return (Padding(valid, d.dtype) if pad is None else pad).zero(d)


def _seq_mean(log_ratio: Tensor, valid: Tensor) -> Tensor:
    """(B, 1) mean over valid tokens of a log-ratio that is 0 at padding; valid bool or 0/1
    float (a float mask sums without the bool -> int64 copy)."""
    return log_ratio.sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True).clamp(min=1)


def token_ratio(log_ratio: Tensor, valid: Tensor) -> Tensor:
    return torch.exp(log_ratio)


def sequence_ratio(log_ratio: Tensor, valid: Tensor) -> Tensor:
    return torch.exp(_seq_mean(log_ratio, valid))  # (B, 1), broadcasts over t


def sequence_token_ratio(log_ratio: Tensor, valid: Tensor) -> Tensor:
    log_s = _seq_mean(log_ratio, valid).detach()  # (B, 1), sg
    own = log_ratio - log_ratio.detach()  # (B, T): value 0, gradient grad logp (0 at padding)
    return torch.exp(log_s + own)


@dataclass(frozen=True)
class RatioLevel:
    fn: Callable[[Tensor, Tensor], Tensor]
    """(log_ratio, valid) -> (B, T) or (B, 1) ratio, differentiable w.r.t. logp through
    log_ratio = logp - old_logp, which `policy_loss` passes with padding already 0; valid
    is the (B, T) mask, bool or 0/1 float (`policy_loss` passes its float weight)."""
    formula: str


RATIOS: Registry[RatioLevel] = Registry("ratio level")
RATIOS.register("token", RatioLevel(token_ratio, "r_it = exp(logp_it - old_logp_it)"))
RATIOS.register("sequence", RatioLevel(
    sequence_ratio, "s_i = exp(mean_t (logp_it - old_logp_it)), broadcast over t"))
RATIOS.register("sequence_token", RatioLevel(
    sequence_token_ratio, "s_it = sg(s_i) exp(logp_it - sg(logp_it))"))


# ---------------------------------------------------------------- mismatch correction


@dataclass(frozen=True)
class MismatchMode:
    level: str
    """'none', 'token' or 'sequence'."""
    action: str
    """'weight' (plain w), 'truncate' (min(w, C)), 'mask' (w inside [lo, hi], else 0)."""
    formula: str


MISMATCH_MODES: Registry[MismatchMode] = Registry("mismatch correction")
MISMATCH_MODES.register("none", MismatchMode("none", "none", "no weight"))
MISMATCH_MODES.register("token", MismatchMode("token", "weight", "w_it = exp(old_logp - rollout_logp)"))
MISMATCH_MODES.register("token_truncate", MismatchMode("token", "truncate", "min(w_it, C)"))
MISMATCH_MODES.register("token_mask", MismatchMode("token", "mask", "w_it if lo <= w_it <= hi else 0"))
MISMATCH_MODES.register("sequence_truncate", MismatchMode(
    "sequence", "truncate", "min(W_i, C), W_i = prod_t w_it"))
MISMATCH_MODES.register("sequence_mask", MismatchMode(
    "sequence", "mask", "W_i if lo <= W_i <= hi else 0 (whole row)"))


def mismatch_metrics(old_logp: Tensor, rollout_logp: Tensor, valid: Tensor,
                     stats: TokenStats | None = None) -> dict[str, Tensor]:
    """How far the training engine's pi_old is from the engine's pi_rollout, per valid token.

    k3 estimates KL(pi_rollout || pi_old) from tokens sampled by the rollout engine:
    with w = pi_old / pi_rollout, k3 = w - 1 - log w >= 0. With `stats` the metrics are
    added to it (reduced later, with the others) and {} is returned."""
    own = stats is None
    stats = TokenStats(valid, old_logp.dtype) if own else stats
    _add_mismatch_metrics(_log_ratio(old_logp, rollout_logp, valid).detach(), stats)
    return stats.reduce() if own else {}


def _add_mismatch_metrics(d: Tensor, stats: TokenStats) -> None:
    """d (B, T) = log w, 0 at padding."""
    a = d.abs()
    stats.mean("mismatch/abs_logp_diff_mean", a)
    stats.max("mismatch/abs_logp_diff_max", a)
    stats.mean("mismatch/k3", torch.exp(d) - 1 - d)


def mismatch_weights(mode: str, old_logp: Tensor, rollout_logp: Tensor, valid: Tensor, *,
                     cap: float = 2.0, bounds: tuple[float, float] = (0.5, 2.0),
                     stats: TokenStats | None = None,
                     pad: Padding | None = None) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Detached (B, T) correction weights for `mode` (None for 'none') and their metrics.

    With `stats` the metrics are added to it and the returned dict is empty. `pad`: the
    caller's `padding.Padding` for `valid` (its bit mask is then built once per call)."""
    spec = MISMATCH_MODES.get(mode)
    own = stats is None
    stats = TokenStats(valid, old_logp.dtype) if own else stats
    log_w = _log_ratio(old_logp, rollout_logp, valid, pad).detach()  # (B, T), 0 at padding
    if stats:
        _add_mismatch_metrics(log_w, stats)
    if spec.level == "none":
        return None, (stats.reduce() if own else {})
    if spec.level == "sequence":
        log_w = log_w.sum(dim=1, keepdim=True)  # (B, 1), log W_i, broadcast over the row
    if spec.action == "weight":
        w = torch.exp(log_w)
    elif spec.action == "truncate":
        if stats:
            stats.frac("is/truncated_frac", log_w > math.log(cap))
        w = torch.exp(log_w.clamp(max=math.log(cap)))
    else:
        lo, hi = bounds
        keep = (log_w >= math.log(lo)) & (log_w <= math.log(hi))
        w = torch.where(keep, torch.exp(log_w), torch.zeros((), dtype=log_w.dtype, device=log_w.device))
        if stats:
            stats.frac("is/masked_frac", ~keep)
    if stats:
        stats.mean("is/weight_mean", w)
        stats.max("is/raw_max", log_w, post=torch.exp)
        stats.min("is/raw_min", log_w, post=torch.exp)
    return w.expand_as(old_logp), (stats.reduce() if own else {})
