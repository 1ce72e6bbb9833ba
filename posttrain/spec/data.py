"""Draft-training data: prompts -> the target's own greedy responses -> random blocks.

    prompts  data.train sources, rendered with the generation prompt and thinking off;
             de-duplicated by rendered text, and every prompt whose SHA-256 equals an
             evaluation prompt's is removed (the eval prompts are never trained on)
    labels   the frozen target answers each prompt greedily (T = 0) up to a length cap,
             batched with the KV-cache engine of rollout/hf.py; stored as JSONL of token
             ids in the run directory (responses.jsonl), reused on a rerun
    blocks   each pass over a response draws `anchors_per_seq` random anchor positions a
             inside it; block = [x_a, mask x (B - 1)], predicting x_{a+1} .. x_{a+B-1},
             conditioned on the target's states of x_0 .. x_{a-1}

Anchors come from the global torch RNG, which checkpoints save and restore, so a resumed
run draws the anchors an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..data.chat import render
from ..data.example import Example
from ..rollout.base import SamplingParams
from ..rollout.hf import HFEngine

log = logging.getLogger("posttrain")


def prompt_text(tokenizer, messages) -> str:
    """The prompt as the target sees it: generation prompt on, thinking off (Qwen3's
    `enable_thinking=False`; templates without the switch ignore it)."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
    except TypeError:  # pragma: no cover - very old tokenizers
        return render(tokenizer, messages, add_generation_prompt=True)


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def select_prompts(tokenizer, examples: Sequence[Example], exclude: set[str]) -> list[str]:
    """Rendered prompt texts of `examples`, de-duplicated, minus those whose hash is in `exclude`."""
    seen, out, dup, held = set(), [], 0, 0
    for ex in examples:
        text = prompt_text(tokenizer, ex.prompt_messages)
        h = prompt_hash(text)
        if h in exclude:
            held += 1
            continue
        if h in seen:
            dup += 1
            continue
        seen.add(h)
        out.append(text)
    log.info("draft data: %d prompts (%d duplicates and %d evaluation prompts removed)",
             len(out), dup, held)
    return out


@dataclass
class DraftSequence:
    ids: list[int]
    """Prompt + response token ids."""
    prompt_len: int


def generate_responses(target, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                       batch_size: int, path: Path) -> list[DraftSequence]:
    """Greedy responses of `target`; written to `path` (JSONL) atomically, reused if present
    with the same prompts and cap."""
    key = prompt_hash(json.dumps([list(prompts), max_new_tokens]))
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows and rows[0].get("key") == key:
            log.info("draft data: reusing %d responses from %s", len(rows) - 1, path)
            return [DraftSequence(r["prompt_ids"] + r["response_ids"], len(r["prompt_ids"])) for r in rows[1:]]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    engine = HFEngine(target, tokenizer, batch_size=batch_size)
    roll = engine.generate(ids, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
    capped = sum(r == "length" for r in roll.finish_reasons)
    log.info("draft data: %d responses, mean %.0f tokens, %d%% length-capped", len(ids),
             sum(map(len, roll.completion_ids)) / max(len(ids), 1), 100 * capped / max(len(ids), 1))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"key": key, "max_new_tokens": max_new_tokens}) + "\n")
        for p, c, r in zip(ids, roll.completion_ids, roll.finish_reasons):
            f.write(json.dumps({"prompt_ids": p, "response_ids": c, "finish_reason": r}) + "\n")
    os.replace(tmp, path)
    return [DraftSequence(p + c, len(p)) for p, c in zip(ids, roll.completion_ids)]


def write_prompt_file(examples: Sequence[Example], path: Path) -> Path:
    """A JSONL prompt file ({"id", "messages"} rows without the reference answer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps({"id": ex.id, "messages": ex.prompt_messages}) + "\n")
    return path


def collate_blocks(items: list[DraftSequence], pad_id: int, block_size: int, anchors: int,
                   max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded sequences and `anchors` random blocks per sequence.

    input_ids, attention_mask (N, T); anchors, first_tokens (N, J); block_mask (N, J, B-1)
    True where position anchor + k (k = 1..B-1) holds a real token; a sequence with fewer
    eligible anchors than J repeats none: its spare blocks have an all-False block_mask.
    response_mask (N, T): True at positions whose next token is a response token (the
    autoregressive draft's training positions).
    """
    rows = [it.ids[:max_length] for it in items]
    T = max(len(r) for r in rows)
    n = len(rows)
    ids = torch.full((n, T), pad_id, dtype=torch.long)
    att = torch.zeros((n, T), dtype=torch.long)
    anc = torch.zeros((n, anchors), dtype=torch.long)
    bmask = torch.zeros((n, anchors, block_size - 1), dtype=torch.bool)
    resp = torch.zeros((n, T), dtype=torch.bool)
    k = torch.arange(1, block_size)
    for i, (r, it) in enumerate(zip(rows, items)):
        L = len(r)
        ids[i, :L] = torch.tensor(r)
        att[i, :L] = 1
        resp[i, max(it.prompt_len - 1, 0):L - 1] = True
        lo, hi = min(it.prompt_len, L - 1), L - 2  # anchor a needs a token at a + 1
        if hi < lo:
            continue
        span = hi - lo + 1
        pick = torch.randperm(span)[:anchors] + lo  # global RNG: restored on resume
        anc[i, :len(pick)] = pick
        bmask[i, :len(pick)] = (pick[:, None] + k[None]) < L
    first = ids.gather(1, anc)
    return {"input_ids": ids, "attention_mask": att, "anchors": anc, "first_tokens": first,
            "block_mask": bmask, "response_mask": resp}


def count_blocks(batch: dict) -> float:
    """Blocks with at least one target position (what the loss is averaged over)."""
    return float(batch["block_mask"][..., 0].sum())
