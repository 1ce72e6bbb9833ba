"""Type and value checks on resolved values: `check_type`, `value_matches`,
`expected_leaves`, `normalize_type`, `is_iso_date`, `numbers_close`.

Decisions: an int is accepted where a float is declared (bool never is a number);
"date" accepts ISO-8601 dates and date-times, native (YAML, TOML) or as text; ints
compare exactly, other numbers within 1e-6 relative; strings compare after strip; dates
as ISO strings. In the `TEXTUAL` formats (csv, xml) every value is text, read back by
the declared type.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Callable, Mapping

from posttrain.rewards.structured.limits import MAX_DEPTH
from posttrain.rewards.structured.paths import _view

TEXTUAL = frozenset({"csv", "xml"})
"""Formats whose values are all text, read back by the declared type."""

TYPE_NAMES = ("string", "int", "float", "bool", "date", "null", "list", "object")
_TYPE_ALIASES = {"str": "string", "integer": "int", "number": "float", "boolean": "bool",
                 "none": "null", "array": "list", "dict": "object", "datetime": "date"}
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}"
                            r"(?::[0-9]{2}(?:\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?")


def normalize_type(name: Any) -> str | None:
    """A type name from an example in canonical form ("integer" -> "int"), or None."""
    if not isinstance(name, str):
        return None
    name = name.strip().lower()
    name = _TYPE_ALIASES.get(name, name)
    return name if name in TYPE_NAMES else None


def is_iso_date(s: str) -> bool:
    """An ISO-8601 calendar date "YYYY-MM-DD" or date-time "YYYY-MM-DDTHH:MM[:SS[.f]][Z|+HH:MM]"."""
    s = s.strip()
    try:
        if _DATE_TEXT.fullmatch(s):
            dt.date.fromisoformat(s)
            return True
        if _DATETIME_TEXT.fullmatch(s):
            dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
            return True
    except ValueError:
        pass
    return False


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_NATIVE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _is_num,
    "bool": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, dt.date) or (isinstance(v, str) and is_iso_date(v)),
    "null": lambda v: v is None,
}
_TEXT_CHECKS: dict[str, Callable[[str], bool]] = {
    "string": lambda s: True,
    "int": lambda s: _INT_TEXT.fullmatch(s) is not None,
    "float": lambda s: _FLOAT_TEXT.fullmatch(s) is not None,
    "bool": lambda s: s.lower() in ("true", "false"),
    "date": is_iso_date,
    "null": lambda s: s == "",
}


def check_type(value: Any, type_name: str, textual: bool = False) -> bool:
    """Whether a resolved value has the declared type; `textual` (csv, xml): text is read
    by the type (int: sign and digits; float: a decimal number; bool: true/false, any
    case; date: ISO-8601; null: empty)."""
    t = normalize_type(type_name)
    if t is None:
        return False
    kind, v = _view(value)
    if t == "list":
        return kind == "list"
    if t == "object":
        return kind == "dict"
    if kind != "scalar":
        return False
    if textual and isinstance(v, str):
        return _TEXT_CHECKS[t](v.strip())
    return _NATIVE_CHECKS[t](v)


def _text_number(s: str) -> int | float | None:
    s = s.strip()
    try:
        if _INT_TEXT.fullmatch(s):
            return int(s)
        if _FLOAT_TEXT.fullmatch(s):
            return float(s)
    except ValueError:  # an int past Python's digit limit
        pass
    return None


def numbers_close(a: int | float, b: int | float, rel: float = 1e-6) -> bool:
    """Two ints exactly; otherwise within `rel` relative (never raises on huge ints)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        fa, fb = float(a), float(b)
    except OverflowError:
        return False
    return fa == fb or abs(fa - fb) <= rel * max(abs(fa), abs(fb))


def _leaf_matches(actual: Any, want: Any, textual: bool) -> bool:
    kind, a = _view(actual)
    if kind != "scalar":
        return False
    text = a.strip() if textual and isinstance(a, str) else None
    if want is None:
        return a is None or text == ""
    if isinstance(want, bool):
        if text is not None:
            return text.lower() == ("true" if want else "false")
        return isinstance(a, bool) and a == want
    if _is_num(want):
        if text is not None:
            a = _text_number(text)
        return _is_num(a) and numbers_close(a, want)
    if isinstance(want, dt.date):
        want = want.isoformat()
    if isinstance(want, str):
        if isinstance(a, dt.date):
            a = a.isoformat()
        return isinstance(a, str) and a.strip() == want.strip()
    return False


def value_matches(actual: Any, want: Any, textual: bool = False, _depth: int = 0) -> bool:
    """A resolved value against an expected one: leaves as in the module docstring,
    objects by the same keys and lists by the same length, recursively."""
    if _depth > MAX_DEPTH:
        return False
    if isinstance(want, dict):
        kind, d = _view(actual)
        if kind != "dict" or set(d) != set(want):
            return False
        return all(value_matches(d[k], w, textual, _depth + 1) for k, w in want.items())
    if isinstance(want, (list, tuple)):
        kind, seq = _view(actual)
        if kind != "list" or len(seq) != len(want):
            return False
        return all(value_matches(a, w, textual, _depth + 1) for a, w in zip(seq, want))
    return _leaf_matches(actual, want, textual)


def expected_leaves(expected: Mapping[str, Any]) -> dict[str, Any]:
    """path -> expected leaf value; containers expanded ("tags" -> "tags[0]", ...), empty
    containers kept as leaves; an explicit path wins over one expanded from a container."""
    out = {p: v for p, v in expected.items()
           if isinstance(p, str) and not (isinstance(v, (dict, list, tuple)) and v)}

    def walk(path: str, v: Any, depth: int) -> None:
        if depth <= MAX_DEPTH and isinstance(v, dict) and v:
            for k, x in v.items():
                walk(f"{path}.{k}", x, depth + 1)
        elif depth <= MAX_DEPTH and isinstance(v, (list, tuple)) and v:
            for i, x in enumerate(v):
                walk(f"{path}[{i}]", x, depth + 1)
        else:
            out.setdefault(path, v)

    for p, v in expected.items():
        if isinstance(p, str) and isinstance(v, (dict, list, tuple)) and v:
            walk(p, v, 0)
    return out

