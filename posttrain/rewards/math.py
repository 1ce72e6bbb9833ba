"""Math answer rewards: pull the final answer out of a completion, normalise it, and compare
it with the reference, numerically first and symbolically (math-verify) only when either
side is not a plain number.

    extract_answer("She makes 9 * 2 = $18.\\n#### 18")       -> "18"
    extract_answer("so the answer is \\boxed{\\frac{1}{2}}")   -> "0.5"
    answers_match("3/4", "0.75")                               -> True
    get_reward("math")(completion, {"answer": "... #### 72"})  -> 1.0 or 0.0

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

Normalisation (`normalize_number`) gives one canonical string per value: thousands
separators, "$", a leading currency, trailing units ("dollars", "cm", "%", "percent",
"^\\circ"...), trailing punctuation, LaTeX spacing (`1{,}000`, `1\\,000`) and `\\text{}` go;
"18.50" -> "18.5", "-0" -> "0", "1e999999" stays in scientific form; fractions a/b and
\\frac{a}{b} with integer parts are reduced and written as a decimal when one terminates
("3/4" -> "0.75"), else as "p/q" ("2/6" -> "1/3"). A percent sign is dropped, not divided
by 100: "50%" equals "50", not "0.5".

Equality (`answers_match`): two integers must be equal exactly (1450001 is not 1450000);
otherwise |pred - ref| <= rel_tol * max(|pred|, |ref|) with rel_tol = 1e-6, computed in
50-digit decimals (no binary float error), so "0.3333333" equals "1/3" and "0.333" does not. When either side is not a
number, equal strings (up to spacing and `\\left`/`\\right`) match, and otherwise
math-verify decides, in a forked child process that is killed after `timeout_s` (2 s by
default), with math-verify's own signal-based timeouts switched off: they work only on the
main thread, and a kill also bounds sympy's C-level work and its memory (the child's address
space is capped like the reward worker's, `POSTTRAIN_REWARD_MEM_MB`, default 1024).
Results, timeouts included, are cached per (pred, ref). Without math-verify installed, or without `os.fork`,
non-numeric answers match only as equal strings.
"""

from __future__ import annotations

import functools
import os
import re
import select
import signal
import threading
import warnings
from collections import deque
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, localcontext
from math import gcd  # the stdlib: absolute imports do not see this module's own name

from posttrain.rewards.base import RewardResult, register_reward

__all__ = ["extract_answer", "extract_reference", "normalize_number", "answers_match",
           "strip_thinking"]

REL_TOL = 1e-6
"""Default relative tolerance for non-integer answers."""
SYMBOLIC_TIMEOUT_S = 2.0
"""Default wall-clock limit of one symbolic (math-verify) comparison."""
SYMBOLIC_MAX_CHARS = 1000
"""Answers longer than this are compared as strings only, never handed to sympy."""
BOXED_MAX_CHARS = 20_000
"""A \\boxed{ whose closing brace is further than this is treated as unterminated."""

_LAST_K = 32  # occurrences of a rule tried, from the last one back
_FRAC_MAX_DIGITS = 1000  # numerator/denominator digits; int() refuses > 4300 anyway
_PLAIN_EXP = 30  # canonical numbers with |exponent| above this are written as "<digits>e<exp>"
_DEC = Context(prec=50, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[])


# --------------------------------------------------------------------------- normalisation

_UNITS = (
    "dollars|dollar|usd|cents|cent|euros|euro|pounds|pound|yuan|yen|rupees|"
    "kilometers|kilometres|km|centimeters|centimetres|cm|millimeters|millimetres|mm|"
    "meters|metres|meter|metre|m|inches|inch|in|feet|foot|ft|yards|yard|yd|miles|mile|mi|"
    "kilograms|kilogram|kg|grams|gram|g|milligrams|mg|lbs|lb|ounces|ounce|oz|tons|ton|"
    "liters|litres|liter|litre|ml|l|gallons|gallon|gal|cups|cup|"
    "hours|hour|hrs|hr|h|minutes|minute|mins|min|seconds|second|secs|sec|s|"
    "days|day|weeks|week|months|month|years|year|yrs|"
    "mph|kph|degrees|degree|units|unit|percent|per\\s+cent"
)
# A trailing unit: optional "square"/"cubic", the unit, optional power, optional "per x" or
# "/x"; or %, degree signs. Only ever searched in the last 80 characters (a `\s*`-led
# pattern searched over a long string is quadratic).
_UNIT_TAIL_RE = re.compile(
    r"(?:(?<![A-Za-z\\])(?:(?:square|sq\.?|cubic)\s+)?(?:" + _UNITS + r")(?:\^?[23]|²|³)?"
    r"(?:\s*(?:/|per\s+)\s*[A-Za-z]+)?|%|°|\^\s*\\circ|\\circ|\\degree)\s*$", re.IGNORECASE)
_LEAD_CURRENCY_RE = re.compile(r"([+-]?)\s*(?:\$|US\$|USD|€|£|¥|₹|Rs\.?)\s*")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_FRAC_RE = re.compile(
    r"([+-]?)\\[dt]?frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
_DECIMAL_RE = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d*)(?:\.(\d*))?(?:[eE]([+-]?\d{1,9}))?")
_FRACTION_RE = re.compile(r"([+-]?)(\d{1,%d})/([+-]?)(\d{1,%d})" % (_FRAC_MAX_DIGITS, _FRAC_MAX_DIGITS))
_SPACES_RE = re.compile(r"\s+")


def _canonical(negative: bool, digits: str, exp: int) -> str:
    """The one string for the value (-1)^negative * int(digits) * 10^exp."""
    digits = digits.lstrip("0")
    if not digits:
        return "0"
    stripped = digits.rstrip("0")
    exp += len(digits) - len(stripped)
    digits = stripped
    sign = "-" if negative else ""
    if exp > _PLAIN_EXP or exp < -_PLAIN_EXP - len(digits):
        return f"{sign}{digits}e{exp}"
    if exp >= 0:
        return sign + digits + "0" * exp
    head, tail = digits[:exp], digits[exp:]
    tail = tail.rjust(-exp, "0")
    return f"{sign}{head or '0'}.{tail}"


def _canonical_fraction(negative: bool, num: int, den: int) -> str | None:
    if den == 0:
        return None
    g = gcd(num, den)
    num, den = num // g, den // g
    twos = fives = 0
    rest = den
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest == 1:  # terminates: num/den = num * (10^k / den) * 10^-k
        k = max(twos, fives)
        return _canonical(negative, str(num * (10**k // den)), -k)
    return f"{'-' if negative and num else ''}{num}/{den}"


def _strip_number_dressing(s: str) -> str:
    """Trailing punctuation, units and percent signs, a leading currency, up to 4 rounds."""
    for _ in range(4):
        before = s
        s = s.strip().rstrip(".,;:!?").strip("*").strip()
        start = max(0, len(s) - 80)
        m = _UNIT_TAIL_RE.search(s, start)
        if m and m.start() > 0:
            s = s[:m.start()].strip()
        m = _LEAD_CURRENCY_RE.match(s)
        if m and m.end() > len(m.group(1)):
            s = m.group(1) + s[m.end():]
        if s == before:
            break
    return s


def normalize_number(s: str) -> str | None:
    """The canonical string of `s` if it is a plain number, else None.

    "1,234" -> "1234", "$18.50." -> "18.5", "50%" -> "50", "12 cm" -> "12", "-0.0" -> "0",
    "\\frac{3}{4}" and "6/8" -> "0.75", "2/6" -> "1/3", "1e999999" -> "1e999999",
    "1,2" -> None (not a thousands grouping), "2x" -> None.
    """
    if not isinstance(s, str):
        return None
    s = s.strip()
    if not s:
        return None
    s = s.replace("\u2212", "-").replace("\\$", "$").replace("\\%", "%")
    if "\\" in s or "{" in s:
        s = _TEXT_CMD_RE.sub(r" \1", s)
        s = (s.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\;", "")
             .replace("\\ ", " ").replace("\\left", "").replace("\\right", ""))
    s = s.replace("~", " ").strip("$ ")
    if "frac" not in s:  # braces only group here: {1}, 30^{\circ}
        s = s.replace("{", "").replace("}", "")
    s = _strip_number_dressing(s)
    if "frac" in s:
        m = _LATEX_FRAC_RE.fullmatch(s)
        if m is None:
            return None
        try:
            num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
            negative = (m.group(1) == "-") != ((num < 0) != (den < 0))
            return _canonical_fraction(negative, abs(num), abs(den))
        except ValueError:  # over int()'s 4,300-digit string limit
            return None
    s = s.strip("() ") if s.startswith("(") and s.endswith(")") and s.count("(") == 1 else s
    s = re.sub(r"^([+-])\s+", r"\1", s)
    if "/" in s:
        m = _FRACTION_RE.fullmatch(_SPACES_RE.sub("", s))
        if m is None:
            return None
        negative = (m.group(1) == "-") != (m.group(3) == "-")
        try:
            return _canonical_fraction(negative, int(m.group(2)), int(m.group(4)))
        except ValueError:  # a result over int()'s 4,300-digit string limit
            return None
    m = _DECIMAL_RE.fullmatch(s)
    if m is None:
        return None
    sign, whole, frac, exp = m.groups()
    whole, frac = whole.replace(",", ""), frac or ""
    if not whole and not frac:
        return None
    return _canonical(sign == "-", whole + frac, int(exp or 0) - len(frac))


def _value(canon: str) -> Decimal:
    if "/" in canon:
        num, den = canon.split("/")
        return _DEC.divide(Decimal(num), Decimal(den))
    return Decimal(canon)


def _is_integer(canon: str) -> bool:
    return "/" not in canon and "." not in canon and "e-" not in canon


def _numbers_equal(p: str, r: str, rel_tol: float) -> bool:
    """p and r are canonical numbers."""
    if p == r:
        return True
    if _is_integer(p) and _is_integer(r):
        return False  # canonical forms are unique, and integers get no tolerance
    try:
        with localcontext(_DEC):
            a, b = _value(p), _value(r)
            if a == b:
                return True
            tol = Decimal(repr(max(float(rel_tol), 0.0)))
            return abs(a - b) <= tol * max(abs(a), abs(b))
    except (ArithmeticError, ValueError):
        return False


# --------------------------------------------------------------------------- extraction


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


# --------------------------------------------------------------------------- symbolic check

_MV = None  # the math_verify module once imported and warmed up; False when unavailable
_MV_LOCK = threading.Lock()


def _math_verify():
    global _MV
    if _MV is None:
        with _MV_LOCK:
            if _MV is None:
                try:
                    import math_verify
                    import math_verify.grader
                    import math_verify.parser
                    # We bound the time by killing a child process, so its signal-based
                    # timeouts stay off; silence the once-per-process warning about that,
                    # which every fresh child would otherwise print again.
                    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
                    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
                    # Warm up here, on a fixed input, so each child inherits sympy's and the
                    # LaTeX parser's lazily loaded parts instead of loading them again.
                    _verify(math_verify, "0.5", "\\frac{1}{2}")
                    _MV = math_verify
                except Exception:  # noqa: BLE001 - not installed or broken: strings only
                    _MV = False
    return _MV or None


def _verify(mv, pred: str, ref: str) -> bool:
    gold = mv.parse(f"${ref}$", parsing_timeout=None)
    target = mv.parse(f"${pred}$", parsing_timeout=None)
    return bool(gold and target and mv.verify(gold, target, timeout_seconds=None))


def _cap_child_memory() -> None:
    try:
        import resource
        with open("/proc/self/statm") as f:
            vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = vm_bytes + int(os.environ.get("POSTTRAIN_REWARD_MEM_MB", "1024")) * 2**20
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        if soft == resource.RLIM_INFINITY or cap < soft:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except Exception:  # noqa: BLE001 - no /proc or no resource module: run uncapped
        pass


def _in_child(fn, args: tuple, timeout_s: float) -> tuple[bool | None, str]:
    """Run the bool-valued fn(*args) in a forked child; kill it at the deadline.
    Works from any thread (no signals in this process). (result or None, note)."""
    r, w = os.pipe()
    try:
        with warnings.catch_warnings():  # Python >= 3.12 warns on fork with threads alive
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as exc:
        os.close(r)
        os.close(w)
        return None, f"symbolic check not run: fork failed ({exc})"
    if pid == 0:  # the child: never returns into the caller's code
        code = b"e"
        try:
            os.close(r)
            _cap_child_memory()
            code = b"1" if fn(*args) else b"0"
        except BaseException:  # noqa: BLE001 - any failure is "no match"
            pass
        try:
            os.write(w, code)
        finally:
            os._exit(0)
    os.close(w)
    data = None
    try:
        poller = select.poll()  # not select.select: that fails on descriptors >= 1024
        poller.register(r, select.POLLIN)
        if poller.poll(max(0, int(timeout_s * 1000))):
            data = os.read(r, 1)
    finally:
        if data is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
        os.close(r)
    if data is None:
        return None, f"symbolic check timed out after {timeout_s:g} s"
    if data in (b"0", b"1"):
        return data == b"1", "symbolic"
    return None, "symbolic check failed (error or memory cap)"


@functools.lru_cache(maxsize=4096)
def _symbolic(pred: str, ref: str, timeout_s: float) -> tuple[bool, str]:
    mv = _math_verify()
    if mv is None:
        return False, "math-verify is not installed: strings compared only"
    if not hasattr(os, "fork"):
        return False, "no os.fork on this platform: strings compared only"
    ok, note = _in_child(_verify, (mv, pred, ref), timeout_s)
    return bool(ok), note


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
