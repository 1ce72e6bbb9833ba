"""The payload of a StructEval-T generation: the benchmark's cleaning (`reference_clean`, and
the corrected fallback `_gentle_clean`), `extract_code`, and `load`, which parses a payload
per format the benchmark's way or the corrected way (YAML loaders, `xml_to_dict`, the CSV
header). The cleaning and extraction rules are those of the benchmark's
`structeval/render_engine/render_utils.py` as shared/data/structeval_t/README.md describes
them; the rules and the quirks named Q1..Q10 are listed in posttrain.eval.structeval.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.parsers.expat as expat
from dataclasses import dataclass
from typing import Any

import yaml

from posttrain.rewards.structured import MAX_PAYLOAD_CHARS, CsvTable, parse_payload
from posttrain.rewards.structured import LimitedYamlLoader  # its limits; the key rule differs

# --------------------------------------------------------------------------- cleaning, extraction

_EMPTY_THINK = "<think>\n\n</think>\n\n"
_BEGIN = re.compile(re.escape("<|BEGIN_CODE|>"), re.I)
_END = re.compile(re.escape("<|END_CODE|>"), re.I)


def reference_clean(text: str) -> str:
    """The benchmark's cleaning (Q1, Q4): html unescape, empty think block, unicode_escape."""
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace(_EMPTY_THINK, "")
    return text.encode("utf-8", "ignore").decode("unicode_escape", "ignore")


def _gentle_clean(text: str) -> str:
    """The corrected fallback: the same, but escape decoding keeps non-ASCII characters
    (they travel as Latin-1 bytes or \\uXXXX escapes, which unicode_escape gives back)."""
    text = text.replace("&lt;", "<").replace("&gt;", ">")
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape", "ignore")


def extract_code(text: str) -> tuple[str, str]:
    """(payload, where): the first ``` fence, else BEGIN/END_CODE markers, else the whole
    text, stripped; `where` is "fence", "markers" or "whole". Linear time: the fence is
    found with str.find, not a backtracking regex (a 1 MB run of backticks is cheap)."""
    start = text.find("```")
    if start != -1:
        nl = text.find("\n", start + 3)  # the header line; without a newline there is no fence
        if nl != -1:
            end = text.find("```", nl + 1)
            return (text[nl + 1:] if end == -1 else text[nl + 1:end]).strip(), "fence"
    m = _BEGIN.search(text)
    if m is not None:
        e = _END.search(text, m.end())
        return text[m.end():len(text) if e is None else e.start()].strip(), "markers"
    return text.strip(), "whole"


# --------------------------------------------------------------------------- loading


class _Unsafe(Exception):
    pass


class _BenchYamlLoader(LimitedYamlLoader):
    """yaml.safe_load's semantics (a repeated key keeps the last value) under the alias,
    node and depth limits of the rewards' loader."""

    def construct_mapping(self, node, deep=False):
        return yaml.SafeLoader.construct_mapping(self, node, deep=deep)


_TEXT_KEY_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "null", "timestamp")}
_STR_TAG = "tag:yaml.org,2002:str"


class _TextKeyYamlLoader(_BenchYamlLoader):
    """Corrected (Q8): a plain key that YAML 1.1 would read as bool / number / date / null is
    kept as its text. Done while composing, so keys brought in by a merge (<<) are covered."""

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        node.value = [(yaml.ScalarNode(_STR_TAG, k.value, k.start_mark, k.end_mark)
                       if isinstance(k, yaml.ScalarNode) and k.style is None and k.tag in _TEXT_KEY_TAGS
                       else k, v) for k, v in node.value]
        return node


def _load_yaml(text: str, loader_cls) -> Any:
    loader = loader_cls(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_EXPAT_GUARDED = tuple(expat.version_info) >= (2, 4, 0)  # amplification limits on entities


def _refuse_entity(*_args) -> None:
    raise _Unsafe("entity declarations are refused on this expat (no billion-laughs protection)")


def xml_to_dict(text: str) -> dict:
    """What xmltodict.parse(text) returns by default, built on pyexpat the way it does:
    {root: value}; attributes "@name"; text stripped, "#text" beside attributes or children;
    an empty element None; a text-only one its string; repeated children a list; namespace
    prefixes kept in names; comments dropped; entity references in text dropped."""
    parser = expat.ParserCreate("utf-8")
    parser.buffer_text = True
    parser.DefaultHandler = lambda data: None  # unexpanded entity references end up here
    parser.ExternalEntityRefHandler = lambda *args: 1  # never fetched
    if not _EXPAT_GUARDED:
        parser.EntityDeclHandler = _refuse_entity
    root: dict = {}
    stack: list[list] = [["", root, []]]  # [name, item (dict or None), text chunks]

    def start(name, attrs):
        stack.append([name, {f"@{k}": v for k, v in attrs.items()} or None, []])

    def end(_name):
        name, item, chunks = stack.pop()
        text = "".join(chunks).strip() or None
        if item is None:
            value = text
        else:
            if text is not None:
                item["#text"] = text
            value = item
        parent = stack[-1]
        if parent[1] is None:
            parent[1] = {}
        siblings = parent[1]
        if name not in siblings:
            siblings[name] = value
        elif isinstance(siblings[name], list):  # element values are never lists themselves
            siblings[name].append(value)
        else:
            siblings[name] = [siblings[name], value]

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = lambda data: stack[-1][2].append(data)
    parser.Parse(text.encode("utf-8", "surrogatepass"), True)
    return root


@dataclass(frozen=True)
class CsvHeader:
    """CSV output as key validation sees it: the header cells."""

    cells: tuple[str, ...]


def _reference_csv_header(text: str) -> CsvHeader:
    """csv.DictReader's fieldnames: the first row, cells as written (not stripped)."""
    try:
        return CsvHeader(tuple(next(csv.reader(io.StringIO(text)), [])))
    except csv.Error:
        return CsvHeader(())


@dataclass(frozen=True)
class Loaded:
    value: Any
    reason: str
    """ok, empty, parse_error, too_deep, too_many_nodes, unsafe, payload_too_large."""
    detail: str = ""


def _is_container(v: Any) -> bool:
    return isinstance(v, (dict, list)) and len(v) > 0


def load(payload: str, fmt: str, corrected: bool) -> tuple[Loaded, list[str]]:
    """Parse an extracted payload the benchmark's way (or the corrected way); never raises.
    Returns the result and the notes on quirks that decided it."""
    notes: list[str] = []
    if len(payload) > MAX_PAYLOAD_CHARS:
        return Loaded(None, "payload_too_large", f"{len(payload)} chars > {MAX_PAYLOAD_CHARS}"), notes
    try:
        if fmt == "json":
            value = json.loads(payload)
        elif fmt == "yaml":
            value = _load_yaml(payload, _TextKeyYamlLoader if corrected else _BenchYamlLoader)
        elif fmt == "toml":
            value, err = parse_payload(payload, "toml")
            if err is not None:
                reason, _, detail = err.partition(": ")
                return Loaded(None, reason, detail), notes
        elif fmt == "xml":
            value = xml_to_dict(payload)
        elif corrected:  # csv, read for real (Q2)
            table, err = parse_payload(payload, "csv")
            if err is not None:
                reason, _, detail = err.partition(": ")
                return Loaded(None, reason, detail), notes
            if not (table.header and len(table)):
                return Loaded(None, "empty", "a CSV needs a header and at least one data row"), notes
            return Loaded(CsvHeader(tuple(table.header)), "ok"), notes
        else:  # csv as the reference sees it: a DictReader, always truthy (Q2)
            table, err = parse_payload(payload, "csv")
            if err is not None or not (isinstance(table, CsvTable) and table.header and len(table)):
                notes.append("csv_not_read")
            return Loaded(_reference_csv_header(payload), "ok"), notes
    except RecursionError:
        return Loaded(None, "too_deep", "the parser ran out of recursion"), notes
    except _Unsafe as exc:
        return Loaded(None, "unsafe", str(exc)), notes
    except Exception as exc:  # noqa: BLE001 - any loader failure is a render failure
        reason = getattr(exc, "reason", "parse_error")  # the rewards' limit errors carry one
        return Loaded(None, reason, f"{type(exc).__name__}: {exc}"[:200]), notes
    if corrected and fmt in ("json", "yaml") and not _is_container(value):
        return Loaded(None, "empty", f"top level is {type(value).__name__}, not a non-empty "
                                     f"object or array"), notes
    if not value:
        return Loaded(None, "empty", f"parsed to a falsy {type(value).__name__}"), notes
    if fmt in ("json", "yaml") and not _is_container(value):
        notes.append("scalar_document")
    return Loaded(value, "ok"), notes
