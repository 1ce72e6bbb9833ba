"""Structured-output rewards: extraction, safe parsing, paths, hand-worked fractions, the
built-in task's reference answers, adversarial payloads stopped at a named limit, and fuzzing."""

import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.data.formats import FORMATS, SERIALIZERS, _jsonable, record_paths
from posttrain.data.tasks import _type_of, generate
from posttrain.rewards import REWARDS, RewardSet, get_reward
from posttrain.rewards import structured as S

KINDS = ("format", "schema", "type", "value", "exact")


def score_all(completion, example, fmt=None):
    """Every kind, called directly (no wrapper), as {kind: RewardResult}."""
    return {k: S.KINDS[k](completion, example, fmt=fmt) for k in KINDS}


def example_for(record, fmt):
    paths = record_paths(record)
    return {"format": fmt, "required": list(paths),
            "types": {p: _type_of(v) for p, v in paths.items()},
            "expected": {p: _jsonable(v) for p, v in paths.items()}}


PERSON = {"name": "Ada", "age": 36, "score": 9.5}
PERSON_EX = example_for(PERSON, "json")
PERSON_JSON = json.dumps(PERSON)


# --------------------------------------------------------------------------- registration


def test_every_name_is_registered_with_docs():
    for prefix in (*FORMATS, "structured"):
        for kind in KINDS:
            spec = REWARDS.get(f"{prefix}_{kind}")
            assert spec.checks.endswith(".") and spec.limits, spec.name


# --------------------------------------------------------------------------- extraction

REALISTIC = [
    PERSON_JSON,
    f"```json\n{PERSON_JSON}\n```",
    f"```\n{PERSON_JSON}\n```",
    f"Sure! Here is the JSON you asked for:\n\n```json\n{json.dumps(PERSON, indent=2)}\n```\n\nLet me know!",
    f"Here it is: {PERSON_JSON} Hope this helps.",
    f"<think>The user wants JSON. Maybe {{\"name\": \"Bob\"}}?</think>\n{PERSON_JSON}",
    f"reasoning started by the chat template...</think>\n\n{PERSON_JSON}",
    f"```json\n{PERSON_JSON}",  # unterminated fence: takes the rest
    f"```json\n{PERSON_JSON}```\nDone.",  # closing marks on the payload's last line
    f"```json {PERSON_JSON}```",  # one-line fence
    f"~~~json\n{PERSON_JSON}\n~~~",
    f"1. The record:\n    ```json\n    {PERSON_JSON}\n    ```",  # indented fence (dedented)
    f"```yaml\nname: Bob\n```\n```json\n{PERSON_JSON}\n```",  # another format's fence is skipped
    f'```json\n{{"name": "draft"}}\n```\nFixed:\n```json\n{PERSON_JSON}\n```',  # the last one wins
    f"```\n{PERSON_JSON}\n```\nUsage:\n```python\nimport json\n```",  # untagged beats python
]


@pytest.mark.parametrize("completion", REALISTIC)
def test_realistic_json_outputs_score_full(completion):
    for kind, res in score_all(completion, PERSON_EX).items():
        assert res.score == 1.0, (kind, res)


def test_think_blocks():
    assert S.extract_payload('<think>{"a": 1}</think>', "json") is None  # nothing outside
    assert S.extract_payload('{"a": 2}\n<think>\n{"a": 1}', "json") == '{"a": 2}'  # unclosed
    assert S.load_payload('<think>unfinished {"a": 1}', "json").reason == "no_payload"
    assert S.extract_payload('<think>a</think>{"a": 1}<think>b</think>', "json") == '{"a": 1}'


def test_fence_preference():
    text = "```\nuntagged\n```\n```yaml\na: 1\n```\n```python\nx = 1\n```"
    assert S.extract_payload(text, "yaml") == "a: 1"
    assert S.extract_payload(text, "toml") == "untagged"  # untagged before other tags
    assert S.extract_payload("```python\nx = 1\n```", "toml") == "x = 1"
    # only a fence tagged with another format: the whole text is tried (and fails)
    assert S.load_payload("```json\n{\"a\": 1}\n```", "yaml").reason == "parse_error"


def test_json_span_is_string_aware():
    text = 'I mean "{x}" and [1 oops; the answer: {"a": "}{[", "b": [1, {"c": 2}]} ok'
    assert S.extract_payload(text, "json") == '{"a": "}{[", "b": [1, {"c": 2}]}'
    assert S.json_spans('x {"a": "]"} y [1] z') == [(2, 12), (15, 18)]


def test_prose_around_xml_and_csv_is_trimmed():
    res = S.format_reward("Here is the XML:\n<record><a>1</a></record>\nThanks!", {}, fmt="xml")
    assert res.score == 1.0
    text = "Here is the CSV:\n\nname,age\nAda,36\n\nLet me know!"
    assert S.exact_reward(text, {"expected": {"name": "Ada", "age": 36}}, fmt="csv").score == 1.0


_WRAPPED = ["Here is the {F}:\n\n```{fmt}\n{answer}\n```\n\nLet me know if you need changes.",
            "<think>\nThe user wants {F}. I'll list the fields.\n</think>\n{answer}",
            "```\n{answer}\n```"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("wrapper", _WRAPPED)
def test_wrapped_reference_answers_score_full(fmt, wrapper):
    for e in generate("structured", "heldout", 10, formats=[fmt], nested=True):
        text = wrapper.format(F=fmt.upper(), fmt=fmt, answer=e.answer)
        for kind, res in score_all(text, {"answer": e.answer, **e.meta}).items():
            assert res.score == 1.0, (kind, res, text)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("fmt, text, reason", [
    ("json", '"just a string"', "empty"),
    ("json", "{}", "empty"),
    ("yaml", "Just some prose, which YAML reads as a string.", "empty"),
    ("csv", "name,age", "empty"),  # a header and no data row
    ("csv", "Hello there.", "empty"),
    ("csv", "name,age\nAda,36,extra", "parse_error"),  # a row wider than the header
    ("csv", "a,a\n1,2", "parse_error"),
    ("xml", "<record/>", "empty"),
    ("xml", "<a><b></a>", "parse_error"),
    ("toml", "a = ", "parse_error"),
    ("json", "", "no_payload"),
    ("json", "```json\n```", "parse_error"),  # an empty fence is skipped; the whole text fails
])
def test_format_failures_have_reasons(fmt, text, reason):
    res = S.format_reward(text, {}, fmt=fmt)
    assert (res.score, res.reason) == (0.0, reason)


def test_parse_payload_values():
    table, err = S.parse_payload('name, note\nAda,"a, b"\nBob,', "csv")
    assert err is None and table.header == ["name", "note"] and table[1] == {"name": "Bob", "note": ""}
    assert S.parse_payload('a\n""\n\n', "csv")[0] == [{"a": ""}]  # one column: "" is a value
    assert S.parse_payload("d = 2020-01-02", "toml") == ({"d": dt.date(2020, 1, 2)}, None)
    assert S.parse_payload("[1, 2", "json")[1].startswith("parse_error")
    assert S.parse_payload("x", "nope")[1].startswith("parse_error")


# --------------------------------------------------------------------------- paths


def test_resolve_paths_native():
    v = {"a": {"b": [{"c": 1}, {"d": 2}, {"c": 3}]}, "@id": "x"}
    assert S.resolve_all(v, "a.b[0].c") == [1]
    assert S.resolve_all(v, "a.b.*.c") == [1, 3] == S.resolve_all(v, "a.b[*].c")
    assert S.resolve_all(v, "a.*") == [v["a"]["b"]]  # * over an object's values
    assert S.resolve_all(v, "@id") == ["x"]  # a JSON key, not an attribute
    for bad in ("a..b", "a[x]", "a.b[1]c", "", "a.b[-1]", "a.b[3]"):
        assert S.resolve_all(v, bad) == [] and S.resolve_path(v, bad) is S.MISSING


def test_resolve_paths_xml_and_csv():
    xml = ('<order xmlns="urn:x"><item id="1"><n>A</n></item><item id="2"><n>B</n></item>'
           '<total currency="EUR">3.50</total><tags><item>a</item></tags></order>')
    root, err = S.parse_payload(xml, "xml")
    assert err is None
    assert S.resolve_all(root, "item[1].@id") == ["2"]
    assert S.resolve_all(root, "item.*.@id") == ["1", "2"]
    assert S.resolve_all(root, "item.@id") == []  # item is a list here
    assert S.resolve_all(root, "total.@currency") == ["EUR"]
    assert S.resolve_path(root, "total[0]").text == "3.50"  # a single child is a list of one
    assert S.resolve_path(root, "tags[0]").text == "a"  # <item> children: to_xml's list form
    assert S.check_type(S.resolve_path(root, "item"), "list", textual=True)
    table, _ = S.parse_payload("name,address.city\nAda,Oslo\nBob,Lima", "csv")
    assert S.resolve_all(table, "name") == ["Ada"]  # first data row
    assert S.resolve_all(table, "[1].name") == ["Bob"] and S.resolve_all(table, "*.name") == ["Ada", "Bob"]
    assert S.resolve_all(table, "address.city") == ["Oslo"]  # a dotted column name


def test_to_xml_of_a_nested_record_scores_full():
    record = {"name": "x", "address": {"city": "Oslo", "zip": "0123"}, "tags": ["a", "b"],
              "one": ["z"], "items": [{"id": 1, "ok": True}, {"id": 2, "ok": False}],
              "price": 2.5, "day": dt.date(2020, 1, 2), "none": None}
    ex = example_for(record, "xml")
    for kind, res in score_all(SERIALIZERS["xml"](record), ex).items():
        assert res.score == 1.0, (kind, res)


# --------------------------------------------------------------------------- hand-worked fractions


def test_schema_fraction():
    ex = {"required": ["name", "age", "address.city"]}
    res = S.schema_reward('{"name": "Ada", "age": 3, "address": {}}', ex, fmt="json")
    assert res.score == pytest.approx(2 / 3) and res.reason == "missing_paths"
    assert res.detail == "address.city"
    csv_res = S.schema_reward("name,age\nAda,3", ex, fmt="csv")
    assert csv_res.score == pytest.approx(2 / 3)
    ex_xml = {"required": ["item.@id", "item[1]", "item[0].@sku", "total"]}  # 2 of 4
    assert S.schema_reward('<o><item id="1"/><total>1</total></o>', ex_xml, fmt="xml").score == 0.5
    wild = {"required": ["tags.*.name", "tags.*.size"]}  # present if any element has it
    assert S.schema_reward('{"tags": [{"name": "a"}, {"x": 1}]}', wild, fmt="json").score == 0.5


def test_type_fraction_native():
    text = '{"a": 1, "b": "x", "c": 1.5, "d": true, "e": 2, "f": "2024-02-29", "g": null}'
    types = {"a": "int", "b": "int", "c": "float", "d": "int", "e": "float", "f": "date",
             "g": "null", "h": "string"}
    # right: a, c, e (an int is a float), f, g; wrong: b, d (bool is not an int), h (missing)
    assert S.type_reward(text, {"types": types}, fmt="json").score == pytest.approx(5 / 8)
    yaml_text = "d: 2020-01-02\ns: '2020-01-02'\nt: 2020-01-02 10:00:00\nn: 2020-02-30x"
    types = {"d": "date", "s": "date", "t": "date", "n": "date"}
    assert S.type_reward(yaml_text, {"types": types}, fmt="yaml").score == pytest.approx(3 / 4)
    aliases = {"a": "integer", "c": "number", "d": "boolean", "b": "weird"}
    assert S.type_reward(text, {"types": aliases}, fmt="json").score == pytest.approx(3 / 4)


def test_type_fraction_text():
    csv_text = "i,f,b,d,n,s,bad_i,bad_d\n-12,3.,TRUE,2024-01-31,,hi,1.0,2024-13-01"
    types = {"i": "int", "f": "float", "b": "bool", "d": "date", "n": "null", "s": "string",
             "bad_i": "int", "bad_d": "date"}
    assert S.type_reward(csv_text, {"types": types}, fmt="csv").score == pytest.approx(6 / 8)
    xml_text = "<r><i> 7 </i><o><x>1</x></o><l><item>1</item></l><e/></r>"
    types = {"i": "int", "o": "object", "l": "list", "e": "null", "o.x": "bool"}
    assert S.type_reward(xml_text, {"types": types}, fmt="xml").score == pytest.approx(4 / 5)


def test_value_fraction_and_exact():
    ex = {"expected": {"a": 1.0, "b": "x", "c": 1000000, "d": "2020-01-02", "t": ["p", "q"]}}
    # a within 1e-6 relative; b after strip; c: ints compare exactly; d: a YAML date;
    # t expands to t[0], t[1] of which t[1] is wrong: 4 of 6 leaves
    yaml_text = "a: 1.0000005\nb: ' x '\nc: 1000001\nd: 2020-01-02\nt: [p, z]"
    res = S.value_reward(yaml_text, ex, fmt="yaml")
    assert res.score == pytest.approx(4 / 6) and res.reason == "wrong_values"
    assert S.exact_reward(yaml_text, ex, fmt="yaml").score == 0.0
    good = "a: 1.0000005\nb: x\nc: 1000000\nd: 2020-01-02\nt: [p, q]"
    assert S.value_reward(good, ex, fmt="yaml").score == 1.0
    assert S.exact_reward(good, ex, fmt="yaml").score == 1.0
    assert S.value_reward("a: 1.00001", {"expected": {"a": 1.0}}, fmt="yaml").score == 0.0
    # csv / xml text read back by the expected value's type
    ex2 = {"expected": {"n": 2.5, "k": 3, "ok": False, "z": None, "s": "02139"}}
    assert S.exact_reward("n,k,ok,z,s\n2.50,3,False,,02139", ex2, fmt="csv").score == 1.0
    assert S.value_reward("<r><n>2.5</n><k>3.0</k><ok>no</ok><z/><s>2139</s></r>", ex2,
                          fmt="xml").score == pytest.approx(3 / 5)


def test_exact_compares_containers_structurally():
    ex = {"expected": {"address": {"city": "Oslo"}}}
    assert S.value_reward('{"address": {"city": "Oslo", "x": 1}}', ex, fmt="json").score == 1.0
    assert S.exact_reward('{"address": {"city": "Oslo", "x": 1}}', ex, fmt="json").score == 0.0


@pytest.mark.parametrize("kind, example, reason", [
    ("schema", {}, "no_schema"),
    ("schema", {"required": []}, "no_schema"),
    ("schema", {"required": 5}, "bad_example"),
    ("type", {"required": ["a"]}, "no_types"),
    ("value", {"types": {"a": "int"}}, "no_expected"),
    ("exact", {"expected": {}}, "no_expected"),
])
def test_nothing_to_check_scores_zero(kind, example, reason):
    res = S.KINDS[kind]('{"a": 1}', example, fmt="json")
    assert (res.score, res.reason) == (0.0, reason)


def test_schema_falls_back_to_types_then_expected():
    assert S.schema_reward('{"a": 1}', {"types": {"a": "int", "b": "int"}}, fmt="json").score == 0.5
    assert S.schema_reward('{"a": 1}', {"expected": {"a": 1}}, fmt="json").score == 1.0


@pytest.mark.parametrize("fmt", [None, "", "docx", 3, ["json"]])
def test_structured_dispatch_without_a_known_format(fmt):
    for kind in KINDS:
        res = get_reward(f"structured_{kind}").evaluate(PERSON_JSON, {**PERSON_EX, "format": fmt})
        assert (res.score, res.reason) == (0.0, "no_format")


def test_structured_dispatches_on_format():
    ex = {**PERSON_EX, "format": "YML"}
    yaml_text = "name: Ada\nage: 36\nscore: 9.5"
    assert get_reward("structured_exact")(yaml_text, ex) == 1.0
    assert get_reward("json_format")(yaml_text, ex) == 0.0  # per-format names ignore example["format"]


# --------------------------------------------------------------------------- the built-in task


@pytest.mark.parametrize("fmt", FORMATS)
def test_builtin_reference_answers_score_full_through_the_wrapper(fmt):
    examples = [e for nested in (False, True)
                for e in generate("structured", "train", 200, formats=[fmt], nested=nested)]
    rs = RewardSet({k: f"structured_{k}" for k in KINDS})
    batch = rs.evaluate([e.answer for e in examples], [{"answer": e.answer, **e.meta} for e in examples])
    assert not batch.failures and not batch.tags
    assert all(s == 1.0 for row in batch.scores for s in row)


# --------------------------------------------------------------------------- adversarial

_LOL = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")])
_XML_LOL = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
            + "".join(f' <!ENTITY lol{i} "{("&lol" + str(i - 1 if i > 1 else "") + ";") * 10}">\n'
                      for i in range(1, 10))
            + "]>\n<lolz>&lol9;</lolz>")
_XXE = '<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<r><a>&x;</a></r>'

_DEEP = f"deeper than {S.MAX_DEPTH}"
_PAYLOAD_CAP = f"> {S.MAX_PAYLOAD_CHARS}"
_COMPLETION_CAP = f"> {S.MAX_COMPLETION_CHARS}"
_FIELD_CAP = f"a field over {S.MAX_CSV_FIELD_CHARS} chars"
_UNSAFE = "DOCTYPE / ENTITY declarations are not allowed"
_DIGITS = "Exceeds the limit (4300 digits)"  # Python's int() digit limit, not ours

# (format, completion, the score every kind must give or None, the format reward's reason,
#  a fragment of its detail naming the limit that stopped the work)
ADVERSARIAL = [
    ("json", '{"x": 1e999, "y": -1e999}', None, "ok", ""),
    ("json", '{"x": ' + "9" * 10_000 + "}", None, "parse_error", _DIGITS),
    ("json", "[" * 100_000 + "]" * 100_000, 0.0, "payload_too_large", _PAYLOAD_CAP),
    ("json", "[" * 50_000 + "]" * 50_000, 0.0, "too_deep", _DEEP),   # exactly at the payload cap
    ("json", "{" * 150_000, 0.0, "payload_too_large", _PAYLOAD_CAP),
    ("json", "Answer: {" + "[]" * 60_000, 0.0, "empty", ""),          # the first span, [], parses
    ("json", "Answer: " + "[1,] " * 19_000, 0.0, "parse_error", ""),  # 19,000 spans, none parses
    ("json", '"' + '\\"' * 60_000, 0.0, "payload_too_large", _PAYLOAD_CAP),
    ("json", "```\n" * 40_000, 0.0, "payload_too_large", _PAYLOAD_CAP),
    ("json", "<think>" * 25_000, 0.0, "no_payload", ""),
    ("json", "x" * 10_000_000, 0.0, "too_large", _COMPLETION_CAP),
    ("json", '{"a": "' + "x" * 150_000 + '"}', 0.0, "payload_too_large", _PAYLOAD_CAP),
    ("yaml", _LOL, 0.0, "too_many_nodes", f"more than {S.MAX_NODES} nodes"),
    ("yaml", "\n".join(f"k{i}: &a{i} [1]" for i in range(200)) + "\n"
     + "\n".join(f"r{i}: *a{i}" for i in range(200)), 0.0,
     "too_many_nodes", f"more than {S.MAX_YAML_ALIASES} aliases"),  # a bomb of anchors
    ("yaml", "a: &a [*a]", 0.0, "parse_error", "recursive alias"),
    ("yaml", "[" * 60_000, 0.0, "too_deep", _DEEP),
    ("yaml", "- " * 30_000 + "x", 0.0, "too_deep", _DEEP),
    ("yaml", "a: !!python/object/apply:os.system ['echo hi']", 0.0, "parse_error", "ConstructorError"),
    ("yaml", "x" * 10_000_000, 0.0, "too_large", _COMPLETION_CAP),
    ("xml", _XML_LOL, 0.0, "unsafe", _UNSAFE),
    ("xml", _XXE, 0.0, "unsafe", _UNSAFE),
    ("xml", "<a>" * 60_000, 0.0, "payload_too_large", _PAYLOAD_CAP),
    ("xml", "<a>" * 30_000, 0.0, "too_deep", _DEEP),
    ("xml", "<r>" + "<i/>" * 30_000 + "</r>", None, "payload_too_large", _PAYLOAD_CAP),
    ("xml", "<r>" + "<i/>" * 24_000 + "</r>", None, "ok", ""),
    ("xml", "<r>&undefined;</r>", 0.0, "parse_error", "undefined entity"),
    ("csv", "a,b\n" + "x" * 20_000 + ",1", 0.0, "payload_too_large", _FIELD_CAP),
    ("csv", ",".join(f"c{i}" for i in range(20_000)) + "\n" + "1," * 19_999 + "1", None,
     "payload_too_large", _PAYLOAD_CAP),
    ("csv", '"' * 99_999, 0.0, "payload_too_large", _FIELD_CAP),
    ("toml", "a = " + "[" * 1000 + "]" * 1000, 0.0, "too_deep", "ran out of recursion"),
    ("toml", "a = " + "[" * 50 + "]" * 50 + "\nb = " + "[" * 65 + "]" * 65, 0.0, "too_deep", _DEEP),
    ("toml", "x = " + "9" * 10_000, 0.0, "parse_error", _DIGITS),
    ("toml", "a.b.c.d = 1\n" * 5000, 0.0, "parse_error", "Cannot overwrite a value"),
]


@pytest.fixture
def parser_calls(monkeypatch):
    """The length of every text handed to a parser (json.loads, the YAML loader, ...)."""
    seen = []
    for fmt, parse in list(S._PARSERS.items()):
        def counted(text, _parse=parse):
            seen.append(len(text))
            return _parse(text)
        monkeypatch.setitem(S._PARSERS, fmt, counted)
    return seen


@pytest.mark.parametrize("fmt, text, want, reason, detail", ADVERSARIAL,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(ADVERSARIAL)])
def test_adversarial_payloads_stop_at_a_limit(fmt, text, want, reason, detail, parser_calls):
    """No wall clock (it fails on a loaded machine): the work is bounded by the limit that
    fires, named in the reason and detail, and no parser ever sees more than
    MAX_PAYLOAD_CHARS, nor more than 1 + MAX_SPAN_TRIES candidates per completion."""
    ex = {"required": ["a", "x"], "types": {"a": "int", "x": "float"}, "expected": {"a": 1, "x": 2.0}}
    S._load_cached.cache_clear()
    results = score_all(text, ex, fmt=fmt)
    assert (results["format"].reason, detail in results["format"].detail) == (reason, True), results["format"]
    assert all(n <= S.MAX_PAYLOAD_CHARS for n in parser_calls), max(parser_calls)
    assert len(parser_calls) <= 1 + S.MAX_SPAN_TRIES  # one parse shared by the five kinds (cached)
    for kind, res in results.items():
        assert 0.0 <= res.score <= 1.0, (kind, res)
        if want is not None:
            assert res.score == want, (kind, res)
    wrapped = get_reward(f"{fmt}_format").evaluate(text, ex)  # in the worker: a timeout would say so
    assert wrapped.reason == reason, wrapped


def test_rejections_name_the_limit():
    assert S.format_reward(_LOL, {}, fmt="yaml").reason == "too_many_nodes"
    assert S.format_reward(_XML_LOL, {}, fmt="xml").reason == "unsafe"
    assert S.format_reward(_XXE, {}, fmt="xml").reason == "unsafe"
    assert S.format_reward("[" * 1000 + "]" * 1000, {}, fmt="json").reason == "too_deep"
    assert S.format_reward("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 80)), {},
                           fmt="yaml").reason == "too_deep"
    assert S.format_reward("x" * 10_000_000, {}, fmt="json").reason == "too_large"
    assert get_reward("json_format").evaluate("x" * 10_000_000).reason == "too_large"
    deep = '{"a": ' * 64 + "1" + "}" * 64  # exactly at the limit: fine
    assert S.format_reward(deep, {}, fmt="json").score == 1.0
    assert S.format_reward("[" * 65 + "]" * 65, {}, fmt="json").reason == "too_deep"


def test_direct_and_wrapped_calls_agree():
    for text in (PERSON_JSON, '{"name": "Ada", "age": "36"}', "nope"):
        for kind in KINDS:
            direct = S.KINDS[kind](text, PERSON_EX, fmt="json")
            wrapped = get_reward(f"json_{kind}").evaluate(text, PERSON_EX)
            assert (direct.score, direct.reason) == (wrapped.score, wrapped.reason)


# --------------------------------------------------------------------------- fuzzing

_ALPHABETS = {
    "json": '{}[]":,.0123456789eE+-\\ truefalsnu\n',
    "yaml": "abc:- &*![]{}'\"|>#\n 0123456789.",
    "xml": "<>/=\"'&;!?-[]abcitem@ \n",
    "csv": 'ab,"\n\r 01.5-',
    "toml": 'ab=[]{}"\'.,\n 0123456789-:T',
}
_WRAPPERS = ["{}", "```{fmt}\n{}\n```", "Here:\n```\n{}", "<think>x</think>{}", "{}</think>{}"]
_FUZZ_EXAMPLE = {"required": ["a", "a.b", "a[0]", "*.b", "item.@id"],
                 "types": {"a": "int", "b": "list", "a.b": "date", "c": "null"},
                 "expected": {"a": 1, "b": [1, {"c": None}], "c": "x", "d": True}}


_KEY = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(lambda k: k != "item")
_TEXT = st.text(alphabet="abcXYZ019 .,:;-_'\"&<>#{}[]!?/\\", max_size=12)


def _records(fmt):
    """Random records the format's serializer can write (csv flat, toml without None)."""
    scalar = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False),
                       st.booleans(), _TEXT, st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31)),
                       *([] if fmt == "toml" else [st.none()]))
    if fmt == "csv":
        return st.dictionaries(_KEY, scalar, min_size=1, max_size=6)
    value = st.one_of(scalar, st.lists(scalar, min_size=1, max_size=3),
                      st.dictionaries(_KEY, scalar, min_size=1, max_size=3))
    return st.dictionaries(_KEY, value, min_size=1, max_size=6)


def _mutated(fmt):
    """A valid payload with a slice cut out and some text put in its place."""
    return st.tuples(_records(fmt).map(SERIALIZERS[fmt]), st.integers(0, 300), st.integers(0, 20),
                     st.text(alphabet=_ALPHABETS[fmt], max_size=5)).map(
        lambda t: t[0][:t[1]] + t[3] + t[0][t[1] + t[2]:])


def _fuzz_text(fmt):
    core = st.one_of(st.text(max_size=200), st.text(alphabet=_ALPHABETS[fmt], max_size=200),
                     _mutated(fmt))
    return st.tuples(core, st.sampled_from(_WRAPPERS)).map(
        lambda cw: cw[1].replace("{fmt}", fmt).replace("{}", cw[0]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_never_raises(fmt):
    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_fuzz_text(fmt))
    def run(text):
        for kind in KINDS:
            res = S.KINDS[kind](text, _FUZZ_EXAMPLE, fmt=fmt)
            assert 0.0 <= res.score <= 1.0
            assert isinstance(res.reason, str) and isinstance(res.detail, str)
        S.extract_payload(text, fmt)
        S.parse_payload(text, fmt)

    run()


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_records_round_trip(fmt):
    """Whatever posttrain.data.formats writes for a random record scores 1.0 on every kind."""
    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_records(fmt))
    def run(record):
        text = SERIALIZERS[fmt](record)
        for kind, res in score_all(text, example_for(record, fmt)).items():
            assert res.score == 1.0, (kind, res, text)

    run()


@pytest.mark.parametrize("fmt, text", [
    ("json", '{"name": "a", "name": "b"}'),
    ("yaml", "name: a\nage: 3\nname: b\n"),
    ("toml", 'name = "a"\nname = "b"\n'),
])
def test_repeated_keys_are_not_valid_payloads(fmt, text):
    # json.loads and PyYAML keep the last value silently; a policy under RL learns to
    # repeat keys, so the format reward refuses them (tomllib already does)
    res = get_reward(f"{fmt}_format").evaluate(text, {"required": ["name"]})
    assert res.score == 0.0 and res.reason in ("duplicate_key", "parse_error")
    unique = {"json": '{"name": "a", "age": 3}', "yaml": "name: a\nage: 3\n", "toml": 'name = "a"\n'}[fmt]
    assert get_reward(f"{fmt}_format")(unique, {}) == 1.0


@pytest.mark.parametrize("record", [{"a": " "}, {"a": "x ", "b": " y"}, {"a": 1, "b": "  "}])
def test_csv_fields_with_outer_whitespace_round_trip(record):
    """A case the round-trip property found: csv leaves " " unquoted and the payload's
    surrounding whitespace is stripped on extraction, so the serializer quotes such fields."""
    text = SERIALIZERS["csv"](record)
    for kind, res in score_all(text, example_for(record, "csv")).items():
        assert res.score == 1.0, (kind, res, text)
