"""The DFlash-style block drafter (Chen, Liang, Liu 2026, "DFlash: Block Diffusion for
Flash Speculative Decoding").

A few Qwen3-style decoder layers that draft a whole block in one forward:

    context  c_t = RMSNorm(W_fc [h^(l_1)_t ; ... ; h^(l_m)_t])     target states of m
                                                                   evenly spaced layers,
                                                                   committed tokens t < a
    block    x = [E(g), e_mask, ..., e_mask]                       B slots at positions
                                                                   a .. a + B - 1
    layer    q = W_q x,  k = [W_k c ; W_k x],  v = [W_v c ; W_v x] the context is injected
                                                                   as extra keys / values
                                                                   in every layer
             attention of the block over all context + the whole block (non-causal
             inside the block), Qwen3 q/k RMSNorm per head, RoPE, grouped-query heads
    output   logits = LM_head(RMSNorm(x_L))[1:]                    predictions for
                                                                   positions a+1 .. a+B-1

E and LM_head are the target's own (frozen, shared by reference: they are neither
trained nor stored in the draft's checkpoint). The mask slot is a learned vector of the
drafter (so no vocabulary change is needed on the target; DFlash uses a mask token).
Deviation, documented: DFlash's single denoising step is what is implemented; no
multi-step refinement.

Training packs several blocks per sequence in one forward: block j attends to the
context before its anchor a_j and to its own B slots only (`block_attention_mask`).
At inference the projected context keys / values of every layer are cached and grown
with each verified token (`DraftCache`), so a cycle costs one B-token pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_NAME = "drafter.json"
WEIGHTS_NAME = "drafter.safetensors"


@dataclass
class BlockDraftConfig:
    hidden_size: int
    """Width; equals the target's (the draft reads the target's embeddings and LM head)."""
    num_layers: int = 1
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    block_size: int = 16
    """B: slots per block (the known token + B - 1 predicted ones)."""
    target_layers: tuple[int, ...] = (1, 3)
    """Indices into the target's hidden_states (0 = embeddings, i = after decoder layer i)."""
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    vocab_size: int = 0
    """The target's vocabulary (checked when the drafter is attached to a target)."""

    def __post_init__(self):
        self.target_layers = tuple(int(i) for i in self.target_layers)
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")


def evenly_spaced_layers(num_target_layers: int, count: int) -> tuple[int, ...]:
    """`count` hidden-state indices spread from the first decoder layer to the one before
    the last (whose output the final norm + LM head already summarise), as DFlash picks
    shallow-to-deep layers: 4 layers, 2 -> (1, 3); 36 layers, 5 -> (1, 9, 18, 26, 35)."""
    last = max(1, num_target_layers - 1)
    if count <= 1:
        return (last,)
    return tuple(sorted({round(1 + i * (last - 1) / (count - 1)) for i in range(count)}))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))).to(x.dtype)


def rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Rotary embedding (rotate-half form, as Qwen3) of x (N, heads, T, D) at positions pos (N, T)."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # (D/2,)
    ang = pos.float()[..., None] * inv  # (N, T, D/2)
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None].to(x.dtype)  # (N, 1, T, D)
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None].to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class DraftLayer(nn.Module):
    def __init__(self, cfg: BlockDraftConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.input_norm = RMSNorm(h, cfg.rms_eps)
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_eps)
        self.k_norm = RMSNorm(d, cfg.rms_eps)
        self.post_norm = RMSNorm(h, cfg.rms_eps)
        self.gate = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.up = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, h, bias=False)

    def kv(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """(N, T, H) inputs at positions (N, T) -> keys, values (N, kv_heads, T, D)."""
        n, t, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(n, t, self.cfg.num_kv_heads, -1)).transpose(1, 2)
        v = self.v_proj(x).view(n, t, self.cfg.num_kv_heads, -1).transpose(1, 2)
        return rope(k, pos, self.cfg.rope_theta), v

    def forward(self, x: Tensor, pos: Tensor, ctx_k: Tensor, ctx_v: Tensor,
                mask: Tensor | None) -> Tensor:
        """x (N, S, H) block slots; ctx_k / ctx_v (N, kv, T, D) already projected context;
        mask (N, S, T + S) bool (True = may attend) or None (everything visible)."""
        n, s, _ = x.shape
        cfg = self.cfg
        hx = self.input_norm(x)
        q = self.q_norm(self.q_proj(hx).view(n, s, cfg.num_heads, -1)).transpose(1, 2)
        q = rope(q, pos, cfg.rope_theta)  # (N, heads, S, D)
        bk, bv = self.kv(hx, pos)
        k = torch.cat([ctx_k, bk], dim=2)  # (N, kv, T + S, D)
        v = torch.cat([ctx_v, bv], dim=2)
        rep = cfg.num_heads // cfg.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask[:, None])
        x = x + self.o_proj(attn.transpose(1, 2).reshape(n, s, -1))
        hx = self.post_norm(x)
        return x + self.down(F.silu(self.gate(hx)) * self.up(hx))


class BlockDrafter(nn.Module):
    """See the module docstring. `embed` / `head`: the target's input embedding and LM head."""

    def __init__(self, cfg: BlockDraftConfig, embed: nn.Module, head: nn.Module):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.fc = nn.Linear(len(cfg.target_layers) * h, h, bias=False)
        self.ctx_norm = RMSNorm(h, cfg.rms_eps)
        self.mask_embedding = nn.Parameter(torch.zeros(h))
        self.layers = nn.ModuleList(DraftLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(h, cfg.rms_eps)
        # a plain tuple keeps the target's modules out of parameters() / state_dict():
        # they are frozen, shared, and never saved with the draft
        self._shared = (embed, head)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        with torch.no_grad():
            self.mask_embedding.normal_(std=0.02)

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return self.cfg.target_layers

    def context(self, features: Tensor) -> Tensor:
        """(N, T, m * H) concatenated target states -> (N, T, H) context features."""
        return self.ctx_norm(self.fc(features))

    def embed_block(self, first_tokens: Tensor) -> Tensor:
        """(N, J) known first tokens -> (N, J * B, H) embedded blocks [E(g), mask x (B - 1)]."""
        embed, _ = self._shared
        n, j = first_tokens.shape
        b = self.cfg.block_size
        e = embed(first_tokens)  # (N, J, H)
        slots = self.mask_embedding.to(e.dtype).expand(n, j, b, e.shape[-1]).clone()
        slots[:, :, 0] = e
        return slots.reshape(n, j * b, -1)

    def forward(self, features: Tensor, ctx_pos: Tensor, first_tokens: Tensor,
                anchors: Tensor, mask: Tensor | None = None) -> Tensor:
        """Training / uncached forward.

        features (N, T, m*H) target states of the context; ctx_pos (N, T) their positions;
        first_tokens (N, J) the known token of each of J blocks; anchors (N, J) its position;
        mask (N, J*B, T + J*B) or None. Returns logits (N, J, B - 1, V) for positions
        anchor + 1 .. anchor + B - 1.
        """
        c = self.context(features)
        ctx = [layer.kv(c, ctx_pos) for layer in self.layers]
        return self._blocks(first_tokens, anchors, ctx, mask)

    def _blocks(self, first_tokens: Tensor, anchors: Tensor, ctx: list[tuple[Tensor, Tensor]],
                mask: Tensor | None) -> Tensor:
        n, j = first_tokens.shape
        b = self.cfg.block_size
        x = self.embed_block(first_tokens)  # (N, J*B, H)
        pos = (anchors[..., None] + torch.arange(b, device=anchors.device)).reshape(n, j * b)
        for layer, (ck, cv) in zip(self.layers, ctx):
            x = layer(x, pos, ck, cv, mask)
        _, head = self._shared
        h = self.norm(x).view(n, j, b, -1)[:, :, 1:]  # slot 0 holds the known token
        return head(h)  # (N, J, B - 1, V)

    # ------------------------------------------------------------------ inference

    def new_cache(self) -> "DraftCache":
        return DraftCache(self)

    def save(self, directory: str | Path) -> Path:
        """drafter.json + drafter.safetensors (the draft's own weights only)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(d / WEIGHTS_NAME))
        (d / CONFIG_NAME).write_text(json.dumps({"kind": "block", **asdict(self.cfg)}, indent=2) + "\n")
        return d

    def load_weights(self, directory: str | Path) -> None:
        state = load_file(str(Path(directory) / WEIGHTS_NAME))
        self.load_state_dict(state, strict=True)


def is_block_drafter_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def read_config(directory: str | Path) -> BlockDraftConfig:
    raw = json.loads((Path(directory) / CONFIG_NAME).read_text())
    raw.pop("kind", None)
    return BlockDraftConfig(**raw)


def attach(cfg: BlockDraftConfig, target) -> BlockDrafter:
    """A drafter sharing `target`'s (frozen) input embedding and LM head."""
    tc = target.config
    vocab = target.get_output_embeddings().weight.shape[0]
    if cfg.hidden_size != tc.hidden_size:
        raise ValueError(f"drafter hidden_size {cfg.hidden_size} != target hidden_size {tc.hidden_size}")
    if cfg.vocab_size and cfg.vocab_size != vocab:
        raise ValueError(f"drafter was trained for a vocabulary of {cfg.vocab_size}, target has {vocab}")
    if max(cfg.target_layers) > tc.num_hidden_layers:
        raise ValueError(f"target_layers {cfg.target_layers} beyond the target's {tc.num_hidden_layers} layers")
    cfg.vocab_size = vocab
    for p in target.parameters():
        p.requires_grad_(False)
    param = target.get_input_embeddings().weight
    return BlockDrafter(cfg, target.get_input_embeddings(), target.get_output_embeddings()).to(
        device=param.device, dtype=param.dtype)


def load_drafter(directory: str | Path, target) -> BlockDrafter:
    drafter = attach(read_config(directory), target)
    drafter.load_weights(directory)
    return drafter.eval()


def block_attention_mask(anchors: Tensor, ctx_valid: Tensor, block_size: int) -> Tensor:
    """Packed-blocks mask: anchors (N, J), ctx_valid (N, T) bool -> (N, J*B, T + J*B) bool.

    A slot of block j sees context position t iff t < anchors[j] and t is a real token,
    and every slot of its own block (non-causal), nothing of the other blocks.
    """
    n, j = anchors.shape
    t = ctx_valid.shape[1]
    b = block_size
    tpos = torch.arange(t, device=anchors.device)
    see_ctx = (tpos[None, None] < anchors[..., None]) & ctx_valid[:, None]  # (N, J, T)
    see_ctx = see_ctx[:, :, None].expand(n, j, b, t).reshape(n, j * b, t)
    blk = torch.arange(j * b, device=anchors.device) // b
    see_blk = (blk[:, None] == blk[None, :])[None].expand(n, j * b, j * b)
    return torch.cat([see_ctx, see_blk], dim=-1)


class DraftCache:
    """Inference state of a BlockDrafter: the projected context keys / values of every
    layer for the committed tokens, grown by `extend` (the Drafter protocol of verify.py)."""

    def __init__(self, drafter: BlockDrafter):
        self.drafter = drafter
        self.feature_layers = drafter.cfg.target_layers
        self.reset()

    def reset(self) -> None:
        self.length = 0
        self.kv: list[tuple[Tensor, Tensor]] | None = None

    @torch.no_grad()
    def extend(self, token_ids: Sequence[int], features: Tensor | None) -> None:
        if features is None or features.shape[0] != len(token_ids):
            raise ValueError("the block drafter needs the target's features of every committed token")
        d = self.drafter
        t = features.shape[0]
        pos = torch.arange(self.length, self.length + t, device=features.device)[None]
        c = d.context(features[None].to(d.fc.weight.dtype))
        new = [layer.kv(c, pos) for layer in d.layers]
        if self.kv is None:
            self.kv = new
        else:
            self.kv = [(torch.cat([k, nk], 2), torch.cat([v, nv], 2))
                       for (k, v), (nk, nv) in zip(self.kv, new)]
        self.length += t

    @torch.no_grad()
    def propose(self, last_token: int, n: int) -> list[int]:
        d = self.drafter
        dev = d.fc.weight.device
        first = torch.tensor([[last_token]], device=dev)
        anchor = torch.tensor([[self.length]], device=dev)
        logits = d._blocks(first, anchor, self.kv, None)  # (1, 1, B - 1, V)
        return logits[0, 0, :n].argmax(-1).tolist()


def num_parameters(drafter: BlockDrafter) -> int:
    return sum(p.numel() for p in drafter.parameters())

