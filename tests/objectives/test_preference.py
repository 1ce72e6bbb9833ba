"""Preference objectives (DPO, ORPO, SimPO): hand-worked values, gradients, invariances, errors.

Log-probs are per-response sums, lengths are token counts; everything is (B,). Hand values
come from the papers' formulas written out with `math`; gradients are d loss / d logp from
autograd.
"""
import math

import pytest
import torch

from posttrain.objectives.preference import (PREFERENCE_LOSSES, log_odds, preference_loss,
                                             preference_params)
from posttrain.registry import UnknownName

LOG2 = math.log(2)


def sig(x):
    return 1 / (1 + math.exp(-x))


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def run(name, chosen, rejected, **kw):
    """Loss, metrics and (d loss / d chosen_logp, d loss / d rejected_logp), float64."""
    c, r = t(chosen).requires_grad_(), t(rejected).requires_grad_()
    kw = {k: t(v) if isinstance(v, list) else v for k, v in kw.items()}
    out = preference_loss(name, c, r, **kw)
    gc, gr = torch.autograd.grad(out.loss, (c, r))
    return out, gc, gr


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


def random_batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens_c = torch.randint(1, 20, (B,), generator=g)
    lens_r = torch.randint(1, 20, (B,), generator=g)
    # per-token log-probs in (-3, -0.05), summed: a plausible range, never 0
    c = -(0.05 + 3 * torch.rand(B, generator=g, dtype=torch.float64)) * lens_c
    r = -(0.05 + 3 * torch.rand(B, generator=g, dtype=torch.float64)) * lens_r
    ref_c = c + torch.randn(B, generator=g, dtype=torch.float64)
    ref_r = r + torch.randn(B, generator=g, dtype=torch.float64)
    return dict(chosen=c, rejected=r, ref_chosen_logp=ref_c, ref_rejected_logp=ref_r,
                chosen_len=lens_c, rejected_len=lens_r)


def inputs_for(name, batch):
    """The inputs the spec says this objective reads (what a trainer does)."""
    spec = PREFERENCE_LOSSES.get(name)
    keys = ["chosen", "rejected"]
    keys += ["ref_chosen_logp", "ref_rejected_logp"] * spec.needs_reference
    keys += ["chosen_len", "rejected_len"] * spec.needs_lengths
    return {k: batch[k] for k in keys}


def call(name, batch, **params):
    b = inputs_for(name, batch)
    return preference_loss(name, b.pop("chosen"), b.pop("rejected"), **b, **params)


# ---------------------------------------------------------------- DPO


def test_dpo_hand_worked_pair():
    # h = (-2 + 2.5) - (-3 + 2.5) = 1; beta h = 0.1; loss = -log sigma(0.1)
    out, gc, gr = run("dpo", [-2.0], [-3.0], ref_chosen_logp=[-2.5], ref_rejected_logp=[-2.5])
    close(out.loss, -math.log(sig(0.1)))
    close(gc, [-0.1 * sig(-0.1)])
    close(gr, [0.1 * sig(-0.1)])
    m = out.metrics
    close(m["rewards/chosen"], 0.05)
    close(m["rewards/rejected"], -0.05)
    close(m["rewards/margin"], 0.1)
    close(m["rewards/accuracy"], 1.0)
    close(m["logps/chosen"], -2.0)
    close(m["logps/rejected"], -3.0)
    close(m["loss"], out.loss.detach())


def test_dpo_is_log2_when_policy_equals_reference():
    b = random_batch()
    for eps in (0.0, 0.1, 0.3):
        out = preference_loss("dpo", b["chosen"], b["rejected"], b["chosen"], b["rejected"],
                              beta=0.7, label_smoothing=eps)
        close(out.loss, LOG2)
        close(out.metrics["rewards/accuracy"], 0.0)  # strict >: ties are not correct


def test_dpo_label_smoothing_hand_worked():
    # cDPO: -(1 - eps) log sigma(beta h) - eps log sigma(-beta h), eps = 0.2, beta h = 0.1
    out, gc, gr = run("dpo", [-2.0], [-3.0], ref_chosen_logp=[-2.5], ref_rejected_logp=[-2.5],
                      label_smoothing=0.2)
    close(out.loss, -0.8 * math.log(sig(0.1)) - 0.2 * math.log(sig(-0.1)))
    g = -0.1 * (0.8 * sig(-0.1) - 0.2 * sig(0.1))
    close(gc, [g])
    close(gr, [-g])


def test_dpo_label_smoothing_pushes_back_past_the_margin():
    # beta h = 3: with eps = 0.2, sigma(-3) * 0.8 < 0.2 * sigma(3), so the chosen gradient flips
    # sign (cDPO's loss is minimised at a finite margin, log((1 - eps) / eps) = 1.386)
    _, gc, _ = run("dpo", [0.0], [-30.0], ref_chosen_logp=[0.0], ref_rejected_logp=[0.0],
                   label_smoothing=0.2)
    assert gc.item() > 0
    _, gc, _ = run("dpo", [0.0], [-30.0], ref_chosen_logp=[0.0], ref_rejected_logp=[0.0])
    assert gc.item() < 0


def test_dpo_invariant_to_shifting_policy_and_reference_together():
    b = random_batch()
    base = call("dpo", b)
    shifted = dict(b, chosen=b["chosen"] + 3.7, ref_chosen_logp=b["ref_chosen_logp"] + 3.7,
                   rejected=b["rejected"] - 1.2, ref_rejected_logp=b["ref_rejected_logp"] - 1.2)
    close(call("dpo", shifted).loss, base.loss)


# ---------------------------------------------------------------- ORPO


def test_orpo_hand_worked_pair():
    # chosen: logp -2 over 2 tokens -> x_w = -1; rejected: -6 over 3 tokens -> x_l = -2
    lo_w = -1 - math.log(1 - math.exp(-1))
    lo_l = -2 - math.log(1 - math.exp(-2))
    lor = lo_w - lo_l
    out, gc, gr = run("orpo", [-2.0], [-6.0], chosen_len=[2], rejected_len=[3])
    close(out.loss, 1.0 + 0.1 * -math.log(sig(lor)))  # NLL = -(-2 / 2) = 1
    close(gc, [-1 / 2 - 0.1 * sig(-lor) / (2 * (1 - math.exp(-1)))])
    close(gr, [0.1 * sig(-lor) / (3 * (1 - math.exp(-2)))])
    m = out.metrics
    close(m["nll"], 1.0)
    close(m["loss/odds_ratio"], -math.log(sig(lor)))
    close(m["rewards/chosen"], lo_w)
    close(m["rewards/rejected"], lo_l)
    close(m["rewards/margin"], lor)
    close(m["rewards/accuracy"], 1.0)


def test_orpo_lam_zero_is_token_mean_nll_averaged_over_pairs():
    out, gc, _ = run("orpo", [-2.0, -9.0], [-1.0, -1.0], chosen_len=[2, 3], rejected_len=[1, 1],
                     lam=0.0)
    close(out.loss, (1.0 + 3.0) / 2)
    close(gc, [-1 / 2 / 2, -1 / 3 / 2])


def test_orpo_log_odds_is_stable_at_the_edges():
    # P = 1 (logp = 0) would be log(0); tiny P (logp = -1e4 per token) loses nothing
    c = t([0.0, -1e4, -1e-9]).requires_grad_()
    r = t([-5.0, -2e4, -3.0]).requires_grad_()
    n = t([1, 1, 1])
    out = preference_loss("orpo", c, r, chosen_len=n, rejected_len=n)
    gc, gr = torch.autograd.grad(out.loss, (c, r))
    assert torch.isfinite(out.loss) and torch.isfinite(gc).all() and torch.isfinite(gr).all()
    # in the safe range it is the textbook formula, computed naively in float64
    x = t([-0.3, -1.0, -5.0, -40.0])
    close(log_odds(x, torch.ones(4)), x - torch.log(1 - torch.exp(x)))
    # near 0, where 1 - exp(x) cancels: log odds = x - log(-x) - x/2 + O(x^2)
    close(log_odds(t([-1e-5]), torch.ones(1)), [-1e-5 - math.log(1e-5) + 0.5e-5])


def test_orpo_float32_close_to_zero_logp_is_finite():
    c = torch.tensor([-1e-7, -0.5], requires_grad=True)
    out = preference_loss("orpo", c, torch.tensor([-1.0, -1.0]), chosen_len=torch.tensor([3, 3]),
                          rejected_len=torch.tensor([3, 3]))
    (g,) = torch.autograd.grad(out.loss, c)
    assert out.loss.dtype == torch.float32 and torch.isfinite(g).all()
    # expm1 near 0: naive log1p(-exp(x)) in float32 is off by ~1e-3 at x = -1e-4
    x = torch.tensor([-1e-4, -1e-3, -0.5])
    torch.testing.assert_close(log_odds(x, torch.ones(3)),
                               log_odds(x.double(), torch.ones(3)).float(), rtol=0, atol=2e-6)


# ---------------------------------------------------------------- SimPO


def test_simpo_hand_worked_pair():
    # r_w = 2 * -4 / 2 = -4, r_l = 2 * -9 / 3 = -6, z = 2 - 0.5 = 1.5
    out, gc, gr = run("simpo", [-4.0], [-9.0], chosen_len=[2], rejected_len=[3])
    close(out.loss, -math.log(sig(1.5)))
    close(gc, [-(2 / 2) * sig(-1.5)])
    close(gr, [(2 / 3) * sig(-1.5)])
    close(out.metrics["rewards/chosen"], -4.0)
    close(out.metrics["rewards/rejected"], -6.0)
    close(out.metrics["rewards/margin"], 2.0)


def test_simpo_margin_gamma_shifts_the_logit():
    out, _, _ = run("simpo", [-4.0], [-9.0], chosen_len=[2], rejected_len=[3], beta=1.0, gamma=0.0)
    close(out.loss, -math.log(sig(-2 + 3)))


# ---------------------------------------------------------------- all objectives


def analytic_grads(name, b, p):
    """Per-pair d l_b / d logp from the papers' formulas, divided by B (the batch mean)."""
    c, r = b["chosen"], b["rejected"]
    B = c.numel()
    if name == "dpo":
        z = p["beta"] * ((c - b["ref_chosen_logp"]) - (r - b["ref_rejected_logp"]))
        eps = p["label_smoothing"]
        g = -p["beta"] * ((1 - eps) * torch.sigmoid(-z) - eps * torch.sigmoid(z))
        return g / B, -g / B
    nc, nr = b["chosen_len"].double(), b["rejected_len"].double()
    if name == "simpo":
        z = p["beta"] * (c / nc - r / nr) - p["gamma"]
        s = torch.sigmoid(-z)
        return -p["beta"] / nc * s / B, p["beta"] / nr * s / B
    pw, pl = torch.exp(c / nc), torch.exp(r / nr)
    s = torch.sigmoid(-(log_odds(c, nc) - log_odds(r, nr)))
    return (-1 / nc - p["lam"] * s / (nc * (1 - pw))) / B, p["lam"] * s / (nr * (1 - pl)) / B


@pytest.mark.parametrize("name,params", [
    ("dpo", {}), ("dpo", {"beta": 0.5, "label_smoothing": 0.1}),
    ("orpo", {}), ("orpo", {"lam": 1.3}),
    ("simpo", {}), ("simpo", {"beta": 2.5, "gamma": 1.4}),
])
def test_autograd_matches_the_analytic_gradient(name, params):
    b = random_batch(seed=1)
    c, r = b["chosen"].clone().requires_grad_(), b["rejected"].clone().requires_grad_()
    out = call(name, dict(b, chosen=c, rejected=r), **params)
    gc, gr = torch.autograd.grad(out.loss, (c, r))
    ec, er = analytic_grads(name, b, {**preference_params(name), **params})
    close(gc, ec)
    close(gr, er)


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_batch_loss_is_the_mean_of_single_pair_losses(name):
    b = random_batch(B=5, seed=2)
    full = call(name, b)
    singles = [call(name, {k: v[i:i + 1] for k, v in b.items()}).loss for i in range(5)]
    close(full.loss, torch.stack(singles).mean())


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_micro_batches_with_num_pairs_add_up_to_the_full_batch(name):
    b = random_batch(B=6, seed=3)
    c, r = b["chosen"].clone().requires_grad_(), b["rejected"].clone().requires_grad_()
    full = call(name, dict(b, chosen=c, rejected=r))
    (gc_full,) = torch.autograd.grad(full.loss, c)
    c2 = b["chosen"].clone().requires_grad_()
    total = 0
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):  # uneven micro-batches
        part = {k: v[sl] for k, v in b.items()}
        part["chosen"] = c2[sl]
        total = total + call(name, part, num_pairs=6).loss
    (gc_acc,) = torch.autograd.grad(total, c2)
    close(total, full.loss)
    close(gc_acc, gc_full)


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_metrics_are_detached_0_dim_tensors(name):
    out = call(name, {k: v.clone().requires_grad_() if v.is_floating_point() else v
                      for k, v in random_batch().items()})
    assert out.loss.dim() == 0 and out.loss.requires_grad
    keys = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
            "logps/chosen", "logps/rejected"}
    assert keys <= set(out.metrics)
    assert ({"nll", "loss/odds_ratio"} <= set(out.metrics)) == (name == "orpo")
    for k, v in out.metrics.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, k


def test_accuracy_is_the_fraction_of_pairs_ranked_right():
    out, _, _ = run("simpo", [-1.0, -5.0, -2.0, -2.0], [-3.0, -1.0, -4.0, -1.0],
                    chosen_len=[1, 1, 1, 1], rejected_len=[1, 1, 1, 1])
    close(out.metrics["rewards/accuracy"], 0.5)


def test_low_precision_inputs_are_computed_in_float32():
    c = torch.tensor([-2.0, -3.0], dtype=torch.bfloat16, requires_grad=True)
    out = preference_loss("dpo", c, torch.tensor([-3.0, -3.0], dtype=torch.bfloat16),
                          torch.tensor([-2.5, -2.5]), torch.tensor([-2.5, -2.5]))
    (g,) = torch.autograd.grad(out.loss, c)
    assert out.loss.dtype == torch.float32 and g.dtype == torch.bfloat16


def test_specs_declare_what_the_trainer_needs():
    flags = {n: (s.needs_reference, s.needs_lengths, s.adds_nll)
             for n, s in PREFERENCE_LOSSES.items()}
    assert flags == {"dpo": (True, False, False), "orpo": (False, True, True),
                     "simpo": (False, True, False)}
    assert preference_params("dpo") == {"beta": 0.1, "label_smoothing": 0.0, "num_pairs": None}
    assert preference_params("orpo") == {"lam": 0.1, "num_pairs": None}
    assert preference_params("simpo") == {"beta": 2.0, "gamma": 0.5, "num_pairs": None}
    for _, spec in PREFERENCE_LOSSES.items():
        assert spec.formula and "arXiv" in spec.paper


# ---------------------------------------------------------------- errors


def test_unknown_objective_lists_the_known_ones():
    with pytest.raises(UnknownName, match="unknown preference objective 'ipo'; "
                                          "known: dpo, orpo, simpo"):
        preference_loss("ipo", t([-1.0]), t([-2.0]))


@pytest.mark.parametrize("name,missing", [
    ("dpo", "ref_chosen_logp and ref_rejected_logp"),
    ("orpo", "chosen_len and rejected_len"),
    ("simpo", "chosen_len and rejected_len"),
])
def test_missing_inputs_are_named(name, missing):
    with pytest.raises(ValueError, match=f"{name} needs {missing}"):
        preference_loss(name, t([-1.0]), t([-2.0]))


def test_one_missing_reference_is_named():
    with pytest.raises(ValueError, match="dpo needs ref_rejected_logp "):
        preference_loss("dpo", t([-1.0]), t([-2.0]), ref_chosen_logp=t([-1.0]))
    with pytest.raises(ValueError, match="simpo needs chosen_len "):
        preference_loss("simpo", t([-1.0]), t([-2.0]), rejected_len=t([1]))


@pytest.mark.parametrize("name,kw,match", [
    ("simpo", {"ref_chosen_logp": [-1.0], "ref_rejected_logp": [-1.0], "chosen_len": [1],
               "rejected_len": [1]}, "simpo does not read ref_chosen_logp, ref_rejected_logp"),
    ("dpo", {"ref_chosen_logp": [-1.0], "ref_rejected_logp": [-1.0], "chosen_len": [1]},
     "dpo does not read chosen_len"),
])
def test_inputs_an_objective_does_not_read_are_type_errors(name, kw, match):
    with pytest.raises(TypeError, match=match):
        run(name, [-1.0], [-2.0], **kw)


@pytest.mark.parametrize("name,kw,match", [
    ("dpo", {"bta": 0.2}, r"'dpo' has no parameter 'bta' \(did you mean 'beta'\?\)"),
    ("dpo", {"gamma": 0.2}, r"'dpo' has no parameter 'gamma' \(it belongs to simpo\)"),
    ("simpo", {"label_smoothing": 0.1}, r"\(it belongs to dpo\)"),
    ("orpo", {"beta": 0.2}, r"'orpo' has no parameter 'beta' \(pass lam \(TRL's ORPOConfig calls "
                            r"it beta\) instead; it belongs to dpo, simpo\)"),
    ("orpo", {"lambda": 0.2}, r"\(pass lam instead\)"),
    ("simpo", {"gamma_beta_ratio": 0.5}, r"pass gamma = gamma_beta_ratio \* beta instead"),
    ("simpo", {"zzz": 1}, r"\(no close match\); it takes: beta, gamma, num_pairs"),
])
def test_unknown_parameters_are_named(name, kw, match):
    b = random_batch()
    with pytest.raises(TypeError, match=match):
        call(name, b, **kw)


@pytest.mark.parametrize("name,kw,match", [
    ("dpo", {"beta": 0.0}, "beta must be > 0"),
    ("dpo", {"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
    ("simpo", {"gamma": -0.1}, "gamma .* must be >= 0"),
    ("orpo", {"lam": -1.0}, "lam must be >= 0"),
    ("orpo", {"num_pairs": 0}, "num_pairs must be > 0"),
])
def test_bad_parameter_values(name, kw, match):
    with pytest.raises(ValueError, match=match):
        call(name, random_batch(), **kw)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"chosen_logp must be \(B,\).*\(2, 3\)"):
        preference_loss("simpo", torch.zeros(2, 3), torch.zeros(2, 3), chosen_len=torch.ones(2, 3),
                        rejected_len=torch.ones(2, 3))
    with pytest.raises(ValueError,
                       match=r"rejected_logp must have chosen_logp's shape \(2,\), got \(3,\)"):
        preference_loss("dpo", torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"rejected_len must have chosen_logp's shape"):
        preference_loss("orpo", torch.zeros(2) - 1, torch.zeros(2) - 1, chosen_len=torch.ones(2),
                        rejected_len=torch.ones(1))
