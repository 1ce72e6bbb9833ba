"""Data parallelism through torch.distributed (torchrun), kept out of the math.

    torchrun --nproc_per_node 4 -m posttrain.cli sft recipe.yaml --out runs/x

Every rank holds a full copy of the model and takes its share of each global
micro-batch. Losses are divided by the *global* weight of the step (e.g. the assistant
tokens of all ranks together, an all-reduced sum), so summing the ranks' gradients gives
exactly the gradient of one process running the whole batch. That sum is one all-reduce
per step after the last micro-batch, instead of DDP's bucketed all-reduce during
backward: simpler, and correct with the chunked log-prob function, which calls the
backbone directly (a DDP wrapper's forward would be bypassed). Overlapping communication
with backward (DDP / FSDP2) is left for the multi-GPU work.

Without torchrun (WORLD_SIZE unset) everything here is a no-op for a single process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment, once."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def local_device() -> str | None:
    """cuda:LOCAL_RANK under torchrun on a GPU machine, else None (use the recipe's device)."""
    if dist.is_initialized() and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def sum_scalar(x: float, device: torch.device | str = "cpu") -> float:
    """Sum of a Python number over all ranks."""
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def sum_gradients(params: list[torch.nn.Parameter], bucket_numel: int = 32 * 2**20) -> None:
    """Sum every parameter's gradient over all ranks (missing gradients count as zero).

    Gradients are flattened into buckets of about `bucket_numel` elements, one
    all-reduce per bucket: few collectives, bounded extra memory.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        bucket.append(p)
        size += p.numel()
        if size >= bucket_numel:
            _reduce_bucket(bucket)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(bucket: list[torch.nn.Parameter]) -> None:
    flat = torch.cat([p.grad.reshape(-1).float() for p in bucket])
    dist.all_reduce(flat)
    offset = 0
    for p in bucket:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
