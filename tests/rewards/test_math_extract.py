"""Answer extraction (posttrain.rewards.math.extract): the flexible rules in order, strict
mode, think blocks, and reference answers. Bounds on its work under adversarial input are
tested through the rewards in test_math.py."""

import pytest

from posttrain.rewards.math import extract_answer, extract_reference


@pytest.mark.parametrize("text, answer", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("#### $1,234.00", "1234"),
    ("The answer is $18.50.", "18.5"),
    ("So the answer is 18 eggs.", "18"),
    ("the answer is 9 * 2 = 18", "18"),
    ("The answer is x = 5.", "5"),
    ("So the answer is 2x+1.", "2x+1"),
    ("The answer is 5. Actually, the answer is unclear.", "5"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("so $x = \\boxed{{a}+{b}}$", "{a}+{b}"),
    ("\\boxed{\\boxed{5}}", "5"),
    ("first \\boxed{3}, then corrected: \\boxed{4}", "4"),
    ("\\fbox{12}", "12"),
    ("\\boxed 7", "7"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{\\text{Tuesday}}", "\\text{Tuesday}"),
    ("**Final Answer:** $\\frac{\\sqrt{3}}{2}$", "\\frac{\\sqrt{3}}{2}"),
    ("Q: how many?\nA: 7", "7"),
    ("Answer: 50%", "50"),
    ("I have 3 apples and 4 pears, so 7 fruit.", "7"),
    ("It drops to -5 degrees.", "-5"),
    ("16-3", "3"),
    ("the level is 3.25 now", "3.25"),
    ("3/4 of them", "0.75"),
    ("#### Step 1\nthen we get 5", "5"),   # a markdown heading is not an answer
    ("#### 3\n#### 1450000", "1450000"),  # flexible: the last one
    ("no digits here", None),
    ("", None),
])
def test_extract_flexible(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("text, answer", [
    ("so 18.\n#### 18", "18"),
    ("#### -1,234.", "-1234"),
    ("#### 1450000\n#### 3", "1450000"),  # strict: the first, as lm-evaluation-harness
    ("The answer is 18.", None),
    ("\\boxed{18}", None),
    ("#### $18", None),
])
def test_extract_strict(text, answer):
    assert extract_answer(text, mode="strict") == answer


def test_extract_rejects_unknown_mode():
    with pytest.raises(ValueError, match="flexible"):
        extract_answer("1", mode="lenient")


@pytest.mark.parametrize("text, flexible, strict", [
    ("<think>the answer is 3</think>The answer is 4", "4", None),
    ("<think>#### 3</think> so 4", "4", None),
    ("</think> #### 9", "9", "9"),            # the template opened <think> in the prompt
    ("<think>#### 3", None, None),            # truncated mid-thought
    ("<think>a</think> b <think> #### 7", None, None),
])
def test_thinking_is_skipped(text, flexible, strict):
    assert extract_answer(text) == flexible
    assert extract_answer(text, mode="strict") == strict


@pytest.mark.parametrize("ref, answer", [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 1,450", "1450"),
    ("18", "18"), (18, "18"), (0.5, "0.5"), ("\\frac{1}{2}", "0.5"),
    ("$\\sqrt{2}$", "\\sqrt{2}"), ("so the result is \\boxed{\\pi}", "\\pi"), ("", None),
    (None, None), (True, None),
])
def test_extract_reference(ref, answer):
    assert extract_reference(ref) == answer
