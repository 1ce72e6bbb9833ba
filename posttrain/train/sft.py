"""Supervised fine-tuning: -log p of the assistant tokens, on the shared loop.

Loss normalisation: the mean over every assistant token of the optimizer step (all
micro-batches together), so the gradient does not depend on how a step is split into
micro-batches or how examples are packed into rows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..config import SFTRecipe
from ..data.chat import IGNORE, Tokenized, collate, pack, tokenize_chat
from ..data.example import Example
from ..data.sources import load_sources
from ..models.load import count_parameters, load_model, load_tokenizer
from ..models.logprobs import model_token_logprobs
from . import dist
from .loop import BatchStream, LoopResult, seed_everything, start_run, train_loop

log = logging.getLogger("posttrain")


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels of tokens -> (B, T) targets of positions: target[t] = labels[t + 1]."""
    target = torch.full_like(labels, IGNORE)
    target[:, :-1] = labels[:, 1:]
    return target


def sft_loss(model, batch: dict, denom: float, chunk_size: int | None = None):
    """Summed NLL of the batch's assistant tokens divided by `denom` (the step's token count)."""
    target = shift_labels(batch["labels"])
    logp, _ = model_token_logprobs(
        model, batch["input_ids"], attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"), labels=target, chunk_size=chunk_size,
        with_entropy=False)
    mask = target != IGNORE  # (B, T)
    loss = -(logp * mask).sum() / denom
    return loss, {"num_tokens": float(mask.sum())}


def loss_tokens(batch: dict) -> float:
    return float((batch["labels"][:, 1:] != IGNORE).sum())


def tokenize_examples(tokenizer, examples: list[Example], max_length: int,
                      what: str) -> list[Tokenized]:
    items, dropped = [], 0
    for ex in examples:
        t = tokenize_chat(tokenizer, ex.messages, max_length)
        if any(lab != IGNORE for lab in t.labels[1:]):
            items.append(t)
        else:
            dropped += 1
    if dropped:
        log.warning("%s: %d of %d examples have no assistant tokens within max_length=%d and "
                    "were dropped", what, dropped, len(examples), max_length)
    if not items:
        raise ValueError(f"{what}: no example has assistant tokens to train on "
                         "(does the data end with an assistant turn? is max_length too small?)")
    return items


def make_eval_fn(items: list[Tokenized], pad_id: int, batch_size: int, chunk_size: int,
                 device: torch.device):
    """Mean NLL per assistant token over the held-out items (and its exp, perplexity)."""
    def evaluate(model) -> dict[str, float]:
        nll, n = 0.0, 0.0
        for i in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in collate(items[i:i + batch_size], pad_id).items()}
            loss, m = sft_loss(model, batch, 1.0, chunk_size)
            nll += float(loss)
            n += m["num_tokens"]
        mean = nll / max(n, 1.0)
        return {"loss": mean, "ppl": float(torch.tensor(mean).exp())}
    return evaluate


def run_sft(recipe: SFTRecipe, out_dir: str | Path | None = None, resume: bool = False,
            on_step=None) -> LoopResult:
    out = start_run(recipe, out_dir, resume)
    tc, dc = recipe.train, recipe.data
    seed_everything(tc.seed)
    # data first: a bad row should fail before a multi-GB model is loaded
    tokenizer = load_tokenizer(recipe.model)
    pad_id = tokenizer.pad_token_id
    train_items = tokenize_examples(tokenizer, load_sources(dc.train, seed=dc.seed),
                                    dc.max_length, "data.train")
    eval_items = (tokenize_examples(tokenizer, load_sources(dc.eval, seed=dc.seed, key="data.eval"),
                                    dc.max_length, "data.eval") if dc.eval else None)
    model = load_model(recipe.model, recipe.adapter)
    device = next(model.parameters()).device
    trainable, total = count_parameters(model)
    log.info("model %s: %s trainable of %s parameters", recipe.model.path, f"{trainable:,}",
             f"{total:,}")
    units = pack(train_items, dc.max_length) if dc.packing else train_items
    stream = BatchStream(units, tc.batch_size, lambda b: collate(b, pad_id), seed=tc.seed)
    eval_fn = (make_eval_fn(eval_items, pad_id, tc.batch_size, tc.logprob_chunk, device)
               if eval_items else None)

    t0 = time.perf_counter()
    result = train_loop(
        model, stream, lambda m, b, d: sft_loss(m, b, d, tc.logprob_chunk), tc, out,
        weight_fn=loss_tokens, eval_fn=eval_fn, resume=resume, on_step=on_step,
        description="sft")
    log.info("sft: %d steps in %.1fs", result.step, time.perf_counter() - t0)
    if dist.is_main():
        final = out / "final"
        model.save_pretrained(final)
        tokenizer.save_pretrained(final)
    dist.barrier()
    return result
