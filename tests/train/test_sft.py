"""SFT on the tiny model: learning happens, resume is exact, packing and accumulation change nothing."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.cli import main
from posttrain.config import SFTRecipe, load_recipe
from posttrain.data.chat import collate, pack
from posttrain.data.sources import load_source
from posttrain.config import SourceConfig
from posttrain.models.load import load_model_and_tokenizer
from posttrain.train.metrics import read_metrics
from posttrain.train.sft import loss_tokens, run_sft, sft_loss, tokenize_examples


def recipe(*overrides):
    base = ["train.progress=false", "data.max_length=160", "train.batch_size=8",
            "data.train=[{kind: builtin, path: structured, n: 256}]",
            "data.eval=[{kind: builtin, path: structured, split: heldout, n: 16}]"]
    return load_recipe(SFTRecipe, None, base + list(overrides))


@pytest.fixture(scope="module")
def full_sft(tmp_path_factory):
    """25 steps of full fine-tuning on the structured task (the warm start the adapters reuse)."""
    out = tmp_path_factory.mktemp("full-sft")
    run_sft(recipe("train.max_steps=25", "train.lr=3e-3", "train.warmup_steps=3"), out)
    return out


@pytest.mark.slow
def test_sft_lowers_heldout_loss_and_saves_a_loadable_model(full_sft):
    rows = read_metrics(full_sft)
    before = rows[0]["eval/loss"]
    after = rows[-1]["eval/loss"]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 25
    assert after < before - 2.5, (before, after)   # ~6.9 nats/token (uniform over 1024) to < 4.4
    model = AutoModelForCausalLM.from_pretrained(full_sft / "final")
    assert model.config.model_type == "qwen3"
    saved = (full_sft / "recipe.yaml").read_text()
    assert "max_steps: 25" in saved


@pytest.mark.slow
def test_interrupted_sft_resumes_to_the_same_losses(tmp_path):
    ov = ["train.max_steps=6", "train.save_every=3", "adapter.kind=lora", "adapter.r=4",
          "adapter.dropout=0.1", "train.lr=1e-2", "data.eval=[]"]
    full = run_sft(recipe(*ov), tmp_path / "full")

    def kill(step, record):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sft(recipe(*ov), tmp_path / "cut", on_step=kill)
    resumed = run_sft(recipe(*ov), tmp_path / "cut", resume=True)
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    expected = [h["loss"] for h in full.history[3:]]
    assert [h["loss"] for h in resumed.history] == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "cut" / "final" / "adapter_config.json").exists()


@pytest.fixture(scope="module")
def model_and_items():
    r = recipe()
    model, tok = load_model_and_tokenizer(r.model, r.adapter)
    examples = load_source(SourceConfig(path="structured", n=6))
    return model, tok, tokenize_examples(tok, examples, 256, "test")


def test_packing_gives_the_same_loss_as_padding(model_and_items):
    model, tok, items = model_and_items
    padded = collate(items, tok.pad_token_id)
    packed = collate(pack(items, 512), tok.pad_token_id)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert loss_tokens(packed) == loss_tokens(padded)
    with torch.no_grad():
        a, _ = sft_loss(model, padded, 1.0)
        b, _ = sft_loss(model, packed, 1.0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_micro_batches_sum_to_the_full_batch_gradient(model_and_items):
    """Token normalisation over the whole step: uneven micro-batches give the big-batch gradient."""
    model, tok, items = model_and_items
    params = [p for p in model.parameters() if p.requires_grad]
    full = collate(items, tok.pad_token_id)
    model.zero_grad()
    sft_loss(model, full, loss_tokens(full))[0].backward()
    g_full = [p.grad.clone() for p in params]
    parts = [collate(items[:1], tok.pad_token_id), collate(items[1:], tok.pad_token_id)]
    denom = sum(loss_tokens(b) for b in parts)
    model.zero_grad()
    for b in parts:
        sft_loss(model, b, denom)[0].backward()
    for g, p in zip(g_full, params):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_cli_reports_a_malformed_row_with_file_and_row(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "completion": "yo"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    code = main(["sft", "tiny-sft", "--out", str(tmp_path / "o"),
                 f"data.train=[{{kind: jsonl, path: {bad}}}]", "data.eval=[]", "train.progress=false"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2:" in err.replace("\n", "")


def test_cli_reports_a_bad_recipe_key(tmp_path, capsys):
    code = main(["sft", "tiny-sft", "--out", str(tmp_path / "o"), "train.bacth_size=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "override 'train.bacth_size=4': unknown key 'train.bacth_size'; did you mean 'train.batch_size'?" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapter_sft_learns_a_new_task_and_saves_only_the_adapter(full_sft, tmp_path, kind):
    """On the warm-started model (a random-init model's frozen 0.02-scale embeddings cap its
    logits, so adapters alone barely move it), an adapter learns the arithmetic task."""
    r = recipe(f"model.path={full_sft / 'final'}", f"adapter.kind={kind}", "adapter.r=8",
               "adapter.alpha=16", "train.max_steps=20", "train.lr=2e-2",
               "data.train=[{kind: builtin, path: arithmetic, n: 256}]",
               "data.eval=[{kind: builtin, path: arithmetic, split: heldout, n: 16}]")
    res = run_sft(r, tmp_path)
    before, after = res.history[0]["eval/loss"], res.history[-1]["eval/loss"]
    assert after < before - 0.3, (before, after)   # measured: 5.34 -> 4.82 (lora), 4.84 (dora)
    final = tmp_path / "final"
    assert json.loads((final / "adapter_config.json").read_text())["use_dora"] is (kind == "dora")
    from safetensors import safe_open
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all("lora_" in n for n in names), names[:5]
