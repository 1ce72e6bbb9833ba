"""Padding clean-up by bitwise AND: bit-identical to torch.where, NaN at a valid position
kept, the gradient path unchanged; and the score-function sum's value and gradient."""
import math

import pytest
import torch

from posttrain.objectives import policy_loss
from posttrain.objectives.aggregate import score_function_sum, weighted_sum
from posttrain.objectives.padding import Padding, keep_bits

SPECIALS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1.5, -2.25, 1e-40]  # 1e-40: fp32 subnormal


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_zero_is_where_bit_for_bit(dtype):
    x = torch.tensor([SPECIALS, SPECIALS[::-1]], dtype=dtype)
    valid = torch.tensor([[True, False] * 4, [False, True, True, False] * 2])
    got = Padding(valid, dtype).zero(x)
    want = torch.where(valid, x, torch.zeros((), dtype=dtype))
    width = keep_bits(valid, dtype).dtype
    assert torch.equal(got.view(width), want.view(width))  # the bits: NaN payloads, signed zeros
    assert torch.isnan(got[0, 0]) and got[0, 1] == 0 and not torch.signbit(got[0, 1])


def test_keep_bits_are_all_ones_or_zero():
    valid = torch.tensor([[True, False, True]])
    assert keep_bits(valid, torch.float32).tolist() == [[-1, 0, -1]]
    assert keep_bits(valid, torch.float32).dtype == torch.int32
    assert keep_bits(valid, torch.bfloat16).dtype == torch.int16
    with pytest.raises(TypeError, match="floating dtype"):
        keep_bits(valid, torch.int64)


def test_a_tensor_with_a_gradient_gets_where_and_its_gradient():
    valid = torch.tensor([[True, False, True]])
    x = torch.tensor([[2.0, math.nan, -1.0]], requires_grad=True)
    y = Padding(valid, torch.float32).zero(x)
    assert y.requires_grad and y.tolist() == [[2.0, 0.0, -1.0]]
    (y * torch.tensor([[3.0, 5.0, 7.0]])).sum().backward()
    assert x.grad.tolist() == [[3.0, 0.0, 7.0]]


def test_the_mask_is_built_once_and_the_dtype_checked():
    pad = Padding(torch.tensor([[1.0, 0.0]]), torch.float32)  # a 0/1 float mask is accepted
    assert pad.bits is pad.bits and pad.valid.dtype == torch.bool
    with pytest.raises(TypeError, match="float64"):
        pad.zero(torch.zeros(1, 2, dtype=torch.float64))


def test_score_function_sum_reads_the_clean_value_and_has_gradient_w():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    x = torch.tensor([[0.5, -1.0, math.nan], [2.0, math.inf, -math.inf]], dtype=torch.float64,
                     requires_grad=True)
    clean = torch.where(valid, x.detach(), 0.0)
    w = torch.where(valid, torch.tensor([[1.0, 2.0, 9.0], [-3.0, 9.0, 9.0]], dtype=torch.float64), 0.0)
    s = score_function_sum(x, clean, w)
    assert s.item() == 0.5 - 2.0 - 6.0  # by hand: 0.5*1 + (-1)*2 + 2*(-3)
    s.backward()
    assert torch.equal(x.grad, w)
    with torch.no_grad():
        assert score_function_sum(x, clean, w).item() == weighted_sum(clean, w).item()


@pytest.mark.parametrize("name", ["cispo", "reinforce_is", "grpo"])
def test_nan_at_a_valid_position_still_reaches_the_loss(name):
    """The clean-up zeroes padding only: a broken valid log-prob is not hidden."""
    valid = torch.tensor([[True, True, False]])
    old = torch.tensor([[-1.0, -2.0, math.nan]])
    for bad in ("logp", "old_logp"):
        logp = torch.tensor([[-1.1, -1.9, -0.5]])
        if bad == "logp":
            logp[0, 1] = math.nan
        o = old.clone()
        if bad == "old_logp":
            o[0, 0] = math.nan
        out = policy_loss(name, logp.requires_grad_(True), o, torch.tensor([1.0]), valid,
                          rollout_logp=torch.tensor([[-1.0, -2.0, 0.0]]))
        assert torch.isnan(out.loss), bad
