"""Reading a run directory: its stages, their metrics.jsonl lines as series, recipes, results.

A single-stage run (`posttrain sft|rl|prefer --out DIR`) has DIR/metrics.jsonl and
DIR/recipe.yaml; a demo (`posttrain demo --out DIR`) has one subdirectory per stage
(DIR/sft/, DIR/rl/) each with both files, plus DIR/demo_results.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.yaml"
STAGE_ORDER = ("sft", "prefer", "rl")  # pipeline order; other stage names follow alphabetically


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message names the file and line."""


@dataclass
class Series:
    """One metric over steps. `values` holds NaN where the line logged null, NaN or inf
    after the metric's first finite value (leading nulls, e.g. SFT's step-0 `loss`, mean
    "not measured yet" and are dropped)."""
    key: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def finite(self) -> list[tuple[int, float]]:
        return [(s, v) for s, v in zip(self.steps, self.values) if math.isfinite(v)]

    @property
    def nonfinite_steps(self) -> list[int]:
        return [s for s, v in zip(self.steps, self.values) if not math.isfinite(v)]


@dataclass
class Stage:
    name: str                      # "" for a single-stage run, else the subdirectory (sft, rl)
    path: Path
    records: list[dict]
    series: dict[str, Series]
    recipe: str | None             # recipe.yaml text as saved by the run, or None


def find_stages(run_dir: str | Path) -> list[Stage]:
    """The stages of a run directory, in pipeline order."""
    run = Path(run_dir)
    if not run.exists():
        raise ReportError(f"run directory not found: {run}")
    if not run.is_dir():
        raise ReportError(f"not a directory: {run} (give the run's output directory)")
    if (run / METRICS_FILE).is_file():
        dirs = [("", run)]
    else:
        subs = [d for d in run.iterdir() if d.is_dir() and (d / METRICS_FILE).is_file()]
        rank = {n: i for i, n in enumerate(STAGE_ORDER)}
        subs.sort(key=lambda d: (rank.get(d.name, len(rank)), d.name))
        dirs = [(d.name, d) for d in subs]
    if not dirs:
        raise ReportError(f"no {METRICS_FILE} in {run} or its stage subdirectories "
                          f"(expected {run / METRICS_FILE} or e.g. {run / 'rl' / METRICS_FILE})")
    stages = []
    for name, path in dirs:
        records = read_records(path / METRICS_FILE)
        recipe = (path / RECIPE_FILE).read_text() if (path / RECIPE_FILE).is_file() else None
        stages.append(Stage(name, path, records, to_series(records), recipe))
    return stages


def read_records(path: Path) -> list[dict]:
    """Every line of a metrics.jsonl: a JSON object with an integer `step`."""
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise ReportError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        step = rec.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ReportError(f"{path}:{lineno}: no integer 'step' (got {step!r})")
        records.append(rec)
    if not records:
        raise ReportError(f"{path}: no metrics lines yet (the run logged nothing)")
    return records


def _number(v) -> float | None:
    """A metric value as float (NaN for null / non-finite), or None if it is no number."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def to_series(records: list[dict]) -> dict[str, Series]:
    """Numeric metrics by name, sorted by step; a step logged twice keeps its last line
    (a resumed run rewrites the steps after its checkpoint)."""
    by_key: dict[str, dict[int, float]] = {}
    for rec in records:
        for k, v in rec.items():
            x = _number(v)
            if k == "step" or x is None:
                continue
            by_key.setdefault(k, {})[rec["step"]] = x
    out = {}
    for k, points in by_key.items():
        steps = sorted(points)
        first = next((i for i, s in enumerate(steps) if math.isfinite(points[s])), len(steps))
        steps = steps[first:] if first < len(steps) else steps
        out[k] = Series(k, steps, [points[s] for s in steps])
    return out


def eval_rows(records: list[dict]) -> tuple[list[str], list[tuple[int, dict]]]:
    """(eval/* names, [(step, {name: value})]) of the lines that carry held-out scores."""
    names: list[str] = []
    rows = []
    for rec in records:
        ev = {k: rec[k] for k in rec if k.startswith("eval/")}
        if ev:
            names += [k for k in ev if k not in names]
            rows.append((rec["step"], ev))
    return names, rows


def demo_results(run_dir: Path) -> dict | None:
    """DIR/demo_results.json of a demo run, or None."""
    path = Path(run_dir) / "demo_results.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data
