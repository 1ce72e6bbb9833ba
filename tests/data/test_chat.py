"""Chat formatting: assistant-only masking, checked by hand on the tiny tokenizer."""
import pytest
import torch
from transformers import AutoTokenizer

from posttrain.data.chat import IGNORE, TemplateError, Tokenized, collate, pack, tokenize_chat


@pytest.fixture(scope="module")
def tok(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


def labelled_text(tok, t):
    return tok.decode([i for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE])


def test_assistant_only_mask_on_a_hand_checked_example(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}]
    t = tokenize_chat(tok, msgs)
    assert tok.decode(t.input_ids) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
                                       "<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
    # exactly the reply and its end-of-turn token are trained; the prompt, the role header and the
    # newline after <|im_end|> are not
    assert labelled_text(tok, t) == "Hello!<|im_end|>"
    trained = [i for i, lab in enumerate(t.labels) if lab != IGNORE]
    assert trained == list(range(trained[0], trained[-1] + 1))          # one contiguous span
    assert t.input_ids[trained[-1]] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(t.input_ids[:trained[0]]).endswith("<|im_start|>assistant\n")
    assert all(t.labels[i] == t.input_ids[i] for i in trained)


def test_every_assistant_turn_is_trained_and_no_user_turn(tok):
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6"}]
    t = tokenize_chat(tok, msgs)
    assert labelled_text(tok, t) == "4<|im_end|>6<|im_end|>"


def test_truncation_and_prompt_only_chats(tok):
    msgs = [{"role": "user", "content": "x " * 50}, {"role": "assistant", "content": "y"}]
    t = tokenize_chat(tok, msgs, max_length=10)
    assert len(t.input_ids) == 10 and all(lab == IGNORE for lab in t.labels)
    t = tokenize_chat(tok, [{"role": "user", "content": "hi"}])
    assert all(lab == IGNORE for lab in t.labels)


def test_a_template_that_is_not_prefix_stable_is_refused(tok):
    class Rewriting:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            # a template that renders the last turn differently from earlier ones
            return "".join(("LAST:" if i == len(messages) - 1 else "") + m["content"]
                           for i, m in enumerate(messages)) + ("GEN" if add_generation_prompt else "")

    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(TemplateError, match="not prefix-stable at message 1"):
        tokenize_chat(Rewriting(), msgs)


def test_packing_and_collation():
    a, b, c = Tokenized([1, 2, 3], [IGNORE, 2, 3]), Tokenized([4, 5], [IGNORE, 5]), Tokenized([6] * 4, [6] * 4)
    rows = pack([a, b, c], max_length=5)
    assert [[len(t.input_ids) for t in r] for r in rows] == [[3, 2], [4]]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 6, 6, 6, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5], [6, 6, 6, 6, IGNORE]]
    assert "attention_mask" not in batch
    plain = collate([a, b], pad_id=0)
    assert plain["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert plain["labels"][1].tolist() == [IGNORE, 5, IGNORE]
