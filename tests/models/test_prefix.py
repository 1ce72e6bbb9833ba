"""The shared-prompt forward: the same log-probs, entropies and gradients as the plain
forward of every row (it is the same math with the prompt's work done once), with each
distinct prompt run once, and the plain path wherever it does not apply."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.models import prefix as prefix_mod
from posttrain.models.load import enable_checkpointing
from posttrain.models.logprobs import model_token_logprobs
from posttrain.models.prefix import batch_token_logprobs, group_prompts, shared_prefix_logprobs
from posttrain.train.rl_batch import build_batch


@pytest.fixture(scope="module")
def model64(tiny_path):
    """The tiny model in fp64, in training mode (the update's mode)."""
    m = AutoModelForCausalLM.from_pretrained(str(tiny_path), dtype=torch.float64)
    return m.train()


def _batch(prompt_lens=(7, 12, 3), group=3, max_completion=9, seed=0):
    """Groups of `group` rows per prompt, completions of 0 .. max_completion - 1 tokens."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(6, 900) for _ in range(n)] for n in prompt_lens]
    P, C = [], []
    for p in prompts:
        for _ in range(group):
            P.append(p)
            C.append([rng.randrange(6, 900) for _ in range(rng.randrange(0, max_completion))])
    C[0] = [7] * (max_completion + 3)  # the longest row is a completion, not a prompt
    b = build_batch(P, C, [[0.0] * len(c) for c in C], torch.zeros(len(P)), [True] * len(P), pad_id=0)
    return b


def _run(model, fn):
    """(logp, entropy, {param: grad}) of a loss that weighs every position differently."""
    model.zero_grad(set_to_none=True)
    logp, ent = fn()
    g = torch.Generator().manual_seed(1)
    w_l, w_e = torch.randn(logp.shape, generator=g, dtype=logp.dtype), torch.rand(ent.shape, generator=g, dtype=ent.dtype)
    ((logp * w_l).sum() + (ent * w_e).sum()).backward()
    return logp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _plain(model, b, **kw):
    return model_token_logprobs(model, b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"], **kw)


def _assert_equal_runs(a, s):
    torch.testing.assert_close(s[0], a[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(s[1], a[1], rtol=0, atol=1e-9)
    assert set(s[2]) == set(a[2]) and len(a[2]) > 0
    for name, g in a[2].items():
        # RMSNorm computes in fp32 on both paths (as Qwen3RMSNorm does), so gradients agree to
        # fp32 rounding, not fp64's
        scale = g.abs().max().item()
        torch.testing.assert_close(s[2][name], g, rtol=0, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_the_plain_forward(model64, temperature):
    b = _batch()
    kw = dict(temperature=temperature, with_entropy=True)
    plain = _run(model64, lambda: _plain(model64, b, **kw))
    shared = _run(model64, lambda: shared_prefix_logprobs(
        model64, b["input_ids"], b["prompt_len"], b["attention_mask"], b["labels"], **kw))
    assert (plain[0] != 0).sum() == b["mask"].sum()  # every completion token is scored
    _assert_equal_runs(plain, shared)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_path):
    b = _batch(prompt_lens=(5, 9), group=4)
    m = AutoModelForCausalLM.from_pretrained(str(tiny_path), dtype=torch.float64).train()
    plain = _run(m, lambda: _plain(m, b))
    enable_checkpointing(m)
    shared = _run(m, lambda: shared_prefix_logprobs(m, b["input_ids"], b["prompt_len"], b["attention_mask"],
                                                    b["labels"]))
    _assert_equal_runs(plain, shared)


def test_each_distinct_prompt_runs_once_and_padding_costs_nothing(model64, monkeypatch):
    """3 prompts x 4 completions: the layers see each distinct prompt's tokens once (not 4
    times) plus the completions' real tokens, no padding."""
    b = _batch(prompt_lens=(6, 11, 4), group=4, max_completion=5)
    rows = []
    real = prefix_mod._layer
    monkeypatch.setattr(prefix_mod, "_layer", lambda w, x, *a: (rows.append((x.shape[0], a[5])), real(w, x, *a))[1])
    shared_prefix_logprobs(model64, b["input_ids"], b["prompt_len"], b["attention_mask"], b["labels"])
    assert len(rows) == model64.config.num_hidden_layers
    completion_tokens = int(b["attention_mask"].sum() - b["prompt_len"].sum())
    assert rows[0][0] == (6 + 11 + 4) + completion_tokens
    pack = rows[0][1]
    assert (pack.U, pack.Lp, pack.N) == (3, 11, 12)


def test_group_prompts():
    ids = torch.tensor([[1, 2, 9, 9], [1, 2, 8, 0], [3, 9, 9, 9], [1, 2, 3, 0]])
    prompts, owner = group_prompts(ids, torch.tensor([2, 2, 1, 3]))
    assert prompts == [[1, 2], [3], [1, 2, 3]] and owner == [0, 0, 1, 2]


def test_dispatch_uses_the_plain_forward_where_sharing_does_not_apply(model64, monkeypatch):
    calls = []
    real = prefix_mod.shared_prefix_logprobs
    monkeypatch.setattr(prefix_mod, "shared_prefix_logprobs", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    grouped, unique = _batch(group=2), _batch(group=1)
    batch_token_logprobs(model64, grouped)
    assert calls == [1]
    batch_token_logprobs(model64, grouped, share_prompts=False)
    batch_token_logprobs(model64, unique)  # no two rows share a prompt: nothing to save
    batch_token_logprobs(model64, {k: v for k, v in grouped.items() if k != "prompt_len"})
    assert calls == [1]
    with torch.no_grad():
        a = batch_token_logprobs(model64, grouped)
        b = batch_token_logprobs(model64, grouped, share_prompts=False)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-9)


def test_unsupported_models_are_refused_by_name(tiny_path):
    from posttrain.config import ModelConfig
    from posttrain.models.load import load_model_and_tokenizer
    from posttrain.models.tiny import resolve_builtin

    moe, _ = load_model_and_tokenizer(ModelConfig(path=resolve_builtin("builtin:tiny-moe")))
    b = _batch(group=2)
    with pytest.raises(ValueError, match="not a dense Qwen3ForCausalLM"):
        shared_prefix_logprobs(moe, b["input_ids"], b["prompt_len"], b["attention_mask"], b["labels"])
    with torch.no_grad():  # the dispatcher takes the plain path for it instead
        lp, _ = batch_token_logprobs(moe, b)
        torch.testing.assert_close(lp, _plain(moe, b)[0])


def test_a_lora_model_shares_prompts_with_the_same_values_and_adapter_gradients(tiny_path):
    """LoRA merged per forward (W0 + s B A): the same log-probs as PEFT's own forward, the
    same gradients for A and B, and the base model's values under disable_adapter()."""
    from posttrain.config import AdapterConfig, ModelConfig
    from posttrain.models.load import load_model_and_tokenizer

    m, _ = load_model_and_tokenizer(ModelConfig(path=str(tiny_path)), AdapterConfig(kind="lora", r=4))
    m = m.double().train()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    b = _batch(prompt_lens=(5, 9), group=3)
    plain = _run(m, lambda: _plain(m, b))
    shared = _run(m, lambda: shared_prefix_logprobs(m, b["input_ids"], b["prompt_len"], b["attention_mask"],
                                                    b["labels"]))
    assert shared[2] and all("lora_" in name for name in shared[2])  # only the adapter trains
    _assert_equal_runs(plain, shared)
    with torch.no_grad(), m.disable_adapter():
        base = batch_token_logprobs(m, b)[0]
        torch.testing.assert_close(base, _plain(m, b)[0], rtol=0, atol=1e-9)
    assert (base - plain[0]).abs().max() > 1e-3


def test_an_empty_prompt_takes_the_plain_path(model64, monkeypatch):
    calls = []
    real = prefix_mod.shared_prefix_logprobs
    monkeypatch.setattr(prefix_mod, "shared_prefix_logprobs", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    b = _batch(group=2)
    b["prompt_len"] = b["prompt_len"].clone()
    b["prompt_len"][:2] = 0  # e.g. a preference row whose first token is already a reply token
    with torch.no_grad():
        batch_token_logprobs(model64, b)
    assert calls == []
    with pytest.raises(ValueError, match="empty prompt"):
        real(model64, b["input_ids"], b["prompt_len"], b["attention_mask"], b["labels"])
