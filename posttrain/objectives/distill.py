"""Draft-distillation losses for speculative decoding (DFlash-style block drafters).

    out = distill_loss("survival_eal", draft_logits, target_logits, mask, num_blocks=step_blocks)
    out.loss.backward()        # 0-dim, differentiable w.r.t. draft_logits only
    out.metrics                # dict of detached 0-dim tensors

Shapes. `draft_logits`, `target_logits` (N, K, V): N blocks, K predicted positions per block.
For block size B the drafter sees [last accepted token, mask x (B-1)] and its positions
k = 1..K, K = B - 1, predict the next K tokens; the target's logits at the same K tokens are
the teacher. `mask` (N, K) bool or 0/1: 1 where position k is a real target token, 0 past the
end of the response. A 0 also ends the block's chain: acceptance cannot continue through it.
target_logits are constants (detached); everything is computed in fp32 (or float64 if given).

Notation (per block; p_k = softmax(target_k), q_k = softmax(draft_k), m_k the mask):

    t_k     = argmax_v p_k(v)                     the target's greedy token
    a_k     = q_k(t_k)                            acceptance probability of position k
    c_k     = prod_{j<=k} m_j                     1 while the chain is alive (mask prefix)
    P_k     = c_k prod_{j<=k} a_j                 P(the first k drafted tokens are accepted)
    E[N]    = sum_k P_k                           expected accepted length, in [0, K]
    s_k     = m_k P_{k-1}  (P_0 = 1)              P(position k is reached), "survival"
    KL_k    = sum_v p_k(v) (log p_k(v) - log q_k(v))        forward KL, per position
    KL_k^T  = the same between softmax(target_k / T) and softmax(draft_k / T)

a_k is the probability that position k is accepted under greedy (T = 0) verification when
the drafter samples its token from q_k; with greedy drafting the event is
argmax q_k == t_k (the `top1` metric). The product form is exact on the chain that matters:
the drafter predicts all K positions in one pass from the anchor (they do not condition on
each other), and the chain only continues while the drafted tokens equal t_k, i.e. the
target's greedy continuation, which is the training response when the labels were generated
by the target at T = 0 (as in the reference recipe). Acceptance length is reported as
tau = E[N] + 1: one verify cycle also yields the target's own next token (reference 004:
"pooled acceptance tau = E[n]+1"). Here it is the teacher-forced mean over training blocks,
not the pooled figure of a decoding run, and its ceiling is K + 1 = B; reference 004 writes
"ceiling = B+1 = 17" for B16, which would count B drafted tokens, not the B - 1 that a block
[anchor, mask x (B-1)] drafts: we follow the block layout.

Losses: l_b per block b, loss = sum_b l_b / num_blocks (num_blocks default N; pass the block
count of the whole step so micro-batches add up to the full batch exactly). sg = stop-gradient.

    kd            l = sum_k m_k w_k [(1 - alpha) T^2 KL_k^T + alpha (-log a_k)],
                  w_k = exp(-(k - 1) / gamma)
    eal           l = -eal_coef E[N] + kl_coef sum_k m_k KL_k
    survival_eal  l = -eal_coef E[N] + kl_coef sum_k sg(s_k) KL_k
    eal_exact     l = -sum_k sg(W_k) log a_k,  W_k = sum_{m>=k} P_m = dE[N] / d log a_k

Sources and decisions (reference 004 = /work/shared/references/004_720892a9c88bbca6.txt,
a DFlash draft training journey for Qwen3-4B; DFlash = Chen, Liang, Liu 2026, "DFlash: Block
Diffusion for Flash Speculative Decoding", arXiv 2602.06036):

- kd: reference 004, M1: "soft-label KD (pure forward-KL over full target vocab, alpha=0),
  decay-gamma=7" at B16. The position decay w_k = exp(-(k-1)/gamma) is DFlash's loss weight;
  its recommended gamma is 7 for B = 16, 5 for B = 10, 4 for B = 8 (the paper's setting, also
  SpecForge's DFlash training script comment), about B/2: see `decay_gamma`. gamma = inf
  gives uniform weights. alpha mixes in the hard-label CE on t_k, which is DFlash's own loss
  when the labels are the target's greedy tokens; alpha = 0 is the recipe. The reference
  uses no temperature: T defaults to 1; T != 1 is Hinton-style (both sides softened, times
  T^2 so gradients keep their scale), and the CE term stays at T = 1.
- eal: reference 004, M1.5: "EAL (Expected-Acceptance-Length; uniform KL position weight)",
  "directly maximize Expected Acceptance Length (reward-shaped); uniform KL weighting across
  block positions", "implemented as a negative, reward-maximizing objective (a sign flip on
  the acceptance reward)". So the loss is -E[N] directly (not -log E[N]) plus the forward KL
  with uniform position weights. The reference gives no relative weight: eal_coef = kl_coef
  = 1 per block (both terms are sums over positions, so they have the same scale in K).
  Why keep the KL: the gradient of E[N] on position k is W_k <= (K - k + 1) P_k, tiny for
  deep positions while the early ones are poor, and its optimum is q_k collapsed onto t_k.
  In the free-logits test (tests/objectives/test_distill.py) pure -E[N] (eal_exact) reaches
  E[N] ~ K at KL ~ 1.8 nats a position; eal keeps KL ~ 0.15 and still beats kd's E[N]
  (which stops at the target's own sum_k prod_j p_j(t_j)). eal_coef=1, kl_coef=0 is pure -E[N].
- survival_eal: reference 004, M1.6: "EAL + KL position weights scaled by each position's
  survival probability (chance the block is still accepted at that depth)". Same -E[N]
  term; the KL weights are s_k, detached (a weight, not a path for gradient). eal_coef = 0
  gives the pure survival-weighted KL.
- eal_exact: not in the reference; the surrogate whose gradient is exactly -grad E[N]
  (d loss / d draft_logits == d(-E[N]) / d draft_logits): since P_m = exp(sum_{j<=m} log a_j),
  dE[N]/d log a_k = sum_{m>=k} P_m = W_k. Its value is the W-weighted CE, not -E[N]
  (the metric `accept/expected_len` carries E[N]). It is a weighted hard-label CE whose
  weights are the exact credit of each position.
- The mask: kd weights each valid position (m_k), as a per-position loss has no chain;
  the acceptance losses use c_k, so a hole ends the chain and the KL of eal covers every
  valid position (uniform weights) while survival_eal's s_k is 0 after a hole.

Memory. V is large (151,936 for Qwen3) and N K in the thousands (512 blocks x 15 positions
a sequence in the reference recipe), so one (N K, V) fp32 tensor is GBs (7,680 x 151,936 x
4 B = 4.7 GB). `block_terms` is a custom autograd function that walks the N K positions in
chunks of `chunk_positions` (default 1024): per chunk it computes log q and log p once each
(fp32, in two (C, V) buffers, reused in place for log p - log q and p), reduces them to
KL_k (a batched dot product), log a_k (a gather) and the two argmaxes, and drops them.
It saves only its inputs (no copies) for backward, which recomputes q and p per chunk and
writes d loss / d draft_logits in place. So the extra memory is about two (C, V) fp32
buffers (up to four with T != 1), independent of N K; the only (N, K, V)
tensor created is the gradient, in the draft's dtype. (A non-contiguous input is copied
once by the reshape to (N K, V).) Padding positions are computed and discarded rather than
compacted away, which would need a host sync. benchmarks/distill_memory.py measures it
(docs/benchmarks.md): at V = 151,936 the memory beyond the gradient stays at ~2 (C, V)
buffers as N K grows, where plain autograd holds ~3 (N K, V) tensors. Fusing the drafter's
LM head into this function (as models/logprobs.py does) would also drop the (N K, V) logits
and their gradient; that needs the hidden states instead of logits (not done).

Metrics (detached, 0-dim): `loss`; the weighted parts `loss/kl` (kd, eal, survival_eal),
`loss/ce` (kd with alpha > 0), `loss/eal` (eal, survival_eal: -eal_coef E[N]), each
sum_b / num_blocks, adding up to `loss`; `kl` (mean KL_k at T = 1 per valid position);
`top1` (fraction of valid positions with argmax q_k == t_k); `accept/a_mean` (mean a_k over valid positions);
`accept/a_first`, `accept/a_last` (mean a_k at k = 1 and k = K over blocks valid there);
`accept/expected_len` (mean E[N] per block), `accept/tau_expected` (= expected_len + 1);
`accept/greedy_len` (mean accepted length per block with greedy drafting: leading positions
with argmax q_k == t_k, teacher-forced); `blocks`, `positions/valid` (counts in this batch).

Errors: an unknown parameter is a `DistillParamError` (a ValueError, and a TypeError like
`policy_loss`'s) naming the closest known one and listing all; bad values and shapes are
ValueErrors. No `.item()` and no host sync in the math: checks are on Python values and
shapes only.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from posttrain.registry import Registry

from .loss import LossOut

Metrics = dict[str, Tensor]

DISTILL_MODIFIERS: Mapping[str, tuple[Any, str]] = {
    "num_blocks": (None, "loss = sum of per-block losses / num_blocks (blocks in the whole step; "
                         "default N)"),
    "chunk_positions": (1024, "positions per chunk of the vocabulary-sized work; peak extra "
                              "memory ~ 2 x chunk_positions x V x 4 bytes"),
}

DFLASH_GAMMA = {8: 4.0, 10: 5.0, 16: 7.0}
"""DFlash's recommended decay gamma per block size B (the paper's setting)."""


class DistillParamError(ValueError, TypeError):
    """An unknown keyword parameter: a ValueError, and a TypeError like policy_loss's."""


def decay_gamma(block_size: int) -> float:
    """kd's gamma for block size B: DFlash's value where it gives one (B = 8, 10, 16 -> 4, 5,
    7), else B / 2, the ratio of its B = 8 and B = 10 settings (an extrapolation: at B = 16 the
    paper uses 7, not 8)."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (an anchor and at least one drafted token), "
                         f"got {block_size}")
    return DFLASH_GAMMA.get(block_size, block_size / 2)


@dataclass(frozen=True)
class BlockTerms:
    """The per-position quantities every distill loss is built from; all (N, K), 0 where the
    position is not valid. `kl`, `log_accept`, `kl_soft` carry gradient to the draft logits."""

    kl: Tensor
    """KL(p_k || q_k) at T = 1."""
    log_accept: Tensor
    """log a_k = log q_k(argmax p_k)."""
    valid: Tensor
    """m_k as bool."""
    alive: Tensor
    """c_k = prod_{j<=k} m_j, float, constant."""
    top1: Tensor
    """argmax q_k == argmax p_k, bool (and valid)."""
    kl_soft: Tensor | None = None
    """T^2 KL(p_k^T || q_k^T) when a temperature T != 1 was asked for, else None."""

    def reach(self) -> Tensor:
        """P_k = c_k prod_{j<=k} a_j, differentiable; (N, K). Log space: a cumulative sum of
        log a_k (0 at invalid positions) then exp, so no product underflows to a NaN gradient."""
        return self.alive * torch.exp(torch.cumsum(self.log_accept, dim=-1))

    def survival(self) -> Tensor:
        """s_k = m_k P_{k-1} (P_0 = 1), detached; (N, K)."""
        p = self.reach().detach()
        prev = torch.cat([torch.ones_like(p[:, :1]), p[:, :-1]], dim=-1)
        return self.valid.to(p.dtype) * prev


CHUNK_POSITIONS = DISTILL_MODIFIERS["chunk_positions"][0]
"""Positions (rows of the flattened (N K, V) logits) per chunk in `block_terms`."""


def _row_terms(z: Tensor, y: Tensor, dt: torch.dtype, temperature: float):
    """One chunk's forward: z, y (C, V) draft and target logits (any float dtype) ->
    KL (C,), log a (C,), T^2 KL^T (C,) or None, target argmax (C,), draft argmax (C,).

    Two (C, V) buffers of dtype dt: `a` holds log q, then log p - log q; `b` holds log p,
    then p; KL = <p, log p - log q> is a batched dot product (no product buffer)."""
    tgt, dmax = y.argmax(dim=-1), z.argmax(dim=-1)  # argmax is shift-invariant: no softmax
    out = []
    for tau in (1.0,) if temperature == 1.0 else (1.0, temperature):
        zt, yt = (z, y) if tau == 1.0 else (z / tau, y / tau)
        a = F.log_softmax(zt, dim=-1, dtype=dt)  # (C, V) log q
        if tau == 1.0:
            log_accept = a.gather(-1, tgt[:, None]).squeeze(-1)
        b = F.log_softmax(yt, dim=-1, dtype=dt)  # (C, V) log p
        a.neg_().add_(b)  # log p - log q
        b.exp_()  # p
        out.append(tau * tau * torch.bmm(b[:, None, :], a[:, :, None]).view(-1))
    return out[0], log_accept, (out[1] if len(out) > 1 else None), tgt, dmax


def _row_grad(z: Tensor, y: Tensor, tgt: Tensor, g_kl: Tensor, g_la: Tensor,
              g_klt: Tensor | None, dt: torch.dtype, temperature: float) -> Tensor:
    """One chunk's d loss / d z (C, V) in dt, from the upstream grads (C,) of KL, log a and
    T^2 KL^T:  dKL/dz = q - p,  d log a/dz = onehot(t) - q,  d(T^2 KL^T)/dz = T (q^T - p^T)."""
    g = torch.softmax(z, dim=-1, dtype=dt)  # (C, V) q
    p = torch.softmax(y, dim=-1, dtype=dt)  # (C, V) p
    g.mul_((g_kl - g_la)[:, None]).sub_(p.mul_(g_kl[:, None]))
    del p
    g.scatter_add_(-1, tgt[:, None], g_la[:, None])
    if g_klt is not None:
        T = temperature
        q_t = torch.softmax(z / T, dim=-1, dtype=dt)
        p_t = torch.softmax(y / T, dim=-1, dtype=dt)
        g.add_(q_t.sub_(p_t).mul_((T * g_klt)[:, None]))
    return g


class _ChunkedBlockTerms(torch.autograd.Function):
    """(draft (R, V), target (R, V), valid (R,)) -> KL, log a, T^2 KL^T (R,) with gradient to
    draft; target argmax, draft argmax (R,) without. R = N K rows, walked in chunks: nothing of
    size (R, V) is built but the gradient itself. Saved for backward: the two inputs (no
    copies) and the target argmax. Autocast is off inside: every op runs in fp32 (or fp64).
    Rows with valid = 0 give 0 and get a 0 gradient, even when their logits are NaN or inf
    (padding is never read)."""

    @staticmethod
    def forward(ctx, draft, target, valid, temperature, chunk):
        R, dt = draft.shape[0], torch.promote_types(draft.dtype, torch.float32)
        kl, la = draft.new_zeros(R, dtype=dt), draft.new_zeros(R, dtype=dt)
        klt = draft.new_zeros(R, dtype=dt) if temperature != 1.0 else None
        tgt = torch.zeros(R, dtype=torch.long, device=draft.device)
        dmax = torch.zeros(R, dtype=torch.long, device=draft.device)
        with torch.autocast(draft.device.type, enabled=False):  # bmm in bf16 would cost ~1e-3
            for s in range(0, R, chunk):
                e = min(s + chunk, R)
                k, a, kt, t, d = _row_terms(draft[s:e], target[s:e], dt, temperature)
                v = valid[s:e]
                kl[s:e], la[s:e] = torch.where(v, k, 0.0), torch.where(v, a, 0.0)
                if klt is not None:
                    klt[s:e] = torch.where(v, kt, 0.0)
                tgt[s:e], dmax[s:e] = t, d
        ctx.save_for_backward(draft, target, valid, tgt)
        ctx.temperature, ctx.chunk, ctx.dt = temperature, chunk, dt
        ctx.mark_non_differentiable(tgt, dmax)
        return kl, la, klt, tgt, dmax

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_kl, g_la, g_klt, _tgt, _dmax):
        draft, target, valid, tgt = ctx.saved_tensors
        grad = torch.empty_like(draft)  # (R, V) in the draft's dtype
        dt, R = ctx.dt, draft.shape[0]
        with torch.autocast(draft.device.type, enabled=False):
            for s in range(0, R, ctx.chunk):
                e = min(s + ctx.chunk, R)
                g = _row_grad(draft[s:e], target[s:e], tgt[s:e], g_kl[s:e].to(dt),
                              g_la[s:e].to(dt), None if g_klt is None else g_klt[s:e].to(dt),
                              dt, ctx.temperature)
                grad[s:e] = g.masked_fill_(~valid[s:e, None], 0.0)
        return grad, None, None, None, None


def block_terms(draft_logits: Tensor, target_logits: Tensor, mask: Tensor,
                temperature: float = 1.0, chunk: int = CHUNK_POSITIONS) -> BlockTerms:
    """Compute `BlockTerms` from (N, K, V) logits and the (N, K) mask, `chunk` positions at a
    time (see the module docstring for the memory budget)."""
    N, K, V = draft_logits.shape
    dt = torch.promote_types(draft_logits.dtype, torch.float32)
    valid = mask.bool()  # (N, K)
    kl, la, klt, tgt, dmax = _ChunkedBlockTerms.apply(
        draft_logits.reshape(N * K, V), target_logits.detach().reshape(N * K, V),
        valid.reshape(N * K), temperature, chunk)
    top1 = (dmax == tgt).view(N, K) & valid
    alive = torch.cumprod(valid.to(dt), dim=-1)
    kl_soft = None if klt is None else klt.view(N, K)
    return BlockTerms(kl.view(N, K), la.view(N, K), valid, alive, top1, kl_soft)


# ---------------------------------------------------------------- per-block losses


def position_decay(K: int, gamma: float, dtype=torch.float32, device=None) -> Tensor:
    """DFlash's w_k = exp(-(k - 1) / gamma), k = 1..K; (K,)."""
    k = torch.arange(K, dtype=dtype, device=device)
    return torch.exp(-k / gamma)


def kd_block_loss(t: BlockTerms, *, gamma: float, alpha: float, temperature: float):
    """Forward KL to the target's full distribution with DFlash's position decay (reference
    004, M1; DFlash Sec. 3 loss weights), plus alpha x the hard-label CE on t_k. (N,)"""
    w = position_decay(t.kl.shape[-1], gamma, t.kl.dtype, t.kl.device)  # (K,)
    kl = t.kl_soft if t.kl_soft is not None else t.kl
    kl_b = ((1 - alpha) * w * kl).sum(-1)  # (N,) invalid positions are 0 already
    if alpha == 0:  # the recipe's pure KD: no CE part to report
        return kl_b, {"loss/kl": kl_b}
    ce_b = (alpha * w * -t.log_accept).sum(-1)
    return kl_b + ce_b, {"loss/kl": kl_b, "loss/ce": ce_b}


def eal_block_loss(t: BlockTerms, *, eal_coef: float, kl_coef: float):
    """-E[N] plus uniform-weight forward KL (reference 004, M1.5). (N,)"""
    eal_b = -eal_coef * t.reach().sum(-1)
    kl_b = kl_coef * t.kl.sum(-1)
    return eal_b + kl_b, {"loss/eal": eal_b, "loss/kl": kl_b}


def survival_eal_block_loss(t: BlockTerms, *, eal_coef: float, kl_coef: float):
    """-E[N] plus forward KL weighted by the detached survival s_k (reference 004, M1.6). (N,)"""
    eal_b = -eal_coef * t.reach().sum(-1)
    kl_b = kl_coef * (t.survival() * t.kl).sum(-1)
    return eal_b + kl_b, {"loss/eal": eal_b, "loss/kl": kl_b}


def eal_exact_block_loss(t: BlockTerms):
    """-sum_k sg(W_k) log a_k with W_k = sum_{m>=k} P_m (suffix sums of the prefix products),
    whose gradient is exactly -grad E[N]. (N,)"""
    reach = t.reach().detach()
    w = reach.flip(-1).cumsum(-1).flip(-1)  # (N, K) W_k; 0 once the chain has ended
    return -(w * t.log_accept).sum(-1), {}


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class DistillObjective:
    """One registered draft-distillation loss."""

    fn: Callable[..., tuple[Tensor, Metrics]]
    """(BlockTerms, **params) -> (per-block loss (N,), per-block parts {name: (N,)})."""
    params: Mapping[str, Any]
    """Every keyword parameter it takes, with its default."""
    formula: str
    """One line, plain text, for the docs."""
    paper: str
    check: Callable[[Mapping[str, Any]], None] = lambda p: None
    """Raises ValueError on a bad parameter value (pure Python, no tensors)."""
    note: str = ""

    def defaults(self) -> dict[str, Any]:
        return dict(self.params)


DISTILL_LOSSES: Registry[DistillObjective] = Registry("distill loss")


def _check_kd(p):
    for key in ("gamma", "temperature"):
        if not (isinstance(p[key], (int, float)) and p[key] > 0):
            raise ValueError(f"{key} must be a number > 0, got {p[key]!r}")
    if not math.isfinite(p["temperature"]):
        raise ValueError(f"temperature must be finite, got {p['temperature']!r}")
    if not 0 <= p["alpha"] <= 1:
        raise ValueError(f"alpha (the hard-label CE share) must be in [0, 1], got {p['alpha']!r}")


def _check_coefs(p):
    for key in ("eal_coef", "kl_coef"):
        if not p[key] >= 0:
            raise ValueError(f"{key} must be >= 0, got {p[key]!r}")
    if p["eal_coef"] == 0 and p["kl_coef"] == 0:
        raise ValueError("eal_coef and kl_coef are both 0: the loss would be identically 0")


_REF = "reference 004 (DFlash draft for Qwen3-4B)"
DISTILL_LOSSES.register("kd", DistillObjective(
    kd_block_loss, {"gamma": 7.0, "alpha": 0.0, "temperature": 1.0},
    "sum_k m_k exp(-(k-1)/gamma) [(1 - alpha) T^2 KL_k^T + alpha (-log a_k)]",
    f"{_REF}, M1; Chen et al. 2026, DFlash, arXiv 2602.06036 (position decay)",
    check=_check_kd,
    note="gamma 7 is DFlash's value for B = 16 (5 for B = 10, 4 for B = 8; `decay_gamma(B)`); "
         "alpha = 0 is the recipe's pure forward KL, alpha = 1 DFlash's decayed CE on the "
         "target's greedy tokens; the recipe uses no temperature (T = 1)."))
DISTILL_LOSSES.register("eal", DistillObjective(
    eal_block_loss, {"eal_coef": 1.0, "kl_coef": 1.0},
    "-eal_coef E[N] + kl_coef sum_k m_k KL_k",
    f"{_REF}, M1.5", check=_check_coefs,
    note="-E[N] directly (the recipe's sign flip on the acceptance reward) plus uniform-weight "
         "KL; the recipe gives no coefficients, 1 and 1 are ours."))
DISTILL_LOSSES.register("survival_eal", DistillObjective(
    survival_eal_block_loss, {"eal_coef": 1.0, "kl_coef": 1.0},
    "-eal_coef E[N] + kl_coef sum_k sg(s_k) KL_k",
    f"{_REF}, M1.6", check=_check_coefs,
    note="the recipe's 'EAL + survival-weighted KL'; eal_coef = 0 is the pure survival-weighted KL."))
DISTILL_LOSSES.register("eal_exact", DistillObjective(
    eal_exact_block_loss, {},
    "-sum_k sg(W_k) log a_k,  W_k = sum_{m>=k} P_m  (gradient = -grad E[N])",
    "ours: the exact gradient of E[N] (reference 004's objective) as a weighted CE",
    note="the value is the weighted CE, not -E[N]; see accept/expected_len."))


# ---------------------------------------------------------------- the loss


def distill_params(name: str) -> dict[str, Any]:
    """Every parameter `distill_loss(name, ...)` takes, with its default."""
    return {**DISTILL_LOSSES.get(name).defaults(), **{k: d for k, (d, _) in DISTILL_MODIFIERS.items()}}


def _reject_unknown(name: str, params: Mapping[str, Any]) -> None:
    allowed = distill_params(name)
    for key in params:
        if key in allowed:
            continue
        owners = [n for n, o in DISTILL_LOSSES.items() if key in o.params]
        if owners:
            hint = f"it belongs to {', '.join(owners)}"
        else:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "no close match"
        raise DistillParamError(f"distill loss {name!r} has no parameter {key!r} ({hint}); "
                                f"it takes: {', '.join(allowed)}")


def _check_inputs(draft: Tensor, target: Tensor, mask: Tensor) -> None:
    if draft.dim() != 3:
        raise ValueError(f"draft_logits must be (N, K, V) (blocks, positions, vocab), "
                         f"got shape {tuple(draft.shape)}")
    if target.shape != draft.shape:
        raise ValueError(f"target_logits must have draft_logits' shape {tuple(draft.shape)}, "
                         f"got {tuple(target.shape)}")
    if mask.shape != draft.shape[:2]:
        raise ValueError(f"mask must be (N, K) = {tuple(draft.shape[:2])}, got {tuple(mask.shape)}")
    if not (draft.is_floating_point() and target.is_floating_point()):
        raise ValueError(f"logits must be floating point, got {draft.dtype} and {target.dtype}")
    if draft.shape[1] < 1 or draft.shape[2] < 1:
        raise ValueError(f"need K >= 1 positions and V >= 1 tokens, got shape {tuple(draft.shape)}")


def distill_loss(name: str, draft_logits: Tensor, target_logits: Tensor, mask: Tensor,
                 num_blocks: float | Tensor | None = None, **params) -> LossOut:
    """The named draft-distillation loss, sum over blocks / num_blocks, and its metrics; see
    the module docstring. draft_logits, target_logits (N, K, V); mask (N, K)."""
    obj = DISTILL_LOSSES.get(name)
    _reject_unknown(name, params)
    chunk = params.pop("chunk_positions", CHUNK_POSITIONS)
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk_positions must be an int >= 1, got {chunk!r}")
    p = {**obj.defaults(), **params}
    obj.check(p)
    _check_inputs(draft_logits, target_logits, mask)
    N = draft_logits.shape[0]
    if num_blocks is None:
        if N == 0:
            raise ValueError("no blocks (N = 0): pass num_blocks (the step's block count) or skip "
                             "this micro-batch")
        num_blocks = N
    elif isinstance(num_blocks, (int, float)) and not num_blocks > 0:
        raise ValueError(f"num_blocks must be > 0, got {num_blocks!r}")

    t = block_terms(draft_logits, target_logits, mask, temperature=p.get("temperature", 1.0),
                    chunk=chunk)
    loss_b, parts = obj.fn(t, **p)  # (N,), {name: (N,)}
    loss = loss_b.sum() / num_blocks

    metrics: Metrics = {"loss": loss.detach()}
    metrics.update({k: v.detach().sum() / num_blocks for k, v in parts.items()})
    metrics.update(acceptance_metrics(t))
    return LossOut(loss, metrics)


def acceptance_metrics(t: BlockTerms) -> Metrics:
    """kl, top1 and the accept/* metrics of the module docstring (detached, 0-dim)."""
    dt = t.kl.dtype
    valid = t.valid.to(dt)
    n_valid = valid.sum()
    N = valid.shape[0]
    n_blocks = torch.tensor(float(max(N, 1)), dtype=dt, device=valid.device)  # mean divisor

    def mean_valid(x: Tensor, v: Tensor = valid) -> Tensor:
        return ((x.detach() * v).sum() / v.sum().clamp(min=1)).detach()

    a = t.log_accept.detach().exp() * valid  # (N, K)
    expected = t.reach().detach().sum(-1)  # (N,) E[N]
    greedy = torch.cumprod(t.top1.to(dt), dim=-1).sum(-1)  # (N,) accepted with greedy drafting
    return {
        "kl": mean_valid(t.kl),
        "top1": mean_valid(t.top1.to(dt)),
        "accept/a_mean": mean_valid(a),
        "accept/a_first": mean_valid(a[:, :1], valid[:, :1]),
        "accept/a_last": mean_valid(a[:, -1:], valid[:, -1:]),
        "accept/expected_len": expected.sum() / n_blocks,
        "accept/tau_expected": expected.sum() / n_blocks + 1,
        "accept/greedy_len": greedy.sum() / n_blocks,
        "blocks": torch.tensor(float(N), dtype=dt, device=valid.device),
        "positions/valid": n_valid,
    }
