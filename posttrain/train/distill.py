"""Draft distillation for speculative decoding, on the shared loop.

    posttrain distill recipes/tiny-dflash.yaml --out runs/dflash

1. the target: `model.path`, or (with `target_sft`) that model fine-tuned by an SFT recipe,
   built once and cached under $POSTTRAIN_CACHE/targets/<hash of the resolved recipe>;
2. data (posttrain.spec.data): held-out prompt files from `data.eval`, training prompts
   de-duplicated and hash-subtracted against them, the target's greedy responses;
3. one or more stages (`stages`, e.g. kd -> eal -> survival_eal), each a `train_loop` over
   random blocks with a loss of posttrain.objectives.distill, warm-starting from the previous
   stage's draft (or `distill.init_from`); each writes OUT/.../draft/;
4. the speculative-decoding evaluation (posttrain.eval.spec) of the final draft on every
   held-out prompt file: OUT/spec_results.json.

Per batch the frozen target runs once without gradient over the whole sequences: its
hidden states of the chosen layers are the draft's context, its logits at positions
a .. a+B-2 the teacher of block positions 1 .. B-1. Fine at tiny scale; at Qwen3-4B scale
the (N, T, V) logits should be cut to the anchored positions (logits_to_keep / a gather on
the final hidden states) or cached as top-k (docs/speculative.md, future work).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ..config import ConfigError, DistillRecipe, DistillStage, find_recipe, load_recipe, to_dict
from ..data.sources import load_source, load_sources
from ..models.load import load_model, load_tokenizer
from ..models.tiny import cache_dir
from ..objectives.distill import DISTILL_LOSSES, distill_loss
from ..spec.block import (BlockDraftConfig, BlockDrafter, attach, block_attention_mask,
                          evenly_spaced_layers, read_config)
from ..spec.data import (collate_blocks, count_blocks, generate_responses, prompt_hash,
                         prompt_text, select_prompts, write_prompt_file)
from . import dist
from .loop import BatchStream, LoopResult, seed_everything, start_run, train_loop

log = logging.getLogger("posttrain")


def target_key(recipe: DistillRecipe):
    """(cache key, SFT recipe) of the target_sft stage: a hash of the resolved SFT recipe in
    which a built-in model stands as its name and build fingerprint (`builtin:tiny@tiny-v1-
    <sources hash>`), not its directory, so the key does not change with $POSTTRAIN_CACHE."""
    from ..config import SFTRecipe
    from ..models.tiny import resolve_builtin
    sft = load_recipe(SFTRecipe, find_recipe(recipe.target_sft, "target_sft: recipe"),
                      [f"model.path={recipe.model.path}", *recipe.target_sft_overrides])
    sft.train.progress = recipe.train.progress
    resolved = to_dict(sft)
    path = resolve_builtin(sft.model.path)  # builds the built-in model if needed
    resolved["model"]["path"] = f"{sft.model.path}@{Path(path).name}" if path != sft.model.path else path
    resolved["train"].pop("progress", None)
    return hashlib.sha256(yaml.safe_dump(resolved, sort_keys=True).encode()).hexdigest()[:12], sft


def ensure_target(recipe: DistillRecipe) -> str:
    """The target's model path: model.path, or the cached result of the target_sft recipe."""
    if not recipe.target_sft:
        return recipe.model.path
    from .sft import run_sft
    key, sft = target_key(recipe)
    final = cache_dir() / "targets" / key
    if (final / "final").is_dir():
        log.info("target: reusing %s", final)
        return str(final / "final")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
    log.info("target: fine-tuning %s with %s (cached as %s)", recipe.model.path, recipe.target_sft, final)
    try:
        run_sft(sft, tmp)
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process published it first
        if not (final / "final").is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(final / "final")


# --------------------------------------------------------------------------- draft


def draft_config(recipe: DistillRecipe, target) -> BlockDraftConfig:
    tc, dc = target.config, recipe.draft
    layers = tuple(dc.target_layers) or evenly_spaced_layers(tc.num_hidden_layers, dc.num_target_layers)
    heads = dc.num_heads or tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    rope = (getattr(tc, "rope_parameters", None) or {}).get("rope_theta") or getattr(tc, "rope_theta", 1e4)
    return BlockDraftConfig(
        hidden_size=tc.hidden_size, num_layers=dc.num_layers, num_heads=heads,
        num_kv_heads=tc.num_key_value_heads if dc.num_heads is None else heads,
        head_dim=head_dim if dc.num_heads is None else tc.hidden_size // heads,
        intermediate_size=dc.intermediate_size or tc.intermediate_size,
        block_size=dc.block_size, target_layers=layers, rope_theta=float(rope),
        rms_eps=float(getattr(tc, "rms_norm_eps", 1e-6)))


class BlockDistillLoss:
    """loss_fn of the shared loop: frozen target forward, draft forward, a distill loss."""

    def __init__(self, target, loss: str, params: dict):
        self.target, self.loss, self.params = target, loss, params

    def __call__(self, drafter: BlockDrafter, batch: dict, denom: float):
        cfg = drafter.cfg
        ids, att, anchors = batch["input_ids"], batch["attention_mask"], batch["anchors"]
        n, T = ids.shape
        with torch.no_grad():
            out = self.target(input_ids=ids, attention_mask=att, output_hidden_states=True,
                              use_cache=False)
            feats = torch.cat([out.hidden_states[i] for i in cfg.target_layers], dim=-1)  # (N, T, mH)
            idx = (anchors[..., None] + torch.arange(cfg.block_size - 1, device=ids.device)).clamp(max=T - 1)
            V = out.logits.shape[-1]
            teacher = out.logits.gather(1, idx.view(n, -1, 1).expand(-1, -1, V))  # (N, J*(B-1), V)
            teacher = teacher.view(n, -1, cfg.block_size - 1, V).float()
        mask = block_attention_mask(anchors, att.bool(), cfg.block_size)
        pos = torch.arange(T, device=ids.device).expand(n, T)
        logits = drafter(feats, pos, batch["first_tokens"], anchors, mask)  # (N, J, B-1, V)
        bmask = batch["block_mask"]
        keep = bmask[..., 0]  # blocks with at least one target position
        res = distill_loss(self.loss, logits[keep], teacher[keep], bmask[keep],
                           num_blocks=denom, **self.params)
        metrics = {k: float(v) for k, v in res.metrics.items() if k not in ("loss", "blocks")}
        metrics["num_blocks"] = float(keep.sum())
        return res.loss, metrics


def ar_draft(target, num_layers: int):
    """The baseline draft: the target's architecture cut to `num_layers` layers, freshly
    initialised, with the target's input embedding (and so, tied, its LM head) copied and
    frozen."""
    from transformers import AutoModelForCausalLM
    cfg = target.config.__class__.from_dict(target.config.to_dict())
    cfg.num_hidden_layers = num_layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:num_layers]
    draft = AutoModelForCausalLM.from_config(cfg, dtype=target.dtype).to(target.device)
    emb = draft.get_input_embeddings().weight
    with torch.no_grad():
        emb.copy_(target.get_input_embeddings().weight)
        if not cfg.tie_word_embeddings:
            draft.get_output_embeddings().weight.copy_(target.get_output_embeddings().weight)
    for p in (emb, draft.get_output_embeddings().weight):
        p.requires_grad_(False)
    draft.generation_config = target.generation_config
    return draft


class ARDistillLoss:
    """Token-level KD of the AR draft: every response position is a block of K = 1, so
    `kd` is the forward KL to the target's next-token distribution there."""

    def __init__(self, target, params: dict):
        self.target, self.params = target, params

    def __call__(self, draft, batch: dict, denom: float):
        ids, att, m = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        with torch.no_grad():
            teacher = self.target(input_ids=ids, attention_mask=att, use_cache=False).logits[m]  # (P, V)
        logits = draft(input_ids=ids, attention_mask=att, use_cache=False).logits[m]
        res = distill_loss("kd", logits[:, None], teacher[:, None].float(),
                           torch.ones_like(m[m])[:, None], num_blocks=denom, **self.params)
        metrics = {k: float(v) for k, v in res.metrics.items() if k in ("kl", "top1")}
        metrics["num_tokens"] = float(m.sum())
        return res.loss, metrics


def _stages(recipe: DistillRecipe) -> list[DistillStage]:
    if recipe.stages:
        return recipe.stages
    d = recipe.distill
    return [DistillStage(name=d.loss, loss=d.loss, params=d.params)]


def _check_losses(recipe: DistillRecipe) -> None:
    from ..objectives.distill import distill_params
    for i, st in enumerate(_stages(recipe)):
        where = f"stages[{i}]" if recipe.stages else "distill"
        if st.loss not in DISTILL_LOSSES:
            raise ConfigError(f"{where}.loss: unknown distill loss {st.loss!r}; known: "
                              f"{', '.join(DISTILL_LOSSES.names())}")
        known = distill_params(st.loss)
        bad = sorted(set(st.params) - set(known) - {"num_blocks"})
        if bad:
            raise ConfigError(f"{where}.params: {st.loss} has no parameter(s) {', '.join(bad)}; "
                              f"it takes: {', '.join(k for k in known if k != 'num_blocks')}")


# --------------------------------------------------------------------------- run


@dataclasses.dataclass
class DistillResult:
    stages: list[tuple[str, LoopResult]]
    draft_dir: Path
    spec: dict | None
    target_path: str
    seconds: dict


def prepare_data(recipe: DistillRecipe, target, tokenizer, out: Path):
    """Held-out prompt files, training prompts and the target's responses."""
    dc = recipe.data
    prompt_files, exclude = [], set()
    for i, src in enumerate(dc.eval):
        exs = load_source(src, seed=dc.seed, key=f"data.eval[{i}]")
        stem = Path(src.path).stem if src.kind != "builtin" else src.path
        prompt_files.append(write_prompt_file(exs, out / "prompts" / f"{stem}.jsonl"))
        exclude |= {prompt_hash(prompt_text(tokenizer, e.prompt_messages)) for e in exs}
    prompts = select_prompts(tokenizer, load_sources(dc.train, seed=dc.seed), exclude)
    if not prompts:
        raise ConfigError("data.train: no training prompts left after de-duplication")
    seqs = generate_responses(target, tokenizer, prompts, dc.max_new_tokens, dc.gen_batch_size,
                              out / "responses.jsonl")
    return prompt_files, seqs


def run_distill(recipe: DistillRecipe, out_dir: str | Path | None = None, resume: bool = False,
                on_step=None) -> DistillResult:
    _check_losses(recipe)
    out = start_run(recipe, out_dir, resume)
    tc = recipe.train
    seed_everything(tc.seed)
    seconds = {}
    t0 = time.perf_counter()
    target_path = ensure_target(recipe)
    seconds["target"] = time.perf_counter() - t0
    mcfg = dataclasses.replace(recipe.model, path=target_path)
    tokenizer = load_tokenizer(mcfg)
    target = load_model(mcfg).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    prompt_files, seqs = prepare_data(recipe, target, tokenizer, out)
    seconds["data"] = time.perf_counter() - t0

    if recipe.draft.kind == "ar":
        return _run_ar(recipe, target, tokenizer, prompt_files, seqs, out, seconds, target_path, resume)
    cfg = draft_config(recipe, target)
    drafter = attach(cfg, target)
    init = recipe.distill.init_from
    if init:
        if read_config(init).target_layers != cfg.target_layers:
            raise ConfigError(f"distill.init_from: {init} was trained on target layers "
                              f"{read_config(init).target_layers}, this recipe uses {cfg.target_layers}")
        drafter.load_weights(init)
        log.info("draft: warm start from %s", init)
    log.info("draft: %d layers, %s parameters (target embeddings and LM head shared), layers %s, B=%d",
             cfg.num_layers, f"{sum(p.numel() for p in drafter.parameters()):,}", cfg.target_layers,
             cfg.block_size)
    pad = tokenizer.pad_token_id
    stages, results = _stages(recipe), []
    t0 = time.perf_counter()
    draft_dir = out / "draft"
    for i, st in enumerate(stages):
        stage_out = out / "stages" / f"{i}-{st.name}" if recipe.stages else out
        stc = dataclasses.replace(tc, max_steps=st.max_steps or tc.max_steps, lr=st.lr or tc.lr,
                                  seed=tc.seed + i)
        # stage i > 0 starts from the weights stage i - 1 left in `drafter` (a fresh optimizer
        # and schedule, as a warm start from a checkpoint would)
        stream = BatchStream(seqs, stc.batch_size, lambda b: collate_blocks(
            b, pad, cfg.block_size, recipe.data.anchors_per_seq, recipe.data.max_length), seed=stc.seed)
        res = train_loop(drafter, stream, BlockDistillLoss(target, st.loss, st.params), stc, stage_out,
                         weight_fn=count_blocks, resume=resume, on_step=on_step,
                         description=f"distill {st.name}")
        sdir = stage_out / "draft" if recipe.stages else draft_dir
        if dist.is_main():
            drafter.save(sdir)
        results.append((st.name, res, sdir))
    if recipe.stages and dist.is_main():
        shutil.copytree(results[-1][2], draft_dir, dirs_exist_ok=True)
    seconds["train"] = time.perf_counter() - t0
    spec = _spec_eval(recipe, target, tokenizer, drafter.eval().new_cache(), prompt_files, out,
                      seconds, cfg.block_size)
    return DistillResult([(n, r) for n, r, _ in results], draft_dir, spec, target_path, seconds)


def _spec_eval(recipe, target, tokenizer, drafter, prompt_files, out: Path, seconds: dict,
               block_size: int) -> dict | None:
    spec = None
    se = recipe.spec_eval
    if se.enabled and prompt_files and dist.is_main():
        from ..eval.spec import run_spec_eval, write_spec_results
        t0 = time.perf_counter()
        spec = run_spec_eval(target, tokenizer, drafter, prompt_files, se.block_size or block_size,
                             se.max_new_tokens, progress=recipe.train.progress)
        seconds["spec_eval"] = time.perf_counter() - t0
        write_spec_results(spec, out)
    (out / "timing.json").write_text(json.dumps({k: round(v, 1) for k, v in seconds.items()}, indent=2) + "\n")
    dist.barrier()
    return spec


def _run_ar(recipe, target, tokenizer, prompt_files, seqs, out: Path, seconds: dict,
            target_path: str, resume: bool) -> DistillResult:
    """The AR baseline: one kd stage (the acceptance losses are defined on blocks)."""
    from ..spec.ar import ARDrafter
    stages = _stages(recipe)
    if len(stages) != 1 or stages[0].loss != "kd":
        raise ConfigError("draft.kind=ar trains with one kd stage (distill.loss: kd, no stages)")
    draft = ar_draft(target, recipe.draft.num_layers)
    pad, dc = tokenizer.pad_token_id, recipe.data
    stream = BatchStream(seqs, recipe.train.batch_size, lambda b: collate_blocks(
        b, pad, 2, 1, dc.max_length), seed=recipe.train.seed)
    t0 = time.perf_counter()
    res = train_loop(draft, stream, ARDistillLoss(target, stages[0].params), recipe.train, out,
                     weight_fn=lambda b: float(b["response_mask"].sum()), resume=resume,
                     description="distill ar")
    seconds["train"] = time.perf_counter() - t0
    draft_dir = out / "draft"
    if dist.is_main():
        draft.save_pretrained(draft_dir)
        tokenizer.save_pretrained(draft_dir)
    spec = _spec_eval(recipe, target, tokenizer, ARDrafter(draft.eval()), prompt_files, out, seconds,
                      recipe.draft.block_size)
    return DistillResult([("kd", res)], draft_dir, spec, target_path, seconds)

