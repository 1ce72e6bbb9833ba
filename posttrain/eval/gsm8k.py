"""GSM8K evaluation (Cobbe et al. 2021, arXiv 2110.14168): load the problems, build chat
prompts, and score sampled completions.

    rows = load_gsm8k("data/gsm8k/test.jsonl")                   # [{"question", "answer"}, ...]
    shots = load_gsm8k("data/gsm8k/train.jsonl")[:8]
    msgs = build_messages(rows[0]["question"], few_shot=8, examples=shots)
    out = score_gsm8k(rows, completions, k_values=(1, 8))      # completions[i]: n strings
    out["metrics"]   # {"pass@1/strict": ..., "pass@8/flexible": ..., "bleu": ..., ...}
    out["records"]   # one record per problem, with what was extracted and why it was judged so

Answers are read by `posttrain.rewards.math`, the same code as the `math` / `math_strict`
rewards, so an evaluation and an RL reward agree on what a correct completion is:

- strict: only the first "#### n" line, n made of digits, "-", "." and "," (as in
  lm-evaluation-harness's gsm8k strict-match); any other format is wrong.
- flexible: the first of "#### n", the last \\boxed{}, "the answer is n", "Answer: n", and
  else the last number in the text (lm-evaluation-harness's flexible-extract takes only
  the last number; ours reads an explicit answer first).

Both read after the last `</think>`; an unclosed `<think>` has no answer. The reference is
the number after the last "####" of the GSM8K solution (or a bare answer). Numbers are
compared by value (`answers_match`: "1,000" = "1000", "18.00" = "18"). Unlike the `math`
reward, formulas are not compared symbolically by default (`symbolic=False`): GSM8K answers
are integers, so "#### 9*2" is wrong, as in lm-evaluation-harness, and scoring forks no
math-verify children.

pass@k is the unbiased estimator of `posttrain.eval.passk`, averaged over problems; pass@1
is the mean accuracy over all samples of a problem, then over problems.

BLEU is sacrebleu's corpus BLEU (default 13a tokenisation, one reference per hypothesis,
0..100) of the first completion of each problem against its reference solution. Both sides
lose GSM8K's calculator annotations ("<<48/2=24>>", markup the model is never shown: the
few-shot turns drop them too) and keep everything else, the final "#### n" line included,
since the prompt asks the model to end that way. A gold solution scores BLEU 100.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.data.sources import DataError
from posttrain.eval.passk import mean_pass_at_k
from posttrain.rewards.math import (answers_match, extract_answer, extract_reference,
                                   normalize_number, strip_thinking)

__all__ = ["INSTRUCTION", "load_gsm8k", "build_messages", "is_correct", "score_gsm8k", "bleu",
           "strip_calculator_annotations"]

MODES = ("strict", "flexible")

INSTRUCTION = ('Solve the problem step by step. Then write the final answer, a number only, '
               'on the last line in the form "#### <number>".')
"""Appended to every question (the asked one and the few-shot ones) so that a model whose
chat template has no system role still receives it."""

_CALC_RE = re.compile(r"<<[^<>\n]*>>")


def strip_calculator_annotations(text: str) -> str:
    """GSM8K solutions mark each computation for a calculator tool: "48/2 = <<48/2=24>>24".
    Drop the "<<...>>" parts: "48/2 = 24"."""
    return _CALC_RE.sub("", text)


# --------------------------------------------------------------------------- data


def _numeric_reference(answer) -> str | None:
    """The canonical final number of a GSM8K answer, or None (prose, no "#### n")."""
    ref = extract_reference(answer)
    return ref if ref is not None and normalize_number(ref) is not None else None


def load_gsm8k(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a GSM8K JSONL file, each a JSON object with a "question" string and an
    "answer" (the solution ending in "#### n", or a bare number); other keys are kept.
    Blank lines are skipped. A bad row raises DataError naming file:line (1-based)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found; give the path of a GSM8K JSONL file "
                        f"(one {{\"question\": ..., \"answer\": ...}} object per line)")
    rows = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); each "
                                f"line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object with 'question' and 'answer', "
                                f"got {type(row).__name__}")
            for key in ("question", "answer"):
                if key not in row:
                    raise DataError(f"{where}: no {key!r} key (row has: "
                                    f"{', '.join(map(str, row)) or 'nothing'}); each row needs "
                                    f"'question' and 'answer'")
            if not isinstance(row["question"], str) or not row["question"].strip():
                raise DataError(f"{where}: 'question' must be a non-empty string, got "
                                f"{row['question']!r:.60}")
            if _numeric_reference(row["answer"]) is None:
                raise DataError(f"{where}: 'answer' holds no final number (got "
                                f"{row['answer']!r:.60}); expected a solution ending in "
                                f"'#### <number>' or a bare number")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows; the file is empty")
    return rows


# --------------------------------------------------------------------------- prompts


def _user_turn(question: str) -> dict[str, str]:
    return {"role": "user", "content": f"{question.strip()}\n\n{INSTRUCTION}"}


def build_messages(question: str, *, few_shot: int = 0, examples: Sequence[dict] | None = None,
                   system: str | None = None) -> list[dict[str, str]]:
    """The chat messages that ask `question`.

    Zero-shot: [system?, user]; the user turn is the question followed by `INSTRUCTION`
    (reason step by step, end with "#### <number>"). Few-shot: the first `few_shot` rows of
    `examples` (dicts with "question" and a full "answer" solution, e.g. the first rows of
    the train split) come first as solved user/assistant turns, the assistant turn being the
    reference solution without calculator annotations. A row whose question is `question`
    itself is skipped, and the next one taken. `system` (none by default) is prepended as a
    system turn.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"build_messages: question must be a non-empty string, "
                         f"got {question!r:.60}")
    if isinstance(few_shot, bool) or not isinstance(few_shot, int) or few_shot < 0:
        raise ValueError(f"build_messages: few_shot must be an int >= 0, got {few_shot!r}")
    messages = [] if system is None else [{"role": "system", "content": system}]
    if few_shot:
        if not examples:
            raise ValueError(f"build_messages: few_shot={few_shot} needs `examples`, solved "
                             f"problems such as the first rows of the GSM8K train split")
        shots = []
        for i, ex in enumerate(examples):
            if len(shots) == 2 * few_shot:  # a user and an assistant turn per example
                break
            q, a = (ex.get("question"), ex.get("answer")) if isinstance(ex, dict) else ("", "")
            if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
                raise ValueError(f"build_messages: examples[{i}] must be a dict with a "
                                 f"'question' string and an 'answer' solution ending in "
                                 f"'#### <number>' (got {ex!r:.80})")
            if q.strip() == question.strip():
                continue  # never show the model the problem it is asked
            shots += [_user_turn(q),
                      {"role": "assistant", "content": strip_calculator_annotations(a).strip()}]
        if len(shots) < 2 * few_shot:
            raise ValueError(f"build_messages: few_shot={few_shot} but only {len(shots) // 2} "
                             f"usable examples (the asked question is excluded); pass more "
                             f"examples or lower few_shot")
        messages += shots
    messages.append(_user_turn(question))
    return messages


# --------------------------------------------------------------------------- scoring


def _judge(completion: str, reference: str | None, mode: str,
           symbolic: bool) -> tuple[str | None, bool]:
    """(the answer extracted under `mode`, whether it equals the extracted reference)."""
    pred = extract_answer(completion, mode)
    ok = pred is not None and reference is not None and answers_match(pred, reference,
                                                                      symbolic=symbolic)
    return pred, ok


def is_correct(completion: str, reference: str, mode: str = "flexible", *,
               symbolic: bool = False) -> bool:
    """Whether the final answer of `completion`, read under `mode` ("strict": the first
    "#### n" only; "flexible": see the module docstring), equals `reference`, a GSM8K
    solution ending in "#### n" or a bare answer. `symbolic` also accepts a formula equal
    in value (math-verify), as the `math` reward does."""
    if mode not in MODES:
        raise ValueError(f"is_correct: mode must be 'strict' or 'flexible', not {mode!r}")
    return _judge(completion, extract_reference(reference), mode, symbolic)[1]


def bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """sacrebleu corpus BLEU (0..100, default 13a tokenisation) of `hypotheses` against
    `references`, where `references[i]` is the reference of `hypotheses[i]`, or a list of
    its references (every hypothesis then has the same number of them)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"bleu: {len(hypotheses)} hypotheses but {len(references)} references; "
                         f"give one reference (or one list of references) per hypothesis")
    if not hypotheses:
        raise ValueError("bleu: no hypotheses")
    per_hyp = [[r] if isinstance(r, str) else list(r) for r in references]
    if len({len(r) for r in per_hyp}) != 1 or not per_hyp[0]:
        raise ValueError("bleu: every hypothesis needs the same number (>= 1) of references, got "
                         f"{sorted({len(r) for r in per_hyp})}")
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("bleu needs sacrebleu: pip install 'sacrebleu>=2'") from None
    streams = [list(stream) for stream in zip(*per_hyp)]  # sacrebleu: one list per reference set
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)


def _why(completion: str, strict: str | None, flexible: str | None, ref: str) -> str:
    """One line on how the first completion was judged."""
    if strip_thinking(completion) is None:
        return f"unclosed <think>: no answer, expected {ref}"
    if strict is not None:
        return f"extracted {strict}, expected {ref}"
    if flexible is not None:
        return f"no '#### n' line; flexible extracted {flexible}, expected {ref}"
    return f"no answer found, expected {ref}"


def score_gsm8k(records: Sequence[dict], completions_per_record: Sequence[Sequence[str]],
                k_values: Sequence[int] = (1,), *, symbolic: bool = False) -> dict[str, Any]:
    """Score n sampled completions per problem.

    `records[i]` is a GSM8K row ({"question", "answer"}, as from `load_gsm8k`) and
    `completions_per_record[i]` its completions (at least max(k_values), at least one).
    Returns {"metrics": ..., "records": ...}:

    metrics   "pass@k/strict" and "pass@k/flexible" for k = 1 and each k in `k_values`
              (fractions in [0, 1]); "bleu" (0..100, first completion of each problem vs
              its reference solution, see the module docstring); "n_records"; "n_samples"
              (completions in all).
    records   per problem: "question", "reference_answer" (the extracted number),
              "completions", "extracted_strict", "extracted_flexible" (None where nothing
              was found), "correct_strict", "correct_flexible" (one entry per completion),
              and "why" ("extracted 17, expected 18", "no '#### n' line; ...") for the first.
    """
    if len(records) != len(completions_per_record):
        raise ValueError(f"score_gsm8k: {len(records)} records but {len(completions_per_record)} "
                         f"completion lists; give one list per record")
    if not records:
        raise ValueError("score_gsm8k: no records to score")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in k_values):
        raise ValueError(f"score_gsm8k: k_values must be ints >= 1, got {tuple(k_values)!r}")
    ks = sorted({1, *k_values})
    scored, hyps, refs = [], [], []
    for i, (rec, comps) in enumerate(zip(records, completions_per_record)):
        if not isinstance(rec, dict) or "question" not in rec or "answer" not in rec:
            raise ValueError(f"score_gsm8k: records[{i}] must be a dict with 'question' and "
                             f"'answer' (as load_gsm8k returns), got {rec!r:.80}")
        ref = _numeric_reference(rec["answer"])
        if ref is None:
            raise ValueError(f"score_gsm8k: records[{i}]['answer'] holds no final number "
                             f"({rec['answer']!r:.60}); expected '#### <number>' or a number")
        if isinstance(comps, str) or not comps or not all(isinstance(c, str) for c in comps):
            raise ValueError(f"score_gsm8k: completions_per_record[{i}] must be a non-empty "
                             f"list of strings, got {comps!r:.80}")
        if len(comps) < ks[-1]:
            raise ValueError(f"score_gsm8k: pass@{ks[-1]} needs at least {ks[-1]} completions "
                             f"per record, record {i} has {len(comps)}; sample more or drop "
                             f"{ks[-1]} from k_values")
        ex: dict[str, Any] = {"question": rec["question"], "reference_answer": ref,
                              "completions": list(comps)}
        for mode in MODES:
            judged = [_judge(c, ref, mode, symbolic) for c in comps]
            ex[f"extracted_{mode}"] = [pred for pred, _ in judged]
            ex[f"correct_{mode}"] = [ok for _, ok in judged]
        ex["why"] = _why(comps[0], ex["extracted_strict"][0], ex["extracted_flexible"][0], ref)
        scored.append(ex)
        hyps.append(strip_calculator_annotations(comps[0]))
        refs.append(strip_calculator_annotations(str(rec["answer"])))
    metrics: dict[str, Any] = {}
    for k in ks:
        for mode in MODES:
            counts = [(len(ex["completions"]), sum(ex[f"correct_{mode}"])) for ex in scored]
            metrics[f"pass@{k}/{mode}"] = mean_pass_at_k(counts, k)
    metrics["bleu"] = bleu(hyps, refs)
    metrics["n_records"] = len(scored)
    metrics["n_samples"] = sum(len(ex["completions"]) for ex in scored)
    return {"metrics": metrics, "records": scored}
