"""Errors a user can cause name the thing and what to do; nothing is silently ignored."""
import pytest
import torch

from posttrain.objectives import (POLICY_LOSSES, PolicyObjective, objective_normalisers,
                                  objective_params, policy_loss, register_objective)
from posttrain.registry import UnknownName

B, T = 2, 3


def call(name="grpo", **kw):
    logp = torch.zeros(B, T, requires_grad=True)
    inputs = {k: kw.pop(k) for k in ("rollout_logp", "ref_logp", "entropy", "advantages", "mask")
              if k in kw}
    return policy_loss(name, logp, torch.zeros(B, T), inputs.pop("advantages", torch.ones(B)),
                       inputs.pop("mask", torch.ones(B, T)), **inputs, **kw)


def test_unknown_objective_lists_the_known_ones():
    with pytest.raises(UnknownName) as e:
        call("ppo")
    assert str(e.value) == f"unknown policy objective 'ppo'; known: {', '.join(POLICY_LOSSES.names())}"


def test_unknown_parameter_is_named_with_the_closest_known_one():
    with pytest.raises(TypeError, match=r"no parameter 'eps_hihg' \(did you mean 'eps_high'\?\)"):
        call(eps_hihg=0.3)


def test_a_parameter_of_another_objective_is_an_error():
    with pytest.raises(TypeError, match=r"'grpo' has no parameter 'tau_pos' \(it belongs to sapo\)"):
        call(tau_pos=1.0)
    with pytest.raises(TypeError, match="is_cap"):
        call("dapo", is_cap=2.0)


@pytest.mark.parametrize("kw,match", [
    ({"num_tokens": 10}, "aggregation 'seq-mean-token-mean' does not use num_tokens"),
    ({"aggregation": "token-mean", "num_seqs": 4}, "does not use num_seqs"),
    ({"mismatch_cap": 3.0}, "mismatch_cap applies to the \\*_truncate modes"),
    ({"mismatch": "token_truncate", "mismatch_bounds": (0.5, 2), "rollout_logp": torch.zeros(B, T)},
     "mismatch_bounds applies to the \\*_mask modes"),
    ({"kl_estimator": "k2"}, "kl_estimator applies only with ref_logp"),
    ({"top_entropy_rho": 0.2, "entropy_threshold": 0.5, "entropy": torch.ones(B, T)}, "not both"),
])
def test_parameters_that_do_not_apply_are_type_errors(kw, match):
    with pytest.raises(TypeError, match=match):
        call(**kw)


@pytest.mark.parametrize("name,kw,match", [
    ("dr_grpo", {}, "needs max_completion_len"),
    ("grpo", {"aggregation": "constant"}, "needs max_completion_len"),
    ("grpo", {"beta": 0.1}, "needs ref_logp"),
    ("grpo", {"mismatch": "token_mask"}, "needs rollout_logp"),
    ("reinforce_is", {}, "mismatch='token' needs rollout_logp"),
    ("grpo", {"entropy_coef": 0.01}, "entropy_coef needs the entropy tensor"),
    ("grpo", {"top_entropy_rho": 0.2}, "needs the entropy tensor"),
    ("grpo", {"top_entropy_rho": 0.0, "entropy": torch.ones(B, T)}, "must be in \\(0, 1\\]"),
    ("grpo", {"eps_low": 1.5}, "eps_low must be < 1"),
    ("grpo", {"eps_high": -0.1}, "eps_high must be >= 0"),
    ("sapo", {"tau_neg": 0.0}, "tau_neg must be > 0"),
    ("cispo", {"is_cap": 0.0}, "is_cap must be > 0"),
    ("grpo", {"beta": -1.0}, "beta must be >= 0"),
    ("grpo", {"mismatch": "token_mask", "mismatch_bounds": (2.0, 0.5), "rollout_logp": torch.zeros(B, T)},
     "0 < lo < hi"),
    ("grpo", {"advantages": torch.ones(B + 1)}, "advantages must be"),
    ("grpo", {"mask": torch.ones(B, T + 1)}, "mask must have logp's shape"),
])
def test_bad_values_and_missing_inputs_are_value_errors(name, kw, match):
    with pytest.raises(ValueError, match=match):
        call(name, **kw)


@pytest.mark.parametrize("kw", [
    {"aggregation": "mean"},
    {"kl_estimator": "k4", "ref_logp": torch.zeros(B, T)},
    {"mismatch": "tis", "rollout_logp": torch.zeros(B, T)},
])
def test_unknown_modes_list_the_known_ones(kw):
    with pytest.raises(UnknownName, match="known: "):
        call(**kw)


def test_registering_an_objective_checks_its_declaration():
    with pytest.raises(ValueError, match="already registered"):
        register_objective("grpo", POLICY_LOSSES.get("grpo"))
    bad = PolicyObjective("clip", "token", "token-mean", "f", "p", params={"tau_pos": 1.0})
    with pytest.raises(ValueError, match="surrogate 'clip' has no parameter tau_pos"):
        register_objective("clip_with_tau", bad)
    with pytest.raises(UnknownName, match="unknown ratio level 'prefix'"):
        register_objective("prefix_clip", PolicyObjective("clip", "prefix", "token-mean", "f", "p"))
    assert "clip_with_tau" not in POLICY_LOSSES and "prefix_clip" not in POLICY_LOSSES


def test_the_trainer_can_ask_what_an_objective_takes():
    assert objective_normalisers("dapo") == ("num_tokens",)
    assert objective_normalisers("dr_grpo") == ("num_seqs", "max_completion_len")
    assert objective_normalisers("dapo", aggregation="seq-mean-token-sum") == ("num_seqs",)
    params = objective_params("sapo")
    assert params["tau_pos"] == 1.0 and params["tau_neg"] == 1.05
    assert params["aggregation"] == "seq-mean-token-mean" and params["beta"] == 0.0
    assert objective_params("reinforce_is")["mismatch"] == "token"


def test_cached_settings_still_check_every_call():
    """policy_loss caches its resolved settings: a bad call after a good one still raises, a
    missing input is still caught, and normaliser values are read on every call."""
    call("dapo", eps_high=0.28)
    with pytest.raises(TypeError, match="eps_hgh"):
        call("dapo", eps_hgh=0.28)
    call("dapo", eps_high=0.28, beta=0.1, ref_logp=torch.zeros(B, T))
    with pytest.raises(ValueError, match="needs ref_logp"):
        call("dapo", eps_high=0.28, beta=0.1)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    a = call("dapo", num_tokens=3.0, advantages=adv, mask=mask).loss
    b = call("dapo", num_tokens=6.0, advantages=adv, mask=mask).loss
    torch.testing.assert_close(b, a / 2)
    call("cispo", mismatch_bounds=[0.5, 2.0], mismatch="token_mask", rollout_logp=torch.zeros(B, T))  # a list: not cached
