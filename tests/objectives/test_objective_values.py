"""Hand-worked loss and gradient values for every objective, from the papers' formulas.

Each case writes the log-ratio of every token directly (logp - old_logp), so "ratio is e"
means log-ratio 1. Gradients are d loss / d logp, from autograd, against hand values.
"""
import math

import pytest
import torch

from posttrain.objectives import POLICY_LOSSES, policy_loss

E = math.e


def run(name, log_ratio, adv, mask, logp=None, **kw):
    """Loss and d loss / d logp with old_logp = logp - log_ratio (float64)."""
    log_ratio = torch.tensor(log_ratio, dtype=torch.float64)
    base = torch.full_like(log_ratio, -1.0) if logp is None else torch.tensor(logp, dtype=torch.float64)
    logp = base.clone().requires_grad_()
    out = policy_loss(name, logp, base - log_ratio, torch.tensor(adv, dtype=torch.float64),
                      torch.tensor(mask, dtype=torch.bool), **kw)
    (grad,) = torch.autograd.grad(out.loss, logp)
    return out, grad


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


# Row 0 (A = +1): ratios e, 1, 0.5. Row 1 (A = -1): ratios e, 0.5, then padding.
LR = [[1.0, 0.0, math.log(0.5)], [1.0, math.log(0.5), 0.0]]
ADV = [1.0, -1.0]
MASK = [[1, 1, 1], [1, 1, 0]]
# Per-token losses -min(r A, clip(r) A) with eps = 0.2:
#   row 0: r = e clipped to 1.2 -> -1.2 (grad 0); r = 1 -> -1 (grad -r A = -1);
#          r = 0.5, A > 0, min(0.5, 0.8) = 0.5 unclipped -> -0.5 (grad -0.5)
#   row 1: r = e, A < 0, min(-e, -1.2) = -e unclipped -> e (grad -r A = e);
#          r = 0.5 clipped up to 0.8 -> 0.8 (grad 0)


def test_grpo_seq_mean_token_mean():
    out, g = run("grpo", LR, ADV, MASK)
    row0, row1 = (-1.2 - 1 - 0.5) / 3, (E + 0.8) / 2
    close(out.loss, (row0 + row1) / 2)
    close(g, [[0, -1 / 6, -0.5 / 6], [E / 4, 0, 0]])
    close(out.metrics["clip/high_frac"], 1 / 5)
    close(out.metrics["clip/low_frac"], 1 / 5)
    close(out.metrics["ratio/max"], E)


def test_dr_grpo_divides_by_num_seqs_times_max_completion_len():
    out, g = run("dr_grpo", LR, ADV, MASK, max_completion_len=4)
    close(out.loss, (-1.2 - 1 - 0.5 + E + 0.8) / (2 * 4))
    close(g, [[0, -1 / 8, -0.5 / 8], [E / 8, 0, 0]])
    out, g = run("dr_grpo", LR, ADV, MASK, max_completion_len=4, num_seqs=8)  # global B = 8
    close(out.loss, (-1.2 - 1 - 0.5 + E + 0.8) / (8 * 4))


def test_dapo_clip_higher_and_global_token_mean():
    # r = e now clips at 1.28; r = 1.25 is inside DAPO's band but clipped by grpo's 1.2
    lr = [[1.0, math.log(1.25), math.log(0.5)], [1.0, math.log(0.5), 0.0]]
    out, g = run("dapo", lr, ADV, MASK)
    close(out.loss, (-1.28 - 1.25 - 0.5 + E + 0.8) / 5)
    close(g, [[0, -1.25 / 5, -0.5 / 5], [E / 5, 0, 0]])
    out, g = run("dapo", lr, ADV, MASK, num_tokens=10)  # the step's tokens, not this batch's
    close(out.loss, (-1.28 - 1.25 - 0.5 + E + 0.8) / 10)
    _, g_grpo = run("grpo", lr, ADV, MASK)
    assert g_grpo[0, 1] == 0  # 1.25 > 1.2: clipped under grpo


def test_gspo_sequence_ratio_and_tight_clip():
    # row 0: mean log-ratio 0.05, s = e^0.05 > 1 + 4e-4, A > 0 -> clipped: -(1 + 4e-4), grad 0
    # row 1: mean log-ratio 0, s = 1, A = -1 -> loss s = 1, d/dlogp_t = -A s / n = 1/3
    lr = [[0.2, -0.1, 0.0], [0.3, -0.1, -0.2]]
    out, g = run("gspo", lr, ADV, [[1, 1, 0], [1, 1, 1]])
    close(out.loss, (-(1 + 4e-4) + 1) / 2)
    close(g, [[0, 0, 0], [1 / 6, 1 / 6, 1 / 6]])
    close(out.metrics["clip/high_frac"], 2 / 5)  # both valid tokens of row 0
    out, _ = run("gspo_token", lr, ADV, [[1, 1, 0], [1, 1, 1]])
    close(out.loss, (-(1 + 4e-4) + 1) / 2)


def test_sapo_gate_values_and_gradients():
    # row 0 (A = +1, tau_pos = 1): r = 1 -> f = 4/1 * 1/2 = 2, loss -2, grad -A * 4p(1-p) * r = -1
    #                              r = e -> p = sigmoid(e - 1), loss -4p, grad -4p(1-p) e
    # row 1 (A = -1, tau_neg = 1.05): r = 1 -> loss +2/1.05, grad +1
    p = 1 / (1 + math.exp(-(E - 1)))
    out, g = run("sapo", [[0.0, 1.0], [0.0, 0.0]], [1.0, -1.0], [[1, 1], [1, 0]])
    close(out.loss, ((-2 - 4 * p) / 2 + 2 / 1.05) / 2)
    close(g, [[-1 / 4, -4 * p * (1 - p) * E / 4], [1 / 2, 0]])
    close(out.metrics["sapo/gate_weight_mean"], (1 + 4 * p * (1 - p) + 1) / 3)
    # tau_neg = 1.1 (the model card's value) is a parameter, not a fork
    out, _ = run("sapo", [[0.0]], [-1.0], [[1]], tau_neg=1.1)
    close(out.loss, 2 / 1.1)


def test_cispo_capped_weight_times_logp():
    # r = e capped at 2: loss -2 A logp = -2 * 1 * (-0.5) = 1, grad -2 A = -2
    # r = 0.5 (no lower bound): loss -0.5 * 1 * (-2) = 1, grad -0.5
    out, g = run("cispo", [[1.0, math.log(0.5)]], [1.0], [[1, 1]], logp=[[-0.5, -2.0]], is_cap=2.0)
    close(out.loss, (1 + 1) / 2)
    close(g, [[-2 / 2, -0.5 / 2]])
    close(out.metrics["cispo/capped_frac"], 0.5)
    out, g = run("cispo", [[1.0]], [1.0], [[1]], logp=[[-0.5]])  # default cap 5 > e
    close(out.loss, E * 0.5)
    close(g, [[-E]])


def test_reinforce_is_weights_by_rollout_ratio_without_length_normalisation():
    # on-policy (logp = old_logp = -1), rollout_logp = -1.1: w = pi / pi_rollout = e^0.1
    # loss per token -w A logp = w A (logp = -1); grad -w A; seq-mean-token-sum over 2 rows
    logp = torch.full((2, 2), -1.0, dtype=torch.float64, requires_grad=True)
    w = math.exp(0.1)
    out = policy_loss("reinforce_is", logp, logp.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64),
                      torch.tensor([[1, 1], [1, 0]]),
                      rollout_logp=torch.full((2, 2), -1.1, dtype=torch.float64))
    (g,) = torch.autograd.grad(out.loss, logp)
    close(out.loss, (2 * w * 1 + w * -2) / 2)
    close(g, [[-w / 2, -w / 2], [2 * w / 2, 0]])
    close(out.metrics["is/weight_mean"], w)


def test_reinforce_is_stale_mask_only_on_the_side_that_is_set():
    # ratios e (A > 0: stale once eps_high is set) and e (A < 0: never stale on the high side)
    kw = dict(mismatch="none")
    out, g = run("reinforce_is", [[1.0], [1.0]], [1.0, -1.0], [[1], [1]], **kw)
    close(g, [[-E / 2], [E / 2]])  # -sg(r) A, seq-mean over 2 rows
    out, g = run("reinforce_is", [[1.0], [1.0]], [1.0, -1.0], [[1], [1]], eps_high=0.2, **kw)
    close(g, [[0.0], [E / 2]])
    close(out.metrics["reinforce/stale_masked_frac"], 0.5)
    out, g = run("reinforce_is", [[math.log(0.5)]], [-1.0], [[1]], eps_low=0.2, **kw)
    close(g, [[0.0]])


def test_every_objective_has_a_hand_worked_test_here():
    tested = {"grpo", "dr_grpo", "dapo", "gspo", "gspo_token", "sapo", "cispo", "reinforce_is"}
    assert set(POLICY_LOSSES.names()) == tested, "add a hand-worked test for the new objective"


@pytest.mark.parametrize("name", ["grpo", "dapo", "sapo", "cispo"])
def test_float32_inputs_give_float32_loss(name):
    logp = torch.randn(2, 3, requires_grad=True)
    out = policy_loss(name, logp, logp.detach(), torch.ones(2), torch.ones(2, 3))
    assert out.loss.dtype == torch.float32 and out.loss.dim() == 0
