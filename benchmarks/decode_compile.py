"""Rollout with `rollout.compile` on and off: the fast engine's decode, eager vs torch.compile.

One process, the built-in tiny model (fp32), P prompts of the built-in structured task x G
completions, temperature 1, at most L new tokens. Two `FastEngine`s over the same model,
one with compile=True. The compiled one's first `generate` compiles its decode step
(`first_call_s`: a cold inductor cache costs more than a warm one, which
`$TORCHINDUCTOR_CACHE_DIR` or /tmp/torchinductor_$USER keeps between processes); then
--rounds rounds, each generating once with each engine from the same seed (the side going
first alternates), so both see the same prompts, draws and load.

Per configuration: `us_per_token` (median over the rounds of wall time / generated tokens)
for each side, `speedup` = eager / compiled, and `same_tokens_rows`: how many of the first
round's rows the two engines completed identically (the compiled step rounds differently,
which can flip a sampled token; on the tiny model it has not).

    python benchmarks/decode_compile.py                        # ~1 min on 2 cores, warm cache
    python benchmarks/decode_compile.py --configs 4,16,256 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from _proc import cpu_name  # noqa: E402  (benchmarks/_proc.py)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["4,8,128", "4,16,256"], help="P,G,L")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    from posttrain.config import ModelConfig
    from posttrain.data.chat import tokenize_prompt
    from posttrain.data.tasks import generate
    from posttrain.models.load import load_model_and_tokenizer
    from posttrain.rollout import FastEngine, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer(ModelConfig(path="builtin:tiny"))
    engines = {"eager": FastEngine(model, tok), "compiled": FastEngine(model, tok, compile=True)}
    out = {"benchmark": "decode_compile", "device": f"{cpu_name()}, {os.cpu_count()} cpus, cpu only",
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "configs": {}}
    first_call = None
    for cfg in args.configs:
        p, g, length = (int(x) for x in cfg.split(","))
        prompts = [tokenize_prompt(tok, e.prompt_messages) for e in generate("structured", "train", p)]
        params = SamplingParams(temperature=1.0, max_new_tokens=length)
        if first_call is None:
            t0 = time.perf_counter()
            engines["compiled"].generate(prompts, params, n=g)
            first_call = time.perf_counter() - t0
        us = {k: [] for k in engines}
        rows = {}
        for r in range(args.rounds):
            for k in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
                torch.manual_seed(1000 + r)
                t0 = time.perf_counter()
                ro = engines[k].generate(prompts, params, n=g)
                dt = time.perf_counter() - t0
                us[k].append(dt / max(sum(map(len, ro.completion_ids)), 1) * 1e6)
                if r == 0:
                    rows[k] = ro.completion_ids
        med = {k: statistics.median(v) for k, v in us.items()}
        out["configs"][cfg] = {
            "us_per_token": {k: round(v, 1) for k, v in med.items()},
            "speedup": round(med["eager"] / med["compiled"], 3),
            "same_tokens_rows": f"{sum(a == b for a, b in zip(rows['eager'], rows['compiled']))}/{p * g}",
        }
        print(f"  [{cfg}] eager {med['eager']:.1f} us/token, compiled {med['compiled']:.1f}: "
              f"x{out['configs'][cfg]['speedup']}", file=sys.stderr)
    out["first_call_s"] = round(first_call, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
