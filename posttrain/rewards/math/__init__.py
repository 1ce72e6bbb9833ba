"""Math answer rewards: pull the final answer out of a completion, normalise it, and compare
it with the reference, numerically first and symbolically (math-verify) only when either
side is not a plain number.

    extract_answer("She makes 9 * 2 = $18.\\n#### 18")       -> "18"
    extract_answer("so the answer is \\boxed{\\frac{1}{2}}")   -> "0.5"
    answers_match("3/4", "0.75")                               -> True
    get_reward("math")(completion, {"answer": "... #### 72"})  -> 1.0 or 0.0

Equality (`answers_match`): two integers must be equal exactly (1450001 is not 1450000);
otherwise |pred - ref| <= rel_tol * max(|pred|, |ref|) with rel_tol = 1e-6, computed in
50-digit decimals (no binary float error), so "0.3333333" equals "1/3" and "0.333" does not.
When either side is not a number, equal strings (up to spacing and `\\left`/`\\right`)
match, and otherwise math-verify decides, in a forked child process that is killed after
`timeout_s` (2 s by default), with math-verify's own signal-based timeouts switched off:
they work only on the main thread, and a kill also bounds sympy's C-level work and its
memory (the child's address space is capped like the reward worker's,
`POSTTRAIN_REWARD_MEM_MB`, default 1024). Results, timeouts included, are cached per
(pred, ref). Without math-verify installed, or without `os.fork`, non-numeric answers match
only as equal strings.

The rules live with the code that applies them:
  extract    `extract_answer` (the flexible and strict rules), `extract_reference`,
             `strip_thinking`
  normalize  `normalize_number` (the canonical form of a number), numeric equality
  symbolic   math-verify in a forked child, killed at its deadline, memory capped
This module holds `answers_match` and the `math` / `math_strict` rewards, and registers the
rewards on import; the public extraction and normalisation functions are re-exported here.
"""

from __future__ import annotations

import re

from posttrain.rewards.base import RewardResult, register_reward

# `_compare` looks `_symbolic` up here, so a test that patches it patches this module; the
# other helpers are patched where they are defined (.extract, .normalize).
from posttrain.rewards.math.extract import (BOXED_MAX_CHARS, _LAST_K, extract_answer, extract_reference,
                                           strip_thinking)
from posttrain.rewards.math.normalize import _numbers_equal, normalize_number
from posttrain.rewards.math.symbolic import _symbolic

__all__ = ["extract_answer", "extract_reference", "normalize_number", "answers_match",
           "strip_thinking"]

REL_TOL = 1e-6
"""Default relative tolerance for non-integer answers."""
SYMBOLIC_TIMEOUT_S = 2.0
"""Default wall-clock limit of one symbolic (math-verify) comparison."""
SYMBOLIC_MAX_CHARS = 1000
"""Answers longer than this are compared as strings only, never handed to sympy."""

# --------------------------------------------------------------------------- equality

_SQUASH_RE = re.compile(r"\s+|\\left|\\right|\\!|\\,|\\;|\\displaystyle|\$")


def _squash(s: str) -> str:
    return _SQUASH_RE.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def _compare(pred, ref, *, rel_tol: float = REL_TOL, symbolic: bool = True,
             timeout_s: float = SYMBOLIC_TIMEOUT_S) -> tuple[bool, str]:
    """answers_match with the way it decided: (match, note)."""
    if not isinstance(pred, str) or not isinstance(ref, str) or not pred.strip() or not ref.strip():
        return False, "empty"
    p, r = normalize_number(pred), normalize_number(ref)
    if p is not None and r is not None:
        return _numbers_equal(p, r, rel_tol), "numeric"
    if _squash(pred) == _squash(ref):
        return True, "string"
    if not symbolic:
        return False, "string"
    if len(pred) > SYMBOLIC_MAX_CHARS or len(ref) > SYMBOLIC_MAX_CHARS:
        return False, f"over {SYMBOLIC_MAX_CHARS} chars: strings compared only"
    other = pred if r is not None else ref if p is not None else None
    if other is not None and "\\" not in other and not any(c.isdigit() for c in other):
        return False, "a number against a formula without digits"
    return _symbolic(pred, ref, float(timeout_s))


def answers_match(pred: str | None, ref: str | None, *, rel_tol: float = REL_TOL,
                  symbolic: bool = True, timeout_s: float = SYMBOLIC_TIMEOUT_S) -> bool:
    """Whether the answer `pred` equals the reference `ref` (both as extracted): numbers by
    value (integers exactly, others within `rel_tol`), anything else as equal strings or,
    with `symbolic`, by math-verify within `timeout_s` seconds (a timeout is no match).
    Never raises; safe from any thread."""
    return _compare(pred, ref, rel_tol=rel_tol, symbolic=symbolic, timeout_s=timeout_s)[0]


# --------------------------------------------------------------------------- rewards

_LIMITS = ("Completions over 200,000 chars are not scored (too_large). The symbolic check runs "
           f"only when one side is not a plain number, for answers up to {SYMBOLIC_MAX_CHARS:,} "
           f"chars, in a forked child killed after {SYMBOLIC_TIMEOUT_S:g} s (then wrong_answer); "
           f"a \\boxed{{}} closing more than {BOXED_MAX_CHARS:,} chars after it opens is ignored; "
           f"only the last 8 \\boxed and the last {_LAST_K} of each anchor are tried.")


def _score(completion: str, example: dict, mode: str, answer_key: str, rel_tol: float,
           symbolic: bool) -> RewardResult:
    if answer_key not in example:
        return RewardResult(0.0, "no_reference",
                            f"the example has no {answer_key!r} key (keys: {list(example)[:8]}); "
                            f"set the dataset's answer column or the reward's answer_key")
    ref = extract_reference(example[answer_key])
    if ref is None:
        return RewardResult(0.0, "no_reference", f"example[{answer_key!r}] holds no answer")
    if strip_thinking(completion) is None:
        return RewardResult(0.0, "no_answer", "unclosed <think>")
    pred = extract_answer(completion, mode)
    if pred is None:
        return RewardResult(0.0, "no_answer", "no '#### n'" if mode == "strict" else "")
    ok, note = _compare(pred, ref, rel_tol=rel_tol, symbolic=symbolic)
    detail = f"{pred[:60]!r} vs {ref[:60]!r} ({note})"
    return RewardResult(1.0, "correct", detail) if ok else RewardResult(0.0, "wrong_answer", detail)


@register_reward(
    "math",
    checks="1 if the completion's final answer ('#### n', the last \\boxed{}, 'the answer is "
           "n', 'Answer: n', else the last number; read after any </think>) equals "
           "example['answer'] by value (integers exactly, others within relative 1e-6) or "
           "symbolically (math-verify), else 0.",
    limits=_LIMITS, timeout_s=8.0)
def math_reward(completion: str, example: dict, *, answer_key: str = "answer",
                rel_tol: float = REL_TOL, symbolic: bool = True) -> RewardResult:
    return _score(completion, example, "flexible", answer_key, rel_tol, symbolic)


@register_reward(
    "math_strict",
    checks="1 if the first '#### n' of the completion (after any </think>), n made of digits, "
           "'-', '.' and ',' as in lm-evaluation-harness's gsm8k strict-match, equals "
           "example['answer'] as the math reward compares; any other format scores 0.",
    limits=_LIMITS, timeout_s=8.0)
def math_strict_reward(completion: str, example: dict, *, answer_key: str = "answer",
                       rel_tol: float = REL_TOL, symbolic: bool = True) -> RewardResult:
    return _score(completion, example, "strict", answer_key, rel_tol, symbolic)
