"""posttrain report: metric names go to the panel their patterns name, every panel with data
is a valid PNG of the stated size that the HTML page carries inline, the page loads nothing
from the network, the recipe and eval lines are on it, and bad run directories fail in one
line naming the file and line. Ends with a real tiny RL run reported."""

import base64
import json
import math
import re

import pytest
from PIL import Image

from posttrain.cli import main
from posttrain.report import PANELS, ReportError, build_report
from posttrain.report.load import to_series
from posttrain.report.panels import assign, match
from posttrain.report.plot import SIZE_PX, ema

RECIPE = "model:\n  path: builtin:tiny\nrl:\n  objective: sapo  # <the recipe & its comments>\n"


def _write_run(d, records, recipe=RECIPE):
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if recipe is not None:
        (d / "recipe.yaml").write_text(recipe)


def _rl_records(n=30):
    """An RL-like log: step metrics, eval lines at 0 / 15 / 30, a NaN loss at step 7 and an
    inf at step 8 (the sink writes null; json also reads Infinity), the moe branch's names."""
    rows = [{"step": 0, "eval/reward": 0.5, "eval/format": 0.4}]
    for s in range(1, n + 1):
        r = {"step": s, "reward/mean": 0.1 * s, "reward/format/mean": 0.05 * s, "reward/schema/mean": 0.02,
             "loss": None if s == 7 else 1.0 / s, "entropy": 6.9 - 0.01 * s, "entropy/top20_mean": 7.0,
             "entropy/kept_frac": 0.2, "clip/low_frac": 0.01, "clip/high_frac": 0.02,
             "mismatch/k3": 1e-6 * s, "mismatch/is_out_of_range_frac": 0.001, "staleness/kl_mb0": 1e-4,
             "staleness/kl_mb1": 2e-4, "routing/divergence": 0.3, "routing/divergence_replayed": 0.0,
             "completion_len/mean": 40.0 + s, "truncated_frac": 0.1, "time/rollout": 1.0, "time/train": 2.0,
             "time/step": 3.1, "grad_norm": float("inf") if s == 8 else 1.5, "grad_norm_preclip": 2.0,
             "lr": 1e-4, "kl": 0.01, "custom/thing": float(s), "note": "a string is not plotted",
             "flag": True, "only_null": None}
        if s % 15 == 0:
            r.update({"eval/reward": 0.5 + s / 100, "eval/format": 0.4 + s / 100})
        rows.append(r)
    return rows


def test_metric_names_go_to_the_most_specific_panel():
    cases = {"eval/loss": ("loss", "left"), "eval/reward": ("eval", "left"),
             "eval/completion_len": ("lengths", "left"), "eval/truncated_frac": ("lengths", "right"),
             "staleness/kl_mb3": ("staleness", "left"), "routing/divergence_replayed": ("routing", "left"),
             "entropy/top20_mean": ("entropy", "left"), "entropy/kept_frac": ("entropy", "right"),
             "mismatch/k3": ("mismatch", "left"), "mismatch/is_out_of_range_frac": ("mismatch", "right"),
             "is/masked_frac": ("clip", "left"), "is/raw_max": ("ratio", "left"),
             "grad_norm_preclip": ("optim", "left"), "lr": ("optim", "right"),
             "time/step": ("time", "left"), "time/rollout": ("time", "stack"),
             "reward/format/mean": ("reward", "left"), "reward/std": ("advantage", "left"),
             "reward_fail/json/parse": ("failures", "left")}
    for key, (panel, role) in cases.items():
        hit = match(key)
        assert hit is not None and (hit[0].key, hit[1]) == (panel, role), (key, hit)
    assert match("custom/thing") is None
    used, empty = assign(["custom/thing", "custom/other", "loose", "routing/divergence"])
    assert [(a.panel.key, a.keys()) for a in used] == [
        ("routing", ["routing/divergence"]), ("other", ["loose"]), ("other_custom", ["custom/other", "custom/thing"])]
    assert {p.key for p in empty} == {p.key for p in PANELS} - {"routing"}


def test_ema_is_bias_corrected_and_skips_nan():
    assert ema([3.0] * 5, 5) == pytest.approx([3.0] * 5)  # a constant is its own average
    # span 2 -> beta 1/3: m1 = 0, m2 = 2 * 2/3 = 4/3, corrected by 1 - 1/9 -> 1.5
    assert ema([0.0, 2.0], 2) == pytest.approx([0.0, 1.5])
    out = ema([0.0, math.nan, 2.0], 3)
    assert out[0] == 0.0 and math.isnan(out[1]) and out[2] == pytest.approx(1.5)


def test_series_drop_leading_nulls_keep_later_ones_and_the_last_duplicate():
    s = to_series([{"step": 0, "loss": None}, {"step": 1, "loss": 2.0, "x": "text", "b": True},
                   {"step": 2, "loss": None}, {"step": 3, "loss": 1.0}, {"step": 3, "loss": 0.5}])
    assert set(s) == {"loss"} and s["loss"].steps == [1, 2, 3]
    assert s["loss"].values[0] == 2.0 and math.isnan(s["loss"].values[1]) and s["loss"].values[2] == 0.5
    assert s["loss"].nonfinite_steps == [2]


def _check_page(rep):
    page = rep.html.read_text()
    for png in rep.pngs:
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == SIZE_PX, png
        # the page carries the very same image inline
        assert f'src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"' in page, png
    assert page.count("<img ") == len(rep.pngs)
    assert f'data-images-expected="{len(rep.pngs)}"' in page
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", page) + re.findall(r"url\(([^)]*)\)", page)
    assert refs and not [r for r in refs if not r.startswith(("data:", "#"))], refs
    assert "@import" not in page and "<link" not in page
    return page


def test_report_of_a_synthetic_rl_run(tmp_path):
    _write_run(tmp_path / "run", _rl_records())
    rep = build_report(tmp_path / "run", tmp_path / "out")
    [stage] = rep.stages
    assert rep.out_dir == tmp_path / "out" and rep.html == tmp_path / "out" / "report.html"
    assert set(stage.pngs) == {"reward", "eval", "loss", "entropy", "clip", "kl", "mismatch", "staleness",
                               "routing", "lengths", "time", "optim", "other_custom"}
    assert all(p.parent == rep.out_dir and p.name == f"{k}.png" for k, p in stage.pngs.items())
    assert {p.key for p in stage.empty} == {"ratio", "throughput", "advantage", "dynamic", "failures",
                                            "preference", "logps"}
    assert stage.no_finite == ["only_null"]
    page = _check_page(rep)
    assert "model:\n  path: builtin:tiny\nrl:\n  objective: sapo  # &lt;the recipe &amp; its comments&gt;" in page
    assert "Not logged in this run" in page and "Policy ratio and IS weights" in page
    assert "<code>only_null</code>: logged, but never a finite value" in page
    # the eval table: one row per eval line, the step-15 reward 0.65 among them
    assert re.search(r"<tr><td>15</td><td>0\.65</td><td>0\.55</td></tr>", page)
    # summary: reward/mean first 0.1 @1, last 3 @30, best 3 @30; one NaN and one inf counted
    assert re.search(r"<td>reward/mean</td><td>30</td><td>0</td><td>0\.1 <span class=muted>@1</span></td>"
                     r"<td>3 <span class=muted>@30</span></td>", page)
    assert re.search(r"<td>loss</td><td>29</td><td>1</td>", page)
    assert re.search(r"<td>grad_norm</td><td>29</td><td>1</td>", page)


def test_report_of_a_demo_layout_has_both_stages_and_the_before_after_table(tmp_path):
    run = tmp_path / "demo"
    _write_run(run / "sft", [{"step": 0, "loss": None, "eval/loss": 6.9},
                             *({"step": s, "loss": 7.0 - s, "lr": 1e-3} for s in range(1, 5)),
                             {"step": 5, "loss": 2.0, "eval/loss": 2.5}], recipe="model:\n  path: sft-recipe\n")
    _write_run(run / "rl", _rl_records(4), recipe="model:\n  path: rl-recipe\n")
    (run / "demo_results.json").write_text(json.dumps(
        {"before": {"format": 0.25, "reward": 1.0}, "after": {"format": 0.75, "reward": 2.0}, "steps": 4}))
    rep = build_report(run)
    assert rep.out_dir == run / "report" and [s.name for s in rep.stages] == ["sft", "rl"]
    assert set(rep.stages[0].pngs) == {"loss", "optim"}
    assert all(p.name.startswith(f"{s.name}_") for s in rep.stages for p in s.pngs.values())
    page = _check_page(rep)
    assert "path: sft-recipe" in page and "path: rl-recipe" in page
    assert page.index('id="stage-sft"') < page.index('id="stage-rl"')
    assert re.search(r"<td>sft \(before rl\)</td><td>0\.25</td><td>1</td></tr>"
                     r"<tr><td>sft \+ rl \(after\)</td><td>0\.75</td><td>2</td>", page)


def test_bad_run_directories_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ReportError, match="run directory not found"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"no metrics.jsonl in .*empty or its stage subdirectories"):
        build_report(tmp_path / "empty")
    bad = tmp_path / "bad"
    _write_run(bad, [{"step": 1, "loss": 1.0}])
    with open(bad / "metrics.jsonl", "a") as f:
        f.write('\n{"step": 2, "loss": 1.0\n')
    with pytest.raises(ReportError, match=re.escape(f"{bad / 'metrics.jsonl'}:3: not valid JSON")):
        build_report(bad)
    (bad / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl:2: expected a JSON object, got list"):
        build_report(bad)
    (bad / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl:1: no integer 'step'"):
        build_report(bad)
    (bad / "metrics.jsonl").write_text("\n")
    with pytest.raises(ReportError, match="no metrics lines yet"):
        build_report(bad)
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "error: run directory not found" in err and "Traceback" not in err


@pytest.mark.slow
def test_report_of_a_real_tiny_rl_run(tiny_path, tmp_path, capsys):
    run = tmp_path / "rl"
    assert main(["rl", "tiny-rl", "--out", str(run), f"model.path={tiny_path}", "train.progress=false",
                 "train.max_steps=2", "train.eval_every=0", "rollout.max_new_tokens=12", "rl.prompts_per_step=2",
                 "rl.dynamic_sampling=false",
                 "data.eval=[{kind: builtin, path: structured, split: heldout, n: 2}]"]) == 0
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().err
    assert f"report: {run / 'report' / 'report.html'}" in out
    rep = build_report(run)
    [stage] = rep.stages
    # every family rl.py logs for SAPO without a reference has its plot
    expected = {"reward", "eval", "loss", "entropy", "clip", "ratio", "mismatch", "staleness", "lengths",
                "time", "throughput", "optim", "advantage", "dynamic"}
    assert expected <= set(stage.pngs), set(stage.pngs)
    assert {"kl", "routing"} <= {p.key for p in stage.empty}  # beta = 0, a dense model
    page = _check_page(rep)
    assert "objective: sapo" in page and "advantage: gdpo" in page


def _render_check_module():
    """scripts/check_report_render.py, imported by path (scripts/ is no package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "check_report_render.py"
    spec = importlib.util.spec_from_file_location("check_report_render", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_report_renders_offline_in_headless_chromium(tmp_path):
    """Every image of the page decodes in a real browser with the network blocked; a page
    with a broken image is caught (so the check can fail)."""
    check = _render_check_module()
    browser = check.find_browser(None)
    if browser is None:
        pytest.skip("no chromium / google-chrome installed (apt-get install chromium)")
    _write_run(tmp_path / "run", _rl_records(20))
    rep = build_report(tmp_path / "run")
    shot = tmp_path / "shot.png"
    res = check.check(rep.html, browser, screenshot=shot, width=1500)
    assert res["ok"] and res["decoded"] == res["total"] == res["expected"] == len(rep.pngs), res
    with Image.open(shot) as im:
        assert im.size == (1500, res["page_height"]) and res["page_height"] > SIZE_PX[1] * len(rep.pngs) / 2
    broken = tmp_path / "broken.html"
    broken.write_text(rep.html.read_text().replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    res = check.check(broken, browser)
    assert not res["ok"] and res["decoded"] == res["total"] - 1, res
