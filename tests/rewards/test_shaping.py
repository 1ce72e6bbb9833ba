"""Shaping rewards: DAPO's overlong punishment at hand-worked points, and think_format."""

import pytest

from posttrain.rewards import REWARDS, get_reward
from posttrain.rewards.shaping import overlong, overlong_penalty, think_format

# ----------------------------------------------------------------------------- overlong
# L_max = 20, L_cache = 4: no punishment up to 16, then -1/4 per token, -1 from 20 on.


@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (16, 0.0),          # L <= L_max - L_cache
    (17, -0.25), (18, -0.5),      # ((20 - 4) - 17) / 4, and the midpoint of the ramp
    (19, -0.75), (20, -1.0),      # L = L_max is already the full punishment
    (21, -1.0), (10**6, -1.0),    # beyond L_max
])
def test_overlong_hand_worked(length, expected):
    assert overlong_penalty(length, 20, 4) == expected
    res = overlong("x", {"completion_tokens": length}, max_len=20, cache=4)
    assert (res.score, res.reason) == (expected, "ok")


def test_overlong_dapo_setting():
    # DAPO: 16,384 expected tokens + 4,096 cache = 20,480; the default cache is max_len // 5.
    ex = {"max_new_tokens": 20480}
    assert overlong("", {**ex, "completion_tokens": 16384}).score == 0.0
    assert overlong("", {**ex, "completion_tokens": 18432}).score == -0.5
    assert overlong("", {**ex, "completion_tokens": 20480}).score == -1.0


def test_overlong_hard_limit_with_zero_cache():
    assert overlong("", {"completion_tokens": 20}, max_len=20, cache=0).score == 0.0
    assert overlong("", {"completion_tokens": 21}, max_len=20, cache=0).score == -1.0


def test_overlong_counts_characters_only_with_an_explicit_max_len():
    assert overlong("x" * 18, {}, max_len=20, cache=4).score == -0.5
    res = overlong("x" * 10**5, {"max_new_tokens": 20})
    assert (res.score, res.reason) == (0.0, "no_token_count")
    assert overlong("x", {}).reason == "no_max_len"


def test_overlong_bad_rows_and_options():
    assert overlong("", {"max_new_tokens": "20", "completion_tokens": 3}).reason == "bad_example"
    assert overlong("", {"max_new_tokens": 20, "completion_tokens": -1}).reason == "bad_example"
    with pytest.raises(ValueError, match="max_len"):
        overlong("", {}, max_len=0)
    with pytest.raises(ValueError, match="cache"):
        overlong("", {}, max_len=10, cache=11)


def test_overlong_through_get_reward_is_bounded():
    spec = REWARDS.get("overlong")
    assert (spec.floor, spec.ceiling) == (-1.0, 0.0)
    reward = get_reward("overlong", max_len=20, cache=4)
    assert reward("", {"completion_tokens": 18}) == -0.5
    assert reward(None, {}) == -1.0  # not a string: the wrapper's floor


# ----------------------------------------------------------------------------- think_format


@pytest.mark.parametrize("completion, reason", [
    ("<think>2 + 2 is 4</think>The answer is 4.", "ok"),
    ("\n  <think>\nstep\n</think>\n\n4", "ok"),
    ("<think></think>4", "ok"),                               # empty thinking is allowed
    ("The answer is 4.", "no_think"),
    ("4 <think>late</think> 4", "no_think"),
    ("</think>4", "no_think"),
    ("<think>still going", "unclosed_think"),
    ("<think>a <think>b</think> c</think>4", "nested_think"),
    ("<think>a</think>4<think>b</think>5", "extra_think"),
    ("<think>a</think>4</think>", "extra_think"),
    ("<think>a</think>", "empty_answer"),
    ("<think>a</think>  \n ", "empty_answer"),
    ("", "no_think"),
])
def test_think_format(completion, reason):
    res = think_format(completion, {})
    assert res.reason == reason
    assert res.score == (1.0 if reason == "ok" else 0.0)


def test_think_format_options():
    assert think_format("<think> ab </think>4", {}, min_think_chars=3).reason == "short_think"
    assert think_format("<think>abc</think>4", {}, min_think_chars=3).score == 1.0
    assert think_format("<reasoning>x</reasoning>4", {}, tag="reasoning").score == 1.0
    assert get_reward("think_format")("<think>x</think>4", {}) == 1.0
