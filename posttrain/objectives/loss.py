"""`policy_loss`: one RLVR policy objective, composed from its registered pieces.

    out = policy_loss("dapo", logp, old_logp, advantages, mask, num_tokens=step_tokens)
    out.loss.backward()        # scalar, differentiable w.r.t. logp (and entropy if coef != 0)
    out.metrics                # dict of detached 0-dim tensors

Shapes: logp, old_logp, rollout_logp, ref_logp, entropy (B, T) float; mask (B, T) bool or
0/1; advantages (B,) (one per sequence) or (B, T). Rows of a group are contiguous (that
matters to the advantage estimator, not here). old_logp, rollout_logp, ref_logp and
advantages are constants: they are detached.

The composition, top to bottom (each step is its own registry or module):

    ratio     = RATIOS[objective.ratio](logp - old_logp)         token | sequence | sequence_token
    l_it      = SURROGATES[objective.surrogate](ratio, A, logp)  per-token loss
    l_it     *= w_it                                             mismatch correction (ratio.py)
    l_it      = 0 where entropy < threshold                      top-rho entropy mask (masks.py)
    loss      = AGGREGATIONS[aggregation](l, mask, normalisers)
              + beta * AGGREGATIONS[aggregation](KL_ESTIMATORS[kl_estimator](logp, ref_logp))
              - entropy_coef * AGGREGATIONS[aggregation](entropy)

Every aggregation is linear in the per-token loss, so each term is computed as one weighted
sum with constant token weights (`Aggregation.token_weights`), the mismatch weight and the
entropy mask folded into the policy term's weights: the same loss, fewer autograd nodes.

Parameters are keyword arguments: the surrogate's (e.g. eps_low, eps_high; tau_pos,
tau_neg; is_cap) with the objective's defaults, and the modifiers in `MODIFIERS`, which
every objective takes. An unknown parameter, or one that does not apply (tau_pos for grpo,
mismatch_cap without a truncating mismatch mode, num_tokens with a seq-mean aggregation),
is a TypeError naming it; a modifier that needs an input that was not given (beta > 0
without ref_logp) is a ValueError. Nothing is silently ignored.

No `.item()` and no host sync in the math; the checks are on Python values and shapes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from .aggregate import AGGREGATIONS, score_function_sum, weighted_sum
from .kl import KL_ESTIMATORS, kl_estimate
from .masks import entropy_mask
from .padding import Padding, zero_scalar
from .policy import POLICY_LOSSES, SURROGATES, PolicyObjective
from .ratio import MISMATCH_MODES, RATIOS, mismatch_weights
from .stats import TokenStats

MODIFIERS: Mapping[str, tuple[Any, str]] = {
    "aggregation": (None, "override the objective's aggregation (see Aggregations)"),
    "num_tokens": (None, "token-mean normaliser: valid tokens of the whole step (default: this batch's)"),
    "num_seqs": (None, "seq-mean / constant normaliser: sequences of the whole step (default: B)"),
    "max_completion_len": (None, "constant normaliser: the generation cap (required by 'constant')"),
    "beta": (0.0, "KL-to-reference coefficient; > 0 needs ref_logp"),
    "kl_estimator": ("k3", "KL estimator for the loss and the kl/ref metric (needs ref_logp)"),
    "entropy_coef": (0.0, "entropy bonus coefficient: loss -= coef * aggregated entropy (needs entropy)"),
    "top_entropy_rho": (1.0, "policy gradient only on the top-rho highest-entropy valid tokens"),
    "entropy_threshold": (None, "precomputed entropy threshold (whole-batch), instead of top_entropy_rho"),
    "mismatch": (None, "training-inference correction from rollout_logp (objective's default if None)"),
    "mismatch_cap": (2.0, "C of the `*_truncate` modes"),
    "mismatch_bounds": ((0.5, 2.0), "(lo, hi) of the `*_mask` modes"),
}


def _const(t: Tensor) -> Tensor:
    """t detached; t itself when it carries no gradient (skips a dispatch of `detach`)."""
    return t.detach() if t.requires_grad else t


def _as(t: Tensor, dt: torch.dtype) -> Tensor:
    """t in dtype dt; t itself when it already is (skips a dispatch of `.to`)."""
    return t if t.dtype == dt else t.to(dt)


@dataclass(frozen=True)
class LossOut:
    loss: Tensor
    """0-dim, differentiable w.r.t. logp."""
    metrics: dict[str, Tensor | float]
    """Detached 0-dim tensors (call float() when logging, outside the math)."""


def objective_params(name: str) -> dict[str, Any]:
    """Every parameter `policy_loss(name, ...)` takes, with its default."""
    obj = POLICY_LOSSES.get(name)
    out = {**obj.defaults(), **{k: d for k, (d, _) in MODIFIERS.items()}}
    out["aggregation"], out["mismatch"] = obj.aggregation, obj.mismatch
    return out


def objective_normalisers(name: str, aggregation: str | None = None) -> tuple[str, ...]:
    """The normalisers the trainer should pass (global counts) for this objective."""
    return AGGREGATIONS.get(aggregation or POLICY_LOSSES.get(name).aggregation).normalisers


def _reject_unknown(name: str, obj: PolicyObjective, params: Mapping[str, Any]) -> None:
    allowed = {**obj.defaults(), **MODIFIERS}
    for key in params:
        if key in allowed:
            continue
        owners = [n for n, o in POLICY_LOSSES.items() if key in o.defaults()]
        if owners:
            hint = f"it belongs to {', '.join(owners)}"
        else:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "no close match"
        raise TypeError(f"policy objective {name!r} has no parameter {key!r} ({hint}); "
                        f"it takes: {', '.join(allowed)}")


_NORMALISERS = ("num_tokens", "num_seqs", "max_completion_len")
_RESOLVED: dict[tuple, tuple] = {}


def _resolve(name: str, params: Mapping[str, Any], *, ref_logp, rollout_logp, entropy):
    """(objective, surrogate, surrogate params, modifiers), validated, for these settings.

    The checks are pure functions of the names and values of the settings (normalisers:
    only whether they are given) and of which optional inputs are present, so the result is
    cached per distinct settings: a training run calls with the same ones every step, and
    the Python checks are most of a call's fixed cost (benchmarks/objectives.py). Callers
    must not mutate what it returns."""
    try:
        key = (name, tuple(sorted((k, (v is None) if k in _NORMALISERS else v) for k, v in params.items())),
               ref_logp is None, rollout_logp is None, entropy is None)
        hit = _RESOLVED.get(key)
    except TypeError:  # an unhashable value (a list, say): check without caching
        key, hit = None, None
    if hit is None:
        obj = POLICY_LOSSES.get(name)
        _reject_unknown(name, obj, params)
        sur = SURROGATES.get(obj.surrogate)
        sp = {**obj.defaults(), **{k: v for k, v in params.items() if k in obj.defaults()}}
        sur.check(sp)
        m, _ = _check_modifiers(name, obj, params, ref_logp=ref_logp, rollout_logp=rollout_logp, entropy=entropy)
        # the registry entries the call reads, looked up once
        m = {**m, "_ratio": RATIOS.get(obj.ratio).fn, "_agg_w": AGGREGATIONS.get(m["aggregation"]).token_weights,
             "_mismatch_level": MISMATCH_MODES.get(m["mismatch"]).level}
        hit = (obj, sur, sp, m)
        if key is not None:
            if len(_RESOLVED) > 256:
                _RESOLVED.clear()
            _RESOLVED[key] = hit
    return hit


def _check_modifiers(name, obj, params, *, ref_logp, rollout_logp, entropy):
    """Resolve and validate the modifiers: (every modifier's value, the normalisers to pass)."""
    m = {k: d for k, (d, _) in MODIFIERS.items()}
    m.update({k: v for k, v in params.items() if k in MODIFIERS})
    m["aggregation"] = agg_name = m["aggregation"] or obj.aggregation
    m["mismatch"] = mode_name = m["mismatch"] or obj.mismatch
    agg = AGGREGATIONS.get(agg_name)
    norms = {k: params[k] for k in ("num_tokens", "num_seqs", "max_completion_len") if k in params}
    extra = sorted(set(norms) - set(agg.normalisers))
    if extra:
        raise TypeError(f"{name}: aggregation {agg_name!r} does not use {', '.join(extra)}; "
                        f"it reads: {', '.join(agg.normalisers)}")
    if "max_completion_len" in agg.normalisers and norms.get("max_completion_len") is None:
        raise ValueError(f"{name}: aggregation {agg_name!r} needs max_completion_len (the generation "
                         "cap, a constant of the run; never the padded tensor width)")
    mode = MISMATCH_MODES.get(mode_name)
    if "mismatch_cap" in params and mode.action != "truncate":
        raise TypeError(f"{name}: mismatch_cap applies to the *_truncate modes, not mismatch={mode_name!r}")
    if "mismatch_bounds" in params and mode.action != "mask":
        raise TypeError(f"{name}: mismatch_bounds applies to the *_mask modes, not mismatch={mode_name!r}")
    if mode.level != "none" and rollout_logp is None:
        raise ValueError(f"{name}: mismatch={mode_name!r} needs rollout_logp (the engine's log-probs); "
                         "pass mismatch='none' if the sampler is the trained model itself")
    cap, (lo, hi) = m["mismatch_cap"], m["mismatch_bounds"]
    if not cap > 0 or not 0 < lo < hi:
        raise ValueError(f"{name}: need mismatch_cap > 0 and 0 < lo < hi, got {cap}, ({lo}, {hi})")
    beta = m["beta"]
    if beta < 0:
        raise ValueError(f"{name}: beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"{name}: beta={beta} needs ref_logp (the reference model's log-probs)")
    if "kl_estimator" in params:
        KL_ESTIMATORS.get(params["kl_estimator"])
        if ref_logp is None:
            raise TypeError(f"{name}: kl_estimator applies only with ref_logp")
    if m["entropy_coef"] != 0 and entropy is None:
        raise ValueError(f"{name}: entropy_coef needs the entropy tensor")
    if "top_entropy_rho" in params and "entropy_threshold" in params:
        raise TypeError(f"{name}: pass top_entropy_rho or entropy_threshold, not both")
    if not 0 < m["top_entropy_rho"] <= 1:
        raise ValueError(f"{name}: top_entropy_rho must be in (0, 1], got {m['top_entropy_rho']}")
    if (m["top_entropy_rho"] < 1 or m["entropy_threshold"] is not None) and entropy is None:
        raise ValueError(f"{name}: the high-entropy token mask needs the entropy tensor")
    return m, norms


def _check_shapes(logp, mask, advantages, **others):
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    for key, t in {"mask": mask, **others}.items():
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{key} must have logp's shape {tuple(logp.shape)}, got {tuple(t.shape)}")
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(f"advantages must be (B,) or (B, T) = {tuple(logp.shape)}, "
                         f"got {tuple(advantages.shape)}")


def policy_loss(name: str, logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                rollout_logp: Tensor | None = None, ref_logp: Tensor | None = None,
                entropy: Tensor | None = None, *, metrics: bool = True, **params) -> LossOut:
    """The named objective's loss and metrics; see the module docstring.

    metrics=False skips every metric but loss/policy (and loss/kl, loss/entropy): the loss
    and its gradient are the same, with fewer tensor ops (benchmarks/objectives.py)."""
    obj, sur, sp, m = _resolve(name, params, ref_logp=ref_logp, rollout_logp=rollout_logp, entropy=entropy)
    norms = {k: params[k] for k in _NORMALISERS if k in params}
    _check_shapes(logp, mask, advantages, old_logp=old_logp, rollout_logp=rollout_logp,
                  ref_logp=ref_logp, entropy=entropy)

    dt = torch.promote_types(logp.dtype, torch.float32)
    valid = mask.bool()  # (B, T)
    zero = zero_scalar(dt, logp.device)
    # Every term is finite at padding once the inputs are cleaned (log-ratio 0, so ratio and
    # weights 1 there), so aggregation and metrics weight by the 0/1 mask instead of `where`.
    weight = valid.view(torch.uint8).to(dt)  # (B, T) 0/1; uint8 -> float is the fast cast
    pad = Padding(valid, dt)  # zeroes padding; constants by a bitwise AND (padding.py)
    stats = TokenStats(valid, dt, weight, enabled=metrics)

    def clean(t: Tensor | None, detach: bool = True) -> Tensor | None:
        """fp32 (or wider) with padding set to 0: whatever sits there (even NaN) is never
        read, and the gradient at padding is exactly 0."""
        if t is None:
            return None
        return pad.zero(_as(_const(t) if detach else t, dt))

    # log pi_theta / pi_old with padding 0, and logp cleaned where a term multiplies by it:
    # one clean-up per input, the difference of cleaned inputs needs none
    raw_logp, old = _as(logp, dt), _as(_const(old_logp), dt)
    logp = clean(raw_logp, detach=False) if sur.uses_logp or ref_logp is not None else None
    if sur.score_function:
        # the ratio is detached: built off the graph, from a cleaned constant copy of logp
        const_logp = clean(raw_logp) if logp is None else logp.detach()
        log_ratio = const_logp - clean(old)  # (B, T)
    elif logp is not None:
        log_ratio = logp - clean(old)
    else:
        log_ratio = clean(raw_logp - old, detach=False)
    adv = _as(_const(advantages), dt)
    adv = adv[:, None] if adv.dim() == 1 else clean(adv)  # (B, 1) broadcasts, or (B, T)

    ratio = m["_ratio"](log_ratio, weight)  # (B, T), or (B, 1) per sequence
    # the per-token loss, or for a score-function surrogate the constant c of c * logp;
    # broadcasts to (B, T)
    term = sur.fn(ratio, adv, logp if sur.uses_logp else None, stats, **sp)
    # The aggregation is linear in the per-token loss, so it is a weighted sum with constant
    # weights W (aggregate.Aggregation.token_weights), and the per-token constants that
    # multiply the policy term (mismatch weight, entropy mask) fold into W: fewer autograd
    # nodes than multiplying the loss by each of them and dividing it by the normalisers.
    agg_w = m["_agg_w"](weight, **norms)  # (B, T) constant
    policy_w = agg_w
    if stats:
        stats.mean("ratio/mean", ratio)
        stats.max("ratio/max", ratio)
        stats.min("ratio/min", ratio)

    if rollout_logp is not None and (metrics or m["_mismatch_level"] != "none"):
        w, _ = mismatch_weights(m["mismatch"], old, _as(_const(rollout_logp), dt), valid,
                                cap=m["mismatch_cap"], bounds=m["mismatch_bounds"], stats=stats, pad=pad)
        if w is not None:
            policy_w = policy_w * w

    if m["top_entropy_rho"] < 1 or m["entropy_threshold"] is not None:
        keep = entropy_mask(entropy, valid, rho=m["top_entropy_rho"], threshold=m["entropy_threshold"])
        policy_w = torch.where(keep, policy_w, zero)
        if stats:
            stats.frac("entropy/kept_frac", keep)

    if sur.score_function:  # value from the cleaned copy; gradient term * policy_w, 0 at padding
        loss = score_function_sum(raw_logp, const_logp, term * policy_w)
    else:
        loss = weighted_sum(term, policy_w)
    out_metrics: dict[str, Tensor | float] = {"loss/policy": loss.detach()}

    if ref_logp is not None:
        kl_tok = kl_estimate(m["kl_estimator"], logp, clean(ref_logp))  # (B, T)
        if stats:
            stats.mean("kl/ref", kl_tok)
        if m["beta"] > 0:
            kl = weighted_sum(kl_tok, agg_w)
            loss = loss + m["beta"] * kl
            out_metrics["loss/kl"] = kl.detach()
    if entropy is not None:
        entropy = clean(entropy, detach=False)
        if stats:
            stats.mean("entropy/mean", entropy)
        if m["entropy_coef"] != 0:
            ent = weighted_sum(entropy, agg_w)
            loss = loss - m["entropy_coef"] * ent
            out_metrics["loss/entropy"] = ent.detach()
    out_metrics.update(stats.reduce())
    if metrics:
        out_metrics["tokens/valid"] = stats.n
    return LossOut(loss, out_metrics)
