"""Numbers in answers: `normalize_number` gives one canonical string per value, and
`_numbers_equal` compares two canonical numbers (the numeric half of `answers_match`).

Normalisation (`normalize_number`) gives one canonical string per value: thousands
separators, "$", a leading currency, trailing units ("dollars", "cm", "%", "percent",
"^\\circ"...), trailing punctuation, LaTeX spacing (`1{,}000`, `1\\,000`) and `\\text{}` go;
"18.50" -> "18.5", "-0" -> "0", "1e999999" stays in scientific form; fractions a/b and
\\frac{a}{b} with integer parts are reduced and written as a decimal when one terminates
("3/4" -> "0.75"), else as "p/q" ("2/6" -> "1/3"). A percent sign is dropped, not divided
by 100: "50%" equals "50", not "0.5".

Equality (`_numbers_equal`): two integers must be equal exactly (1450001 is not 1450000);
otherwise |pred - ref| <= rel_tol * max(|pred|, |ref|), computed in 50-digit decimals (no
binary float error), so at rel_tol = 1e-6 "0.3333333" equals "1/3" and "0.333" does not.
"""

from __future__ import annotations

import re
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, localcontext
from math import gcd  # the stdlib: absolute imports do not see this package's own name

_FRAC_MAX_DIGITS = 1000  # numerator/denominator digits; int() refuses > 4300 anyway
_PLAIN_EXP = 30  # canonical numbers with |exponent| above this are written as "<digits>e<exp>"
_DEC = Context(prec=50, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[])

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
