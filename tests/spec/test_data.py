"""Draft data: prompt selection and the random blocks of a batch."""
import torch

from posttrain.data.example import Example
from posttrain.spec.data import (DraftSequence, collate_blocks, count_blocks, prompt_hash,
                                 prompt_text, select_prompts)


def _ex(text):
    return Example(messages=[{"role": "user", "content": text}, {"role": "assistant", "content": "x"}])


def test_prompts_are_deduplicated_and_eval_prompts_subtracted(tokenizer):
    exs = [_ex("a"), _ex("b"), _ex("a"), _ex("c"), _ex("b")]
    held = {prompt_hash(prompt_text(tokenizer, _ex("c").prompt_messages))}
    got = select_prompts(tokenizer, exs, held)
    assert got == [prompt_text(tokenizer, _ex(t).prompt_messages) for t in ("a", "b")]
    assert got[0].endswith("<|im_start|>assistant\n")  # generation prompt, no reply


def test_blocks_lie_inside_the_response():
    torch.manual_seed(0)
    items = [DraftSequence(list(range(10, 30)), prompt_len=12),  # response = positions 12..19
             DraftSequence(list(range(40, 46)), prompt_len=4),   # 2 tokens: anchors 4 only
             DraftSequence(list(range(50, 55)), prompt_len=5)]   # no response: no blocks
    for _ in range(20):
        b = collate_blocks(items, pad_id=0, block_size=4, anchors=3, max_length=64)
        a, m = b["anchors"], b["block_mask"]
        assert b["input_ids"].shape == (3, 20) and b["attention_mask"][1].sum() == 6
        assert ((a[0] >= 12) & (a[0] <= 18)).all() and len(set(a[0].tolist())) == 3
        assert torch.equal(b["first_tokens"][0], 10 + a[0])
        # position a + k (k = 1..3) is real iff a + k < 20
        assert torch.equal(m[0], (a[0, :, None] + torch.arange(1, 4)) < 20)
        assert a[1, 0] == 4 and m[1, 0].tolist() == [True, False, False] and not m[1, 1:].any()
        assert not m[2].any()
        assert count_blocks(b) == 4.0
