"""Atomic checkpoints with everything an exact resume needs.

    OUT/checkpoints/step-000120/
        trainable.safetensors   trainable parameters (all weights, or only the adapter's)
        optimizer.pt            AdamW state
        scheduler.pt            LR scheduler state
        rng-R.pt                python / torch CPU / CUDA RNG states of rank R
        state.json              step, data position, bad-step counter

A checkpoint is written into a hidden temporary directory and renamed into place, so a
run killed mid-write leaves either the previous checkpoint or the new one, never half of
one. Only `step-*` directories count as checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import dist

_NAME = re.compile(r"^step-(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name; a parameter shared under two names is stored once."""
    seen: set[int] = set()
    state = {}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            state[name] = p.detach().contiguous().cpu()
    return state


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, state: dict,
                    keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; under torch.distributed every rank must call it.

    Rank 0 writes the (identical on every rank) weights and optimizer state; every rank
    adds its own RNG state, so dropout streams resume exactly on each of them.
    """
    rank, world = dist.world()
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "world_size": world}, indent=2))
    dist.barrier()
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / f"rng-{rank}.pt")
    dist.barrier()
    if rank == 0:
        for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path`; return its state dict."""
    weights = load_file(str(path / "trainable.safetensors"))
    expected = trainable_state(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (was the adapter or model changed since it was saved?)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    rank, world = dist.world()
    if state.get("world_size", 1) != world:
        raise ValueError(f"checkpoint {path} was written by {state.get('world_size', 1)} "
                         f"processes, this run has {world}: the data order and RNG streams "
                         "would not continue exactly; resume with the same number of processes")
    rng = torch.load(path / f"rng-{rank}.pt", weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
