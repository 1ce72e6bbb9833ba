"""Modifiers every objective takes: KL to a reference, entropy bonus, the top-rho entropy
mask, training-inference mismatch correction, aggregation overrides. Hand-worked values."""
import math

import pytest
import torch

from posttrain.objectives import (AGGREGATIONS, KL_ESTIMATORS, aggregate, entropy_threshold,
                                  kl_estimate, policy_loss)

F64 = torch.float64


def t(x):
    return torch.as_tensor(x, dtype=F64)


def close(actual, expected, **kw):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), t(expected), **kw)


def test_kl_estimators_hand_values_and_gradients():
    # d = logp - ref = 0.5
    for name, value, grad in [("k1", 0.5, 1.0), ("k2", 0.125, 0.5),
                              ("k3", math.exp(-0.5) + 0.5 - 1, 1 - math.exp(-0.5))]:
        logp = t([[-1.0]]).requires_grad_()
        k = kl_estimate(name, logp, t([[-1.5]]))
        (g,) = torch.autograd.grad(k.sum(), logp)
        close(k, [[value]])
        close(g, [[grad]])
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]


def test_k3_is_nonnegative_and_zero_only_at_equality():
    logp, ref = torch.randn(1000, dtype=F64) * 3, torch.randn(1000, dtype=F64) * 3
    assert (kl_estimate("k3", logp, ref) >= 0).all()
    assert (kl_estimate("k2", logp, ref) >= 0).all()
    close(kl_estimate("k3", logp, logp), torch.zeros(1000))


def test_beta_adds_aggregated_kl_to_the_policy_loss():
    # A = 0: the policy term is 0, the loss is beta * seq-mean-token-mean(k1)
    logp = t([[-1.0, -2.0], [-1.0, 0.0]]).requires_grad_()
    ref = t([[-1.5, -2.0], [-0.5, 9.9]])
    out = policy_loss("grpo", logp, logp.detach(), t([0.0, 0.0]), torch.tensor([[1, 1], [1, 0]]),
                      ref_logp=ref, beta=0.1, kl_estimator="k1")
    (g,) = torch.autograd.grad(out.loss, logp)
    close(out.loss, 0.1 * ((0.5 + 0) / 2 + (-0.5) / 1) / 2)
    close(g, [[0.1 / 4, 0.1 / 4], [0.1 / 2, 0]])
    close(out.metrics["kl/ref"], (0.5 + 0 - 0.5) / 3)


def test_entropy_bonus_subtracts_coef_times_aggregated_entropy():
    logp = t([[-1.0, -1.0]]).requires_grad_()
    ent = t([[2.0, 4.0]]).requires_grad_()
    out = policy_loss("dapo", logp, logp.detach(), t([0.0]), torch.ones(1, 2), entropy=ent, entropy_coef=0.01)
    (g,) = torch.autograd.grad(out.loss, ent)
    close(out.loss, -0.01 * 3.0)
    close(g, [[-0.005, -0.005]])
    close(out.metrics["entropy/mean"], 3.0)


@pytest.mark.parametrize("rho,kept", [(0.2, 2), (0.25, 3), (0.7, 7), (1.0, 10), (0.01, 1)])
def test_entropy_mask_keeps_exactly_the_top_rho_valid_tokens(rho, kept):
    # 10 valid tokens with distinct entropies, plus padding with huge entropy (ignored)
    ent = torch.tensor([[0.1, 0.9, 0.5, 0.3, 50.0], [0.7, 0.2, 0.8, 0.4, 0.6]], dtype=F64)
    ent = torch.cat([ent, torch.full((2, 2), 99.0, dtype=F64)], dim=1)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 5:] = False
    logp = torch.full((2, 7), -1.0, dtype=F64, requires_grad=True)
    out = policy_loss("grpo", logp, logp.detach(), t([1.0, 1.0]), mask, entropy=ent, top_entropy_rho=rho)
    (g,) = torch.autograd.grad(out.loss, logp)
    chosen = g != 0
    assert int(chosen.sum()) == kept
    valid_ent = ent[mask]
    top = valid_ent.sort(descending=True).values[:kept]
    assert set(ent[chosen].tolist()) == set(top.tolist())
    assert not chosen[~mask].any()
    if rho < 1:
        close(out.metrics["entropy/kept_frac"], kept / 10)
    # a kept token's gradient is what it is without the mask (normalisers unchanged)
    logp2 = logp.detach().clone().requires_grad_()
    full = policy_loss("grpo", logp2, logp.detach(), t([1.0, 1.0]), mask)
    (g_full,) = torch.autograd.grad(full.loss, logp2)
    close(g[chosen], g_full[chosen])


def test_entropy_threshold_argument_matches_the_computed_one():
    ent = torch.rand(3, 8, dtype=F64)
    mask = torch.rand(3, 8) > 0.3
    thr = entropy_threshold(ent, mask, 0.2)
    logp = torch.randn(3, 8, dtype=F64, requires_grad=True)
    a = policy_loss("grpo", logp, logp.detach() + 0.1, torch.randn(3, dtype=F64), mask, entropy=ent,
                    top_entropy_rho=0.2)
    b = policy_loss("grpo", logp, logp.detach() + 0.1, torch.randn(3, dtype=F64).zero_() + 0, mask,
                    entropy=ent, entropy_threshold=thr)
    assert float(a.metrics["entropy/kept_frac"]) == float(b.metrics["entropy/kept_frac"])
    assert torch.isinf(entropy_threshold(ent, torch.zeros(3, 8, dtype=torch.bool), 0.2))


# old - rollout = log 3, log 0.25, 0: w = 3, 0.25, 1; W = prod = 0.75
W_LOG = [[math.log(3.0), math.log(0.25), 0.0]]


@pytest.mark.parametrize("mode,kw,weights,extra", [
    ("none", {}, [1.0, 1.0, 1.0], {}),
    ("token", {}, [3.0, 0.25, 1.0], {}),
    ("token_truncate", {}, [2.0, 0.25, 1.0], {"is/truncated_frac": 1 / 3}),
    ("token_truncate", {"mismatch_cap": 4.0}, [3.0, 0.25, 1.0], {"is/truncated_frac": 0.0}),
    ("token_mask", {}, [0.0, 0.0, 1.0], {"is/masked_frac": 2 / 3}),
    ("token_mask", {"mismatch_bounds": (0.2, 5.0)}, [3.0, 0.25, 1.0], {"is/masked_frac": 0.0}),
    ("sequence_truncate", {}, [0.75, 0.75, 0.75], {"is/truncated_frac": 0.0}),
    ("sequence_truncate", {"mismatch_cap": 0.5}, [0.5, 0.5, 0.5], {"is/truncated_frac": 1.0}),
    ("sequence_mask", {}, [0.75, 0.75, 0.75], {"is/masked_frac": 0.0}),
    ("sequence_mask", {"mismatch_bounds": (0.8, 2.0)}, [0.0, 0.0, 0.0], {"is/masked_frac": 1.0}),
])
def test_mismatch_modes_hand_values(mode, kw, weights, extra):
    # grpo on-policy with A = 1: per-token loss -w, seq-mean-token-mean over 3 tokens
    logp = torch.full((1, 3), -1.0, dtype=F64, requires_grad=True)
    old = logp.detach()
    out = policy_loss("grpo", logp, old, t([1.0]), torch.ones(1, 3), rollout_logp=old - t(W_LOG),
                      mismatch=mode, **kw)
    (g,) = torch.autograd.grad(out.loss, logp)
    w = t([weights])
    close(out.loss, -w.sum() / 3)
    close(g, -w / 3)
    for key, value in extra.items():
        close(out.metrics[key], value)
    # the mismatch itself is reported in every mode
    close(out.metrics["mismatch/abs_logp_diff_mean"], (math.log(3) + math.log(4)) / 3)
    close(out.metrics["mismatch/abs_logp_diff_max"], math.log(4))
    raw = [3.0, 0.25, 1.0]
    close(out.metrics["mismatch/k3"], sum(x - 1 - math.log(x) for x in raw) / 3)
    if mode.startswith("token"):
        close(out.metrics["is/raw_max"], 3.0)
        close(out.metrics["is/raw_min"], 0.25)


def test_sequence_weight_that_overflows_still_truncates():
    logp = torch.full((1, 4), -1.0, dtype=F64, requires_grad=True)
    out = policy_loss("grpo", logp, logp.detach(), t([1.0]), torch.ones(1, 4),
                      rollout_logp=logp.detach() - 300.0, mismatch="sequence_truncate")
    close(out.loss, -2.0)  # W = e^1200 = inf in floats, truncated to C = 2


@pytest.mark.parametrize("agg,expected", [
    ("token-mean", (1 + 2 + 3 + 4 + 5) / 5),
    ("seq-mean-token-mean", ((1 + 2) / 2 + (3 + 4 + 5) / 3) / 2),
    ("seq-mean-token-sum", (1 + 2 + 3 + 4 + 5) / 2),
    ("constant", (1 + 2 + 3 + 4 + 5) / (2 * 6)),
])
def test_aggregations_hand_values(agg, expected):
    loss = t([[1.0, 2.0, float("nan")], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    kw = {"max_completion_len": 6} if agg == "constant" else {}
    close(aggregate(agg, loss, mask, **kw), expected)
    assert AGGREGATIONS.names() == ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "constant"]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "constant"])
@pytest.mark.parametrize("float_mask", [False, True])
def test_a_per_row_loss_aggregates_as_its_broadcast(agg, float_mask):
    """A (B, 1) sequence-level loss (GSPO's) takes the (B,) path: same value and gradient as
    the (B, T) broadcast, hand-checked; an empty row counts 0 (with a bool mask even when
    its value is NaN: never read)."""
    kw = {"max_completion_len": 6} if agg == "constant" else {}
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    m = mask.to(F64) if float_mask else mask
    row = torch.tensor([[2.0], [-1.0], [0.5 if float_mask else float("nan")]], dtype=F64, requires_grad=True)
    fast = aggregate(agg, row, m, **kw)
    (g_fast,) = torch.autograd.grad(fast, row)
    wide = aggregate(agg, row.detach().expand(3, 3).clone().requires_grad_(True), m, **kw)
    expected = {"token-mean": (2 * 2 - 3) / 5, "seq-mean-token-mean": (2 - 1) / 3,
                "seq-mean-token-sum": (2 * 2 - 3) / 3, "constant": (2 * 2 - 3) / 18}[agg]
    close(fast, expected)
    close(fast, wide.detach())
    counts = torch.tensor([2.0, 3.0, 0.0], dtype=F64)
    per = {"token-mean": counts / 5, "seq-mean-token-mean": (counts > 0).to(F64) / 3,
           "seq-mean-token-sum": counts / 3, "constant": counts / 18}[agg]
    close(g_fast[:, 0], per)


def test_aggregation_override_and_empty_batch():
    logp = torch.full((2, 2), -1.0, dtype=F64, requires_grad=True)
    out = policy_loss("sapo", logp, logp.detach(), t([1.0, 1.0]), torch.tensor([[1, 0], [1, 1]]),
                      aggregation="token-mean")
    close(out.loss, -2.0)  # f(1) = 2 / tau_pos per token, mean over 3 tokens
    out = policy_loss("dapo", logp, logp.detach(), t([1.0, 1.0]), torch.zeros(2, 2))
    assert float(out.loss.detach()) == 0.0
    (g,) = torch.autograd.grad(out.loss, logp)
    assert (g == 0).all()
