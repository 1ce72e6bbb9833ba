"""Chunked log-probs/entropies must equal the naive full-logits computation, values and grads."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.models import logprobs as lp_mod
from posttrain.models.logprobs import UnsupportedModelError, model_token_logprobs, token_logprobs

IGNORE = -100


def naive(hidden, weight, labels, bias=None, temperature=1.0):
    """Reference: full (B, T, V) log-softmax; returns (logp, entropy), 0 at ignored positions."""
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    logsm = torch.log_softmax(z / temperature, dim=-1)  # (B, T, V)
    keep = labels != IGNORE
    logp = logsm.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp * keep, entropy * keep


@st.composite
def cases(draw):
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    return dict(
        b=b, t=t, h=draw(st.integers(1, 8)), v=draw(st.integers(2, 40)),
        # chunk 1, chunks that do not divide B*T, and chunks larger than B*T
        chunk=draw(st.one_of(st.just(1), st.integers(1, b * t + 3))),
        temperature=draw(st.sampled_from([1.0, 0.7, 2.5])),
        bias=draw(st.booleans()),
        ignore_frac=draw(st.sampled_from([0.0, 0.3, 1.0])),
        seed=draw(st.integers(0, 2**16)),
    )


def make(c, dtype=torch.float32):
    g = torch.Generator().manual_seed(c["seed"])
    hidden = torch.randn(c["b"], c["t"], c["h"], generator=g, dtype=dtype)
    weight = torch.randn(c["v"], c["h"], generator=g, dtype=dtype)
    bias = torch.randn(c["v"], generator=g, dtype=dtype) if c["bias"] else None
    labels = torch.randint(0, c["v"], (c["b"], c["t"]), generator=g)
    labels[torch.rand(c["b"], c["t"], generator=g) < c["ignore_frac"]] = IGNORE
    return hidden, weight, bias, labels


@settings(max_examples=30, deadline=None)
@given(cases())
def test_values_match_naive(c):
    hidden, weight, bias, labels = make(c)
    logp, ent = token_logprobs(hidden, weight, labels, bias=bias, chunk_size=c["chunk"], temperature=c["temperature"])
    ref_logp, ref_ent = naive(hidden, weight, labels, bias, c["temperature"])
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == labels.shape
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    ignored = labels == IGNORE
    assert (logp[ignored] == 0).all() and (ent[ignored] == 0).all()


@settings(max_examples=30, deadline=None)
@given(cases())
def test_gradients_match_naive(c):
    hidden, weight, bias, labels = make(c)
    g = torch.Generator().manual_seed(c["seed"] + 1)
    c_logp, c_ent = torch.randn(labels.shape, generator=g), torch.randn(labels.shape, generator=g)
    params = [hidden, weight] + ([bias] if bias is not None else [])

    def grads(fn, dtype):
        xs = [p.detach().to(dtype).requires_grad_() for p in params]
        b = xs[2] if bias is not None else None
        logp, ent = fn(xs[0], xs[1], b)
        loss = (c_logp.to(dtype) * logp + c_ent.to(dtype) * ent).sum()
        return torch.autograd.grad(loss, xs)

    ours = grads(lambda h, w, b: token_logprobs(h, w, labels, bias=b, chunk_size=c["chunk"],
                                                temperature=c["temperature"]), torch.float32)
    # Reference in float64 so the comparison measures our error, not the reference's.
    ref = grads(lambda h, w, b: naive(h, w, labels, b, c["temperature"]), torch.float64)
    for ours_g, ref_g, p in zip(ours, ref, params):
        assert ours_g.dtype == p.dtype
        torch.testing.assert_close(ours_g, ref_g.float(), atol=1e-5, rtol=1e-5)
    # Ignored rows get exactly zero gradient.
    assert (ours[0][labels == IGNORE] == 0).all()


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 4, IGNORE], [2, IGNORE, 1]])

    def fn(h, w, b):
        return token_logprobs(h, w, labels, bias=b, chunk_size=2, temperature=0.8)

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_hand_worked_value_and_temperature():
    # One row, logits z = [0, ln 3]: p = [1/4, 3/4].
    hidden = torch.ones(1, 1, 1)
    weight = torch.tensor([[0.0], [math.log(3.0)]])
    labels = torch.tensor([[1]])
    logp, ent = token_logprobs(hidden, weight, labels)
    assert logp.item() == pytest.approx(math.log(3 / 4), abs=1e-6)
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    # Temperature 2 halves the logits: p = [1, sqrt 3] / (1 + sqrt 3).
    logp, ent = token_logprobs(hidden, weight, labels, temperature=2.0)
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    assert logp.item() == pytest.approx(math.log(p1), abs=1e-6)
    assert ent.item() == pytest.approx(-(p1 * math.log(p1) + (1 - p1) * math.log(1 - p1)), abs=1e-6)


def test_all_ignored_gives_zeros_and_zero_grad():
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(7, 4, requires_grad=True)
    labels = torch.full((2, 3), IGNORE)
    logp, ent = token_logprobs(hidden, weight, labels)
    assert (logp == 0).all() and (ent == 0).all()
    (logp.sum() + ent.sum()).backward()
    assert (hidden.grad == 0).all() and (weight.grad == 0).all()


def test_one_output_unused_and_without_entropy():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 5, 6, generator=g, requires_grad=True)
    weight = torch.randn(11, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    ref_logp, ref_ent = naive(hidden, weight, labels)
    for pick in (0, 1):  # backward through logp only, then entropy only
        out = token_logprobs(hidden, weight, labels, chunk_size=3)[pick]
        ours = torch.autograd.grad(out.sum(), (hidden, weight))
        ref = torch.autograd.grad((ref_logp, ref_ent)[pick].sum(), (hidden, weight), retain_graph=True)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    logp, ent = token_logprobs(hidden, weight, labels, chunk_size=3, with_entropy=False)
    assert ent is None
    ours = torch.autograd.grad(logp.sum(), (hidden, weight))
    ref = torch.autograd.grad(ref_logp.sum(), (hidden, weight))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_frozen_weight_gets_no_grad_and_hidden_grad_still_right():
    hidden = torch.randn(2, 4, 6, requires_grad=True)
    weight = torch.randn(9, 6)  # e.g. a frozen head under LoRA
    labels = torch.randint(0, 9, (2, 4))
    logp, ent = token_logprobs(hidden, weight, labels, chunk_size=3)
    (gh,) = torch.autograd.grad((logp + 0.1 * ent).sum(), hidden)
    ref_logp, ref_ent = naive(hidden, weight, labels)
    (rh,) = torch.autograd.grad((ref_logp + 0.1 * ref_ent).sum(), hidden)
    torch.testing.assert_close(gh, rh, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vocab_block", [lp_mod._VOCAB_BLOCK, 7])
def test_bf16_inputs(monkeypatch, vocab_block):
    # A small vocab block exercises the blocked fp32 upcast of a bf16 weight (with a remainder).
    monkeypatch.setattr(lp_mod, "_VOCAB_BLOCK", vocab_block)
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 6, 16, generator=g)
    weight = torch.randn(50, 16, generator=g) / 4
    bias = torch.randn(50, generator=g)
    labels = torch.randint(0, 50, (2, 6), generator=g)
    labels[1, :2] = IGNORE
    h16, w16, b16 = (x.bfloat16().requires_grad_() for x in (hidden, weight, bias))
    logp, ent = token_logprobs(h16, w16, labels, bias=b16, chunk_size=5)
    assert logp.dtype == ent.dtype == torch.float32
    # The math is fp32 on the bf16 values: equal to naive fp32 on the upcast inputs...
    up = [x.detach().float().requires_grad_() for x in (h16, w16, b16)]
    ref_logp, ref_ent = naive(up[0], up[1], labels, up[2])
    torch.testing.assert_close(logp, ref_logp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ent, ref_ent, atol=1e-4, rtol=1e-4)
    # ...and close to fp32 on the original inputs within bf16 rounding of the inputs.
    full_logp, full_ent = naive(hidden, weight, labels, bias)
    torch.testing.assert_close(logp, full_logp, atol=0.1, rtol=0.05)
    torch.testing.assert_close(ent, full_ent, atol=0.1, rtol=0.05)
    ours = torch.autograd.grad((logp + 0.5 * ent).sum(), (h16, w16, b16))
    ref = torch.autograd.grad((ref_logp + 0.5 * ref_ent).sum(), up)
    for a, b in zip(ours, ref):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b, atol=2e-2, rtol=2e-2)  # bf16 output rounding


def test_bad_inputs_raise():
    hidden, weight = torch.randn(1, 2, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels must be in"):
        token_logprobs(hidden, weight, torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(hidden, weight, torch.tensor([[0, 1]]), chunk_size=0)
    with pytest.raises(ValueError, match="weight must be"):
        token_logprobs(hidden, torch.randn(4, 5), torch.tensor([[0, 1]]))


# ---- model_token_logprobs on a tiny random Qwen3 --------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, max_position_embeddings=128, tie_word_embeddings=False,
    )
    return Qwen3ForCausalLM(cfg).eval()


def padded_batch(left: bool):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, 300, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in ((1, 3), (2, 6)):
        if left:
            mask[row, :n_pad] = 0
        else:
            mask[row, -n_pad:] = 0
    return ids, mask


def reference_from_logits(logits, ids, mask, temperature=1.0):
    logsm = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    logp = logsm.gather(-1, ids[:, 1:, None]).squeeze(-1)
    ent = -(logsm.exp() * logsm).sum(-1)
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    return logp, ent, valid


@pytest.mark.parametrize("left", [False, True])
def test_model_matches_full_logits(tiny_qwen3, left):
    ids, mask = padded_batch(left)
    logp, ent = model_token_logprobs(tiny_qwen3, ids, mask, chunk_size=7, temperature=0.9)
    assert logp.shape == ent.shape == (3, 9)
    with torch.no_grad():
        logits = tiny_qwen3(input_ids=ids, attention_mask=mask).logits
    ref_logp, ref_ent, valid = reference_from_logits(logits, ids, mask, temperature=0.9)
    torch.testing.assert_close(logp[valid], ref_logp[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[valid], ref_ent[valid], atol=1e-5, rtol=1e-5)
    assert (logp[~valid] == 0).all() and (ent[~valid] == 0).all()


def test_model_with_aligned_labels(tiny_qwen3):
    ids, mask = padded_batch(left=False)
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)  # the caller masks pad targets
    labels[0, :4] = IGNORE  # e.g. prompt tokens
    logp, ent = model_token_logprobs(tiny_qwen3, ids, mask, labels=labels)
    assert logp.shape == ent.shape == (3, 10)
    shifted_logp, shifted_ent = model_token_logprobs(tiny_qwen3, ids, mask)
    keep = (labels[:, :-1] != IGNORE) & (mask[:, :-1] == 1)
    torch.testing.assert_close(logp[:, :-1][keep], shifted_logp[keep])
    assert (logp[:, :-1][~keep] == 0).all() and (logp[:, -1] == 0).all()


def test_peft_lora_model_values_and_grads(tiny_qwen3):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the adapter changes the outputs.
    model = get_peft_model(
        tiny_qwen3, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    try:
        ids, mask = padded_batch(left=True)
        logp, ent = model_token_logprobs(model, ids, mask, chunk_size=5)
        logits = model(input_ids=ids, attention_mask=mask).logits
        ref_logp, ref_ent, valid = reference_from_logits(logits, ids, mask)
        torch.testing.assert_close(logp[valid], ref_logp[valid], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent[valid], ref_ent[valid], atol=1e-5, rtol=1e-5)
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
        assert lora and all(p.requires_grad for p in lora)
        ours = torch.autograd.grad((logp + 0.1 * ent)[valid].sum(), lora)
        ref = torch.autograd.grad((ref_logp + 0.1 * ref_ent)[valid].sum(), lora)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    finally:
        model.unload()  # restore the shared fixture's plain modules


def test_lora_on_lm_head_is_refused():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, intermediate_size=32)
    model = get_peft_model(Qwen3ForCausalLM(cfg), LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(UnsupportedModelError, match="unmerged PEFT adapter"):
        model_token_logprobs(model, torch.randint(0, 50, (1, 4)))


def test_default_chunk_is_sized_from_the_memory_budget_and_changes_nothing():
    from posttrain.models.logprobs import CHUNK_BUDGET_BYTES, auto_chunk_rows

    assert auto_chunk_rows(151_936) == CHUNK_BUDGET_BYTES // (151_936 * 4) == 165
    assert auto_chunk_rows(10**12) == 1  # never 0 rows
    g = torch.Generator().manual_seed(0)
    V = 80_000  # fp64: the default chunk is 157 rows, so 3 x 100 rows take two chunks
    hidden = torch.randn(3, 100, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (3, 100), generator=g)
    assert auto_chunk_rows(V, itemsize=8) == 157
    res = []
    for chunk in (None, 300, 64):
        logp, ent = token_logprobs(hidden, weight, labels, chunk_size=chunk)
        gh, gw = torch.autograd.grad((logp.sum() + 0.3 * ent.sum()), (hidden, weight))
        res.append((logp, ent, gh, gw))
    for other in res[1:]:
        for a, b in zip(res[0], other):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
