"""Recipes: small typed dataclasses, one per concern, loaded from YAML with dotted overrides.

    posttrain sft recipes/tiny-sft.yaml train.lr=3e-4 model.path=runs/tiny

Every field carries a one-line doc (the string under it). Unknown keys and wrong types
fail with a `ConfigError` naming the key and, for a misspelling, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A recipe problem a user can fix; the message names the key and what to do."""



RECIPE_DIR = Path(__file__).parent / "recipes"


def find_recipe(name: str, what: str = "recipe file") -> Path:
    """A recipe path as given, or the name of one shipped with posttrain (tiny-sft)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = RECIPE_DIR / (name if name.endswith(".yaml") else name + ".yaml")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(f.stem for f in RECIPE_DIR.glob("*.yaml")))
    raise ConfigError(f"{what} not found: {name} (shipped recipes: {known})")

# --------------------------------------------------------------------------- concerns


@dataclass
class ModelConfig:
    path: str = "builtin:tiny"
    """Hub name, local directory, or builtin:tiny / builtin:tiny-moe (built offline on first use)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; auto = float32 on CPU (bf16 matmuls are very slow there), bfloat16 on CUDA."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    attn_implementation: str | None = None
    """eager, sdpa, flash_attention_2; None lets transformers choose."""
    trust_remote_code: bool = False
    """Run modelling code shipped with a hub repo; off unless asked."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""


@dataclass
class AdapterConfig:
    kind: Literal["none", "lora", "dora", "qlora"] = "none"
    """none = full fine-tuning; lora or dora through PEFT; qlora = LoRA on a 4-bit NF4 base
    (bitsandbytes, CUDA only)."""
    r: int = 16
    """Adapter rank."""
    alpha: float = 32.0
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: Union[str, list[str]] = "all-linear"
    """Module names to adapt, or all-linear (every linear layer but the LM head)."""


@dataclass
class SourceConfig:
    kind: Literal["builtin", "jsonl", "json", "parquet", "hf"] = "builtin"
    """Where examples come from: a built-in synthetic task or a file / HF dataset."""
    path: str = "structured"
    """builtin: task name (structured, arithmetic); otherwise a file or dataset path / hub name."""
    split: str = "train"
    """train or heldout for built-in tasks; the split name for HF datasets."""
    n: int | None = None
    """Number of examples (built-in: how many to generate; files: keep the first n)."""
    weight: float = 1.0
    """Mixing ratio relative to the other sources of the same list."""
    columns: dict[str, str] = field(default_factory=dict)
    """Map of example field -> column name: messages, prompt, completion, answer, meta, id."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra options for a built-in task (e.g. formats: [json, yaml], think: true)."""


@dataclass
class DataConfig:
    train: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    """Training sources, mixed by weight."""
    eval: list[SourceConfig] = field(default_factory=list)
    """Held-out sources for evaluation."""
    max_length: int = 512
    """Sequences are truncated to this many tokens."""
    packing: bool = False
    """Concatenate examples into max_length rows (attention kept within each example)."""
    seed: int = 0
    """Seed for generation, shuffling and mixing."""


@dataclass
class TrainConfig:
    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.0
    """The cosine decays to lr * min_lr_ratio."""
    max_steps: int = 100
    """Optimizer steps in total."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None disables clipping."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision; auto = fp32 on CPU, bf16 autocast on CUDA."""
    eval_every: int = 0
    """Evaluate on the eval sources every N steps (0: only at the end)."""
    save_every: int = 0
    """Write a checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_every: int = 1
    """Write a metrics line every N steps."""
    max_bad_steps: int = 5
    """Stop after this many NaN/inf losses in a row (each is skipped with a warning)."""
    logprob_chunk: int | None = None
    """Token rows per chunk of the per-token log-probs (the full B x T x V logits are never
    built); None: as many as fit a 96 MiB (rows, V) fp32 buffer (165 rows at V = 151,936)."""
    seed: int = 0
    """Seed for initialisation, dropout and data order."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class SFTRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to fine-tune."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """Adapter (or none for full fine-tuning)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and evaluation data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and loop settings."""
    out: str = "runs/sft"
    """Output directory (checkpoints, metrics, final model)."""


@dataclass
class RolloutConfig:
    engine: Literal["fast", "hf"] = "fast"
    """Rollout engine. hf: batched sampling through the transformers forward with its KV
    cache, any causal LM. fast: the same sampling with a lean decode forward and a static
    KV cache for dense Qwen3 models (same tokens for the same seed); any other model
    (MoE, PEFT, other architectures) or stop strings use the hf path."""
    group_size: int = 4
    """Completions per prompt (G)."""
    temperature: float = 1.0
    """Sampling temperature (the trainer's log-probs use the same one)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = all)."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p x the most likely one."""
    max_new_tokens: int = 256
    """Generation cap (L_max); completions reaching it are "truncated"."""
    stop: list[str] = field(default_factory=list)
    """Stop strings, besides EOS and the chat template's end-of-turn token."""
    precision: Literal["same", "bf16_weights", "bf16"] = "same"
    """same: sample with the trained weights; bf16_weights: a copy rounded to bf16, fp32
    compute (a CPU stand-in for a bf16 inference engine); bf16: a bf16 copy."""
    batch_size: int = 64
    """Sequences generated together (bounds the KV cache)."""
    compile: bool = False
    """engine fast: each decode step as one `torch.compile`d graph; compiles on the first
    rollout (CPU: ~30 s, ~6 s with a warm cache; needs a C++ compiler), the same math
    rounded differently (seeded tokens match the eager engine's up to that rounding)."""

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError("rollout.group_size must be >= 1")
        if self.compile and self.engine != "fast":
            raise ValueError("rollout.compile needs rollout.engine: fast (the hf engine is not compiled)")
        if self.max_new_tokens < 1:
            raise ValueError("rollout.max_new_tokens must be >= 1")


@dataclass
class RewardComponent:
    name: str = "format"
    """Name in metrics and in the advantage's component axis."""
    reward: str = "structured_format"
    """A registered reward (see docs/rewards.md)."""
    weight: float = 1.0
    """Weight in the total reward (and in GDPO's weighted sum)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the reward (e.g. overlong: max_len, cache)."""


@dataclass
class RLConfig:
    prompts_per_step: int = 8
    """Prompts per RL step (each gets rollout.group_size completions)."""
    objective: str = "grpo"
    """Policy objective: grpo, dr_grpo, dapo, gspo, gspo_token, sapo, cispo, reinforce_is."""
    objective_params: dict[str, Any] = field(default_factory=dict)
    """Its parameters and modifiers (eps_high, tau_pos, beta, top_entropy_rho, mismatch, ...)."""
    advantage: str = "grpo"
    """Advantage estimator: grpo, dr_grpo, rloo, gdpo."""
    advantage_scale: Literal["default", "group", "batch", "none"] = "default"
    """Divide by the group's std, the batch's, or not at all; default: the estimator's own
    (grpo group, dr_grpo none, rloo none, gdpo batch; see docs/objectives.md)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and draw more prompts to refill."""
    max_gen_rounds: int = 3
    """Cap on generation rounds per step with dynamic sampling (then train on what is kept)."""
    epochs: int = 1
    """Passes over each rollout batch."""
    mini_batches: int = 1
    """Optimizer updates per epoch (> 1 makes later updates off-policy: see staleness/kl)."""
    mask_truncated: bool = False
    """Exclude completions cut by max_new_tokens from the loss (DAPO overlong filtering)."""
    share_prompts: bool = True
    """Update and scoring passes run each group's prompt once, its completions attending to
    it (dense Qwen3, plain or with LoRA; other models use the plain forward). Same log-probs
    and gradients, fewer tokens of work (models/prefix.py)."""
    reference: Literal["auto", "none"] = "auto"
    """auto: a reference model exists only when objective_params.beta > 0 (the base with
    adapters disabled, or a frozen copy for full fine-tuning); none: never."""
    routing_replay: Literal["none", "r2", "r3"] = "none"
    """MoE only: the expert routing of the update passes. r2 = pi_old's (the trainer before
    the step's first update), r3 = the rollout engine's (pi_old too); docs/stability.md."""


@dataclass
class RLRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy (e.g. an SFT checkpoint's final/ directory)."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """Adapter (or none for full fine-tuning)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompt sources (a trailing assistant turn, if any, is dropped) and held-out prompts."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling."""
    rewards: list[RewardComponent] = field(default_factory=lambda: [RewardComponent()])
    """Reward components and weights."""
    eval_rewards: list[RewardComponent] = field(default_factory=list)
    """Extra components scored only at evaluation (e.g. exact match); weight ignored."""
    rl: RLConfig = field(default_factory=RLConfig)
    """Objective, advantage and update schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimizer and loop; max_steps counts RL steps, batch_size sequences per backward."""
    out: str = "runs/rl"
    """Output directory."""


@dataclass
class PreferConfig:
    objective: str = "dpo"
    """Preference objective: dpo, orpo, simpo (docs/objectives.md)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Its parameters (dpo: beta, label_smoothing; orpo: lam; simpo: beta, gamma)."""
    reference: Literal["precompute", "live"] = "precompute"
    """For objectives with a reference (dpo): precompute = score every pair once with the
    initial policy before training (no second model in memory); live = score each batch
    with the base (adapters disabled) or a frozen copy."""


@dataclass
class PreferRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy (usually an SFT checkpoint's final/ directory)."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """Adapter (or none for full fine-tuning)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Pair sources: {prompt, chosen, rejected} rows, or builtin structured / arithmetic pairs."""
    prefer: PreferConfig = field(default_factory=PreferConfig)
    """Objective and reference."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimizer and loop; batch_size counts pairs."""
    out: str = "runs/prefer"
    """Output directory."""


@dataclass
class DraftConfig:
    kind: Literal["block", "ar"] = "block"
    """block: the DFlash-style block drafter; ar: the baseline, a smaller causal LM of the
    target's architecture (num_layers layers, the target's embeddings copied and frozen)
    distilled with kd on every response position (docs/speculative.md)."""
    num_layers: int = 1
    """Draft decoder layers."""
    block_size: int = 16
    """B: slots per block, the known token + B - 1 drafted ones (tau ceiling)."""
    num_target_layers: int = 2
    """How many evenly spaced target layers condition the draft (ignored if target_layers)."""
    target_layers: list[int] = field(default_factory=list)
    """Explicit hidden_states indices (0 = embeddings, i = after layer i); empty = evenly spaced."""
    intermediate_size: int | None = None
    """MLP width; None = the target's."""
    num_heads: int | None = None
    """Attention heads; None = the target's (and its KV heads and head_dim)."""

    def __post_init__(self):
        if self.block_size < 2:
            raise ValueError("draft.block_size must be >= 2")
        if self.num_layers < 1 or self.num_target_layers < 1:
            raise ValueError("draft.num_layers and draft.num_target_layers must be >= 1")


@dataclass
class DistillDataConfig:
    train: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    """Prompt sources; the target writes the responses (greedy, thinking off)."""
    eval: list[SourceConfig] = field(default_factory=list)
    """Held-out prompt sources: written as one prompt file per source for the spec evaluation,
    and their prompt hashes are subtracted from the training prompts."""
    max_new_tokens: int = 128
    """Length cap of the target's responses."""
    max_length: int = 512
    """Prompt + response tokens kept per training sequence."""
    anchors_per_seq: int = 8
    """Blocks drawn per response per pass (random anchor positions, redrawn every time)."""
    gen_batch_size: int = 64
    """Sequences the target generates together."""
    seed: int = 0
    """Seed of the built-in prompt generators."""


@dataclass
class DistillLossConfig:
    loss: str = "kd"
    """A registered distill loss: kd, eal, survival_eal, eal_exact (docs/speculative.md)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Its parameters (kd: gamma, alpha, temperature; eal / survival_eal: eal_coef, kl_coef)."""
    init_from: str | None = None
    """Warm start: a draft directory (drafter.json + drafter.safetensors) to start from."""


@dataclass
class DistillStage:
    name: str = "kd"
    """Stage name (its output directory is OUT/stages/<index>-<name>)."""
    loss: str = "kd"
    """The stage's distill loss."""
    params: dict[str, Any] = field(default_factory=dict)
    """Its parameters."""
    max_steps: int | None = None
    """Optimizer steps of this stage; None = train.max_steps."""
    lr: float | None = None
    """Peak learning rate of this stage; None = train.lr."""


@dataclass
class SpecEvalConfig:
    enabled: bool = True
    """Run the speculative-decoding evaluation on the data.eval prompts after training."""
    block_size: int | None = None
    """Verify block size; None = the draft's."""
    max_new_tokens: int = 128
    """Generation cap of both the plain and the speculative decoding."""


@dataclass
class DistillRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The target (frozen). With target_sft set, the base the target is fine-tuned from."""
    target_sft: str | None = None
    """An SFT recipe (file or shipped name) that turns model.path into the target; the result
    is cached under $POSTTRAIN_CACHE/targets, keyed by the resolved recipe, and reused."""
    target_sft_overrides: list[str] = field(default_factory=list)
    """Dotted overrides of that SFT recipe (part of the cache key)."""
    draft: DraftConfig = field(default_factory=DraftConfig)
    """The draft model."""
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    """Prompts, response generation and anchors."""
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)
    """The loss (a single stage) and an optional warm start."""
    stages: list[DistillStage] = field(default_factory=list)
    """Successive stages (e.g. kd -> eal -> survival_eal), each warm-starting from the previous
    one's draft; empty = one stage with `distill`."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimizer and loop; batch_size counts sequences (each gives anchors_per_seq blocks)."""
    spec_eval: SpecEvalConfig = field(default_factory=SpecEvalConfig)
    """The speculative-decoding evaluation after training."""
    out: str = "runs/distill"
    """Output directory."""


RECIPES: dict[str, type] = {"sft": SFTRecipe, "rl": RLRecipe, "prefer": PreferRecipe,
                            "distill": DistillRecipe}


# --------------------------------------------------------------------------- loading


def load_recipe(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Read a YAML recipe (optional), apply `key.sub=value` overrides, build `cls`."""
    raw: dict[str, Any] = {}
    where = "recipe"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise ConfigError(f"recipe file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for ov in overrides:
        _check_override_key(cls, ov)
        apply_override(raw, ov)
    return from_dict(cls, raw, where=where)


def _check_override_key(cls: type, override: str) -> None:
    """Reject an override whose dotted key does not exist, naming the override itself."""
    key = override.partition("=")[0].strip()
    tp, prefix = cls, ""
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return  # inside a dict / list value: checked when the recipe is built
        fields = {f.name: f for f in dataclasses.fields(tp)}
        if part not in fields:
            raise ConfigError(f"override {override!r}: unknown key '{prefix}{part}'"
                              f"{_suggest(part, fields, prefix)}")
        tp, prefix = typing.get_type_hints(tp)[part], f"{prefix}{part}."


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set a dotted key in a nested dict: `train.lr=3e-4` (value parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not key=value (e.g. train.lr=3e-4)")
    key, _, text = override.partition("=")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, where: str = "recipe", prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'} should be a mapping, "
                          f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{full}'{_suggest(key, fields, prefix)}")
        kwargs[key] = _coerce(hints[key], value, where, full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def _suggest(key: str, fields: dict, prefix: str) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return f"; valid keys: {', '.join(prefix + k for k in fields)}"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    """Check `value` against annotation `tp` (converting int -> float, list -> tuple)."""
    origin = get_origin(tp)
    bad = ConfigError(f"{where}: '{key}' should be {_type_name(tp)}, got {value!r} "
                      f"({type(value).__name__})")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key + ".")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(arg, value, where, key)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = get_args(tp)
        return [_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_coerce(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = get_args(tp)
        return {_coerce(kt, k, where, key): _coerce(vt, v, where, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-safe data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def save_recipe(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def recipe_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts."""
    keys = sorted(set(old) | set(new))
    changed = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += recipe_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            changed.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return changed


def warn_if_recipe_changed(recipe: Any, saved: Path) -> None:
    """On --resume, say which settings differ from the run being continued."""
    if not saved.is_file():
        return
    changed = recipe_changes(yaml.safe_load(saved.read_text()) or {}, to_dict(recipe))
    if changed:
        logging.getLogger("posttrain").warning(
            "--resume with a recipe that differs from %s: %s", saved, "; ".join(changed))
