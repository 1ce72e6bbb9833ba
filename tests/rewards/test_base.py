"""The reward contract: the safe wrapper scores every failure as the floor, with a reason,
and RewardSet builds the (N, K) matrix with weights and metrics."""

import math
import threading
import time

import pytest

from posttrain.registry import UnknownName
from posttrain.rewards import REWARDS, RewardResult, RewardSet, get_reward, register_reward


@register_reward("_test_len", checks="length / 10")
def _len(completion, example, *, scale=10.0):
    return len(completion) / scale


@register_reward("_test_raise", checks="raises", floor=-1.0, ceiling=1.0)
def _raise(completion, example):
    raise RuntimeError("boom")


@register_reward("_test_loop", checks="never returns", timeout_s=0.5)
def _loop(completion, example):
    while True:
        pass


@register_reward("_test_alloc", checks="allocates 8 GiB")
def _alloc(completion, example):
    return len(bytearray(8 * 2**30))


@register_reward("_test_exit", checks="kills its process")
def _exit(completion, example):
    import os
    os._exit(3)


@register_reward("_test_nan", checks="returns NaN")
def _nan(completion, example):
    return float("nan")


@register_reward("_test_reason", checks="returns a RewardResult")
def _reason(completion, example):
    return RewardResult(0.25, "partial", "one of four")


@register_reward("_test_inline", checks="raises in-process", isolate=False, max_chars=5)
def _inline(completion, example):
    return 1 / 0 if completion == "x" else 0.5


def test_plain_score_and_params():
    assert get_reward("_test_len")("abc", {}) == pytest.approx(0.3)
    assert get_reward("_test_len", scale=1.0)("abcdefgh", {}) == 1.0  # clamped to the ceiling
    with pytest.raises(ValueError, match="no option 'bogus'; its options: scale"):
        get_reward("_test_len", bogus=1)


def test_unknown_reward_lists_names():
    with pytest.raises(UnknownName, match="_test_len"):
        get_reward("no_such_reward")


@pytest.mark.parametrize("name, reason, floor", [
    ("_test_raise", "error", -1.0),
    ("_test_alloc", "memory", 0.0),
    ("_test_exit", "crash", 0.0),
    ("_test_nan", "bad_value", 0.0),
])
def test_failures_score_the_floor_with_a_reason(name, reason, floor):
    # no wall clock: had a failure been noticed only by the 5 s timeout, the reason would
    # be "timeout" (the 8 GiB allocation must hit the worker's memory cap, not run)
    res = get_reward(name).evaluate("completion", {})
    assert (res.score, res.reason) == (floor, reason), res


KILL_SLACK_S = 10.0
"""A reward cut off at its timeout must return within timeout + this (20x the 0.5 s timeout:
forking a fresh worker on a loaded 2-core machine is what varies); a loop left running
still fails it."""


def test_timeout_kills_the_worker_and_the_next_call_works():
    out = {}
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: out.update(r=get_reward("_test_loop").evaluate("x", {}),
                                                    s=time.perf_counter() - t0), daemon=True)
    th.start()
    th.join(timeout=3 * KILL_SLACK_S)  # a hang fails here instead of blocking the suite
    assert "r" in out, "the looping reward was not cut off"
    assert (out["r"].score, out["r"].reason, out["r"].detail) == (0.0, "timeout", "over 0.5 s")
    assert out["s"] < REWARDS.get("_test_loop").timeout_s + KILL_SLACK_S
    assert get_reward("_test_len")("abcd", {}) == pytest.approx(0.4)


def test_timeout_works_off_the_main_thread():
    out = {}
    th = threading.Thread(target=lambda: out.update(r=get_reward("_test_loop").evaluate("x", {})))
    th.start()
    th.join(timeout=10)
    assert out["r"].reason == "timeout"


def test_size_cap_and_non_string_input():
    assert get_reward("_test_inline").evaluate("x" * 6, {}).reason == "too_large"
    assert get_reward("_test_len").evaluate(None, {}).reason == "bad_value"
    assert get_reward("_test_inline").evaluate("x", {}).reason == "error"  # inline, caught
    assert get_reward("_test_inline")("ok", {}) == 0.5


def test_reward_result_passes_reason_through():
    res = get_reward("_test_reason").evaluate("anything", {"a": 1})
    assert (res.score, res.reason, res.detail) == (0.25, "partial", "one of four")


def test_reward_set_matrix_weights_and_metrics():
    rs = RewardSet({"len": "_test_len", "bad": "_test_raise"}, weights={"len": 2.0, "bad": 0.5})
    batch = rs.evaluate(["ab", "abcd"], [{}, {}])
    m = batch.matrix()
    assert m.shape == (2, 2)
    assert m[:, 0].tolist() == pytest.approx([0.2, 0.4])
    assert m[:, 1].tolist() == [-1.0, -1.0]
    # totals: 2 * 0.2 - 0.5 = -0.1 and 2 * 0.4 - 0.5 = 0.3
    assert batch.total() == pytest.approx([-0.1, 0.3])
    metrics = batch.metrics()
    assert metrics["reward/mean"] == pytest.approx(0.1)
    assert metrics["reward/std"] == pytest.approx(0.2)
    assert metrics["reward/len/mean"] == pytest.approx(0.3)
    assert metrics["reward_fail/bad/error"] == 2
    assert all(math.isfinite(v) for v in metrics.values())


def test_reward_set_params_and_errors():
    rs = RewardSet({"l": {"reward": "_test_len", "params": {"scale": 2.0}}})
    assert rs.evaluate(["a"], [{}]).scores == [[0.5]]
    with pytest.raises(ValueError, match="unknown components"):
        RewardSet(["_test_len"], weights={"nope": 1.0})
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        rs.evaluate(["a", "b"], [{}])


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_reward("_test_len", checks="again")(lambda c, e: 0.0)
    assert "_test_len" in REWARDS
