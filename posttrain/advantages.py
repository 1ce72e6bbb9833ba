"""Advantage estimators: per-completion rewards in, one advantage per completion out.

    adv = compute_advantages("grpo", rewards, group_size=G)         # rewards (N,) or (N, K) -> (N,)
    adv = compute_advantages("gdpo", rewards, group_size=G, weights=[1.0, 0.5])

`rewards` holds N = B x G completions, the G completions of one prompt on contiguous rows,
and K named reward components per completion (format, answer, length, ...). Every
estimator is a pure function on tensors (no `.item()`, no host sync); the result is float32
on the rewards' device.

Two families:

- group-relative (`grpo`, `dr_grpo`, `rloo`): first combine the K components into one
  reward, r = rewards @ weights (weights default to 1.0 each, i.e. the sum, as TRL's
  `reward_weights`), then compare each completion with its group.
- decoupled (`gdpo`): normalise each component within its group first, then take the
  weighted sum, then normalise over the batch. Reward combinations that the group-relative
  estimators collapse onto one advantage keep distinct advantages here.

Batch-level scaling (`scale="batch"`, REINFORCE++-baseline style) divides the group-centred
advantages by their standard deviation over the whole batch instead of per group; see
`_scale`.

Edge cases, all estimators: a group of one completion, or a group whose rewards are
identical, gets advantage exactly 0 (never NaN); so does a batch whose pre-normalisation
advantages are all equal. verl (`core_algos.py`, `compute_grpo_outcome_advantage`) instead
uses mean 0 and std 1 for a group of one, giving A = r; we give 0, since one sample has no
baseline to compare with.

NaN rewards are not checked for (that would need a host sync); the reward layer scores
failures as a number, never NaN.

Run `python -m posttrain.advantages` to rewrite the estimator table in docs/objectives.md.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from posttrain.registry import Registry

EPS = 1e-4  # added to a std before dividing, as TRL and the GDPO reference code do


@dataclass(frozen=True)
class AdvantageEstimator:
    """One registered estimator: the function and what the docs and CLI say about it."""

    fn: Callable[..., Tensor]
    """(rewards (N, K) float32, group_size G, weights (K,) float32, **params) -> (N,) float32."""
    formula: str
    """One line, plain text, for the docs table."""
    paper: str
    """Where the formula comes from."""
    defaults: Mapping[str, object] = field(default_factory=dict)
    """Every accepted keyword parameter and its default."""
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Allowed values of the string parameters."""


ADVANTAGES: Registry[AdvantageEstimator] = Registry("advantage estimator")


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_size: int,
    weights: Sequence[float] | Tensor | None = None,
    **params,
) -> Tensor:
    """Advantages of estimator `name` (see `ADVANTAGES.names()`).

    rewards: (N,) or (N, K), N = groups x group_size, a group's rows contiguous.
    weights: (K,) reward-component weights; default 1.0 each.
    params: the estimator's own options (`eps`, `scale`); an unknown one is an error.
    Returns (N,) float32.
    """
    est = ADVANTAGES.get(name)
    r = _as_2d(rewards)  # (N, K)
    n, k = r.shape
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if n % group_size:
        raise ValueError(
            f"rewards has N={n} rows, not a multiple of group_size G={group_size}: "
            f"each prompt's G completions must be contiguous rows"
        )
    w = _weights(weights, k, r.device)
    opts = _params(name, est, params)
    if n == 0 or group_size == 1:  # a group of one has no baseline: advantage 0
        return torch.zeros(n, dtype=torch.float32, device=r.device)
    return est.fn(r, group_size, w, **opts)


# ---------------------------------------------------------------- argument checks


def _as_2d(rewards) -> Tensor:
    r = torch.as_tensor(rewards)
    if r.dim() == 1:
        r = r.unsqueeze(1)
    if r.dim() != 2:
        raise ValueError(f"rewards must have shape (N,) or (N, K), got {tuple(r.shape)}")
    return r.to(torch.float32)


def _weights(weights, k: int, device) -> Tensor:
    if weights is None:
        return torch.ones(k, dtype=torch.float32, device=device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)
    if w.dim() != 1 or w.shape[0] != k:
        raise ValueError(
            f"weights must have one entry per reward column: rewards has K={k} column(s), "
            f"weights has shape {tuple(w.shape)}"
        )
    return w


def _params(name: str, est: AdvantageEstimator, params: dict) -> dict:
    unknown = sorted(set(params) - set(est.defaults))
    if unknown:
        hints = []
        for u in unknown:
            close = difflib.get_close_matches(u, list(est.defaults), n=1)
            hints.append(f"{u!r} (did you mean {close[0]!r}?)" if close else repr(u))
        raise ValueError(
            f"unknown parameter(s) for advantage estimator {name!r}: {', '.join(hints)}; "
            f"known: {', '.join(est.defaults) or 'none'}"
        )
    opts = {**est.defaults, **params}
    for key, allowed in est.choices.items():
        if opts[key] not in allowed:
            raise ValueError(f"advantage estimator {name!r}: {key}={opts[key]!r} is not one of "
                             f"{', '.join(map(repr, allowed))}")
    if "eps" in opts:
        eps = opts["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < math.inf):
            raise ValueError(f"advantage estimator {name!r}: eps must be a finite number >= 0, "
                             f"got {eps!r}")
        opts["eps"] = float(eps)
    return opts


def _register(name: str, **meta) -> Callable:
    def add(fn):
        ADVANTAGES.register(name, AdvantageEstimator(fn=fn, **meta))
        return fn
    return add


# ---------------------------------------------------------------- shared pieces


def _signal(grouped: Tensor) -> Tensor:
    """(B, G, ...) -> (B, 1, ...) bool: does the group hold two different values?

    An exact test (max > min), not std > 0: the mean of G equal floats need not equal them
    (0.1 * 3 / 3 != 0.1), so r - mean can be 1e-9 where the true answer is 0.
    """
    return grouped.amax(dim=1, keepdim=True) > grouped.amin(dim=1, keepdim=True)


def _scale(centred: Tensor, grouped: Tensor, scale: str, eps: float) -> Tensor:
    """Divide group-centred advantages (B, G) by the chosen spread.

    group: the std of each group's rewards (Bessel's correction), as GRPO.
    batch: the std of all N centred advantages (Bessel's correction), as REINFORCE++-baseline
           (Hu et al. 2025, arXiv 2501.03262; verl `compute_reinforce_plus_plus_baseline_
           outcome_advantage`): subtract the group mean, then normalise over the batch. The
           batch mean is not subtracted again: every group is centred, so it is already 0.
           Deviations: verl whitens over tokens (a long response counts once per token), we
           over sequences; TRL's `scale_rewards="batch"` divides by the std of the raw
           rewards, which also counts the spread between prompts, we only within them.
    none:  no division, as Dr. GRPO.
    """
    if scale == "group":
        return centred / (grouped.std(dim=1, keepdim=True) + eps)
    if scale == "batch":
        return centred / (centred.std() + eps)
    return centred


# ---------------------------------------------------------------- group-relative

def _group_relative(rewards: Tensor, group_size: int, weights: Tensor, *, leave_one_out: bool,
                    scale: str, eps: float) -> Tensor:
    grouped = (rewards @ weights).reshape(-1, group_size)  # (B, G)
    if leave_one_out:
        # baseline of r_i: the mean of the other G - 1 rewards of its group
        baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    else:
        baseline = grouped.mean(dim=1, keepdim=True)  # (B, 1)
    adv = _scale(grouped - baseline, grouped, scale, eps)
    return torch.where(_signal(grouped), adv, torch.zeros_like(adv)).reshape(-1)


@_register(
    "grpo",
    formula="A_i = (r_i - mean_g(r)) / (std_g(r) + eps), std with Bessel's correction",
    paper="Shao et al. 2024, DeepSeekMath (arXiv 2402.03300), sec. 4.1.2",
    defaults={"scale": "group", "eps": EPS},
    choices={"scale": ("group", "batch", "none")},
)
def grpo(rewards: Tensor, group_size: int, weights: Tensor, *, scale: str, eps: float) -> Tensor:
    """GRPO: A_i = (r_i - mean_g r) / (std_g r + eps), r = rewards @ weights.

    Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, sec. 4.1.2 (outcome supervision).
    std_g uses Bessel's correction (divides by G - 1), as torch.std, TRL `grpo_trainer.py`
    and verl `core_algos.py` (checked); the paper does not say which. eps = 1e-4 as TRL.
    rewards (N, K) float32, weights (K,) -> (N,). `scale` ("group" | "batch" | "none"): see
    `_scale`; "none" is `dr_grpo`.
    """
    return _group_relative(rewards, group_size, weights, leave_one_out=False, scale=scale, eps=eps)


@_register(
    "dr_grpo",
    formula="A_i = r_i - mean_g(r)",
    paper="Liu et al. 2025, Understanding R1-Zero-Like Training (arXiv 2503.20783)",
    defaults={"scale": "none", "eps": EPS},
    choices={"scale": ("none", "batch")},
)
def dr_grpo(rewards: Tensor, group_size: int, weights: Tensor, *, scale: str, eps: float) -> Tensor:
    """Dr. GRPO: A_i = r_i - mean_g r, r = rewards @ weights; no division by the group std.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
    arXiv 2503.20783: dividing by std_g up-weights prompts that are nearly all right or all
    wrong (a question-level difficulty bias), so Dr. GRPO drops it. The length-bias half of
    the fix lives in the aggregation (`objectives`), not here. `scale="batch"` divides by
    one batch-wide std (`_scale`), which keeps the ranking between prompts; "group" is
    refused because it is `grpo`. rewards (N, K) float32, weights (K,) -> (N,).
    """
    return _group_relative(rewards, group_size, weights, leave_one_out=False, scale=scale, eps=eps)


@_register(
    "rloo",
    formula="A_i = r_i - (sum_g(r) - r_i) / (G - 1) = G / (G - 1) * (r_i - mean_g(r))",
    paper="Kool et al. 2019, Buy 4 REINFORCE Samples, Get a Baseline for Free!; "
          "Ahmadian et al. 2024, Back to Basics (arXiv 2402.14740)",
    defaults={"scale": "none", "eps": EPS},
    choices={"scale": ("none", "batch", "group")},
)
def rloo(rewards: Tensor, group_size: int, weights: Tensor, *, scale: str, eps: float) -> Tensor:
    """REINFORCE leave-one-out: A_i = r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_g r).

    Kool, van Hoof, Welling 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs", arXiv 2402.14740. The baseline of sample i does
    not depend on i's own reward, so the gradient estimate stays unbiased. Checked against
    verl `compute_rloo_outcome_advantage` (which, unlike us, gives A = r for a group of one).
    r = rewards @ weights; rewards (N, K) float32, weights (K,) -> (N,). `scale`: `_scale`
    ("group" divides by the std of the rewards, not of the leave-one-out differences).
    """
    return _group_relative(rewards, group_size, weights, leave_one_out=True, scale=scale, eps=eps)


# ---------------------------------------------------------------- decoupled


@_register(
    "gdpo",
    formula="A_k,i = (r_k,i - mean_g(r_k)) / (std_g(r_k) + eps); s_i = sum_k w_k A_k,i; "
            "A_i = (s_i - mean_batch(s)) / (std_batch(s) + eps)",
    paper="Liu et al. 2026, GDPO: Group reward-Decoupled Normalization Policy Optimization "
          "(arXiv 2601.05242)",
    defaults={"scale": "batch", "eps": EPS},
    choices={"scale": ("batch", "none")},
)
def gdpo(rewards: Tensor, group_size: int, weights: Tensor, *, scale: str, eps: float) -> Tensor:
    """GDPO: normalise each reward column within its group, weight and sum, normalise over the batch.

        A_k,i = (r_k,i - mean_g r_k) / (std_g r_k + eps)        per column k, per group g
        s_i   = sum_k w_k A_k,i
        A_i   = (s_i - mean_batch s) / (std_batch s + eps)      over all N rows

    Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy Optimization for
    Multi-reward RL Optimization", arXiv 2601.05242. Checked against the authors' reference
    code (NVlabs/GDPO, `trl-GDPO/.../grpo_trainer.py`, reproduced on the project page): both
    steps subtract the mean and divide by (Bessel-corrected std + 1e-4); the batch step
    subtracts the batch mean too; weights multiply the normalised columns. With two rollouts
    and two binary rewards, GRPO maps reward totals (0, 1) and (0, 2) to the same
    (-0.7071, 0.7071); the group step here gives (-0.7071, 0.7071) and (-1.4142, 1.4142).
    The batch step keeps the scale from growing with the number of rewards K.

    Deviations: none in the formula. A column with identical values in a group contributes
    exactly 0 (the reference code gives (r - mean) / 1e-4, 0 up to rounding noise x 1e4); rows whose
    group has identical s get exactly 0. `scale="none"` skips the batch step (the form the
    paper's two-rollout illustration uses). rewards (N, K) float32, weights (K,) -> (N,).

    A property of the formula to know: when the weighted columns cancel in every group of
    the batch (one group with rows (0, 0) and (1, -1), say), s is 0 only up to rounding or,
    if the columns' scales differ, up to eps / std_g (~3e-4); the batch step divides that
    residue by a std of its own size and returns it at unit scale. Any group with a real
    signal in the batch makes the batch std O(1) and the residue negligible.
    """
    k = rewards.shape[1]
    grouped = rewards.reshape(-1, group_size, k)  # (B, G, K)
    mean = grouped.mean(dim=1, keepdim=True)  # (B, 1, K)
    std = grouped.std(dim=1, keepdim=True)  # (B, 1, K)
    per_column = (grouped - mean) / (std + eps)
    per_column = torch.where(_signal(grouped), per_column, torch.zeros_like(per_column))
    summed = (per_column * weights).sum(dim=-1)  # (B, G)
    adv = summed
    if scale == "batch":
        # N >= 2 here (G >= 2), so the Bessel-corrected std is defined
        adv = (summed - summed.mean()) / (summed.std() + eps)
    return torch.where(_signal(summed), adv, torch.zeros_like(adv)).reshape(-1)


# ---------------------------------------------------------------- docs


DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "objectives.md"
BEGIN, END = "<!-- advantages:begin -->", "<!-- advantages:end -->"


def advantages_markdown() -> str:
    """The docs section for every registered estimator, rendered from `ADVANTAGES`."""
    lines = [
        "## Advantage estimators",
        "",
        "`posttrain.advantages.compute_advantages(name, rewards, group_size=G, weights=None, **params)`:",
        "rewards `(N,)` or `(N, K)` (N = groups x G, a group's rows contiguous; K reward components)",
        "-> advantages `(N,)` float32. `weights` `(K,)` default to 1.0 each.",
        "",
        "| name | formula | parameters (defaults) | paper |",
        "| --- | --- | --- | --- |",
    ]
    for name, est in ADVANTAGES.items():
        opts = []
        for key, default in est.defaults.items():
            allowed = est.choices.get(key)
            opts.append(f"`{key}={default!r}`" + (f" (one of {', '.join(allowed)})" if allowed else ""))
        lines.append(f"| `{name}` | `{est.formula}` | {', '.join(opts)} | {est.paper} |")
    lines += [
        "",
        "- `grpo`, `dr_grpo`, `rloo` first combine the components: r = rewards @ weights.",
        "  `gdpo` normalises each component within its group before weighting, so reward",
        "  combinations that the others collapse onto one advantage stay apart.",
        "- `scale`: `group` divides by each group's std; `batch` divides the group-centred",
        "  advantages by their std over the whole batch (REINFORCE++-baseline style; for `gdpo`,",
        "  the paper's batch-wise normalisation, which also subtracts the batch mean);",
        "  `none` does not divide. Every std uses Bessel's correction; `eps` is added to it.",
        "- A group of one, or a group with identical rewards, gets advantage 0, never NaN.",
    ]
    return "\n".join(lines)


def write_docs(path: Path = DOCS_PATH) -> None:
    """Replace the text between the advantages markers in `path` with `advantages_markdown()`."""
    text = path.read_text()
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise ValueError(f"{path} lacks the {BEGIN} ... {END} markers; add them where the section goes")
    path.write_text(f"{head}{BEGIN}\n{advantages_markdown()}\n{END}{tail}")


if __name__ == "__main__":
    write_docs()
    print(f"wrote the advantage estimators into {DOCS_PATH}")
