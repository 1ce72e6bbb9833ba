"""Chat formatting with loss on assistant tokens only, packing, and collation.

The conversation is rendered once with the tokenizer's chat template and tokenised with
character offsets. Assistant turn k spans the characters between

    render(messages[:k], add_generation_prompt=True)   and   render(messages[:k+1])

(trailing whitespace after the end-of-turn token excluded), and a token is trained when
its first character lies inside such a span. This needs the template to be prefix-stable
(rendering fewer messages gives a prefix of rendering more); ChatML/Qwen templates are,
for single-turn data at least, and a template that is not fails with a clear error
rather than training on the wrong tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used for assistant-only masking."""


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken


def render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise TemplateError("the tokenizer has no chat_template; set one or use a chat model")
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) character spans of every assistant turn."""
    text = render(tokenizer, messages)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        # transformers refuses to render an empty chat; a chat that opens with the assistant
        # has nothing before its first turn
        before = render(tokenizer, messages[:k], add_generation_prompt=True) if k else ""
        upto = render(tokenizer, messages[: k + 1]).rstrip()
        if not text.startswith(before) or not text.startswith(upto) or len(upto) < len(before):
            raise TemplateError(
                f"chat template is not prefix-stable at message {k}: rendering the first {k} "
                "messages is not a prefix of rendering them all, so assistant tokens cannot be "
                "located (multi-turn data with a template that rewrites earlier turns?)")
        spans.append((len(before), len(upto)))
    return text, spans


def tokenize_chat(tokenizer, messages, max_length: int | None = None) -> Tokenized:
    """Token ids of the rendered chat and labels that are the ids on assistant tokens only."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    si = 0
    for i, (start, _end) in enumerate(offsets):
        while si < len(spans) and start >= spans[si][1]:
            si += 1
        if si < len(spans) and spans[si][0] <= start < spans[si][1]:
            labels[i] = ids[i]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return Tokenized(ids, labels)


def tokenize_prompt(tokenizer, messages) -> list[int]:
    """Ids of the prompt rendered with the generation prompt (for rollouts and evaluation)."""
    return tokenizer(render(tokenizer, messages, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- batching


def pack(items: list[Tokenized], max_length: int) -> list[list[Tokenized]]:
    """Group examples greedily, in order, into rows of at most max_length tokens."""
    rows: list[list[Tokenized]] = []
    cur: list[Tokenized] = []
    used = 0
    for it in items:
        n = len(it.input_ids)
        if cur and used + n > max_length:
            rows.append(cur)
            cur, used = [], 0
        cur.append(it)
        used += n
    if cur:
        rows.append(cur)
    return rows


def collate(rows: list[list[Tokenized]] | list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row.

    Plain rows get an attention_mask. Packed rows (lists of examples) get position_ids that
    restart at 0 for each example and no attention_mask: transformers then builds a
    block-diagonal causal mask from the position_ids, so packed examples never attend to
    each other. Padding in a packed row forms its own tiny "sequence" with no labels.
    """
    packed = bool(rows) and isinstance(rows[0], list)
    seqs = rows if packed else [[r] for r in rows]
    lengths = [sum(len(t.input_ids) for t in row) for row in seqs]
    T = max(lengths)
    B = len(seqs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(seqs):
        pos = 0
        for t in row:
            n = len(t.input_ids)
            input_ids[b, pos:pos + n] = torch.tensor(t.input_ids)
            labels[b, pos:pos + n] = torch.tensor(t.labels)
            position_ids[b, pos:pos + n] = torch.arange(n)
            pos += n
        attention_mask[b, :pos] = 1
        position_ids[b, pos:] = torch.arange(T - pos)
    batch = {"input_ids": input_ids, "labels": labels}
    if packed:
        batch["position_ids"] = position_ids
    else:
        batch["attention_mask"] = attention_mask
    return batch
