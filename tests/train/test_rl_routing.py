"""Routing replay and the stability diagnostics in the RL trainer, on the tiny MoE with a
bf16-rounded rollout copy (so the engine routes some tokens differently) and two
mini-batches per rollout batch (so later updates are off-policy).

Runs with the same seed see the same first rollout batch, so the step-1 figures of
none / r2 / r3 compare the same tokens."""

import math

import pytest
import torch

from posttrain.config import ConfigError, RLRecipe, load_recipe
from posttrain.rewards import register_reward
from posttrain.train.rl import run_rl
from posttrain.train.rl_diagnostics import StepStats


@register_reward("_moe_vowels", checks="fraction of vowel characters")
def _vowels(completion, example):
    return sum(ch in "aeiou" for ch in completion) / max(len(completion), 1)


@pytest.fixture(scope="module")
def moe_path(_private_cache):
    from posttrain.models.tiny import resolve_builtin
    return resolve_builtin("builtin:tiny-moe")


def recipe(path, *overrides):
    base = [f"model.path={path}", "train.progress=false", "data.train=[{kind: builtin, path: arithmetic, n: 64}]",
            "rewards=[{name: vowels, reward: _moe_vowels}]", "rollout.max_new_tokens=12",
            "rl.prompts_per_step=4", "rollout.group_size=4", "train.batch_size=8", "train.max_steps=2",
            "train.lr=1e-3", "rollout.precision=bf16_weights", "rl.mini_batches=2"]
    return load_recipe(RLRecipe, None, base + list(overrides))


@pytest.fixture(scope="module")
def runs(moe_path, tmp_path_factory):
    out = {}
    for mode in ("none", "r2", "r3"):
        out[mode] = run_rl(recipe(moe_path, f"rl.routing_replay={mode}"),
                           tmp_path_factory.mktemp(mode)).history
    return out


@pytest.mark.slow
def test_r3_replays_the_engine_routing_exactly_and_lowers_the_mismatch(runs):
    none, r3 = runs["none"], runs["r3"]
    # without replay the trainer routes some loss tokens differently from the bf16 engine
    assert sum(r["routing/divergence"] for r in none) > 0
    assert sum(r["routing/divergence_replayed"] for r in none) > 0
    # r3: every update pass uses exactly the engine's experts; the extra natural pass still
    # sees the divergence (the same rollout batch at step 1)
    assert all(r["routing/divergence_replayed"] == 0.0 for r in r3)
    assert r3[0]["routing/divergence"] == none[0]["routing/divergence"] > 0
    # pi_old (and the first update's forward, the same weights and routes) vs the engine, on
    # the step-1 batch that both runs share; later steps sample from different weights, so
    # their tokens differ and the comparison would not be like for like
    a, b = r3[0], none[0]
    print({k: (a[k], b[k]) for k in ("mismatch/abs_logp_diff_mean", "mismatch/abs_logp_diff_max")})
    assert a["mismatch/abs_logp_diff_mean"] < b["mismatch/abs_logp_diff_mean"]
    assert a["mismatch/abs_logp_diff_max"] < b["mismatch/abs_logp_diff_max"]
    # the forward of the first update (before any step: its gap to the engine is the
    # training-inference one) is closer to the engine under r3; later updates add staleness
    assert r3[0]["mismatch/update_abs_logp_diff_mb0"] < none[0]["mismatch/update_abs_logp_diff_mb0"]


@pytest.mark.slow
def test_r2_replays_pi_old_routing(runs):
    none, r2 = runs["none"], runs["r2"]
    assert all(r["routing/divergence_vs_old"] == 0.0 for r in r2)
    # the update passes route as pi_old did, so they diverge from the engine as pi_old does
    assert all(r["routing/divergence_replayed"] == r["routing/divergence"] for r in r2)
    # r2 does not touch pi_old: its mismatch to the engine is the unreplayed one
    assert r2[0]["mismatch/abs_logp_diff_mean"] == none[0]["mismatch/abs_logp_diff_mean"]


@pytest.mark.slow
def test_stability_diagnostics_are_logged_and_consistent(runs):
    for mode, rows in runs.items():
        for r in rows:
            assert r["staleness/kl_mb0"] == 0.0 < r["staleness/kl_mb1"], mode
            assert r["staleness/kl_max"] == r["staleness/kl_mb1"]
            assert 0.0 <= r["mismatch/is_out_of_range_frac"] <= 1.0
            assert r["mismatch/k3"] >= 0 and r["mismatch/kl"] == r["mismatch/k3"]
            assert r["mismatch/abs_logp_diff_max"] >= r["mismatch/abs_logp_diff_mean"] > 0
            assert r["entropy/top20_mean"] >= r["entropy/rest_mean"] > 0
            assert r["grad_norm_max"] >= r["grad_norm"] > 0
            assert 0 <= r["routing/divergence_layer"] <= r["routing/divergence"] <= 1
    # the stored routes: the engine's and pi_old's under none / r2, plus r3's natural pass
    # (the same step-1 batch: exactly 3/2 of the bytes)
    assert runs["none"][0]["routing/memory_bytes"] == runs["r2"][0]["routing/memory_bytes"] > 0
    assert runs["r3"][0]["routing/memory_bytes"] == 1.5 * runs["none"][0]["routing/memory_bytes"]


@pytest.mark.slow
def test_r3_works_with_a_lora_adapter_on_policy(moe_path, tmp_path):
    rows = run_rl(recipe(moe_path, "rl.routing_replay=r3", "adapter.kind=lora", "adapter.r=4",
                         "rl.mini_batches=1", "train.max_steps=1"), tmp_path).history
    assert rows[0]["routing/divergence_replayed"] == 0.0
    assert rows[0]["updates"] == 1 and math.isfinite(rows[0]["loss"]) and rows[0]["grad_norm"] > 0
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()


def test_routing_replay_on_a_dense_model_is_a_config_error(tiny_path, tmp_path):
    with pytest.raises(ConfigError, match="routing_replay.*no supported MoE router"):
        run_rl(recipe(tiny_path, "rl.routing_replay=r3"), tmp_path)


def test_unknown_routing_replay_mode_names_the_choices(moe_path):
    with pytest.raises(ConfigError, match="routing_replay"):
        recipe(moe_path, "rl.routing_replay=r4")


def test_step_stats_hand_worked_values():
    s = StepStats()
    old = torch.tensor([[0.1, -1.0, 0.8, 5.0]])
    rollout = torch.zeros(1, 4)
    valid = torch.tensor([[True, True, True, False]])  # the 5.0 is padding
    s.mismatch(old, rollout, valid)
    s.entropy(torch.arange(1.0, 11.0).view(2, 5), torch.ones(2, 5, dtype=torch.bool))
    m = s.metrics()
    assert m["mismatch/abs_logp_diff_mean"] == pytest.approx((0.1 + 1.0 + 0.8) / 3)
    assert m["mismatch/abs_logp_diff_max"] == pytest.approx(1.0)
    d = torch.tensor([0.1, -1.0, 0.8])
    assert m["mismatch/k3"] == pytest.approx(float((d.exp() - 1 - d).mean()))
    assert m["mismatch/is_out_of_range_frac"] == pytest.approx(2 / 3)  # |log w| > log 2
    assert m["entropy/top20_mean"] == pytest.approx(9.5) and m["entropy/rest_mean"] == pytest.approx(4.5)


def test_divergence_counts_tokens_whose_expert_set_differs_in_any_layer():
    s = StepStats()
    ref = torch.tensor([[[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[0, 1], [0, 1]]]])  # (1, 3, L=2, k=2)
    used = ref.clone()
    used[0, 0, 0] = torch.tensor([1, 0])  # the same set in another order: not a divergence
    used[0, 1, 1] = torch.tensor([6, 5])  # one layer differs
    used[0, 2, :] = torch.tensor([2, 3])  # both layers differ, but the token is not a loss token
    s.divergence("routing/divergence", used, ref, torch.tensor([[True, True, False]]))
    m = s.metrics()
    assert m["routing/divergence"] == pytest.approx(1 / 2)
    assert m["routing/divergence_layer"] == pytest.approx(1 / 4)


@pytest.mark.slow
def test_the_tiny_moe_recipe_runs_with_r3(tmp_path):
    """The shipped recipe, cut to one small step: it loads, trains and replays exactly."""
    from pathlib import Path
    import posttrain
    path = Path(posttrain.__file__).parent / "recipes" / "tiny-moe.yaml"
    r = load_recipe(RLRecipe, path, ["rl.routing_replay=r3", "train.max_steps=1", "rl.prompts_per_step=2",
                                     "data.eval=[]", "train.progress=false", "rollout.max_new_tokens=8"])
    assert r.rl.mini_batches == 4 and r.rollout.precision == "bf16_weights"
    rows = run_rl(r, tmp_path).history
    assert rows[0]["updates"] == 4 and rows[0]["routing/divergence_replayed"] == 0.0
