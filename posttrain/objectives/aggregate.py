"""Aggregations: a (B, T) per-token loss and its mask -> one scalar.

The aggregation is its own axis (verl's `agg_loss` plays the same role): every objective
has a default, and any objective takes `aggregation=` to override it.

    token-mean            sum_{i,t} l_it / num_tokens                         (DAPO)
    seq-mean-token-mean   sum_i [ sum_t l_it / n_i ] / num_seqs               (GRPO, GSPO, SAPO)
    seq-mean-token-sum    sum_i [ sum_t l_it ] / num_seqs                     (no length normalisation)
    constant              sum_{i,t} l_it / (num_seqs * max_completion_len)    (Dr. GRPO)

with n_i the valid tokens of row i. The normalisers are arguments, so that splitting a
batch into micro-batches (or over processes) and summing the losses gives exactly the
full-batch loss and gradient: pass the *global* count to every piece.

- `num_tokens` (token-mean): the valid tokens of the whole optimizer step; default this
  batch's `mask.sum()`.
- `num_seqs` (seq-mean-*, constant): the sequences of the whole step; default B, this
  batch's rows. A row with no valid token counts as a sequence with loss 0 (pass
  `num_seqs` if such rows are padding rather than data).
- `max_completion_len` (constant, required): the generation cap, a constant of the run.
  It is never taken from the tensor width, which would make the loss depend on padding.

A row with no valid token contributes 0 (its n_i is clamped to 1), and an empty batch gives
loss 0, never NaN. With a bool `valid`, values at padding positions are
never read (`torch.where`, not a multiplication, so NaN or inf there cannot leak in). A 0/1
float `valid` is a weight (x * valid, cheaper on CPU) for callers whose x is finite at
padding, as `policy_loss`'s is (it cleans its inputs first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from posttrain.registry import Registry

Number = float | int | Tensor


@dataclass(frozen=True)
class Aggregation:
    fn: Callable[..., Tensor]
    """(loss (B, T), valid (B, T) bool, **normalisers) -> 0-dim tensor."""
    normalisers: tuple[str, ...]
    """The keyword normalisers it reads; passing any other is an error."""
    formula: str
    """One line, plain text, for the docs."""
    token_weights: Callable[..., Tensor]
    """(weight (B, T) 0/1 float, **normalisers) -> (B, T) constant W such that
    fn(l, weight) == sum_{i,t} l_it W_it for every l finite at padding: each rule is linear
    in l. `policy_loss` folds its other per-token constants (the mismatch weight, the
    entropy mask) into W and takes one `weighted_sum` (fewer autograd nodes than the
    rule's own sums and divisions; the same value up to float rounding)."""


AGGREGATIONS: Registry[Aggregation] = Registry("aggregation")


def masked_sum(x: Tensor, valid: Tensor, dim=None) -> Tensor:
    """Sum of x over valid positions.

    `valid` bool: padding values are never read (`torch.where`). `valid` a 0/1 float
    weight: x * valid, about 5x cheaper on CPU than `where`, for callers that guarantee x
    is finite at padding (`policy_loss` cleans its inputs first); NaN or inf there would
    leak through the product. A row-broadcast x of shape (B, 1) against a (B, T) `valid`
    is summed as x_i * (row i's count): the same sum, in (B,) work."""
    if _per_row(x, valid) and dim in (None, 1, -1):
        z = _row_sums(x, valid, valid.sum(dim=1))
        return z.sum() if dim is None else z
    if valid.dtype == torch.bool:
        z = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    else:
        z = x * valid
    return z.sum() if dim is None else z.sum(dim=dim)


def _per_row(x: Tensor, valid: Tensor) -> bool:
    """x holds one value per row (a sequence-level loss, (B, 1)) against a (B, T) mask."""
    return x.dim() == 2 and x.shape[1] == 1 < valid.shape[1]


def _row_sums(x: Tensor, valid: Tensor, count: Tensor) -> Tensor:
    """(B,) sum_t x_i v_it = x_i * count_i for a per-row x (B, 1), count = valid.sum(1):
    the same sums without the (B, T) broadcast, forward and backward. With a bool `valid`
    an empty row's value is never read."""
    row = x[:, 0]
    if valid.dtype == torch.bool:
        row = torch.where(count > 0, row, torch.zeros((), dtype=x.dtype, device=x.device))
    return row * count.to(x.dtype)


def weighted_sum(x: Tensor, w: Tensor) -> Tensor:
    """sum_{i,t} x_it w_it for a (B, T) constant w; a per-row x (B, 1) takes
    sum_i x_i (sum_t w_it), in (B,) work. x must be finite where w is 0."""
    if _per_row(x, w):
        return x[:, 0] @ w.sum(dim=1)
    if x.shape == w.shape:
        return x.reshape(-1) @ w.reshape(-1)  # one autograd node where (x * w).sum() has two
    return (x * w).sum()


class _ScoreFunctionSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, x_clean: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return x_clean.reshape(-1) @ w.reshape(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (w,) = ctx.saved_tensors
        return grad * w, None, None


def score_function_sum(x: Tensor, x_clean: Tensor, w: Tensor) -> Tensor:
    """sum_{i,t} x_it w_it, its value read from `x_clean` (x with padding set to 0, a
    constant) and its gradient w.r.t. x exactly w: a score-function loss c * logp.

    w (B, T) must be a constant that is 0 wherever x_clean differs from x (at padding),
    so the value is that of the cleaned x and the gradient there is 0 (for a finite
    upstream gradient) without a backward through the clean-up: one autograd node where
    `weighted_sum(clean(x), w)` has two and a full-size op more (benchmarks/objectives.py)."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return weighted_sum(x_clean, w)
    return _ScoreFunctionSum.apply(x, x_clean, w)


def _rows(valid: Tensor, num_seqs: Number | None) -> Number:
    return valid.shape[0] if num_seqs is None else num_seqs


def _token_mean(loss: Tensor, valid: Tensor, *, num_tokens: Number | None = None) -> Tensor:
    denom = valid.sum().clamp(min=1) if num_tokens is None else num_tokens
    return masked_sum(loss, valid) / denom


def _seq_mean_token_mean(loss: Tensor, valid: Tensor, *, num_seqs: Number | None = None) -> Tensor:
    count = valid.sum(dim=1)  # (B,)
    n = count.clamp(min=1)
    sums = _row_sums(loss, valid, count) if _per_row(loss, valid) else masked_sum(loss, valid, dim=1)
    per_seq = sums / n  # (B,)
    return per_seq.sum() / _rows(valid, num_seqs)


def _seq_mean_token_sum(loss: Tensor, valid: Tensor, *, num_seqs: Number | None = None) -> Tensor:
    return masked_sum(loss, valid) / _rows(valid, num_seqs)


def _need_cap(max_completion_len: Number | None) -> None:
    if max_completion_len is None:
        raise ValueError("aggregation 'constant' needs max_completion_len (the generation cap, a "
                         "constant of the run; Dr. GRPO divides by B x max_completion_len)")


def _constant(loss: Tensor, valid: Tensor, *, num_seqs: Number | None = None,
              max_completion_len: Number | None = None) -> Tensor:
    _need_cap(max_completion_len)
    return masked_sum(loss, valid) / (_rows(valid, num_seqs) * max_completion_len)


# the token weights W of each rule (see Aggregation.token_weights): weight (B, T) 0/1 float


def _token_mean_w(weight: Tensor, *, num_tokens: Number | None = None) -> Tensor:
    return weight / (weight.sum().clamp(min=1) if num_tokens is None else num_tokens)


def _seq_mean_token_mean_w(weight: Tensor, *, num_seqs: Number | None = None) -> Tensor:
    n = weight.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    return weight / (n * _rows(weight, num_seqs))


def _seq_mean_token_sum_w(weight: Tensor, *, num_seqs: Number | None = None) -> Tensor:
    return weight / _rows(weight, num_seqs)


def _constant_w(weight: Tensor, *, num_seqs: Number | None = None,
                max_completion_len: Number | None = None) -> Tensor:
    _need_cap(max_completion_len)
    return weight / (_rows(weight, num_seqs) * max_completion_len)


AGGREGATIONS.register("token-mean", Aggregation(
    _token_mean, ("num_tokens",), "sum_{i,t} l_it / num_tokens", _token_mean_w))
AGGREGATIONS.register("seq-mean-token-mean", Aggregation(
    _seq_mean_token_mean, ("num_seqs",), "sum_i (sum_t l_it / n_i) / num_seqs", _seq_mean_token_mean_w))
AGGREGATIONS.register("seq-mean-token-sum", Aggregation(
    _seq_mean_token_sum, ("num_seqs",), "sum_i sum_t l_it / num_seqs", _seq_mean_token_sum_w))
AGGREGATIONS.register("constant", Aggregation(
    _constant, ("num_seqs", "max_completion_len"), "sum_{i,t} l_it / (num_seqs * max_completion_len)",
    _constant_w))


def aggregate(name: str, loss: Tensor, valid: Tensor, **normalisers) -> Tensor:
    """Aggregate with the named rule; `normalisers` must be ones that rule reads."""
    agg = AGGREGATIONS.get(name)
    extra = sorted(set(normalisers) - set(agg.normalisers))
    if extra:
        raise TypeError(f"aggregation {name!r} does not use {', '.join(extra)}; "
                        f"it reads: {', '.join(agg.normalisers)}")
    return agg.fn(loss, valid, **normalisers)
