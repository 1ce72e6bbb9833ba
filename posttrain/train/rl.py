"""RL from verifiable rewards: `posttrain rl RECIPE`.

One RL step, top to bottom in `rl_step` (docs/architecture.md has the picture):

    1. rollouts     P prompts x G completions from the engine, with its per-token log-probs
    2. rewards      K named components -> (N, K) scores (posttrain.rewards, never raises)
    3. dynamic      with rl.dynamic_sampling, groups where every component is constant (no
       sampling    signal for any estimator) are dropped and more prompts drawn, up to
                    rl.max_gen_rounds rounds (DAPO, Yu et al. 2025, Sec. 3.2)
    4. advantages   over the kept groups (grpo, dr_grpo, rloo, gdpo)
    5. pi_old       one no-grad pass under the current weights, only when the batch is used
                    for more than one update (epochs x mini_batches > 1); on-policy, the
                    update's own forward pass, detached, is pi_old (ratio exactly 1)
       reference    only with beta > 0: the base with adapters disabled, else a frozen copy
    6. updates      epochs x mini_batches optimizer steps of the policy objective; each
                    mini-batch runs in micro-batches of train.batch_size sequences whose
                    losses share the mini-batch's normalisers, so accumulation is exact
    7. sync         the rollout copy (if any) takes the new weights
    8. metrics      rewards per component, advantages, objective stats (clip / gate, ratio,
                    entropy, KL), mismatch (pi_old vs the engine), staleness (pi_old vs the
                    policy each mini-batch sees), lengths, time split, tokens/s

Mismatch and staleness are both k3 estimates on the sampled tokens: mismatch/kl estimates
KL(pi_rollout || pi_old) from w = pi_old / pi_rollout; staleness/kl estimates KL(pi_old ||
pi_theta) from r = pi_theta / pi_old, measured by each mini-batch's forward pass before its
update (0 for the first mini-batch of the first epoch).

Under torchrun every rank generates for its own share of the prompts; normalisers (token
and sequence counts) are summed over ranks, so the gradient is that of the global batch.
Reward metrics are the local rank's.
"""

from __future__ import annotations

import copy
import contextlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..advantages import compute_advantages
from ..config import ConfigError, RLRecipe, RewardComponent
from ..data.chat import tokenize_prompt
from ..data.example import Example
from ..data.sources import load_sources
from ..models.load import count_parameters, load_model, load_tokenizer
from ..models.prefix import batch_token_logprobs
from ..objectives import policy_loss
from ..objectives.loss import objective_normalisers, objective_params
from ..rewards import RewardSet
from ..rollout import RolloutWeights, SamplingParams, make_engine
from . import dist
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .loop import (BatchStream, TrainingError, lr_factor, make_optimizer, optimizer_step,
                   resolve_precision, seed_everything, start_run)
from .metrics import MetricsSink, NullSink, Progress
from .rl_batch import build_batch, rows_of
from .rl_diagnostics import StepStats, pack_routes, replay_key, route_metrics, setup_routing

log = logging.getLogger("posttrain")


@dataclass
class Prompt:
    """One prompt of the RL data: its token ids and what the rewards are given."""

    ids: list[int]
    example: dict[str, Any]
    """{"answer": ..., **meta, "id": ...}: the `example` argument of every reward."""


def reward_example(ex: Example) -> dict[str, Any]:
    return {"answer": ex.answer, **ex.meta, "id": ex.id}


def make_prompts(tokenizer, examples: list[Example], what: str, max_length: int) -> list[Prompt]:
    out, dropped = [], 0
    for ex in examples:
        ids = tokenize_prompt(tokenizer, ex.prompt_messages)
        if len(ids) > max_length:
            dropped += 1
            continue
        out.append(Prompt(ids, reward_example(ex)))
    if dropped:
        log.warning("%s: %d of %d prompts are longer than data.max_length=%d and were dropped",
                    what, dropped, len(examples), max_length)
    if not out:
        raise ConfigError(f"{what}: no prompt fits data.max_length={max_length}")
    return out


def reward_set(components: list[RewardComponent]) -> RewardSet:
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise ConfigError(f"rewards: component names must be unique, got {names}")
    try:
        return RewardSet({c.name: {"reward": c.reward, "params": c.params} for c in components},
                         weights=[c.weight for c in components])
    except (KeyError, ValueError) as e:
        raise ConfigError(f"rewards: {e}") from None


# --------------------------------------------------------------------------- the run


@dataclass
class RLContext:
    """Everything `rl_step` reads and mutates; built by `setup`."""

    recipe: RLRecipe
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.nn.Parameter]
    prompts: BatchStream
    rollout: RolloutWeights
    engine: Any
    sampling: SamplingParams
    rewards: RewardSet
    objective_params: dict[str, Any]
    reference: Any = None
    """None, "adapter" (disable the adapter) or a frozen model."""
    device: torch.device = torch.device("cpu")
    amp: Any = field(default_factory=contextlib.nullcontext)
    bad_in_row: int = 0
    routing: Any = None
    """models.routing.MoERouting over the policy (MoE models), else None."""


@dataclass
class RLResult:
    step: int
    history: list[dict]
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)


def _check_objective(recipe: RLRecipe) -> dict[str, Any]:
    """The objective's parameters from the recipe, checked before any model is loaded."""
    rl = recipe.rl
    try:
        known = objective_params(rl.objective)
    except KeyError as e:
        raise ConfigError(f"rl.objective: {e}") from None
    params = dict(rl.objective_params)
    for key in ("num_tokens", "num_seqs", "max_completion_len"):
        if key in params:
            raise ConfigError(f"rl.objective_params.{key}: set by the trainer, not the recipe")
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ConfigError(f"rl.objective_params: {rl.objective} has no parameter {unknown[0]!r}; "
                          f"it takes: {', '.join(k for k in known if not k.startswith(('num_', 'max_c')))}")
    try:  # the estimator and its scale, on a dummy batch, so a bad name fails before loading
        compute_advantages(rl.advantage, torch.zeros(2, len(recipe.rewards)), 2, **_advantage_params(rl))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"rl.advantage / rl.advantage_scale: {e}") from None
    if rl.epochs < 1 or rl.mini_batches < 1 or rl.prompts_per_step < 1:
        raise ConfigError("rl.epochs, rl.mini_batches and rl.prompts_per_step must be >= 1")
    return params


def _advantage_params(rl) -> dict[str, Any]:
    return {} if rl.advantage_scale == "default" else {"scale": rl.advantage_scale}


def setup(recipe: RLRecipe, out: Path, resume: bool) -> tuple[RLContext, int, list[Prompt] | None]:
    tc, dc, rc = recipe.train, recipe.data, recipe.rollout
    params = _check_objective(recipe)
    rewards = reward_set(recipe.rewards)
    reward_set(recipe.rewards + recipe.eval_rewards)  # names checked now, not at the first eval
    seed_everything(tc.seed)
    tokenizer = load_tokenizer(recipe.model)
    train = make_prompts(tokenizer, load_sources(dc.train, seed=dc.seed), "data.train", dc.max_length)
    held = (make_prompts(tokenizer, load_sources(dc.eval, seed=dc.seed, key="data.eval"), "data.eval",
                         dc.max_length) if dc.eval else None)
    model = load_model(recipe.model, recipe.adapter)
    device = next(model.parameters()).device
    trainable, total = count_parameters(model)
    log.info("policy %s: %s trainable of %s parameters", recipe.model.path, f"{trainable:,}", f"{total:,}")
    reference = None
    if recipe.rl.reference == "auto" and params.get("beta", 0.0) > 0:
        reference = "adapter" if recipe.adapter.kind != "none" else copy.deepcopy(model).eval()
        if reference != "adapter":
            for p in reference.parameters():
                p.requires_grad_(False)
    model.train()
    optimizer = make_optimizer(model, tc)
    updates = tc.max_steps * recipe.rl.epochs * recipe.rl.mini_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, updates, tc.min_lr_ratio))
    stream = BatchStream(train, recipe.rl.prompts_per_step, lambda b: b, seed=tc.seed)
    ctx = RLContext(
        recipe=recipe, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
        params=[p for p in model.parameters() if p.requires_grad], prompts=stream,
        rollout=None, engine=None, rewards=rewards, objective_params=params, reference=reference,
        device=device, sampling=SamplingParams(
            temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k, min_p=rc.min_p,
            max_new_tokens=rc.max_new_tokens, stop=tuple(rc.stop)))
    step = 0
    if resume:
        ckpt = latest_checkpoint(out / "checkpoints")
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", out / "checkpoints")
        else:
            state = load_checkpoint(ckpt, model, optimizer, scheduler)
            step, ctx.bad_in_row = state["step"], state["bad_in_row"]
            stream.load_state_dict(state["data"])
            log.info("resumed from %s (step %d)", ckpt, step)
    # the rollout copy is made after a resume has restored the weights it copies
    ctx.rollout = RolloutWeights(model, rc.precision)
    ctx.engine = make_engine(rc, ctx.rollout.model, tokenizer)
    # after every deep copy (reference, rollout): a copied hook would report to the policy's
    ctx.routing = setup_routing(recipe.rl.routing_replay, model, ctx.rollout.model, ctx.engine)
    autocast = resolve_precision(tc.precision, device)
    ctx.amp = (lambda: torch.autocast(device.type, dtype=autocast)) if autocast else contextlib.nullcontext
    return ctx, step, held


def run_rl(recipe: RLRecipe, out_dir: str | Path | None = None, resume: bool = False,
           on_step=None) -> RLResult:
    out = start_run(recipe, out_dir, resume)
    ctx, step, held = setup(recipe, out, resume)
    tc = recipe.train
    eval_set = reward_set(recipe.rewards + recipe.eval_rewards) if held else None
    main = dist.is_main()
    sink = MetricsSink(out, truncate_after=step if resume else 0) if main else NullSink()
    history: list[dict] = []
    result = RLResult(step, history)

    def evaluate() -> dict[str, float]:
        return evaluate_policy(ctx.model, ctx.tokenizer, held, eval_set, recipe.rollout, recipe.rewards)

    def checkpoint() -> None:
        save_checkpoint(out / "checkpoints", step, ctx.model, ctx.optimizer, ctx.scheduler,
                        {"step": step, "bad_in_row": ctx.bad_in_row, "data": ctx.prompts.state_dict()},
                        keep=tc.keep_checkpoints)

    with sink, Progress("rl", tc.max_steps, start=step, enabled=tc.progress and main) as bar:
        if held and step == 0:
            result.eval_before = evaluate()
            record = {"step": 0, **{f"eval/{k}": v for k, v in result.eval_before.items()}}
            sink.write(record)
            history.append(record)
        while step < tc.max_steps:
            record = rl_step(ctx)
            step += 1
            record = {"step": step, **record}
            if held and ((tc.eval_every and step % tc.eval_every == 0) or step == tc.max_steps):
                ev = evaluate()
                record.update({f"eval/{k}": v for k, v in ev.items()})
                if step == tc.max_steps:
                    result.eval_after = ev
            if step % tc.log_every == 0 or step == tc.max_steps or any(k.startswith("eval/") for k in record):
                sink.write(record)
            history.append(record)
            bar.update(step, record.get("loss"), f"reward {record['reward/mean']:.3f}")
            if (tc.save_every and step % tc.save_every == 0) or step == tc.max_steps:
                checkpoint()
            if on_step is not None:
                on_step(step, record)
    result.step = step
    if main:
        final = out / "final"
        ctx.model.save_pretrained(final)
        ctx.tokenizer.save_pretrained(final)
    dist.barrier()
    return result


# --------------------------------------------------------------------------- one step


def rl_step(ctx: RLContext) -> dict[str, float]:
    """One RL step; returns its metrics (see the module docstring for the order)."""
    recipe, rl, rc = ctx.recipe, ctx.recipe.rl, ctx.recipe.rollout
    G, P = rc.group_size, rl.prompts_per_step
    times = defaultdict(float)
    t_step = time.perf_counter()

    # 1-3. rollouts and rewards, dropping groups without signal (dynamic sampling)
    kept: list[tuple[Any, Any, int]] = []  # (rollout, reward batch, group index)
    scores, lengths, truncated, generated = [], [], [], 0
    dropped = zero_std = groups_seen = rounds = 0
    while True:
        prompts: list[Prompt] = ctx.prompts.next()
        t = time.perf_counter()
        ro = ctx.engine.generate([p.ids for p in prompts], ctx.sampling, n=G)
        times["rollout"] += time.perf_counter() - t
        examples = [{**prompts[ro.prompt_index[i]].example, "completion_tokens": len(ro.completion_ids[i]),
                     "max_new_tokens": rc.max_new_tokens, "truncated": ro.truncated[i]}
                    for i in range(len(ro))]
        rb = ctx.rewards.evaluate(ro.texts, examples)
        times["reward"] += rb.seconds
        matrix = rb.matrix()  # (n, K)
        total = torch.tensor(rb.total())
        scores.append(rb)
        lengths += [len(c) for c in ro.completion_ids]
        truncated += ro.truncated
        generated += sum(len(c) for c in ro.completion_ids)
        for g in range(len(prompts)):
            rows = slice(g * G, (g + 1) * G)
            groups_seen += 1
            zero_std += bool((total[rows] == total[rows][0]).all())
            if rl.dynamic_sampling and bool((matrix[rows] == matrix[rows][0]).all()):
                dropped += 1
                continue
            kept.append((ro, rb, g))
        rounds += 1
        if not rl.dynamic_sampling or len(kept) >= P or rounds >= rl.max_gen_rounds:
            break
    kept = kept[:P]

    # 4. advantages over the kept groups
    prompt_ids, completion_ids, engine_logp, trunc_rows, rows_scores, route_rows = [], [], [], [], [], []
    for ro, rb, g in kept:
        for i in range(g * G, (g + 1) * G):
            route_rows.append(ro.routes[i] if ro.routes is not None else None)
            prompt_ids.append(ro.prompt_ids[i])
            completion_ids.append(ro.completion_ids[i])
            engine_logp.append(ro.logprobs[i])
            trunc_rows.append(ro.truncated[i])
            rows_scores.append(rb.scores[i])
    weights = ctx.rewards.weights
    metrics = _reward_metrics(scores, ctx.rewards.names, weights)
    metrics.update({
        "frac_zero_std_groups": zero_std / max(groups_seen, 1),
        "dynamic/dropped_groups": float(dropped), "dynamic/rounds": float(rounds),
        "dynamic/kept_groups": float(len(kept)),
        "completion_len/mean": sum(lengths) / max(len(lengths), 1),
        "completion_len/max": float(max(lengths, default=0)),
        "truncated_frac": sum(truncated) / max(len(truncated), 1),
    })
    if not kept:
        log.warning("rl: every group had identical rewards after %d generation rounds; no update "
                    "this step (raise rl.max_gen_rounds or make the task less saturated)", rounds)
        # every rank still joins the collective calls of an (empty) update
        for _ in range(rl.epochs * rl.mini_batches):
            optimizer_step(ctx.params, ctx.optimizer, ctx.scheduler, recipe.train.max_grad_norm, ctx.device)
        metrics.update(_times(times, t_step, generated))
        return metrics
    rewards = torch.tensor(rows_scores, dtype=torch.float32)  # (N, K)
    adv = compute_advantages(rl.advantage, rewards, G, weights=weights, **_advantage_params(rl))
    train_rows = [not (rl.mask_truncated and tr) for tr in trunc_rows]
    batch = build_batch(prompt_ids, completion_ids, engine_logp, adv, train_rows, ctx.engine.pad_id)
    routes = pack_routes(route_rows, batch["input_ids"].shape[1], ctx.routing) if ctx.routing else None
    if routes is not None:
        batch["routes"] = routes  # (N, T, L, k) the engine's
    metrics.update({"advantage/mean": float(adv.mean()), "advantage/std": float(adv.std()) if len(adv) > 1 else 0.0,
                    "advantage/zero_frac": float((adv == 0).float().mean())})

    # 5. pi_old and the reference
    t = time.perf_counter()
    n_updates = rl.epochs * rl.mini_batches
    mode = rl.routing_replay if ctx.routing is not None else "none"
    old_logp = (_score(ctx, batch, ctx.model, replay="routes" if mode == "r3" else None,
                       capture="old_routes") if n_updates > 1 else None)
    ref_logp = _score(ctx, batch, ctx.reference) if ctx.reference is not None else None
    natural = batch.get("old_routes") if mode != "r3" else None
    if mode == "r3" and "routes" in batch:  # r3 replays everywhere: one natural pass to measure
        _score(ctx, batch, ctx.model, capture="probe_routes")
        natural = batch["probe_routes"]
    times["old_logp"] += time.perf_counter() - t

    # 6. updates
    t = time.perf_counter()
    stats = StepStats()
    metrics.update(route_metrics(batch, natural, stats))
    update_metrics = _update(ctx, batch, old_logp, ref_logp, stats,
                             replay_key(mode, old_logp is not None), natural_in_update=natural is None)
    times["train"] += time.perf_counter() - t
    metrics.update(update_metrics)

    # 7. the rollout copy follows the new weights
    ctx.rollout.sync()
    metrics.update(_times(times, t_step, generated))
    return metrics


def _update(ctx: RLContext, batch: dict, old_logp, ref_logp, stats: StepStats,
            replay: str | None = None, natural_in_update: bool = False) -> dict[str, float]:
    """epochs x mini_batches optimizer steps; the mean of each metric over micro-batches,
    plus the step-level diagnostics of `stats` (rl_diagnostics). `replay`: the batch key of
    the MoE routes the update passes replay (None: route naturally)."""
    recipe, rl, tc = ctx.recipe, ctx.recipe.rl, ctx.recipe.train
    N = batch["input_ids"].shape[0]
    needs = objective_normalisers(rl.objective, ctx.objective_params.get("aggregation"))
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    losses, grad_norms, stale = [], [], {}
    for epoch in range(rl.epochs):
        order = torch.randperm(N) if rl.mini_batches > 1 or rl.epochs > 1 else torch.arange(N)
        for i_mb, mb in enumerate(torch.tensor_split(order, rl.mini_batches)):
            norms = {"num_tokens": dist.sum_scalar(float(batch["mask"][mb].sum()), ctx.device),
                     "num_seqs": dist.sum_scalar(float(len(mb)), ctx.device),
                     "max_completion_len": recipe.rollout.max_new_tokens}
            norms = {k: v for k, v in norms.items() if k in needs}
            mb_loss, finite, mb_stale = 0.0, True, []
            for micro in torch.split(mb, tc.batch_size):
                b = rows_of(batch, micro, ctx.device)
                out, logp, old = _micro_step(ctx, b, old_logp, ref_logp, micro, norms, stats, replay,
                                             update=epoch * rl.mini_batches + i_mb, natural=natural_in_update)
                if out is None:
                    finite = False
                    break
                mb_loss += float(out.loss.detach())
                valid = b["mask"]
                if valid.any():
                    d = (logp.detach() - old)[valid]  # log r = log pi_theta - log pi_old
                    mb_stale.append((float((d.exp() - 1 - d).sum()), int(valid.sum())))
                for k, v in out.metrics.items():
                    sums[k] += float(v)
                    counts[k] += 1
            grad_norm = optimizer_step(ctx.params, ctx.optimizer, ctx.scheduler, tc.max_grad_norm,
                                       ctx.device, finite)
            if grad_norm is None:
                ctx.bad_in_row += 1
                log.warning("rl: non-finite loss or gradient, update skipped (%d in a row)", ctx.bad_in_row)
                if ctx.bad_in_row >= tc.max_bad_steps:
                    raise TrainingError(f"{ctx.bad_in_row} non-finite updates in a row; stopping. "
                                        "Lower train.lr or check the rewards.")
                continue
            ctx.bad_in_row = 0
            losses.append(mb_loss)
            grad_norms.append(grad_norm)
            tok = sum(n for _, n in mb_stale)
            stale[epoch * rl.mini_batches + i_mb] = sum(s for s, _ in mb_stale) / tok if tok else 0.0
    out = {k: sums[k] / counts[k] for k in sums}
    out.update(stats.metrics())  # exact step-level mismatch (replaces the micro-batch means)
    # the names the issue and the docs use
    out["loss"] = sum(losses) / len(losses) if losses else float("nan")
    out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
    out["grad_norm_max"] = max(grad_norms, default=float("nan"))
    out["entropy"] = out.get("entropy/mean", float("nan"))
    out["mismatch/kl"] = out.get("mismatch/k3", float("nan"))
    out["staleness/kl"] = sum(stale.values()) / len(stale) if stale else 0.0
    out["staleness/kl_max"] = max(stale.values(), default=0.0)
    if len(stale) > 1:
        out.update({f"staleness/kl_mb{i}": v for i, v in stale.items()})
    out["updates"] = float(len(losses))
    if "kl/ref" in out:
        out["kl"] = out["kl/ref"]
    out["lr"] = ctx.scheduler.get_last_lr()[0]
    return out


def _micro_step(ctx: RLContext, b: dict, old_logp, ref_logp, micro, norms, stats: StepStats,
                replay: str | None, update: int, natural: bool):
    """Forward and backward of one micro-batch of update number `update` (under the MoE
    routing session, which must stay open through backward); None for a non-finite loss.
    Feeds `stats`."""
    recipe, tc = ctx.recipe, ctx.recipe.train
    session = (ctx.routing.session(replay=b.get(replay) if replay else None) if ctx.routing is not None
               else contextlib.nullcontext())
    with session:
        with ctx.amp():
            logp, entropy = batch_token_logprobs(
                ctx.model, b, share_prompts=recipe.rl.share_prompts, chunk_size=tc.logprob_chunk,
                temperature=_temperature(recipe.rollout), with_entropy=True)
        used = ctx.routing.take().view(*b["input_ids"].shape, -1, ctx.routing.top_k) if ctx.routing else None
        old = old_logp[micro][:, :logp.shape[1]].to(ctx.device) if old_logp is not None else logp.detach()
        ref = ref_logp[micro][:, :logp.shape[1]].to(ctx.device) if ref_logp is not None else None
        out = policy_loss(recipe.rl.objective, logp, old, b["advantages"], b["mask"],
                          rollout_logp=b["rollout_logp"], ref_logp=ref, entropy=entropy,
                          **ctx.objective_params, **norms)
        if not torch.isfinite(out.loss):
            return None, logp, old
        out.loss.backward()
    valid = b["mask"]
    first_epoch = update < ctx.recipe.rl.mini_batches
    stats.mismatch(logp, b["rollout_logp"], valid, prefix="mismatch/update_", update=update)
    if first_epoch:  # every row once: step-level pi_old-vs-engine mismatch and entropy
        stats.mismatch(old, b["rollout_logp"], valid)
        stats.entropy(entropy, valid)
    if used is not None and "routes" in b:
        v = valid.cpu()
        stats.divergence("routing/divergence_replayed", used, b["routes"].cpu(), v)
        stats.divergence("routing/divergence_vs_old", used, b["old_routes"].cpu() if "old_routes" in b else None, v)
        if natural and first_epoch:
            stats.divergence("routing/divergence", used, b["routes"].cpu(), v)
    return out, logp, old


def _temperature(rc) -> float:
    """The temperature the trainer's log-probs use: the sampler's (1 for greedy rollouts,
    whose engine log-probs are temperature-1 ones too)."""
    return rc.temperature if rc.temperature > 0 else 1.0


@torch.no_grad()
def _score(ctx: RLContext, batch: dict, model, replay: str | None = None,
           capture: str | None = None) -> torch.Tensor:
    """(N, T) log-probs of the batch's labels under `model` ("adapter": the policy with its
    adapter disabled), in micro-batches, on CPU. MoE policy only: `replay` names the batch's
    routes to replay, `capture` the batch key that receives the (N, T, L, k) routes used."""
    tc = ctx.recipe.train
    N, T = batch["input_ids"].shape
    out = torch.zeros((N, T), dtype=torch.float32)
    use = ctx.model if model == "adapter" else model
    switch = ctx.model.disable_adapter() if model == "adapter" else contextlib.nullcontext()
    was_training = use.training
    use.eval()  # no dropout: pi_old is the policy's distribution, not a noisy sample of it
    try:
        with switch:
            routing = ctx.routing if (replay or capture) and model is ctx.model else None
            if capture and routing is not None:
                batch[capture] = routing.empty(N, T)
            for idx in torch.split(torch.arange(N), tc.batch_size):
                b = rows_of(batch, idx, ctx.device)
                session = (routing.session(replay=b[replay] if replay else None) if routing is not None
                           else contextlib.nullcontext())
                with session, ctx.amp():
                    logp, _ = batch_token_logprobs(
                        use, b, share_prompts=ctx.recipe.rl.share_prompts, chunk_size=tc.logprob_chunk,
                        temperature=_temperature(ctx.recipe.rollout), with_entropy=False)
                    if capture and routing is not None:
                        t = b["input_ids"].shape[1]
                        batch[capture][idx, :t] = routing.take().view(len(idx), t, -1, routing.top_k)
                out[idx, :logp.shape[1]] = logp.float().cpu()
    finally:
        use.train(was_training)
    return out


def _reward_metrics(batches, names: list[str], weights: list[float]) -> dict[str, float]:
    """reward/mean, reward/std, reward/<component>/mean and failure counts over every
    completion generated this step (all rounds)."""
    rows = [row for rb in batches for row in rb.scores]
    n = max(len(rows), 1)
    tot = [sum(w * s for w, s in zip(weights, row)) for row in rows]
    mean = sum(tot) / n
    out = {"reward/mean": mean, "reward/std": math.sqrt(sum((x - mean) ** 2 for x in tot) / n)}
    for k, name in enumerate(names):
        out[f"reward/{name}/mean"] = sum(row[k] for row in rows) / n
    for rb in batches:
        for (name, reason), c in rb.failures.items():
            key = f"reward_fail/{name}/{reason}"
            out[key] = out.get(key, 0.0) + c
    return out


def _times(times: dict, t_step: float, generated: int) -> dict[str, float]:
    elapsed = time.perf_counter() - t_step
    out = {f"time/{k}": times.get(k, 0.0) for k in ("rollout", "reward", "old_logp", "train")}
    out["time/step"] = elapsed
    out["tokens_per_s"] = generated / elapsed if elapsed > 0 else 0.0
    return out


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_policy(model, tokenizer, prompts: list[Prompt], rewards: RewardSet, rc,
                    train_components: list[RewardComponent], batch_size: int | None = None) -> dict[str, float]:
    """Greedy completions of the held-out prompts, scored: the mean of every component,
    `reward` = the weighted total of the training components, lengths."""
    engine = make_engine(rc, model, tokenizer, batch_size)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=rc.max_new_tokens, stop=tuple(rc.stop))
    ro = engine.generate([p.ids for p in prompts], greedy, n=1)
    examples = [{**prompts[i].example, "completion_tokens": len(ro.completion_ids[i]),
                 "max_new_tokens": rc.max_new_tokens, "truncated": ro.truncated[i]} for i in range(len(ro))]
    rb = rewards.evaluate(ro.texts, examples)
    n = max(len(ro), 1)
    out = {name: sum(row[k] for row in rb.scores) / n for k, name in enumerate(rb.names)}
    train = {c.name: c.weight for c in train_components}
    out["reward"] = sum(train[name] * out[name] for name in rb.names if name in train)
    out["completion_len"] = sum(len(c) for c in ro.completion_ids) / n
    out["truncated_frac"] = sum(ro.truncated) / n
    return out
