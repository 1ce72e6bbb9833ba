"""Loading: device/dtype resolution, adapters (parameter counts by hand), checkpointing, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from posttrain.config import AdapterConfig, ConfigError, ModelConfig
from posttrain.models import load
from posttrain.models.load import (
    count_parameters,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

# Adapted linears of one tiny Qwen3 layer as (in, out): hidden 128, 4 query heads and
# 2 KV heads of 32 dims, SwiGLU width 384. The LM head (tied to the embedding) is not adapted.
LAYER_LINEARS = {"q_proj": (128, 128), "k_proj": (128, 64), "v_proj": (128, 64),
                 "o_proj": (128, 128), "gate_proj": (128, 384), "up_proj": (128, 384),
                 "down_proj": (384, 128)}
N_LAYERS = 4


@pytest.fixture(scope="module")
def cfg(tiny_path):
    """A ModelConfig pointing at the session's tiny model (built once, see conftest)."""
    return ModelConfig(path=tiny_path)


def _batch(model, b=2, t=9):
    ids = torch.randint(6, 200, (b, t), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids.clone()}


# --------------------------------------------------------------------------- device, dtype


def test_dtype_auto_is_float32_on_cpu_and_bf16_on_cuda():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="float32"):
        resolve_dtype("fp8", "cpu")


def test_device_auto_and_explicit():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")


def test_load_builtin_name_on_cpu_in_float32():
    # conftest points POSTTRAIN_CACHE at a per-session directory
    model, tok = load_model_and_tokenizer(ModelConfig(path="builtin:tiny", device="cpu"))
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    trainable, total = count_parameters(model)
    assert trainable == total  # full fine-tuning: everything trains


def test_missing_pad_token_falls_back_to_eos(cfg, monkeypatch):
    real = load.AutoTokenizer.from_pretrained

    def no_pad(*args, **kwargs):
        tok = real(*args, **kwargs)
        tok.pad_token = None
        return tok

    monkeypatch.setattr(load.AutoTokenizer, "from_pretrained", no_pad)
    tok = load_tokenizer(cfg)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


# --------------------------------------------------------------------------- adapters


def _trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_lora_trains_only_adapters_with_hand_counted_size(cfg):
    r = 4
    model = load_model(cfg, AdapterConfig(kind="lora", r=r, alpha=8))
    names = _trainable_names(model)
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert not any("lm_head" in n or "embed" in n for n in names)
    # one layer by hand: r * (in + out) for q, k, v, o, gate, up, down
    # = 4 * (256 + 192 + 192 + 256 + 512 + 512 + 512) = 4 * 2432 = 9728
    per_layer = sum(r * (i + o) for i, o in LAYER_LINEARS.values())
    assert per_layer == 9728
    trainable, total = count_parameters(model)
    assert trainable == N_LAYERS * per_layer == 38912
    base = count_parameters(load_model(cfg))[1]
    assert total == base + trainable


def test_dora_adds_one_magnitude_per_output_feature(cfg):
    r = 4
    model = load_model(cfg, AdapterConfig(kind="dora", r=r))
    names = _trainable_names(model)
    assert any("lora_magnitude_vector" in n for n in names)
    assert all("lora_" in n for n in names)
    lora = N_LAYERS * sum(r * (i + o) for i, o in LAYER_LINEARS.values())
    magnitudes = N_LAYERS * sum(o for _, o in LAYER_LINEARS.values())  # 4 * 1280
    assert count_parameters(model)[0] == lora + magnitudes == 38912 + 5120


def test_lora_on_explicit_modules_and_none_is_identity(cfg):
    model = load_model(cfg, AdapterConfig(kind="lora", r=2, target_modules=["q_proj", "v_proj"]))
    assert count_parameters(model)[0] == N_LAYERS * 2 * ((128 + 128) + (128 + 64))
    plain = load_model(cfg, AdapterConfig(kind="none"))
    assert type(plain).__name__ == "Qwen3ForCausalLM"


def test_lora_on_moe_reaches_attention_experts_and_router():
    """transformers 5 fuses the experts into 3-D tensors; PEFT maps all-linear onto them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # apply_adapter hides PEFT's spurious ones
        model = load_model(ModelConfig(path="builtin:tiny-moe"), AdapterConfig(kind="lora", r=4))
    names = _trainable_names(model)
    assert all("lora_" in n for n in names)
    for part in ("self_attn.q_proj", "self_attn.o_proj", "mlp.experts", "mlp.gate"):
        assert any(f"layers.0.{part}" in n for n in names), part
    attn = N_LAYERS * sum(4 * (i + o) for k, (i, o) in LAYER_LINEARS.items() if k.endswith(
        ("q_proj", "k_proj", "v_proj", "o_proj")))
    assert count_parameters(model)[0] > attn


# --------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize("kind", ["none", "lora"])
def test_gradient_checkpointing_backward_matches_plain(cfg, kind):
    """Recomputing activations must give the same loss and the same gradients."""
    adapter = AdapterConfig(kind=kind, r=4)
    grads = {}
    for ckpt in (False, True):
        torch.manual_seed(0)  # LoRA A is drawn from the global generator
        model = load_model(ModelConfig(path=cfg.path, gradient_checkpointing=ckpt), adapter)
        model.train()
        if kind == "lora":  # B starts at zero; move it so A gets a gradient too
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.data.normal_(0, 0.02)
        assert load.is_checkpointing(model) == ckpt
        loss = model(**_batch(model)).loss
        loss.backward()
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert all(g is not None for g in grads[ckpt].values())
    assert grads[True].keys() == grads[False].keys()
    for n in grads[True]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- errors


def test_unknown_builtin_lists_known_names():
    with pytest.raises(ConfigError, match="builtin:tiny, builtin:tiny-moe"):
        load_model(ModelConfig(path="builtin:tinyy"))


@pytest.mark.parametrize("path", ["./no/such/model", "/no/such/model", "~/no-such-model-xyz",
                                  "runs/sft/final/model"])
def test_missing_local_path_names_it(path):
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        load_tokenizer(ModelConfig(path=path))
    assert path in str(e.value)
    assert isinstance(e.value, ConfigError)  # reported by the CLI like any recipe error
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(ModelConfig(path=path))


def test_hub_failure_is_reworded_with_the_name():
    class Unreachable:
        @staticmethod
        def from_pretrained(path, **kwargs):
            raise OSError("We couldn't connect to 'https://huggingface.co'")

    with pytest.raises(OSError, match="org/model.*Hugging Face Hub.*couldn't connect"):
        load._from_pretrained(Unreachable, "org/model", "model")


def test_qlora_without_a_gpu_is_a_clear_error(tiny_path):
    import torch
    from posttrain.config import AdapterConfig, ConfigError, ModelConfig
    from posttrain.models.load import load_model
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the message is for machines without one")
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*adapter.kind=lora"):
        load_model(ModelConfig(path=str(tiny_path), device="cpu"), AdapterConfig(kind="qlora", r=4))
