"""Recipe files: YAML in, typed dataclasses out, dotted overrides, and the reverse.

The generic machinery behind `posttrain.config` (which holds the recipe dataclasses and
re-exports everything here): unknown keys and wrong types fail with a `ConfigError`
naming the key and, for a misspelling, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A recipe problem a user can fix; the message names the key and what to do."""


def load_recipe(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Read a YAML recipe (optional), apply `key.sub=value` overrides, build `cls`."""
    raw: dict[str, Any] = {}
    where = "recipe"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise ConfigError(f"recipe file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for ov in overrides:
        _check_override_key(cls, ov)
        apply_override(raw, ov)
    return from_dict(cls, raw, where=where)


def _check_override_key(cls: type, override: str) -> None:
    """Reject an override whose dotted key does not exist, naming the override itself."""
    key = override.partition("=")[0].strip()
    tp, prefix = cls, ""
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return  # inside a dict / list value: checked when the recipe is built
        fields = {f.name: f for f in dataclasses.fields(tp)}
        if part not in fields:
            raise ConfigError(f"override {override!r}: unknown key '{prefix}{part}'"
                              f"{_suggest(part, fields, prefix)}")
        tp, prefix = typing.get_type_hints(tp)[part], f"{prefix}{part}."


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set a dotted key in a nested dict: `train.lr=3e-4` (value parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not key=value (e.g. train.lr=3e-4)")
    key, _, text = override.partition("=")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, where: str = "recipe", prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'} should be a mapping, "
                          f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{full}'{_suggest(key, fields, prefix)}")
        kwargs[key] = _coerce(hints[key], value, where, full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def _suggest(key: str, fields: dict, prefix: str) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return f"; valid keys: {', '.join(prefix + k for k in fields)}"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    """Check `value` against annotation `tp` (converting int -> float, list -> tuple)."""
    origin = get_origin(tp)
    bad = ConfigError(f"{where}: '{key}' should be {_type_name(tp)}, got {value!r} "
                      f"({type(value).__name__})")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key + ".")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(arg, value, where, key)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = get_args(tp)
        return [_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_coerce(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = get_args(tp)
        return {_coerce(kt, k, where, key): _coerce(vt, v, where, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-safe data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def save_recipe(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def recipe_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts."""
    keys = sorted(set(old) | set(new))
    changed = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += recipe_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            changed.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return changed


def warn_if_recipe_changed(recipe: Any, saved: Path) -> None:
    """On --resume, say which settings differ from the run being continued."""
    if not saved.is_file():
        return
    changed = recipe_changes(yaml.safe_load(saved.read_text()) or {}, to_dict(recipe))
    if changed:
        logging.getLogger("posttrain").warning(
            "--resume with a recipe that differs from %s: %s", saved, "; ".join(changed))
