"""Built-in synthetic tasks: seeded, deterministic, with a held-out split that never
shares a prompt with train.

    generate("structured", "train", 1000, seed=0, formats=["json", "yaml"])
    generate("arithmetic", "heldout", 200, think=True)

Tasks (each registered in `TASKS`; options are keyword arguments):

structured  "Convert these fields to JSON / YAML / CSV / TOML / XML". A record of 3-6
            typed fields (string, int, float with 2 decimals, ISO date, bool) is listed in
            the user turn, strings in double quotes, dates bare, dotted names for nested
            fields; the reference reply is the payload itself, no code fence, written by
            posttrain.data.formats (see there for what each format guarantees):
              json  json.dumps(indent=2); dates as "YYYY-MM-DD" strings
              yaml  block style via PyYAML; dates bare (YYYY-MM-DD); strings quoted where
                    a YAML 1.1 or 1.2 reader would take them for something else ("02139",
                    'yes', "1.10")
              toml  own serializer: scalars and arrays first, then one [table] per object
              csv   header row + one data row (csv module, "\\n" line ends); bools
                    true/false, dates YYYY-MM-DD
              xml   <record><field>text</field>...</record>, two-space indent, escaped
            Options: formats (default all five), nested (default False: when True every
            json/yaml/toml record gains an object such as address.city and/or a list
            such as tags[0]; csv and xml records stay flat).
            meta: task, format, required (every path: "name", "address", "address.city",
            "tags", "tags[0]"), types (path -> string|int|float|bool|date|null|list|
            object), expected (path -> JSON-compatible value, dates as strings). In csv
            and xml every value is text; a checker reads it back by the declared type.
arithmetic  GSM8K-style word problems (shopping, travel, sharing, rates, savings) with
            1-3 operations on small numbers and a non-negative integer answer.
            Reference reply, think=False:   "<step>\\n<step>\\n#### 18"
                            think=True:     "<think>\\n<step>\\n<step>\\n</think>\\n"
                                            "The answer is 18.\\n#### 18"
            The system prompt states the expected form. answer = "18";
            meta: task, template, ops (in evaluation order), expr (e.g. "3*4+6"; / is
            exact division).

How train and held-out stay disjoint (for any n, seed or options): each split draws from
its own RNG stream, and a candidate is kept only if the SHA-256 of its user message falls
in that split's half of the hash space (first byte < 128: train, else heldout). A prompt
text therefore belongs to exactly one split. Candidates already emitted in the split are
skipped too, so a split has no duplicate prompts. Generation is sequential, so the
first k of n examples equal generate(n=k) (prefix stability).

The RNG stream is keyed by (task, split, seed, options after defaults are filled), so two
sources that differ only in options draw different items.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from posttrain.data.example import Example
from posttrain.data.formats import FORMATS, SERIALIZERS, _jsonable, _text, record_paths
from posttrain.data.formats import to_csv, to_json, to_toml, to_xml, to_yaml  # noqa: F401

SPLITS = ("train", "heldout")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[..., Example]
    """make(rng, **options) -> one candidate example (id is set by `generate`)."""
    defaults: dict[str, Any]
    """Every option the task accepts, with its default."""
    normalize: Callable[[dict[str, Any]], dict[str, Any]]
    """Checks option values and puts them in a canonical form (raises ValueError)."""


TASKS: dict[str, Task] = {}


def register_task(name: str, defaults: dict[str, Any],
                  normalize: Callable[[dict[str, Any]], dict[str, Any]] = lambda o: o):
    """Decorator adding a candidate generator to `TASKS` under `name`."""
    def deco(fn):
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = Task(name, fn, dict(defaults), normalize)
        return fn
    return deco


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown built-in task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def _split_of(prompt: str) -> str:
    """Which split owns this prompt text: a fixed half of the SHA-256 space each."""
    return "train" if hashlib.sha256(prompt.encode()).digest()[0] < 128 else "heldout"


def generate(task: str, split: str, n: int, seed: int = 0, **options: Any) -> list[Example]:
    """`n` examples of a built-in task for `split` ("train" or "heldout"); deterministic."""
    spec = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"built-in task split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise ValueError(f"task {task!r} has no option(s) {', '.join(unknown)}; "
                         f"known options: {', '.join(sorted(spec.defaults)) or 'none'}")
    opts = spec.normalize({**spec.defaults, **options})
    rng = random.Random(f"{task}|{split}|{seed}|{json.dumps(opts, sort_keys=True)}")
    out: list[Example] = []
    seen: set[str] = set()
    misses = 0
    while len(out) < n:
        ex = spec.make(rng, **opts)
        prompt = "\n".join(m["content"] for m in ex.messages if m["role"] == "user")
        if _split_of(prompt) != split or prompt in seen:
            misses += 1
            if misses > 10_000:  # half the candidates miss by design; this means exhaustion
                raise ValueError(f"task {task!r} ran out of distinct {split} prompts after "
                                 f"{len(out)} examples; ask for fewer")
            continue
        misses = 0
        seen.add(prompt)
        ex.id = f"{task}-{split}-{len(out):05d}"
        out.append(ex)
    return out


# --------------------------------------------------------------------------- vocabulary

_FIRST = ["Alice", "Bob", "Chen", "Dara", "Elif", "Farah", "Gustavo", "Hana", "Ivan",
          "Jonas", "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa",
          "Sven", "Tomas", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
_LAST = ["Moreau", "Okafor", "Lindqvist", "Tanaka", "Silva", "Novak", "Haddad", "Kim",
         "Brennan", "Rossi", "Patel", "Schmidt", "Ito", "Duarte", "Nguyen", "O'Neil"]
_CITIES = ["Paris", "Lagos", "Osaka", "Lima", "Oslo", "Denver", "Cape Town", "Krakow",
           "New York", "Sao Paulo", "Reykjavik", "St. Louis", "Winston-Salem", "Hanoi",
           "Nairobi", "Porto", "Quebec City", "Adelaide"]
_COUNTRIES = ["France", "Nigeria", "Japan", "Peru", "Norway", "USA", "South Africa",
              "Poland", "Brazil", "Iceland", "Vietnam", "Kenya", "Portugal", "Canada"]
_STREETS = ["Elm Street", "Main St.", "Harbor Road", "Rue Verte", "Oak Avenue", "Mill Lane"]
_DOMAINS = ["example.com", "mail.org", "post.net", "inbox.io"]
_PRODUCTS = ["Desk Lamp", "Trail Shoes", "Coffee Grinder", 'Mug "Classic"', "Salt & Pepper Set",
             "Notebook, A5", "Wireless Mouse", "Yoga Mat", "Tea Kettle", "USB-C Cable",
             "Rain Jacket", "<Limited> Poster"]
_COMPANIES = ["Acme Corp", "Smith & Sons", "Blue Fern Ltd", "Northwind", "Kettle, Inc.",
              "Orbit Labs", "Green Valley Farms", "Pixel & Pine"]
_STATUSES = ["active", "pending", "shipped", "on hold", "yes", "no", "true", "null", "n/a"]
_WORDS = ["red", "blue", "green", "sale", "new", "organic", "eco", "vintage", "summer",
          "gift", "bulk", "local", "premium", "basic"]


def _date(rng: random.Random, start: int = 1990, end: int = 2025) -> dt.date:
    return dt.date(start, 1, 1) + dt.timedelta(days=rng.randrange((end - start) * 365))


def _name(rng):
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _email(rng):
    last = rng.choice(_LAST).lower().replace("'", "")
    return f"{rng.choice(_FIRST).lower()}.{last}@{rng.choice(_DOMAINS)}"


# Flat fields: name -> value generator. Values are Python natives (date for dates).
_FIELDS: dict[str, Callable[[random.Random], Any]] = {
    "name": _name,
    "city": lambda r: r.choice(_CITIES),
    "country": lambda r: r.choice(_COUNTRIES),
    "age": lambda r: r.randint(18, 90),
    "price": lambda r: round(r.uniform(0.5, 500), 2),
    "in_stock": lambda r: r.random() < 0.5,
    "released": _date,
    "rating": lambda r: round(r.uniform(1, 5), 2),
    "email": _email,
    "quantity": lambda r: r.randint(0, 500),
    "product": lambda r: r.choice(_PRODUCTS),
    "company": lambda r: r.choice(_COMPANIES),
    "active": lambda r: r.random() < 0.5,
    "joined": lambda r: _date(r, 2005),
    "birthday": lambda r: _date(r, 1950, 2005),
    "score": lambda r: round(r.uniform(0, 100), 2),
    "sku": lambda r: f"{r.choice('ABCDEFGHJK')}{r.choice('LMNPQRSTUV')}-{r.randint(0, 9999):04d}",
    "zip_code": lambda r: f"{r.randint(0, 99999):05d}",  # a string of digits: quoting matters
    "weight_kg": lambda r: round(r.uniform(0.1, 90), 2),
    "verified": lambda r: r.random() < 0.5,
    "year": lambda r: r.randint(1950, 2025),
    "status": lambda r: r.choice(_STATUSES),  # "yes", "null", "true" must stay strings
    "phone": lambda r: f"+1-555-{r.randint(0, 9999):04d}",
    "version": lambda r: f"{r.randint(0, 9)}.{r.randint(0, 20)}",  # "1.10" is not a float
}

# Nested objects: one level deep, scalar members.
_OBJECTS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "address": lambda r: _pick(r, {"street": f"{r.randint(1, 250)} {r.choice(_STREETS)}",
                                   "city": r.choice(_CITIES), "zip_code": _FIELDS["zip_code"](r),
                                   "country": r.choice(_COUNTRIES)}),
    "owner": lambda r: _pick(r, {"name": _name(r), "email": _email(r), "age": r.randint(18, 90)}),
    "dimensions": lambda r: _pick(r, {"width_cm": round(r.uniform(1, 200), 2),
                                      "height_cm": round(r.uniform(1, 200), 2),
                                      "depth_cm": round(r.uniform(1, 200), 2)}),
}

# Lists of scalars.
_LISTS: dict[str, Callable[[random.Random], list[Any]]] = {
    "tags": lambda r: r.sample(_WORDS, r.randint(2, 4)),
    "scores": lambda r: [r.randint(0, 100) for _ in range(r.randint(2, 4))],
    "colors": lambda r: r.sample(_WORDS[:3] + ["black", "white", "orange"], r.randint(2, 3)),
}


def _pick(rng: random.Random, d: dict[str, Any]) -> dict[str, Any]:
    """Keep 2 or more members of `d`, in their original order."""
    keys = sorted(rng.sample(list(d), rng.randint(2, len(d))), key=list(d).index)
    return {k: d[k] for k in keys}


# --------------------------------------------------------------------------- structured

_FORMAT_NAMES = {"json": "JSON", "yaml": "YAML", "csv": "CSV", "toml": "TOML", "xml": "XML"}
_FLAT_ONLY = {"csv", "xml"}

# Checked in order: bool before int (bool is an int subclass).
_TYPE_NAMES = [(bool, "bool"), (int, "int"), (float, "float"), (dt.date, "date"),
               (type(None), "null"), (list, "list"), (dict, "object"), (str, "string")]


def _type_of(v: Any) -> str:
    return next(name for tp, name in _TYPE_NAMES if isinstance(v, tp))


def _literal(v: Any) -> str:
    """How a value is shown in the prompt: strings quoted, dates bare, lists as arrays."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    return _text(v)


_STRUCTURED_SYSTEM = ("You are a precise assistant that outputs only the requested format, "
                      "with no code fences or commentary.")
_STRUCTURED_TEMPLATES = [
    "Convert these fields to {F}:\n{fields}",
    "Write the following record as {F}.\n\n{fields}",
    "Here is some data:\n{fields}\n\nSerialize it as {F}. Output only the {F}.",
    "Produce {a} {F} document with exactly these fields:\n{fields}",
    "Format this record in {F}:\n{fields}",
]
_FORMAT_HINTS = {
    "csv": "Use a header row followed by one data row.",
    "xml": "Use <record> as the root element with one child element per field.",
}


def _normalize_structured(opts: dict[str, Any]) -> dict[str, Any]:
    formats = opts["formats"]
    if isinstance(formats, str):
        formats = [formats]
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"structured: formats must be a non-empty list from "
                         f"{', '.join(FORMATS)}; got {opts['formats']!r}")
    if not isinstance(opts["nested"], bool):
        raise ValueError(f"structured: nested must be true or false, got {opts['nested']!r}")
    return {"formats": formats, "nested": opts["nested"]}


@register_task("structured", {"formats": list(FORMATS), "nested": False}, _normalize_structured)
def make_structured(rng: random.Random, formats: list[str], nested: bool) -> Example:
    fmt = rng.choice(formats)
    n_fields = rng.randint(3, 6)
    record: dict[str, Any] = {}
    extra: list[tuple[str, Any]] = []
    if nested and fmt not in _FLAT_ONLY:
        kind = rng.choice(["object", "list", "both"])
        if kind in ("object", "both"):
            key = rng.choice(list(_OBJECTS))
            extra.append((key, _OBJECTS[key](rng)))
        if kind in ("list", "both"):
            key = rng.choice(list(_LISTS))
            extra.append((key, _LISTS[key](rng)))
    names = rng.sample(list(_FIELDS), max(1, n_fields - len(extra)))
    for name in names:
        record[name] = _FIELDS[name](rng)
    for key, value in extra:  # nested fields go at a random position among the flat ones
        items = list(record.items())
        items.insert(rng.randint(0, len(items)), (key, value))
        record = dict(items)

    F = _FORMAT_NAMES[fmt]
    bullet = rng.choice(["-", "*"])
    shown = [(p, v) for p, v in record_paths(record).items()
             if not isinstance(v, dict) and "[" not in p]  # leaves and whole lists
    fields = "\n".join(f"{bullet} {p}: {_literal(v)}" for p, v in shown)
    user = rng.choice(_STRUCTURED_TEMPLATES).format(
        F=F, a="an" if F[0] in "AEIOUX" else "a", fields=fields)
    hints = [_FORMAT_HINTS[fmt]] if fmt in _FORMAT_HINTS else []
    if any(isinstance(v, dict) for v in record.values()):
        hints.append("Dotted names are fields of a nested object.")
    if hints:
        user += "\n" + " ".join(hints)

    payload = SERIALIZERS[fmt](record)
    paths = record_paths(record)
    meta = {"task": "structured", "format": fmt, "required": list(paths),
            "types": {p: _type_of(v) for p, v in paths.items()},
            "expected": {p: _jsonable(v) for p, v in paths.items()}}
    return Example(messages=[{"role": "system", "content": _STRUCTURED_SYSTEM},
                             {"role": "user", "content": user},
                             {"role": "assistant", "content": payload}],
                   answer=payload, meta=meta)


# --------------------------------------------------------------------------- arithmetic

_ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("book", "books"),
          ("ticket", "tickets"), ("candle", "candles"), ("shirt", "shirts"), ("plant", "plants"),
          ("mug", "mugs"), ("puzzle", "puzzles")]
_VEHICLES = ["train", "bus", "car", "truck", "ferry"]


def _shopping_total(r):
    name, (one, many), (one2, _) = r.choice(_FIRST), r.choice(_ITEMS), r.choice(_ITEMS)
    a, p, q = r.randint(2, 9), r.randint(1, 20), r.randint(1, 30)
    extra = one2 if one2 != one else f"extra {one}"
    article = "an" if extra[0] in "aeiou" else "a"
    return (f"{name} buys {a} {many} at ${p} each and {article} {extra} "
            f"for ${q}. How many dollars does {name} spend in total?",
            [f"{a} {many} cost {a} * {p} = {a * p} dollars.",
             f"Adding the {extra}: {a * p} + {q} = {a * p + q} dollars."],
            f"{a}*{p}+{q}", ["*", "+"], a * p + q)


def _shopping_change(r):
    name, (_, many) = r.choice(_FIRST), r.choice(_ITEMS)
    a, p = r.randint(2, 8), r.randint(2, 15)
    m = a * p + r.randint(0, 40)
    return (f"{name} has ${m}. {name} buys {a} {many} that cost ${p} each. "
            f"How many dollars does {name} have left?",
            [f"The {many} cost {a} * {p} = {a * p} dollars.",
             f"{name} has {m} - {a * p} = {m - a * p} dollars left."],
            f"{m}-{a}*{p}", ["*", "-"], m - a * p)


def _travel_two_legs(r):
    v = r.choice(_VEHICLES)
    s1, t1, s2, t2 = r.randint(3, 12) * 10, r.randint(1, 5), r.randint(2, 9) * 10, r.randint(1, 4)
    return (f"A {v} travels at {s1} km per hour for {t1} hours, then at {s2} km per hour for "
            f"{t2} hours. How many kilometres does it travel in total?",
            [f"First part: {s1} * {t1} = {s1 * t1} km.",
             f"Second part: {s2} * {t2} = {s2 * t2} km.",
             f"Total: {s1 * t1} + {s2 * t2} = {s1 * t1 + s2 * t2} km."],
            f"{s1}*{t1}+{s2}*{t2}", ["*", "*", "+"], s1 * t1 + s2 * t2)


def _travel_time(r):
    s, t = r.randint(8, 30), r.randint(2, 9)
    who = r.choice(["A cyclist rides", "A runner covers", "A boat sails", "A hiker walks"])
    return (f"{who} {s * t} km at a steady {s} km per hour. How many hours does it take?",
            [f"Time is distance divided by speed: {s * t} / {s} = {t} hours."],
            f"{s * t}/{s}", ["/"], t)


def _sharing(r):
    name, (_, many) = r.choice(_FIRST), r.choice(_ITEMS)
    k, each = r.randint(2, 9), r.randint(2, 15)
    return (f"{name} has {k * each} {many} and shares them equally among {k} friends. "
            f"How many {many} does each friend get?",
            [f"Each friend gets {k * each} / {k} = {each} {many}."],
            f"{k * each}/{k}", ["/"], each)


def _sharing_boxes(r):
    b = r.choice([2, 3, 4, 5, 6, 8, 10, 12])
    t, c = r.randint(2, 9), r.randint(6, 24)
    while (t * c) % b:  # retry until the cookies fill whole boxes
        t, c = r.randint(2, 9), r.randint(6, 24)
    return (f"A baker makes {t} trays of {c} cookies and packs them into boxes of {b}. "
            f"How many boxes does the baker fill?",
            [f"There are {t} * {c} = {t * c} cookies.",
             f"They fill {t * c} / {b} = {t * c // b} boxes."],
            f"{t}*{c}/{b}", ["*", "/"], t * c // b)


def _rate_work(r):
    rate, m = r.randint(3, 40), r.randint(2, 15)
    what = r.choice([("printer prints", "pages"), ("machine packs", "bottles"),
                     ("bakery bakes", "loaves"), ("pump moves", "liters")])
    return (f"A {what[0]} {rate} {what[1]} per minute. How many {what[1]} in {m} minutes?",
            [f"In {m} minutes: {rate} * {m} = {rate * m} {what[1]}."],
            f"{rate}*{m}", ["*"], rate * m)


def _rate_fill(r):
    rate, m, have = r.randint(2, 12), r.randint(2, 15), r.randint(0, 60)
    cap = have + rate * m
    return (f"A tank holds {cap} liters and already has {have} liters of water. A hose adds "
            f"{rate} liters per minute. How many minutes until the tank is full?",
            [f"The tank still needs {cap} - {have} = {cap - have} liters.",
             f"At {rate} liters per minute that takes {cap - have} / {rate} = {m} minutes."],
            f"({cap}-{have})/{rate}", ["-", "/"], m)


def _savings(r):
    name, (one, _) = r.choice(_FIRST), r.choice(_ITEMS)
    s, w = r.randint(3, 25), r.randint(2, 12)
    x = r.randint(1, s * w)
    article = "an" if one[0] in "aeiou" else "a"
    return (f"{name} saves ${s} every week for {w} weeks, then spends ${x} on {article} {one}. "
            f"How many dollars does {name} have left?",
            [f"After {w} weeks {name} has {s} * {w} = {s * w} dollars.",
             f"After buying the {one}: {s * w} - {x} = {s * w - x} dollars."],
            f"{s}*{w}-{x}", ["*", "-"], s * w - x)


# Each template: rng -> (question, rationale steps, expr, ops in evaluation order, answer).
ARITHMETIC_TEMPLATES = {
    "shopping_total": _shopping_total, "shopping_change": _shopping_change,
    "travel_two_legs": _travel_two_legs, "travel_time": _travel_time,
    "sharing": _sharing, "sharing_boxes": _sharing_boxes,
    "rate_work": _rate_work, "rate_fill": _rate_fill, "savings": _savings,
}
_ARITH_SYSTEM = ("Solve the math word problem. Reason briefly step by step, then write the "
                 "final answer on its own line as '#### <number>'.")
_ARITH_SYSTEM_THINK = ("Solve the math word problem. Think step by step inside <think> and "
                       "</think>, then write 'The answer is <number>.' and the final answer "
                       "on its own line as '#### <number>'.")


def _normalize_arithmetic(opts: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(opts["think"], bool):
        raise ValueError(f"arithmetic: think must be true or false, got {opts['think']!r}")
    return opts


@register_task("arithmetic", {"think": False}, _normalize_arithmetic)
def make_arithmetic(rng: random.Random, think: bool) -> Example:
    template = rng.choice(list(ARITHMETIC_TEMPLATES))
    question, steps, expr, ops, value = ARITHMETIC_TEMPLATES[template](rng)
    answer = str(value)
    rationale = "\n".join(steps)
    if think:
        reply = f"<think>\n{rationale}\n</think>\nThe answer is {answer}.\n#### {answer}"
    else:
        reply = f"{rationale}\n#### {answer}"
    return Example(messages=[{"role": "system", "content": _ARITH_SYSTEM_THINK if think else _ARITH_SYSTEM},
                             {"role": "user", "content": question},
                             {"role": "assistant", "content": reply}],
                   answer=answer,
                   meta={"task": "arithmetic", "template": template, "ops": ops, "expr": expr})


# --------------------------------------------------------------------------- tokenizer


def tokenizer_corpus(n_per_task: int = 2000, seed: int = 0) -> list[str]:
    """Texts (system + user + assistant) for training the tiny model's tokenizer.

    Covers every task, both splits and each option variant (all formats, nested on and
    off, think on and off), `n_per_task` texts per task in all. Held-out prompts are
    included on purpose: this is only for the vocabulary, never for training a model.
    """
    variants = {"structured": [{"nested": False}, {"nested": True}],
                "arithmetic": [{"think": False}, {"think": True}]}
    texts: list[str] = []
    for task, opts_list in variants.items():
        combos = [(split, opts) for split in SPLITS for opts in opts_list]
        for j, (split, opts) in enumerate(combos):
            k = n_per_task // len(combos) + (1 if j < n_per_task % len(combos) else 0)
            for ex in generate(task, split, k, seed, **opts):
                texts.append("\n".join(m["content"] for m in ex.messages))
    return texts
