"""Structured-output rewards for JSON, YAML, TOML, CSV and XML, and the helpers the
evaluation harness reuses: `extract_payload`, `parse_payload`, `load_payload`,
`resolve_all` / `resolve_path`, `check_type`, `value_matches`.

Registered names: `{fmt}_{kind}` for fmt in json, yaml, toml, csv, xml and kind in
format, schema, type, value, exact; `structured_{kind}` reads the format from
example["format"] (missing or unknown: 0.0, reason "no_format"). The example carries
`required` (paths), `types` (path -> type name) and `expected` (path -> value), as the
built-in structured task (posttrain.data.tasks) writes them.

Extraction (a completion -> the payload that is scored):
  1. `<think>...</think>` blocks are removed. An unclosed `<think>` ends the answer:
     nothing after it is scored. A `</think>` with no `<think>` before it (the chat
     template opened the block) drops everything up to and including it.
  2. Code fences (``` or ~~~, any indent, with or without a language tag; an
     unterminated fence runs to the end of the text, cut at a stray ``` if any; a
     one-line ```json {...}``` counts). Preference: the last non-empty fence tagged
     with the declared format (json/jsonc/json5, yaml/yml, toml, csv, xml), else the
     last untagged fence, else the last fence with some other tag that is not one of
     the five formats. Fences tagged with another of the five formats are never used.
     The last, not the first: a model that revises its answer puts the final one last.
  3. No usable fence: the whole text, stripped.
  4. If that fails to parse: for JSON the first balanced {...} / [...] span (quotes
     inside a span are string-aware) that parses (up to 8 tried); for XML the text from
     the first tag to the last ">"; for CSV the first blank-line-separated paragraph of
     two or more lines that parses (prose around the table). Never for a payload
     rejected as unsafe. YAML and TOML get no such rescue.

Paths: `a.b[0].c`; `*` (`a.*.b` or `a[*].b`) is every element of a list or every value
of an object, and such a path is present when at least one element has it; its type
and value must hold for every element it reaches. CSV parses to its rows: `name` is the
first data row's cell (`[1].name`, `*.name` reach the others; a column whose name holds
a dot is found by its full name). XML paths start below the root element; `@id` is an
attribute; repeated same-named children form a list (`item[1]`; `item[0]` on a single
child is that child); an element whose children are all <item> is a list too (the
shape posttrain.data.formats.to_xml writes), so `tags[0]` works on it. Namespaces are
ignored (local names).

Decisions: an int is accepted where a float is declared (bool never is a number);
"date" accepts ISO-8601 dates and date-times, native (YAML, TOML) or as text; ints
compare exactly, other numbers within 1e-6 relative; strings compare after strip; dates
as ISO strings. `value` scores the expected leaves (containers in `expected` are
expanded into their leaves; explicit leaf paths win), `exact` compares every expected
path, containers structurally (same keys, same length). A reward whose example gives
nothing to check scores 0.0 with reason "no_schema" / "no_types" / "no_expected": a
constant 1.0 would silently duplicate the format reward. `schema` falls back to the
paths of `types`, then of `expected`, when `required` is absent.

Limits: a completion over 200,000 characters is not looked at ("too_large"); a payload
over 100,000 characters is rejected ("payload_too_large"); nesting deeper than 64 is
rejected ("too_deep", checked before json.loads, in the YAML composer, in the XML tree
builder, after tomllib); YAML loads with a SafeLoader that allows at most 100 aliases
and 100,000 nodes counted with aliases expanded (a "billion laughs" stops after a few
lines, "too_many_nodes"), and no recursive aliases; XML with a DOCTYPE or ENTITY
declaration is rejected unparsed ("unsafe"); a CSV field over 10,000 characters is
rejected. Parsed values are cached for the last few completions: do not mutate them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

import yaml

from posttrain.data.formats import FORMATS
from posttrain.rewards.base import RewardResult, register_reward

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        tomllib = None

MAX_COMPLETION_CHARS = 200_000
MAX_PAYLOAD_CHARS = 100_000
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_YAML_ALIASES = 100
MAX_CSV_FIELD_CHARS = 10_000
MAX_SPAN_TRIES = 8
TEXTUAL = frozenset({"csv", "xml"})
"""Formats whose values are all text, read back by the declared type."""

MISSING = object()

# --------------------------------------------------------------------------- extraction

_FORMAT_TAGS = {"json": {"json", "jsonc", "json5"}, "yaml": {"yaml", "yml"}, "toml": {"toml"},
                "csv": {"csv"}, "xml": {"xml"}}
_ALL_TAGS = set().union(*_FORMAT_TAGS.values())
_FENCE_LINE = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")
_LANG_TAG = re.compile(r"[A-Za-z0-9_+.#-]+")


def strip_think(text: str) -> str:
    """The text with `<think>...</think>` blocks removed (rules in the module docstring)."""
    close, open_ = text.find("</think>"), text.find("<think>")
    if close != -1 and (open_ == -1 or close < open_):
        text = text[close + len("</think>"):]
    parts = []
    while True:
        i = text.find("<think>")
        if i == -1:
            parts.append(text)
            break
        parts.append(text[:i])
        j = text.find("</think>", i)
        if j == -1:  # unclosed: the rest is reasoning
            break
        text = text[j + len("</think>"):]
    return "".join(parts)


@dataclass(frozen=True)
class Fence:
    tag: str
    """Lower-cased language tag, "" when there is none."""
    body: str


def find_fences(text: str) -> list[Fence]:
    """Every code fence in `text`, in order; an unterminated one runs to the end."""
    if "```" not in text and "~~~" not in text:
        return []
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        m = _FENCE_LINE.fullmatch(lines[i])
        i += 1
        if m is None:
            continue
        mark, info = m.group(1), m.group(2).strip()
        words = info.split(None, 1)
        tag = words[0] if words and _LANG_TAG.fullmatch(words[0]) else ""
        rest = (words[1] if len(words) > 1 else "") if tag else info
        if mark[:3] in rest:  # one-line fence: ```json {"a": 1}```
            out.append(Fence(tag.lower(), rest[:rest.index(mark[:3])]))
            continue
        body, closed = [], False
        while i < len(lines):
            c = _FENCE_LINE.fullmatch(lines[i])
            i += 1
            if (c and c.group(1)[0] == mark[0] and len(c.group(1)) >= len(mark)
                    and not c.group(2).strip()):
                closed = True
                break
            body.append(lines[i - 1])
        content = "\n".join(body)
        if not closed and mark[:3] in content:  # '}```' closing on a content line
            content = content[:content.index(mark[:3])]
        out.append(Fence(tag.lower(), textwrap.dedent(content)))
    return out


def _pick_fence(fences: list[Fence], fmt: str) -> str | None:
    own = _FORMAT_TAGS[fmt]
    tiers = ([f for f in fences if f.tag in own], [f for f in fences if not f.tag],
             [f for f in fences if f.tag and f.tag not in _ALL_TAGS])
    for tier in tiers:
        bodies = [f.body for f in tier if f.body.strip()]
        if bodies:
            return bodies[-1]
    return None


_JSON_SPECIAL = re.compile(r'[\[\]{}"]')
_JSON_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # after the opening quote
_CLOSER = {"[": "]", "{": "}"}


def json_spans(text: str) -> list[tuple[int, int]]:
    """Start/end of the outermost balanced {...} / [...] spans, in order. One linear pass;
    quotes count as strings only inside a span; a mismatched closer abandons what is
    open, and so does a span deeper than MAX_DEPTH (up to where its depth returns to 0)."""
    spans: list[tuple[int, int]] = []
    stack: list[tuple[str, int]] = []
    overflow, pos = 0, 0  # overflow: depth inside an abandoned too-deep span
    while True:
        m = _JSON_SPECIAL.search(text, pos)
        if m is None:
            break
        c, pos = m.group(), m.end()
        if c == '"':
            if stack or overflow:
                s = _JSON_STRING_REST.match(text, pos)
                if s is None:  # unterminated string: nothing after it can close
                    break
                pos = s.end()
        elif overflow:
            overflow += 1 if c in "[{" else -1
        elif c in "[{":
            stack.append((c, m.start()))
            if len(stack) > MAX_DEPTH:
                overflow = len(stack)
                stack.clear()
        elif stack and _CLOSER[stack[-1][0]] == c:
            _, start = stack.pop()
            spans.append((start, pos))
        else:
            stack.clear()
    spans.sort()
    outer, end = [], -1
    for start, stop in spans:
        if start >= end:
            outer.append((start, stop))
            end = stop
    return outer


_XML_START = re.compile(r"<[A-Za-z_?]")


def _fallbacks(payload: str, fmt: str):
    """Smaller candidates inside a payload that did not parse (JSON spans, an XML slice)."""
    if fmt == "json":
        for start, stop in json_spans(payload)[:MAX_SPAN_TRIES]:
            yield payload[start:stop]
    elif fmt == "xml":
        m, end = _XML_START.search(payload), payload.rfind(">")
        if m is not None and end > m.start() and (m.start() > 0 or end < len(payload) - 1):
            yield payload[m.start():end + 1]
    elif fmt == "csv":  # prose paragraphs around the table
        blocks = [b.strip() for b in re.split(r"\n[ \t]*\n", payload)]
        yield from [b for b in blocks if "\n" in b][:MAX_SPAN_TRIES]


@dataclass(frozen=True)
class Parsed:
    """What `load_payload` found: the payload text, its parsed value, and "ok" or the
    reason it failed (no_payload, too_large, payload_too_large, too_deep, too_many_nodes,
    unsafe, parse_error) with a detail."""

    payload: str | None
    value: Any
    reason: str
    detail: str = ""


def load_payload(completion: Any, fmt: str) -> Parsed:
    """Extract the payload of format `fmt` from a completion and parse it (never raises)."""
    if not isinstance(completion, str):
        return Parsed(None, None, "no_payload", f"completion is {type(completion).__name__}, not str")
    if not isinstance(fmt, str) or fmt not in _FORMAT_TAGS:
        return Parsed(None, None, "no_format", f"unknown format {_show(fmt)}")
    if len(completion) > MAX_COMPLETION_CHARS:
        return Parsed(None, None, "too_large", f"{len(completion)} chars > {MAX_COMPLETION_CHARS}")
    return _load_cached(completion, fmt)


@lru_cache(maxsize=16)  # the K components of one RewardSet row share one parse
def _load_cached(completion: str, fmt: str) -> Parsed:
    text = strip_think(completion.replace("\r\n", "\n")).lstrip("\ufeff")
    primary = _pick_fence(find_fences(text), fmt)
    if primary is None:
        primary = text.strip()
    if not primary.strip():
        return Parsed(None, None, "no_payload", "nothing left after think blocks and fences")
    value, reason, detail = _parse(primary, fmt)
    if reason == "ok":
        return Parsed(primary, value, "ok")
    if reason != "unsafe":
        for cand in _fallbacks(primary, fmt):
            v2, r2, _ = _parse(cand, fmt)
            if r2 == "ok":
                return Parsed(cand, v2, "ok")
    return Parsed(primary, None, reason, detail)


def extract_payload(text: Any, fmt: str) -> str | None:
    """The payload text that the rewards score for `fmt` (see the module docstring)."""
    return load_payload(text, fmt).payload


# --------------------------------------------------------------------------- parsing


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _json_depth_ok(s: str) -> bool:
    """Bracket depth <= MAX_DEPTH, strings skipped; one pass, before json.loads recurses."""
    depth, pos = 0, 0
    while True:
        m = _JSON_SPECIAL.search(s, pos)
        if m is None:
            return True
        c, pos = m.group(), m.end()
        if c == '"':
            rest = _JSON_STRING_REST.match(s, pos)
            if rest is None:
                return True  # unterminated string: json.loads reports it
            pos = rest.end()
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        else:
            depth -= 1


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json.loads hook: a repeated key is an error (RFC 8259 says names SHOULD be unique;
    json.loads would keep the last one silently, and a policy under RL learns to repeat)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Reject("duplicate_key", f"key {_show(k)} appears twice")
        out[k] = v
    return out


def _parse_json(s: str) -> Any:
    if not _json_depth_ok(s):
        raise _Reject("too_deep", f"nesting deeper than {MAX_DEPTH}")
    return json.loads(s, object_pairs_hook=_unique_keys)


class _LimitedYamlLoader(yaml.SafeLoader):
    """SafeLoader that counts depth, aliases and nodes with aliases expanded, and stops
    past the limits while composing, before anything is constructed."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = self._aliases = self._weight = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded node count

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _Reject("too_many_nodes", f"more than {MAX_YAML_ALIASES} aliases")
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _Reject("parse_error", "recursive alias")
            self._weight += size
        else:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Reject("too_deep", f"nesting deeper than {MAX_DEPTH}")
            start = self._weight
            node = super().compose_node(parent, index)
            self._depth -= 1
            self._weight += 1
            self._sizes[id(node)] = self._weight - start
        if self._weight > MAX_NODES:
            raise _Reject("too_many_nodes", f"more than {MAX_NODES} nodes with aliases expanded")
        return node

    def construct_mapping(self, node, deep=False):
        """A repeated key is an error (YAML 1.2 requires unique keys; PyYAML keeps the last)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise _Reject("duplicate_key", f"key {_show(key_node.value)} appears twice")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(s: str) -> Any:
    loader = _LimitedYamlLoader(s)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


class _LimitedTreeBuilder(ET.TreeBuilder):
    """Namespaces dropped; depth and element count capped while parsing."""

    def __init__(self):
        super().__init__()
        self._depth = self._count = 0

    def start(self, tag, attrs):
        self._depth += 1
        self._count += 1
        if self._depth > MAX_DEPTH:
            raise _Reject("too_deep", f"nesting deeper than {MAX_DEPTH}")
        if self._count > MAX_NODES:
            raise _Reject("too_many_nodes", f"more than {MAX_NODES} elements")
        return super().start(_local(tag), {_local(k): v for k, v in attrs.items()})

    def end(self, tag):
        self._depth -= 1
        return super().end(_local(tag))


_XML_UNSAFE = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.I)


def _parse_xml(s: str) -> ET.Element:
    if _XML_UNSAFE.search(s):
        raise _Reject("unsafe", "DOCTYPE / ENTITY declarations are not allowed")
    parser = ET.XMLParser(target=_LimitedTreeBuilder())
    parser.feed(s)
    return parser.close()


class CsvTable(list):
    """CSV rows as dicts keyed by the (stripped) header; `header` keeps the column order."""

    def __init__(self, header=(), rows=()):
        super().__init__(rows)
        self.header = list(header)


def _parse_csv(s: str) -> CsvTable:
    rows = [r for r in csv.reader(io.StringIO(s, newline="")) if r]  # [] is a blank line
    if not rows:
        return CsvTable()
    header = [h.strip() for h in rows[0]]
    if len(header) > 1:  # a whitespace-only line; with one column it is a value
        rows = rows[:1] + [r for r in rows[1:] if len(r) > 1 or r[0].strip()]
    if len(set(header)) != len(header):
        raise _Reject("parse_error", "duplicate column name in the header")
    for n, row in enumerate(rows[1:], 1):
        if len(row) != len(header):
            raise _Reject("parse_error", f"data row {n} has {len(row)} fields, the header {len(header)}")
    if any(len(c) > MAX_CSV_FIELD_CHARS for row in rows for c in row):
        raise _Reject("payload_too_large", f"a field over {MAX_CSV_FIELD_CHARS} chars")
    return CsvTable(header, (dict(zip(header, row)) for row in rows[1:]))


def _depth_of(value: Any) -> int:
    """Nesting depth of dicts / lists, iteratively (TOML has no aliases: size-bounded)."""
    best, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            best = max(best, d + 1)
            if best > MAX_DEPTH:
                return best
            stack.extend((x, d + 1) for x in v)
    return best


def _parse_toml(s: str) -> dict:
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise _Reject("parse_error", "TOML needs Python 3.11+ (tomllib) or the tomli package")
    value = tomllib.loads(s)
    if _depth_of(value) > MAX_DEPTH:
        raise _Reject("too_deep", f"nesting deeper than {MAX_DEPTH}")
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "json": _parse_json, "yaml": _parse_yaml, "toml": _parse_toml, "csv": _parse_csv, "xml": _parse_xml,
}


def _short(exc: BaseException) -> str:
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a message that cannot be built is no message
        msg = ""
    return f"{type(exc).__name__}: {msg}"[:200]


def _parse(text: str, fmt: str) -> tuple[Any, str, str]:
    if len(text) > MAX_PAYLOAD_CHARS:
        return None, "payload_too_large", f"{len(text)} chars > {MAX_PAYLOAD_CHARS}"
    try:
        return _PARSERS[fmt](text), "ok", ""
    except _Reject as r:
        return None, r.reason, r.detail
    except RecursionError:
        return None, "too_deep", "the parser ran out of recursion"
    except MemoryError:
        return None, "payload_too_large", "out of memory while parsing"
    except Exception as exc:  # noqa: BLE001 - any parser failure is a parse error
        return None, "parse_error", _short(exc)


def parse_payload(text: str, fmt: str) -> tuple[Any, str | None]:
    """Parse an already-extracted payload: (value, None), or (None, "reason: detail").
    Values: json/yaml/toml native; csv a `CsvTable`; xml the root `ET.Element`."""
    if not isinstance(text, str) or not isinstance(fmt, str) or fmt not in _PARSERS:
        return None, "parse_error: not a string or an unknown format"
    value, reason, detail = _parse(text, fmt)
    return (value, None) if reason == "ok" else (None, f"{reason}: {detail}")


def is_non_empty(value: Any, fmt: str) -> bool:
    """json/yaml/toml: a non-empty object or array at the top; csv: a header and a data
    row; xml: a root with children, attributes or text."""
    if fmt == "csv":
        return isinstance(value, CsvTable) and bool(value.header) and len(value) > 0
    if fmt == "xml":
        return isinstance(value, ET.Element) and bool(len(value) or value.attrib
                                                      or (value.text or "").strip())
    return isinstance(value, (dict, list)) and len(value) > 0


# --------------------------------------------------------------------------- paths

_PATH_TOKEN = re.compile(r"\[(\d{1,9}|\*)\]|(?:^|\.)([^.\[\]]+)")


@lru_cache(maxsize=4096)
def parse_path(path: str) -> tuple[tuple[str, Any], ...] | None:
    """`a.b[0].*` -> (("key", "a"), ("key", "b"), ("index", 0), ("any", None)); None if malformed."""
    if not isinstance(path, str) or not path or len(path) > 1000:
        return None
    segs, pos = [], 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)  # a name after the start needs its "."
        if m is None:
            return None
        if m.group(1) is not None:
            segs.append(("any", None) if m.group(1) == "*" else ("index", int(m.group(1))))
        else:
            segs.append(("any", None) if m.group(2) == "*" else ("key", m.group(2)))
        pos = m.end()
    return tuple(segs)


class _XmlGroup(list):
    """Two or more same-named sibling elements: a list."""


def _xml_items(el: ET.Element) -> list[ET.Element] | None:
    kids = list(el)
    return kids if kids and all(k.tag == "item" for k in kids) else None


def _step(v: Any, seg: tuple[str, Any]) -> list[Any]:
    kind, key = seg
    if isinstance(v, ET.Element):
        if kind == "key":
            if key.startswith("@"):
                return [v.attrib[key[1:]]] if key[1:] in v.attrib else []
            kids = [c for c in v if c.tag == key]
            return [] if not kids else [kids[0] if len(kids) == 1 else _XmlGroup(kids)]
        items = _xml_items(v)
        if kind == "index":
            if items is not None:
                return [items[key]] if key < len(items) else []
            return [v] if key == 0 else []
        return items if items is not None else list(v)
    if isinstance(v, CsvTable) and kind == "key":
        return _step(v[0], seg) if v else []
    if isinstance(v, dict):
        if kind == "key":
            return [v[key]] if key in v else []
        return list(v.values()) if kind == "any" else []
    if isinstance(v, list):
        if kind == "index":
            return [v[key]] if key < len(v) else []
        return list(v) if kind == "any" else []
    return []


def resolve_all(value: Any, path: str) -> list[Any]:
    """Every value `path` reaches in a parsed payload (empty: missing)."""
    if not isinstance(path, str):
        return []
    if isinstance(value, CsvTable) and value and path in value.header:
        return [value[0][path]]  # a column whose name holds a dot or a bracket
    segs = parse_path(path)
    if segs is None:
        return []
    current = [value]
    for seg in segs:
        nxt: list[Any] = []
        for v in current:
            nxt.extend(_step(v, seg))
            if len(nxt) > MAX_NODES:  # a wildcard over a huge payload: stop early
                return nxt[:MAX_NODES]
        current = nxt
        if not current:
            break
    return current


def resolve_path(value: Any, path: str, default: Any = MISSING) -> Any:
    """The first value `path` reaches, or `default` (the module's MISSING)."""
    found = resolve_all(value, path)
    return found[0] if found else default


def _view(v: Any) -> tuple[str, Any]:
    """("dict", mapping) | ("list", sequence) | ("scalar", value) for any parsed value;
    an XML leaf element is its text."""
    if isinstance(v, ET.Element):
        kids = list(v)
        if not kids:
            return "scalar", v.text or ""
        if all(k.tag == "item" for k in kids):
            return "list", kids
        groups: dict[str, list[ET.Element]] = {}
        for k in kids:
            groups.setdefault(k.tag, []).append(k)
        return "dict", {t: g[0] if len(g) == 1 else _XmlGroup(g) for t, g in groups.items()}
    if isinstance(v, dict):
        return "dict", v
    if isinstance(v, list):
        return "list", v
    return "scalar", v


# --------------------------------------------------------------------------- types and values

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


# --------------------------------------------------------------------------- rewards


def _show(x: Any, n: int = 40) -> str:
    """A short, safe rendering of something from an example (str() of a huge int raises)."""
    return repr(x[:n]) if isinstance(x, str) else type(x).__name__


def _prepare(example: Any, fmt: str | None) -> tuple[Mapping, str | None, RewardResult | None]:
    """(example as a mapping, the format, None) or (.., None, RewardResult(0.0, "no_format"))."""
    example = example if isinstance(example, Mapping) else {}
    if fmt is None:
        fmt = example.get("format")
        fmt = fmt.strip().lower() if isinstance(fmt, str) else fmt
        fmt = "yaml" if fmt == "yml" else fmt
    if not isinstance(fmt, str) or fmt not in _FORMAT_TAGS:
        return example, None, RewardResult(0.0, "no_format", f"example format {_show(fmt)} is not "
                                                             f"one of {', '.join(FORMATS)}")
    return example, fmt, None


def _paths(obj: Any) -> list[str] | None:
    """Paths from `required` (a list, one string, or a mapping's keys); None if unusable."""
    if obj is None:
        return []
    if isinstance(obj, str):
        obj = [obj]
    if isinstance(obj, (Mapping, list, tuple)):
        return list(dict.fromkeys(p for p in obj if isinstance(p, str)))
    return None


def _loaded(completion: Any, fmt: str) -> tuple[Any, RewardResult | None]:
    p = load_payload(completion, fmt)
    if p.reason != "ok":
        return None, RewardResult(0.0, p.reason, p.detail)
    if isinstance(p.value, CsvTable) and not p.value:
        return None, RewardResult(0.0, "empty", "the CSV has no data row")
    return p.value, None


def _fraction(n_ok: int, misses: list[str], tag: str) -> RewardResult:
    total = n_ok + len(misses)
    if not misses:
        return RewardResult(1.0, "ok")
    more = f" (+{len(misses) - 5} more)" if len(misses) > 5 else ""
    return RewardResult(n_ok / total, tag, ", ".join(misses[:5])[:300] + more)


def format_reward(completion: Any, example: Any = None, fmt: str | None = None) -> RewardResult:
    """1.0 if the extracted payload parses as `fmt` and is non-empty (`is_non_empty`)."""
    example, fmt, bad = _prepare(example, fmt)
    if bad:
        return bad
    p = load_payload(completion, fmt)
    if p.reason != "ok":
        return RewardResult(0.0, p.reason, p.detail)
    if not is_non_empty(p.value, fmt):
        return RewardResult(0.0, "empty", "parsed, but no object, rows or elements in it")
    return RewardResult(1.0, "ok")


def schema_reward(completion: Any, example: Any = None, fmt: str | None = None) -> RewardResult:
    """Fraction of required paths present (`required`, else the paths of `types`, else of
    `expected`)."""
    example, fmt, bad = _prepare(example, fmt)
    if bad:
        return bad
    paths = _paths(example.get("required"))
    if paths is None:
        return RewardResult(0.0, "bad_example", "required must be a list of paths")
    for fallback in ("types", "expected"):
        if not paths and isinstance(example.get(fallback), Mapping):
            paths = _paths(example[fallback])
    if not paths:
        return RewardResult(0.0, "no_schema", "the example has no required, types or expected paths")
    value, fail = _loaded(completion, fmt)
    if fail:
        return fail
    missing = [p for p in paths if not resolve_all(value, p)]
    return _fraction(len(paths) - len(missing), missing, "missing_paths")


def type_reward(completion: Any, example: Any = None, fmt: str | None = None) -> RewardResult:
    """Fraction of `types` paths present with the declared type (every element a
    wildcard reaches); an unknown type name counts as a miss."""
    example, fmt, bad = _prepare(example, fmt)
    if bad:
        return bad
    types = example.get("types")
    if not isinstance(types, Mapping) or not types:
        return RewardResult(0.0, "no_types", "the example has no types")
    value, fail = _loaded(completion, fmt)
    if fail:
        return fail
    textual = fmt in TEXTUAL
    wrong = []
    for path, t in types.items():
        found = resolve_all(value, path) if isinstance(path, str) else []
        if not (found and all(check_type(v, t, textual) for v in found)):
            shown = path if isinstance(path, str) else _show(path)
            wrong.append(f"{shown}:{t}" if normalize_type(t) else f"{shown}:unknown type {_show(t, 20)}")
    return _fraction(len(types) - len(wrong), wrong, "wrong_types")


def value_reward(completion: Any, example: Any = None, fmt: str | None = None) -> RewardResult:
    """Fraction of expected leaf values matched (`expected_leaves`, `value_matches`)."""
    example, fmt, bad = _prepare(example, fmt)
    if bad:
        return bad
    expected = example.get("expected")
    if not isinstance(expected, Mapping) or not expected:
        return RewardResult(0.0, "no_expected", "the example has no expected values")
    leaves = expected_leaves(expected)
    value, fail = _loaded(completion, fmt)
    if fail:
        return fail
    textual = fmt in TEXTUAL
    wrong = []
    for path, want in leaves.items():
        found = resolve_all(value, path)
        if not (found and all(value_matches(v, want, textual) for v in found)):
            wrong.append(path)
    return _fraction(len(leaves) - len(wrong), wrong, "wrong_values")


def exact_reward(completion: Any, example: Any = None, fmt: str | None = None) -> RewardResult:
    """1.0 iff every expected path matches, containers compared structurally."""
    example, fmt, bad = _prepare(example, fmt)
    if bad:
        return bad
    expected = example.get("expected")
    if not isinstance(expected, Mapping) or not expected:
        return RewardResult(0.0, "no_expected", "the example has no expected values")
    value, fail = _loaded(completion, fmt)
    if fail:
        return fail
    textual = fmt in TEXTUAL
    wrong = []
    for path, want in expected.items():
        found = resolve_all(value, path) if isinstance(path, str) else []
        if not (found and all(value_matches(v, want, textual) for v in found)):
            wrong.append(path if isinstance(path, str) else _show(path))
    if wrong:
        return RewardResult(0.0, "wrong_values", ", ".join(wrong[:5])[:300])
    return RewardResult(1.0, "ok")


# --------------------------------------------------------------------------- registration

KINDS: dict[str, Callable[..., RewardResult]] = {
    "format": format_reward, "schema": schema_reward, "type": type_reward,
    "value": value_reward, "exact": exact_reward,
}
_NAMES = {"json": "JSON", "yaml": "YAML", "toml": "TOML", "csv": "CSV", "xml": "XML"}
_CHECKS = {
    "format": "1.0 if the {F}payload extracted from the completion parses and is non-empty, else 0.0.",
    "schema": "Fraction of example['required'] paths present in the {F}payload (else the paths of "
              "'types', then 'expected').",
    "type": "Fraction of example['types'] paths whose {F}value has the declared type.",
    "value": "Fraction of example['expected'] leaf values the {F}payload matches (numbers within "
             "1e-6 relative, strings after strip, dates as ISO strings).",
    "exact": "1.0 iff every example['expected'] path matches in the {F}payload, else 0.0.",
}
_COMMON_LIMITS = (f"completion <= {MAX_COMPLETION_CHARS:,} chars; payload <= {MAX_PAYLOAD_CHARS:,} "
                  f"chars; nesting <= {MAX_DEPTH}")
_LIMITS = {
    "json": f"{_COMMON_LIMITS} (bracket depth scanned before json.loads); ints past Python's "
            "digit limit are a parse error.",
    "yaml": f"{_COMMON_LIMITS}; SafeLoader with <= {MAX_YAML_ALIASES} aliases, <= {MAX_NODES:,} "
            "nodes counted with aliases expanded, no recursive aliases.",
    "toml": f"{_COMMON_LIMITS}; tomllib.",
    "csv": f"{_COMMON_LIMITS}; csv module, fields <= {MAX_CSV_FIELD_CHARS:,} chars; a header and "
           ">= 1 data row, every row as wide as the header.",
    "xml": f"{_COMMON_LIMITS}; <= {MAX_NODES:,} elements; DOCTYPE / ENTITY declarations rejected "
           "unparsed (no entity expansion, no external entities).",
    "structured": f"{_COMMON_LIMITS}; plus the limits of the format in example['format'].",
}


def _bind(kind: str, prefix: str) -> Callable[[str, dict], RewardResult]:
    fn, fmt = KINDS[kind], None if prefix == "structured" else prefix

    def reward(completion: str, example: dict) -> RewardResult:
        return fn(completion, example, fmt=fmt)

    reward.__name__ = reward.__qualname__ = f"{prefix}_{kind}"
    reward.__doc__ = fn.__doc__
    return reward


for _prefix in (*FORMATS, "structured"):
    for _kind in KINDS:
        _checks = (_CHECKS[_kind].format(F=f"{_NAMES[_prefix]} ") if _prefix in _NAMES else
                   _CHECKS[_kind].format(F="") + " The format is example['format'].")
        register_reward(f"{_prefix}_{_kind}", checks=_checks,
                        limits=_LIMITS[_prefix])(_bind(_kind, _prefix))
