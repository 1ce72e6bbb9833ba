"""Safe parsers for JSON, YAML, TOML, CSV and XML (`parse_payload`, `is_non_empty`), and
`load_payload`, which extracts a payload from a completion (.extract) and parses it.

Values: json/yaml/toml native; csv a `CsvTable` (rows as dicts keyed by the header);
xml the root `ET.Element`, namespaces dropped. A repeated key is a "duplicate_key"
error in JSON, YAML and a CSV header. The parsers enforce the limits of .limits:
nesting is checked before json.loads, in the YAML composer, in the XML tree builder and
after tomllib; YAML loads with `LimitedYamlLoader` (a SafeLoader with alias and
expanded-node caps, no recursive aliases); XML with a DOCTYPE or ENTITY declaration is
rejected unparsed ("unsafe").

Parsed values are cached for the last few completions: do not mutate them.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import yaml

from posttrain.rewards.structured.extract import (_FORMAT_TAGS, _JSON_SPECIAL, _JSON_STRING_REST,
                                                  _fallbacks, _pick_fence, find_fences, strip_think)
from posttrain.rewards.structured.limits import (MAX_COMPLETION_CHARS, MAX_CSV_FIELD_CHARS, MAX_DEPTH,
                                                 MAX_NODES, MAX_PAYLOAD_CHARS, MAX_YAML_ALIASES)

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        tomllib = None


def _show(x: Any, n: int = 40) -> str:
    """A short, safe rendering of something from an example (str() of a huge int raises)."""
    return repr(x[:n]) if isinstance(x, str) else type(x).__name__


# --------------------------------------------------------------------------- parsers


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


class LimitedYamlLoader(yaml.SafeLoader):
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
    loader = LimitedYamlLoader(s)
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


# --------------------------------------------------------------------------- loading


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
    """The payload text that the rewards score for `fmt` (rules in posttrain.rewards.structured.extract)."""
    return load_payload(text, fmt).payload
