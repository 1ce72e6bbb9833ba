"""The command line: `posttrain rl` and `posttrain demo` end to end on the tiny model, and
the one-line errors a user gets for a bad recipe or override."""
import json

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
