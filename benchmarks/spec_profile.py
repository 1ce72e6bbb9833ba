"""Where the time of a speculative-decoding cycle goes, against plain greedy decoding.

    python benchmarks/spec_profile.py --target T --draft D --prompts FILE [--block-size 16]

On the first --n prompts of FILE, each decoded with max --max-new-tokens tokens, the
script times, interleaved so both sides see the same machine load:

  * plain      greedy_decode: one target forward of 1 token per generated token
  * spec       speculative_decode, split into the drafter's time (propose + extend, the
               `draft_seconds` the loop records) and the rest (target verify forwards of
               up to B tokens, acceptance, cache crop, Python)
  * forwards   one target forward of 1 token and of B tokens on a KV cache of the prompt's
               length (median of --reps), and one drafter block proposal: the per-cycle
               cost model  t_cycle ~ t_target(B) + t_draft  against  tau x t_target(1)

and prints one JSON object. The speedup a cycle can give is tau x t_target(1) /
(t_target(B) + t_draft): on a GPU t_target(B) ~ t_target(1) (memory-bound), on this CPU
a B-token forward costs more, and Python overhead per forward is a large share of a
0.9M-parameter model's forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import DynamicCache

from posttrain.config import ModelConfig, SourceConfig
from posttrain.data.sources import load_source
from posttrain.eval.spec import load_draft
from posttrain.models.load import load_model, load_tokenizer
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.hf import stop_ids
from posttrain.spec.data import prompt_text
from posttrain.spec.verify import _forward, greedy_decode, speculative_decode


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def forward_costs(target, drafter, prompt: list[int], block: int, reps: int) -> dict:
    layers = tuple(drafter.feature_layers)

    def step(n_tokens: int):
        cache = DynamicCache()
        _forward(target, prompt, cache, 0, False)

        def run():
            _forward(target, prompt[-1:] * n_tokens, cache, len(prompt), bool(layers))
            cache.crop(-n_tokens)
        return run

    out = _forward(target, prompt, DynamicCache(), 0, bool(layers))
    drafter.reset()
    if layers:
        drafter.extend(prompt, torch.cat([out.hidden_states[i][0] for i in layers], -1))
    else:
        drafter.extend(prompt, None)
    return {"target_1_token_ms": 1e3 * _median_time(step(1), reps),
            f"target_{block}_tokens_ms": 1e3 * _median_time(step(block), reps),
            "draft_propose_ms": 1e3 * _median_time(lambda: drafter.propose(prompt[-1], block - 1), reps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    cfg = ModelConfig(path=args.target)
    tok, target = load_tokenizer(cfg), load_model(cfg).eval()
    drafter = load_draft(args.draft, target)
    stops = stop_ids(tok, SamplingParams())
    exs = load_source(SourceConfig(kind="jsonl", path=args.prompts, n=args.n))
    prompts = [tok(prompt_text(tok, e.prompt_messages), add_special_tokens=False)["input_ids"] for e in exs]
    plain = spec = draft = 0.0
    tokens = cycles = 0
    speculative_decode(target, drafter, prompts[0], args.block_size, 8, stops)  # warm-up
    for p in prompts:
        r = greedy_decode(target, p, args.max_new_tokens, stops)
        s = speculative_decode(target, drafter, p, args.block_size, args.max_new_tokens, stops)
        assert s.tokens == r.tokens, "speculative output differs from plain greedy"
        plain, spec, draft = plain + r.seconds, spec + s.seconds, draft + s.draft_seconds
        tokens, cycles = tokens + len(r.tokens), cycles + len(s.cycle_taus)
    costs = forward_costs(target, drafter, prompts[0], args.block_size, args.reps)
    tau = (tokens - len(prompts)) / cycles
    t1, tb = costs["target_1_token_ms"], costs[f"target_{args.block_size}_tokens_ms"]
    print(json.dumps({
        "prompts": len(prompts), "tokens": tokens, "cycles": cycles, "tau": round(tau, 3),
        "plain_s": round(plain, 3), "spec_s": round(spec, 3), "spec_draft_s": round(draft, 3),
        "spec_target_and_loop_s": round(spec - draft, 3), "speedup": round(plain / spec, 3),
        **{k: round(v, 3) for k, v in costs.items()},
        "cycle_model_speedup": round(tau * t1 / (tb + costs["draft_propose_ms"]), 3),
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
