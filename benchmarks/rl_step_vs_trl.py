"""One RL step, posttrain vs TRL's GRPOTrainer: seconds per step, generated tokens/s, peak RSS.

Both sides run the same work per optimizer step:

  * model      the built-in tiny model (`builtin:tiny`, a 0.92M-parameter Qwen3ForCausalLM,
               fp32, SDPA attention), loaded from the same directory, full fine-tuning with
               AdamW at --lr (posttrain: torch.optim.AdamW; TRL: its default
               adamw_torch_fused), no weight decay; the schedules differ (posttrain cosine,
               TRL constant), which changes no work
  * prompts    P prompts of the built-in structured task (data.train = builtin structured,
               n = 256), rendered with the tokenizer's chat template. Both sides see the SAME
               prompts at every step: the TRL dataset is laid out in the order posttrain's
               prompt stream (`BatchStream`, seed --seed) draws them, and TRL reads it unshuffled
  * sampling   G completions per prompt, temperature 1, top_p 1, top_k 0, at most L new tokens
               (posttrain rollout.max_new_tokens = TRL max_completion_length), ending at
               EOS / <|im_end|>; no vLLM (posttrain: its HF engine; TRL: `model.generate`)
  * reward     one cheap reward, the same function on both sides: the share of the
               completion's characters that are JSON punctuation ({}[]":,). posttrain runs it
               through its registry and safe wrapper (`register_reward`, default isolation:
               a forked worker process); TRL calls it in-process, as GRPOTrainer does
  * objective  --objective dapo (default): clip-higher eps 0.2 / 0.28, token-mean over the
               step's tokens (posttrain rl.objective=dapo; TRL loss_type="dapo",
               epsilon=0.2, epsilon_high=0.28); or grpo: eps 0.2 / 0.2, mean over each
               sequence's tokens then over sequences (TRL loss_type="grpo"). Both: group
               advantages (r - mean) / std within each prompt's G completions (TRL
               scale_rewards="group"), beta = 0 (no reference model), one update per step
               (num_iterations = 1), gradient clipping at 1.0
  * batching   the whole step is one forward/backward: posttrain train.batch_size = P*G;
               TRL per_device_train_batch_size = P*G, num_generations = G,
               gradient_accumulation_steps = 1. No gradient checkpointing on either side
               (GRPOConfig defaults it to True; it is set False here), fp32 (bf16=False)

What one step is, on each side:

  posttrain  the wall time of one `posttrain.train.rl.rl_step(ctx)` call: rollout,
             reward, advantages, update (one AdamW step), metrics
  TRL        the wall time from the trainer's `on_step_begin` callback of step k to its
             `on_step_begin` of step k+1: generation, reward, advantages, forward/backward,
             clip + AdamW + scheduler step, TRL's own bookkeeping and the next batch's fetch

Each side runs in its own long-lived worker subprocess (so each side's peak RSS is its own),
driven one step at a time over a pipe: --warmup steps each (alternating), then --steps timed
rounds; in round i one side steps and then the other, the side going first alternating from
round to round, so load changes on the machine hit both sides alike. Only one side computes
at a time; torch uses its default thread count in both (--threads to override). Each
configuration in --configs (P,G,L) gets two fresh workers.

Per side and configuration the JSON gives:
  s_per_step         median wall seconds of the timed steps (s_per_step_mean, times_s too)
  tokens_per_s       generated completion tokens of the timed steps / their total seconds:
                     the fair speed figure when the two sides' completions end at different
                     lengths (a sampled EOS ends a completion early on either side)
  tokens_per_step    mean generated completion tokens per step (P * G * mean length)
  split_s            mean seconds per step in rollout (generation), reward and the rest
                     (advantages + update + bookkeeping). posttrain: its own time/* metrics;
                     TRL: timers wrapped around `_generate_single_turn` and the reward call
  peak_rss_mib       the worker process's resident-set high-water mark over its whole life
                     (VmHWM; imports, model, setup, warm-up and timed steps)
  rss_after_setup_mib  VmRSS when the worker is ready to step (imports + model + trainer)
  peak_rss_setup_warmup_mib  VmHWM through setup and the warm-up steps
  rss_before_timed_mib  VmRSS after the warm-up steps
  timed_peak_increase_mib  VmHWM over the timed steps minus rss_before_timed_mib (VmHWM is
                     reset through /proc/self/clear_refs after warm-up)
  reward_worker_peak_rss_mib  (posttrain) VmHWM of its forked reward-worker process, which
                     is not in peak_rss_mib
  cpu_s_per_step     median CPU-seconds (user + system) the side's processes used per step
  foreign_cpu_s      CPU-seconds that processes outside this benchmark used while this side
                     was timed (/proc/stat busy time minus this benchmark's process tree), and
                     foreign_cpu_s_max_step, the most in one step: about 0 on a quiet machine;
                     a step with a large figure shared the 2 cores with someone else
And per configuration:
  ratio              TRL s_per_step / posttrain s_per_step (> 1: posttrain is faster)
  tokens_ratio       posttrain tokens_per_s / TRL tokens_per_s (> 1: posttrain is faster)
and `growth`: each side's s_per_step and tokens_per_s in the last configuration over the
first, next to the growth in P * G * L. `effective` (per side) holds the settings read back
from each side's trainer after setup, to show they match.

GPU record (--model qwen3-0.6b --device cuda --dtype bfloat16): the same comparison with a
random-initialised Qwen3-0.6B-architecture model (benchmarks/_models.py; built once under
$POSTTRAIN_CACHE/bench), both sides in bf16 on the GPU, CUDA synchronised at every step
boundary. Each side then also reports `train_phase`: nominal 6 N tokens / rest-seconds
TFLOP/s and the MFU against the device's bf16 peak (by name, or --peak-tflops), and
`cuda_peak_allocated_mib`. --layers N keeps N layers of that architecture (a CPU smoke test
of the path). Not run in any session so far (no GPU lent):

    python benchmarks/rl_step_vs_trl.py --model qwen3-0.6b --device cuda --dtype bfloat16 \
        --configs 8,8,256 8,16,512

--profile N runs no comparison: it times N posttrain steps of the first configuration after
--warmup, then runs N more under cProfile and prints, per phase, the cumulative seconds per
step of the main functions (decoder forward, sampling, reward round trips, the shared-prompt
update forward, the chunked head, backward, optimizer; benchmarks/_rl_profile.py) and the top
functions by own time. cProfile adds about 10%.

    python benchmarks/rl_step_vs_trl.py                         # ~1 min on 2 idle CPU cores
    python benchmarks/rl_step_vs_trl.py --configs 4,4,64 --steps 3
    python benchmarks/rl_step_vs_trl.py --profile 3             # cProfile of posttrain steps only
    python benchmarks/rl_step_vs_trl.py --compile               # posttrain with rollout.compile=true

--compile turns on posttrain's opt-in `rollout.compile` (its decode step through
torch.compile, compiled once in the worker's first warm-up step: `warmup_s` shows it). TRL
runs as always, with `torch_compile` off (reading TRL 1.16's source: that option hands the
model to accelerate's dynamo plugin, and generation calls `generate` on the unwrapped
model; not run here), so this row compares posttrain's fastest setting with TRL's default
one; the default row is the like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from _models import random_qwen3, train_phase_flops  # noqa: E402  (benchmarks/_models.py)
from _proc import Channel, PeakTracker, busy_s, cpu_name, status_kib, tree_cpu_s  # noqa: E402  (benchmarks/_proc.py)

JSON_PUNCT = set('{}[]":,')
OBJECTIVES = {  # posttrain objective -> the matching TRL settings
    "dapo": {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28},
    "grpo": {"loss_type": "grpo", "epsilon": 0.2, "epsilon_high": 0.2},
}


def json_punct_share(completion: str) -> float:
    """The reward both sides use: share of characters that are JSON punctuation, in [0, 1]."""
    if not completion:
        return 0.0
    return sum(ch in JSON_PUNCT for ch in completion) / len(completion)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["4,4,64", "4,8,128"],
                    help="P,G,L: prompts per step, completions per prompt, max new tokens")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side")
    ap.add_argument("--objective", default="dapo", choices=sorted(OBJECTIVES))
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--model", choices=["tiny", "qwen3-0.6b"], default="tiny",
                    help="builtin:tiny, or a random-initialised Qwen3-0.6B-architecture model (GPU record)")
    ap.add_argument("--layers", type=int, default=0, help="qwen3-0.6b: keep only this many layers (smoke test)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="device peak for the training-phase MFU (0: by device name, H100/H200/A100/L40S bf16)")
    ap.add_argument("--compile", action="store_true",
                    help="posttrain side: rollout.compile=true (its decode step through torch.compile; "
                         "the compile lands in the first warm-up step, reported as warmup_s)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="instead of the comparison: cProfile N posttrain steps (after --warmup) "
                         "of the first configuration and print the top costs per phase to stderr")
    ap.add_argument("--worker", choices=["posttrain", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def parse_config(text: str) -> tuple[int, int, int]:
    try:
        p, g, length = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--configs: {text!r} is not P,G,L (e.g. 4,8,128)") from None
    if p < 1 or g < 2 or length < 1:
        raise SystemExit(f"--configs {text}: need P >= 1, G >= 2 (GRPO needs a group), L >= 1")
    return p, g, length


# ---- workers: one side each, driven over a pipe ------------------------------------------
#
# Protocol (one JSON object per line): the worker writes {"ready": {...}} once set up, then
# answers each command read from stdin: "step" -> {"step": {...}}, "reset_peak" ->
# {"reset_peak": ...}, "stop" -> {"final": {...}} and exits. Its stdout (fd 1) is pointed at
# stderr so library prints cannot corrupt the protocol, which goes to a saved copy of fd 1
# (`_proc.Channel`); `_proc.PeakTracker` reports each worker's memory.


def _sync(args) -> None:
    """Wait for queued CUDA work, so wall time covers the step's kernels."""
    if args.device == "cuda":
        import torch
        torch.cuda.synchronize()


def _threads(args) -> int:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def posttrain_overrides(args, p: int, g: int, length: int) -> list[str]:
    return [
        f"model.path={args.model_path}",
        "data.train=[{kind: builtin, path: structured, n: 256}]",
        f"data.seed={args.seed}",
        f"rollout.group_size={g}", f"rollout.max_new_tokens={length}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.top_k=0", "rollout.min_p=0.0",
        "rollout.precision=same", f"rollout.batch_size={max(64, p * g)}",
        "rewards=[{name: punct, reward: bench_json_punct}]",
        f"rl.prompts_per_step={p}", f"rl.objective={args.objective}",
        "rl.advantage=grpo", "rl.advantage_scale=group", "rl.epochs=1", "rl.mini_batches=1",
        f"train.batch_size={p * g}", f"train.lr={args.lr}", "train.max_grad_norm=1.0",
        "train.warmup_steps=0", f"train.max_steps={10 * (args.warmup + args.steps + 2)}",
        "train.progress=false", f"train.seed={args.seed}",
        f"model.device={args.device}", f"model.dtype={args.dtype}",
        f"rollout.compile={str(args.compile).lower()}",
    ]


def posttrain_context(args, p: int, g: int, length: int, out_dir: str):
    from posttrain.config import RLRecipe, load_recipe
    from posttrain.rewards import REWARDS, register_reward
    from posttrain.train import rl

    if "bench_json_punct" not in REWARDS:
        register_reward("bench_json_punct", checks="share of characters that are JSON punctuation "
                        "(benchmark only)")(lambda completion, example: json_punct_share(completion))
    recipe = load_recipe(RLRecipe, None, posttrain_overrides(args, p, g, length))
    ctx, _, _ = rl.setup(recipe, Path(out_dir), resume=False)
    return ctx, rl.rl_step


def posttrain_effective(ctx) -> dict:
    """The settings posttrain actually runs with, read back from its context."""
    from posttrain.models.load import is_checkpointing
    from posttrain.objectives.loss import objective_params

    rc, rlc = ctx.recipe.rollout, ctx.recipe.rl
    params = {**objective_params(rlc.objective), **ctx.objective_params}
    return {"objective": rlc.objective, **{k: params[k] for k in ("eps_low", "eps_high", "beta", "aggregation")},
            "advantage": rlc.advantage, "advantage_scale": rlc.advantage_scale,
            "train_batch_size": ctx.recipe.train.batch_size, "rollout_batch_size": rc.batch_size,
            "rollout_engine": rc.engine, "rollout_compile": rc.compile,
            "gradient_checkpointing": is_checkpointing(ctx.model), "optim": type(ctx.optimizer).__name__,
            "device": str(ctx.device), "param_dtype": str(next(ctx.model.parameters()).dtype),
            "reward_isolated": ctx.rewards.rewards[0].spec.isolate}


def run_posttrain_worker(args, p: int, g: int, length: int) -> None:
    from posttrain.rewards import base as reward_base

    chan = Channel()
    threads = _threads(args)
    peaks = PeakTracker()
    with tempfile.TemporaryDirectory() as out_dir:
        t0 = time.perf_counter()
        ctx, rl_step = posttrain_context(args, p, g, length, out_dir)
        chan.send({"ready": {"setup_s": round(time.perf_counter() - t0, 2), "threads": threads,
                             "rss_mib": round(peaks.ready(), 1), "effective": posttrain_effective(ctx)}})
        while True:
            cmd = chan.recv()
            if cmd == "step":
                t = time.perf_counter()
                rec = rl_step(ctx)
                _sync(args)
                dt = time.perf_counter() - t
                chan.send({"step": {"s": dt, "tokens": rec["completion_len/mean"] * p * g,
                                    "rollout_s": rec["time/rollout"], "reward_s": rec["time/reward"],
                                    "completion_len_mean": rec["completion_len/mean"],
                                    "truncated_frac": rec["truncated_frac"], "reward_mean": rec["reward/mean"]}})
            elif cmd == "reset_peak":
                chan.send({"reset_peak": peaks.reset()})
            else:
                final = peaks.final()
                proc = reward_base._WORKER.proc  # the forked reward worker, if it was started
                if proc is not None and proc.is_alive():
                    final["reward_worker_peak_rss_mib"] = round(status_kib("VmHWM", proc.pid) / 1024, 1)
                chan.send({"final": final})
                return


def trl_dataset(args, p: int, n_steps: int):
    """The prompts in the order posttrain's stream draws them (same sources, seed and batch)."""
    from datasets import Dataset

    from posttrain.config import SourceConfig
    from posttrain.data.sources import load_sources
    from posttrain.train.loop import BatchStream

    examples = load_sources([SourceConfig(kind="builtin", path="structured", n=256)], seed=args.seed)
    stream = BatchStream(examples, p, lambda b: b, seed=args.seed, shard=(0, 1))
    ordered = [ex for _ in range(n_steps) for ex in stream.next()]
    return Dataset.from_list([{"prompt": ex.prompt_messages} for ex in ordered])


def trl_effective(trainer) -> dict:
    """The settings GRPOTrainer actually runs with, read back from the trainer."""
    a, m = trainer.args, trainer.model
    return {"loss_type": trainer.loss_type, "epsilon_low": trainer.epsilon_low,
            "epsilon_high": trainer.epsilon_high, "beta": trainer.beta, "scale_rewards": trainer.scale_rewards,
            "num_iterations": trainer.num_iterations, "generation_batch_size": a.generation_batch_size,
            "steps_per_generation": a.steps_per_generation,
            "gradient_checkpointing": bool(getattr(m, "is_gradient_checkpointing", False)),
            "optim": str(a.optim), "device": str(a.device), "param_dtype": str(next(m.parameters()).dtype)}


def trl_config(args, p: int, g: int, length: int, out_dir: str, max_steps: int):
    """GRPOConfig for the same step as posttrain's (see the module docstring)."""
    import trl

    return trl.GRPOConfig(
        output_dir=out_dir, use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16", fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=p * g, num_generations=g, gradient_accumulation_steps=1,
        max_completion_length=length, temperature=1.0, top_p=1.0, top_k=0, min_p=None,
        beta=0.0, num_iterations=1, scale_rewards="group", **OBJECTIVES[args.objective],
        mask_truncated_completions=False, use_vllm=False, shuffle_dataset=False,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=max_steps, seed=args.seed, data_seed=args.seed,
        report_to=[], logging_strategy="no", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
    )


def trl_stepper(trainer, chan: Channel, peaks: PeakTracker, acc: dict, threads: int, t_start: float, args):
    """A callback that holds the trainer at each step boundary until the driver says "step",
    and reports the previous step (its time runs from one on_step_begin to the next)."""
    from transformers import TrainerCallback

    class Stepper(TrainerCallback):
        t0 = None

        def on_step_begin(self, args_, state, control, **kw):
            _sync(args)
            now = time.perf_counter()
            if self.t0 is None:
                chan.send({"ready": {"setup_s": round(now - t_start, 2), "threads": threads,
                                     "rss_mib": round(peaks.ready(), 1), "effective": trl_effective(trainer)}})
            else:
                n = max(len(acc["rewards"]), 1)
                chan.send({"step": {"s": now - self.t0, "tokens": acc["tokens"],
                                    "rollout_s": acc["rollout_s"], "reward_s": acc["reward_s"],
                                    "completion_len_mean": acc["tokens"] / n,
                                    "truncated_frac": acc["truncated"] / n,
                                    "reward_mean": sum(acc["rewards"]) / n}})
            while True:
                cmd = chan.recv()
                if cmd == "reset_peak":
                    chan.send({"reset_peak": peaks.reset()})
                elif cmd == "step":
                    acc.update(tokens=0, rollout_s=0.0, reward_s=0.0, truncated=0, rewards=[])
                    self.t0 = time.perf_counter()
                    return control
                else:
                    chan.send({"final": peaks.final()})
                    chan.out.close()
                    os._exit(0)  # the trainer is mid-loop; nothing of it needs saving

    return Stepper()


def run_trl_worker(args, p: int, g: int, length: int) -> None:
    chan = Channel()
    threads, t_start = _threads(args), time.perf_counter()
    peaks = PeakTracker()
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=args.dtype)
    max_steps = 10 * (args.warmup + args.steps + 2)  # more than the driver asks for: it stops us
    dataset = trl_dataset(args, p, max_steps)
    acc = {"tokens": 0, "rollout_s": 0.0, "reward_s": 0.0, "truncated": 0, "rewards": []}
    gen_eos = model.generation_config.eos_token_id
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])}

    def reward_fn(prompts, completions, completion_ids, **kwargs):
        t = time.perf_counter()
        scores = [json_punct_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]
        acc["reward_s"] += time.perf_counter() - t
        # bookkeeping for the benchmark, outside the reward's timer
        acc["tokens"] += sum(len(ids) for ids in completion_ids)
        acc["truncated"] += sum(bool(ids) and ids[-1] not in ends for ids in completion_ids)
        acc["rewards"] += scores
        return scores

    reward_fn.__name__ = "json_punct_share"
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward_fn], processing_class=tokenizer,
                                  args=trl_config(args, p, g, length, out_dir, max_steps),
                                  train_dataset=dataset)
        generate = trainer._generate_single_turn

        def timed_generate(*a, **kw):
            t = time.perf_counter()
            try:
                return generate(*a, **kw)
            finally:
                acc["rollout_s"] += time.perf_counter() - t

        trainer._generate_single_turn = timed_generate  # a timer only; behaviour unchanged
        trainer.add_callback(trl_stepper(trainer, chan, peaks, acc, threads, t_start, args))
        trainer.train()
        raise RuntimeError(f"TRL ran out of its {max_steps} steps before the driver said stop")


# ---- driver -------------------------------------------------------------------------------


class Worker:
    def __init__(self, side: str, config: str, argv: list[str], model_path: str, log_dir: Path):
        self.side = side
        self.log = log_dir / f"{side}-{config.replace(',', 'x')}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--configs", config,
               "--worker", side, "--model-path", model_path]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log.open("w"), text=True, bufsize=1)

    def read(self, key: str):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log.read_text()[-4000:]
            raise SystemExit(f"{self.side} worker exited (code {self.proc.returncode}) waiting for "
                             f"{key!r}; the end of its log {self.log}:\n{tail}")
        msg = json.loads(line)
        if key not in msg:
            raise SystemExit(f"{self.side} worker: expected {key!r}, got {msg}")
        return msg[key]

    def ask(self, cmd: str, key: str):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read(key)

    def close(self) -> dict:
        final = self.ask("stop", "final")
        self.proc.wait(timeout=60)
        return final


def summarise(steps: list[dict], final: dict, ready: dict) -> dict:
    times = [s["s"] for s in steps]
    total_s, tokens = sum(times), sum(s["tokens"] for s in steps)
    n = len(steps)
    rollout = sum(s["rollout_s"] for s in steps) / n
    reward = sum(s["reward_s"] for s in steps) / n
    return {
        "s_per_step": round(statistics.median(times), 4),
        "s_per_step_mean": round(total_s / n, 4),
        "times_s": [round(t, 4) for t in times],
        "tokens_per_s": round(tokens / total_s, 1),
        "tokens_per_step": round(tokens / n, 1),
        "completion_len_mean": round(statistics.mean(s["completion_len_mean"] for s in steps), 2),
        "truncated_frac": round(statistics.mean(s["truncated_frac"] for s in steps), 3),
        "reward_mean": round(statistics.mean(s["reward_mean"] for s in steps), 4),
        "split_s": {"rollout": round(rollout, 4), "reward": round(reward, 4),
                    "rest": round(total_s / n - rollout - reward, 4)},
        "cpu_s_per_step": round(statistics.median(s["cpu_s"] for s in steps), 3),
        "foreign_cpu_s": round(sum(s["foreign_cpu_s"] for s in steps), 2),
        "foreign_cpu_s_max_step": round(max(s["foreign_cpu_s"] for s in steps), 2),
        "setup_s": ready["setup_s"],
        **final,
        "effective": ready.get("effective"),
    }


def run_config(config: str, argv: list[str], args, model_path: str, log_dir: Path) -> dict:
    p, g, length = parse_config(config)
    workers = {side: Worker(side, config, argv, model_path, log_dir) for side in ("posttrain", "trl")}
    try:
        ready = {side: w.read("ready") for side, w in workers.items()}
        print(f"  [{config}] ready: " + ", ".join(f"{k} setup {v['setup_s']} s, {v['rss_mib']} MiB"
                                                 for k, v in ready.items()), file=sys.stderr)
        steps = {side: [] for side in workers}
        warm = {side: [] for side in workers}
        order = ["posttrain", "trl"]
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                for w in workers.values():
                    w.ask("reset_peak", "reset_peak")
            for side in (order if i % 2 == 0 else order[::-1]):
                busy0, mine0, side0 = busy_s(), tree_cpu_s(os.getpid()), tree_cpu_s(workers[side].proc.pid)
                r = workers[side].ask("step", "step")
                busy1, mine1, side1 = busy_s(), tree_cpu_s(os.getpid()), tree_cpu_s(workers[side].proc.pid)
                r["cpu_s"] = side1 - side0
                r["foreign_cpu_s"] = max(0.0, (busy1 - busy0) - (mine1 - mine0))
                (steps if i >= args.warmup else warm)[side].append(r)
                print(f"  [{config}] {'warm-up' if i < args.warmup else 'timed'} step {i} {side}: "
                      f"{r['s']:.3f} s, {r['tokens']:.0f} tokens, cpu {r['cpu_s']:.2f} s, "
                      f"other processes {r['foreign_cpu_s']:.2f} cpu-s", file=sys.stderr)
        finals = {side: w.close() for side, w in workers.items()}
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
    out = {side: summarise(steps[side], finals[side], ready[side]) for side in workers}
    for side in workers:  # a compiled rollout pays its compile in the first of these
        out[side]["warmup_s"] = [round(r["s"], 3) for r in warm[side]]
    prompts = prompt_tokens_per_step(args, p, args.warmup + args.steps, model_path)[args.warmup:]
    train_phase_flops(out, g * statistics.mean(prompts), model_path, args.device, args.peak_tflops)
    out["threads"] = ready["posttrain"]["threads"]
    out["prompts"], out["group_size"], out["max_new_tokens"] = p, g, length
    out["ratio"] = round(out["trl"]["s_per_step"] / out["posttrain"]["s_per_step"], 3)
    out["ratio_mean"] = round(out["trl"]["s_per_step_mean"] / out["posttrain"]["s_per_step_mean"], 3)
    out["tokens_ratio"] = round(out["posttrain"]["tokens_per_s"] / out["trl"]["tokens_per_s"], 3)
    return out


def prompt_tokens_per_step(args, p: int, n_steps: int, model_path: str) -> list[int]:
    """Prompt tokens of each step's P prompts (both sides draw the same prompts per step)."""
    from transformers import AutoTokenizer

    from posttrain.data.chat import tokenize_prompt
    tok = AutoTokenizer.from_pretrained(model_path)
    lens = [len(tokenize_prompt(tok, r["prompt"])) for r in trl_dataset(args, p, n_steps)]
    return [sum(lens[i * p:(i + 1) * p]) for i in range(n_steps)]


def versions() -> dict:
    import datasets
    import torch
    import transformers
    import trl
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "datasets": datasets.__version__}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    for c in args.configs:
        parse_config(c)
    if args.worker:
        config = parse_config(args.configs[0])
        (run_posttrain_worker if args.worker == "posttrain" else run_trl_worker)(args, *config)
        return
    from posttrain.models.tiny import cache_dir, resolve_builtin
    args.model_path = resolve_builtin("builtin:tiny")
    if args.model != "tiny":
        args.model_path = random_qwen3(cache_dir() / "bench", args.model_path, args.layers, args.dtype)
    if args.profile:
        from _rl_profile import profile_posttrain
        profile_posttrain(args, parse_config(args.configs[0]), _threads(args), posttrain_context)
        return
    base_argv = ["--device", args.device, "--dtype", args.dtype,
                 "--warmup", str(args.warmup), "--steps", str(args.steps), "--objective", args.objective,
                 "--lr", repr(args.lr), "--seed", str(args.seed), "--threads", str(args.threads),
                 *(["--compile"] if args.compile else [])]
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    configs = {}
    with tempfile.TemporaryDirectory() as logs:
        for c in args.configs:
            configs[c] = run_config(c, base_argv, args, args.model_path, Path(logs))
    first, last = configs[args.configs[0]], configs[args.configs[-1]]
    work = lambda c: c["group_size"] * c["max_new_tokens"] * c["prompts"]  # noqa: E731
    result = {
        "benchmark": "rl_step_vs_trl",
        "device": f"{cpu_name()}, {os.cpu_count()} cpus, {first['threads']} torch threads, cpu only",
        "versions": versions(),
        "settings": {"objective": args.objective, "warmup": args.warmup, "steps": args.steps,
                     "posttrain_rollout_compile": args.compile,
                     "lr": args.lr, "seed": args.seed, "model": "builtin:tiny", "model_path": args.model_path,
                     "temperature": 1.0, "top_p": 1.0, "beta": 0.0, "num_iterations": 1,
                     "reward": "share of JSON punctuation characters (same function both sides)",
                     "data": "builtin structured, n=256, same prompts per step on both sides"},
        "configs": configs,
        "ratio": {c: r["ratio"] for c, r in configs.items()},
        "tokens_ratio": {c: r["tokens_ratio"] for c, r in configs.items()},
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if len(configs) > 1:
        result["growth"] = {
            "work_ratio": round(work(last) / work(first), 3),
            **{side: {"s_per_step": round(last[side]["s_per_step"] / first[side]["s_per_step"], 3),
                      "tokens_per_s": round(last[side]["tokens_per_s"] / first[side]["tokens_per_s"], 3)}
               for side in ("posttrain", "trl")},
        }
    print(f"{'config':>10} {'side':>10} {'s/step':>8} {'tok/s':>8} {'tok/step':>9} {'rollout':>8} "
          f"{'reward':>7} {'rest':>7} {'peak MiB':>9}", file=sys.stderr)
    for c, r in configs.items():
        for side in ("posttrain", "trl"):
            s = r[side]
            print(f"{c:>10} {side:>10} {s['s_per_step']:8.3f} {s['tokens_per_s']:8.1f} {s['tokens_per_step']:9.1f} "
                  f"{s['split_s']['rollout']:8.3f} {s['split_s']['reward']:7.3f} {s['split_s']['rest']:7.3f} "
                  f"{s['peak_rss_mib']:9.1f}", file=sys.stderr)
        print(f"{c:>10} ratio (TRL/posttrain s/step) = {r['ratio']}, tokens_ratio = {r['tokens_ratio']}",
              file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
