"""GSM8K evaluation: correctness under both extraction modes, pass@k aggregation, BLEU,
prompts, and the loader's errors. The gold solutions of the test split must score 1."""

import json
import re
from pathlib import Path

import pytest

from posttrain.data.sources import DataError
from posttrain.eval.gsm8k import (INSTRUCTION, bleu, build_messages, is_correct, load_gsm8k,
                                  score_gsm8k, strip_calculator_annotations)

GSM8K_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k"
GSM8K_TEST = GSM8K_DIR / "test.jsonl"
# OpenAI's grade-school-math release: four model solutions per test problem, each graded
GSM8K_GRADED = GSM8K_DIR / "example_model_solutions.jsonl"

needs_test_split = pytest.mark.skipif(not GSM8K_TEST.is_file(),
                                      reason=f"GSM8K test split not found at {GSM8K_TEST}")


@pytest.fixture(scope="module")
def test_rows():
    return load_gsm8k(GSM8K_TEST)


# --------------------------------------------------------------------------- is_correct


@pytest.mark.parametrize("completion, reference, mode, want", [
    ("The answer is 18.", "#### 18", "flexible", True),
    ("The answer is 18.", "#### 18", "strict", False),           # no "#### n" line
    ("9 * 2 = 18\n#### 18", "#### 18", "strict", True),
    ("9 * 2 = 18\n#### 18", "18", "strict", True),               # a bare reference
    ("So she makes $1,000.\n#### 1,000", "...\n#### 1000", "strict", True),
    ("#### 18.00", "#### 18", "strict", True),                    # compared by value
    ("#### 17", "#### 18", "flexible", False),
    ("#### 17\nwait, it is 18", "#### 18", "flexible", False),    # "#### n" beats the last number
    ("She has 3 + 4 = 7 left, so 18 in all", "#### 18", "flexible", True),  # last number
    ("\\boxed{18}", "#### 18", "flexible", True),
    ("\\boxed{18}", "#### 18", "strict", False),
    ("<think>#### 5</think>#### 18", "#### 18", "strict", True),  # read after </think>
    ("<think>so #### 18", "#### 18", "flexible", False),          # unclosed <think>
    ("#### 9*2", "#### 18", "flexible", False),                   # no symbolic check by default
    ("", "#### 18", "flexible", False),
])
def test_is_correct(completion, reference, mode, want):
    assert is_correct(completion, reference, mode) is want


def test_is_correct_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be"):
        is_correct("#### 1", "#### 1", "lenient")


@pytest.mark.skipif(not GSM8K_GRADED.is_file(), reason=f"{GSM8K_GRADED} not found")
@needs_test_split
def test_flexible_agrees_with_openai_grades(test_rows):
    """5,276 graded model solutions ending in "A: n": flexible mode must reproduce every grade;
    strict mode accepts none of them (no "#### n" line)."""
    graded = [json.loads(line) for line in GSM8K_GRADED.open(encoding="utf-8")]
    assert len(graded) == len(test_rows)
    n = 0
    for row, sols in zip(test_rows, graded):
        assert sols["question"] == row["question"]
        for key, sol in sols.items():
            if isinstance(sol, dict):
                assert is_correct(sol["solution"], row["answer"]) is sol["is_correct"], (key, sol)
                assert not is_correct(sol["solution"], row["answer"], "strict")
                n += 1
    assert n == 4 * len(test_rows)


# --------------------------------------------------------------------------- scoring


@needs_test_split
def test_gold_solutions_score_one(test_rows):
    assert len(test_rows) == 1319
    out = score_gsm8k(test_rows, [[r["answer"]] for r in test_rows])
    m = out["metrics"]
    assert m["pass@1/strict"] == 1.0 and m["pass@1/flexible"] == 1.0
    assert m["bleu"] == pytest.approx(100.0)
    assert m["n_records"] == 1319 and m["n_samples"] == 1319
    first = out["records"][0]
    assert first["reference_answer"] == "18" and first["why"] == "extracted 18, expected 18"


@needs_test_split
def test_off_by_one_answers_score_zero(test_rows):
    def off_by_one(answer):
        body, final = answer.rsplit("####", 1)
        return f"{body}#### {int(final.strip().replace(',', '')) + 1}"
    out = score_gsm8k(test_rows, [[off_by_one(r["answer"])] for r in test_rows])
    assert out["metrics"]["pass@1/strict"] == 0.0 and out["metrics"]["pass@1/flexible"] == 0.0
    assert out["records"][0]["why"] == "extracted 19, expected 18"


def test_pass_at_k_and_per_example_fields():
    records = [{"question": "q1", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"},
               {"question": "q2", "answer": "#### 5"}]
    completions = [["#### 2", "#### 3", "The answer is 2.", "nothing"],   # strict 1/4, flexible 2/4
                   ["It is 5", "#### 4", "#### 4", "#### 4"]]             # strict 0/4, flexible 1/4
    out = score_gsm8k(records, completions, k_values=(2, 4))
    m = out["metrics"]
    # pass@2 = 1 - C(n-c, 2)/C(4, 2): c=1 -> 1 - 3/6 = 0.5, c=2 -> 1 - 1/6, c=0 -> 0
    assert m["pass@1/strict"] == pytest.approx((1 / 4 + 0) / 2)
    assert m["pass@1/flexible"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert m["pass@2/strict"] == pytest.approx((0.5 + 0) / 2)
    assert m["pass@2/flexible"] == pytest.approx((5 / 6 + 0.5) / 2)
    assert m["pass@4/strict"] == pytest.approx(0.5) and m["pass@4/flexible"] == pytest.approx(1.0)
    assert m["n_records"] == 2 and m["n_samples"] == 8
    a, b = out["records"]
    assert a["extracted_strict"] == ["2", "3", None, None]
    assert a["extracted_flexible"] == ["2", "3", "2", None]
    assert a["correct_strict"] == [True, False, False, False]
    assert a["correct_flexible"] == [True, False, True, False]
    assert a["reference_answer"] == "2" and a["completions"] == completions[0]
    assert b["why"] == "no '#### n' line; flexible extracted 5, expected 5"
    assert set(a) == {"question", "reference_answer", "completions", "extracted_strict",
                      "extracted_flexible", "correct_strict", "correct_flexible", "why"}


def test_why_lines():
    rec = [{"question": "q", "answer": "#### 7"}]
    why = lambda c: score_gsm8k(rec, [[c]])["records"][0]["why"]  # noqa: E731
    assert why("#### 7") == "extracted 7, expected 7"
    assert why("no digits here") == "no answer found, expected 7"
    assert why("<think>7") == "unclosed <think>: no answer, expected 7"


def test_bleu_metric_uses_first_completion_without_annotations():
    records = [{"question": "q", "answer": "She has 4 * 2 = <<4*2=8>>8 apples in her bag.\n#### 8"}]
    out = score_gsm8k(records, [["She has 4 * 2 = 8 apples in her bag.\n#### 8", "#### 9"]])
    assert out["metrics"]["bleu"] == pytest.approx(100.0)


@pytest.mark.parametrize("records, completions, k_values, msg", [
    ([{"question": "q", "answer": "#### 1"}], [], (1,), "1 records but 0 completion lists"),
    ([], [], (1,), "no records"),
    ([{"question": "q", "answer": "#### 1"}], [["#### 1"]], (2,),
     "pass@2 needs at least 2 completions per record, record 0 has 1"),
    ([{"question": "q", "answer": "#### 1"}], [[]], (1,), r"completions_per_record\[0\]"),
    ([{"question": "q", "answer": "#### 1"}], ["#### 1"], (1,), r"completions_per_record\[0\]"),
    ([{"question": "q"}], [["#### 1"]], (1,), r"records\[0\] must be a dict"),
    ([{"question": "q", "answer": "n/a"}], [["#### 1"]], (1,), "holds no final number"),
    ([{"question": "q", "answer": "#### 1"}], [["#### 1"]], (0,), "k_values must be ints >= 1"),
])
def test_score_rejects_bad_input(records, completions, k_values, msg):
    with pytest.raises(ValueError, match=msg):
        score_gsm8k(records, completions, k_values)


# --------------------------------------------------------------------------- BLEU


def test_bleu_matches_sacrebleu_readme_example():
    # sacrebleu's README, two reference streams: "BLEU = 48.53 82.4/50.0/45.5/37.5 ..."
    refs = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
            ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    per_hypothesis = [list(r) for r in zip(*refs)]
    assert round(bleu(hyps, per_hypothesis), 2) == 48.53


def test_bleu_edges():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu(["a b c d"], ["w x y z"]) == 0.0
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="same number"):
        bleu(["a", "b"], [["a"], ["b", "c"]])
    with pytest.raises(ValueError, match="no hypotheses"):
        bleu([], [])


def test_strip_calculator_annotations():
    assert strip_calculator_annotations("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"


# --------------------------------------------------------------------------- prompts

SHOTS = [{"question": "Q1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"},
         {"question": "Q2?", "answer": "2 * 3 = <<2*3=6>>6\n#### 6"},
         {"question": "Q3?", "answer": "#### 9"}]


def test_zero_shot_asks_for_hash_line():
    msgs = build_messages("How many?")
    assert msgs == [{"role": "user", "content": f"How many?\n\n{INSTRUCTION}"}]
    assert "step by step" in INSTRUCTION and "#### <number>" in INSTRUCTION
    assert build_messages("How many?", system="Be brief.")[0] == {"role": "system",
                                                                   "content": "Be brief."}


def test_few_shot_turns_come_first_without_annotations():
    msgs = build_messages("How many?", few_shot=2, examples=SHOTS, system="S")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == f"Q1?\n\n{INSTRUCTION}"
    assert msgs[2]["content"] == "1 + 1 = 2\n#### 2"
    assert msgs[4]["content"] == "2 * 3 = 6\n#### 6"
    assert msgs[-1]["content"] == f"How many?\n\n{INSTRUCTION}"


def test_few_shot_never_shows_the_question_itself():
    msgs = build_messages("Q1?", few_shot=2, examples=SHOTS)
    shown = [m["content"] for m in msgs[:-1] if m["role"] == "user"]
    assert shown == [f"Q2?\n\n{INSTRUCTION}", f"Q3?\n\n{INSTRUCTION}"]
    with pytest.raises(ValueError, match="only 2 usable examples"):
        build_messages("Q1?", few_shot=3, examples=SHOTS)


@pytest.mark.parametrize("kwargs, msg", [
    ({"few_shot": 1}, "needs `examples`"),
    ({"few_shot": -1}, "few_shot must be an int >= 0"),
    ({"few_shot": 1, "examples": [{"question": "Q", "answer": "2"}]}, r"examples\[0\]"),
])
def test_build_messages_rejects_bad_few_shot(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        build_messages("How many?", **kwargs)


# --------------------------------------------------------------------------- loading


@needs_test_split
def test_load_real_split(test_rows):
    assert len(test_rows) == 1319 and set(test_rows[0]) == {"question", "answer"}


@pytest.mark.parametrize("content, msg", [
    ('{"question": "q", "answer": "#### 1"}\n\n{"question": "q", "answer": "#### 1"\n',
     r"rows\.jsonl:3: invalid JSON"),                                # a blank line still counts
    ('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n',
     r"rows\.jsonl:2: no 'answer' key \(row has: question\)"),
    ('["q", "#### 1"]\n', r"rows\.jsonl:1: expected a JSON object"),
    ('{"question": "", "answer": "#### 1"}\n', r"rows\.jsonl:1: 'question' must be a non-empty"),
    ('{"question": "q", "answer": "no number"}\n',
     r"rows\.jsonl:1: 'answer' holds no final number"),
    ("\n\n", r"rows\.jsonl: no rows"),
])
def test_load_errors_name_file_and_line(tmp_path, content, msg):
    path = tmp_path / "rows.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=msg):
        load_gsm8k(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.jsonl'}: file not found")):
        load_gsm8k(tmp_path / "nope.jsonl")


def test_load_keeps_extra_keys_and_bare_answers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "q", "answer": 42, "id": "x"}\n', encoding="utf-8")
    assert load_gsm8k(path) == [{"question": "q", "answer": 42, "id": "x"}]
