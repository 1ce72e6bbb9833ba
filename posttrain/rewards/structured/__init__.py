"""Structured-output rewards for JSON, YAML, TOML, CSV and XML, and the helpers the
evaluation harness reuses: `extract_payload`, `parse_payload`, `load_payload`,
`resolve_all` / `resolve_path`, `check_type`, `value_matches`.

Registered names: `{fmt}_{kind}` for fmt in json, yaml, toml, csv, xml and kind in
format, schema, type, value, exact; `structured_{kind}` reads the format from
example["format"] (missing or unknown: 0.0, reason "no_format"). The example carries
`required` (paths), `types` (path -> type name) and `expected` (path -> value), as the
built-in structured task (posttrain.data.tasks) writes them.

`value` scores the expected leaves (containers in `expected` are expanded into their
leaves; explicit leaf paths win), `exact` compares every expected path, containers
structurally (same keys, same length). A reward whose example gives nothing to check
scores 0.0 with reason "no_schema" / "no_types" / "no_expected": a constant 1.0 would
silently duplicate the format reward. `schema` falls back to the paths of `types`, then
of `expected`, when `required` is absent.

The rules live with the code that applies them:
  extract  a completion -> the payload text (think blocks, code fences, JSON spans)
  limits   the size, depth, alias and node limits
  parse    the safe parsers, `parse_payload`, `load_payload` (extract + parse, cached)
  paths    path syntax, `resolve_all` / `resolve_path`, XML and CSV views
  checks   type names, `check_type`, `value_matches`, `expected_leaves`
This module holds the rewards and registers them on import; every helper is
re-exported here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from posttrain.data.formats import FORMATS
from posttrain.rewards.base import RewardResult, register_reward

# Everything the single-file module defined stays importable from here: names unused
# below are re-exports, private ones included (tests and posttrain.eval use some).
from posttrain.rewards.structured.checks import (  # noqa: F401
    TEXTUAL, TYPE_NAMES, _DATE_TEXT, _DATETIME_TEXT, _FLOAT_TEXT, _INT_TEXT, _NATIVE_CHECKS,
    _TEXT_CHECKS, _TYPE_ALIASES, _is_num, _leaf_matches, _text_number, check_type,
    expected_leaves, is_iso_date, normalize_type, numbers_close, value_matches)
from posttrain.rewards.structured.extract import (  # noqa: F401
    _ALL_TAGS, _CLOSER, _FENCE_LINE, _FORMAT_TAGS, _JSON_SPECIAL, _JSON_STRING_REST, _LANG_TAG,
    _XML_START, Fence, _fallbacks, _pick_fence, find_fences, json_spans, strip_think)
from posttrain.rewards.structured.limits import (  # noqa: F401
    MAX_COMPLETION_CHARS, MAX_CSV_FIELD_CHARS, MAX_DEPTH, MAX_NODES, MAX_PAYLOAD_CHARS,
    MAX_SPAN_TRIES, MAX_YAML_ALIASES)
from posttrain.rewards.structured.parse import (  # noqa: F401
    _PARSERS, _XML_UNSAFE, CsvTable, LimitedYamlLoader, Parsed, _depth_of, _json_depth_ok,
    _LimitedTreeBuilder, _load_cached, _local, _parse, _parse_csv, _parse_json, _parse_toml,
    _parse_xml, _parse_yaml, _Reject, _short, _show, _unique_keys, extract_payload,
    is_non_empty, load_payload, parse_payload, tomllib)
from posttrain.rewards.structured.paths import (  # noqa: F401
    _PATH_TOKEN, MISSING, _step, _view, _xml_items, _XmlGroup, parse_path, resolve_all,
    resolve_path)

_LimitedYamlLoader = LimitedYamlLoader  # the old private name (posttrain.eval.structeval used it)

# --------------------------------------------------------------------------- rewards


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
