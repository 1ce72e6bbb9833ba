"""The fast decode engine: the same tokens, log-probs and finish reasons as the HF engine
for the same seed (it is the same math with the same random draws), engine log-probs equal
to the trainer's, the cache compaction path, and the fallback for other models."""

import shutil

import pytest
import torch

from posttrain.config import ModelConfig, RolloutConfig
from posttrain.data.chat import tokenize_prompt
from posttrain.data.tasks import generate
from posttrain.models.load import load_model_and_tokenizer
from posttrain.models.logprobs import model_token_logprobs
from posttrain.rollout import ENGINES, FastEngine, HFEngine, SamplingParams
from posttrain.rollout import fast as fast_mod


@pytest.fixture(scope="module")
def tiny(tiny_path):
    model, tok = load_model_and_tokenizer(ModelConfig(path=str(tiny_path)))
    prompts = [tokenize_prompt(tok, e.prompt_messages) for e in generate("structured", "train", 5)]
    return model, tok, prompts


def _both(model, tok, prompts, params, n=1, batch_size=64, seed=0):
    out = []
    for engine in (HFEngine, FastEngine):
        torch.manual_seed(seed)
        out.append(engine(model, tok, batch_size=batch_size).generate(prompts, params, n=n))
        out[-1].rng_after = torch.rand(1).item()  # the stream continues identically too
    return out


def _assert_same(a, b):
    assert a.completion_ids == b.completion_ids
    assert a.finish_reasons == b.finish_reasons
    assert a.texts == b.texts
    for la, lb in zip(a.logprobs, b.logprobs):
        torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=0, atol=2e-5)
    assert a.rng_after == b.rng_after


def test_default_engine_is_fast_and_the_tiny_model_is_supported(tiny):
    model, _, _ = tiny
    assert RolloutConfig().engine == "fast" and ENGINES.get("fast") is FastEngine
    assert FastEngine.supports(model) is None


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, max_new_tokens=20),
    SamplingParams(temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=12),
    SamplingParams(temperature=0, max_new_tokens=12),
])
def test_same_seed_same_tokens_as_the_hf_engine(tiny, params):
    model, tok, prompts = tiny
    hf, fast = _both(model, tok, prompts, params, n=3, batch_size=8)  # 15 rows in two batches
    _assert_same(hf, fast)


def test_rows_that_finish_leave_the_batch_identically(tiny, monkeypatch):
    """Many stop tokens: most rows end early, so the batch shrinks and the cache is compacted."""
    model, tok, prompts = tiny
    calls = []
    real = fast_mod._Decoder.select
    monkeypatch.setattr(fast_mod._Decoder, "select", lambda self, idx: (calls.append(idx.numel()), real(self, idx)))
    params = SamplingParams(temperature=1.0, max_new_tokens=30, stop_token_ids=tuple(range(10, 200)))
    hf, fast = _both(model, tok, prompts, params, n=4, seed=3)
    _assert_same(hf, fast)
    assert "stop" in fast.finish_reasons and len({len(c) for c in fast.completion_ids}) > 3
    assert calls, "the compaction path was not exercised"


def test_engine_logprobs_equal_the_trainer_logprobs(tiny):
    model, tok, prompts = tiny
    torch.manual_seed(1)
    ro = FastEngine(model, tok).generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=16), n=2)
    for i in range(len(ro)):
        ids = torch.tensor([ro.prompt_ids[i] + ro.completion_ids[i]])
        lp, _ = model_token_logprobs(model, ids, with_entropy=False)
        ref = lp[0, len(ro.prompt_ids[i]) - 1:]
        torch.testing.assert_close(torch.tensor(ro.logprobs[i]), ref, rtol=0, atol=1e-4)


def test_weights_are_read_live_at_each_generate(tiny):
    model, tok, prompts = tiny
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    eng = FastEngine(model, tok)
    before = eng.generate(prompts[:2], greedy).logprobs
    w = model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w.mul_(3.0)
    try:
        after = eng.generate(prompts[:2], greedy).logprobs
        ref = HFEngine(model, tok).generate(prompts[:2], greedy).logprobs
    finally:
        with torch.no_grad():
            w.div_(3.0)
    assert after != before
    torch.testing.assert_close(torch.tensor(after[0]), torch.tensor(ref[0]), rtol=0, atol=2e-5)


def test_moe_and_stop_strings_fall_back_to_the_hf_path(tmp_path, tiny):
    model, tok, prompts = tiny
    moe, moe_tok = load_model_and_tokenizer(ModelConfig(path="builtin:tiny-moe"))
    assert "Qwen3MoeForCausalLM" in FastEngine.supports(moe)
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    hf, fast = _both(moe, moe_tok, prompts[:2], params, n=2)
    _assert_same(hf, fast)
    stop = SamplingParams(temperature=1.0, max_new_tokens=8, stop=("}",))
    hf, fast = _both(model, tok, prompts[:2], stop, n=2)
    _assert_same(hf, fast)


def test_the_completions_of_a_prompt_share_one_prefill(tiny, monkeypatch):
    """5 prompts x 3 completions: the prefill forward runs on 5 rows, then decodes 15, and the
    tokens are the HF engine's (which prefills all 15)."""
    model, tok, prompts = tiny
    rows = []
    real = fast_mod._Decoder.forward
    monkeypatch.setattr(fast_mod._Decoder, "forward",
                        lambda self, ids, *a: (rows.append(tuple(ids.shape)), real(self, ids, *a))[1])
    hf, fast = _both(model, tok, prompts, SamplingParams(temperature=1.0, max_new_tokens=6), n=3)
    _assert_same(hf, fast)
    prefill = [r for r in rows if r[1] > 1]
    assert [r[0] for r in prefill] == [5] and rows[1][0] == 15


def _lora_policy(tiny_path, **kw):
    from posttrain.config import AdapterConfig
    model, tok = load_model_and_tokenizer(ModelConfig(path=str(tiny_path)), AdapterConfig(kind="lora", r=4, **kw))
    with torch.no_grad():  # B = 0 at init would make the adapter a no-op
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model, tok


def test_a_lora_policy_decodes_on_the_fast_path_with_the_adapter_applied(tiny, tiny_path, monkeypatch):
    """LoRA layers are merged into the fused weights per generate: the engine's log-probs are
    the adapted model's (scored by the trainer), not the base model's."""
    _, tok, prompts = tiny
    model, _ = _lora_policy(tiny_path)
    assert FastEngine.supports(model) is None
    calls = []
    real = fast_mod._Decoder.forward
    monkeypatch.setattr(fast_mod._Decoder, "forward", lambda self, *a: (calls.append(1), real(self, *a))[1])
    torch.manual_seed(2)
    ro = FastEngine(model, tok).generate(prompts[:3], SamplingParams(temperature=1.0, max_new_tokens=12), n=2)
    assert calls  # not the hf fallback
    diffs = []
    for i in range(len(ro)):
        ids = torch.tensor([ro.prompt_ids[i] + ro.completion_ids[i]])
        lp, _ = model_token_logprobs(model, ids, with_entropy=False)
        ref = lp[0, len(ro.prompt_ids[i]) - 1:]
        torch.testing.assert_close(torch.tensor(ro.logprobs[i]), ref, rtol=0, atol=1e-4)
        with model.disable_adapter():
            base = model_token_logprobs(model, ids, with_entropy=False)[0][0, len(ro.prompt_ids[i]) - 1:]
        diffs.append(float((base - ref).abs().max()))
    assert max(diffs) > 1e-2  # the adapter changes the distribution, and the engine followed it


@pytest.mark.parametrize("kw, why", [({"dropout": 0.1}, "LoRA dropout"), ({"kind": "dora"}, "DoRA")])
def test_lora_variants_the_fast_path_cannot_merge_fall_back(tiny_path, kw, why):
    from posttrain.config import AdapterConfig
    model, _ = load_model_and_tokenizer(ModelConfig(path=str(tiny_path)), AdapterConfig(**{"kind": "lora", "r": 4, **kw}))
    assert why in FastEngine.supports(model)


# ---- rollout.compile: the shape-stable decode step, eager and compiled -------------------


def test_the_compilable_decode_step_computes_the_decoder_forward(tiny):
    """decode_step (slot as a tensor, index_copy_ writes, attention over the bias's n
    slots) gives the logits and the cache writes of _Decoder.forward, uncompiled; what is
    in the slots after the step is not read."""
    model, _, _ = tiny
    w = fast_mod.Qwen3Weights(model)
    g = torch.Generator().manual_seed(0)
    B, slots, slot = 3, 12, 7
    a, b = (fast_mod._Decoder(w, B, slots, "cpu") for _ in range(2))
    for x, y in zip(a.kt + a.v, b.kt + b.v):
        x[...] = torch.randn(x.shape, generator=g)
        y.copy_(x)
    ids, pos = torch.randint(0, 500, (B, 1), generator=g), torch.tensor([[7], [5], [3]])
    bias = torch.zeros(B, slots)
    bias[1, :2] = bias[2, :4] = float("-inf")  # left padding of rows 1 and 2
    with torch.no_grad():
        want = a.forward(ids, pos, slot, bias[:, None, None, :slot + 1])
        got = fast_mod.decode_step(w, b.kt, b.v, b.cos, b.sin, ids, pos, torch.tensor([slot]),
                                   bias[:, :slot + 1].contiguous())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for x, y in zip(a.kt + a.v, b.kt + b.v):
        assert torch.equal(x, y)  # the same new key / value in slot 7, nothing else touched


needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile on CPU needs a C++ compiler")


@needs_compiler
def test_compiled_rollout_matches_the_eager_engine_and_compiles_once(tiny, monkeypatch):
    """rollout.compile: the same tokens as the eager engine for the same seed (rounding aside,
    which the tiny model does not hit here), log-probs to float rounding; batches of other
    sizes and prompt lengths and the cache compaction (down to the 2-row floor) reuse the
    first graph."""
    from torch._dynamo.utils import counters

    model, tok, prompts = tiny
    calls = []
    real = fast_mod._Decoder.select
    monkeypatch.setattr(fast_mod._Decoder, "select", lambda self, idx: (calls.append(idx.numel()), real(self, idx)))
    eager, compiled = FastEngine(model, tok), FastEngine(model, tok, compile=True)
    runs = [(prompts, SamplingParams(temperature=1.0, max_new_tokens=24, stop_token_ids=tuple(range(10, 200))), 4),
            (prompts[:2], SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=10), 3)]
    graphs = []
    for i, (ps, params, n) in enumerate(runs):
        out = []
        for eng in (eager, compiled):
            calls.clear()
            torch.manual_seed(10 + i)
            out.append(eng.generate(ps, params, n=n))
            out[-1].rng_after = torch.rand(1).item()
        _assert_same(*out)
        graphs.append(counters["stats"]["unique_graphs"])
        if i == 0:
            assert calls and min(calls) == 2, f"compaction ran, down to the 2-row floor: {calls}"
    assert graphs[0] >= 1 and graphs[1] == graphs[0], "the second batch (rows, prompt length, sampling) recompiled"


def test_compile_needs_the_fast_engine():
    with pytest.raises(ValueError, match="rollout.compile needs rollout.engine: fast"):
        RolloutConfig(engine="hf", compile=True)
