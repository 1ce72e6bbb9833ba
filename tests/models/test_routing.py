"""MoE routing capture and replay on the tiny Qwen3-MoE: shapes and dtypes, replaying a
forward's own routing reproduces it bit for bit, other routes change the output, the gate
weights of replayed experts are the live router's (gradient reaches the router), the
engine's captured routes align with a full forward's, and LoRA-wrapped routers still hook."""

import pytest
import torch

from posttrain.config import AdapterConfig, ConfigError, ModelConfig
from posttrain.models import load_model, load_tokenizer
from posttrain.models.routing import (MoERouting, RouteCollector, expert_sets_differ, find_routers,
                                      route_dtype)
from posttrain.rollout import ENGINES, SamplingParams


@pytest.fixture(scope="module")
def moe_path(_private_cache):
    from posttrain.models.tiny import resolve_builtin
    return resolve_builtin("builtin:tiny-moe")


@pytest.fixture(scope="module")
def moe(moe_path):
    torch.manual_seed(0)
    model = load_model(ModelConfig(path=moe_path)).eval()
    with torch.no_grad():  # sharpen the routers: the untrained ones are near-uniform
        for r in find_routers(model):
            r.weight.normal_(0, 0.5)
    return model


def _ids(B=2, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 1000, (B, T), generator=g)


def test_route_dtype_is_compact():
    assert route_dtype(8) == torch.int8 and route_dtype(128) == torch.int8
    assert route_dtype(129) == torch.int16 and route_dtype(1024) == torch.int16


def test_capture_shapes_dtypes_and_memory(moe):
    r = MoERouting(moe)
    try:
        assert (r.num_layers, r.top_k, r.num_experts, r.dtype) == (4, 2, 8, torch.int8)
        with r.session(), torch.no_grad():
            moe(input_ids=_ids())
            routes = r.take()
        assert routes.shape == (2 * 7, 4, 2) and routes.dtype == torch.int8
        assert int(routes.min()) >= 0 and int(routes.max()) < 8
        assert (routes[..., 0] != routes[..., 1]).all()  # k distinct experts per token and layer
        assert r.bytes_per_token() == 4 * 2  # L x k int8
    finally:
        r.remove()


def test_replaying_own_routes_reproduces_logits_exactly(moe):
    r = MoERouting(moe)
    ids = _ids()
    try:
        with r.session(), torch.no_grad():
            ref = moe(input_ids=ids).logits
            routes = r.take().view(2, 7, 4, 2)
        with r.session(replay=routes), torch.no_grad():
            again = moe(input_ids=ids).logits
            assert torch.equal(r.take().view(2, 7, 4, 2), routes)
        assert torch.equal(again, ref)
        # -1 routes naturally: an all -1 replay is the plain forward too
        with r.session(replay=r.empty(2, 7)), torch.no_grad():
            assert torch.equal(moe(input_ids=ids).logits, ref)
    finally:
        r.remove()


def test_replaying_other_routes_changes_logits_and_is_used(moe):
    r = MoERouting(moe)
    ids = _ids()
    try:
        with r.session(), torch.no_grad():
            ref = moe(input_ids=ids).logits
            routes = r.take().view(2, 7, 4, 2)
        other = (routes.long() + 1) % 8  # a different expert set at every token and layer
        with r.session(replay=other.to(torch.int8)), torch.no_grad():
            out = moe(input_ids=ids).logits
            used = r.take().view(2, 7, 4, 2)
        assert torch.equal(used.long(), other)
        assert expert_sets_differ(used, routes).all()
        assert not torch.allclose(out, ref, atol=1e-4)
        # only token (0, 3) replayed differently: the positions before it are unchanged (causal;
        # to rounding, since each expert's matmul now batches a different set of tokens)
        one = r.empty(2, 7)
        one[0, 3] = other[0, 3]
        with r.session(replay=one), torch.no_grad():
            out = moe(input_ids=ids).logits
        torch.testing.assert_close(out[0, :3], ref[0, :3], rtol=0, atol=1e-6)
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=1e-6)
        assert not torch.allclose(out[0, 3], ref[0, 3], atol=1e-5)
    finally:
        r.remove()


def test_replayed_gate_weights_are_the_live_routers_and_get_gradient(moe):
    """At a replayed token the gate weights are p[e] / sum p[e] of the live router (Qwen3-MoE
    normalises its top-k): checked against a hand computation from the router logits."""
    r = MoERouting(moe)
    router = find_routers(moe)[0]
    h = torch.randn(5, router.weight.shape[1])
    given = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [1, 6]])
    try:
        with r.session(replay=given[:, None, :].expand(5, 4, 2)):
            logits, scores, idx = router(h)
        p = torch.softmax(h @ router.weight.T, dim=-1)
        want = p.gather(-1, given)
        want = want / want.sum(-1, keepdim=True)
        assert torch.equal(idx, given)
        torch.testing.assert_close(scores, want, rtol=1e-6, atol=1e-7)
        scores[:, 0].sum().backward()
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    finally:
        router.weight.grad = None
        r.remove()


def test_replay_shape_is_checked(moe):
    r = MoERouting(moe)
    try:
        with pytest.raises(ValueError, match=r"end in \(L, k\)"):
            with r.session(replay=torch.zeros(2, 7, 3, 2, dtype=torch.int8)):
                pass
        with pytest.raises(ValueError, match="align with the flattened input"):
            with r.session(replay=torch.zeros(2, 6, 4, 2, dtype=torch.int8)), torch.no_grad():
                moe(input_ids=_ids())
    finally:
        r.remove()


def test_dense_model_is_refused_with_a_clear_message(tiny_path):
    with pytest.raises(ConfigError, match="no supported MoE router.*routing_replay=none"):
        MoERouting(load_model(ModelConfig(path=tiny_path)))


def test_engine_routes_align_with_a_full_forward(moe, moe_path):
    """The engine's prefill + cached decode routes (rows leaving the batch, left padding)
    equal, position by position, the routes of one full forward over prompt + completion."""
    tok = load_tokenizer(ModelConfig(path=moe_path))
    r = MoERouting(moe)
    try:
        eng = ENGINES.get("hf")(moe, tok, batch_size=8)
        eng.routing = r
        torch.manual_seed(0)
        ro = eng.generate([[5, 6, 7, 8, 9], [10, 11]], SamplingParams(temperature=1.0, max_new_tokens=10), n=3)
        assert len(ro.routes) == 6
        for i in range(len(ro)):
            P, C = len(ro.prompt_ids[i]), len(ro.completion_ids[i])
            assert ro.routes[i].shape == (P + C - 1, 4, 2) and ro.routes[i].dtype == torch.int8
            with r.session(), torch.no_grad():
                moe(input_ids=torch.tensor([ro.prompt_ids[i] + ro.completion_ids[i]]))
                full = r.take()
            assert not expert_sets_differ(full[:P + C - 1], ro.routes[i]).any(), i
    finally:
        r.remove()


def test_route_collector_aligns_left_padding_and_live_rows():
    c = RouteCollector(2)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    pre = torch.arange(6).view(6, 1, 1).to(torch.int8)  # (B * L_pad, L=1, k=1)
    c.prefill(pre, mask)
    c.decode(torch.tensor([[[10]], [[11]]], dtype=torch.int8), [0, 1])
    c.decode(torch.tensor([[[21]]], dtype=torch.int8), [1])  # row 0 has finished
    rows = c.rows()
    assert rows[0].flatten().tolist() == [1, 2, 10]  # its pad position 0 is dropped
    assert rows[1].flatten().tolist() == [3, 4, 5, 11, 21]


def test_lora_wrapped_routers_are_hooked_and_replay(moe_path):
    model = load_model(ModelConfig(path=moe_path), AdapterConfig(kind="lora", r=4)).eval()
    routers = find_routers(model)
    assert len(routers) == 4
    r = MoERouting(model)
    ids = _ids()
    try:
        with r.session(), torch.no_grad():
            ref = model(input_ids=ids).logits
            routes = r.take().view(2, 7, 4, 2)
        with r.session(replay=routes), torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, ref)
        with r.session(replay=((routes.long() + 1) % 8).to(torch.int8)), torch.no_grad():
            assert not torch.allclose(model(input_ids=ids).logits, ref, atol=1e-4)
    finally:
        r.remove()


def test_replay_holds_through_checkpointed_backward(moe_path):
    """Activation checkpointing re-runs the routers in backward: with the session open the
    recomputed forward replays too, so the gradient equals the un-checkpointed one; routes
    that differ from the natural ones make this a real check."""
    from posttrain.models.load import enable_checkpointing
    ids = _ids()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = load_model(ModelConfig(path=moe_path)).train()
        with torch.no_grad():
            for rt in find_routers(model):
                rt.weight.normal_(0, 0.5)
        if checkpointing:
            enable_checkpointing(model)
        r = MoERouting(model)
        with r.session(), torch.no_grad():
            model(input_ids=ids)
            other = ((r.take().long() + 1) % 8).to(torch.int8)
        with r.session(replay=other):
            model(input_ids=ids).logits.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        r.remove()
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
