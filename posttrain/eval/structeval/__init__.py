"""StructEval-T scoring: structured output (JSON, YAML, TOML, XML, CSV) checked for parsing and
for the key paths a task requires, by the rules of the StructEval benchmark
(TIGER-AI-Lab/StructEval, `structeval/eval_engine/{main,eval_nonrenderable,eval_utils}.py`
and `structeval/render_engine/render_utils.py`), as described in
shared/data/structeval_t/README.md. No code was taken from the benchmark.

    score(record, generation)                  # {"render_score", "key_validation_score", "final_score"}
    score(record, generation, corrected=True)  # the same, with the quirks below fixed
    score_example(record, generation)          # ExampleResult: scores plus what was extracted and why
    load_structeval(path); score_records(records, generations, corrected=False)

Rules (the default mode; numbers comparable with the benchmark's table):
  format     task_id[2:4]: 02 CSV, 05 JSON, 10 TOML, 17 XML, 18 YAML (else `output_type`).
  cleaning   "&lt;" / "&gt;" -> "<" / ">"; the exact string "<think>\\n\\n</think>\\n\\n" is
             removed; the text goes through `unicode_escape` decoding (errors ignored).
  extraction the first ``` fence (the header line runs to the first newline after the
             ```; an unclosed fence runs to the end; no newline after the ``` at all:
             no fence), else <|BEGIN_CODE|> ... <|END_CODE|> (case-insensitive, the end
             marker optional), else the whole text; stripped. `<code>` is not recognised.
  render     1 iff the payload loads and the result is truthy: json.loads, yaml.safe_load,
             TOML, xmltodict-style XML (attributes "@a", text "#text", repeated siblings a
             list, a lone child a dict, paths start at the root element), CSV (see Q2).
  key val.   fraction of `raw_output_metric` paths present, 0 when render is 0. Paths: dots
             separate keys (`a.0` is the key "0"), `[i]` indexes a list (0 <= i < len), `*`
             is "some element of a list has the rest", backticks quote a segment with dots,
             empty segments are dropped, `@attr` falls back to `attr` (not the reverse), a
             path that ends is found (existence only), `csv::Name` is one token true iff Name
             is a CSV header cell (exact, at the root of CSV output). `[*]` is taken as `*`
             and a non-integer index never matches (the README does not say; no record
             has either).
  final      round(0.2 * render + 0.8 * key_validation, 2).

Quirks of the reference scorer, reproduced by default and fixed by corrected=True. In the
default mode an example's `notes` name the quirks that touched it (in brackets), so their
effect can be counted; for Q7, Q8, Q10 the note means "a miss the corrected rule would find".
  Q1 [unicode_escape_changed_text] unicode_escape turns `\\n`, `\\"` inside JSON/YAML strings
     into real characters, so valid JSON with escapes no longer parses (render 0), and
     garbles non-ASCII (UTF-8 bytes read as Latin-1: "é" -> "Ã©", so a non-ASCII key no
     longer matches). Corrected: the raw text is parsed first; the benchmark's cleaning (html
     unescape, and escape decoding that keeps non-ASCII) is only a fallback for a payload
     that does not parse as is [cleaning_fallback], so double-escaped answers still load.
  Q2 [csv_not_read] CSV is "parsed" without being read (a csv.DictReader is always truthy):
     any non-empty payload renders, prose included. Corrected: csv.reader must give a header
     and a data row, every row as wide as the header, no repeated column; header cells are
     compared after strip (the reference compares " age" with "age").
  Q3 [malformed_path] an unclosed `[` in a path raises in the reference (its run stops).
     Here it never crashes: by default the path counts as not found; corrected leaves it out
     of the denominator, a defect of the record and not of the output.
  Q4 [html_unescape] "&lt;" / "&gt;" are unescaped in the whole answer, so XML holding
     `a &lt; b` breaks. Corrected: the raw payload is tried first (Q1).
  Q5 [think_block_kept] only an empty think block is removed; a fence inside a real <think>
     block is the "first fence". Corrected: think blocks are removed [think_removed]
     (posttrain.rewards.structured.strip_think; an unclosed one drops the rest).
  Q6 [scalar_document] a top-level scalar renders: YAML reads any prose as a string, JSON
     reads `"text"` or `3`. Corrected: JSON / YAML must be a non-empty object or array.
  Q7 [xml_list_or_attribute] xmltodict's list/dict ambiguity: a lone child is a dict, so `*`
     and `[0]` fail on it; repeated children are a list, so a key after them fails
     (`galaxies.galaxy.name` with two <galaxy>, record 051706). Corrected, XML only: a lone
     element is a one-element list, and a key on a list of elements matches if some element
     has the rest of the path.
  Q8 [yaml_nonstring_key] YAML 1.1 plain keys yes/no/on/off/true, numbers, dates, null load
     as non-strings, so no path token matches them. Corrected: such plain keys are text.
  Q9 [unmatchable_path] paths no output can satisfy (`csv::` paths on XML output: records
     021739, 021745; a non-`csv::` path on CSV output) count as misses. Corrected: left out
     of the denominator.
  Q10 [xml_list_or_attribute] `@id` accepts a child <id>, but `id` does not accept an
     attribute id="..", though both are fair ways to carry a field in XML. Corrected, XML
     only: a key not found as a child is looked up as an attribute.
  The corrected denominator is the paths left (Q3, Q9). If none is left (021745: every path
  is `csv::` on XML output) only the render can be checked: key validation is 1.0 when the
  output renders, so final = render [no_checkable_paths]; 0.0 would cap the record at 0.2
  for every model alike.

Departures from the reference in both modes (safety; none should touch a real model answer):
a generation over 2,000,000 chars or a payload over 100,000 chars renders 0 ("too_large",
"payload_too_large"); YAML loads with the limits of posttrain.rewards.structured (at most
100 aliases, 100,000 nodes counted with aliases expanded, depth 64; a repeated key keeps the
last value, as yaml.safe_load does); TOML is read with tomllib (TOML 1.0; the reference uses
the `toml` package, which disagrees on rare documents); XML is read with pyexpat as
xmltodict does (entity references in text are dropped, never expanded; external entities are
never loaded; on an expat older than 2.4, which lacks billion-laughs protection for attribute
values, any entity declaration is refused as "unsafe").

The rules live with the code that applies them:
  parse   cleaning, `extract_code`, and `load`: each format parsed the reference's way or
          the corrected way (YAML loaders, `xml_to_dict`, the CSV header)
  paths   `tokenize` and `path_found`: the path syntax and the walk through a parsed payload
This module holds the records (`Task`, `task_of`, `load_structeval`), `key_validation` and
the scores; the public parsers and path functions are re-exported here.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from posttrain.eval.structeval.parse import (  # noqa: F401  (the parsers are public here too)
    _EMPTY_THINK, CsvHeader, Loaded, _gentle_clean, extract_code, load, reference_clean, xml_to_dict)
from posttrain.eval.structeval.paths import MalformedPath, _found, path_found, tokenize  # noqa: F401
from posttrain.rewards.structured import strip_think

MAX_GENERATION_CHARS = 2_000_000
PAYLOAD_PREVIEW_CHARS = 500
FORMAT_CODES = {"02": "csv", "05": "json", "10": "toml", "17": "xml", "18": "yaml"}
FORMATS = tuple(FORMAT_CODES.values())

# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Task:
    """What scoring needs from a record."""

    task_id: str
    task_name: str
    fmt: str
    """csv, json, toml, xml or yaml."""
    task_type: str
    """generation (input_type Text), conversion, or unknown."""
    paths: tuple[str, ...]


def task_of(record: Any, where: str = "record") -> Task:
    """Validate a StructEval record; a ValueError names the record and the field to fix."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a StructEval task record (a dict), got {type(record).__name__}")
    tid = record.get("task_id")
    tid = tid if isinstance(tid, str) else ("" if tid is None else str(tid))
    where = f"{where} (task_id {tid!r})" if tid else where
    fmt = FORMAT_CODES.get(tid[2:4])
    if fmt is None:
        out = record.get("output_type")
        fmt = out.strip().lower() if isinstance(out, str) else None
        if fmt not in FORMATS:
            raise ValueError(f"{where}: unknown output format: task_id[2:4] is not one of 02, 05, 10, "
                             f"17, 18 and output_type is {out!r}; StructEval-T scores only CSV, JSON, "
                             f"TOML, XML and YAML")
    paths = record.get("raw_output_metric")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"{where}: raw_output_metric must be a non-empty list of path strings, "
                         f"got {paths!r:.80}")
    inp = record.get("input_type")
    if isinstance(inp, str) and inp.strip():
        task_type = "generation" if inp.strip().lower() == "text" else "conversion"
    elif tid[:2].isdigit():
        task_type = "generation" if tid[:2] == "00" else "conversion"
    else:
        task_type = "unknown"
    name = record.get("task_name")
    return Task(tid, name if isinstance(name, str) else "", fmt, task_type, tuple(paths))


def load_structeval(path: str | Path) -> list[dict]:
    """The records of a StructEval file (a JSON array, as dataset/nonrenderable.json; JSONL
    also read), each validated by `task_of`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"StructEval data file {p} not found; give the benchmark's "
                                f"dataset/nonrenderable.json (a JSON array of task records)")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"{p}: neither a JSON array nor JSONL ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON array of task records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        task_of(rec, where=f"{p} row {i}")
    return data


# --------------------------------------------------------------------------- key validation


def _has_nonstring_key(value: Any, budget: int = 100_000) -> bool:
    stack, seen = [value], 0
    while stack and seen < budget:
        v = stack.pop()
        seen += 1
        if isinstance(v, dict):
            if any(not isinstance(k, str) for k in v):
                return True
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def key_validation(value: Any, task: Task, corrected: bool, payload: str = ""
                   ) -> tuple[float, list[str], list[str], list[str]]:
    """(score, missing paths, excluded paths, notes) for a rendered payload's parsed value."""
    missing, excluded, notes = [], [], []
    lenient = corrected and task.fmt == "xml"
    text_keys = None  # default YAML: the same payload with plain keys read as text, for notes
    odd_keys = not corrected and task.fmt == "yaml" and _has_nonstring_key(value)
    for p in task.paths:
        try:
            tokens = tokenize(p)
        except MalformedPath:
            (excluded if corrected else missing).append(p)
            notes.append("malformed_path")
            continue
        is_csv_path = tokens[:1] and tokens[0][0] == "csv"
        if bool(is_csv_path) != (task.fmt == "csv"):  # Q9: no output of this format can match
            (excluded if corrected else missing).append(p)
            notes.append("unmatchable_path")
            continue
        if _found(value, tokens, lenient):
            continue
        missing.append(p)
        if corrected:
            continue
        if task.fmt == "xml" and _found(value, tokens, True):
            notes.append("xml_list_or_attribute")
        elif odd_keys:
            if text_keys is None:
                text_keys, _ = load(payload, "yaml", corrected=True)
            if text_keys.reason == "ok" and _found(text_keys.value, tokens):
                notes.append("yaml_nonstring_key")
    total = len(task.paths) - len(excluded)
    if total == 0:  # corrected only: nothing left to check but the render
        return 1.0, missing, excluded, notes + ["no_checkable_paths"]
    return (total - len(missing)) / total, missing, excluded, notes


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ExampleResult:
    """One generation scored, with what was extracted and why it scored as it did."""

    task_id: str
    task_name: str
    output_type: str
    task_type: str
    render_score: int
    key_validation_score: float
    final_score: float
    reason: str
    """ok, missing_paths, no_generation, too_large, no_payload, payload_too_large,
    parse_error, empty, too_deep, too_many_nodes, unsafe, no_checkable_paths."""
    detail: str
    extracted_from: str
    """fence, markers, whole, or "" when nothing was extracted."""
    payload: str
    """The extracted payload, cut to PAYLOAD_PREVIEW_CHARS."""
    missing_paths: tuple[str, ...]
    excluded_paths: tuple[str, ...]
    notes: tuple[str, ...]
    """Quirks that fired (default mode) or corrections that applied (corrected mode)."""

    def scores(self) -> dict[str, Any]:
        return {"render_score": self.render_score, "key_validation_score": self.key_validation_score,
                "final_score": self.final_score}


def _final(render: int, kv: float) -> float:
    return round(0.2 * render + 0.8 * kv, 2)


def score_example(record: Mapping, generation: Any, corrected: bool = False) -> ExampleResult:
    """Score one generation for one record (module docstring); raises only for a bad record."""
    task = task_of(record)

    def result(render=0, kv=0.0, reason="ok", detail="", where="", payload="", missing=(),
               excluded=(), notes=()):
        return ExampleResult(task.task_id, task.task_name, task.fmt, task.task_type, render, kv,
                             _final(render, kv), reason, detail, where, payload[:PAYLOAD_PREVIEW_CHARS],
                             tuple(missing), tuple(excluded), tuple(dict.fromkeys(notes)))

    if not isinstance(generation, str):
        return result(reason="no_generation", detail=f"generation is {type(generation).__name__}")
    if len(generation) > MAX_GENERATION_CHARS:
        return result(reason="too_large", detail=f"{len(generation)} chars > {MAX_GENERATION_CHARS}")
    notes: list[str] = []
    if corrected:
        text = strip_think(generation)
        attempts = [text] + [t for t in (_gentle_clean(text),) if t != text]
        if text != generation:
            notes.append("think_removed")
    else:
        text = generation.replace("&lt;", "<").replace("&gt;", ">")
        notes += ["html_unescape"] if text != generation else []
        text = text.replace(_EMPTY_THINK, "")
        attempts = [reference_clean(generation)]
        notes += ["unicode_escape_changed_text"] if attempts[0] != text else []
        notes += ["think_block_kept"] if "<think>" in attempts[0] else []
    first = None
    for n, text in enumerate(attempts):
        payload, where = extract_code(text)
        if not payload:
            loaded, more = Loaded(None, "no_payload", "nothing extracted"), []
        else:
            loaded, more = load(payload, task.fmt, corrected)
        if first is None:
            first = (payload, where, loaded, more)
        if loaded.reason == "ok":
            notes += more + (["cleaning_fallback"] if n else [])
            break
    else:
        payload, where, loaded, more = first
        return result(reason=loaded.reason, detail=loaded.detail, where=where, payload=payload,
                      notes=notes + more)
    kv, missing, excluded, path_notes = key_validation(loaded.value, task, corrected, payload)
    if not missing:
        reason, detail = "ok", ""
    else:
        reason = "missing_paths"
        detail = (f"{len(missing)} of {len(task.paths) - len(excluded)} paths missing: "
                  + ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    if "no_checkable_paths" in path_notes:
        reason, detail = "no_checkable_paths", "every path is malformed or unmatchable: render only"
    return result(1, kv, reason, detail, where, payload, missing, excluded, notes + path_notes)


def score(record: Mapping, generation: Any, corrected: bool = False) -> dict[str, Any]:
    """{"render_score": 0|1, "key_validation_score": [0, 1], "final_score": [0, 1]} for one
    generation; the benchmark's rules by default, its quirks fixed with corrected=True."""
    return score_example(record, generation, corrected).scores()


def _summary(results: Sequence[ExampleResult]) -> dict[str, Any]:
    n = len(results)
    return {"final_score": sum(r.final_score for r in results) / n,
            "render_score": sum(r.render_score for r in results) / n,
            "key_validation_score": sum(r.key_validation_score for r in results) / n, "n": n}


def score_records(records: Sequence[Mapping], generations: Sequence[Any] | Mapping[str, Any],
                  corrected: bool = False) -> dict[str, Any]:
    """Score one generation per record. `generations` is aligned with `records`, or maps
    task_id -> generation. Returns {"metrics": ..., "records": ...}:

    metrics   final_score, render_score, key_validation_score (means over records, in [0, 1];
              the benchmark's table shows them x 100), n_records, mode ("reference" or
              "corrected"), by_format / by_task_type / by_task_name (the same means and n per
              group), notes (how many records each quirk note fired on).
    records   per record: the fields of ExampleResult.
    """
    if not records:
        raise ValueError("score_records: no records to score")
    if isinstance(generations, Mapping):
        ids = [task_of(r, where=f"records[{i}]").task_id for i, r in enumerate(records)]
        absent = [t for t in ids if t not in generations]
        if absent:
            raise ValueError(f"score_records: no generation for task_id {absent[0]!r} "
                             f"({len(absent)} of {len(ids)} missing)")
        generations = [generations[t] for t in ids]
    elif isinstance(generations, str) or len(generations) != len(records):
        raise ValueError(f"score_records: {len(records)} records but "
                         f"{'a single string' if isinstance(generations, str) else len(generations)} "
                         f"generations; give one generation per record, in order")
    results = []
    for i, (rec, gen) in enumerate(zip(records, generations)):
        task_of(rec, where=f"records[{i}]")  # a bad row is named by its position
        results.append(score_example(rec, gen, corrected))
    groups: dict[str, dict[str, list[ExampleResult]]] = {
        "by_format": defaultdict(list), "by_task_type": defaultdict(list), "by_task_name": defaultdict(list)}
    for r in results:
        groups["by_format"][r.output_type].append(r)
        groups["by_task_type"][r.task_type].append(r)
        groups["by_task_name"][r.task_name or "unknown"].append(r)
    notes = Counter(note for r in results for note in r.notes)
    metrics = {**{k: v for k, v in _summary(results).items() if k != "n"}, "n_records": len(results),
               "mode": "corrected" if corrected else "reference",
               **{g: {k: _summary(v) for k, v in sorted(d.items())} for g, d in groups.items()},
               "notes": dict(sorted(notes.items()))}
    return {"metrics": metrics, "records": [asdict(r) for r in results]}
