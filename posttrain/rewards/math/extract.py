"""Answer extraction: `strip_thinking`, `extract_answer` (flexible and strict modes) and
`extract_reference`. An answer that is a number comes back canonical (.normalize); any
other answer comes back as the formula written.

Extraction, `mode="flexible"`, after dropping `<think>...</think>` (text after the last
`</think>`; an unclosed `<think>` means no answer). The first rule that yields an answer
wins; within a rule the last occurrence wins (a completion that revises itself is judged on
its final word):

    1. "#### n"                 GSM8K style; the rest of the line must be a number or a formula
    2. \\boxed{...} / \\fbox{...}  balanced braces, nested ones included
    3. "the answer is n"        up to the end of the sentence; "The answer is 18 eggs." gives 18
    4. "A: n", "Answer: n", "Final answer: n" at the start of a line
    5. the last number in the text

`mode="strict"` reads only the first "#### n" (n made of digits, "-", "." and ","), as
lm-evaluation-harness's gsm8k strict-match does.
"""

from __future__ import annotations

import re
from collections import deque
from decimal import Decimal

from posttrain.rewards.math.normalize import normalize_number

BOXED_MAX_CHARS = 20_000
"""A \\boxed{ whose closing brace is further than this is treated as unterminated."""

_LAST_K = 32  # occurrences of a rule tried, from the last one back


def strip_thinking(text: str) -> str | None:
    """The text after the last `</think>`, or None when a `<think>` is left open."""
    end = text.rfind("</think>")
    if end >= 0:
        text = text[end + len("</think>"):]
    return None if "<think>" in text else text


_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b")
_BRACE_RE = re.compile(r"[{}]")
_TOKEN_RE = re.compile(r"[^\s$]+")


def _boxed_contents(text: str, start: int) -> str | None:
    """Contents of the \\boxed whose name ends at `start`: `{...}` balanced, or `\\boxed 5`."""
    i = start
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":
        m = _TOKEN_RE.match(text, i)
        return m.group() if m and i > start else None
    depth = 0
    for m in _BRACE_RE.finditer(text, i, min(n, i + BOXED_MAX_CHARS)):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[i + 1:m.start()]
    return None


def _last_boxed(text: str) -> str | None:
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    for m in reversed(deque(_BOXED_RE.finditer(text), maxlen=8)):
        inner = _boxed_contents(text, m.end())
        if inner is not None:
            return inner
    return None


def _strip_wrappers(s: str) -> str:
    """Spacing, sentence punctuation, **bold** and math delimiters around an answer."""
    for _ in range(4):
        before = s
        s = s.strip().rstrip(".,;:!?").strip().strip("*").strip().strip("$").strip()
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right):
                s = s[2:-2]
        if s == before:
            break
    return s


# A "word" of 3+ letters that is not a LaTeX command or a function name marks prose.
_PROSE_RE = re.compile(
    r"(?<![\\A-Za-z])(?!(?:sqrt|sin|cos|tan|cot|sec|csc|log|ln|exp|pi|infty|inf|and|or|mod|"
    r"frac|dfrac|tfrac|cdot|times|left|right)(?![A-Za-z]))[A-Za-z]{3,}")
_ALNUM_RE = re.compile(r"[^\W_]")
_ASSIGN_RE = re.compile(r"(?<![<>!=:\\])=(?!=)")
_IDENT_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?(?:\([^()]*\))?|\\text\{[^{}]*\}")
_LEADING_NUM_RE = re.compile(
    r"[+-]?\s*(?:\\?\$)?\s*(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(?:\.\d+)?(?:/\d+)?(?:\s*%)?")


def _looks_like_formula(s: str) -> bool:
    """No prose words, some letter or digit, and balanced brackets: "2x+1", "\\sqrt{2}"."""
    return ("#" not in s and s.count("(") == s.count(")") and s.count("{") == s.count("}")
            and s.count("[") == s.count("]") and _ALNUM_RE.search(s) is not None
            and not _PROSE_RE.search(s))


def _assignment_rhs(s: str) -> str | None:
    """"x = 5" or "9 * 2 = 18" -> the number on the right; None for "x^2 + y^2 = 1"."""
    parts = _ASSIGN_RE.split(s)
    if len(parts) < 2:
        return None
    lhs = parts[-2].strip()
    if _IDENT_RE.fullmatch(lhs) or not re.search(r"[A-Za-z]", lhs):
        return normalize_number(parts[-1])
    return None


def _finish_span(span: str, *, leading_number: bool, keep_prose: bool) -> str | None:
    """Turn the text after an anchor into an answer: a canonical number if it is one, else
    the formula; for prose, its leading number (`leading_number`) or the text itself
    (`keep_prose`), else None."""
    s = _strip_wrappers(span)
    boxed = _last_boxed(s)
    if boxed is not None:
        s, keep_prose = _strip_wrappers(boxed), True
    if not s:
        return None
    n = normalize_number(s)
    if n is not None:
        return n
    n = _assignment_rhs(s)
    if n is not None:
        return n
    if _looks_like_formula(s):
        return s
    if leading_number:
        m = _LEADING_NUM_RE.match(s)
        n = normalize_number(m.group()) if m and m.group().strip() else None
        if n is not None:
            return n
    return s if keep_prose else None


_HASH_RE = re.compile(r"(?<!#)####(?!#)[ \t]*([^\n]*)")
_STRICT_RE = re.compile(r"####[ \t]*(-?[0-9.,]+)")
_ANSWER_IS_RE = re.compile(r"answer[ \t]*(?:is|was|would be|will be|=)[ \t]*:?[ \t]*([^\n]*)",
                           re.IGNORECASE)
_ANSWER_LINE_RE = re.compile(r"^[ \t*#>]*(?:final[ \t]+answer|answer|a)[ \t]*\**[ \t]*[:：][ \t]*\**([^\n]*)",
                             re.IGNORECASE | re.MULTILINE)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+|[eE][+-]?\d+)?")


def _from_anchor(text: str, regex: re.Pattern, *, sentence: bool, leading_number: bool) -> str | None:
    for m in reversed(deque(regex.finditer(text), maxlen=_LAST_K)):
        span = m.group(1)
        if sentence:
            end = _SENTENCE_END_RE.search(span)
            span = span[:end.start()] if end else span
        ans = _finish_span(span, leading_number=leading_number, keep_prose=False)
        if ans is not None:
            return ans
    return None


def _last_number(text: str) -> str | None:
    last = deque(_NUMBER_RE.finditer(text), maxlen=1)
    if not last:
        return None
    m = last[0]
    s = m.group()
    if s.startswith("-"):  # "16-3" is a subtraction, "is -3" a negative number
        before = text[m.start() - 1:m.start()]
        if before and (before.isalnum() or before in ")]}"):
            s = s[1:]
    return normalize_number(s)


def extract_answer(text: str, mode: str = "flexible") -> str | None:
    """The final answer in `text` (a canonical number when it is one, else the formula as
    written), or None. See the module docstring for the rules of each mode."""
    if mode not in ("flexible", "strict"):
        raise ValueError(f"extract_answer: mode must be 'flexible' or 'strict', not {mode!r}")
    if not isinstance(text, str):
        return None
    body = strip_thinking(text)
    if body is None:
        return None
    body = body.replace("\u2212", "-")
    if mode == "strict":
        m = _STRICT_RE.search(body)
        return normalize_number(m.group(1).rstrip(".,")) if m else None
    ans = _from_anchor(body, _HASH_RE, sentence=False, leading_number=False)
    if ans is None:
        boxed = _last_boxed(body)
        if boxed is not None:
            ans = _finish_span(boxed, leading_number=True, keep_prose=True)
    if ans is None:
        ans = _from_anchor(body, _ANSWER_IS_RE, sentence=True, leading_number=True)
    if ans is None:
        ans = _from_anchor(body, _ANSWER_LINE_RE, sentence=False, leading_number=False)
    if ans is None:
        ans = _last_number(body)
    return ans


def extract_reference(ref) -> str | None:
    """The reference answer of an example: the text after the last "####" of a GSM8K
    solution, the last \\boxed{} of a MATH solution, or the whole string; numbers come
    back canonical. Ints and floats are accepted."""
    if isinstance(ref, bool) or not isinstance(ref, (str, int, float, Decimal)):
        return None
    ref = ref if isinstance(ref, str) else repr(ref) if isinstance(ref, float) else str(ref)
    if "####" in ref:
        ref = ref.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    else:
        ref = _last_boxed(ref) or ref
    return _finish_span(ref, leading_number=True, keep_prose=True)
