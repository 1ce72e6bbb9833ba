"""report.html: one self-contained file (inline CSS, PNGs as data: URIs, no external
resource), so it opens offline and can be mailed or attached as it is."""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from fnmatch import fnmatchcase

from .load import Series, Stage, eval_rows
from .panels import Assigned, Panel

# metrics the summary table leads with, and which direction is better (None: neither)
KEY_METRICS: tuple[tuple[str, str | None], ...] = (
    ("reward/mean", "max"), ("reward/*/mean", "max"), ("eval/loss", "min"), ("eval/ppl", "min"),
    ("eval/truncated_frac", "min"), ("eval/completion_len", None), ("eval/*", "max"), ("loss", "min"),
    ("accuracy", "max"), ("margin", "max"), ("entropy", None), ("kl", None), ("mismatch/kl", None),
    ("staleness/kl", None), ("routing/divergence", None), ("grad_norm", None),
    ("completion_len/mean", None), ("truncated_frac", "min"), ("frac_zero_std_groups", "min"),
    ("time/step", "min"), ("step_time", "min"), ("tokens_per_s", "max"),
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1480px;
 padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:2px solid #ccc;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left;font-family:monospace}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(700px,1fr));gap:1em}
figure{margin:0;border:1px solid #eee;padding:.3em}figure img{width:100%;max-width:700px;height:auto}
figcaption{font-size:.75em;color:#555;font-family:monospace;word-break:break-all}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}
.muted{color:#777}.empty li{font-size:.85em}code{font-size:.9em}
"""

# sets data-images-decoded on <body> once every image has decoded (naturalWidth > 0): the
# headless-browser check (scripts/check_report_render.py) reads it back with --dump-dom
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-decoded", String(ok.length));
  document.body.setAttribute("data-page-height", String(document.documentElement.scrollHeight));
});
"""


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _direction(key: str) -> tuple[int, str | None] | None:
    for rank, (pat, better) in enumerate(KEY_METRICS):
        if fnmatchcase(key, pat):
            return rank, better
    return None


def _summary_rows(series: dict[str, Series], keys) -> list[str]:
    rows = []
    for k in keys:
        s = series[k]
        pts = s.finite
        d = _direction(k)
        best = "–"
        if pts and d and d[1]:
            step, v = (max if d[1] == "max" else min)(pts, key=lambda p: p[1])
            best = f"{fmt(v)} <span class=muted>@{step}</span>"
        first, last = (pts[0], pts[-1]) if pts else ((None, None), (None, None))
        lo = min((v for _, v in pts), default=None)
        hi = max((v for _, v in pts), default=None)
        rows.append(f"<tr><td>{html.escape(k)}</td><td>{len(pts)}</td><td>{len(s.nonfinite_steps)}</td>"
                    f"<td>{fmt(first[1])} <span class=muted>@{first[0]}</span></td>"
                    f"<td>{fmt(last[1])} <span class=muted>@{last[0]}</span></td>"
                    f"<td>{fmt(lo)}</td><td>{fmt(hi)}</td><td>{best}</td></tr>")
    return rows


def summary_table(series: dict[str, Series], only_key: bool) -> str:
    keyed = sorted((k for k in series if _direction(k)), key=lambda k: (_direction(k)[0], k))
    keys = keyed if only_key else sorted(series)
    head = ("<tr><th>metric</th><th>points</th><th>null/NaN/inf</th><th>first</th><th>last</th>"
            "<th>min</th><th>max</th><th>best</th></tr>")
    return "<table>" + head + "".join(_summary_rows(series, keys)) + "</table>"


def eval_table(stage: Stage) -> str:
    names, rows = eval_rows(stage.records)
    if not rows:
        return "<p class=muted>no eval lines in this run</p>"
    head = "<tr><th>step</th>" + "".join(f"<th>{html.escape(n[5:])}</th>" for n in names) + "</tr>"
    body = "".join("<tr><td>" + str(step) + "</td>" + "".join(f"<td>{fmt(ev.get(n))}</td>" for n in names)
                   + "</tr>" for step, ev in rows)
    return "<table>" + head + body + "</table>"


def demo_table(results: dict) -> str:
    """The before/after table of demo_results.json, and its scalars."""
    before, after = results.get("before") or {}, results.get("after") or {}
    out = []
    if isinstance(before, dict) and isinstance(after, dict) and (before or after):
        names = list(after or before)
        out.append("<table><tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>")
        for label, row in (("sft (before rl)", before), ("sft + rl (after)", after)):
            out.append(f"<tr><td>{label}</td>" + "".join(f"<td>{fmt(row.get(n))}</td>" for n in names) + "</tr>")
        out.append("</table>")
    rest = {k: v for k, v in results.items() if k not in ("before", "after")}
    if rest:
        out.append("<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{fmt(v)}</td></tr>"
                                       for k, v in rest.items()) + "</table>")
    return "".join(out)


def figure(name: str, png: bytes, a: Assigned) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = ", ".join(html.escape(k) for k in a.keys())
    return (f'<figure id="fig-{html.escape(name)}"><img data-panel="{html.escape(name)}" '
            f'alt="{html.escape(a.panel.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def empty_list(empty: list[Panel], no_finite: list[str]) -> str:
    items = [f"<li><b>{html.escape(p.title)}</b> <span class=muted>({html.escape(', '.join(p.patterns()))})"
             "</span></li>" for p in empty]
    items += [f"<li><code>{html.escape(k)}</code>: logged, but never a finite value</li>" for k in no_finite]
    if not items:
        return "<p class=muted>every defined panel has data</p>"
    return "<ul class=empty>" + "".join(items) + "</ul>"


def stage_section(stage: Stage, figures: list[str], empty: list[Panel], no_finite: list[str]) -> str:
    name = stage.name or "run"
    steps = [r["step"] for r in stage.records]
    recipe = (f"<details open><summary>recipe.yaml</summary><pre>{html.escape(stage.recipe)}</pre></details>"
              if stage.recipe is not None
              else "<p class=muted>no recipe.yaml in this stage's directory</p>")
    return "".join([
        f'<section id="stage-{html.escape(name)}"><h2>{html.escape(name)}</h2>',
        f"<p class=muted>{html.escape(str(stage.path))}: {len(stage.records)} lines, steps "
        f"{min(steps)}..{max(steps)}, {len(stage.series)} metrics</p>",
        "<h3>Summary (key metrics)</h3>", summary_table(stage.series, only_key=True),
        "<h3>Eval lines</h3>", eval_table(stage),
        f"<h3>Plots ({len(figures)})</h3><div class=grid>", "".join(figures), "</div>",
        "<h3>Not logged in this run</h3>", empty_list(empty, no_finite),
        "<h3>All metrics</h3><details><summary>every metric's first / last / min / max</summary>",
        summary_table(stage.series, only_key=False), "</details>",
        "<h3>Resolved recipe</h3>", recipe, "</section>"])


def page(run_dir, sections: list[str], names: list[str], n_images: int, demo: dict | None) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = " · ".join(f'<a href="#stage-{html.escape(n)}">{html.escape(n)}</a>' for n in names)
    demo_html = f"<h2>Demo: held-out before / after</h2>{demo_table(demo)}" if demo else ""
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>posttrain report: {html.escape(str(run_dir))}</title><style>{CSS}</style></head>",
        f'<body data-images-expected="{n_images}"><h1>posttrain report</h1>',
        f"<p>run <code>{html.escape(str(run_dir))}</code>, generated {when}. Stages: {nav}</p>",
        demo_html, "".join(sections), f"<script>{SCRIPT}</script></body></html>\n"])
