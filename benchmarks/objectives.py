"""Policy objectives: `posttrain.objectives.policy_loss` vs a bare-PyTorch expression of the same math.

For every registered objective (`posttrain.objectives.POLICY_LOSSES`) the script times
forward + backward on a (B, T) = (64, 512) batch of per-token log-probs:

    posttrain  out = policy_loss(name, logp, old_logp, advantages, mask, ..., metrics=False)
               out.loss.backward(): the full call (argument checks, padding clean-up, the
               composed objective) without the logged metrics -- the same work as `bare`
    +metrics   the same call with metrics=True (the default): also every metric the
               objective reports (ratio mean/max/min, clip fractions, gate weights, ...)
    trainer    the call as train/rl.py makes it: metrics on, and rollout_logp and entropy
               given, so the mismatch and entropy metrics are computed too
    bare       the textbook expression written below, independently of posttrain's code
               (e.g. PPO-clip `-min(r A, clip(r, 1 - eps_lo, 1 + eps_hi) A)` with the
               objective's aggregation as mask arithmetic); no metrics, no checks

Before any timing, both are run once and must agree: the loss (allclose, rtol 1e-5) and
the gradient w.r.t. logp (allclose, rtol 1e-5, atol 1e-8); the script stops if not.

The batch: logp = old_logp + N(0, 0.1^2) noise (so ratios spread around 1 and every clip
branch is hit), rollout_logp = old_logp + N(0, 0.05^2), advantages (B,) ~ N(0, 1), row
lengths uniform in [T/4, T] (right padding, mask bool). fp32, CPU by default.

Timing: --warmup untimed reps, then --reps rounds; in each round every side (posttrain,
bare, posttrain as the trainer calls it) runs once, the side going first rotating from
round to round (interleaved, so load changes hit
both alike). Each side's time is the median over rounds. Gradients are dropped between
reps. torch threads: the default (--threads to override).

Prints a table to stderr and ONE JSON object to stdout:
  objectives      {name: {"posttrain_ms", "bare_ms", "ratio", "loss", "max_abs_grad_diff"}}
  ratio           per objective: posttrain (metrics=False) median / bare median (< 1:
                  posttrain is faster), posttrain given the inputs the math reads
                  (rollout_logp only for reinforce_is)
  max_ratio       the largest of them (the issue's target: <= 1.5)
  with_metrics_ratio  the same with metrics=True; max_with_metrics_ratio the largest
  trainer_call_ratio  the same with the call as the RL trainer makes it: rollout_logp and
                  entropy given too, so the mismatch and entropy metrics are computed (work
                  the bare expression does not do); max_trainer_call_ratio the largest
  load_before     /proc/loadavg's 1-minute figure before the run

    python benchmarks/objectives.py                   # ~30 s on 2 idle CPU cores
    python benchmarks/objectives.py --reps 50 --shape 16 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from posttrain.objectives import POLICY_LOSSES, policy_loss  # noqa: E402

MAX_COMPLETION_LEN = 512  # dr_grpo's constant normaliser (the generation cap)


# ---- the bare-PyTorch references: textbook expressions, mask arithmetic, no metrics -------


def _seq_mean_token_mean(l, m):  # l, m (B, T) float
    return ((l * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def _token_mean(l, m):
    return (l * m).sum() / m.sum().clamp(min=1)


def _ppo_clip(r, a, lo, hi):
    return -torch.min(r * a, torch.clamp(r, 1 - lo, 1 + hi) * a)


def bare_grpo(logp, old, adv, m, rollout):
    r = torch.exp((logp - old) * m)
    return _seq_mean_token_mean(_ppo_clip(r, adv[:, None], 0.2, 0.2), m)


def bare_dr_grpo(logp, old, adv, m, rollout):
    r = torch.exp((logp - old) * m)
    return (_ppo_clip(r, adv[:, None], 0.2, 0.2) * m).sum() / (m.shape[0] * MAX_COMPLETION_LEN)


def bare_dapo(logp, old, adv, m, rollout):
    r = torch.exp((logp - old) * m)
    return _token_mean(_ppo_clip(r, adv[:, None], 0.2, 0.28), m)


def bare_gspo(logp, old, adv, m, rollout):
    # GSPO: s_i = exp(mean over the row's tokens of log r); one clipped term per sequence
    s = torch.exp(((logp - old) * m).sum(1) / m.sum(1).clamp(min=1))  # (B,)
    return _ppo_clip(s, adv, 3e-4, 4e-4).mean()


def bare_gspo_token(logp, old, adv, m, rollout):
    log_s = (((logp - old) * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)).detach()
    s = torch.exp(log_s + (logp - logp.detach()) * m)  # value s_i, gradient s_i * grad logp
    return _seq_mean_token_mean(_ppo_clip(s, adv[:, None], 3e-4, 4e-4), m)


def bare_sapo(logp, old, adv, m, rollout):
    r = torch.exp((logp - old) * m)
    a = adv[:, None]
    tau = torch.where(a > 0, 1.0, 1.05)
    return _seq_mean_token_mean(-(4 / tau) * torch.sigmoid(tau * (r - 1)) * a, m)


def bare_cispo(logp, old, adv, m, rollout):
    r = torch.exp((logp - old) * m).detach()
    return _token_mean(-torch.clamp(r, max=5.0) * adv[:, None] * logp, m)


def bare_reinforce_is(logp, old, adv, m, rollout):
    # sg(pi / pi_old) * (pi_old / pi_rollout) * A * logp, summed per row, mean over rows
    w = torch.exp((logp.detach() - old) * m) * torch.exp((old - rollout) * m)
    return ((-w * adv[:, None] * logp) * m).sum() / m.shape[0]


BARE = {
    "grpo": bare_grpo, "dr_grpo": bare_dr_grpo, "dapo": bare_dapo, "gspo": bare_gspo,
    "gspo_token": bare_gspo_token, "sapo": bare_sapo, "cispo": bare_cispo,
    "reinforce_is": bare_reinforce_is,
}
EXTRA = {"dr_grpo": {"max_completion_len": MAX_COMPLETION_LEN}}


# ---- the batch and the two callables ---------------------------------------------------


def make_batch(b: int, t: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) * 4 - 0.05  # (B, T) log-probs in (-4, 0)
    logp = old + 0.1 * torch.randn(b, t, generator=g)
    rollout = old + 0.05 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)  # (B,)
    lengths = torch.randint(t // 4, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T) bool, right padding
    entropy = torch.rand(b, t, generator=g) * 3
    return {"logp": logp, "old": old, "rollout": rollout, "adv": adv, "mask": mask, "entropy": entropy}


NEEDS_ROLLOUT = {"reinforce_is"}  # objectives whose math reads rollout_logp (mismatch="token")


def posttrain_fn(name: str, batch: dict, trainer: bool = False, metrics: bool = True):
    """The call on the inputs the math reads; with `trainer`, as `train/rl.py` makes it:
    also rollout_logp (mismatch metrics) and the entropy tensor (entropy/mean metric)."""
    extra = dict(EXTRA.get(name, {}), metrics=metrics)
    if trainer or name in NEEDS_ROLLOUT:
        extra["rollout_logp"] = batch["rollout"]
    if trainer:
        extra["entropy"] = batch["entropy"]

    def run(logp):
        out = policy_loss(name, logp, batch["old"], batch["adv"], batch["mask"], **extra)
        out.loss.backward()
        return out.loss

    return run


def bare_fn(name: str, batch: dict):
    fn, m = BARE[name], batch["mask"].float()

    def run(logp):
        loss = fn(logp, batch["old"], batch["adv"], m, batch["rollout"])
        loss.backward()
        return loss

    return run


def check_same(name: str, batch: dict) -> dict:
    """Loss and grad of both sides on the same inputs; raises if they differ."""
    res = {}
    for side, make in (("posttrain", posttrain_fn), ("bare", bare_fn)):
        logp = batch["logp"].clone().requires_grad_(True)
        loss = make(name, batch)(logp)
        res[side] = (loss.detach(), logp.grad)
    (lp, gp), (lb, gb) = res["posttrain"], res["bare"]
    if not torch.allclose(lp, lb, rtol=1e-5, atol=1e-8) or not torch.allclose(gp, gb, rtol=1e-5, atol=1e-8):
        raise SystemExit(f"{name}: posttrain and the bare expression disagree: loss {float(lp)} vs "
                         f"{float(lb)}, max |grad diff| {float((gp - gb).abs().max()):.3e}")
    return {"loss": float(lp), "max_abs_grad_diff": float((gp - gb).abs().max())}


def time_pair(name: str, batch: dict, warmup: int, reps: int, clock=time.perf_counter) -> dict:
    fns = {"posttrain": posttrain_fn(name, batch, metrics=False), "bare": bare_fn(name, batch),
           "metrics": posttrain_fn(name, batch), "trainer": posttrain_fn(name, batch, trainer=True)}
    leaf = batch["logp"].clone().requires_grad_(True)
    times = {k: [] for k in fns}

    def once(side):
        leaf.grad = None
        t = clock()
        fns[side](leaf)
        return clock() - t

    sides = list(fns)
    for _ in range(warmup):
        for side in sides:
            once(side)
    for i in range(reps):
        k = i % len(sides)
        for side in sides[k:] + sides[:k]:  # rotate who goes first
            times[side].append(once(side))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"posttrain_ms": round(med["posttrain"] * 1e3, 4), "bare_ms": round(med["bare"] * 1e3, 4),
            "ratio": round(med["posttrain"] / med["bare"], 3),
            "with_metrics_ms": round(med["metrics"] * 1e3, 4),
            "with_metrics_ratio": round(med["metrics"] / med["bare"], 3),
            "trainer_call_ms": round(med["trainer"] * 1e3, 4),
            "trainer_call_ratio": round(med["trainer"] / med["bare"], 3)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=[64, 512], metavar=("B", "T"))
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--objectives", nargs="*", help="default: every registered objective")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: process CPU time (all threads), which a busy "
                         "machine's preemption inflates less (use with --threads 1)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.objectives or list(POLICY_LOSSES.names())
    missing = [n for n in names if n not in BARE]
    if missing:
        raise SystemExit(f"no bare reference for {', '.join(missing)}: add one to benchmarks/objectives.py")
    load = float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else None
    batch = make_batch(*args.shape, args.seed)
    results = {}
    t0 = time.perf_counter()
    for name in names:
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        results[name] = {**check_same(name, batch), **time_pair(name, batch, args.warmup, args.reps, clock)}
    wall = time.perf_counter() - t0
    print(f"{'objective':<14}{'posttrain ms':>14}{'bare ms':>10}{'ratio':>8}{'+metrics ms':>13}{'ratio':>8}"
          f"{'trainer-call ms':>17}{'ratio':>8}", file=sys.stderr)
    for name, r in results.items():
        print(f"{name:<14}{r['posttrain_ms']:>14.3f}{r['bare_ms']:>10.3f}{r['ratio']:>8.2f}"
              f"{r['with_metrics_ms']:>13.3f}{r['with_metrics_ratio']:>8.2f}"
              f"{r['trainer_call_ms']:>17.3f}{r['trainer_call_ratio']:>8.2f}", file=sys.stderr)
    ratios = {n: r["ratio"] for n, r in results.items()}
    trainer = {n: r["trainer_call_ratio"] for n, r in results.items()}
    with_m = {n: r["with_metrics_ratio"] for n, r in results.items()}
    print(json.dumps({
        "shape": args.shape, "dtype": "float32", "device": "cpu", "threads": torch.get_num_threads(),
        "warmup": args.warmup, "reps": args.reps, "clock": args.clock, "objectives": results, "ratio": ratios,
        "max_ratio": max(ratios.values()), "max_ratio_objective": max(ratios, key=ratios.get),
        "with_metrics_ratio": with_m, "max_with_metrics_ratio": max(with_m.values()),
        "trainer_call_ratio": trainer, "max_trainer_call_ratio": max(trainer.values()),
        "wall_s": round(wall, 1), "load_before": load, "torch": torch.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
