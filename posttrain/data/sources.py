"""Load examples from a source: a built-in task, a JSONL / JSON / Parquet file, or an HF dataset.

    load_source(SourceConfig(kind="jsonl", path="data/train.jsonl",
                             columns={"prompt": "question", "completion": "solution"}))

Each row becomes an `Example` by these rules (column names through `src.columns`, which
maps an example field to a column; unmapped fields use their own name):

- `messages` present: a list of {role, content}; used as is. Otherwise
- `prompt` (required): a string (one user turn) or a list of messages; then
- `completion` (optional): a string (one assistant turn) or a list of messages, appended;
- `system` (optional): a string, prepended as a system turn unless one is already first;
- `answer` (optional): any scalar, kept as a string;
- `meta` (optional): an object (or a JSON string holding one);
- `id` (optional): defaults to "<file name>:<row>".

Only `role` and `content` of each message are kept. A row that breaks a rule raises
`DataError` naming the file, the row, the field and the columns the row has:

    train.jsonl:3: no 'prompt' column (row has: question, solution); set
    data.train[0].columns.prompt to the column that holds the prompt

Rows are numbered as a user would look for them: 1-based line numbers in JSONL (blank
lines are skipped but counted), "row i" with a 0-based index in JSON, Parquet and HF
datasets. `src.n` keeps the first n examples.

`src.options` is passed to the built-in task generator, or to `datasets.load_dataset`
for kind hf (e.g. name, data_files, revision); file kinds accept none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from posttrain.config import SourceConfig
from posttrain.data import tasks
from posttrain.data.example import Example, validate_messages
from posttrain.data.mix import mix

FIELDS = ("messages", "prompt", "completion", "answer", "meta", "id", "system")


class DataError(ValueError):
    """A dataset problem a user can fix; the message names the file, row and field."""


def load_source(src: SourceConfig, seed: int = 0, *, key: str | None = None) -> list[Example]:
    """All examples of one source (the first `src.n` for files).

    `key` is where the source sits in the recipe (e.g. "data.train[0]"), used to tell
    the user which setting to change; `load_sources` fills it in.
    """
    where = key or "the source"
    if src.kind == "builtin":
        if src.columns:
            raise DataError(f"{where}: columns apply to file and hf sources, not builtin; "
                            f"remove them")
        return tasks.generate(src.path, src.split, src.n if src.n is not None else 1000,
                              seed, **src.options)
    bad = sorted(set(src.columns) - set(FIELDS))
    if bad:
        raise DataError(f"{where}: unknown column mapping for {', '.join(bad)}; "
                        f"columns maps one of {', '.join(FIELDS)} to a column name")
    if src.options and src.kind != "hf":
        raise DataError(f"{where}: options are used only by builtin and hf sources, "
                        f"not {src.kind}; remove them")
    if src.n is not None and src.n < 0:
        raise DataError(f"{where}: n must be non-negative, got {src.n}")
    readers = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet, "hf": _read_hf}
    if src.kind not in readers:
        raise DataError(f"{where}: unknown source kind {src.kind!r}; "
                        f"use builtin, {', '.join(readers)}")
    name = os.path.basename(os.path.normpath(src.path))
    out: list[Example] = []
    rows = readers[src.kind](src) if src.n != 0 else ()
    for label, row in rows:
        out.append(row_to_example(row, f"{src.path}:{label}", src.columns,
                                  default_id=f"{name}:{label}", key=key))
        if src.n is not None and len(out) >= src.n:
            break  # before the reader parses the next row, so later bad rows are not seen
    if not out and src.n != 0:
        raise DataError(f"{src.path}: no rows; check the path (and split {src.split!r} "
                        f"for an HF dataset)")
    return out


def load_sources(srcs: list[SourceConfig], seed: int = 0, *, key: str = "data.train") -> list[Example]:
    """Load each source and mix them by weight (`mix.mix`); one source is returned as is."""
    if not srcs:
        raise ValueError(f"{key}: no sources given; add at least one")
    loaded = [load_source(s, seed, key=f"{key}[{i}]") for i, s in enumerate(srcs)]
    if len(loaded) == 1:
        return loaded[0]
    return mix(loaded, [s.weight for s in srcs], seed=seed)


# --------------------------------------------------------------------------- readers
# Each yields (row label, row dict) lazily, so src.n can stop early on big files.


def _missing(path: str) -> DataError:
    return DataError(f"{path}: file not found; check the source's path "
                     f"(relative paths are read from {os.getcwd()})")


def _read_jsonl(src: SourceConfig) -> Iterable[tuple[str, dict]]:
    p = Path(src.path)
    if not p.is_file():
        raise _missing(src.path)
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # so an error's column is on this line
            except json.JSONDecodeError as e:
                raise DataError(f"{src.path}:{lineno}: invalid JSON ({e.msg} at column "
                                f"{e.colno}); each line must be one JSON object") from None
            yield str(lineno), row


def _read_json(src: SourceConfig) -> Iterable[tuple[str, dict]]:
    p = Path(src.path)
    if not p.is_file():
        raise _missing(src.path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{src.path}: invalid JSON ({e.msg} at line {e.lineno}, column "
                        f"{e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{src.path}: expected a list of objects or {{\"data\": [...]}}, "
                        f"got {type(data).__name__}; for one object per line use kind: jsonl")
    for i, row in enumerate(data):
        yield f"row {i}", row


def _read_parquet(src: SourceConfig) -> Iterable[tuple[str, dict]]:
    import pyarrow.parquet as pq

    if not Path(src.path).exists():
        raise _missing(src.path)
    try:
        pf = pq.ParquetFile(src.path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise DataError(f"{src.path}: not a readable Parquet file ({e})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"row {i}", row
            i += 1


def _read_hf(src: SourceConfig) -> Iterable[tuple[str, dict]]:
    import datasets

    p = Path(src.path)
    saved = p.is_dir() and any((p / f).exists() for f in
                               ("dataset_info.json", "state.json", "dataset_dict.json"))
    try:
        if saved:  # written by save_to_disk
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise DataError(f"{src.path}: no split {src.split!r}; it has "
                                    f"{', '.join(ds)}; set the source's split")
                ds = ds[src.split]
        else:
            ds = datasets.load_dataset(src.path, split=src.split, **src.options)
    except DataError:
        raise
    except Exception as e:  # hub, network and builder errors come in many types
        raise DataError(f"{src.path}: could not load the dataset (split {src.split!r}): "
                        f"{type(e).__name__}: {e}") from None
    if src.n is not None:
        ds = ds.select(range(min(src.n, len(ds))))
    for i, row in enumerate(ds):
        yield f"row {i}", row


# --------------------------------------------------------------------------- rows


def row_to_example(row: Any, where: str, columns: dict[str, str], default_id: str,
                   key: str | None = None) -> Example:
    """One row -> Example by the rules in the module docstring; `where` is "file:row"."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    col = {f: columns.get(f, f) for f in FIELDS}
    has = ", ".join(row) or "none"

    def fix(field: str, what: str) -> str:
        setting = f"{key}.columns.{field}" if key else f"columns.{field} in the source"
        return f"set {setting} to the column that holds {what}"

    def get(field: str) -> Any:
        return row.get(col[field])

    def bad(field: str, why: str) -> DataError:
        return DataError(f"{where}: field '{field}' (column '{col[field]}') {why}")

    if get("messages") is not None:
        messages = _messages(get("messages"), bad, "messages")
    elif get("prompt") is not None:
        prompt = get("prompt")
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _messages(prompt, bad, "prompt")
        completion = get("completion")
        if isinstance(completion, str):
            messages.append({"role": "assistant", "content": completion})
        elif completion is not None:
            messages += _messages(completion, bad, "completion")
    else:
        raise DataError(f"{where}: no '{col['messages']}' or '{col['prompt']}' column "
                        f"(row has: {has}); {fix('prompt', 'the prompt')} "
                        f"(or columns.messages for chat rows)")

    system = get("system")
    if system is not None:
        if not isinstance(system, str):
            raise bad("system", f"should be a string, got {type(system).__name__}")
        if messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})

    answer = get("answer")
    if isinstance(answer, (dict, list)):
        raise bad("answer", f"should be a scalar (text or number), got {type(answer).__name__}; "
                            f"{fix('answer', 'the reference answer')}")
    meta = get("meta")
    if isinstance(meta, str):  # datasets often store objects as JSON text
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            pass
    if meta is not None and not isinstance(meta, dict):
        raise bad("meta", f"should be an object, got {type(meta).__name__}")
    ex_id = get("id")
    return Example(messages=messages, answer=None if answer is None else str(answer),
                   meta=meta or {}, id=default_id if ex_id is None else str(ex_id))


def _messages(value: Any, bad, field: str) -> list[dict[str, str]]:
    """A validated copy of a message list, keeping role and content only."""
    why = validate_messages(value)
    if why is not None:
        raise bad(field, f"is not a valid message list: {why}")
    return [{"role": m["role"], "content": m["content"]} for m in value]
