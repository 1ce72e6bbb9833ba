"""One panel -> one PNG (matplotlib, Agg, no pyplot state): raw series thin, an EMA over
noisy ones thick, sparse ones (eval lines) as markers, non-finite points as red x."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: never open a window or need a display

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .load import Series  # noqa: E402
from .panels import Assigned  # noqa: E402

WIDTH_IN, HEIGHT_IN, DPI = 7.0, 3.2, 100   # every panel PNG is 700 x 320 pixels
SIZE_PX = (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI))
SMOOTH_MIN_POINTS = 12   # fewer points than this: no EMA, markers instead
LOG_SPAN = 1e3           # an all-positive axis spanning more than this uses a log scale


def ema(values: list[float], n: int) -> list[float]:
    """Bias-corrected exponential moving average with span ~n/10 (2..50), skipping NaN:
    m_t = b m_{t-1} + (1 - b) x_t, shown as m_t / (1 - b^k) after k finite points, with
    b = 1 - 2 / (span + 1). A NaN input gives NaN output (a gap) and leaves m unchanged."""
    span = min(max(n / 10, 2.0), 50.0)
    beta = 1 - 2 / (span + 1)
    m, k, out = 0.0, 0, []
    for x in values:
        if not math.isfinite(x):
            out.append(math.nan)
            continue
        m, k = beta * m + (1 - beta) * x, k + 1
        out.append(m / (1 - beta ** k))
    return out


def _dedupe(keys: list[str], series: dict[str, Series]) -> list[tuple[str, Series]]:
    """Drop a series identical to an earlier one (aliases such as `entropy` and
    `entropy/mean`), naming both in the label."""
    kept: list[tuple[str, Series]] = []
    for k in keys:
        s = series[k]
        for i, (label, t) in enumerate(kept):
            if t.steps == s.steps and all(a == b or (a != a and b != b) for a, b in zip(t.values, s.values)):
                kept[i] = (f"{label}, {k} (equal)" if not label.endswith(" (equal)")
                           else f"{label[:-8]}, {k} (equal)", t)
                break
        else:
            kept.append((k, s))
    return kept


def _scale(ax, groups: list[Series], allow_log: bool = True) -> None:
    """Log scale for a wide positive range; a readable range and labels for a flat one."""
    vals = [v for s in groups for _, v in s.finite]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    if allow_log and lo > 0 and hi / lo > LOG_SPAN:
        ax.set_yscale("log")
        return
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.yaxis.get_offset_text().set_fontsize(7)
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):  # flat (lr without schedule): +-5 %, not +-1e-16
        pad = 0.05 * abs(lo) if lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)


def _lines(ax, items: list[tuple[str, Series]], colors, dashed: bool) -> None:
    style = "--" if dashed else "-"
    for (label, s), color in zip(items, colors):
        n = len(s.finite)
        if n == 0:
            continue
        if n >= SMOOTH_MIN_POINTS:
            ax.plot(s.steps, s.values, style, color=color, lw=0.7, alpha=0.35)
            ax.plot(s.steps, ema(s.values, len(s.values)), style, color=color, lw=1.6, label=label)
        else:
            ax.plot(s.steps, s.values, style, color=color, lw=1.2, marker="o", ms=3.5, label=label)
        bad = s.nonfinite_steps
        if bad:
            ax.plot(bad, [0.0] * len(bad), "x", color="red", ms=6, transform=ax.get_xaxis_transform(),
                    clip_on=False, label=f"{label}: null/NaN/inf ({len(bad)})")


def _stack(ax, items: list[tuple[str, Series]], colors) -> None:
    steps = sorted({st for _, s in items for st in s.steps})
    parts = []
    for _, s in items:
        at = dict(zip(s.steps, s.values))
        parts.append([at.get(st, 0.0) if math.isfinite(at.get(st, 0.0)) else 0.0 for st in steps])
    ax.stackplot(steps, parts, labels=[label for label, _ in items], colors=colors, alpha=0.75)


def render(a: Assigned, series: dict[str, Series]) -> bytes:
    """The panel as PNG bytes of SIZE_PX."""
    # no "1e-16+1e-4" offset labels on a flat series; a context, so callers' rcParams stay
    with matplotlib.rc_context({"axes.formatter.useoffset": False}):
        return _render(a, series)


def _render(a: Assigned, series: dict[str, Series]) -> bytes:
    # fixed margins, not constrained layout: that doubled the time per panel (measured)
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    palette = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]] * 8
    stack, left, right = (_dedupe(keys, series) for keys in (a.stack, a.left, a.right))
    if stack:
        _stack(ax, stack, palette[:len(stack)])
    _lines(ax, left, palette[len(stack):], dashed=False)
    _scale(ax, [s for _, s in left + stack], allow_log=not stack)  # an area's heights add up linearly
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        _lines(ax2, right, palette[len(stack) + len(left):], dashed=True)
        _scale(ax2, [s for _, s in right])
        ax2.set_ylabel(a.panel.right_label or "right axis (dashed)", fontsize=8)
        ax2.tick_params(labelsize=7)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.set_title(a.panel.title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(a.panel.ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    outside = len(handles) > 5  # many series: the legend beside the plot, not over it
    right_edge = (0.60 if right else 0.66) if outside else (0.91 if right else 0.97)
    fig.subplots_adjust(left=0.09, right=right_edge, bottom=0.14, top=0.91)
    if outside:
        x = right_edge + (0.08 if right else 0.01)  # clear of the right axis' tick labels
        fig.legend(handles, labels, fontsize=6.5, loc="upper left", bbox_to_anchor=(x, 0.92), frameon=False)
    elif handles:
        ax.legend(handles, labels, fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
