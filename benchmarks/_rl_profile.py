"""`benchmarks/rl_step_vs_trl.py --profile N`: where a posttrain RL step's time goes (cProfile)."""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time


def _profile_targets() -> dict:
    """{phase: [(label, function)]}: what --profile reports, as cumulative seconds per step,
    for the default paths (fast engine, shared-prompt update); the hf engine's and the plain
    forward's rows read 0 unless a model falls back to them."""
    import torch
    from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM

    from posttrain.models.logprobs import model_token_logprobs, token_logprobs
    from posttrain.models.prefix import batch_token_logprobs, shared_prefix_logprobs
    from posttrain.objectives.loss import policy_loss
    from posttrain.rewards.base import RewardSet, _Worker
    from posttrain.rollout import fast
    from posttrain.rollout.hf import HFEngine, sample_next
    from posttrain.train import rl, rl_batch
    from posttrain.train.loop import optimizer_step

    return {
        "rollout": [("engine.generate (whole rollout)", fast.FastEngine.generate),
                    ("fast decoder forward (prefill + decode)", fast._Decoder.forward),
                    ("hf model forward (fallback path only)", Qwen3ForCausalLM.forward),
                    ("sample_next (log_softmax, softmax, Gumbel, gather)", sample_next),
                    ("tokenizer.decode (HFEngine._text)", HFEngine._text)],
        "reward": [("RewardSet.evaluate (whole reward)", RewardSet.evaluate),
                   ("reward-worker round trips (_Worker.call)", _Worker.call)],
        "train": [("_update (whole update)", rl._update),
                  ("batch_token_logprobs (forward + chunked head)", batch_token_logprobs),
                  ("shared_prefix_logprobs (the shared-prompt forward)", shared_prefix_logprobs),
                  ("model_token_logprobs (plain forward, fallback only)", model_token_logprobs),
                  ("token_logprobs (chunked LM head)", token_logprobs),
                  ("backward", torch.Tensor.backward),
                  ("policy_loss", policy_loss),
                  ("optimizer_step (clip + AdamW + schedule)", optimizer_step),
                  ("build_batch (before the update)", rl_batch.build_batch)],
    }


def _profile_rows(stats, steps: int) -> dict:
    """{phase: {label: cumulative seconds per step}} from a pstats.Stats."""
    import inspect

    by_key = {key: ct for key, (_cc, _nc, _tt, ct, _callers) in stats.stats.items()}
    out = {}
    for phase, rows in _profile_targets().items():
        out[phase] = {}
        for label, fn in rows:
            if isinstance(fn, str):  # a builtin: pstats keys it as ("~", 0, name)
                key = ("~", 0, fn)
            else:
                code = inspect.unwrap(fn).__code__
                key = (code.co_filename, code.co_firstlineno, code.co_name)
            out[phase][label] = round(by_key.get(key, 0.0) / steps, 4)
    return out


def profile_posttrain(args, config: tuple[int, int, int], threads: int, posttrain_context) -> None:
    """cProfile --profile posttrain steps (after --warmup) of `config` (P, G, L);
    `posttrain_context(args, p, g, length, out_dir)` builds the RL context as the benchmark does."""
    p, g, length = config
    with tempfile.TemporaryDirectory() as out_dir:
        ctx, rl_step = posttrain_context(args, p, g, length, out_dir)
        for _ in range(args.warmup):
            rl_step(ctx)
        # the same steps unprofiled first, to show cProfile's own overhead
        plain = []
        for _ in range(args.profile):
            t = time.perf_counter()
            rl_step(ctx)
            plain.append(time.perf_counter() - t)
        prof = cProfile.Profile()
        recs = []
        prof.enable()
        for _ in range(args.profile):
            recs.append(rl_step(ctx))
        prof.disable()
    keys = ["time/step", "time/rollout", "time/reward", "time/old_logp", "time/train"]
    mean = {k.split("/")[1]: round(sum(r[k] for r in recs) / len(recs), 4) for k in keys}
    stats = pstats.Stats(prof)
    rows = _profile_rows(stats, args.profile)
    print(f"config P={p} G={g} L={length}, {threads} threads: {args.profile} steps unprofiled "
          f"{statistics.mean(plain):.3f} s/step; profiled, mean per step: {mean}", file=sys.stderr)
    for phase, items in rows.items():
        print(f"  {phase}:", file=sys.stderr)
        for label, t in items.items():
            print(f"    {t:8.4f} s/step  {label}", file=sys.stderr)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
    print(buf.getvalue(), file=sys.stderr)
    print(json.dumps({"benchmark": "rl_step_vs_trl", "profile": True, "config": args.configs[0],
                      "threads": threads, "steps": args.profile,
                      "unprofiled_s_per_step": round(statistics.mean(plain), 4),
                      "profiled_mean_s": mean, "profiled_s_per_step": rows}))
