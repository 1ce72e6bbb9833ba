"""Which metric goes in which plot: panels are defined by metric-name patterns, not by code.

A panel lists glob patterns (`fnmatch`: `*` also crosses `/`) for three roles: `left`
(lines on the left y axis), `right` (lines on a right y axis, for a second unit such as a
fraction next to a length) and `stack` (a stacked area: parts of a whole, e.g. the time
split). A metric goes to the panel and role whose pattern matches it most specifically
(an exact name beats a glob; among globs, the one with more literal characters), ties to
the panel defined first. So `eval/loss` joins the loss panel although `eval/*` would put it
with the held-out scores, and a new `routing/foo` or `staleness/kl_mb3` lands in its panel
with no code change. A metric that matches nothing gets a panel of its own prefix
(`foo/a`, `foo/b` -> "foo/*"), so nothing logged is ever left out of the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Panel:
    key: str                       # file-name stem of the panel's PNG
    title: str
    left: tuple[str, ...] = ()     # patterns drawn as lines on the left axis
    right: tuple[str, ...] = ()    # patterns drawn as dashed lines on a right axis
    stack: tuple[str, ...] = ()    # patterns drawn as a stacked area on the left axis
    ylabel: str = ""
    right_label: str = ""

    def patterns(self) -> tuple[str, ...]:
        return self.left + self.right + self.stack


PANELS: tuple[Panel, ...] = (
    Panel("reward", "Reward: total and per component", left=("reward/mean", "reward/*/mean"),
          ylabel="mean reward"),
    Panel("eval", "Held-out evaluation (eval lines)", left=("eval/*",)),
    Panel("loss", "Loss (train, and held-out where logged)",
          left=("loss", "loss/*", "nll", "eval/loss")),
    Panel("entropy", "Token entropy", left=("entropy", "entropy/*"), right=("entropy/*_frac",),
          ylabel="nats", right_label="fraction"),
    Panel("clip", "Clip / gate statistics",
          left=("clip/*", "sapo/*", "cispo/*", "reinforce/*", "gspo/*", "is/*_frac"),
          ylabel="fraction / weight"),
    Panel("ratio", "Policy ratio and IS weights", left=("ratio/*", "is/*")),
    Panel("kl", "KL to the reference", left=("kl", "kl/*")),
    Panel("mismatch", "Trainer vs rollout engine mismatch", left=("mismatch/*",),
          right=("mismatch/*_frac",), right_label="fraction"),
    Panel("staleness", "Staleness: KL(pi_old, pi_theta) per mini-batch", left=("staleness/*",)),
    Panel("routing", "MoE routing divergence", left=("routing/*",), right=("routing/memory_bytes",),
          ylabel="fraction of loss tokens", right_label="bytes of stored routes"),
    Panel("lengths", "Completion lengths", left=("completion_len/*", "eval/completion_len"),
          right=("truncated_frac", "eval/truncated_frac"), ylabel="tokens", right_label="truncated fraction"),
    Panel("time", "Time split per step", stack=("time/*",), left=("time/step", "step_time"),
          ylabel="seconds"),
    Panel("throughput", "Throughput", left=("tokens_per_s",),
          right=("num_tokens", "tokens/*", "num_pairs"), ylabel="tokens / s", right_label="count"),
    Panel("optim", "Gradient norm and learning rate", left=("grad_norm", "grad_norm*"), right=("lr",),
          ylabel="grad norm", right_label="lr"),
    Panel("advantage", "Advantages and group spread",
          left=("advantage/*", "reward/std", "frac_zero_std_groups")),
    Panel("dynamic", "Dynamic sampling", left=("dynamic/*",), ylabel="groups / rounds"),
    Panel("failures", "Reward failures (count per step)", left=("reward_fail/*",)),
    Panel("preference", "Preference: implicit rewards",
          left=("rewards/chosen", "rewards/rejected", "rewards/margin", "margin"),
          right=("rewards/accuracy", "accuracy"), right_label="accuracy"),
    Panel("logps", "Preference: sequence log-probs", left=("logps/*",)),
)


@dataclass
class Assigned:
    """The metrics one panel draws, by role."""
    panel: Panel
    left: list[str] = field(default_factory=list)
    right: list[str] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)

    def keys(self) -> list[str]:
        return self.stack + self.left + self.right


def _specificity(pattern: str) -> tuple[int, int]:
    """(exact name?, literal characters): the higher, the more specific."""
    wild = sum(pattern.count(c) for c in "*?[")
    return (0 if wild else 1, len(pattern) - wild)


def match(key: str, panels: tuple[Panel, ...] = PANELS) -> tuple[Panel, str] | None:
    """The (panel, role) whose pattern matches `key` most specifically, or None."""
    best, best_score = None, None
    for order, panel in enumerate(panels):
        for role in ("left", "right", "stack"):
            for pat in getattr(panel, role):
                if fnmatchcase(key, pat):
                    score = (*_specificity(pat), -order)
                    if best_score is None or score > best_score:
                        best, best_score = (panel, role), score
    return best


def assign(keys, panels: tuple[Panel, ...] = PANELS) -> tuple[list[Assigned], list[Panel]]:
    """Group metric names into panels. Returns (panels with data, in definition order and
    then the prefix panels alphabetically; defined panels with no data)."""
    by_key: dict[str, Assigned] = {p.key: Assigned(p) for p in panels}
    extra: dict[str, Assigned] = {}
    for key in sorted(keys):
        hit = match(key, panels)
        if hit is None:
            prefix = key.split("/", 1)[0] if "/" in key else ""
            if prefix not in extra:
                title = f"{prefix}/* (no panel defined)" if prefix else "Other metrics"
                extra[prefix] = Assigned(Panel(f"other_{prefix}" if prefix else "other", title,
                                               left=(f"{prefix}/*",) if prefix else ()))
            extra[prefix].left.append(key)
        else:
            panel, role = hit
            getattr(by_key[panel.key], role).append(key)
    used = [a for a in by_key.values() if a.keys()]
    empty = [a.panel for a in by_key.values() if not a.keys()]
    return used + [extra[k] for k in sorted(extra)], empty
