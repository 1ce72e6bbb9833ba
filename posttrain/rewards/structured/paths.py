"""Paths into a parsed payload: `parse_path`, `resolve_all`, `resolve_path`, and `_view`,
which shows any parsed value (XML elements included) as a dict, a list or a scalar.

Paths: `a.b[0].c`; `*` (`a.*.b` or `a[*].b`) is every element of a list or every value
of an object, and such a path is present when at least one element has it; its type
and value must hold for every element it reaches. CSV parses to its rows: `name` is the
first data row's cell (`[1].name`, `*.name` reach the others; a column whose name holds
a dot is found by its full name). XML paths start below the root element; `@id` is an
attribute; repeated same-named children form a list (`item[1]`; `item[0]` on a single
child is that child); an element whose children are all <item> is a list too (the
shape posttrain.data.formats.to_xml writes), so `tags[0]` works on it. Namespaces are
ignored (local names).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from typing import Any

from posttrain.rewards.structured.limits import MAX_NODES
from posttrain.rewards.structured.parse import CsvTable

MISSING = object()

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

