"""Export a trained checkpoint: merge an adapter into full weights, and write GGUF.

    posttrain export runs/sft/final --out exported/ --merge --gguf model-f16.gguf

`merge_adapter` turns a PEFT adapter directory (what SFT/RL save as `final/` with LoRA or
DoRA) into a plain Hugging Face model directory -- safetensors + config + tokenizer --
that `AutoModelForCausalLM.from_pretrained` loads with no PEFT installed. The merge is
PEFT's `merge_and_unload`, run in float32 and rounded once to the requested dtype:
LoRA (arXiv:2106.09685) W' = W + s B A with s = alpha / r; DoRA (arXiv:2402.09353, eq. 5)
W' = m * (W + s B A) / ||W + s B A||, the norm taken per output feature (row of W).

`write_gguf` writes a model directory as a single GGUF file for llama.cpp, with
llama.cpp's tensor names and metadata keys taken from the `gguf` package (gguf-py, the
library llama.cpp itself ships), not hard-coded here. Supported architectures: qwen3.

What is verified (tests/models/test_export.py): every tensor round-trips through
`gguf.GGUFReader` with llama.cpp's names, the right shapes and exact values (f32 exact;
f16/bf16 equal to torch's round-to-nearest cast); the hyperparameter and tokenizer
metadata read back as written; and transformers' own GGUF loader (an independent reader
of llama.cpp-format files) rebuilds the model with the same logits. What is NOT
verified here: loading and running the file in llama.cpp itself (not available in this
environment). One known gap: llama.cpp does not run a tokenizer's own pre-tokenizer
regex, it picks a built-in one by name (`tokenizer.ggml.pre`). Real Qwen3 tokenizers use
exactly llama.cpp's "qwen2" regex; the embedded tiny tokenizer's regex differs slightly
(it splits punctuation from a following word), so it is written as "qwen2" with a
warning. That yields the same tokens whenever no BPE merge spans a point where the two
regexes cut differently: transformers' Qwen2-regex tokenizer rebuilt from the GGUF tokens
and merges gives the tiny tokenizer's tokens on all 4,001 texts of its training corpus
(checked once; the tests check every 4th text).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

Dtype = Literal["float32", "float16", "bfloat16", "f32", "f16", "bf16"]

_CANON = {"float32": "float32", "f32": "float32", "fp32": "float32",
          "float16": "float16", "f16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}
_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _canon_dtype(name: str, what: str) -> str:
    """float32/f32, float16/f16, bfloat16/bf16 -> the torch spelling; anything else errors."""
    if name not in _CANON:
        raise ConfigError(f"{what}: unknown dtype {name!r}; use one of float32 (f32), "
                          f"float16 (f16), bfloat16 (bf16)")
    return _CANON[name]


# ----------------------------------------------------------------------------- merge


def checkpoint_kind(path: str | os.PathLike) -> Literal["adapter", "model"]:
    """'adapter' for a PEFT adapter directory, 'model' for a full HF model directory.

    Anything else is a ConfigError that says what was expected (and points at `final/`
    when given a run directory).
    """
    p = Path(path)
    if (p / "adapter_config.json").is_file():
        return "adapter"
    if (p / "config.json").is_file():
        return "model"
    hint = ""
    if (p / "final").is_dir():
        hint = f"; this looks like a run directory, did you mean {p / 'final'}?"
    elif p.name.startswith("step-") or (p / "trainable.safetensors").is_file():
        hint = ("; training checkpoints (checkpoints/step-*) hold resume state only, "
                "export the run's final/ directory")
    what = "does not exist" if not p.exists() else "is neither"
    raise ConfigError(f"export: '{p}' {what} a PEFT adapter directory (adapter_config.json) "
                      f"nor a model directory (config.json){hint}")


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()


def _resolve_base(adapter_dir: Path, base: str | None) -> str:
    """The base model an adapter was trained on: `base` if given, else adapter_config.json's."""
    from posttrain.models.load import _resolve_path

    recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get(
        "base_model_name_or_path")
    name = base or recorded
    if not name:
        raise ConfigError(f"export: {adapter_dir / 'adapter_config.json'} names no "
                          f"base_model_name_or_path; pass the base model explicitly (base=...)")
    try:
        return _resolve_path(ModelConfig(path=name))
    except ConfigError as e:
        raise ConfigError(f"export: the base model of adapter '{adapter_dir}' is '{name}' "
                          f"(adapter_config.json base_model_name_or_path), which cannot be "
                          f"found; pass the base model's current location (base=...). "
                          f"Cause: {e}") from None


def _find_tokenizer(source: str | None):
    """The tokenizer at a local directory or hub name, or None when there is none."""
    from transformers import AutoTokenizer

    if source is None or (Path(source).is_dir() and not _has_tokenizer(Path(source))):
        return None
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError:  # a hub name that is not reachable (offline) or has no tokenizer
        return None


def merge_adapter(path_or_model, out_dir: str | os.PathLike, dtype: Dtype = "bfloat16",
                  tokenizer=None, base: str | None = None) -> Path:
    """Merge a LoRA/DoRA adapter into its base and save a plain HF model to `out_dir`.

    path_or_model: a PEFT adapter directory, a PeftModel (merged in place: it is consumed),
        or a full model directory (then just re-saved in `dtype`).
    dtype: dtype of the saved weights; the merge itself runs in float32 (a model object is
        upcast first), so the sum W + s*B*A is rounded once. That needs float32 memory:
        4 bytes per parameter (16 GB for a 4B model).
    tokenizer: saved alongside; default: the adapter directory's own tokenizer (training
        saves one there), else the base model's.
    base: override the adapter's recorded base_model_name_or_path (e.g. after moving files).
    Returns out_dir; `AutoModelForCausalLM.from_pretrained(out_dir)` loads it.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch_dtype = _TORCH[_canon_dtype(dtype, "merge dtype")]
    out = Path(out_dir)
    tok_source: str | None = None

    if isinstance(path_or_model, PeftModel):
        model = path_or_model.float()
        cfg = model.peft_config[model.active_adapter]
        tok_source = cfg.base_model_name_or_path
        model = model.merge_and_unload(safe_merge=True)
    elif isinstance(path_or_model, torch.nn.Module):
        raise ConfigError(f"merge_adapter: got a {type(path_or_model).__name__}, not a PeftModel; "
                          f"save it with save_pretrained to export it")
    else:
        src = Path(path_or_model)
        if out.resolve() == src.resolve():
            raise ConfigError(f"export: the output directory '{out}' is the checkpoint itself; "
                              f"choose another --out")
        if checkpoint_kind(src) == "adapter":
            base_path = _resolve_base(src, base)
            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
            with warnings.catch_warnings():
                # PEFT still reads the transformers-4 name is_gradient_checkpointing
                warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing`",
                                        category=FutureWarning)
                model = PeftModel.from_pretrained(model, str(src))
            model = model.merge_and_unload(safe_merge=True)
            tok_source = str(src) if _has_tokenizer(src) else base_path
        else:
            model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch_dtype)
            tok_source = str(src)

    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype  # what config.json records as the weights' dtype
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is None:
        tokenizer = _find_tokenizer(tok_source)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    else:
        log.warning("export: no tokenizer found for %s; %s has weights and config only "
                    "(pass tokenizer=... to include one; GGUF export needs it)",
                    path_or_model if isinstance(path_or_model, (str, os.PathLike)) else "the model",
                    out)
    return out


# ------------------------------------------------------------------------------ GGUF

# llama.cpp's names for pre-tokenizer regexes it implements (tokenizer.ggml.pre); the
# regex strings are the Split patterns as they appear in Hugging Face tokenizer.json.
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_KNOWN_PRE = {_QWEN2_REGEX: "qwen2"}

_FILE_TYPES = {"float32": "ALL_F32", "float16": "MOSTLY_F16", "bfloat16": "MOSTLY_BF16"}


def _qwen3_hparams(writer, cfg) -> None:
    """Write the qwen3.* keys llama.cpp's qwen3 loader reads (names from gguf-py)."""
    if getattr(cfg, "use_sliding_window", False):
        raise ConfigError("write_gguf: this Qwen3 config enables sliding-window attention "
                          "(use_sliding_window), which llama.cpp's qwen3 graph does not run")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)  # Qwen3 heads are not hidden/heads wide (4B: 128 vs 80)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    _rope(writer, cfg)


def _rope(writer, cfg) -> None:
    """rope.freq_base, plus rope.scaling.* for linear / YaRN; other scalings are an error."""
    import gguf

    # transformers 5: config.rope_parameters holds theta and scaling; 4.x: rope_theta + rope_scaling
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise ConfigError("write_gguf: the config has no rope_theta (rope_parameters)")
    writer.add_rope_freq_base(float(theta))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return
    if kind not in ("linear", "yarn"):
        raise ConfigError(f"write_gguf: RoPE scaling {kind!r} is not supported "
                          f"(supported: default, linear, yarn)")
    writer.add_rope_scaling_type(gguf.RopeScalingType(kind))
    writer.add_rope_scaling_factor(float(rope["factor"]))
    if kind == "yarn":
        orig = rope.get("original_max_position_embeddings", cfg.max_position_embeddings)
        writer.add_rope_scaling_orig_ctx_len(int(orig))


@dataclass(frozen=True)
class _GGUFArch:
    arch: object
    """gguf.MODEL_ARCH member."""
    write_hparams: Callable
    """(writer, hf_config) -> None: the {arch}.* hyperparameter keys."""
    block_tensors: tuple[str, ...]
    """gguf.MODEL_TENSOR names every block must have (checked before writing)."""


def _gguf_arch(model_type: str) -> _GGUFArch:
    """model_type -> its GGUF description; the one place to add an architecture."""
    import gguf

    archs = {"qwen3": _GGUFArch(gguf.MODEL_ARCH.QWEN3, _qwen3_hparams, (
        "ATTN_NORM", "ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_OUT", "ATTN_Q_NORM", "ATTN_K_NORM",
        "FFN_NORM", "FFN_GATE", "FFN_UP", "FFN_DOWN"))}
    if model_type not in archs:
        raise ConfigError(f"write_gguf: architecture {model_type!r} is not supported "
                          f"(supported: {', '.join(archs)}); convert it with llama.cpp's "
                          f"convert_hf_to_gguf.py instead")
    return archs[model_type]


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (single file or sharded index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: model_dir / v for k, v in weight_map.items()}
    single = model_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open
        with safe_open(str(single), framework="pt") as f:
            return {k: single for k in f.keys()}
    raise ConfigError(f"write_gguf: no model.safetensors (or sharded index) in '{model_dir}'; "
                      f"re-save the model with save_pretrained(safe_serialization=True)")


def _natural(name: str):
    """Sort key: blk.2 before blk.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _gguf_tensors(model_dir: Path, cfg, spec: _GGUFArch, dtype: str):
    """Yield (gguf name, numpy array, raw ggml type or None) for every weight, lazily.

    2-D weights get `dtype`; 1-D norm weights stay float32, as llama.cpp expects.
    """
    import gguf
    from safetensors import safe_open

    arch_name = gguf.MODEL_ARCH_NAMES[spec.arch]
    name_map = gguf.get_tensor_name_map(spec.arch, cfg.num_hidden_layers)
    files = _weight_files(model_dir)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    plan: dict[str, str] = {}  # gguf name -> HF name
    for hf_name in files:
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed from rope.freq_base / shared with token_embd by llama.cpp
        mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ConfigError(f"write_gguf: tensor {hf_name!r} of '{model_dir}' has no llama.cpp "
                              f"name for {arch_name}; the checkpoint does not look like a "
                              f"plain {arch_name} model")
        plan[mapped] = hf_name

    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    need = {names[T.TOKEN_EMBD], names[T.OUTPUT_NORM]} | (set() if tied else {names[T.OUTPUT]})
    need |= {names[T[t]].format(bid=i) for i in range(cfg.num_hidden_layers)
             for t in spec.block_tensors}
    need = {n + ".weight" for n in need}
    if missing := sorted(need - plan.keys(), key=_natural):
        raise ConfigError(f"write_gguf: '{model_dir}' lacks tensors llama.cpp needs: "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    with contextlib.ExitStack() as stack:
        handles: dict[Path, object] = {}
        for gguf_name in sorted(plan, key=_natural):
            path = files[plan[gguf_name]]
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
            t = handles[path].get_tensor(plan[gguf_name])
            if t.ndim < 2 or dtype == "float32":
                yield gguf_name, t.to(torch.float32).numpy(), None
            elif dtype == "float16":
                yield gguf_name, t.to(torch.float16).numpy(), None
            else:  # numpy has no bfloat16: hand gguf the raw 16-bit patterns, typed BF16
                yield (gguf_name, t.to(torch.bfloat16).view(torch.int16).numpy(),
                       gguf.GGMLQuantizationType.BF16)


def _tokenizer_metadata(writer, model_dir: Path, cfg, tokenizer_pre: str | None) -> None:
    """tokenizer.ggml.*: a byte-level BPE ("gpt2") vocabulary padded to the embedding size."""
    import gguf
    from transformers import AutoTokenizer

    if not _has_tokenizer(model_dir):
        raise ConfigError(f"write_gguf: no tokenizer in '{model_dir}' (tokenizer.json); "
                          f"save the tokenizer next to the weights first")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"write_gguf: the tokenizer in '{model_dir}' has no tokenizer.json "
                          f"(a slow tokenizer); only byte-level BPE tokenizers are supported")
    spec = json.loads(backend.to_str())
    pre_json = json.dumps(spec.get("pre_tokenizer"))
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in pre_json:
        raise ConfigError(f"write_gguf: the tokenizer in '{model_dir}' is {spec['model']['type']} "
                          f"without byte-level pre-tokenisation; only byte-level BPE (GGUF "
                          f"tokenizer model 'gpt2', as Qwen uses) is supported")

    n_vocab = cfg.vocab_size
    if len(tok) > n_vocab:
        raise ConfigError(f"write_gguf: the tokenizer has {len(tok)} tokens but the model's "
                          f"embedding only {n_vocab} rows (config vocab_size)")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(n_vocab):  # embedding rows past the tokenizer are padding, never produced
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre or _detect_pre(spec, model_dir))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    def first(x):
        return x[0] if isinstance(x, (list, tuple)) else x

    bos = tok.bos_token_id if tok.bos_token_id is not None else first(cfg.bos_token_id)
    eos = tok.eos_token_id if tok.eos_token_id is not None else first(cfg.eos_token_id)
    if eos is None:
        raise ConfigError(f"write_gguf: neither the tokenizer nor config.json of '{model_dir}' "
                          f"names an eos token; llama.cpp would never stop generating")
    writer.add_eos_token_id(eos)
    if bos is not None:
        writer.add_bos_token_id(bos)
    if tok.pad_token_id is not None:
        writer.add_pad_token_id(tok.pad_token_id)
    # What the HF tokenizer actually does (its post-processor), not what a flag claims.
    ids = tok("a")["input_ids"]
    writer.add_add_bos_token(bos is not None and ids[0] == bos)
    writer.add_add_eos_token(ids[-1] == eos)
    template = tok.chat_template
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    if template:
        writer.add_chat_template(template)


def _split_regexes(node) -> list[str]:
    """Every Split regex in a tokenizer.json pre_tokenizer tree (Sequence nests them)."""
    if isinstance(node, dict):
        own = [node["pattern"]["Regex"]] if isinstance(node.get("pattern"), dict) \
            and "Regex" in node["pattern"] else []
        return own + [r for v in node.values() for r in _split_regexes(v)]
    if isinstance(node, list):
        return [r for v in node for r in _split_regexes(v)]
    return []


def _detect_pre(spec: dict, model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's Split regex; 'qwen2' with a warning if unknown."""
    for regex in _split_regexes(spec.get("pre_tokenizer")):
        if regex in _KNOWN_PRE:
            return _KNOWN_PRE[regex]
    log.warning("write_gguf: the pre-tokenizer regex of '%s' is not one llama.cpp implements; "
                "writing tokenizer.ggml.pre='qwen2', so llama.cpp splits text with Qwen's regex "
                "(same tokens unless a BPE merge spans a point where the regexes cut "
                "differently). Pass tokenizer_pre=... to choose another.", model_dir)
    return "qwen2"


def write_gguf(model_dir: str | os.PathLike, out_file: str | os.PathLike,
               dtype: Dtype = "f16", tokenizer_pre: str | None = None) -> Path:
    """Write the full model in `model_dir` as one GGUF file for llama.cpp.

    dtype: f16 (llama.cpp's usual unquantised type), bf16, or f32, for 2-D weights;
        norm weights are always f32. Quantise further with llama.cpp's llama-quantize.
    tokenizer_pre: llama.cpp pre-tokenizer name; default: detected from the tokenizer.
    Writes to a temporary file next to `out_file` and renames it into place.
    """
    try:
        import gguf
    except ImportError:
        raise ImportError("write_gguf needs the gguf package (llama.cpp's gguf-py): "
                          "pip install 'posttrain[gguf]'") from None
    from transformers import AutoConfig

    src = Path(model_dir)
    if checkpoint_kind(src) == "adapter":
        raise ConfigError(f"write_gguf: '{src}' is a PEFT adapter; merge it into full weights "
                          f"first (posttrain export {src} --merge --gguf FILE)")
    dtype = _canon_dtype(dtype, "gguf dtype")
    cfg = AutoConfig.from_pretrained(str(src))
    spec = _gguf_arch(cfg.model_type)

    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    # use_temp_file spools tensor data to disk, so memory stays ~one tensor for big models
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[spec.arch], use_temp_file=True)
    try:
        writer.add_name(src.resolve().name)
        spec.write_hparams(writer, cfg)
        writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[dtype]])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _tokenizer_metadata(writer, src, cfg, tokenizer_pre)
        for name, array, raw_type in _gguf_tensors(src, cfg, spec, dtype):
            writer.add_tensor(name, array, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------- CLI


@dataclass
class ExportResult:
    model_dir: Path | None
    """The merged / re-saved HF model directory, if one was written."""
    gguf_file: Path | None
    """The GGUF file, if one was written."""


def export(ckpt: str | os.PathLike, out_dir: str | os.PathLike, merge: bool = False,
           gguf_file: str | None = None, dtype: Dtype | None = None) -> ExportResult:
    """What `posttrain export CKPT --out DIR [--merge] [--gguf FILE] [--dtype D]` does.

    --merge writes DIR as a full HF model (an adapter merged into its base; a full model
    re-saved in dtype, default bfloat16). --gguf writes FILE -- relative to DIR unless
    absolute -- from the merged DIR, or from CKPT itself when it is already a full model
    (default dtype f16). An adapter checkpoint needs --merge before --gguf.
    """
    src = Path(ckpt)
    kind = checkpoint_kind(src)
    if not merge and gguf_file is None:
        raise ConfigError("export: nothing to do; pass --merge (full HF weights), "
                          "--gguf FILE (llama.cpp), or both")
    if kind == "adapter" and gguf_file is not None and not merge:
        raise ConfigError(f"export: '{src}' is a PEFT adapter; GGUF needs full weights, so "
                          f"add --merge (the merged model goes to --out, the GGUF next to it)")
    out = Path(out_dir)
    model_dir = merge_adapter(src, out, dtype=dtype or "bfloat16") if merge else None
    gguf_path = None
    if gguf_file is not None:
        target = Path(gguf_file) if Path(gguf_file).is_absolute() else out / gguf_file
        gguf_path = write_gguf(model_dir or src, target, dtype=dtype or "f16")
    return ExportResult(model_dir=model_dir, gguf_file=gguf_path)
