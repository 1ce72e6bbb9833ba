"""One loading path for the built-in tiny models and real Hugging Face models.

    model, tokenizer = load_model_and_tokenizer(ModelConfig(path="Qwen/Qwen3-4B-Instruct-2507"),
                                                AdapterConfig(kind="lora", r=16))

`cfg.path` may be `builtin:tiny` / `builtin:tiny-moe` (built offline on first use, see
tiny.py), a local directory, or a hub name. Everything else -- dtype, device, attention
kernel, gradient checkpointing, LoRA/DoRA -- is the same code for all three, so a recipe
tested on the tiny model on a CPU runs unchanged on a real model on a GPU.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.config import AdapterConfig, ConfigError, ModelConfig
from posttrain.models.tiny import resolve_builtin

class ModelNotFoundError(ConfigError, FileNotFoundError):
    """model.path names a local path that does not exist (a ConfigError the CLI reports)."""


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"model.device: {name!r} is not a device (use auto, cpu, cuda, "
                         f"cuda:1, ...): {e}") from None


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """`auto` -> float32 on CPU (bf16 matmuls are slow there), bfloat16 on CUDA."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"model.dtype: unknown dtype {name!r}; known: auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _looks_local(path: str) -> bool:
    """True for strings that can only mean a local path (a hub id is `name` or `org/name`)."""
    return (path.startswith(("./", "../", "/", "~", ".\\")) or path in (".", "..")
            or path.count("/") > 1 or "\\" in path or os.path.isabs(path))


def _resolve_path(cfg: ModelConfig) -> str:
    """builtin:* -> cached directory; a local-looking path must exist; hub ids pass through."""
    path = resolve_builtin(cfg.path)
    if _looks_local(path):
        local = Path(path).expanduser()
        if not local.exists():
            raise ModelNotFoundError(
                f"model.path: local path '{path}' does not exist; give an existing model "
                f"directory, a hub name (e.g. Qwen/Qwen3-4B-Instruct-2507) or builtin:tiny")
        return str(local)
    return path


def _from_pretrained(loader, path: str, what: str, **kwargs):
    """Call `loader.from_pretrained`, turning hub/offline failures into one clear message."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as e:
        hint = ("it is neither a local directory nor reachable on the Hugging Face Hub "
                "(offline? set HF_HUB_OFFLINE=0 and check the name, or download it first)")
        raise OSError(f"model.path: could not load the {what} from '{path}': {hint}. "
                      f"Cause: {e}") from e


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer for `cfg.path`; a missing pad token is set to the eos token.

    Padding side is left as the checkpoint has it; batching code pads explicitly.
    """
    path = _resolve_path(cfg)
    tok = _from_pretrained(AutoTokenizer, path, "tokenizer",
                           trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of '{cfg.path}' has neither a pad nor an eos token; "
                             f"cannot pad batches")
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, adapter: AdapterConfig | None = None):
    """Load the causal LM for `cfg` on its device and dtype, optionally with an adapter.

    Returns the model (a PeftModel when an adapter is applied), in eval mode as
    from_pretrained leaves it; the training loop calls .train().
    """
    path = _resolve_path(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs = dict(dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if device.type != "cpu":
        # Materialise weights straight on the accelerator instead of staging a full
        # copy in host memory (matters for multi-GB checkpoints).
        kwargs["device_map"] = str(device)
    if adapter is not None and adapter.kind == "qlora":
        kwargs["quantization_config"] = qlora_config(device, dtype)
    model = _from_pretrained(AutoModelForCausalLM, path, "model", **kwargs)
    if device.type == "cpu":
        model.to(device)
    if adapter is not None and adapter.kind == "qlora":
        from peft import prepare_model_for_kbit_training
        # casts norms to fp32 and enables input grads, as 4-bit training needs
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)

    use_adapter = adapter is not None and adapter.kind != "none"
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing handles frozen inputs and kwargs correctly; the KV
        # cache is useless while training and conflicts with recomputation.
        enable_checkpointing(model)
        model.config.use_cache = False
        if use_adapter:
            # With frozen embeddings the checkpointed blocks' inputs carry no grad; this
            # hook makes them require grad so adapter gradients flow (needed for the
            # reentrant variant, harmless and cheap for the non-reentrant one).
            model.enable_input_require_grads()
    if use_adapter:
        model = apply_adapter(model, adapter)
    return model


def qlora_config(device: torch.device, dtype: torch.dtype):
    """bitsandbytes 4-bit NF4 with double quantisation and bf16 compute (Dettmers et al. 2023,
    QLoRA, arXiv 2305.14314). Needs a CUDA GPU and the bitsandbytes package: anything else is
    a ConfigError saying what to do, never a crash deep inside transformers.

    Not run in this project's CI (no GPU): the path is written against transformers'
    BitsAndBytesConfig and PEFT's prepare_model_for_kbit_training."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(
            "adapter.kind=qlora quantises the base model to 4-bit NF4 with bitsandbytes, which needs "
            f"a CUDA GPU; this run is on {device.type}. Use adapter.kind=lora (the same adapter on "
            "a 16/32-bit base) here, or run on a GPU with `pip install bitsandbytes`.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("adapter.kind=qlora needs the bitsandbytes package: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig
    compute = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def enable_checkpointing(model) -> None:
    """Turn on non-reentrant activation (gradient) checkpointing of the decoder layers.

    transformers 5 renamed gradient_checkpointing_enable to activation_checkpointing_enable
    (the old name warns and goes in v6); use whichever this version has.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(model) -> bool:
    """Whether any submodule recomputes its activations in backward."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def load_model_and_tokenizer(cfg: ModelConfig, adapter: AdapterConfig | None = None):
    """(model, tokenizer) for `cfg`; see load_model and load_tokenizer."""
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, adapter)
    return model, tokenizer


def apply_adapter(model, adapter: AdapterConfig):
    """Wrap `model` with a LoRA or DoRA adapter through PEFT; kind none returns it as is.

    Only the adapter weights stay trainable. target_modules="all-linear" is PEFT's
    shorthand for every nn.Linear except the output head. On MoE models in transformers 5
    the experts are fused 3-D parameters rather than nn.Linear; PEFT >= 0.21 maps
    all-linear onto them anyway (a rank-r LoRA per expert, packed), and onto the router,
    as all-linear did on transformers 4. Pass explicit target_modules to adapt less.
    """
    if adapter.kind == "none":
        return model
    if adapter.kind not in ("lora", "dora", "qlora"):
        raise ConfigError(f"adapter.kind: unknown {adapter.kind!r}; known: none, lora, dora, qlora")
    lora = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        use_dora=adapter.kind == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # PEFT >= 0.21 rewrites all-linear on transformers-5 MoE models into per-expert
        # LoRA on the fused expert tensors and sets rank/alpha patterns for them, then
        # warns that those patterns matched no module; the ranks are applied all the same.
        warnings.filterwarnings("ignore", message=r"The following (rank|alpha)_pattern keys",
                                category=RuntimeWarning)
        # PEFT still reads the transformers-4 name is_gradient_checkpointing (deprecated in 5).
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        return get_peft_model(model, lora)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() already deduplicates shared tensors
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
