"""The RL update's batch: rollouts laid out as right-padded (N, T) tensors for the loss."""

from __future__ import annotations

import torch

from ..data.chat import IGNORE


def build_batch(prompts: list[list[int]], completions: list[list[int]], engine_logp: list[list[float]],
                advantages: torch.Tensor, train_rows: list[bool], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (N, T) tensors for the update phase.

    labels[t] is the token at t + 1 on completion positions (IGNORE elsewhere), the
    alignment `model_token_logprobs(labels=...)` takes; `mask` marks the positions that
    enter the loss (completion tokens of rows in `train_rows`); `rollout_logp` holds the
    engine's log-probs at the same positions; `prompt_len` (N,) lets rows with the same
    prompt share its forward (`models.prefix`).
    """
    N = len(prompts)
    T = max(len(p) + len(c) for p, c in zip(prompts, completions))
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((N, T), dtype=torch.long)
    labels = torch.full((N, T), IGNORE, dtype=torch.long)
    rollout_logp = torch.zeros((N, T), dtype=torch.float32)
    prompt_len = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        P, C = len(p), len(c)
        input_ids[i, :P + C] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, :P + C] = 1
        if C:
            labels[i, P - 1:P + C - 1] = torch.tensor(c, dtype=torch.long)
            rollout_logp[i, P - 1:P + C - 1] = torch.tensor(engine_logp[i], dtype=torch.float32)
    mask = (labels != IGNORE) & torch.tensor(train_rows, dtype=torch.bool)[:, None]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "mask": mask, "rollout_logp": rollout_logp, "advantages": advantages.float(), "prompt_len": prompt_len}


def rows_of(batch: dict, idx: torch.Tensor, device) -> dict:
    """Rows `idx` of the batch on `device`, trimmed to their longest sequence ((N, T, ...)
    tensors, e.g. MoE routes (N, T, L, k), are trimmed along T)."""
    sub = {k: v[idx] for k, v in batch.items()}
    T = int(sub["attention_mask"].sum(1).max())
    return {k: (v[:, :T] if v.dim() >= 2 else v).to(device) for k, v in sub.items()}
