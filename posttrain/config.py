"""Recipes: small typed dataclasses, one per concern, loaded from YAML with dotted overrides.

    posttrain sft recipes/tiny-sft.yaml train.lr=3e-4 model.path=runs/tiny

Every field carries a one-line doc (the string under it). Unknown keys and wrong types
fail with a `ConfigError` naming the key and, for a misspelling, the closest valid key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from .recipe_io import (  # noqa: F401  (re-exported: the public loading API lives on posttrain.config)
    ConfigError,
    apply_override,
    from_dict,
    load_recipe,
    recipe_changes,
    save_recipe,
    to_dict,
    warn_if_recipe_changed,
)

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
