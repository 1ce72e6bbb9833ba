"""TokenStats (the batched metric reduction) and policy_loss(metrics=False).

The batched reduction must give the same figures as reducing each metric on its own with
`where`; the 0/1-weight path the same as the `where` path when padding holds finite
values; metrics=False the same loss and gradient as the default."""
import math

import pytest
import torch

from posttrain.objectives import POLICY_LOSSES, policy_loss
from posttrain.objectives.stats import TokenStats

F64 = torch.float64


def _batch(seed=0, B=5, T=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 0, 5, 1])[:B]
    valid = torch.arange(T)[None, :] < lengths[:, None]
    x = torch.randn(B, T, generator=g, dtype=F64)
    y = torch.randn(B, T, generator=g, dtype=F64)
    return valid, x, y


def _by_hand(x, valid, how):
    vals = x[valid]
    return {"mean": vals.mean(), "max": vals.max(), "min": vals.min(),
            "frac": (vals > 0).double().mean()}[how]


@pytest.mark.parametrize("weighted", [False, True])
def test_batched_reduction_matches_per_metric_reduction(weighted):
    valid, x, y = _batch()
    w = valid.to(F64) if weighted else None
    s = TokenStats(valid, F64, w)
    s.mean("x/mean", x), s.mean("y/mean", y), s.frac("x/pos", x > 0)
    s.max("x/max", x), s.max("y/max", y), s.min("x/min", x), s.max("x/expmax", x, post=torch.exp)
    row = torch.arange(5, dtype=F64)[:, None]  # a per-row quantity counts once per valid token
    s.mean("row/mean", row)
    out = s.reduce()
    torch.testing.assert_close(out["x/mean"], _by_hand(x, valid, "mean"))
    torch.testing.assert_close(out["y/mean"], _by_hand(y, valid, "mean"))
    torch.testing.assert_close(out["x/pos"], _by_hand(x, valid, "frac"))
    torch.testing.assert_close(out["x/max"], _by_hand(x, valid, "max"))
    torch.testing.assert_close(out["y/max"], _by_hand(y, valid, "max"))
    torch.testing.assert_close(out["x/min"], _by_hand(x, valid, "min"))
    torch.testing.assert_close(out["x/expmax"], torch.exp(_by_hand(x, valid, "max")))
    torch.testing.assert_close(out["row/mean"], torch.tensor((0 * 7 + 1 * 3 + 3 * 5 + 4 * 1) / 16, dtype=F64))
    torch.testing.assert_close(s.n, torch.tensor(16.0, dtype=F64))


@pytest.mark.parametrize("weighted", [False, True])
def test_empty_batch_gives_zero_means_and_infinite_extremes(weighted):
    valid = torch.zeros(2, 3, dtype=torch.bool)
    s = TokenStats(valid, F64, valid.to(F64) if weighted else None)
    x = torch.randn(2, 3, dtype=F64)
    s.mean("m", x), s.frac("f", x > 0), s.max("hi", x), s.min("lo", x)
    out = s.reduce()
    assert float(out["m"]) == 0.0 and float(out["f"]) == 0.0
    assert out["hi"] == -math.inf and out["lo"] == math.inf


def test_disabled_stats_collect_nothing():
    valid, x, _ = _batch()
    s = TokenStats(valid, F64, enabled=False)
    assert not s
    assert s.reduce() == {}


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_metrics_off_gives_the_same_loss_and_gradient(name):
    valid, x, y = _batch(seed=3)
    old = -torch.rand(valid.shape, dtype=F64) * 3
    kw = {"rollout_logp": old + 0.1 * y, "max_completion_len": 7} if name == "dr_grpo" else {
        "rollout_logp": old + 0.1 * y}
    adv = torch.tensor([1.0, -0.5, 0.3, -2.0, 0.7], dtype=F64)
    res = []
    for metrics in (True, False):
        logp = (old + 0.2 * x).requires_grad_(True)
        out = policy_loss(name, logp, old, adv, valid, metrics=metrics, **kw)
        out.loss.backward()
        res.append((out, logp.grad))
    (on, g_on), (off, g_off) = res
    torch.testing.assert_close(on.loss, off.loss, rtol=0, atol=0)
    torch.testing.assert_close(g_on, g_off, rtol=0, atol=0)
    assert set(off.metrics) == {"loss/policy"}
    assert "ratio/mean" in on.metrics and "mismatch/k3" in on.metrics
