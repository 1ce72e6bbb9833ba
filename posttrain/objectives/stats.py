"""Per-token metrics of an objective, reduced over the valid tokens all at once.

Every metric `policy_loss` reports is a mean, a fraction, a max or a min over the valid
tokens of some detached (B, T) quantity. Reducing each one on its own costs four or five
full-size tensor ops (where, sum, count, clamp, divide); with a dozen metrics that was
most of the objective's time (benchmarks/objectives.py). `TokenStats` collects the
quantities while the loss is built and reduces each kind in one go:

    means  stack (K, B, T) -> where(valid, ., 0) -> sum over (B, T) -> / n      (3 ops)
    fracs  the mean of the 0/1 indicator, in the same stack as the means
    max    stack -> where(valid, ., -inf) -> amax;   min likewise

n is the count of valid tokens (clamped to 1, so an empty batch gives 0, never NaN).

With `weight` (the 0/1 float mask), means use a product with it (one matrix-vector
product for all of them) and max / min an additive -finfo.max / +finfo.max at padding,
instead of `where`, which costs about 5x a multiplication on CPU. That is exact only when
every quantity is finite at padding, which `policy_loss` guarantees (it cleans its inputs:
the log-ratio is 0 there, so ratio and weights are 1); without `weight`, `where` is used
and padding is never read.
Broadcastable quantities ((B, 1), a row-level value) are expanded to (B, T) first, so a
row counts once per valid token, as the per-token definition says. Everything stays on
the device: no `.item()`, no host sync.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


class TokenStats:
    """Collects named per-token quantities over `valid` (B, T) bool; `reduce()` -> metrics."""

    def __init__(self, valid: Tensor, dtype: torch.dtype = torch.float32, weight: Tensor | None = None,
                 enabled: bool = True):
        self.valid, self.dtype, self.weight, self.enabled = valid, dtype, weight, enabled
        self._mean: dict[str, Tensor] = {}
        self._frac: dict[str, Tensor] = {}
        self._max: dict[str, tuple[Tensor, Callable | None]] = {}
        self._min: dict[str, tuple[Tensor, Callable | None]] = {}
        self._n: Tensor | None = None

    def __bool__(self) -> bool:
        """False when metrics are off: callers skip building the quantities (`if stats:`)."""
        return self.enabled

    @property
    def n(self) -> Tensor:
        """0-dim count of valid tokens in the compute dtype (computed once)."""
        if self._n is None:
            self._n = (self.weight.sum() if self.weight is not None else self.valid.sum()).to(self.dtype)
        return self._n

    def _full(self, x: Tensor) -> Tensor:
        x = x.detach()
        return x if x.shape == self.valid.shape else x.expand(self.valid.shape)

    def mean(self, name: str, x: Tensor) -> None:
        """Mean of x over valid tokens."""
        self._mean[name] = self._full(x).to(self.dtype)

    def frac(self, name: str, hit: Tensor) -> None:
        """Share of valid tokens where the bool `hit` is True."""
        self._frac[name] = self._full(hit).bool()

    def max(self, name: str, x: Tensor, post: Callable[[Tensor], Tensor] | None = None) -> None:
        """Max of x over valid tokens (then `post` of it, e.g. exp of a max log-ratio)."""
        self._max[name] = (self._full(x).to(self.dtype), post)

    def min(self, name: str, x: Tensor, post: Callable[[Tensor], Tensor] | None = None) -> None:
        self._min[name] = (self._full(x).to(self.dtype), post)

    def reduce(self) -> dict[str, Tensor]:
        """Every collected metric as a detached 0-dim tensor."""
        out: dict[str, Tensor] = {}
        if not self.enabled:
            return out
        valid = self.valid
        if self._mean or self._frac:
            n = self.n.clamp(min=1)
            # a fraction is the mean of a 0/1 indicator (uint8 -> float is the fast cast;
            # summing bools over dims is a slow path on CPU)
            means = {**self._mean, **{k: h.view(torch.uint8).to(self.dtype) for k, h in self._frac.items()}}
            x = torch.stack(list(means.values()))  # (K, B, T)
            if self.weight is not None:
                s = (x.view(x.shape[0], -1) @ self.weight.reshape(-1)) / n  # (K,)
            else:
                zero = torch.zeros((), dtype=self.dtype, device=valid.device)
                s = torch.where(valid, x, zero).sum(dim=(1, 2)) / n
            out.update(zip(means, s.unbind()))
        pad = None
        if self.weight is not None and (self._max or self._min):
            pad = (1 - self.weight) * torch.finfo(self.dtype).max  # (B, T): 0 valid, max at padding
        for table, sign, fill, red in ((self._max, -1, -math.inf, torch.amax), (self._min, 1, math.inf, torch.amin)):
            if not table:
                continue
            ts = [t for t, _ in table.values()]
            x = ts[0][None] if len(ts) == 1 else torch.stack(ts)  # (K, B, T)
            if pad is not None:
                v = red((x + pad) if sign > 0 else (x - pad), dim=(1, 2))  # (K,)
                v = torch.where(self.n > 0, v, torch.full((), fill, dtype=self.dtype, device=valid.device))
            else:
                v = red(torch.where(valid, x, torch.full((), fill, dtype=self.dtype, device=valid.device)),
                        dim=(1, 2))
            for (name, (_, post)), val in zip(table.items(), v.unbind()):
                out[name] = post(val) if post is not None else val
        return out
