"""Per-token log-probabilities and entropies without the full (B, T, V) logits.

Every objective in posttrain reads two per-token quantities of the policy's next-token
distribution p = softmax(z), z = (h @ W.T + b) / temperature:

    logp_t = z_{t, y_t} - lse_t                     lse_t = log sum_j exp z_{t, j}
    H_t    = -sum_j p_{t, j} log p_{t, j} = lse_t - sum_j p_{t, j} z_{t, j}

At V = 151,936 (Qwen3) the fp32 logits of a 4 x 4096 batch alone take 10 GB, and the
naive autograd path keeps several tensors of that size (logits, log-softmax, its
gradient). `token_logprobs` instead walks the flattened (B*T) rows in chunks: per chunk it
computes the fp32 logits, reduces them to (logp, lse, H) and throws them away. Backward
recomputes each chunk's logits and forms the logit gradient in place, so the peak extra
memory is one (chunk, V) fp32 buffer (plus a (chunk, 16384) block) and, when the head is
trained, one (V, H) fp32 accumulator for the weight gradient -- independent of B*T. The
default chunk is sized from a memory budget (`CHUNK_BUDGET_BYTES`, 96 MiB).

Gradient with respect to the (tempered) logits z of one row, with upstream grads
g_l = dL/dlogp and g_e = dL/dH:

    dlogp/dz_j = 1[j = y] - p_j
    dH/dz_j    = -p_j (z_j - sum_k p_k z_k) = -p_j (log p_j + H)
                 (d lse/dz_j = p_j;  d(sum_k p_k z_k)/dz_j = p_j + p_j z_j - p_j sum_k p_k z_k)
    dL/dz_j    = g_l 1[j = y] - p_j (g_l + g_e (log p_j + H))

and through z = s / temperature with s = h @ W.T + b:  dL/ds = dL/dz / temperature,
dL/dh = dL/ds @ W,  dL/dW = dL/ds.T @ h,  dL/db = sum over rows of dL/ds.

Rows whose label equals `ignore_index` are dropped before any vocabulary-sized work: their
outputs are 0 and their gradients 0 (padding costs nothing). The same idea -- fusing the
LM head with the loss and recomputing in chunks -- is Liger-Kernel's fused linear cross
entropy (liger_kernel/ops/fused_linear_cross_entropy.py); this implementation is our own
and adds the entropy and its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posttrain.config import ConfigError

# Rows of the LM-head weight upcast to fp32 at a time when the weight is bf16/fp16, so a
# full fp32 copy of a (V, H) weight (1.5 GB for Qwen3-4B's head) is never made.
_VOCAB_BLOCK = 16384


class UnsupportedModelError(ConfigError):
    """The model has a head this path cannot compute exactly; the message says what to change."""


def _head_logits(hc: Tensor, weight: Tensor, bias: Tensor | None, temperature: float, out: Tensor) -> Tensor:
    """Tempered logits z = (h @ W.T + b) / temperature of one chunk, written into `out`.

    hc: (C, H) already in the compute dtype (fp32, or fp64); out: (C, V) of that dtype."""
    if weight.dtype == hc.dtype:
        torch.mm(hc, weight.T, out=out)
    else:
        for v0 in range(0, weight.shape[0], _VOCAB_BLOCK):
            torch.mm(hc, weight[v0 : v0 + _VOCAB_BLOCK].to(hc.dtype).T, out=out[:, v0 : v0 + _VOCAB_BLOCK])
    if bias is not None:
        out += bias.to(hc.dtype)
    if temperature != 1.0:
        out /= temperature
    return out


def _grad_hidden_from_logits(g: Tensor, weight: Tensor) -> Tensor:
    """dL/dh = g @ W for g: (C, V) in the compute dtype, accumulated over vocabulary blocks -> (C, H)."""
    if weight.dtype == g.dtype:
        return g @ weight
    out = g.new_zeros(g.shape[0], weight.shape[1])
    for v0 in range(0, weight.shape[0], _VOCAB_BLOCK):
        out.addmm_(g[:, v0 : v0 + _VOCAB_BLOCK], weight[v0 : v0 + _VOCAB_BLOCK].to(g.dtype))
    return out


CHUNK_BUDGET_BYTES = 96 * 2**20
"""Default size of the one (rows, V) scratch buffer: rows per chunk = budget / (V * 4)
(165 rows at V = 151,936, 786 at V = 32,000). Smaller chunks cost more passes over the
(V, H) weight-gradient accumulator, larger ones more memory; benchmarks/logprobs.py
measures both against the naive path."""


def auto_chunk_rows(vocab: int, itemsize: int = 4, budget: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk so that one (rows, vocab) buffer of `itemsize` bytes fits `budget`."""
    return max(1, budget // (vocab * itemsize))


def _chunk_buffers(n_rows: int, chunk_size: int, vocab: int, dtype, device) -> tuple[Tensor, Tensor]:
    """The scratch reused by every chunk: the (C, V) logits buffer and a (C, block) one.

    Everything else (probabilities, their products, the logit gradient) is formed in place
    in the logits buffer or one vocabulary block at a time in the small one, so the peak is
    one (C, V) buffer. Reusing them (instead of allocating per chunk) matters on CPU, where
    each fresh multi-hundred-MB tensor is a new mmap whose pages fault in again."""
    c = max(1, min(chunk_size, n_rows))
    return (torch.empty(c, vocab, dtype=dtype, device=device),
            torch.empty(c, min(vocab, _VOCAB_BLOCK), dtype=dtype, device=device))


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """(hidden, weight, bias, labels) -> (logp, entropy) over flattened rows, chunked.

    Inputs: hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) long.
    Outputs: logp (N,) and entropy (N,) in the compute dtype (fp32; fp64 when an input is
    fp64, which gradcheck needs), 0 at ignored rows.
    Saved for backward: hidden, weight, bias, the indices and labels of valid rows, and
    per valid row lse and H (two fp32 numbers a row); never anything of size V per row.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, temperature, with_entropy, ignore_index):
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        acc = torch.promote_types(torch.float32, torch.promote_types(hidden.dtype, weight.dtype))
        logp = hidden.new_zeros(n_rows, dtype=acc)
        entropy = hidden.new_zeros(n_rows, dtype=acc)
        rows = (labels != ignore_index).nonzero().squeeze(1)  # (n,) valid row indices
        targets = labels[rows]  # (n,)
        if rows.numel() and bool(((targets < 0) | (targets >= vocab)).any()):
            raise ValueError(f"labels must be in [0, {vocab}) or equal ignore_index={ignore_index}")
        lse = hidden.new_zeros(rows.numel(), dtype=acc)  # (n,)
        ent = hidden.new_zeros(rows.numel(), dtype=acc)  # (n,)
        z_buf, p_buf = _chunk_buffers(rows.numel(), chunk_size, vocab, acc, hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, rows.numel(), chunk_size):
                idx, y = rows[s : s + chunk_size], targets[s : s + chunk_size]
                hc = hidden[idx].to(acc)  # (C, H)
                z = _head_logits(hc, weight, bias, temperature, out=z_buf[: idx.numel()])  # (C, V)
                zmax = z.amax(dim=1, keepdim=True)  # (C, 1)
                # Shift by the row max in place: lse, H and logp are shift-invariant.
                z -= zmax
                sum_p, pz = torch.zeros_like(zmax), torch.zeros_like(zmax)
                for v0 in range(0, vocab, _VOCAB_BLOCK):
                    zb = z[:, v0 : v0 + _VOCAB_BLOCK]
                    pb = torch.exp(zb, out=p_buf[: idx.numel(), : zb.shape[1]])  # unnormalised
                    sum_p += pb.sum(dim=1, keepdim=True)
                    if with_entropy:
                        pz += pb.mul_(zb).sum(dim=1, keepdim=True)  # sum_j p_j z_j
                lse_shifted = sum_p.log()  # (C, 1)
                lse[s : s + idx.numel()] = (lse_shifted + zmax).squeeze(1)
                logp[idx] = (z.gather(1, y[:, None]) - lse_shifted).squeeze(1)
                if with_entropy:
                    ent[s : s + idx.numel()] = (lse_shifted - pz / sum_p).squeeze(1)
        entropy[rows] = ent
        ctx.save_for_backward(hidden, weight, bias, rows, targets, lse, ent)
        ctx.chunk_size, ctx.temperature, ctx.with_entropy = chunk_size, temperature, with_entropy
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, rows, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        # Accumulators: each hidden row is written once (row chunks are disjoint), so its
        # gradient can live in the input dtype; W and b are summed over all chunks, so
        # they accumulate in the compute dtype (fp32) and are cast once at the end.
        grad_h = torch.zeros_like(hidden) if need_h else None
        acc = lse.dtype  # the compute dtype chosen in forward
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        tau = ctx.temperature
        z_buf, p_buf = _chunk_buffers(rows.numel(), ctx.chunk_size, weight.shape[0], acc, hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, rows.numel(), ctx.chunk_size):
                idx, y = rows[s : s + ctx.chunk_size], targets[s : s + ctx.chunk_size]
                g_l = grad_logp[idx].to(acc)[:, None]  # (C, 1)
                hc = hidden[idx].to(acc)  # (C, H)
                z = _head_logits(hc, weight, bias, tau, out=z_buf[: idx.numel()])  # (C, V)
                z -= lse[s : s + idx.numel(), None]  # z is now log p
                # g = dL/dz = -p * (g_l + g_e (log p + H)) + g_l 1[j = y], built in z's buffer:
                # with entropy, -p * (g_e log p + c), c = g_l + g_e H, one vocabulary block at a
                # time (p of the block in the small buffer); without, -p * g_l in place.
                if ctx.with_entropy:
                    g_e = grad_entropy[idx].to(acc)[:, None]  # (C, 1)
                    c = g_l + g_e * ent[s : s + idx.numel(), None]  # (C, 1)
                    for v0 in range(0, z.shape[1], _VOCAB_BLOCK):
                        zb = z[:, v0 : v0 + _VOCAB_BLOCK]
                        pb = torch.exp(zb, out=p_buf[: idx.numel(), : zb.shape[1]])
                        zb.mul_(g_e).add_(c).mul_(pb).neg_()
                else:
                    z.exp_().mul_(g_l).neg_()
                g = z
                g.scatter_add_(1, y[:, None], g_l)
                if tau != 1.0:
                    g /= tau  # through z = s / temperature
                if need_h:
                    grad_h[idx] = _grad_hidden_from_logits(g, weight).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(g.T, hc)
                if need_b:
                    grad_b += g.sum(dim=0)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = True,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each label and entropy of each next-token distribution, chunked.

    Args:
        hidden: (B, T, H) final hidden states (after the backbone's last norm), any float dtype.
        weight: (V, H) LM-head weight (or the tied input embedding).
        labels: (B, T) long token ids aligned with `hidden`; `ignore_index` marks skipped rows.
        bias: optional (V,) LM-head bias.
        chunk_size: rows of the flattened (B*T) batch per chunk; peak extra memory is about
            chunk_size * V * 4 bytes (+ V * H * 4 when `weight` requires grad). None: chosen
            from `CHUNK_BUDGET_BYTES` (`auto_chunk_rows`). The results do not depend on it.
        temperature: logits are divided by it before the softmax (as when sampling).
        with_entropy: also compute the entropy (else it is returned as None, slightly cheaper).

    Returns:
        logp (B, T) fp32 (fp64 if an input is fp64) = log softmax((hidden @ W.T + b) / temperature)[labels],
        0 where ignored;
        entropy (B, T) fp32 = -sum_j p_j log p_j of that distribution, 0 where ignored; or None.

    Differentiable with respect to hidden, weight and bias (first order only); gradients come
    back in the inputs' dtypes and are exactly 0 on ignored rows.
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (B, T, H) and labels (B, T); got {tuple(hidden.shape)} and {tuple(labels.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight must be (V, {hidden.shape[2]}); got {tuple(weight.shape)}")
    if chunk_size is None:  # the compute dtype is fp32, or fp64 when an input is
        wide = torch.float64 in (hidden.dtype, weight.dtype)
        chunk_size = auto_chunk_rows(weight.shape[0], itemsize=8 if wide else 4)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    b, t, _ = hidden.shape
    logp, entropy = _ChunkedTokenLogprobs.apply(
        hidden.reshape(b * t, -1), weight, bias, labels.reshape(-1).long(),
        int(chunk_size), float(temperature), bool(with_entropy), int(ignore_index),
    )
    return logp.view(b, t), (entropy.view(b, t) if with_entropy else None)


def _unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """PeftModel -> the transformers model inside it (LoRA layers stay injected); else model."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        cfg = model.peft_config.get(getattr(model, "active_adapter", "default"))
        if cfg is not None and getattr(cfg, "is_prompt_learning", False):
            raise UnsupportedModelError(
                "model_token_logprobs runs the backbone directly, which skips PEFT prompt-learning "
                "adapters (prefix/prompt tuning); use LoRA-style adapters instead"
            )
        return model.get_base_model()
    return model


def _lm_head(model: nn.Module) -> tuple[Tensor, Tensor | None, float]:
    """(weight (V, H), bias (V,) or None, logit multiplier) of a causal LM's output head."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} has no linear output head (get_output_embeddings() = {head!r})")
    # A PEFT adapter on lm_head itself (e.g. LoRA with target_modules including lm_head)
    # exposes the frozen base weight as .weight; using it would silently drop the adapter.
    if hasattr(head, "base_layer") and not (getattr(head, "merged", False) or getattr(head, "disable_adapters", False)):
        raise UnsupportedModelError(
            "the LM head carries an unmerged PEFT adapter; leave lm_head out of target_modules "
            "(modules_to_save is fine) or merge the adapter first"
        )
    cfg = getattr(model, "config", None)
    if getattr(cfg, "final_logit_softcapping", None):
        raise UnsupportedModelError("final_logit_softcapping (Gemma-2 style) is not supported by chunked log-probs")
    # Heads that rescale logits: Cohere multiplies by logit_scale, Granite divides by logits_scaling.
    scale = float(getattr(cfg, "logit_scale", None) or 1.0) / float(getattr(cfg, "logits_scaling", None) or 1.0)
    return head.weight, getattr(head, "bias", None), scale


def model_token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = True,
    position_ids: Tensor | None = None,
    **model_kwargs,
) -> tuple[Tensor, Tensor | None]:
    """Per-token (logp, entropy) of a causal LM on `input_ids`, without full logits.

    Runs the backbone only (model.get_decoder(), falling back to model.model; a PeftModel is
    unwrapped to its base model with adapters still applied), takes its last hidden states
    (B, T, H) and feeds them with the output head to `token_logprobs`.

    Without `labels`: position t predicts input_ids[:, t + 1]; returns (B, T - 1) tensors.
    A pair counts only when both the position and its target have attention_mask 1 (left or
    right padding gives 0 there). With `labels` (B, T), already aligned so labels[:, t] is
    the target of position t (-100 = ignore): returns (B, T); positions with attention_mask
    0 are ignored as well.
    """
    base = _unwrap_causal_lm(model)
    backbone = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    weight, bias, scale = _lm_head(base)
    model_kwargs.setdefault("use_cache", False)  # a KV cache is dead weight in a scoring pass
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **model_kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, H)
    shifted = labels is None
    if shifted:
        # Pad the targets with one ignored column instead of slicing hidden[:, :-1]: the
        # slice would make a non-contiguous view and force a (B, T-1, H) copy.
        labels = torch.full_like(input_ids, -100)
        labels[:, :-1] = input_ids[:, 1:]
        if attention_mask is not None:
            valid = attention_mask.bool()
            labels[:, :-1].masked_fill_(~(valid[:, :-1] & valid[:, 1:]), -100)
    elif attention_mask is not None:
        labels = labels.masked_fill(~attention_mask.bool(), -100)
    logp, entropy = token_logprobs(
        hidden, weight, labels, bias=bias, chunk_size=chunk_size, temperature=temperature / scale,
        with_entropy=with_entropy, ignore_index=-100,
    )
    if shifted:
        logp, entropy = logp[:, :-1], (entropy[:, :-1] if entropy is not None else None)
    return logp, entropy
