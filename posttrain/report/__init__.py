"""posttrain report RUN_DIR: plots of a run's metrics.jsonl as PNGs and one offline HTML page.

    build_report("runs/demo")  ->  runs/demo/report/{sft_loss.png, rl_reward.png, ..., report.html}

Panels come from metric-name patterns (panels.py), so a metric a trainer starts logging
shows up with no change here, and a defined panel with no data is listed as "not logged in
this run". load.py reads the run, plot.py draws a panel, html.py writes the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .load import ReportError, Stage, demo_results, find_stages
from .panels import PANELS, Panel, assign

__all__ = ["PANELS", "Panel", "Report", "ReportError", "build_report"]


@dataclass
class StageReport:
    name: str
    pngs: dict[str, Path] = field(default_factory=dict)   # panel key -> PNG written
    empty: list[Panel] = field(default_factory=list)      # defined panels with no data
    no_finite: list[str] = field(default_factory=list)    # metrics logged only as null/NaN/inf


@dataclass
class Report:
    out_dir: Path
    html: Path
    stages: list[StageReport]

    @property
    def pngs(self) -> list[Path]:
        return [p for s in self.stages for p in s.pngs.values()]


def _plot_stage(stage: Stage, out_dir: Path, prefix: str) -> tuple[StageReport, list[str]]:
    from . import html, plot   # matplotlib is imported only when a report is made
    drawn = {k: s for k, s in stage.series.items() if s.finite}
    used, empty = assign(drawn)
    rep = StageReport(stage.name, empty=empty, no_finite=sorted(set(stage.series) - set(drawn)))
    figures = []
    for a in used:
        png = plot.render(a, drawn)
        name = prefix + a.panel.key
        path = out_dir / f"{name}.png"
        path.write_bytes(png)
        rep.pngs[a.panel.key] = path
        figures.append(html.figure(name, png, a))
    return rep, figures


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Report:
    """Write one PNG per panel with data and report.html into `out` (default RUN_DIR/report)."""
    from . import html
    run = Path(run_dir)
    stages = find_stages(run)
    demo = demo_results(run)
    out_dir = Path(out) if out is not None else run / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    reports, sections = [], []
    for stage in stages:
        rep, figures = _plot_stage(stage, out_dir, f"{stage.name}_" if stage.name else "")
        reports.append(rep)
        sections.append(html.stage_section(stage, figures, rep.empty, rep.no_finite))
    n_images = sum(len(r.pngs) for r in reports)
    page = html.page(run, sections, [s.name or "run" for s in stages], n_images, demo)
    path = out_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page)
    tmp.replace(path)   # a browser never sees a half-written page
    return Report(out_dir, path, reports)
