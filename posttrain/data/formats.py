"""Serializers for flat or nested records, and `record_paths`, shared by the structured
task (posttrain.data.tasks) and anything that checks structured output against a record.

    to_json(rec), to_yaml(rec), to_toml(rec), to_csv(rec), to_xml(rec)   # -> str
    SERIALIZERS[fmt](rec)         # fmt in FORMATS: json, yaml, csv, toml, xml
    record_paths(rec)             # {"a": .., "a.b": .., "tags": [..], "tags[0]": ..}

A record is a dict with str keys whose values are str, int, float, bool, None,
datetime.date, lists of those, or dicts of those (the task nests one level; json, yaml
and toml take any depth). Each output has no trailing newline and no code fence, and is
deterministic for a given record (key order is kept). Read back with the format's
standard parser:

json  json.loads gives back the same typed values, except that dates come back as ISO
      "YYYY-MM-DD" strings (JSON has no date type). indent=2, non-ASCII kept as is.
      NaN / infinity are written NaN / Infinity: Python reads them, strict JSON does
      not allow them.
yaml  yaml.safe_load gives back the same typed values, dates as datetime.date. Block
      style; a string that a YAML 1.1 or 1.2 reader would take for something else
      is quoted, so it stays a string: 'yes', 'null', "02139", "1.10" (strings with
      non-printable characters are double-quoted too).
toml  tomllib.loads gives back the same typed values, dates as TOML local dates
      (datetime.date). Own serializer: a mapping's scalars and arrays first, then one
      [table] per nested dict; dicts inside lists are inline tables; keys that are not
      bare are quoted. None has no TOML form (ValueError).
csv   Flat records only: a header row (the keys) and one data row, "\\n" line ends,
      csv module quoting; csv.reader gives back the keys and one text cell per value.
      Types travel as text, which a reader converts by the type it expects:
      int -> str(v) (int() reads it back), float -> repr(v) (float() reads back the
      same float), bool -> "true" / "false", date -> "YYYY-MM-DD", None -> "" (so None
      and "" read back alike), str as is. A string holding "\\r" is written unquoted,
      which csv.reader rejects; the task's vocabulary has none.
xml   <root> (default "record") with one child element per key (keys must be XML
      names), two-space indent, text escaped (&, <, >); a list becomes repeated <item>
      children and a dict nested elements. xml.etree.ElementTree gives back the tags
      and each leaf's text, in the same text form as csv (an empty element's .text is
      None: read it as ""). XML 1.0 cannot hold most control characters (the parser
      rejects them) and reads "\\r" as "\\n"; the task's vocabulary has neither.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import re
from typing import Any, Callable
from xml.sax.saxutils import escape as xml_escape

import yaml

# The format names, in the order the structured task lists them by default.
FORMATS = ("json", "yaml", "csv", "toml", "xml")


def _jsonable(v: Any) -> Any:
    """Dates -> ISO strings, recursively; everything else is already JSON-compatible."""
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _text(v: Any) -> str:
    """A scalar as plain text (CSV cells, XML element text)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, float):
        return repr(v)
    return str(v)


# A string a YAML 1.2 reader would take for a number (PyYAML, a 1.1 reader, would not
# always, so it leaves e.g. 02139 unquoted).
_NUMBERISH = re.compile(r"[-+]?(\.?[0-9]|0[xob])[0-9a-fA-F_.:eE+-]*")


class _YamlDumper(yaml.SafeDumper):
    pass


def _yaml_str(dumper, s: str):
    # Double quotes also for control and line-break characters (\x85, \u2028): PyYAML's
    # plain and single-quoted styles do not always read those back unchanged.
    style = '"' if _NUMBERISH.fullmatch(s) or not s.isprintable() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_YamlDumper.add_representer(str, _yaml_str)


def to_yaml(record: dict[str, Any]) -> str:
    return yaml.dump(record, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=10**6).rstrip("\n")


def to_json(record: dict[str, Any]) -> str:
    return json.dumps(_jsonable(record), indent=2, ensure_ascii=False)


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                 "\r": "\\r", **{chr(c): f"\\u{c:04X}" for c in [*range(0x20), 0x7F]
                                 if chr(c) not in "\b\t\n\f\r"}}


def _toml_str(s: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped."""
    return '"' + s.translate(str.maketrans(_TOML_ESCAPES)) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):  # before int: bool is an int subclass
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # always has a "." or an exponent, both valid TOML floats
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ValueError(f"TOML cannot represent {type(v).__name__} ({v!r})")


def to_toml(record: dict[str, Any], _prefix: tuple[str, ...] = ()) -> str:
    """TOML for a mapping: its non-table keys first (TOML requires it), then [tables]."""
    lines, tables = [], []
    for k, v in record.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in tables:
        path = (*_prefix, k)
        if lines:
            lines.append("")
        lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        body = to_toml(v, path)
        if body:
            lines.append(body)
    return "\n".join(lines)


def to_csv(record: dict[str, Any]) -> str:
    rows = [list(record), [_text(v) for v in record.values()]]
    if any(f != f.strip() for row in rows for f in row):
        # the csv module leaves " x " unquoted, and a reader of the payload strips the text
        # around it (a trailing " " of the last field would vanish): quote such fields
        return "\n".join(",".join(_csv_field(f) for f in row) for row in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in rows:
        w.writerow(row)
    return buf.getvalue().rstrip("\n")


def _csv_field(f: str) -> str:
    """One field as csv.writer (QUOTE_MINIMAL) writes it, and quoted when it has leading or
    trailing whitespace."""
    if f != f.strip() or any(c in f for c in ',"\r\n'):
        return '"' + f.replace('"', '""') + '"'
    return f


def to_xml(record: dict[str, Any], root: str = "record") -> str:
    """<root> with one child element per key; lists become repeated <item> children."""
    def emit(tag: str, v: Any, depth: int) -> list[str]:
        pad = "  " * depth
        if isinstance(v, dict):
            inner = [ln for k, x in v.items() for ln in emit(k, x, depth + 1)]
            return [f"{pad}<{tag}>", *inner, f"{pad}</{tag}>"]
        if isinstance(v, list):
            inner = [ln for x in v for ln in emit("item", x, depth + 1)]
            return [f"{pad}<{tag}>", *inner, f"{pad}</{tag}>"]
        return [f"{pad}<{tag}>{xml_escape(_text(v))}</{tag}>"]
    return "\n".join(emit(root, record, 0))


SERIALIZERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "json": to_json, "yaml": to_yaml, "csv": to_csv, "toml": to_toml, "xml": to_xml,
}


def record_paths(record: dict[str, Any]) -> dict[str, Any]:
    """Every path in a record -> its value: "a", "a.b", "tags", "tags[0]" (containers too)."""
    out: dict[str, Any] = {}

    def walk(path: str, v: Any) -> None:
        out[path] = v
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}.{k}", x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(f"{path}[{i}]", x)

    for k, v in record.items():
        walk(k, v)
    return out
