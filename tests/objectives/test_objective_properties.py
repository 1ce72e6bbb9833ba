"""Properties every objective must keep, on random batches (hypothesis):

- padding never changes a loss, and padding positions get exactly zero gradient;
- micro-batches with global normalisers sum to the full batch, loss and gradient;
- clipped tokens get zero gradient, unclipped ones do not;
- SAPO's gradient at r = 1 is the plain policy gradient for any temperature;
- gspo_token equals gspo in value and gradient for per-sequence advantages.
"""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.objectives import (AGGREGATIONS, POLICY_LOSSES, entropy_threshold,
                                  objective_normalisers, policy_loss)

F64 = torch.float64
FAST = settings(max_examples=8, deadline=None)
MAX_LEN = 9  # the "generation cap" for the constant aggregation


def make_batch(seed, B, T, log_ratio_scale=0.3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = max(int(lengths[0]), 1)  # at least one valid token in the batch
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp = -torch.rand(B, T, generator=g, dtype=F64) * 3
    old = logp + torch.randn(B, T, generator=g, dtype=F64) * log_ratio_scale
    return {
        "logp": logp, "old_logp": old, "mask": mask,
        "advantages": torch.randn(B, generator=g, dtype=F64),
        "rollout_logp": old + torch.randn(B, T, generator=g, dtype=F64) * 0.2,
        "ref_logp": logp + torch.randn(B, T, generator=g, dtype=F64) * 0.2,
        "entropy": torch.rand(B, T, generator=g, dtype=F64) * 2,
    }


def modifiers(name, agg, full_mask=None, entropy=None, heavy=False):
    """Parameters for `name` with aggregation `agg`; `heavy` turns every modifier on."""
    kw = {"aggregation": agg}
    if agg == "constant":
        kw["max_completion_len"] = MAX_LEN
    if heavy:
        kw.update(beta=0.05, kl_estimator="k3", entropy_coef=0.01, mismatch="token_truncate")
        if entropy is not None:
            kw["entropy_threshold"] = entropy_threshold(entropy, full_mask, 0.5)
        else:
            kw["top_entropy_rho"] = 0.5
    elif name == "reinforce_is":
        kw["mismatch"] = "token"
    return kw


def run(name, batch, **kw):
    logp = batch["logp"].clone().requires_grad_()
    ent = batch["entropy"].clone().requires_grad_()
    rest = {k: v for k, v in batch.items() if k not in ("logp", "entropy")}
    out = policy_loss(name, logp, entropy=ent, **rest, **kw)
    g_logp, g_ent = torch.autograd.grad(out.loss, [logp, ent], allow_unused=True)
    return out.loss.detach(), g_logp, (torch.zeros_like(ent) if g_ent is None else g_ent)


COMBOS = list(itertools.product(POLICY_LOSSES.names(), AGGREGATIONS.names(), [False, True]))


@pytest.mark.parametrize("name,agg,heavy", COMBOS)
@FAST
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 4), T=st.integers(1, 6), pad=st.integers(1, 3))
def test_padding_changes_nothing(name, agg, heavy, seed, B, T, pad):
    batch = make_batch(seed, B, T)
    kw = modifiers(name, agg, heavy=heavy)
    loss, g, ge = run(name, batch, **kw)

    garbage = {"logp": float("nan"), "old_logp": float("inf"), "rollout_logp": -float("inf"),
               "ref_logp": float("nan"), "entropy": 1e9}
    padded = {k: torch.cat([v, torch.full((B, pad), garbage[k], dtype=v.dtype)], dim=1)
              for k, v in batch.items() if k in garbage}
    padded["mask"] = torch.cat([batch["mask"], torch.zeros(B, pad, dtype=torch.bool)], dim=1)
    padded["advantages"] = batch["advantages"]
    loss_p, g_p, ge_p = run(name, padded, **kw)

    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(g_p[:, :T], g)
    torch.testing.assert_close(ge_p[:, :T], ge)
    assert (g_p[:, T:] == 0).all() and (ge_p[:, T:] == 0).all()
    assert (g[~batch["mask"]] == 0).all()


@pytest.mark.parametrize("name,agg,heavy", COMBOS)
@FAST
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(2, 5), T=st.integers(1, 6), data=st.data())
def test_micro_batches_sum_to_the_full_batch(name, agg, heavy, seed, B, T, data):
    batch = make_batch(seed, B, T)
    split = data.draw(st.integers(1, B - 1))
    mask = batch["mask"]
    kw = modifiers(name, agg, full_mask=mask, entropy=batch["entropy"], heavy=heavy)
    # the global normalisers this aggregation reads: the whole step's counts
    step = {"num_tokens": mask.sum(), "num_seqs": B, "max_completion_len": MAX_LEN}
    kw.update({k: step[k] for k in objective_normalisers(name, agg)})
    loss, g, ge = run(name, batch, **kw)

    parts = [{k: (v[:split] if torch.is_tensor(v) and v.dim() else v) for k, v in batch.items()},
             {k: (v[split:] if torch.is_tensor(v) and v.dim() else v) for k, v in batch.items()}]
    results = [run(name, p, **kw) for p in parts]
    torch.testing.assert_close(results[0][0] + results[1][0], loss)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), g)
    torch.testing.assert_close(torch.cat([results[0][2], results[1][2]]), ge)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 4), T=st.integers(1, 6))
def test_clipped_tokens_get_zero_gradient(name, seed, B, T):
    batch = make_batch(seed, B, T, log_ratio_scale=0.5)
    kw = {"max_completion_len": MAX_LEN} if name == "dr_grpo" else {}
    _, g, _ = run(name, batch, **kw)
    eps = POLICY_LOSSES.get(name).defaults()
    r = torch.exp(batch["logp"] - batch["old_logp"])
    a = batch["advantages"][:, None].expand_as(r)
    clipped = ((a > 0) & (r > 1 + eps["eps_high"])) | ((a < 0) & (r < 1 - eps["eps_low"]))
    valid = batch["mask"]
    assert (g[clipped & valid] == 0).all()
    assert (g[~clipped & valid & (a != 0)] != 0).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 4), T=st.integers(1, 6))
def test_gspo_clips_whole_sequences(seed, B, T):
    batch = make_batch(seed, B, T, log_ratio_scale=1e-3)
    _, g, _ = run("gspo", batch)
    valid = batch["mask"]
    lr = torch.where(valid, batch["logp"] - batch["old_logp"], 0.0)
    s = torch.exp(lr.sum(1) / valid.sum(1).clamp(min=1))  # (B,)
    a = batch["advantages"]
    clipped = ((a > 0) & (s > 1 + 4e-4)) | ((a < 0) & (s < 1 - 3e-4))  # (B,)
    assert (g[clipped[:, None] & valid] == 0).all()
    assert (g[~clipped[:, None] & valid & (a[:, None] != 0)] != 0).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 4), T=st.integers(1, 6),
       tau_pos=st.floats(0.01, 50), tau_neg=st.floats(0.01, 50))
def test_sapo_gradient_at_ratio_one_is_the_plain_policy_gradient(seed, B, T, tau_pos, tau_neg):
    batch = make_batch(seed, B, T)
    batch["old_logp"] = batch["logp"].clone()  # on-policy: r = 1 everywhere
    _, g_sapo, _ = run("sapo", batch, tau_pos=tau_pos, tau_neg=tau_neg)
    # plain policy gradient -A grad logp, with the same aggregation
    _, g_pg, _ = run("reinforce_is", batch, mismatch="none", aggregation="seq-mean-token-mean")
    _, g_grpo, _ = run("grpo", batch)
    torch.testing.assert_close(g_sapo, g_pg)
    torch.testing.assert_close(g_sapo, g_grpo)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 5), T=st.integers(1, 6),
       scale=st.sampled_from([1e-4, 3e-4, 1e-3, 0.3]))
def test_gspo_token_equals_gspo_for_sequence_advantages(seed, B, T, scale):
    batch = make_batch(seed, B, T, log_ratio_scale=scale)
    for agg in AGGREGATIONS.names():  # the per-row loss is constant, so any aggregation agrees
        kw = {"aggregation": agg, **({"max_completion_len": MAX_LEN} if agg == "constant" else {})}
        loss, g, _ = run("gspo", batch, **kw)
        loss_t, g_t, _ = run("gspo_token", batch, **kw)
        torch.testing.assert_close(loss_t, loss)
        torch.testing.assert_close(g_t, g)
