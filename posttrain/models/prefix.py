"""Per-token log-probs of completions that share prompts, with each prompt run once.

An RL step scores G completions of every prompt (a preference pair, two replies). The plain
update forward runs each of the P * G rows through the whole model, prompt included, so the
prompt's activations are computed G times. Here (dense Qwen3, through the functional layers
of `models/qwen3.py`) each distinct prompt runs once, and every completion attends to its
prompt's keys and values:

    prompt rows   (U, Lp):  causal self-attention, as in the plain forward
    completions   (N, Ls):  queries attend to [K_prompt[owner] ; K_own] with mask
                            [j < len(prompt) ; causal]

The gradient of the shared prompt activations is the sum over the completions that read
them (autograd through the `index_select` by owner), which is exactly the plain forward's
gradient summed over the G copies. So log-probs, entropies and gradients equal the plain
path's up to float rounding (tests). The norms, projections and MLP run on the real tokens
only, packed (distinct prompts' tokens, then the completions'); attention unpacks them into
the padded grids above. So the layer work is sum(distinct prompt lengths) + sum(completion
lengths) tokens instead of N x the padded row length. A LoRA model runs with its adapters
merged per forward (`models/qwen3.linear_weight`). The same idea is "Prefix Grouper" (Liu
et al. 2025, arXiv 2506.05433, shared-prefix forward for GRPO); this implementation is our
own.

The first completion token is predicted from the prompt's last position, so its hidden
state comes from the prompt rows; the others from the completion rows. Scoring goes
through the chunked `token_logprobs` (no (N, T, V) logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from posttrain.models.load import is_checkpointing
from posttrain.models.logprobs import _lm_head, model_token_logprobs, token_logprobs
from posttrain.models.qwen3 import Qwen3Weights, causal_lm, rms, unsupported_reason

IGNORE = -100


def group_prompts(input_ids: Tensor, prompt_len: Tensor) -> tuple[list[list[int]], list[int]]:
    """Distinct prompts of the rows and each row's owner: input_ids (N, T), prompt_len (N,)
    -> (prompts, owner) with prompts[owner[n]] == input_ids[n, :prompt_len[n]]."""
    index: dict[tuple[int, ...], int] = {}
    owner = []
    for row, n in zip(input_ids.tolist(), prompt_len.tolist()):
        owner.append(index.setdefault(tuple(row[:n]), len(index)))
    return [list(p) for p in index], owner


def batch_token_logprobs(model: nn.Module, batch: dict[str, Tensor], *, share_prompts: bool = True,
                         **kwargs) -> tuple[Tensor, Tensor | None]:
    """(logp, entropy) of an RL batch (`train.rl_batch.build_batch` layout: input_ids,
    attention_mask, labels, prompt_len), each (N, T): the shared-prompt forward when it
    applies (`share_prompts`, a model `unsupported_reason` accepts, and at least two rows
    with the same prompt), else `model_token_logprobs`. Same values either way. A row
    whose prompt is empty (nothing to predict its first token from) takes the plain path.
    kwargs: chunk_size, temperature, with_entropy."""
    if (share_prompts and "prompt_len" in batch and bool((batch["prompt_len"] > 0).all())
            and unsupported_reason(model) is None):
        groups = group_prompts(batch["input_ids"], batch["prompt_len"])
        if len(groups[0]) < len(groups[1]):
            return shared_prefix_logprobs(model, batch["input_ids"], batch["prompt_len"], batch["attention_mask"],
                                          batch["labels"], groups=groups, **kwargs)
    return model_token_logprobs(model, batch["input_ids"], attention_mask=batch["attention_mask"],
                                labels=batch["labels"], **kwargs)


def shared_prefix_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    prompt_len: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = True,
    groups: tuple[list[list[int]], list[int]] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(logp, entropy), each (N, T), as `model_token_logprobs(model, input_ids,
    attention_mask, labels=labels)` returns them, for right-padded rows
    input_ids[n] = prompt (prompt_len[n] tokens) + completion (up to attention_mask[n].sum()),
    with labels[n, t] the target of position t (IGNORE outside the completion). Rows with the
    same prompt share its forward (`groups`: `group_prompts`' result, if already at hand).
    The model must pass `unsupported_reason`, and every prompt must have a token."""
    why = unsupported_reason(model)
    if why is not None:
        raise ValueError(f"shared_prefix_logprobs: {why}")
    if not bool((prompt_len > 0).all()):
        raise ValueError("shared_prefix_logprobs: a row has an empty prompt")
    device = input_ids.device
    N, T = input_ids.shape
    prompts, owner_l = groups if groups is not None else group_prompts(input_ids, prompt_len)
    owner = torch.tensor(owner_l, device=device)
    plen = prompt_len.to(device)
    total = attention_mask.sum(1)
    clen = total - plen  # (N,) completion tokens
    U, Lp, Ls = len(prompts), max(map(len, prompts)), max(int(clen.max()), 1)

    p_ids = torch.zeros((U, Lp), dtype=torch.long, device=device)
    for u, p in enumerate(prompts):
        p_ids[u, :len(p)] = torch.tensor(p, dtype=torch.long, device=device)
    p_len = torch.tensor([len(p) for p in prompts], device=device)  # (U,)
    steps = torch.arange(Ls, device=device)
    col = (plen[:, None] + steps).clamp(max=T - 1)  # (N, Ls) completion columns of input_ids
    in_c = steps[None] < clen[:, None]  # (N, Ls) real completion tokens
    in_p = torch.arange(Lp, device=device)[None] < p_len[:, None]  # (U, Lp) real prompt tokens
    # token-wise work (norms, projections, MLP) runs on the real tokens only, packed as
    # [prompt tokens; completion tokens]; attention unpacks them into padded (rows, L) views
    pack = _Packing(in_p.reshape(-1).nonzero().squeeze(1), in_c.reshape(-1).nonzero().squeeze(1), U, Lp, N, Ls)

    w = Qwen3Weights(model)  # fused weights built here: differentiable views of the parameters
    cos_t, sin_t = w.rope_tables(Lp + Ls)
    pos = torch.cat([torch.arange(Lp, device=device).repeat(U)[pack.p_idx],
                     (plen[:, None] + steps).reshape(-1)[pack.c_idx]])  # (tokens,) positions
    cos, sin = cos_t[pos][:, None, :], sin_t[pos][:, None, :]  # (tokens, 1, hd)
    # completion queries see their prompt's real tokens and their own earlier tokens
    see_p = torch.arange(Lp, device=device)[None] < plen[:, None]  # (N, Lp)
    causal = torch.ones(Ls, Ls, dtype=torch.bool, device=device).tril()
    c_mask = torch.cat([see_p[:, None].expand(N, Ls, Lp), causal.expand(N, Ls, Ls)], dim=-1)[:, None]

    ids = torch.cat([p_ids.reshape(-1)[pack.p_idx], input_ids.gather(1, col).reshape(-1)[pack.c_idx]])
    x = F.embedding(ids, w.embed)  # (tokens, H)
    ckpt = is_checkpointing(model) and torch.is_grad_enabled()  # recompute each layer in backward
    for L in w.layers:
        args = (x, L, cos, sin, owner, c_mask, pack)
        x = checkpoint(_layer, w, *args, use_reentrant=False) if ckpt else _layer(w, *args)

    # hidden state predicting completion token k: the prompt's last position for k = 0,
    # completion position k - 1 after that
    n_p = pack.p_idx.numel()
    last_p = x[:n_p].index_select(0, (p_len.cumsum(0) - 1)[owner])  # (N, H)
    xc = pack.unpack_c(x[n_p:])  # (N, Ls, H), 0 at padding
    h = torch.cat([last_p[:, None], xc[:, :Ls - 1]], dim=1)  # (N, Ls, H)
    lab_col = (plen[:, None] - 1 + steps).clamp(max=T - 1)  # (N, Ls) columns of labels
    lab = torch.where(in_c, labels.gather(1, lab_col), IGNORE)
    lab = lab.masked_fill(attention_mask.gather(1, lab_col) == 0, IGNORE)
    weight, bias, scale = _lm_head(causal_lm(model))
    logp_c, ent_c = token_logprobs(rms(h, w.norm, w.eps), weight, lab, bias=bias, chunk_size=chunk_size,
                                   temperature=temperature / scale, with_entropy=with_entropy,
                                   ignore_index=IGNORE)
    # back to the (N, T) layout: column t holds completion step t - (plen - 1)
    k = torch.arange(T, device=device)[None] - (plen[:, None] - 1)  # (N, T)
    hit = (k >= 0) & (k < Ls)
    hit &= lab.gather(1, k.clamp(0, Ls - 1)) != IGNORE
    idx = k.clamp(0, Ls - 1)
    logp = torch.where(hit, logp_c.gather(1, idx), 0.0)
    ent = torch.where(hit, ent_c.gather(1, idx), 0.0) if ent_c is not None else None
    return logp, ent


class _Packing:
    """Where the real tokens sit: p_idx / c_idx index the flattened (U * Lp) prompt and
    (N * Ls) completion grids; `unpack_*` scatter packed rows into zero-padded grids."""

    def __init__(self, p_idx: Tensor, c_idx: Tensor, U: int, Lp: int, N: int, Ls: int):
        self.p_idx, self.c_idx, self.U, self.Lp, self.N, self.Ls = p_idx, c_idx, U, Lp, N, Ls

    @staticmethod
    def _unpack(t: Tensor, idx: Tensor, rows: int, length: int) -> Tensor:
        grid = t.new_zeros((rows * length, *t.shape[1:])).index_copy(0, idx, t)
        return grid.view(rows, length, *t.shape[1:])

    def unpack_p(self, t: Tensor) -> Tensor:
        return self._unpack(t, self.p_idx, self.U, self.Lp)

    def unpack_c(self, t: Tensor) -> Tensor:
        return self._unpack(t, self.c_idx, self.N, self.Ls)


def _layer(w: Qwen3Weights, x: Tensor, L, cos: Tensor, sin: Tensor, owner: Tensor, c_mask: Tensor,
           pack: _Packing) -> Tensor:
    """One decoder layer over the packed real tokens x (tokens, H): prompt tokens first."""
    nh, nkv, hd = w.nh, w.nkv, w.hd
    q, k, v = w.qkv(L, x, cos, sin)  # (tokens, heads, hd)
    n_p = pack.p_idx.numel()
    # padded grids (rows, heads, L, hd); padding slots are 0 and masked out of every real query
    qp, kp, vp = (pack.unpack_p(t[:n_p]).transpose(1, 2) for t in (q, k, v))
    qc, kc, vc = (pack.unpack_c(t[n_p:]).transpose(1, 2) for t in (q, k, v))
    gqa = nh != nkv
    # right-padded prompts: a real query never sees a later (padding) key under the causal mask
    att_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)
    keys = torch.cat([kp.index_select(0, owner), kc], dim=2)  # (N, nkv, Lp + Ls, hd)
    vals = torch.cat([vp.index_select(0, owner), vc], dim=2)
    att_c = F.scaled_dot_product_attention(qc, keys, vals, attn_mask=c_mask, enable_gqa=gqa)
    att = torch.cat([att_p.transpose(1, 2).reshape(-1, nh * hd).index_select(0, pack.p_idx),
                     att_c.transpose(1, 2).reshape(-1, nh * hd).index_select(0, pack.c_idx)])
    x = x + F.linear(att, L.w_o, L.b_o)
    return x + w.mlp(L, x)
