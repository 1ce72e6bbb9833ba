"""The embedded tiny model: deterministic offline build, Qwen3 conventions, chat template."""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3MoeConfig

from posttrain.models import tiny
from posttrain.models.load import count_parameters
from posttrain.models.tiny import SPECIAL_TOKENS, build_tiny, resolve_builtin


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "dense", moe=False, seed=0)


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "moe", moe=True, seed=0)


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir)


# --------------------------------------------------------------------------- build


def test_build_is_byte_identical_and_leaves_global_rng_alone(tiny_dir, tmp_path):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny(tmp_path / "again", moe=False, seed=0)
    assert torch.equal(torch.rand(3), expected_draw)  # build forks the RNG, caller unaffected
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert _sha(again / name) == _sha(tiny_dir / name), name


def test_build_into_existing_dir_replaces_it_and_leaves_no_temp(tmp_path):
    corpus = ["a small corpus, just for this test: 1 + 2 = 3"] * 4
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    build_tiny(out, corpus=corpus)
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_different_seed_gives_different_weights(tiny_dir, tmp_path):
    other = build_tiny(tmp_path / "s1", seed=1)
    assert _sha(other / "tokenizer.json") == _sha(tiny_dir / "tokenizer.json")
    assert _sha(other / "model.safetensors") != _sha(tiny_dir / "model.safetensors")


def test_publish_tolerates_losing_a_race(tmp_path):
    """Two processes build builtin:tiny at once: the second rename fails, the first wins."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    (out / "winner").write_text("1")
    tmp.mkdir()
    (tmp / "loser").write_text("2")
    assert tiny._publish(tmp, out, overwrite=False) == out
    assert (out / "winner").exists() and not tmp.exists()


def test_resolve_builtin_caches_under_version_tag_and_source_hash(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "default_corpus",
                        lambda: calls.append(1) or ["tiny corpus 1 2 3"] * 3)
    first = resolve_builtin("builtin:tiny")
    assert first == str(tmp_path / f"tiny-v1-{tiny._source_fingerprint()}")
    assert len(tiny._source_fingerprint()) == 10
    assert resolve_builtin("builtin:tiny") == first and len(calls) == 1  # built once
    assert resolve_builtin("Qwen/Qwen3-4B-Instruct-2507") == "Qwen/Qwen3-4B-Instruct-2507"
    with pytest.raises(ValueError, match="builtin:tiny, builtin:tiny-moe"):
        resolve_builtin("builtin:huge")


# --------------------------------------------------------------------------- loading, sizes


def test_loads_offline_with_auto_classes(tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert isinstance(model.config, Qwen3Config)
    assert model.dtype == torch.float32
    assert model.config.vocab_size % tiny.VOCAB_MULTIPLE == 0
    assert model.config.vocab_size >= len(tok)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    gen = model.generation_config
    assert set(gen.eos_token_id) == {tok.convert_tokens_to_ids("<|im_end|>"),
                                     tok.convert_tokens_to_ids("<|endoftext|>")}
    assert gen.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_parameter_count_in_range(which, tiny_dir, moe_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir if which == "dense" else moe_dir)
    trainable, total = count_parameters(model)
    assert trainable == total
    assert 300_000 <= total <= 3_000_000, total


def test_tokenizer_follows_qwen3_conventions(tok):
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.mask_token == "<|mask|>"
    assert tok.bos_token is None
    # no BOS (or anything else) is added around plain text
    plain = tok.encode("hello", add_special_tokens=False)
    assert tok("hello", add_special_tokens=True)["input_ids"] == plain


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_special_token_is_one_id(tok, token):
    ids = tok.encode(token, add_special_tokens=False)
    assert ids == [SPECIAL_TOKENS.index(token)]
    # also inside running text, with no space around it
    ids = tok.encode(f"ab{token}cd", add_special_tokens=False)
    assert ids.count(SPECIAL_TOKENS.index(token)) == 1


def test_common_words_and_digits(tok):
    pieces = tok.convert_ids_to_tokens(tok.encode(" the answer is 406", add_special_tokens=False))
    assert "Ġanswer" in pieces  # merged from the corpus / scaffold text
    assert pieces[-3:] == ["4", "0", "6"]  # digits stay one per token


# --------------------------------------------------------------------------- chat template

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Convert these fields to JSON:\n- a: 1"},
    {"role": "assistant", "content": '{"a": 1}'},
]


def test_chat_template_renders_chatml(tok):
    expected = ("<|im_start|>system\nYou are terse.<|im_end|>\n"
                "<|im_start|>user\nConvert these fields to JSON:\n- a: 1<|im_end|>\n"
                '<|im_start|>assistant\n{"a": 1}<|im_end|>\n')
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == expected
    assert (tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
            == expected + "<|im_start|>assistant\n")
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == expected[: expected.index('{"a"')]


_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                           "content": st.text(max_size=30)}),
    min_size=2, max_size=5)


@settings(max_examples=40, deadline=None)
@given(messages=_messages)
def test_chat_template_is_prefix_stable(tok, messages):
    def render(msgs, gen=False):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    # transformers 5 refuses to render an empty conversation, so k starts at 1.
    for k in range(1, len(messages)):
        longer = render(messages[: k + 1])
        assert longer.startswith(render(messages[:k]))
        if messages[k]["role"] == "assistant":
            assert longer.startswith(render(messages[:k], gen=True))


# --------------------------------------------------------------------------- text round trip


def test_unicode_and_emoji_round_trip_with_exact_offsets(tok):
    text = "Grüße, 世界! 🤖👍🏽 ∑x² = 3.14\n\tnull ünïcödé\u200b<think>ok</think>"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert tok.decode(enc["input_ids"]) == text
    starts = [s for s, _ in enc["offset_mapping"]]
    assert starts == sorted(starts) and starts[0] == 0
    assert enc["offset_mapping"][-1][1] == len(text)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60))
def test_any_text_round_trips(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


# --------------------------------------------------------------------------- forward


def test_forward_gives_logits_b_t_v(tok, model):
    texts = ["<|im_start|>user\nHi<|im_end|>\n", "#### 42"]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch)
    b, t = batch["input_ids"].shape
    assert out.logits.shape == (b, t, model.config.vocab_size)
    assert torch.isfinite(out.logits).all()


def test_moe_model_is_qwen3_moe_and_runs(moe_dir):
    model = AutoModelForCausalLM.from_pretrained(moe_dir)
    cfg = model.config
    assert isinstance(cfg, Qwen3MoeConfig)
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk_prob) == (8, 2, True)
    ids = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 7, cfg.vocab_size) and torch.isfinite(logits).all()
