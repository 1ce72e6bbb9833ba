"""The weighted-sum form of the aggregations and of the clip surrogate that `policy_loss` uses.

`policy_loss` computes each term as sum_{i,t} l_it W_it with W = Aggregation.token_weights,
and the clip surrogate as a `where` on whether the constant clipped branch wins. These
tests pin both to the textbook forms: the aggregation's own fn, and torch.max of the two
branches (value and gradient, including tokens exactly on the band's edges).
"""

from __future__ import annotations

import pytest
import torch

from posttrain.objectives import AGGREGATIONS, policy_loss
from posttrain.objectives.aggregate import weighted_sum
from posttrain.objectives.policy import clip_surrogate
from posttrain.objectives.stats import TokenStats

NORMS = {"token-mean": {}, "seq-mean-token-mean": {}, "seq-mean-token-sum": {},
         "constant": {"max_completion_len": 7}}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 1, 0, 3])  # an empty row included
    valid = torch.arange(5)[None, :] < lengths[:, None]  # (4, 5)
    return torch.randn(4, 5, generator=g, dtype=torch.float64), valid


@pytest.mark.parametrize("name", list(NORMS))
def test_token_weights_reproduce_the_aggregation(name):
    x, valid = _batch()
    w = valid.to(torch.float64)
    agg = AGGREGATIONS.get(name)
    for norms in (NORMS[name], {**NORMS[name], **({"num_tokens": 11} if name == "token-mean" else {"num_seqs": 6})}):
        want = agg.fn(x, valid, **norms)
        got = weighted_sum(x, agg.token_weights(w, **norms))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        row = x[:, :1]  # a per-row loss (B, 1) broadcast over the row's tokens
        torch.testing.assert_close(weighted_sum(row, agg.token_weights(w, **norms)),
                                   agg.fn(row.expand_as(x), valid, **norms), rtol=1e-12, atol=1e-12)


def test_token_weights_by_hand():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    w = valid.double()
    # seq-mean-token-mean: 1 / (n_i * B), n = (2, 1), B = 2
    torch.testing.assert_close(AGGREGATIONS.get("seq-mean-token-mean").token_weights(w),
                               torch.tensor([[0.25, 0.25, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64))
    # token-mean: 1 / 3 valid tokens
    torch.testing.assert_close(AGGREGATIONS.get("token-mean").token_weights(w), w / 3)


def _clip_by_max(ratio, adv, lo, hi):
    return torch.max(ratio * -adv, ratio.clamp(1 - lo, 1 + hi) * -adv)


def test_clip_surrogate_equals_the_max_of_both_branches_value_and_gradient():
    # ratios inside, outside and exactly on both edges of the band, both signs of A and A = 0
    r0 = torch.tensor([[0.5, 0.8, 1.0, 1.2, 1.5], [0.5, 0.8, 1.0, 1.2, 1.5], [0.7, 0.8, 1.0, 1.2, 1.3]],
                      dtype=torch.float64)
    adv = torch.tensor([[1.0], [-2.0], [0.0]], dtype=torch.float64)
    grads = []
    for fn in (lambda r: clip_surrogate(r, adv, None, TokenStats(torch.ones_like(r0, dtype=torch.bool),
                                                                 torch.float64, enabled=False),
                                        eps_low=0.2, eps_high=0.2),
               lambda r: _clip_by_max(r, adv, 0.2, 0.2)):
        r = r0.clone().requires_grad_(True)
        out = fn(r)
        out.sum().backward()
        grads.append((out.detach(), r.grad))
    (v1, g1), (v2, g2) = grads
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)
    # by hand: A > 0 clipped above 1.2, A < 0 clipped below 0.8, edges keep the gradient
    assert g1[0].tolist() == [-1.0, -1.0, -1.0, -1.0, 0.0]
    assert g1[1].tolist() == [0.0, 2.0, 2.0, 2.0, 2.0]


def test_score_function_objectives_match_their_formula_with_nan_at_padding():
    """cispo's loss is one weighted sum of logp with the constant coefficient: the value and
    gradient of -sg(min(r, cap)) A logp, token-mean, and NaN at padding reaches neither."""
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 6, generator=g, dtype=torch.float64) * 2
    logp0 = old + 0.5 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    valid = torch.arange(6)[None, :] < torch.tensor([6, 2, 4])[:, None]
    logp = torch.where(valid, logp0, torch.nan).requires_grad_(True)
    out = policy_loss("cispo", logp, torch.where(valid, old, torch.nan), adv, valid, is_cap=1.1, metrics=False)
    out.loss.backward()
    ref_logp = logp0.clone().requires_grad_(True)
    c = torch.exp(ref_logp.detach() - old).clamp(max=1.1) * -adv[:, None]
    ref = (c * ref_logp * valid).sum() / valid.sum()
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(logp.grad, torch.where(valid, ref_logp.grad, 0.0))
    assert torch.isfinite(logp.grad).all()
