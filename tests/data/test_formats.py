"""Serializers: hand-checked outputs, and round trips through each format's own parser
(json, yaml.safe_load, tomllib, csv, ElementTree) back to the same typed values."""

import csv
import datetime as dt
import io
import json
import xml.etree.ElementTree as ET

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.data import formats, tasks
from posttrain.data.formats import FORMATS, SERIALIZERS, record_paths

try:
    import tomllib  # Python 3.11+; on 3.10 the TOML checks are skipped
except ImportError:  # pragma: no cover
    tomllib = None
needs_toml = pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11+")


@needs_toml
def test_hand_checked_serializers():
    rec = {"name": 'A "b" & <c>', "zip_code": "02139", "ok": True, "when": dt.date(2020, 1, 2),
           "price": 3.5, "address": {"city": "Oslo"}, "tags": ["x", "y"]}
    assert formats.to_toml(rec) == ('name = "A \\"b\\" & <c>"\nzip_code = "02139"\nok = true\n'
                                    'when = 2020-01-02\nprice = 3.5\ntags = ["x", "y"]\n\n'
                                    '[address]\ncity = "Oslo"')
    assert 'zip_code: "02139"' in formats.to_yaml(rec) and "when: 2020-01-02" in formats.to_yaml(rec)
    flat = {k: rec[k] for k in ("name", "ok", "when")}
    assert formats.to_csv(flat) == 'name,ok,when\n"A ""b"" & <c>",true,2020-01-02'
    assert formats.to_xml(flat) == ("<record>\n  <name>A \"b\" &amp; &lt;c&gt;</name>\n"
                                    "  <ok>true</ok>\n  <when>2020-01-02</when>\n</record>")


def test_registry_and_record_paths():
    assert tuple(SERIALIZERS) == FORMATS
    rec = {"a": 1, "o": {"b": "x"}, "tags": ["p", "q"]}
    assert record_paths(rec) == {"a": 1, "o": {"b": "x"}, "o.b": "x", "tags": ["p", "q"],
                                 "tags[0]": "p", "tags[1]": "q"}
    # tasks still re-exports what it used to define
    assert tasks.SERIALIZERS is SERIALIZERS and tasks.to_toml is formats.to_toml
    assert tasks.FORMATS is FORMATS and tasks.record_paths is record_paths


_scalar = st.one_of(st.text(max_size=12), st.integers(-10**9, 10**9), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False), st.dates())
_key = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_record = st.dictionaries(_key, st.one_of(_scalar, st.lists(_scalar, max_size=3),
                                          st.dictionaries(_key, _scalar, max_size=3)), max_size=6)


@needs_toml
@settings(max_examples=150, deadline=None)
@given(_record)
def test_toml_and_yaml_round_trip_any_record(record):
    assert tomllib.loads(formats.to_toml(record)) == record
    assert yaml.safe_load(formats.to_yaml(record) or "{}") == record


def _iso(v):
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: _iso(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_iso(x) for x in v]
    return v


@settings(max_examples=150, deadline=None)
@given(_record)
def test_json_round_trips_with_dates_as_iso_strings(record):
    assert json.loads(formats.to_json(record)) == _iso(record)


# Text that CSV and XML 1.0 can carry: no control characters (so no "\r"), surrogates or
# non-characters.
_plain = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn")), max_size=12)
_flat = st.dictionaries(_key, st.one_of(_plain, st.integers(-10**9, 10**9), st.booleans(),
                                        st.floats(allow_nan=False, allow_infinity=False),
                                        st.dates()), min_size=1, max_size=6)


def _read_back(want, text):
    """A CSV cell / XML text converted by the type the caller expects."""
    if isinstance(want, bool):
        return {"true": True, "false": False}[text]
    if isinstance(want, dt.date):
        return dt.date.fromisoformat(text)
    return type(want)(text)


@settings(max_examples=150, deadline=None)
@given(_flat)
def test_csv_and_xml_carry_typed_values_as_text(record):
    header, row, *rest = list(csv.reader(io.StringIO(formats.to_csv(record))))
    assert not rest and header == list(record)
    assert {k: _read_back(record[k], cell) for k, cell in zip(header, row)} == record
    root = ET.fromstring(formats.to_xml(record))
    assert root.tag == "record" and [c.tag for c in root] == list(record)
    assert {c.tag: _read_back(record[c.tag], c.text or "") for c in root} == record
