"""Preference pairs: a prompt with a chosen and a rejected reply.

    load_pairs([SourceConfig(kind="jsonl", path="prefs.jsonl")])
    generate_pairs("structured", "train", 500, seed=0)

A file or dataset row has `prompt` (a string, one user turn, or a list of messages),
`chosen` and `rejected` (each a string, one assistant turn, or a list of messages), and
optionally `system` and `id`; `columns` maps these names to the row's columns, as for
SFT sources (posttrain.data.sources). A bad row raises DataError naming file:row and field.

Built-in pairs (kind builtin, path structured | arithmetic): the chosen reply is the task's
reference answer; the rejected one is that answer corrupted in one way a model gets wrong:

    structured  a required field dropped, a value of the wrong type, a key repeated, or
                the syntax broken (an unclosed bracket, tag or quote)
    arithmetic  the final answer (and the line computing it) off by a small amount

so a policy that prefers the chosen reply prefers well-formed, complete, correct output.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Any

from posttrain.config import SourceConfig
from posttrain.data import tasks
from posttrain.data.example import validate_messages
from posttrain.data.mix import mix
from posttrain.data.sources import DataError
from posttrain.data import sources as _src

PAIR_FIELDS = ("prompt", "chosen", "rejected", "system", "id")


@dataclass
class Pair:
    prompt: list[dict[str, str]]
    """The conversation up to the reply (ends with a user turn)."""
    chosen: list[dict[str, str]]
    """The preferred reply's turns (usually one assistant message)."""
    rejected: list[dict[str, str]]
    id: str = ""


# --------------------------------------------------------------------------- built-in pairs


def _corrupt_structured(payload: str, meta: dict, rng: random.Random) -> str:
    fmt = meta["format"]
    lines = payload.split("\n")
    kinds = ["drop", "type", "repeat", "syntax"]
    rng.shuffle(kinds)
    for kind in kinds:
        out = _apply(kind, fmt, lines, rng)
        if out is not None and out != payload:
            return out
    return payload[: max(1, len(payload) // 2)]  # truncation always differs


def _field_lines(fmt: str, lines: list[str]) -> list[int]:
    """Indices of lines that hold one simple field (key and scalar value)."""
    pat = {"json": r'^\s+"[^"]+": [^\[{]', "yaml": r"^[A-Za-z_]\w*: \S", "toml": r"^[A-Za-z_]\w* = [^\[{]",
           "xml": r"^\s+<(\w+)>[^<]*</\1>$"}.get(fmt)
    if pat is None:
        return []
    return [i for i, ln in enumerate(lines) if re.match(pat, ln)]


def _apply(kind: str, fmt: str, lines: list[str], rng: random.Random) -> str | None:
    if fmt == "csv":
        header, *rows = lines
        cols = header.split(",")
        if kind == "drop" and len(cols) > 1:
            return "\n".join([",".join(cols[:-1])] + rows)  # header short by one: rows too long
        if kind == "repeat":
            return "\n".join([header + "," + cols[0]] + rows)
        if kind == "syntax":
            return "\n".join(lines[:1])  # no data row
        return None
    idx = _field_lines(fmt, lines)
    if not idx:
        return None
    i = rng.choice(idx)
    if kind == "drop":
        out = lines[:i] + lines[i + 1:]
        if fmt == "json" and i > 0 and out[i - 1].endswith(",") and (i >= len(out) or out[i].strip().startswith("}")):
            out[i - 1] = out[i - 1][:-1]
        return "\n".join(out)
    if kind == "repeat":
        return "\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
    if kind == "type":
        ln = lines[i]
        if fmt == "json":
            ln = re.sub(r': "([^"]*)"', r": [\1]", ln, count=1) if '": "' in ln else re.sub(r": (.+?)(,?)$", r': "\1"\2', ln)
        elif fmt in ("yaml", "toml"):
            sep = ": " if fmt == "yaml" else " = "
            key, _, val = ln.partition(sep)
            ln = key + sep + ("[" + val + "]" if not val.startswith('"') else "12345")
        else:
            ln = re.sub(r">([^<]*)<", ">[\\1]<", ln)
        return "\n".join(lines[:i] + [ln] + lines[i + 1:])
    if kind == "syntax":
        if fmt == "json":
            return "\n".join(lines[:-1])  # the closing brace is gone
        if fmt == "xml":
            return "\n".join(lines[:i] + [re.sub(r"</(\w+)>$", r"</\1x>", lines[i])] + lines[i + 1:])
        if fmt == "toml":
            return "\n".join(lines[:i] + [lines[i] + ' "'] + lines[i + 1:])
        if fmt == "yaml":
            return "\n".join(lines[:i] + [lines[i] + ": :"] + lines[i + 1:])
    return None


def _corrupt_arithmetic(reply: str, answer: str, rng: random.Random) -> str:
    wrong = str(int(answer) + rng.choice([-3, -2, -1, 1, 2, 3, 10]))
    if wrong.startswith("-"):
        wrong = str(int(answer) + 1)
    return re.sub(rf"\b{re.escape(answer)}\b", wrong, reply)


def generate_pairs(task: str, split: str, n: int, seed: int = 0, **options: Any) -> list[Pair]:
    """n pairs from a built-in task: the reference reply against a corrupted one."""
    rng = random.Random(f"pairs/{task}/{split}/{seed}")
    out = []
    for ex in tasks.generate(task, split, n, seed, **options):
        reply = ex.completion or ""
        if task == "structured":
            bad = _corrupt_structured(reply, ex.meta, rng)
        elif task == "arithmetic":
            bad = _corrupt_arithmetic(reply, ex.answer, rng)
        else:
            raise DataError(f"no built-in pairs for task {task!r}; known: structured, arithmetic")
        out.append(Pair(ex.prompt_messages, [{"role": "assistant", "content": reply}],
                        [{"role": "assistant", "content": bad}], ex.id))
    return out


# --------------------------------------------------------------------------- files


def _turns(value: Any, where: str, field: str, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    why = validate_messages(value)
    if why is not None:
        raise DataError(f"{where}: field '{field}' should be a string or a message list: {why}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def row_to_pair(row: Any, where: str, columns: dict[str, str], default_id: str) -> Pair:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    col = {f: columns.get(f, f) for f in PAIR_FIELDS}
    for f in ("prompt", "chosen", "rejected"):
        if row.get(col[f]) is None:
            raise DataError(f"{where}: no '{col[f]}' column for the {f} (row has: {', '.join(row) or 'none'}); "
                            f"set columns.{f} to the column that holds it")
    prompt = _turns(row[col["prompt"]], where, "prompt", "user")
    system = row.get(col["system"])
    if isinstance(system, str) and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": system})
    chosen = _turns(row[col["chosen"]], where, "chosen", "assistant")
    rejected = _turns(row[col["rejected"]], where, "rejected", "assistant")
    # a chosen / rejected given as a whole conversation repeats the prompt: keep the reply
    if len(chosen) > 1 and chosen[:len(prompt)] == prompt:
        chosen = chosen[len(prompt):]
    if len(rejected) > 1 and rejected[:len(prompt)] == prompt:
        rejected = rejected[len(prompt):]
    for f, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise DataError(f"{where}: the {f} reply must end with an assistant turn")
    rid = row.get(col["id"])
    return Pair(prompt, chosen, rejected, default_id if rid is None else str(rid))


def load_pair_source(src: SourceConfig, seed: int = 0, *, key: str = "the source") -> list[Pair]:
    if src.kind == "builtin":
        return generate_pairs(src.path, src.split, src.n if src.n is not None else 1000, seed, **src.options)
    bad = sorted(set(src.columns) - set(PAIR_FIELDS))
    if bad:
        raise DataError(f"{key}: unknown column mapping for {', '.join(bad)}; "
                        f"pair sources map {', '.join(PAIR_FIELDS)}")
    readers = {"jsonl": _src._read_jsonl, "json": _src._read_json, "parquet": _src._read_parquet,
               "hf": _src._read_hf}
    if src.kind not in readers:
        raise DataError(f"{key}: unknown source kind {src.kind!r}; use builtin, {', '.join(readers)}")
    name = os.path.basename(os.path.normpath(src.path))
    out: list[Pair] = []
    for label, row in readers[src.kind](src):
        out.append(row_to_pair(row, f"{src.path}:{label}", src.columns, f"{name}:{label}"))
        if src.n is not None and len(out) >= src.n:
            break
    if not out:
        raise DataError(f"{src.path}: no rows")
    return out


def load_pairs(srcs: list[SourceConfig], seed: int = 0, *, key: str = "data.train") -> list[Pair]:
    if not srcs:
        raise DataError(f"{key}: no sources given; add at least one")
    loaded = [load_pair_source(s, seed, key=f"{key}[{i}]") for i, s in enumerate(srcs)]
    return loaded[0] if len(loaded) == 1 else mix(loaded, [s.weight for s in srcs], seed=seed)
