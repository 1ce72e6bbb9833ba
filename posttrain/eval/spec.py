"""`posttrain eval spec`: speculative decoding against plain greedy decoding of the same target.

    posttrain eval spec --target T --draft D --prompts a.jsonl b.jsonl --block-size 16 --out DIR

For every prompt of every file the target decodes greedily twice, plain (one forward per
token) and speculatively with the draft (posttrain.spec.verify), one right after the
other so both see the same machine load. Per file: pooled tau = sum of per-cycle tau /
cycles (ceiling B), cycles, the wall-clock speedup (plain seconds / speculative seconds,
summed over the file's prompts) and `lossless` (every prompt's tokens identical to plain
greedy). DIR/spec_results.json holds these plus the time split (drafter vs target).

The draft D is a block-drafter directory (drafter.json, from `posttrain distill`) or any
causal LM with the target's tokenizer (the autoregressive baseline). Prompt files are JSONL
rows with `messages` or `prompt` (posttrain.data.sources rules).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ..config import ModelConfig, SourceConfig
from ..data.sources import load_source
from ..rollout.base import SamplingParams
from ..rollout.hf import stop_ids
from ..spec.data import prompt_text
from ..spec.verify import Drafter, greedy_decode, pooled_tau, speculative_decode
from ..train.metrics import Progress


def load_draft(path: str, target, device: str = "auto") -> Drafter:
    """A block drafter directory -> its cached inference state; otherwise an AR draft model."""
    from ..spec.block import is_block_drafter_dir, load_drafter
    if is_block_drafter_dir(path):
        return load_drafter(path, target).new_cache()
    from ..models.load import load_model
    from ..spec.ar import ARDrafter
    return ARDrafter(load_model(ModelConfig(path=path, device=device)))


@torch.no_grad()
def run_spec_eval(target, tokenizer, drafter: Drafter, prompt_files: Sequence[str | Path],
                  block_size: int, max_new_tokens: int, n: int | None = None,
                  progress: bool = True) -> dict:
    target.eval()
    stops = stop_ids(tokenizer, SamplingParams())
    results = {}
    for path in prompt_files:
        path = Path(path)
        exs = load_source(SourceConfig(kind="jsonl", path=str(path), n=n), key=str(path))
        prompts = [tokenizer(prompt_text(tokenizer, e.prompt_messages), add_special_tokens=False)["input_ids"]
                   for e in exs]
        if prompts:  # warm-up: first calls pay one-off allocation costs in both paths
            greedy_decode(target, prompts[0], 8, stops)
            speculative_decode(target, drafter, prompts[0], block_size, 8, stops)
        taus, plain_s, spec_s, draft_s, mismatched, tokens = [], 0.0, 0.0, 0.0, [], 0
        fw_plain = fw_spec = 0
        with Progress(f"spec {path.stem}", len(prompts), enabled=progress) as bar:
            for i, p in enumerate(prompts):
                ref = greedy_decode(target, p, max_new_tokens, stops)
                out = speculative_decode(target, drafter, p, block_size, max_new_tokens, stops)
                plain_s += ref.seconds
                spec_s += out.seconds
                draft_s += out.draft_seconds
                fw_plain += ref.target_forwards
                fw_spec += out.target_forwards
                tokens += len(ref.tokens)
                taus.append(out.cycle_taus)
                if out.tokens != ref.tokens:
                    mismatched.append(exs[i].id or i)
                bar.update(i + 1, None)
        tau, cycles = pooled_tau(taus)
        results[path.stem] = {
            "tau": round(tau, 4), "cycles": cycles,
            "speedup": round(plain_s / spec_s, 4) if spec_s else None,
            "lossless": not mismatched, "mismatched_prompts": mismatched,
            "prompts": len(prompts), "tokens": tokens, "block_size": block_size,
            "plain_seconds": round(plain_s, 3), "spec_seconds": round(spec_s, 3),
            "draft_seconds": round(draft_s, 3),
            "target_forwards": {"plain": fw_plain, "spec": fw_spec},
        }
    return results


def write_spec_results(results: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "spec_results.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    return path


def pool_files(results: dict) -> tuple[float, int]:
    """(tau, cycles) pooled over every prompt file of `results`: the sum of all cycle taus
    over all cycles (each file's tau x cycles is its sum of cycle taus). Not tokens / cycles:
    each prompt's first token comes from the prefill, not from a cycle."""
    cycles = sum(r["cycles"] for r in results.values())
    total = sum(round(r["tau"] * r["cycles"]) for r in results.values())  # integers, tau rounded to 1e-4
    return (total / cycles if cycles else float("nan")), cycles


def spec_table(results: dict, title: str = "speculative decoding"):
    from rich.table import Table
    table = Table(title=title)
    for col in ("prompts", "tau", "cycles", "speedup", "lossless", "plain s", "spec s", "draft s"):
        table.add_column(col, justify="right")
    table.add_column("file", justify="left")
    for stem, r in results.items():
        table.add_row(str(r["prompts"]), f"{r['tau']:.2f}", str(r["cycles"]),
                      f"{r['speedup']:.2f}x" if r["speedup"] else "-", str(r["lossless"]),
                      f"{r['plain_seconds']:.1f}", f"{r['spec_seconds']:.1f}", f"{r['draft_seconds']:.1f}", stem)
    if len(results) > 1:
        tau, cycles = pool_files(results)
        table.add_row(str(sum(r["prompts"] for r in results.values())), f"{tau:.2f}", str(cycles), "", "", "", "", "",
                      "all files (pooled)")
    return table
