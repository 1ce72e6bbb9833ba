"""Render the objectives section of docs/objectives.md from the registries.

    python -m posttrain.objectives.docs          # rewrite the section in place
    python -m posttrain.objectives.docs --check  # exit 1 if the file is stale

Only the text between `<!-- objectives:begin -->` and `<!-- objectives:end -->` is ours;
the rest of the file (the advantages section between its own markers, prose) is left
alone. tests/objectives/test_docs.py fails when the committed file differs from
`objectives_markdown()`, so a name, default or formula cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .aggregate import AGGREGATIONS
from .distill import DISTILL_LOSSES, DISTILL_MODIFIERS
from .kl import KL_ESTIMATORS
from .loss import MODIFIERS
from .policy import POLICY_LOSSES, SURROGATES
from .preference import PREFERENCE_LOSSES
from .ratio import MISMATCH_MODES, RATIOS

DOCS_PATH = Path(__file__).resolve().parents[2] / "docs" / "objectives.md"
BEGIN, END = "<!-- objectives:begin -->", "<!-- objectives:end -->"

METRICS = {
    "clip/low_frac, clip/high_frac": "valid tokens clipped (zero gradient) on the low side "
                                     "(A < 0, r < 1 - eps_low) / high side (A > 0, r > 1 + eps_high)",
    "sapo/gate_weight_mean, sapo/gate_weight_lt_half_frac": "mean SAPO gradient weight "
                                                             "4p(1-p), and the fraction of tokens below 0.5",
    "cispo/capped_frac": "tokens whose IS weight hit is_cap",
    "reinforce/stale_masked_frac": "tokens dropped by the stale-token mask",
    "ratio/mean, ratio/max, ratio/min": "the policy ratio at the objective's level",
    "mismatch/abs_logp_diff_mean, mismatch/abs_logp_diff_max, mismatch/k3":
        "abs(old_logp - rollout_logp) and the k3 estimate of KL(pi_rollout, pi_old); "
        "whenever rollout_logp is given",
    "is/weight_mean, is/raw_max, is/raw_min": "applied correction weight (mean), raw weight range",
    "is/truncated_frac, is/masked_frac": "tokens truncated / masked by the mismatch mode",
    "entropy/kept_frac, entropy/mean": "tokens kept by the entropy mask; mean entropy",
    "kl/ref": "mean per-token KL estimate to the reference (whenever ref_logp is given)",
    "loss/policy, loss/kl, loss/entropy": "the aggregated terms (before beta / entropy_coef)",
    "tokens/valid": "valid tokens in this batch",
}


def _fmt(value) -> str:
    return "`None`" if value is None else f"`{value!r}`"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def objectives_markdown() -> str:
    """The objectives section, rendered from the registries (no markers)."""
    lines = [
        "## Policy objectives",
        "",
        "`posttrain.objectives.policy_loss(name, logp, old_logp, advantages, mask, rollout_logp=None,",
        "ref_logp=None, entropy=None, **params)` -> `LossOut(loss, metrics)`. Shapes: the log-probs",
        "and `entropy` `(B, T)`, `mask` `(B, T)` bool or 0/1, `advantages` `(B,)` or `(B, T)`.",
        "r = pi / pi_old per token, s = the sequence ratio, A the advantage, sg stop-gradient;",
        "the loss is the negative of the paper's objective.",
        "",
    ]
    rows = []
    for name, obj in POLICY_LOSSES.items():
        params = ", ".join(f"`{k}={v!r}`" for k, v in obj.defaults().items())
        rows.append([f"`{name}`", f"`{obj.formula}`", f"`{obj.ratio}`", f"`{obj.aggregation}`",
                     params or "-", f"`{obj.mismatch}`", obj.paper])
    lines += _table(["name", "formula", "ratio", "aggregation", "parameters", "mismatch", "paper"], rows)
    lines += [""] + [f"- `{name}`: {obj.note}" for name, obj in POLICY_LOSSES.items() if obj.note]
    lines += ["", "### Surrogates", ""]
    lines += _table(["name", "per-token loss", "parameters"], [
        [f"`{n}`", f"`{s.formula}`", ", ".join(f"`{k}={v!r}`" for k, v in s.params.items())]
        for n, s in SURROGATES.items()])
    lines += ["", "### Ratio levels", ""]
    lines += _table(["name", "ratio"], [[f"`{n}`", f"`{r.formula}`"] for n, r in RATIOS.items()])
    lines += ["", "### Aggregations", "",
              "n_i = valid tokens of row i. Pass the whole step's counts as normalisers so that",
              "micro-batches (and processes) sum to the full-batch loss and gradient.", ""]
    lines += _table(["name", "loss", "normalisers"], [
        [f"`{n}`", f"`{a.formula}`", ", ".join(f"`{k}`" for k in a.normalisers)]
        for n, a in AGGREGATIONS.items()])
    lines += ["", "### KL estimators", "", "Added as `beta * aggregate(k)`; `beta` defaults to 0 "
              "(no reference model needed).", ""]
    lines += _table(["name", "per-token estimate"],
                    [[f"`{n}`", f"`{k.formula}`"] for n, k in KL_ESTIMATORS.items()])
    lines += ["", "### Training-inference mismatch correction", "",
              "w_it = exp(old_logp - rollout_logp), detached; C = `mismatch_cap`,",
              "(lo, hi) = `mismatch_bounds`. The weight multiplies the surrogate's per-token loss.", ""]
    lines += _table(["mode", "weight"], [[f"`{n}`", f"`{m.formula}`"] for n, m in MISMATCH_MODES.items()])
    lines += ["", "### Modifiers (every objective)", ""]
    lines += _table(["parameter", "default", "meaning"],
                    [[f"`{k}`", _fmt(d), doc] for k, (d, doc) in MODIFIERS.items()])
    lines += ["", "### Metrics", "", "Detached 0-dim tensors, means over valid tokens of the batch.", ""]
    lines += _table(["keys", "meaning"], [[f"`{k}`", v] for k, v in METRICS.items()])
    lines += ["", "## Preference objectives", "",
              "`posttrain.objectives.preference_loss(name, chosen_logp, rejected_logp, ref_chosen_logp=None,",
              "ref_rejected_logp=None, chosen_len=None, rejected_len=None, **params)` -> `LossOut`; log-probs are",
              "per-sequence sums `(B,)`, lengths token counts. The trainer (`posttrain prefer`) asks the spec",
              "whether it needs a reference or lengths.", ""]
    lines += _table(["name", "loss", "parameters", "reference", "lengths", "paper"], [
        [f"`{n}`", f"`{o.formula}`", ", ".join(f"`{k}={v!r}`" for k, v in o.defaults().items()),
         "yes" if o.needs_reference else "no", "yes" if o.needs_lengths else "no", o.paper]
        for n, o in PREFERENCE_LOSSES.items()])
    lines += [""] + [f"- `{n}`: {o.note}" for n, o in PREFERENCE_LOSSES.items() if o.note]
    lines += ["", "## Draft-distillation losses (speculative decoding)", "",
              "`posttrain.objectives.distill_loss(name, draft_logits, target_logits, mask, num_blocks=None,",
              "**params)` -> `LossOut`; logits `(N, K, V)` (N blocks, K = B - 1 drafted positions), `mask`",
              "`(N, K)` (0 past the response's end; a 0 ends the block's acceptance chain). p_k, q_k the target's",
              "and the draft's distributions, KL_k the forward KL(p_k, q_k) = sum_v p_k log(p_k / q_k)",
              "(KL_k^T: both softened by T), a_k = q_k(argmax p_k), c_k = prod_{j<=k} m_j,",
              "P_k = c_k prod_{j<=k} a_j, E[N] = sum_k P_k (tau = E[N] + 1), s_k = m_k P_{k-1}; loss =",
              "sum over blocks / `num_blocks` (default N). Details and sources: the docstring of",
              "`posttrain/objectives/distill.py`.", ""]
    lines += _table(["name", "per-block loss", "parameters", "source"], [
        [f"`{n}`", f"`{o.formula}`",
         ", ".join(f"`{k}={v!r}`" for k, v in o.defaults().items()) or "-", o.paper]
        for n, o in DISTILL_LOSSES.items()])
    lines += [""] + [f"- `{n}`: {o.note}" for n, o in DISTILL_LOSSES.items() if o.note]
    lines += [""] + [f"- `{k}` (default {_fmt(d)}): {doc}" for k, (d, doc) in DISTILL_MODIFIERS.items()]
    return "\n".join(lines)


def render(text: str) -> str:
    """`text` with the objectives section replaced by the current rendering."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise ValueError(f"docs lack the {BEGIN} ... {END} markers; add them where the section goes")
    return f"{head}{BEGIN}\n{objectives_markdown()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = DOCS_PATH.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOCS_PATH} is stale: run python -m posttrain.objectives.docs", file=sys.stderr)
            return 1
        return 0
    DOCS_PATH.write_text(new)
    print(f"wrote the policy objectives into {DOCS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
