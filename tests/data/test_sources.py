"""Sources: JSONL / JSON / Parquet / HF datasets to Examples, column mapping, and error
messages that name the file, the row and the field."""

import json

import pytest

from posttrain.config import SourceConfig
from posttrain.data.sources import DataError, load_source, load_sources
from posttrain.data.tasks import generate

ROWS = [
    {"question": "What is 2+3?", "solution": "2+3=5\n#### 5", "final": 5},
    {"question": "What is 4*4?", "solution": "4*4=16\n#### 16", "final": 16},
    {"question": "What is 9-7?", "solution": "9-7=2\n#### 2", "final": 2},
]
MAPPED = {"prompt": "question", "completion": "solution", "answer": "final"}


def write_jsonl(path, rows, blank_after=()):
    lines = []
    for i, r in enumerate(rows):
        lines.append(r if isinstance(r, str) else json.dumps(r))
        if i in blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_bad_row_3_names_line_field_and_columns(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c"}, {"question": "x", "solution": "y"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_sources([SourceConfig(kind="jsonl", path=path)])
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: no 'messages' or 'prompt' column (row has: question, solution)")
    assert "set data.train[0].columns.prompt" in msg


def test_jsonl_blank_lines_are_counted_and_bad_json_is_located(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"text": "c"}],
                       blank_after=(0,))
    with pytest.raises(DataError, match=r"a\.jsonl:4: no 'messages' or 'prompt'"):
        load_source(SourceConfig(kind="jsonl", path=path))
    path = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "a"}, '{"prompt": "b",'])
    with pytest.raises(DataError, match=r"b\.jsonl:2: invalid JSON"):
        load_source(SourceConfig(kind="jsonl", path=path))
    # src.n stops before the bad line is read
    assert len(load_source(SourceConfig(kind="jsonl", path=path, n=1))) == 1


def test_missing_file_is_named(tmp_path):
    for kind in ("jsonl", "json", "parquet"):
        with pytest.raises(DataError, match=r"nope\.x: file not found"):
            load_source(SourceConfig(kind=kind, path=str(tmp_path / "nope.x")))


def test_prompt_completion_columns_mapped_by_name(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", ROWS)
    exs = load_source(SourceConfig(kind="jsonl", path=path, columns=MAPPED))
    assert [e.id for e in exs] == ["gsm.jsonl:1", "gsm.jsonl:2", "gsm.jsonl:3"]
    assert exs[0].messages == [{"role": "user", "content": "What is 2+3?"},
                               {"role": "assistant", "content": "2+3=5\n#### 5"}]
    assert exs[0].answer == "5" and exs[0].meta == {}
    assert len(load_source(SourceConfig(kind="jsonl", path=path, columns=MAPPED, n=2))) == 2


def test_messages_system_id_and_meta_columns(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "x": None}]
    rows = [{"messages": chat, "id": 7, "meta": {"task": "chat"}},
            {"prompt": [{"role": "user", "content": "q"}], "completion": "a",
             "sys": "Be brief.", "meta": '{"k": 1}'}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    a, b = load_source(SourceConfig(kind="jsonl", path=path, columns={"system": "sys"}))
    assert a.messages == [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]  # only role and content
    assert a.id == "7" and a.meta == {"task": "chat"} and a.answer is None
    assert b.messages[0] == {"role": "system", "content": "Be brief."}
    assert b.completion == "a" and b.meta == {"k": 1}


@pytest.mark.parametrize("row,match", [
    ({"messages": [{"role": "bot", "content": "x"}]}, "field 'messages' .* role 'bot'"),
    ({"prompt": "q", "meta": [1]}, "field 'meta' .* should be an object"),
    ({"prompt": "q", "answer": {"a": 1}}, "field 'answer' .* should be a scalar"),
    ({"prompt": "q", "completion": 3}, "field 'completion' .* not a valid message list"),
    ([1, 2], "expected an object, got list"),
])
def test_malformed_rows(tmp_path, row, match):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "ok"}, row])
    with pytest.raises(DataError, match=r"m\.jsonl:2: " + match):
        load_source(SourceConfig(kind="jsonl", path=path))


def test_json_list_and_data_object(tmp_path):
    p1, p2 = tmp_path / "l.json", tmp_path / "d.json"
    p1.write_text(json.dumps(ROWS))
    p2.write_text(json.dumps({"data": ROWS}))
    a = load_source(SourceConfig(kind="json", path=str(p1), columns=MAPPED))
    b = load_source(SourceConfig(kind="json", path=str(p2), columns=MAPPED))
    assert [e.messages for e in a] == [e.messages for e in b] and len(a) == 3
    assert a[1].id == "l.json:row 1"
    with pytest.raises(DataError, match=r"l\.json:row 0: no 'messages' or 'prompt'"):
        load_source(SourceConfig(kind="json", path=str(p1)))
    p1.write_text("{oops")
    with pytest.raises(DataError, match=r"l\.json: invalid JSON .* line 1"):
        load_source(SourceConfig(kind="json", path=str(p1)))
    p1.write_text('{"rows": []}')
    with pytest.raises(DataError, match="expected a list of objects"):
        load_source(SourceConfig(kind="json", path=str(p1)))


def test_parquet_with_chat_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [e.to_dict() for e in generate("arithmetic", "train", 5)]
    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    exs = load_source(SourceConfig(kind="parquet", path=path))
    assert [e.to_dict() for e in exs] == rows
    assert len(load_source(SourceConfig(kind="parquet", path=path, n=2))) == 2
    pq.write_table(pa.Table.from_pylist([{"text": "x"}]), path)
    with pytest.raises(DataError, match=r"t\.parquet:row 0: .*row has: text"):
        load_source(SourceConfig(kind="parquet", path=path))


def test_hf_saved_dataset_and_parquet_dir(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    exs = load_source(SourceConfig(kind="hf", path=str(tmp_path / "saved"), columns=MAPPED, n=2))
    assert [e.answer for e in exs] == ["5", "16"] and exs[0].id == "saved:row 0"

    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    exs = load_source(SourceConfig(kind="hf", path=str(tmp_path / "dd"), split="test", columns=MAPPED))
    assert len(exs) == 3
    with pytest.raises(DataError, match="no split 'train'; it has test"):
        load_source(SourceConfig(kind="hf", path=str(tmp_path / "dd"), columns=MAPPED))

    # A plain directory of data files goes through load_dataset (no network needed).
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "pq" / "train.parquet"))
    exs = load_source(SourceConfig(kind="hf", path=str(tmp_path / "pq"), columns=MAPPED,
                                   options={"cache_dir": str(tmp_path / "cache")}))
    assert [e.answer for e in exs] == ["5", "16", "2"]


def test_builtin_and_config_mistakes(tmp_path):
    src = SourceConfig(kind="builtin", path="arithmetic", split="heldout", n=4, options={"think": True})
    assert [e.to_dict() for e in load_source(src, seed=2)] == \
        [e.to_dict() for e in generate("arithmetic", "heldout", 4, 2, think=True)]
    assert len(load_source(SourceConfig(kind="builtin", path="structured"))) == 1000
    path = write_jsonl(tmp_path / "x.jsonl", ROWS)
    with pytest.raises(DataError, match="unknown column mapping for question"):
        load_source(SourceConfig(kind="jsonl", path=path, columns={"question": "prompt"}))
    with pytest.raises(DataError, match="options are used only by builtin and hf"):
        load_source(SourceConfig(kind="jsonl", path=path, columns=MAPPED, options={"a": 1}))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_source(SourceConfig(kind="jsonl", path=str(tmp_path / "empty.jsonl")))


def test_load_sources_single_is_in_order_and_several_are_mixed(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", ROWS * 100)  # 300 rows
    one = load_sources([SourceConfig(kind="jsonl", path=path, columns=MAPPED)])
    assert [e.id for e in one] == [f"g.jsonl:{i}" for i in range(1, 301)]
    srcs = [SourceConfig(kind="jsonl", path=path, columns=MAPPED, weight=3.0),
            SourceConfig(kind="builtin", path="arithmetic", n=300, weight=1.0)]
    mixed = load_sources(srcs, seed=1)
    assert len(mixed) == 400  # all 300 file rows at 3:1 -> 100 built-in
    assert sum(e.id.startswith("g.jsonl") for e in mixed) == 300
    assert [e.id for e in mixed] == [e.id for e in load_sources(srcs, seed=1)]
