"""Built-in tasks: determinism, prefix stability, train/held-out disjointness, and every
reference completion parsing with its format's own parser to the declared paths and types."""

import ast
import csv
import datetime as dt
import io
import json
import operator
import re
import xml.etree.ElementTree as ET
from fractions import Fraction

import pytest
import yaml

from posttrain.data import tasks
from posttrain.data.tasks import FORMATS, TASKS, generate, register_task, tokenizer_corpus

try:
    import tomllib  # Python 3.11+; on 3.10 the TOML checks are skipped
except ImportError:  # pragma: no cover
    tomllib = None
TESTED_FORMATS = [f for f in FORMATS if f != "toml" or tomllib is not None]


def dicts(examples):
    return [e.to_dict() for e in examples]


def user_text(ex):
    return "\n".join(m["content"] for m in ex.messages if m["role"] == "user")


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("task,opts", [("structured", {}), ("structured", {"nested": True}),
                                       ("arithmetic", {}), ("arithmetic", {"think": True})])
def test_deterministic_and_prefix_stable(task, opts):
    a = generate(task, "train", 60, seed=3, **opts)
    assert dicts(a) == dicts(generate(task, "train", 60, seed=3, **opts))
    assert dicts(a[:17]) == dicts(generate(task, "train", 17, seed=3, **opts))
    assert dicts(a) != dicts(generate(task, "train", 60, seed=4, **opts))
    assert [e.id for e in a[:2]] == [f"{task}-train-00000", f"{task}-train-00001"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_train_and_heldout_never_share_a_prompt(task):
    train = generate(task, "train", 1500, seed=0)
    # Another seed for heldout: disjointness must not rest on the two splits sharing a seed.
    heldout = generate(task, "heldout", 1500, seed=1)
    tr, he = {user_text(e) for e in train}, {user_text(e) for e in heldout}
    assert len(tr) == len(train) and len(he) == len(heldout)  # no duplicates within a split
    assert not tr & he
    assert all(tasks._split_of(p) == "train" for p in tr)
    assert all(tasks._split_of(p) == "heldout" for p in he)


def test_split_owner_is_a_fixed_half_of_the_hash_space():
    owners = [tasks._split_of(f"prompt {i}") for i in range(2000)]
    assert 0.45 < owners.count("train") / len(owners) < 0.55


def test_errors_name_the_known_choices():
    with pytest.raises(ValueError, match="known tasks: arithmetic, structured"):
        generate("sorting", "train", 3)
    with pytest.raises(ValueError, match="train, heldout"):
        generate("arithmetic", "test", 3)
    with pytest.raises(ValueError, match="known options: think"):
        generate("arithmetic", "train", 3, thinking=True)
    with pytest.raises(ValueError, match="json, yaml, csv, toml, xml"):
        generate("structured", "train", 3, formats=["json", "ini"])
    with pytest.raises(ValueError, match="already registered"):
        register_task("arithmetic", {})(lambda rng: None)


def test_formats_option_restricts_and_accepts_a_single_name():
    assert {e.meta["format"] for e in generate("structured", "train", 30, formats=["toml", "csv"])} \
        == {"toml", "csv"}
    assert {e.meta["format"] for e in generate("structured", "train", 10, formats="yaml")} == {"yaml"}
    assert {e.meta["format"] for e in generate("structured", "train", 200)} == set(FORMATS)


# --------------------------------------------------------------------------- structured


def parse(fmt, text):
    """Parse a payload into (value at path -> parsed object) using the format's parser."""
    if fmt == "json":
        return json.loads(text)
    if fmt == "yaml":
        return yaml.safe_load(text)
    if fmt == "toml":
        return tomllib.loads(text)
    if fmt == "csv":
        header, row, *rest = list(csv.reader(io.StringIO(text)))
        assert not rest and len(header) == len(row)
        return dict(zip(header, row))
    root = ET.fromstring(text)
    assert root.tag == "record"
    return {child.tag: child.text or "" for child in root}


def resolve(obj, path):
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        obj = obj[int(part[1:-1])] if part.startswith("[") else obj[part]
    return obj


def from_text(kind, s):
    """How a checker reads a CSV/XML cell by its declared type."""
    return {"int": int, "float": float, "string": str, "date": str,
            "bool": {"true": True, "false": False}.__getitem__}[kind](s)


def check_typed(kind, got, want):
    if kind == "bool":
        assert got is want
    elif kind == "int":
        assert type(got) is int and got == want
    elif kind == "float":
        assert type(got) is float and got == want
    elif kind == "date":  # JSON has no date type: an ISO string; YAML and TOML: a date
        assert (got.isoformat() if isinstance(got, dt.date) else got) == want
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", want)
    elif kind == "string":
        assert type(got) is str and got == want
    elif kind == "list":
        assert isinstance(got, list) and len(got) == len(want)
    elif kind == "object":
        assert isinstance(got, dict) and set(got) == set(want)
    else:
        raise AssertionError(kind)


def check_reference(ex):
    meta = ex.meta
    assert ex.answer == ex.completion and not ex.completion.startswith("```")
    parsed = parse(meta["format"], ex.completion)
    assert set(meta["required"]) == set(meta["types"]) == set(meta["expected"])
    top = {p for p in meta["required"] if "." not in p and "[" not in p}
    assert set(parsed) == top  # nothing missing, nothing extra
    for path in meta["required"]:
        kind, want, got = meta["types"][path], meta["expected"][path], resolve(parsed, path)
        if meta["format"] in ("csv", "xml"):
            assert isinstance(got, str)
            got = from_text(kind, got)
        check_typed(kind, got, want)
        if kind != "object":  # every leaf and list is listed in the prompt (objects by leaf)
            assert f" {path.split('[')[0]}: " in user_text(ex)


@pytest.mark.parametrize("fmt", TESTED_FORMATS)
@pytest.mark.parametrize("nested", [False, True])
def test_every_reference_parses_with_required_paths_and_types(fmt, nested):
    examples = generate("structured", "train", 150, formats=[fmt], nested=nested) + \
        generate("structured", "heldout", 50, formats=[fmt], nested=nested)
    for ex in examples:
        assert ex.meta["format"] == fmt and ex.meta["task"] == "structured"
        assert 3 <= len([p for p in ex.meta["required"] if "." not in p and "[" not in p]) <= 6
        check_reference(ex)
    containers = {t for ex in examples for t in ex.meta["types"].values()} & {"object", "list"}
    assert containers == ({"object", "list"} if nested and fmt not in ("csv", "xml") else set())


def test_tricky_strings_stay_strings():
    """Digit strings, yes/no/null/true and version numbers must not turn into other types."""
    seen = set()
    for ex in generate("structured", "train", 600, formats=TESTED_FORMATS):
        check_reference(ex)
        seen |= {v for v in ex.meta["expected"].values() if v in ("yes", "null", "true")}
    assert seen == {"yes", "null", "true"}


# --------------------------------------------------------------------------- arithmetic

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}


def evaluate(expr):
    def ev(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        assert isinstance(node, ast.Constant) and type(node.value) is int
        return Fraction(node.value)
    return ev(ast.parse(expr, mode="eval").body)


@pytest.mark.parametrize("think", [False, True])
def test_arithmetic_answer_equals_the_expression(think):
    examples = generate("arithmetic", "train", 300, think=think) + \
        generate("arithmetic", "heldout", 100, think=think)
    for ex in examples:
        value = evaluate(ex.meta["expr"])
        assert value.denominator == 1 and value >= 0
        assert ex.answer == str(value.numerator)
        assert 1 <= len(ex.meta["ops"]) <= 3
        assert sorted(ex.meta["ops"]) == sorted(re.findall(r"[-+*/]", ex.meta["expr"]))
        steps = ex.completion
        if think:
            m = re.fullmatch(r"<think>\n(.+)\n</think>\nThe answer is (\d+)\.\n#### (\d+)",
                             steps, re.S)
            assert m and m[2] == m[3] == ex.answer
        else:
            assert re.fullmatch(r"(.+\n)+#### \d+", steps) and steps.endswith(f"\n#### {ex.answer}")
            assert "<think>" not in steps
    assert {e.meta["template"] for e in examples} == set(tasks.ARITHMETIC_TEMPLATES)


def test_arithmetic_hand_checked():
    ex = generate("arithmetic", "train", 1)[0]
    assert ex.to_dict()["messages"][0]["content"].endswith("'#### <number>'.")
    assert ex.completion.splitlines()[-1] == f"#### {ex.answer}"


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_corpus_covers_tasks_formats_and_splits():
    texts = tokenizer_corpus(n_per_task=400, seed=0)
    assert len(texts) == 800 and texts == tokenizer_corpus(n_per_task=400, seed=0)
    joined = "\n".join(texts)
    for word in ("JSON", "YAML", "CSV", "TOML", "XML", "<think>", "####", "address"):
        assert word in joined
    heldout = generate("arithmetic", "heldout", 5)
    assert any(user_text(heldout[0]) in t for t in texts)
