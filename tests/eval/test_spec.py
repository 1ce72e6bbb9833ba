"""posttrain eval spec: the results file and the CLI's errors."""
import json

import pytest
import torch

from posttrain.cli import main
from posttrain.config import ModelConfig
from posttrain.data.tasks import generate
from posttrain.models.load import load_model
from posttrain.spec.block import BlockDraftConfig, attach
from posttrain.spec.data import write_prompt_file


def test_eval_spec_writes_results_per_prompt_file(tiny_path, tmp_path):
    target = load_model(ModelConfig(path=tiny_path))
    torch.manual_seed(0)
    attach(BlockDraftConfig(hidden_size=128, block_size=4, target_layers=(1, 3)), target).save(tmp_path / "d")
    a = write_prompt_file(generate("structured", "heldout", 2), tmp_path / "p" / "structured.jsonl")
    b = write_prompt_file(generate("arithmetic", "heldout", 2), tmp_path / "p" / "arith.jsonl")
    assert main(["eval", "spec", "--target", tiny_path, "--draft", str(tmp_path / "d"), "--prompts",
                 str(a), str(b), "--block-size", "4", "--max-new-tokens", "12",
                 "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "spec_results.json").read_text())
    assert set(res) == {"structured", "arith"}
    for r in res.values():
        assert r["lossless"] is True and r["prompts"] == 2 and r["tokens"] == 24
        assert 1 <= r["tau"] <= 4 and r["cycles"] >= (24 - 2) / 4 and r["speedup"] > 0
        # pooled tau: every generated token but the two prefill ones came from a cycle
        assert abs(r["tau"] * r["cycles"] - (r["tokens"] - 2)) < 1e-2


def test_eval_spec_errors_are_one_line(tiny_path, tmp_path, capsys):
    assert main(["eval", "spec", "--target", tiny_path, "--prompts", "x.jsonl"]) == 2
    assert "needs --draft" in capsys.readouterr().err
    assert main(["eval", "spec", "--target", tiny_path, "--draft", "d", "--prompts",
                 str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_pooling_over_files_counts_cycles_not_tokens():
    """Two files: 4 cycles emitting 10 tokens (tau 2.5) and 2 cycles emitting 10 (tau 5.0):
    pooled 20 / 6, not the tokens-per-cycle figure that would add each prompt's prefill token."""
    from posttrain.eval.spec import pool_files
    results = {"a": {"tau": 2.5, "cycles": 4, "tokens": 12, "prompts": 2},
               "b": {"tau": 5.0, "cycles": 2, "tokens": 11, "prompts": 1}}
    tau, cycles = pool_files(results)
    assert cycles == 6 and tau == pytest.approx(20 / 6)
