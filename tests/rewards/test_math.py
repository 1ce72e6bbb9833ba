"""Math rewards: numeric and symbolic equality, the rewards, GSM8K gold answers, and the
guarantees against adversarial completions (never raises; bounded work, asserted by the
limit that fires, not by a wall clock; only the kill of a symbolic check keeps a loose one).
Normalisation and extraction on their own: test_math_normalize.py, test_math_extract.py."""

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import posttrain.rewards.math as mr
import posttrain.rewards.math.extract as mx
import posttrain.rewards.math.normalize as mn
from posttrain.rewards import REWARDS, get_reward
from posttrain.rewards.math import answers_match, extract_answer, extract_reference, normalize_number

GSM8K_TEST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k" / "test.jsonl"


KILL_SLACK_S = 10.0
"""A symbolic check killed at its 1 s timeout must return within this: 10x, for a loaded
2-core machine (forking and reaping the child is what varies), yet a check left running
(sympy on 9^{9^{9^{9}}} does not finish) still fails it."""


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


class _Spy:
    """A compiled pattern that logs how many characters each search / finditer may scan."""

    def __init__(self, pattern, log):
        self._pattern, self._log = pattern, log

    def _scan(self, name, string, pos=0, endpos=sys.maxsize):
        self._log.append(min(endpos, len(string)) - pos)
        return getattr(self._pattern, name)(string, pos, endpos)

    def search(self, *args):
        return self._scan("search", *args)

    def finditer(self, *args):
        return self._scan("finditer", *args)

    def __getattr__(self, name):
        return getattr(self._pattern, name)


@pytest.fixture
def work(monkeypatch):
    """Counts the work extraction does: answer spans finished, \\boxed{} bodies scanned,
    and the characters each brace scan and trailing-unit search may read."""
    log = {"spans": 0, "boxes": 0, "brace_scan": [], "unit_scan": []}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            log[name] += 1
            return fn(*args, **kwargs)
        return wrapped
    # patched where they are looked up: extraction's helpers in .extract, units in .normalize
    assert extract_answer.__globals__ is vars(mx) and normalize_number.__globals__ is vars(mn)
    monkeypatch.setattr(mx, "_finish_span", counting("spans", mx._finish_span))
    monkeypatch.setattr(mx, "_boxed_contents", counting("boxes", mx._boxed_contents))
    monkeypatch.setattr(mx, "_BRACE_RE", _Spy(mx._BRACE_RE, log["brace_scan"]))
    monkeypatch.setattr(mn, "_UNIT_TAIL_RE", _Spy(mn._UNIT_TAIL_RE, log["unit_scan"]))
    return log


@pytest.fixture
def no_symbolic(monkeypatch):
    """Fail the test if math-verify would be asked (plain numbers must not need it)."""
    def boom(*args):
        raise AssertionError(f"symbolic check called for {args[:2]}")
    monkeypatch.setattr(mr, "_symbolic", boom)  # looked up here, by _compare


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("pred, ref, same", [
    ("3/4", "0.75", True), ("0.5", "\\frac{1}{2}", True), ("50%", "50", True),
    ("18.50", "18.5", True), ("-5", "-5.0", True), ("1,000", "1000", True),
    ("0.3333333", "1/3", True),      # 1e-7 relative: within 1e-6
    ("0.333", "1/3", False),         # 1e-3 relative
    ("18.0000001", "18", True),      # a decimal prediction gets the tolerance...
    ("1450001", "1450000", False),   # ...two integers do not
    ("0", "0.0000001", False),
    ("1e999999", "1" + "0" * 999999, True),
    ("7", "8", False), ("50%", "0.5", False),
])
def test_numeric_match(pred, ref, same, no_symbolic):
    assert answers_match(pred, ref) is same


def test_rel_tol_is_an_option(no_symbolic):
    assert not answers_match("100.5", "100")
    assert answers_match("100.5", "100", rel_tol=0.01)
    assert not answers_match("0.3333333", "1/3", rel_tol=0)


@pytest.mark.parametrize("pred, ref, same", [
    ("{a}+{b}", "a+b", True), ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", True),
    ("9 \\times 2", "18", True), ("2x+1", "1+2x", True), ("2x+1", "2x+2", False),
    ("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}", True),
])
def test_symbolic_match(pred, ref, same):
    assert answers_match(pred, ref) is same


def test_cheap_checks_skip_math_verify(no_symbolic):
    assert answers_match("\\left( x \\right)", "\\left(x\\right)")  # equal as strings
    assert not answers_match("x", "18")                             # no digit, no LaTeX
    assert not answers_match("2x+1", "2x+2", symbolic=False)
    assert not answers_match(None, "1") and not answers_match("1", "")


def test_symbolic_check_runs_off_the_main_thread():
    out = {}
    mr._symbolic.cache_clear()  # a cached timeout would return at once

    def job():
        out["true"] = answers_match("\\frac{3}{\\sqrt{3}}", "\\sqrt{3}")
        out["hard"], out["seconds"] = _timed(mr._compare, "9^{9^{9^{9}}}", "7", timeout_s=1.0)

    t = threading.Thread(target=job)
    t.start()
    t.join(3 * KILL_SLACK_S)
    assert not t.is_alive()
    assert out["true"] is True and out["hard"] == (False, "symbolic check timed out after 1 s")
    assert out["seconds"] < KILL_SLACK_S


@pytest.mark.parametrize("latex", ["9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "10^{10^{10}}"])
def test_pathological_latex_returns_within_the_timeout(latex):
    mr._symbolic.cache_clear()
    (same, note), seconds = _timed(mr._compare, latex, "5", timeout_s=1.0)
    assert same is False and note == "symbolic check timed out after 1 s"  # killed, not finished
    assert seconds < KILL_SLACK_S


def test_giant_expression_is_not_handed_to_sympy(no_symbolic):
    giant = "+".join(["x"] * 3000)
    assert mr._compare(giant, "3000x") == (False, f"over {mr.SYMBOLIC_MAX_CHARS} chars: strings compared only")


# --------------------------------------------------------------------------- the rewards


def test_registered_with_docs():
    for name in ("math", "math_strict"):
        spec = REWARDS.get(name)
        assert spec.checks and spec.limits and spec.timeout_s > mr.SYMBOLIC_TIMEOUT_S


@pytest.mark.parametrize("completion, example, score, reason", [
    ("She makes $18.\n#### 18", {"answer": "18"}, 1.0, "correct"),
    ("The answer is 18.", {"answer": "Janet ... #### 18"}, 1.0, "correct"),
    ("The answer is 17.", {"answer": "18"}, 0.0, "wrong_answer"),
    ("so it is \\boxed{0.5}", {"answer": "\\frac{1}{2}"}, 1.0, "correct"),
    ("so it is \\boxed{\\frac{\\sqrt{2}}{2}}", {"answer": "\\frac{1}{\\sqrt{2}}"}, 1.0, "correct"),
    ("I do not know.", {"answer": "18"}, 0.0, "no_answer"),
    ("<think>it is 18", {"answer": "18"}, 0.0, "no_answer"),
    ("<think>17?</think>The answer is 18", {"answer": "18"}, 1.0, "correct"),
    ("#### 18", {"question": "?"}, 0.0, "no_reference"),
    ("#### 18", {"answer": ""}, 0.0, "no_reference"),
])
def test_math_reward(completion, example, score, reason):
    res = get_reward("math").evaluate(completion, example)
    assert (res.score, res.reason) == (score, reason), res


@pytest.mark.parametrize("completion, score, reason", [
    ("9 * 2 = 18\n#### 18", 1.0, "correct"),
    ("#### 17", 0.0, "wrong_answer"),
    ("The answer is 18.", 0.0, "no_answer"),
    ("\\boxed{18}", 0.0, "no_answer"),
])
def test_math_strict_reward(completion, score, reason):
    res = get_reward("math_strict").evaluate(completion, {"answer": "#### 18"})
    assert (res.score, res.reason) == (score, reason), res


def test_reward_options():
    assert get_reward("math", answer_key="target")("#### 3", {"target": "3"}) == 1.0
    assert get_reward("math", rel_tol=0.01)("#### 100.5", {"answer": "100"}) == 1.0
    assert get_reward("math", symbolic=False)("\\boxed{9 \\times 2}", {"answer": "18"}) == 0.0
    with pytest.raises(ValueError, match="answer_key"):
        get_reward("math", answer_column="x")


# --------------------------------------------------------------------------- GSM8K gold


@pytest.fixture(scope="module")
def gsm8k_rows():
    if not GSM8K_TEST.exists():
        pytest.skip(f"GSM8K test split not found at {GSM8K_TEST} (the shared data folder is absent)")
    with GSM8K_TEST.open() as f:
        return [json.loads(line) for line in f]


def test_gsm8k_gold_solutions_all_correct(gsm8k_rows, no_symbolic):
    """Plain numbers never reach math-verify (no_symbolic): what keeps this fast."""
    assert len(gsm8k_rows) == 1319
    fn = REWARDS.get("math").fn
    for i, row in enumerate(gsm8k_rows):
        gold = row["answer"]
        flexible, strict = extract_answer(gold), extract_answer(gold, mode="strict")
        assert flexible is not None and answers_match(flexible, strict), (i, gold[-40:])
        assert fn(gold, {"answer": gold}).reason == "correct", (i, gold[-40:])


def test_gsm8k_gold_through_the_safe_wrappers(gsm8k_rows):
    for name in ("math", "math_strict"):
        reward = get_reward(name)
        results = [reward.evaluate(row["answer"], {"answer": row["answer"]}) for row in gsm8k_rows]
        assert sum(r.score for r in results) == len(gsm8k_rows), name
        # decided by value in the worker, never by a forked symbolic check
        assert all(r.detail.endswith("(numeric)") for r in results), name
    # a shifted reference is wrong except where two neighbours share the answer
    reward = get_reward("math")
    shifted = [reward(gsm8k_rows[i]["answer"], {"answer": gsm8k_rows[i - 1]["answer"]})
               for i in range(len(gsm8k_rows))]
    same = sum(extract_reference(gsm8k_rows[i]["answer"]) == extract_reference(gsm8k_rows[i - 1]["answer"])
               for i in range(len(gsm8k_rows)))
    assert sum(shifted) == same


# --------------------------------------------------------------------------- adversarial

BIG = "9" * 100_000


@pytest.mark.parametrize("completion, expect, how", [
    (f"The answer is {BIG}.", "wrong_answer", "(numeric)"),           # digits compared as text
    (f"#### {BIG}", "wrong_answer", "(numeric)"),
    ("the answer is 1e999999", "wrong_answer", "(numeric)"),          # Decimal, no float overflow
    ("\\boxed{" + BIG, "wrong_answer", "(numeric)"),                  # unterminated: last number
    ("\\boxed{" * 5000, "no_answer", ""),
    ("\\boxed{" + "{" * 5000 + "18" + "}" * 5000 + "}", "correct", "(numeric)"),  # nested braces
    ("{" * 50_000 + "}" * 50_000, "no_answer", ""),
    ("\\boxed{9^{9^{9^{9}}}}", "wrong_answer",                        # sympy would run forever
     f"(symbolic check timed out after {mr.SYMBOLIC_TIMEOUT_S:g} s)"),
    ("\\boxed{" + "+".join(["x"] * 4_000) + "}", "wrong_answer",      # giant formula
     f"(over {mr.SYMBOLIC_MAX_CHARS} chars: strings compared only)"),
    ("\\boxed{" + "+".join(["x"] * 20_000) + "}", "no_answer", ""),   # box over BOXED_MAX_CHARS
])
def test_adversarial_completions_stop_at_a_limit(completion, expect, how):
    """Through the worker (its 8 s timeout would say "timeout"): the reason, and the note
    naming how the comparison was decided, which is the limit that bounds the work."""
    res = get_reward("math").evaluate(completion, {"answer": "18"})
    assert res.reason == expect and res.detail.endswith(how), res


@pytest.mark.parametrize("text", [
    "1" * 1_000_000,
    "\\boxed{" * 150_000,
    "{" * 1_000_000,
    "answer is " * 100_000,
    "#### " * 200_000,
    "A: x\n" * 200_000,
    " " * 1_000_000 + "18 dollars",
    ("1,000," * 170_000) + "5",
    "-" * 1_000_000 + "5",
    "The answer is " + "\\frac{" * 170_000,
    "\\boxed{" + "{" * 1_000_000,                  # one box, never closed: the scan stops
    "Answer: no idea\n" * 62_500,                 # every anchor fails: only the last 32 tried
])
def test_one_megabyte_completion(text, no_symbolic, work):
    """The wrapper refuses it (max_chars); called directly, the functions' work is bounded
    by their caps: the last _LAST_K matches of each anchor and the last 8 \\boxed are
    tried, a brace scan reads at most BOXED_MAX_CHARS, a trailing-unit search 80 chars."""
    assert len(text) >= 1_000_000
    assert get_reward("math").evaluate(text, {"answer": "18"}).reason == "too_large"
    ans = extract_answer(text)
    extract_answer(text, mode="strict")
    answers_match(ans, "18", symbolic=False)
    assert work["spans"] <= 3 * mr._LAST_K + 1  # three anchor rules and the boxed rule
    assert work["boxes"] <= 8 * (work["spans"] + 1)
    assert max(work["brace_scan"], default=0) <= mr.BOXED_MAX_CHARS
    assert max(work["unit_scan"], default=0) <= 80
    res = mr.math_reward(text, {"answer": "18"}, symbolic=False)
    assert res.reason in ("correct", "wrong_answer", "no_answer"), res


# --------------------------------------------------------------------------- fuzz

_PIECES = st.sampled_from([
    "0", "7", "18", "1,234", "3.5", "-", "+", "/", ".", ",", "$", "%", "{", "}", "\\", "^", "=",
    " ", "\n", "#", "####", "\\boxed{", "\\fbox{", "\\frac{", "\\sqrt{", "\\text{", "<think>",
    "</think>", "The answer is ", "A: ", "Answer: ", "e", "x", "dollars", "cm", "(", ")", "\u2212",
    "9^{9^{", "**",
])
_TEXT = st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=40).map("".join))
_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(_TEXT)
def test_fuzz_extract_and_normalize_never_raise(text):
    for mode in ("flexible", "strict"):
        ans = extract_answer(text, mode=mode)
        assert ans is None or isinstance(ans, str)
    n = normalize_number(text)
    assert n is None or normalize_number(n) == n  # canonical forms are fixed points
    ref = extract_reference(text)
    assert ref is None or isinstance(ref, str)


@_FUZZ
@given(_TEXT, _TEXT)
def test_fuzz_reward_and_numeric_match_never_raise(completion, ref):
    assert isinstance(answers_match(extract_answer(completion), ref, symbolic=False), bool)
    res = mr.math_reward(completion, {"answer": ref}, symbolic=False)
    assert res.score in (0.0, 1.0) and res.reason in ("correct", "wrong_answer", "no_answer", "no_reference")
    assert mr.math_strict_reward(completion, {"answer": ref}, symbolic=False).score in (0.0, 1.0)


@settings(max_examples=25, deadline=None)
@given(_TEXT, _TEXT)
def test_fuzz_symbolic_match_never_raises(pred, ref):
    (same, _), seconds = _timed(mr._compare, pred, ref, timeout_s=1.0)
    assert isinstance(same, bool) and seconds < KILL_SLACK_S
