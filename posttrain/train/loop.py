"""The training loop every stage shares.

A stage supplies a `BatchStream` (its data, with a resumable position) and a loss
function; the loop owns everything else: AdamW, warm-up + cosine schedule, gradient
accumulation, clipping, precision, NaN handling, evaluation, metrics, progress and atomic
checkpoints with exact resume.

Gradient accumulation is exact: before the micro-batches of a step are run, the stage's
`weight_fn` counts what the loss is normalised by (e.g. loss tokens) over the whole step,
and every micro-batch loss is divided by that total. The accumulated gradient then equals
the gradient of one big batch, whatever the micro-batch split.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import TrainConfig
from . import dist
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .metrics import MetricsSink, NullSink, Progress

log = logging.getLogger("posttrain")

Batch = dict[str, Any]
LossFn = Callable[[torch.nn.Module, Batch, float], tuple[torch.Tensor, dict[str, float]]]


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite losses in a row)."""


class BatchStream:
    """Endless, resumable stream of micro-batches over a list of items.

    Each epoch is a permutation drawn from (seed, epoch), so the order after a resume is
    the order an uninterrupted run would have seen. `collate` turns a list of items into a
    batch dict of tensors.
    """

    def __init__(self, items: list, batch_size: int, collate: Callable[[list], Batch],
                 seed: int = 0, shuffle: bool = True, shard: tuple[int, int] | None = None):
        if not items:
            raise ValueError("no training examples: check the data sources")
        self.items, self.batch_size, self.collate = items, batch_size, collate
        self.seed, self.shuffle = seed, shuffle
        # (rank, world): every rank walks the same global order and keeps its slice of
        # each global micro-batch of batch_size x world items
        self.rank, self.world = shard if shard is not None else dist.world()
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.items)))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.items), generator=g).tolist()

    def next(self) -> Batch:
        chosen = []
        need = self.batch_size * self.world
        while len(chosen) < need:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            take = self._order[self.index:self.index + need - len(chosen)]
            chosen += [self.items[i] for i in take]
            self.index += len(take)
        return self.collate(chosen[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation()


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay from 1 to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and norm weights (1-D) get no weight decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    low = sorted({str(p.dtype) for _, p in named if p.dtype in (torch.bfloat16, torch.float16)})
    if low:
        log.warning("training %s weights directly: AdamW updates smaller than the weights' "
                    "precision are lost. For full fine-tuning prefer model.dtype=float32 with "
                    "train.precision=bf16 (fp32 master weights, bf16 compute)", "/".join(low))
    decay = [p for n, p in named if p.ndim >= 2]
    no_decay = [p for n, p in named if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (the CPU default: bf16 matmuls are slow there)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        if device.type == "cpu":
            log.warning("bf16 on CPU is much slower than fp32 on most CPUs")
        return torch.bfloat16
    return None


def optimizer_step(params: list[torch.nn.Parameter], optimizer, scheduler,
                   max_grad_norm: float | None, device: torch.device, finite: bool = True) -> float | None:
    """Sum gradients over ranks, clip, step the optimizer and schedule; return the gradient
    norm before clipping. When the loss (`finite=False` on any rank) or the gradient is
    not finite, the gradients are dropped and None is returned: every rank skips together."""
    finite = dist.sum_scalar(0.0 if finite else 1.0, device) == 0
    grad_norm = None
    if finite:
        dist.sum_gradients(params)
        limit = max_grad_norm if max_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        finite = math.isfinite(grad_norm)
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@dataclass
class LoopResult:
    step: int
    last_loss: float | None
    history: list[dict] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)


def start_run(recipe, out_dir: str | Path | None, resume: bool) -> Path:
    """What every stage does first: make the output directory, join torch.distributed when
    launched by torchrun (one device per process), and write the resolved recipe (on
    --resume, first warn about settings that differ from the run being continued)."""
    from ..config import save_recipe, warn_if_recipe_changed
    out = Path(out_dir or recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    dist.init_from_env()
    if dist.is_main():
        if resume:
            warn_if_recipe_changed(recipe, out / "recipe.yaml")
        save_recipe(recipe, out / "recipe.yaml")
    if dist.local_device():
        recipe.model.device = dist.local_device()
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train_loop(
    model: torch.nn.Module,
    stream: BatchStream,
    loss_fn: LossFn,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    weight_fn: Callable[[Batch], float] = lambda b: 1.0,
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
    description: str = "train",
) -> LoopResult:
    """Run `cfg.max_steps` optimizer steps of `loss_fn` over `stream`, from the latest
    checkpoint in `out_dir` when `resume` is set.

    `loss_fn(model, batch, denom)` returns (loss, metrics) where loss is already divided by
    `denom`, the summed `weight_fn` of every micro-batch of the step. `on_step(step,
    record)` is called after each step's metrics are written (tests use it to interrupt a run).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    autocast_dtype = resolve_precision(cfg.precision, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters")
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))

    step, bad_in_row = 0, 0
    ckpt_root = out / "checkpoints"
    if resume:
        ckpt = latest_checkpoint(ckpt_root)
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", ckpt_root)
        else:
            state = load_checkpoint(ckpt, model, optimizer, scheduler)
            step, bad_in_row = state["step"], state["bad_in_row"]
            stream.load_state_dict(state["data"])
            log.info("resumed from %s (step %d)", ckpt, step)
    main = dist.is_main()
    world = dist.world()[1]
    sink = MetricsSink(out, truncate_after=step if resume else 0) if main else NullSink()

    def checkpoint() -> None:
        save_checkpoint(ckpt_root, step, model, optimizer, scheduler,
                        {"step": step, "bad_in_row": bad_in_row, "data": stream.state_dict()},
                        keep=cfg.keep_checkpoints)

    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
           else contextlib.nullcontext())
    model.train()
    history: list[dict] = []
    last_loss = None
    eval_metrics: dict[str, float] = {}
    if eval_fn is not None and step == 0:  # the baseline every later evaluation is read against
        baseline = {"step": 0, "loss": None, "lr": scheduler.get_last_lr()[0],
                    **{f"eval/{k}": v for k, v in _evaluate(model, eval_fn).items()}}
        sink.write(baseline)
        history.append(baseline)
    with sink, Progress(description, cfg.max_steps, start=step,
                        enabled=cfg.progress and main) as bar:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            micro = [stream.next() for _ in range(cfg.grad_accum)]
            denom = dist.sum_scalar(sum(weight_fn(b) for b in micro), device)  # all ranks
            total_loss, metrics, finite = 0.0, {}, True
            for batch in micro:
                batch = _to_device(batch, device)
                with amp:
                    loss, m = loss_fn(model, batch, max(denom, 1e-12))
                if not torch.isfinite(loss):
                    finite = False
                    break
                loss.backward()
                total_loss += loss.item()
                for k, v in m.items():  # counts (num_*) add up over micro-batches; the rest average
                    share = 1.0 if k.startswith("num_") else 1.0 / len(micro)
                    metrics[k] = metrics.get(k, 0.0) + float(v) * share
            grad_norm = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm, device, finite)
            if grad_norm is None:
                bad_in_row += 1
                log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                            step + 1, bad_in_row)
                if bad_in_row >= cfg.max_bad_steps:
                    raise TrainingError(
                        f"{bad_in_row} non-finite losses in a row at step {step + 1}; stopping. "
                        "Lower train.lr, check the data, or use precision fp32.")
                continue
            bad_in_row = 0
            step += 1
            total_loss = dist.sum_scalar(total_loss, device)  # each rank held its share
            metrics = {k: dist.sum_scalar(v, device) / (1 if k.startswith("num_") else world)
                       for k, v in metrics.items()}
            last_loss = total_loss
            elapsed = time.perf_counter() - t0
            record = {"step": step, "loss": total_loss, "lr": scheduler.get_last_lr()[0],
                      "grad_norm": grad_norm, "step_time": elapsed, **metrics}
            if "num_tokens" in metrics:
                record["tokens_per_s"] = metrics["num_tokens"] / elapsed
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 \
                    and step < cfg.max_steps:
                record.update({f"eval/{k}": v for k, v in _evaluate(model, eval_fn).items()})
            if step == cfg.max_steps and eval_fn is not None:
                eval_metrics = _evaluate(model, eval_fn)
                record.update({f"eval/{k}": v for k, v in eval_metrics.items()})
            if step % cfg.log_every == 0 or step == cfg.max_steps or any(
                    k.startswith("eval/") for k in record):
                sink.write(record)
            history.append(record)
            bar.update(step, total_loss)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                checkpoint()
            if on_step is not None:
                on_step(step, record)
    return LoopResult(step=step, last_loss=last_loss, history=history, eval_metrics=eval_metrics)


def _evaluate(model, eval_fn) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            return eval_fn(model)
    finally:
        model.train()


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
