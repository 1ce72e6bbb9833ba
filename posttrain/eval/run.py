"""`posttrain eval TASK --model PATH [--predictions FILE] [--out DIR]`: generate and score,
or score predictions made elsewhere (e.g. by vLLM), for one task.

Tasks:
    gsm8k        --data test.jsonl ({"question", "answer"} rows); pass@1 and pass@k (strict
                 and flexible extraction side by side) and BLEU (posttrain.eval.gsm8k)
    structeval   --data nonrenderable.json (StructEval-T records); render, key-validation and
                 final scores overall, per format and per task type (posttrain.eval.structeval);
                 --corrected fixes the reference scorer's quirks
    structured   the built-in structured-output task (held-out split), scored with the rewards
    arithmetic   the built-in arithmetic task (held-out split), scored with the math reward

A predictions file is JSONL, one row per example in the dataset's order (or matched by
"id" when every row has one), each with "completion" (a string) or "completions" (a list,
for pass@k). DIR/eval_results.json records the metrics, every example with what was
extracted and why it scored as it did, and the settings that make runs comparable:
sampling, seed, and SHA-256 hashes of the model weights and of the dataset file.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, ModelConfig

TASKS = ("gsm8k", "structeval", "structured", "arithmetic")


@dataclass
class EvalSettings:
    task: str
    model: str | None = None
    data: str | None = None
    predictions: str | None = None
    n: int | None = None
    """Evaluate the first n examples (all by default; built-in tasks: 128)."""
    samples: int = 1
    """Completions per example (pass@k needs more than one)."""
    temperature: float = 0.0
    """0 = greedy (then samples must be 1)."""
    top_p: float = 1.0
    max_new_tokens: int = 512
    few_shot: int = 0
    """GSM8K: solved examples shown before the question (taken from --few-shot-data)."""
    few_shot_data: str | None = None
    corrected: bool = False
    """StructEval-T: fix the reference scorer's quirks."""
    seed: int = 0
    batch_size: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str | Path, chunk: int = 2**22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_hash(model_dir: str | Path) -> str | None:
    """SHA-256 over the weight files (and config) of a local model directory, in name order."""
    d = Path(model_dir)
    if not d.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(d.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            h.update(f.name.encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def _load_predictions(path: str, n_examples: int, ids: list[str] | None) -> list[list[str]]:
    rows = []
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--predictions: file not found: {p}")
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{i}: not valid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{p}:{i}: expected an object with 'completion' or 'completions'")
        if isinstance(row.get("completions"), list) and all(isinstance(c, str) for c in row["completions"]):
            comps = row["completions"]
        elif isinstance(row.get("completion"), str):
            comps = [row["completion"]]
        else:
            raise ConfigError(f"{p}:{i}: no string 'completion' or list 'completions' "
                              f"(row has: {', '.join(row) or 'nothing'})")
        rows.append((row.get("id"), comps, i))
    if ids is not None and rows and all(r[0] is not None for r in rows):
        by_id = {str(r[0]): r[1] for r in rows}
        missing = [x for x in ids if x not in by_id]
        if missing:
            raise ConfigError(f"{p}: no prediction for id {missing[0]!r} ({len(missing)} missing)")
        return [by_id[x] for x in ids]
    if len(rows) < n_examples:
        raise ConfigError(f"{p}: {len(rows)} predictions for {n_examples} examples "
                          "(rows are matched by position unless every row has an 'id')")
    return [r[1] for r in rows[:n_examples]]


def _generate(settings: EvalSettings, prompts_messages: list[list[dict]]) -> list[list[str]]:
    """Completions from the model for each chat prompt, `samples` per prompt."""
    import torch

    from ..data.chat import tokenize_prompt
    from ..models.load import load_model_and_tokenizer
    from ..rollout import ENGINES, SamplingParams
    if settings.model is None:
        raise ConfigError("--model is required unless --predictions is given")
    if settings.temperature == 0 and settings.samples > 1:
        raise ConfigError("--samples > 1 needs --temperature > 0 (greedy gives the same completion)")
    torch.manual_seed(settings.seed)
    model, tok = load_model_and_tokenizer(ModelConfig(path=settings.model))
    # the fast engine: the same tokens as the hf one, falling back to it for other models
    engine = ENGINES.get("fast")(model, tok, batch_size=settings.batch_size)
    params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                            max_new_tokens=settings.max_new_tokens)
    ids = [tokenize_prompt(tok, m) for m in prompts_messages]
    out = engine.generate(ids, params, n=settings.samples)
    k = settings.samples
    return [out.texts[i * k:(i + 1) * k] for i in range(len(ids))]


def run_eval(settings: EvalSettings) -> dict[str, Any]:
    """Generate (or read) completions, score them, and return the results dict."""
    if settings.task not in TASKS:
        raise ConfigError(f"unknown eval task {settings.task!r}; known: {', '.join(TASKS)}")
    t0 = time.perf_counter()
    task = settings.task
    if task in ("gsm8k", "structeval") and not settings.data:
        raise ConfigError(f"{task} needs --data (e.g. ../shared/data/gsm8k/test.jsonl)")
    data_hash = sha256_file(settings.data) if settings.data else None
    if task == "gsm8k":
        from . import gsm8k
        records = gsm8k.load_gsm8k(settings.data)[:settings.n]
        if settings.few_shot and not settings.few_shot_data:
            raise ConfigError("--few-shot K needs --few-shot-data (solved rows, e.g. GSM8K train)")
        # one spare row: build_messages skips a shot whose question is the one being asked
        shots = gsm8k.load_gsm8k(settings.few_shot_data)[:settings.few_shot + 1] if settings.few_shot else None
        if settings.few_shot and len(shots) < settings.few_shot:
            raise ConfigError("--few-shot K needs --few-shot-data with at least K solved rows "
                              "(e.g. GSM8K train; never the test questions)")
        prompts = [gsm8k.build_messages(r["question"], few_shot=settings.few_shot, examples=shots)
                   for r in records]
        comps = _completions(settings, prompts, None)
        ks = tuple(sorted({1, settings.samples} | {k for k in (5, 10, 20, 50, 100) if k <= settings.samples}))
        scored = gsm8k.score_gsm8k(records, comps, k_values=ks)
    elif task == "structeval":
        from . import structeval
        records = structeval.load_structeval(settings.data)[:settings.n]
        prompts = [[{"role": "user", "content": r["query"]}] for r in records]
        comps = _completions(settings, prompts, None)
        scored = structeval.score_records(records, [c[0] for c in comps], corrected=settings.corrected)
    else:
        scored, records = _score_builtin(settings)
    metrics, examples = scored["metrics"], scored["records"]
    return {"task": task, "metrics": metrics,
            "settings": {**{k: v for k, v in asdict(settings).items() if k != "extra"},
                         "model_sha256": model_hash(settings.model) if settings.model else None,
                         "data_sha256": data_hash, "seconds": round(time.perf_counter() - t0, 2)},
            "records": examples}


def _completions(settings: EvalSettings, prompts: list[list[dict]], ids: list[str] | None) -> list[list[str]]:
    if settings.predictions:
        return _load_predictions(settings.predictions, len(prompts), ids)
    return _generate(settings, prompts)


def _score_builtin(settings: EvalSettings):
    from ..data.tasks import generate
    from ..rewards import RewardSet
    n = settings.n or 128
    examples = generate(settings.task, "heldout", n, seed=settings.seed)
    comps = _completions(settings, [e.prompt_messages for e in examples], [e.id for e in examples])
    if settings.task == "structured":
        comps_set = {k: f"structured_{k}" for k in ("format", "schema", "type", "value", "exact")}
    else:
        comps_set = {"correct": "math", "correct_strict": "math_strict"}
    rs = RewardSet(comps_set)
    rows = [{"answer": e.answer, **e.meta, "id": e.id} for e in examples]
    batch = rs.evaluate([c[0] for c in comps], rows)
    metrics = {name: sum(r[k] for r in batch.scores) / max(len(rows), 1) for k, name in enumerate(rs.names)}
    records = [{"id": e.id, "prompt": e.prompt_messages[-1]["content"], "reference": e.answer,
                "completion": c[0], "scores": dict(zip(rs.names, s)), "why": dict(zip(rs.names, why))}
               for e, c, s, why in zip(examples, comps, batch.scores, batch.reasons)]
    return {"metrics": {**metrics, "n_records": len(rows)}, "records": records}, examples


def write_results(results: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval_results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
