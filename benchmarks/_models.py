"""Models for the RL-step benchmark beyond the built-in tiny one, and their FLOP counts.

`random_qwen3` builds a randomly initialised model with Qwen3-0.6B's architecture (random
weights are fine for throughput; nothing can be downloaded) next to the tiny model's
tokenizer: its 1,024 ids are a subset of the 151,936-row vocabulary, prompts tokenise as for
the tiny model, and sampled ids outside the tokenizer decode to nothing.

Training-phase MFU = 6 N tokens / (seconds x peak), the usual dense-transformer estimate
(Kaplan et al. 2020; PaLM appendix B without the attention term): N = the parameters a
token's forward multiplies by (all but the embedding lookup, the LM head included even
when tied), tokens = prompt + completion tokens of every row, i.e. the work of a plain
forward and backward. A trainer that skips work (posttrain's shared prompts) gets a higher
figure from the same formula: it is the throughput in units of that plain work.
"""

from __future__ import annotations

import shutil
from pathlib import Path

QWEN3_06B = dict(  # Qwen/Qwen3-0.6B config.json
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
)
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.05}
"""Dense bf16 tensor-core peak by device name (vendor datasheets, without sparsity)."""


def random_qwen3(cache: Path, tokenizer_dir: str, layers: int = 0, dtype: str = "bfloat16") -> str:
    """Directory of a seeded random Qwen3-0.6B-architecture model (`layers` > 0 keeps only
    that many decoder layers, for a smoke test), built once under `cache`."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    cfg = dict(QWEN3_06B, num_hidden_layers=layers or QWEN3_06B["num_hidden_layers"])
    out = cache / f"qwen3-0.6b-arch-L{cfg['num_hidden_layers']}-{dtype}-seed0"
    if (out / "model.safetensors").exists():
        return str(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = Qwen3Config(**cfg, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    gen = Path(tokenizer_dir) / "generation_config.json"  # the tiny model's stop tokens
    if gen.exists():
        shutil.copy(gen, tmp / gen.name)
    tmp.rename(out)
    return str(out)


def matmul_params(model_dir: str) -> int:
    """N of 6 N: parameters of the token forward's matmuls (embedding lookup excluded, LM
    head included), from the config on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    if config.tie_word_embeddings:
        n += config.vocab_size * config.hidden_size
    return n


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def train_phase_flops(out: dict, prompt_tokens: float, model_dir: str, device: str, peak: float) -> None:
    """Adds `train_phase` to each side of a configuration's result: the nominal 6 N tokens /
    rest-seconds TFLOP/s (tokens = `prompt_tokens` per step, all rows, + the side's own
    completion tokens) and the MFU against `peak` TFLOP/s, or the CUDA device's by name."""
    n_params = matmul_params(model_dir)
    peak = peak or None
    if peak is None and device == "cuda":
        import torch
        peak = peak_tflops(torch.cuda.get_device_name())
    for side in ("posttrain", "trl"):
        s = out[side]
        tokens = prompt_tokens + s["tokens_per_step"]
        tflops = 6 * n_params * tokens / s["split_s"]["rest"] / 1e12
        s["train_phase"] = {"matmul_params": n_params, "seq_tokens_per_step": round(tokens, 1),
                            "nominal_tflops": round(tflops, 4),
                            "mfu": round(tflops / peak, 4) if peak else None, "peak_tflops": peak}
