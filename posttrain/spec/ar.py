"""The baseline draft: a small autoregressive causal LM drafting k tokens one at a time.

Any transformers causal LM that shares the target's tokenizer works (a smaller Qwen3, or
a draft distilled from the target). It keeps its own KV cache over the committed context:
`extend` queues verified tokens, `propose` feeds the queue plus the last token, then
drafts greedily and crops its cache back to the committed length, so rejected drafts never
stay in it. Drafting costs k sequential forwards of the draft, the cost the block drafter
removes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache

from .verify import cache_kwarg, crop_cache


class ARDrafter:
    feature_layers: tuple[int, ...] = ()

    def __init__(self, model):
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.committed = 0  # tokens of the context inside self.cache
        self.pending: list[int] = []  # committed tokens not yet fed to the draft

    def extend(self, token_ids: Sequence[int], features) -> None:
        self.pending += list(token_ids)

    @torch.no_grad()
    def propose(self, last_token: int, n: int) -> list[int]:
        if n <= 0:
            return []
        device = self.model.device
        feed = self.pending + [last_token]
        pos = self.committed
        drafts: list[int] = []
        for _ in range(n):
            x = torch.tensor([feed], dtype=torch.long, device=device)
            p = torch.arange(pos, pos + len(feed), device=device)[None]
            out = self.model(input_ids=x, position_ids=p, use_cache=True, logits_to_keep=1,
                             **{cache_kwarg(self.model): self.cache})
            pos += len(feed)
            tok = int(out.logits[0, -1].argmax())
            drafts.append(tok)
            feed = [tok]
        self.committed += len(self.pending)
        self.pending = []
        crop_cache(self.cache, self.committed)  # drop last_token and the drafts
        return drafts
