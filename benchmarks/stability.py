"""The stability experiment of docs/stability.md: four RL runs of `recipes/tiny-moe.yaml`
(same seed, same rollout budget), and the table of their metrics.

    on-policy reinforce_is   rl.objective=reinforce_is rl.mini_batches=1
    grpo, no replay          (the recipe: 4 mini-batches per rollout batch)
    grpo, r2                 rl.routing_replay=r2
    grpo, r3                 rl.routing_replay=r3

    python benchmarks/stability.py --out runs/stability            # run all four, then the table
    python benchmarks/stability.py --out runs/stability --table    # the table of existing runs

Each run is `posttrain rl tiny-moe --out OUT/NAME ...` in a subprocess; the table averages
each metric over the steps of a window (all steps, and the first / last 10 for the reward)
and prints markdown, with one JSON object per run on stdout's last lines.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

RUNS = {
    "reinforce_is": ["rl.objective=reinforce_is", "rl.mini_batches=1"],
    "grpo-none": [],
    "grpo-r2": ["rl.routing_replay=r2"],
    "grpo-r3": ["rl.routing_replay=r3"],
}

COLUMNS = [  # (metric, window, label)
    ("reward/mean", "first10", "reward, steps 1-10"),
    ("reward/mean", "last10", "reward, last 10"),
    ("mismatch/abs_logp_diff_mean", "all", "mean abs dlogp (pi_old vs engine)"),
    ("mismatch/abs_logp_diff_max", "all", "max abs dlogp"),
    ("mismatch/k3", "all", "k3 KL(engine, pi_old)"),
    ("mismatch/is_out_of_range_frac", "all", "IS w outside [0.5, 2]"),
    ("mismatch/update_abs_logp_diff_mean", "all", "mean abs dlogp (gradient forward vs engine)"),
    ("staleness/kl", "all", "staleness KL, mean over updates"),
    ("staleness/kl_mb3", "all", "staleness KL, 4th update"),
    ("routing/divergence", "all", "routing divergence, no replay"),
    ("routing/divergence_replayed", "all", "routing divergence, gradient forward"),
    ("routing/divergence_vs_old", "all", "routing: gradient forward vs pi_old"),
    ("entropy/top20_mean", "all", "entropy, top 20%"),
    ("entropy/rest_mean", "all", "entropy, rest"),
    ("grad_norm", "all", "grad norm (pre-clip)"),
    ("routing/memory_bytes", "all", "routes stored (bytes/step)"),
    ("time/step", "all", "s/step"),
]


def rows(run: Path) -> list[dict]:
    return [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
            if "reward/mean" in r]


def window(values: list[float], which: str) -> list[float]:
    return values[:10] if which == "first10" else values[-10:] if which == "last10" else values


def summary(run: Path) -> dict[str, float]:
    rs = rows(run)
    out = {}
    for key, which, label in COLUMNS:
        v = [r[key] for r in rs if key in r and r[key] is not None and math.isfinite(r[key])]
        v = window(v, which)
        out[label] = sum(v) / len(v) if v else float("nan")
    evals = [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
             if "eval/csv" in r]
    if evals:
        out["held-out greedy csv, end"] = evals[-1]["eval/csv"]
    out["steps"] = float(len(rs))
    return out


def table(out: Path) -> str:
    sums = {name: summary(out / name) for name in RUNS if (out / name / "metrics.jsonl").exists()}
    labels = list(next(iter(sums.values())))
    lines = ["| metric (mean over steps) | " + " | ".join(sums) + " |",
             "| --- | " + " | ".join("---:" for _ in sums) + " |"]
    for lab in labels:
        cells = []
        for s in sums.values():
            v = s.get(lab, float("nan"))
            cells.append("-" if math.isnan(v) else f"{v:.0f}" if abs(v) >= 100 else f"{v:.4g}")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    clean = {k: {lab: (None if math.isnan(v) else v) for lab, v in s.items()} for k, s in sums.items()}
    return "\n".join(lines) + "\n" + "\n".join(json.dumps({"run": k, **v}) for k, v in clean.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/stability")
    ap.add_argument("--table", action="store_true", help="only print the table of existing runs")
    ap.add_argument("overrides", nargs="*", help="extra overrides for every run (e.g. train.max_steps=10)")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.table:
        for name, ov in RUNS.items():
            cmd = [sys.executable, "-m", "posttrain.cli", "rl", "tiny-moe", "--out", str(out / name),
                   "train.progress=false", *ov, *args.overrides]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    print(table(out))


if __name__ == "__main__":
    main()
