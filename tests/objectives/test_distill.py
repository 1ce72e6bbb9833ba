"""Draft-distillation losses: hand-worked values, gradients (autograd), invariances, errors.

Hand cases use V = 3 and logits = log(probabilities), so every a_k, KL and product is a
fraction of powers of 2 written out in the comments (L = log(2) / 4 below).
"""
import math

import pytest
import torch

from posttrain.objectives import DISTILL_LOSSES, distill_loss
from posttrain.objectives.distill import (DistillParamError, block_terms, decay_gamma,
                                          distill_params, position_decay)
from posttrain.registry import UnknownName

LOG2 = math.log(2)
L = LOG2 / 4  # KL((1/2, 1/4, 1/4) || (1/4, 1/2, 1/4)) = 1/2 log 2 + 1/4 log 1/2 = log(2) / 4

A = (0.5, 0.25, 0.25)  # argmax 0
B = (0.25, 0.5, 0.25)  # argmax 1


def logits(*blocks):
    """(N, K, 3) float64 logits from per-position probability triples."""
    return torch.tensor(blocks, dtype=torch.float64).log()


# block 1: p = (A, B, A), q = (A, B, B): a = (1/2, 1/2, 1/4), KL = (0, 0, L), top1 = (1, 1, 0)
#          P = (1/2, 1/4, 1/16), E[N] = 13/16, s = (1, 1/2, 1/4), W = (13/16, 5/16, 1/16)
# block 2: p = (A, B, A), q = (B, A, A): a = (1/4, 1/4, 1/2), KL = (L, L, 0), top1 = (0, 0, 1)
#          P = (1/4, 1/16, 1/32), E[N] = 11/32, s = (1, 1/4, 1/16), W = (11/32, 3/32, 1/32)
TARGET = logits((A, B, A), (A, B, A))
DRAFT = logits((A, B, B), (B, A, A))
FULL = torch.ones(2, 3)
E1, E2 = 13 / 16, 11 / 32

HAND = {
    # kd, gamma = 7: block 1 = e^{-2/7} L; block 2 = (1 + e^{-1/7}) L
    "kd": (math.exp(-2 / 7) * L, (1 + math.exp(-1 / 7)) * L),
    # eal: -E[N] + sum_k KL_k
    "eal": (-E1 + L, -E2 + 2 * L),
    # survival_eal: -E[N] + sum_k s_k KL_k: block 1 = -13/16 + L/4; block 2 = -11/32 + L + L/4
    "survival_eal": (-E1 + L / 4, -E2 + 1.25 * L),
    # eal_exact: -sum_k W_k log a_k
    #   block 1 = (13/16 + 5/16) log 2 + 1/16 * 2 log 2 = 20/16 log 2
    #   block 2 = (11/32 + 3/32) * 2 log 2 + 1/32 log 2 = 29/32 log 2
    "eal_exact": (20 / 16 * LOG2, 29 / 32 * LOG2),
}


def close(actual, expected, tol=1e-12):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=tol, atol=tol)


def run(name, draft, target, mask, **kw):
    d = draft.clone().requires_grad_()
    out = distill_loss(name, d, target, mask, **kw)
    (g,) = torch.autograd.grad(out.loss, d)
    return out, g


def random_case(N=5, K=4, V=7, seed=0, holes=True):
    g = torch.Generator().manual_seed(seed)
    draft = torch.randn(N, K, V, generator=g, dtype=torch.float64) * 2
    target = torch.randn(N, K, V, generator=g, dtype=torch.float64) * 2
    mask = torch.ones(N, K)
    if holes:
        mask[0, 2:] = 0  # response ends inside the block
        mask[1, 1] = 0  # a hole in the middle ends the chain
        mask[2, :] = 0  # an all-padding block
    return draft, target, mask


# ---------------------------------------------------------------- hand-worked values


@pytest.mark.parametrize("name", list(HAND))
def test_hand_worked_values_per_block_and_mean(name):
    for i in range(2):
        out = distill_loss(name, DRAFT[i:i + 1], TARGET[i:i + 1], FULL[i:i + 1])
        close(out.loss, HAND[name][i])
    close(distill_loss(name, DRAFT, TARGET, FULL).loss, sum(HAND[name]) / 2)


def test_hand_worked_metrics():
    m = distill_loss("kd", DRAFT, TARGET, FULL).metrics
    close(m["kl"], 3 * L / 6)  # KL (0, 0, L, L, L, 0) over 6 valid positions
    close(m["top1"], 3 / 6)
    close(m["accept/a_mean"], (0.5 + 0.5 + 0.25 + 0.25 + 0.25 + 0.5) / 6)
    close(m["accept/a_first"], (0.5 + 0.25) / 2)
    close(m["accept/a_last"], (0.25 + 0.5) / 2)
    close(m["accept/expected_len"], (E1 + E2) / 2)
    close(m["accept/tau_expected"], (E1 + E2) / 2 + 1)
    close(m["accept/greedy_len"], (2 + 0) / 2)  # block 1 matches twice, block 2 misses first
    close(m["blocks"], 2)
    close(m["positions/valid"], 6)
    for v in m.values():
        assert v.dim() == 0 and not v.requires_grad


def test_parts_add_up_to_the_loss():
    for name, parts in (("eal", ("loss/eal", "loss/kl")), ("survival_eal", ("loss/eal", "loss/kl")),
                        ("kd", ("loss/kl",))):
        m = distill_loss(name, DRAFT, TARGET, FULL).metrics
        close(sum(m[k] for k in parts), m["loss"])
    m = distill_loss("eal", DRAFT, TARGET, FULL).metrics
    close(m["loss/eal"], -(E1 + E2) / 2)
    m = distill_loss("kd", DRAFT, TARGET, FULL, alpha=0.5).metrics
    close(m["loss/kl"] + m["loss/ce"], m["loss"])


def test_mask_ends_the_chain():
    # block 1 with mask (1, 0, 1): c = (1, 0, 0), P = (1/2, 0, 0), E[N] = 1/2, s = (1, 0, 0)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    d, t = DRAFT[:1], TARGET[:1]
    # kd has no chain: position 3 is valid and keeps its e^{-2/7} L
    close(distill_loss("kd", d, t, mask).loss, math.exp(-2 / 7) * L)
    # eal: uniform KL over the valid positions (0 + L), E[N] = 1/2
    close(distill_loss("eal", d, t, mask).loss, -0.5 + L)
    # survival_eal: s_3 = m_3 P_2 = 0, so position 3's KL is dropped
    close(distill_loss("survival_eal", d, t, mask).loss, -0.5)
    # eal_exact: W = (1/2, 0, 0): -(1/2) log(1/2)
    close(distill_loss("eal_exact", d, t, mask).loss, LOG2 / 2)
    m = distill_loss("kd", d, t, mask).metrics
    close(m["accept/expected_len"], 0.5)
    close(m["accept/greedy_len"], 1)  # position 2 matches but is padding
    close(m["positions/valid"], 2)


def test_kd_position_weights_and_gamma():
    close(position_decay(4, 7.0, torch.float64), [math.exp(-k / 7) for k in range(4)])
    # block 2, gamma = 2: w = (1, e^{-1/2}, e^{-1}), KL = (L, L, 0)
    close(distill_loss("kd", DRAFT[1:], TARGET[1:], FULL[1:], gamma=2.0).loss,
          (1 + math.exp(-0.5)) * L)
    # gamma = inf: uniform weights, equal to eal's KL part
    close(distill_loss("kd", DRAFT[1:], TARGET[1:], FULL[1:], gamma=math.inf).loss, 2 * L)
    assert [decay_gamma(b) for b in (8, 10, 16)] == [4.0, 5.0, 7.0]
    assert decay_gamma(4) == 2.0


def test_kd_alpha_is_the_decayed_hard_label_ce():
    # alpha = 1, block 1: -(log 1/2 + e^{-1/7} log 1/2 + e^{-2/7} log 1/4)
    expected = LOG2 * (1 + math.exp(-1 / 7) + 2 * math.exp(-2 / 7))
    close(distill_loss("kd", DRAFT[:1], TARGET[:1], FULL[:1], alpha=1.0).loss, expected)
    half = distill_loss("kd", DRAFT[:1], TARGET[:1], FULL[:1], alpha=0.5).loss
    close(half, 0.5 * expected + 0.5 * math.exp(-2 / 7) * L)


def test_kd_temperature_softens_both_sides_and_scales_by_t_squared():
    # V = 2, T = 2: target (2 log 3, 0) / 2 -> p = (3/4, 1/4); draft (0, 0) -> q = (1/2, 1/2)
    target = torch.tensor([[[2 * math.log(3), 0.0]]], dtype=torch.float64)
    draft = torch.zeros(1, 1, 2, dtype=torch.float64)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    out = distill_loss("kd", draft, target, torch.ones(1, 1), temperature=2.0)
    close(out.loss, 4 * kl)
    # the kl metric stays at T = 1: p = (9/10, 1/10)
    close(out.metrics["kl"], 0.9 * math.log(1.8) + 0.1 * math.log(0.2))


def test_kd_is_zero_when_draft_equals_target():
    _, target, mask = random_case(holes=False)
    for kw in ({}, {"temperature": 3.0}):
        out, g = run("kd", target, target, mask, **kw)
        close(out.loss, 0.0)
        close(g, torch.zeros_like(g))
    m = distill_loss("kd", target, target, mask).metrics
    close(m["kl"], 0.0)
    close(m["top1"], 1.0)


# ---------------------------------------------------------------- gradients


def naive_accept(draft, target, mask):
    """a_k, alive c_k and E[N] by explicit loops (autograd through a_k)."""
    q = torch.softmax(draft, -1)
    t = target.argmax(-1)
    N, K = mask.shape
    a = q.gather(-1, t[..., None]).squeeze(-1)  # (N, K)
    expected = []
    for n in range(N):
        total, prod = 0.0, 1.0
        for k in range(K):
            if mask[n, k] == 0:
                break
            prod = prod * a[n, k]
            total = total + prod
        expected.append(total if torch.is_tensor(total) else torch.tensor(0.0, dtype=draft.dtype))
    return a, torch.stack(expected)


def naive_kl(draft, target):
    logp, logq = torch.log_softmax(target, -1), torch.log_softmax(draft, -1)
    return (logp.exp() * (logp - logq)).sum(-1)  # (N, K)


@pytest.mark.parametrize("seed", range(4))
def test_eal_exact_gradient_is_minus_grad_expected_length(seed):
    draft, target, mask = random_case(seed=seed, holes=seed % 2 == 0)
    _, g = run("eal_exact", draft, target, mask)
    d = draft.clone().requires_grad_()
    _, expected = naive_accept(d, target, mask)
    (g_ref,) = torch.autograd.grad(-expected.sum() / mask.shape[0], d)
    close(g, g_ref, tol=1e-10)
    assert g.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("seed", range(3))
def test_eal_gradient_matches_direct_autograd(seed):
    draft, target, mask = random_case(seed=seed)
    out, g = run("eal", draft, target, mask, eal_coef=0.7, kl_coef=0.3)
    d = draft.clone().requires_grad_()
    _, expected = naive_accept(d, target, mask)
    ref = (-0.7 * expected.sum() + 0.3 * (naive_kl(d, target) * mask).sum()) / mask.shape[0]
    (g_ref,) = torch.autograd.grad(ref, d)
    close(out.loss, ref, tol=1e-10)
    close(g, g_ref, tol=1e-10)


def test_survival_weights_are_detached():
    draft, target, mask = random_case(seed=3)
    _, g = run("survival_eal", draft, target, mask, eal_coef=0.0)
    d = draft.clone().requires_grad_()
    a, _ = naive_accept(d, target, mask)
    alive = torch.cumprod(mask.double(), -1)
    prev = torch.cat([torch.ones(mask.shape[0], 1, dtype=a.dtype),
                      torch.cumprod(a * alive, -1)[:, :-1]], -1) * mask  # s_k with gradient
    kl = naive_kl(d, target) * mask
    (g_detached,) = torch.autograd.grad((prev.detach() * kl).sum() / mask.shape[0], d, retain_graph=True)
    (g_through,) = torch.autograd.grad((prev * kl).sum() / mask.shape[0], d)
    close(g, g_detached, tol=1e-10)
    assert (g - g_through).abs().max() > 1e-4  # the check can fail: s_k's own gradient differs


def test_kd_gradient_is_weighted_q_minus_p():
    # d KL(p || q) / d z_q = q - p, times w_k / N
    draft, target, mask = random_case(seed=5, holes=False)
    _, g = run("kd", draft, target, mask, gamma=3.0)
    w = position_decay(mask.shape[1], 3.0, torch.float64)[None, :, None]
    expected = w * (torch.softmax(draft, -1) - torch.softmax(target, -1)) / mask.shape[0]
    close(g, expected, tol=1e-10)


@pytest.mark.parametrize("name", list(DISTILL_LOSSES))
def test_no_gradient_to_target_and_none_at_padding(name):
    draft, target, mask = random_case(seed=6)
    d, t = draft.clone().requires_grad_(), target.clone().requires_grad_()
    out = distill_loss(name, d, t, mask)
    gd, gt = torch.autograd.grad(out.loss, (d, t), allow_unused=True)
    assert gt is None
    assert torch.all(gd[mask == 0] == 0)
    # garbage at padding changes nothing
    d2, t2 = draft.clone(), target.clone()
    d2[mask == 0], t2[mask == 0] = 1e4, -1e4
    close(distill_loss(name, d2, t2, mask).loss, out.loss, tol=1e-10)


@pytest.mark.parametrize("kw", [{}, {"temperature": 2.5, "alpha": 0.3}])
def test_kd_gradcheck_fp64(kw):
    draft, target, mask = random_case(N=3, K=3, V=5, seed=10)
    f = lambda d: distill_loss("kd", d, target, mask, chunk_positions=4, **kw).loss  # noqa: E731
    assert torch.autograd.gradcheck(f, (draft.clone().requires_grad_(),))


@pytest.mark.parametrize("name,kw", [("kd", {"temperature": 0.5, "alpha": 0.2}), ("eal", {}),
                                     ("survival_eal", {}), ("eal_exact", {})])
def test_chunking_does_not_change_values_or_gradients(name, kw):
    draft, target, mask = random_case(N=5, K=4, seed=11)  # 20 positions
    ref, g_ref = run(name, draft, target, mask, chunk_positions=1024, **kw)
    for chunk in (1, 3, 7, 20):  # one row, ragged last chunk, exact fit
        out, g = run(name, draft, target, mask, chunk_positions=chunk, **kw)
        close(out.loss, ref.loss, tol=1e-12)
        close(g, g_ref, tol=1e-12)
        for k, v in ref.metrics.items():
            close(out.metrics[k], v, tol=1e-12)


@pytest.mark.parametrize("name", list(DISTILL_LOSSES))
def test_nan_and_inf_at_padding_are_never_read(name):
    draft, target, mask = random_case(seed=12)
    ref, g_ref = run(name, draft, target, mask, chunk_positions=3)
    d2, t2 = draft.clone(), target.clone()
    d2[mask == 0], t2[mask == 0] = math.nan, math.inf
    out, g = run(name, d2, t2, mask, chunk_positions=3)
    close(out.loss, ref.loss, tol=1e-12)
    close(g, g_ref, tol=1e-12)
    assert all(torch.isfinite(v) for v in out.metrics.values())


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("name", list(DISTILL_LOSSES))
def test_micro_batches_with_the_global_block_count_add_up(name):
    draft, target, mask = random_case(N=6, seed=7)
    full, g_full = run(name, draft, target, mask)
    halves = [run(name, draft[s], target[s], mask[s], num_blocks=6)
              for s in (slice(0, 2), slice(2, 6))]
    close(halves[0][0].loss + halves[1][0].loss, full.loss, tol=1e-10)
    close(torch.cat([halves[0][1], halves[1][1]]), g_full, tol=1e-10)
    # num_blocks as a tensor works the same
    close(distill_loss(name, draft[:2], target[:2], mask[:2],
                       num_blocks=torch.tensor(6.0)).loss, halves[0][0].loss, tol=1e-12)


@pytest.mark.parametrize("name", list(DISTILL_LOSSES))
def test_invariant_to_a_constant_shift_of_either_side(name):
    draft, target, mask = random_case(seed=8)
    ref = distill_loss(name, draft, target, mask)
    g = torch.Generator().manual_seed(1)
    shift = torch.randn(*mask.shape, 1, generator=g, dtype=torch.float64) * 50
    for d, t in ((draft, target + shift), (draft + shift, target)):
        out = distill_loss(name, d, t, mask)
        close(out.loss, ref.loss, tol=1e-9)
        for k, v in ref.metrics.items():
            close(out.metrics[k], v, tol=1e-9)


@pytest.mark.parametrize("name", list(DISTILL_LOSSES))
def test_low_precision_inputs_are_computed_in_fp32(name):
    draft, target, mask = random_case(seed=9, holes=False)
    d16 = draft.to(torch.bfloat16).requires_grad_()
    out = distill_loss(name, d16, target.to(torch.bfloat16), mask)
    assert out.loss.dtype == torch.float32
    ref = distill_loss(name, d16.detach().float().double(), target.to(torch.bfloat16).double(), mask)
    close(out.loss, ref.loss, tol=1e-5)
    out.loss.backward()
    assert d16.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("name", list(DISTILL_LOSSES))
def test_autocast_does_not_lower_the_precision(name):
    # Under bf16 autocast a batched dot product would run in bf16 (~1e-3 relative error on
    # the KL of V = 3000); the terms are computed with autocast off, so fp32 accuracy holds.
    g = torch.Generator().manual_seed(14)
    draft = torch.randn(4, 15, 3000, generator=g) * 2
    target = torch.randn(4, 15, 3000, generator=g) * 2
    mask = torch.ones(4, 15)
    ref = distill_loss(name, draft.double(), target.double(), mask).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distill_loss(name, draft, target, mask).loss
    close(out, ref, tol=2e-5)


def test_block_terms_survival_and_reach():
    t = block_terms(DRAFT, TARGET, FULL)
    close(t.reach(), [[0.5, 0.25, 1 / 16], [0.25, 1 / 16, 1 / 32]])
    close(t.survival(), [[1, 0.5, 0.25], [1, 0.25, 1 / 16]])
    assert not t.survival().requires_grad


# ---------------------------------------------------------------- errors


def test_unknown_loss_lists_the_known_ones():
    with pytest.raises(UnknownName, match="known: kd, eal, survival_eal, eal_exact"):
        distill_loss("ce", DRAFT, TARGET, FULL)


def test_unknown_parameter_names_the_closest_and_lists_all():
    with pytest.raises(ValueError, match=r"no parameter 'gama' \(did you mean 'gamma'\?\); "
                                         r"it takes: gamma, alpha, temperature, num_blocks"):
        distill_loss("kd", DRAFT, TARGET, FULL, gama=7)
    with pytest.raises(TypeError, match=r"'gamma' \(it belongs to kd\)"):
        distill_loss("eal", DRAFT, TARGET, FULL, gamma=7)
    assert issubclass(DistillParamError, ValueError) and issubclass(DistillParamError, TypeError)
    assert distill_params("survival_eal") == {"eal_coef": 1.0, "kl_coef": 1.0, "num_blocks": None,
                                              "chunk_positions": 1024}


@pytest.mark.parametrize("name,kw,match", [
    ("kd", {"gamma": 0.0}, "gamma must be a number > 0"),
    ("kd", {"gamma": -1.0}, "gamma must be a number > 0"),
    ("kd", {"temperature": 0.0}, "temperature must be a number > 0"),
    ("kd", {"temperature": math.inf}, "temperature must be finite"),
    ("kd", {"alpha": 1.5}, r"alpha .* must be in \[0, 1\]"),
    ("eal", {"kl_coef": -1.0}, "kl_coef must be >= 0"),
    ("survival_eal", {"eal_coef": 0.0, "kl_coef": 0.0}, "both 0"),
    ("kd", {"num_blocks": 0}, "num_blocks must be > 0"),
    ("kd", {"chunk_positions": 0}, "chunk_positions must be an int >= 1"),
])
def test_bad_parameter_values(name, kw, match):
    with pytest.raises(ValueError, match=match):
        distill_loss(name, DRAFT, TARGET, FULL, **kw)


@pytest.mark.parametrize("draft,target,mask,match", [
    (DRAFT[0], TARGET[0], FULL[0], r"draft_logits must be \(N, K, V\)"),
    (DRAFT, TARGET[:, :2], FULL, "target_logits must have draft_logits' shape"),
    (DRAFT, TARGET, FULL[:, :2], r"mask must be \(N, K\) = \(2, 3\)"),
    (DRAFT.long(), TARGET, FULL, "floating point"),
    (DRAFT[:0], TARGET[:0], FULL[:0], "no blocks"),
])
def test_bad_shapes(draft, target, mask, match):
    with pytest.raises(ValueError, match=match):
        distill_loss("kd", draft, target, mask)


def test_decay_gamma_rejects_a_block_without_drafted_tokens():
    with pytest.raises(ValueError, match="block_size must be >= 2"):
        decay_gamma(1)


# ---------------------------------------------------------------- learning


def test_training_free_draft_logits_moves_acceptance_as_each_objective_says():
    # Free (N, K, V) draft logits, zero-initialised (a_k = 1/V, E[N] ~ 1/7), fitted for 60 Adam
    # steps to a fixed target. KD's optimum is q = p, so E[N] goes to the target's own
    # sum_k prod_{j<=k} p_j(t_j) (1.63 here) and no further; the EAL losses trade KL for
    # acceptance and pass it; eal_exact alone drives q_k(t_k) -> 1, E[N] -> K = 4.
    g = torch.Generator().manual_seed(13)
    target = torch.randn(8, 4, 8, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(8, 4)
    own = float(distill_loss("kd", target, target, mask).metrics["accept/expected_len"])
    assert 1.5 < own < 1.8
    got = {}
    for name in DISTILL_LOSSES:
        draft = torch.zeros(8, 4, 8, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([draft], lr=0.1)
        assert distill_loss(name, draft, target, mask).metrics["accept/expected_len"] < 0.2
        for _ in range(60):
            opt.zero_grad()
            distill_loss(name, draft, target, mask).loss.backward()
            opt.step()
        m = distill_loss(name, draft, target, mask).metrics
        got[name] = float(m["accept/expected_len"]), float(m["kl"])
        assert m["top1"] == 1.0, name
    assert abs(got["kd"][0] - own) < 0.05 and got["kd"][1] < 0.01, got
    for name in ("eal", "survival_eal"):
        assert got[name][0] > own + 1.0 and got[name][1] < 0.25, got
    assert got["eal_exact"][0] > 3.9, got
