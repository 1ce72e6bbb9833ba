"""Preference optimisation (`posttrain prefer RECIPE`): DPO, ORPO, SimPO on the shared loop.

Each micro-batch holds B pairs as 2B rows (the chosen replies, then the rejected ones) in
one forward pass; a reply's log-prob is the sum of its tokens' log-probs (only the final
reply's tokens: earlier assistant turns of a multi-turn prompt are context), its length
the number of those tokens. The loss is `preference_loss` (posttrain.objectives) averaged
over the pairs of the whole optimizer step, so accumulation is exact.

The reference (objectives whose spec says `needs_reference`, i.e. DPO): by default every
pair is scored once, before training, by the initial policy (which is the reference:
the SFT model, or the base with a fresh adapter whose B = 0), so no second model is kept
in memory. `prefer.reference: live` scores each batch instead, with the adapter disabled
or with a frozen copy of the initial weights.

Held-out evaluation reports the loss, the preference accuracy (the fraction of pairs whose
implicit reward ranks the chosen reply first) and the reward margin.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, PreferRecipe
from ..data.chat import IGNORE, Tokenized, collate, tokenize_chat, tokenize_prompt
from ..data.pairs import Pair, load_pairs
from ..models.load import count_parameters, load_model, load_tokenizer
from ..models.logprobs import model_token_logprobs
from ..models.prefix import batch_token_logprobs
from ..objectives import PREFERENCE_LOSSES, preference_loss
from . import dist
from .loop import BatchStream, LoopResult, seed_everything, start_run, train_loop
from .sft import shift_labels

log = logging.getLogger("posttrain")


@dataclass
class PairItem:
    chosen: Tokenized
    rejected: Tokenized
    ref_chosen: float | None = None
    ref_rejected: float | None = None


def _reply_only(tokenizer, prompt: list[dict], full: Tokenized) -> Tokenized:
    """Labels on the final reply only: positions inside the prompt are ignored."""
    n = len(tokenize_prompt(tokenizer, prompt))
    labels = [IGNORE] * min(n, len(full.labels)) + full.labels[n:]
    return Tokenized(full.input_ids, labels)


def tokenize_pairs(tokenizer, pairs: list[Pair], max_length: int, what: str) -> list[PairItem]:
    items, dropped = [], 0
    for p in pairs:
        c = _reply_only(tokenizer, p.prompt, tokenize_chat(tokenizer, p.prompt + p.chosen, max_length))
        r = _reply_only(tokenizer, p.prompt, tokenize_chat(tokenizer, p.prompt + p.rejected, max_length))
        if any(x != IGNORE for x in c.labels) and any(x != IGNORE for x in r.labels):
            items.append(PairItem(c, r))
        else:
            dropped += 1
    if dropped:
        log.warning("%s: %d of %d pairs have a reply with no tokens within max_length=%d and were dropped",
                    what, dropped, len(pairs), max_length)
    if not items:
        raise ConfigError(f"{what}: no pair fits data.max_length={max_length}")
    return items


def collate_pairs(items: list[PairItem], pad_id: int) -> dict[str, torch.Tensor]:
    batch = collate([it.chosen for it in items] + [it.rejected for it in items], pad_id)
    if items and items[0].ref_chosen is not None:
        batch["ref_chosen"] = torch.tensor([it.ref_chosen for it in items], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([it.ref_rejected for it in items], dtype=torch.float32)
    return batch


def sequence_logps(model, batch: dict, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of reply-token log-probs (2B,), reply lengths (2B,)). A pair's chosen and
    rejected rows share the prompt's forward where the model allows (`models/prefix.py`;
    the same values): the prompt is the tokens before the first labelled one."""
    target = shift_labels(batch["labels"])
    mask = target != IGNORE
    if "attention_mask" in batch:
        rows = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": target,
                "prompt_len": (batch["labels"] != IGNORE).int().argmax(-1)}  # (2B,) first reply token
        logp, _ = batch_token_logprobs(model, rows, chunk_size=chunk_size, with_entropy=False)
    else:
        logp, _ = model_token_logprobs(model, batch["input_ids"], labels=target, chunk_size=chunk_size,
                                       with_entropy=False)
    return (logp * mask).sum(-1), mask.sum(-1).float()


class PreferenceLoss:
    """loss_fn(model, batch, denom) for the loop; `denom` is the step's number of pairs."""

    def __init__(self, recipe: PreferRecipe, reference=None):
        self.name, self.params = recipe.prefer.objective, dict(recipe.prefer.params)
        self.spec = PREFERENCE_LOSSES.get(self.name)
        self.chunk = recipe.train.logprob_chunk
        self.reference = reference  # None (precomputed or not needed), "adapter" or a model

    def ref_logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        if not self.spec.needs_reference:
            return None, None
        if "ref_chosen" in batch:
            return batch["ref_chosen"], batch["ref_rejected"]
        ref = model if self.reference == "adapter" else self.reference
        switch = model.disable_adapter() if self.reference == "adapter" else contextlib.nullcontext()
        with torch.no_grad(), switch:
            logps, _ = sequence_logps(ref, batch, self.chunk)
        B = logps.shape[0] // 2
        return logps[:B], logps[B:]

    def __call__(self, model, batch: dict, denom: float):
        logps, lens = sequence_logps(model, batch, self.chunk)
        B = logps.shape[0] // 2
        ref_c, ref_r = self.ref_logps(model, batch)
        lengths = {"chosen_len": lens[:B], "rejected_len": lens[B:]} if self.spec.needs_lengths else {}
        out = preference_loss(self.name, logps[:B], logps[B:], ref_chosen_logp=ref_c,
                              ref_rejected_logp=ref_r, **lengths, **self.params)
        metrics = {k: float(v) for k, v in out.metrics.items()}
        metrics["num_pairs"] = float(B)
        return out.loss * (B / denom), metrics


@torch.no_grad()
def precompute_reference(model, items: list[PairItem], pad_id: int, batch_size: int, chunk: int) -> None:
    """Score every pair once with `model` (the initial policy = the reference), in place."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(items), batch_size):
            chunk_items = items[i:i + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs(chunk_items, pad_id).items()}
            logps, _ = sequence_logps(model, batch, chunk)
            B = len(chunk_items)
            for it, c, r in zip(chunk_items, logps[:B].tolist(), logps[B:].tolist()):
                it.ref_chosen, it.ref_rejected = c, r
    finally:
        model.train(was)


def make_eval_fn(items: list[PairItem], loss: PreferenceLoss, pad_id: int, batch_size: int, device):
    def evaluate(model) -> dict[str, float]:
        sums: dict[str, float] = {}
        n = 0
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
            value, m = loss(model, batch, float(len(chunk)))
            for k, v in m.items():
                if k != "num_pairs":
                    sums[k] = sums.get(k, 0.0) + v * len(chunk)
            n += len(chunk)
        out = {k: v / n for k, v in sums.items()}
        out["accuracy"] = out.get("rewards/accuracy", float("nan"))
        out["margin"] = out.get("rewards/margin", float("nan"))
        return out
    return evaluate


def run_prefer(recipe: PreferRecipe, out_dir: str | Path | None = None, resume: bool = False,
               on_step=None) -> LoopResult:
    try:
        spec = PREFERENCE_LOSSES.get(recipe.prefer.objective)
    except KeyError as e:
        raise ConfigError(f"prefer.objective: {e}") from None
    out = start_run(recipe, out_dir, resume)
    tc, dc = recipe.train, recipe.data
    seed_everything(tc.seed)
    tokenizer = load_tokenizer(recipe.model)
    pad_id = tokenizer.pad_token_id
    train = tokenize_pairs(tokenizer, load_pairs(dc.train, seed=dc.seed), dc.max_length, "data.train")
    held = (tokenize_pairs(tokenizer, load_pairs(dc.eval, seed=dc.seed, key="data.eval"), dc.max_length,
                           "data.eval") if dc.eval else None)
    model = load_model(recipe.model, recipe.adapter)
    device = next(model.parameters()).device
    trainable, total = count_parameters(model)
    log.info("policy %s: %s trainable of %s parameters", recipe.model.path, f"{trainable:,}", f"{total:,}")
    reference = None
    if spec.needs_reference:
        if recipe.prefer.reference == "precompute":
            t0 = time.perf_counter()
            for items in (train, held or []):
                precompute_reference(model, items, pad_id, tc.batch_size, tc.logprob_chunk)
            log.info("reference log-probs of %d pairs in %.1fs", len(train) + len(held or []),
                     time.perf_counter() - t0)
        elif recipe.adapter.kind != "none":
            reference = "adapter"
        else:
            reference = copy.deepcopy(model).eval()
            for p in reference.parameters():
                p.requires_grad_(False)
    loss = PreferenceLoss(recipe, reference)
    stream = BatchStream(train, tc.batch_size, lambda b: collate_pairs(b, pad_id), seed=tc.seed)
    eval_fn = make_eval_fn(held, loss, pad_id, tc.batch_size, device) if held else None
    t0 = time.perf_counter()
    result = train_loop(model, stream, loss, tc, out, weight_fn=lambda b: float(b["input_ids"].shape[0] // 2),
                        eval_fn=eval_fn, resume=resume, on_step=on_step, description=recipe.prefer.objective)
    log.info("%s: %d steps in %.1fs", recipe.prefer.objective, result.step, time.perf_counter() - t0)
    if dist.is_main():
        model.save_pretrained(out / "final")
        tokenizer.save_pretrained(out / "final")
    dist.barrier()
    return result
