"""Export: adapter merge (logits unchanged), GGUF round trip (names, shapes, values, metadata)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from posttrain.config import AdapterConfig, ConfigError, ModelConfig
from posttrain.models.export import export, merge_adapter, write_gguf
from posttrain.models.load import load_model

try:
    import gguf
except ImportError:  # the optional extra: pip install 'posttrain[gguf]'
    gguf = None
needs_gguf = pytest.mark.skipif(gguf is None, reason="needs the gguf package (posttrain[gguf])")

N_LAYERS = 4
# HF name -> llama.cpp name, written out by hand (not from gguf's TensorNameMap, which the
# exporter uses) so the test checks the mapping rather than repeating it.
BLOCK_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
HF_TO_GGUF = {"model.embed_tokens.weight": "token_embd.weight",
              "model.norm.weight": "output_norm.weight"}
HF_TO_GGUF |= {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight"
               for i in range(N_LAYERS) for hf, g in BLOCK_NAMES.items()}


def _ids(n=3, t=16, seed=0):
    return torch.randint(6, 1024, (n, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model, ids):
    return model(input_ids=ids).logits


def _field(reader, key):
    return reader.fields[key].contents()


# ----------------------------------------------------------------------------- merge


@pytest.fixture(scope="module")
def adapters(tiny_path, tmp_path_factory):
    """kind -> (adapter dir, reference logits of the adapter model, base logits), fp32.

    B is re-drawn away from its zero init (and DoRA's magnitudes scaled) so the adapter
    changes the output; otherwise merging would trivially preserve the logits.
    """
    out, ids = {}, _ids()
    tok = AutoTokenizer.from_pretrained(tiny_path)
    for kind in ("lora", "dora"):
        model = load_model(ModelConfig(path=tiny_path, dtype="float32", device="cpu"),
                           AdapterConfig(kind=kind, r=4))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
                elif "lora_magnitude_vector" in name:
                    p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        model.eval()
        d = tmp_path_factory.mktemp(kind) / "final"
        model.save_pretrained(d)
        tok.save_pretrained(d)  # as SFT/RL save final/
        with model.disable_adapter():
            base = _logits(model, ids)
        out[kind] = (d, _logits(model, ids), base)
    return out


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merged_logits_equal_adapter_logits(adapters, kind, tmp_path):
    adapter_dir, want, base = adapters[kind]
    assert (want - base).abs().max() > 1e-2  # the adapter does change the model
    out = merge_adapter(adapter_dir, tmp_path / "merged", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no PEFT
    assert not any("lora" in k for k in merged.state_dict())
    assert merged.dtype == torch.float32
    torch.testing.assert_close(_logits(merged, _ids()), want, rtol=0, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out).chat_template  # tokenizer travels along


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_merge_takes_a_peft_model(adapters, tiny_path, tmp_path):
    adapter_dir, want, _ = adapters["lora"]
    base = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    out = merge_adapter(model, tmp_path / "m", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(merged, _ids()), want, rtol=0, atol=1e-5)
    assert (out / "tokenizer.json").is_file()  # found through the base model's directory


def test_full_model_is_resaved_in_dtype(tiny_path, tmp_path):
    out = merge_adapter(tiny_path, tmp_path / "bf16", dtype="bfloat16")
    got = load_file(str(out / "model.safetensors"))
    ref = load_file(f"{tiny_path}/model.safetensors")
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == torch.bfloat16
        assert torch.equal(got[k], ref[k].to(torch.bfloat16))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_moved_base_model_is_a_clear_error_and_can_be_overridden(adapters, tiny_path, tmp_path):
    adapter_dir = tmp_path / "moved"
    shutil.copytree(adapters["lora"][0], adapter_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"base model .*gone.*base=\.\.\."):
        merge_adapter(adapter_dir, tmp_path / "out", dtype="float32")
    out = merge_adapter(adapter_dir, tmp_path / "out", dtype="float32", base=tiny_path)
    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(merged, _ids()), adapters["lora"][1], rtol=0, atol=1e-5)


def test_neither_adapter_nor_model_is_a_clear_error(tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"neither a PEFT adapter .* did you mean .*final"):
        merge_adapter(tmp_path / "run", tmp_path / "out")
    with pytest.raises(ConfigError, match="does not exist"):
        merge_adapter(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'"):
        merge_adapter(tmp_path / "run" / "final", tmp_path / "out", dtype="fp8")


# ------------------------------------------------------------------------------ GGUF


@needs_gguf
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_gguf_tensors_round_trip(tiny_path, tmp_path, dtype):
    path = write_gguf(tiny_path, tmp_path / f"tiny-{dtype}.gguf", dtype=dtype)
    reader = gguf.GGUFReader(path)
    ref = load_file(f"{tiny_path}/model.safetensors")
    got = {t.name: t for t in reader.tensors}
    # tied embeddings: no output.weight, llama.cpp reuses token_embd
    assert set(got) == set(HF_TO_GGUF.values())
    assert "lm_head.weight" not in ref
    matrix_type = {"f32": "F32", "f16": "F16", "bf16": "BF16"}[dtype]
    for hf_name, g_name in HF_TO_GGUF.items():
        want, t = ref[hf_name], got[g_name]
        assert list(t.shape) == list(want.shape)[::-1]  # ggml lists the innermost dim first
        assert t.tensor_type.name == ("F32" if want.ndim == 1 else matrix_type)
        values = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        values = values.reshape(want.shape).float()
        if want.ndim == 1 or dtype == "f32":
            assert torch.equal(values, want), g_name
        elif dtype == "f16":
            assert torch.equal(values, want.half().float()), g_name  # round-to-nearest cast
            assert ((values - want).abs() <= want.abs() * 2.0**-11 + 2.0**-25).all()
        else:
            assert torch.equal(values, want.bfloat16().float()), g_name


@needs_gguf
def test_gguf_metadata(tiny_path, tmp_path):
    reader = gguf.GGUFReader(write_gguf(tiny_path, tmp_path / "tiny.gguf", dtype="f16"))
    tok = AutoTokenizer.from_pretrained(tiny_path)
    expect = {
        "general.architecture": "qwen3", "general.file_type": gguf.LlamaFileType.MOSTLY_F16,
        "qwen3.block_count": 4, "qwen3.context_length": 1024, "qwen3.embedding_length": 128,
        "qwen3.feed_forward_length": 384, "qwen3.attention.head_count": 4,
        "qwen3.attention.head_count_kv": 2, "qwen3.attention.key_length": 32,
        "qwen3.attention.value_length": 32, "qwen3.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "tokenizer.ggml.padding_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": tok.chat_template,
    }
    for key, value in expect.items():
        assert _field(reader, key) == value, key
    assert _field(reader, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 1024 == AutoConfig.from_pretrained(tiny_path).vocab_size
    assert tokens == tok.convert_ids_to_tokens(list(range(1024)))
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[:6] == [gguf.TokenType.CONTROL] * 6  # the six special tokens
    assert set(types[6:]) == {gguf.TokenType.NORMAL}
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [" ".join(m) for m in merges]


@needs_gguf
def test_transformers_gguf_loader_rebuilds_the_model(tiny_path, tmp_path):
    """An independent reader of llama.cpp-format GGUF: same logits, same tokens."""
    from posttrain.models.tiny import SCAFFOLD_TEXT, default_corpus

    write_gguf(tiny_path, tmp_path / "tiny.gguf", dtype="f32")
    cfg = AutoConfig.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    # transformers' GGUF qwen3 mapping ignores attention.key_length and keeps Qwen3Config's
    # default head_dim (128); set it from the file, which is what llama.cpp reads.
    reader = gguf.GGUFReader(tmp_path / "tiny.gguf")
    cfg.head_dim = _field(reader, "qwen3.attention.key_length")
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", config=cfg,
                                                 dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    assert torch.equal(_logits(model, _ids()), _logits(ref, _ids()))

    # The rebuilt tokenizer splits with llama.cpp's "qwen2" regex, not the tiny one; on the
    # tiny tokenizer's training corpus the tokens are the same (all of it was checked once;
    # every 4th text keeps this test fast).
    gguf_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    hf_tok = AutoTokenizer.from_pretrained(tiny_path)
    texts = [SCAFFOLD_TEXT, *default_corpus()[::4], "<|im_start|>user\nhi<|im_end|>\n"]
    assert gguf_tok(texts)["input_ids"] == hf_tok(texts)["input_ids"]


@needs_gguf
def test_gguf_untied_head_and_yarn_rope(tiny_path, tmp_path):
    """A separate LM head becomes output.weight; YaRN scaling is written as rope.scaling.*."""
    d = tmp_path / "untied"
    shutil.copytree(tiny_path, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                              "original_max_position_embeddings": 256}
    (d / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(d / "model.safetensors"))
    head = torch.randn(weights["model.embed_tokens.weight"].shape,
                       generator=torch.Generator().manual_seed(0))
    save_file({**weights, "lm_head.weight": head}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    reader = gguf.GGUFReader(write_gguf(d, tmp_path / "u.gguf", dtype="f32"))
    out = next(t for t in reader.tensors if t.name == "output.weight")
    assert torch.equal(torch.from_numpy(out.data.copy()), head)
    assert _field(reader, "qwen3.rope.scaling.type") == "yarn"
    assert _field(reader, "qwen3.rope.scaling.factor") == 4.0
    assert _field(reader, "qwen3.rope.scaling.original_context_length") == 256


@needs_gguf
@pytest.mark.parametrize("config", [
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, vocab_size=256),
    AutoConfig.for_model("qwen3_moe", hidden_size=64, num_hidden_layers=2, vocab_size=256),
], ids=["llama", "qwen3_moe"])
def test_gguf_unsupported_architecture(tmp_path, config):
    config.save_pretrained(tmp_path)  # the check comes before any weight is read
    with pytest.raises(ConfigError, match=rf"architecture '{config.model_type}' is not "
                                          rf"supported \(supported: qwen3\)"):
        write_gguf(tmp_path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@needs_gguf
def test_gguf_missing_tensor_is_named(tiny_path, tmp_path):
    shutil.copytree(tiny_path, tmp_path / "m")
    weights = load_file(f"{tiny_path}/model.safetensors")
    del weights["model.layers.2.self_attn.q_norm.weight"]
    save_file(weights, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"lacks tensors .*blk\.2\.attn_q_norm\.weight"):
        write_gguf(tmp_path / "m", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


@needs_gguf
def test_gguf_of_an_adapter_says_merge_first(adapters, tmp_path):
    with pytest.raises(ConfigError, match="PEFT adapter; merge it"):
        write_gguf(adapters["lora"][0], tmp_path / "x.gguf")


# ------------------------------------------------------------------------------- CLI


@needs_gguf
def test_export_merge_and_gguf(adapters, tmp_path):
    adapter_dir, want, _ = adapters["dora"]
    result = export(adapter_dir, tmp_path / "out", merge=True, gguf_file="m.gguf",
                    dtype="float32")
    assert result.model_dir == tmp_path / "out"
    assert result.gguf_file == tmp_path / "out" / "m.gguf"
    merged = AutoModelForCausalLM.from_pretrained(result.model_dir)
    torch.testing.assert_close(_logits(merged, _ids()), want, rtol=0, atol=1e-5)
    # the GGUF holds the merged weights, not the base model's
    q = next(t for t in gguf.GGUFReader(result.gguf_file).tensors
             if t.name == "blk.1.attn_q.weight")
    assert np.array_equal(q.data, merged.model.layers[1].self_attn.q_proj.weight.detach().numpy())


def test_export_errors(adapters, tmp_path):
    adapter_dir = adapters["lora"][0]
    with pytest.raises(ConfigError, match="add --merge"):
        export(adapter_dir, tmp_path / "out", merge=False, gguf_file="m.gguf")
    with pytest.raises(ConfigError, match="nothing to do"):
        export(adapter_dir, tmp_path / "out", merge=False, gguf_file=None)
    with pytest.raises(ConfigError, match="is the checkpoint itself"):
        export(adapter_dir, adapter_dir, merge=True)
