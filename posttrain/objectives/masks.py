"""The top-rho high-entropy token mask (Wang et al. 2025, "Beyond the 80/20 Rule:
High-Entropy Minority Tokens Drive Effective RLVR", arXiv:2506.01939).

Only the "forking" tokens -- those whose entropy is at or above the batch's (1 - rho)
quantile over valid tokens -- get policy gradient; the paper keeps rho = 0.2. Here the
quantile is the nearest-rank one: with N valid tokens, k = ceil(rho * N), the threshold is
the k-th largest entropy, and every valid token with entropy >= threshold is kept (exactly
k tokens when the entropies are distinct; ties at the threshold are all kept).

Deviation to know: the masked tokens still count in the aggregation's normalisers (the
valid-token count, the per-row n_i), so a kept token's gradient is exactly what it would be
with rho = 1; the masked ones contribute 0. The KL and entropy-bonus terms are not masked.

"The batch" for micro-batching: the trainer computes `entropy_threshold(entropy, mask, rho)`
once over the whole rollout batch and passes it as `entropy_threshold=` to every
micro-batch, so the kept set does not depend on the split. Entropy is detached here.
All on device: no `.item()`, no boolean indexing (which would sync).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def entropy_threshold(entropy: Tensor, mask: Tensor, rho: float) -> Tensor:
    """0-dim tensor: the k-th largest entropy over valid tokens, k = ceil(rho * N).

    +inf when there is no valid token (nothing is kept, nothing was there to keep)."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"top_entropy_rho must be in (0, 1], got {rho}")
    valid = mask.bool()
    h = torch.where(valid, entropy.detach(), torch.full_like(entropy, -math.inf)).reshape(-1)
    n = valid.sum()
    # ceil(rho * N) in float64 with a hair of slack: 0.7 * 10 is 7.000000000000001 in floats
    k = torch.ceil(n.to(torch.float64) * rho - 1e-9).clamp(min=1).to(torch.long)
    top = torch.sort(h, descending=True).values  # valid entropies first
    thr = top.gather(0, (k - 1).clamp(max=h.numel() - 1).reshape(1)).reshape(())
    return torch.where(n > 0, thr, torch.full_like(thr, math.inf))


def entropy_mask(entropy: Tensor, mask: Tensor, *, rho: float = 1.0,
                 threshold: Tensor | float | None = None) -> Tensor:
    """(B, T) bool: valid tokens whose entropy is >= the threshold (given or from `rho`)."""
    valid = mask.bool()
    thr = entropy_threshold(entropy, valid, rho) if threshold is None else threshold
    return valid & (entropy.detach() >= thr)
