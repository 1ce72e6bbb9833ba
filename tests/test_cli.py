"""The command line: `posttrain rl` and `posttrain demo` end to end on the tiny model, and
the one-line errors a user gets for a bad recipe or override."""
import json
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.train.metrics import read_metrics


@pytest.mark.slow
def test_demo_writes_before_and_after_results(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "sft:train.max_steps=4", "sft:train.eval_every=0",
               "sft:data.train=[{kind: builtin, path: structured, n: 64}]",
               "rl:train.max_steps=2", "rl:train.eval_every=0", "rl:rollout.max_new_tokens=24",
               "rl:rl.prompts_per_step=2", "rl:data.eval=[{kind: builtin, path: structured, split: heldout, n: 4}]"])
    assert rc == 0
    res = json.loads((tmp_path / "demo_results.json").read_text())
    assert res["steps"] == 2 and res["sft_steps"] == 4 and res["heldout_prompts"] == 4
    for when in ("before", "after"):
        assert set(res[when]) == {"format", "schema", "type", "exact", "reward"}
        for k, v in res[when].items():
            assert 0.0 <= v <= (2.4 if k == "reward" else 1.0), (when, k, v)
    rows = read_metrics(tmp_path / "rl")
    assert rows[0]["step"] == 0 and "eval/reward" in rows[0]
    assert rows[-1]["step"] == 2 and "eval/reward" in rows[-1]
    assert (tmp_path / "rl" / "final").is_dir()


def test_demo_override_needs_a_stage_prefix(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "train.max_steps=3"]) == 2
    assert "prefix it with the stage, e.g. sft:train.max_steps=3" in capsys.readouterr().err


def test_rl_bad_override_is_one_line(tmp_path, capsys):
    assert main(["rl", "tiny-rl", "--out", str(tmp_path), "rl.objectiv=sapo"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'rl.objectiv'" in err and "did you mean 'rl.objective'" in err
    assert main(["rl", "tiny-rl", "--out", str(tmp_path), "rl.advantage=ppo"]) == 2
    assert "unknown advantage estimator 'ppo'" in capsys.readouterr().err


GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "test.jsonl"
STRUCTEVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "structeval_t" / "nonrenderable_sample.json"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["gsm8k", "structeval", "structured", "arithmetic"])
def test_eval_generates_and_scores_on_the_tiny_model(task, tiny_path, tmp_path):
    data = {"gsm8k": GSM8K, "structeval": STRUCTEVAL}.get(task)
    if data is not None and not data.is_file():
        pytest.skip(f"{data} is not here")
    args = ["eval", task, "--model", str(tiny_path), "--n", "3", "--max-new-tokens", "8", "--out", str(tmp_path)]
    if data is not None:
        args += ["--data", str(data)]
    if task == "gsm8k":
        args += ["--samples", "2", "--temperature", "1.0"]
    assert main(args) == 0
    res = json.loads((tmp_path / "eval_results.json").read_text())
    assert res["task"] == task and len(res["records"]) == 3
    assert res["settings"]["model_sha256"] and (data is None or res["settings"]["data_sha256"])
    if task == "gsm8k":
        assert {"pass@1/strict", "pass@1/flexible", "pass@2/strict", "bleu"} <= set(res["metrics"])


def test_eval_scores_given_predictions(tmp_path):
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} is not here")
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:5]]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"completion": r["answer"] if i % 2 == 0 else "#### 0.5"}) + "\n"
                             for i, r in enumerate(rows)))
    assert main(["eval", "gsm8k", "--data", str(GSM8K), "--predictions", str(preds), "--n", "5",
                 "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "eval_results.json").read_text())
    assert res["metrics"]["pass@1/strict"] == pytest.approx(3 / 5)
    preds.write_text('{"text": "x"}\n')
    assert main(["eval", "gsm8k", "--data", str(GSM8K), "--predictions", str(preds), "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_export_merges_and_writes_gguf(tiny_path, tmp_path):
    assert main(["export", str(tiny_path), "--out", str(tmp_path / "m"), "--merge", "--gguf", "tiny.gguf"]) == 0
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "tiny.gguf").stat().st_size > 0
