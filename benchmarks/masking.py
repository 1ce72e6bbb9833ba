"""Padding clean-up on CPU: what NaN-safety costs against a plain 0/1 multiplication.

`policy_loss` sets every input to 0 at padding, so that whatever sits there (even NaN or
inf) is never read, forward or backward: with `bitwise` for its constant inputs and
`where` for the one that needs a gradient (posttrain/objectives/padding.py). The bare
expressions of benchmarks/objectives.py mask by multiplying with the 0/1 float mask, which
is the same math for finite inputs but lets a NaN at padding through (NaN * 0 = NaN). This
script times the candidates on one (B, T) fp32 tensor, side by side in one run:

    where        torch.where(valid, x, 0)              NaN-safe, differentiable
    masked_fill  x.masked_fill(~valid, 0)              NaN-safe, differentiable
    mul          x * weight (0/1 float)                not NaN-safe, differentiable
    bitwise      (x.view(int32) & bits).view(float32)  NaN-safe, forward only (no autograd
                 through an integer view), bits = -valid as int32 (all ones where valid)

`forward` times the op on a detached tensor; `forward_backward` times op(x).sum().backward()
on a leaf (bitwise has none). Every side's median is over --reps rounds, interleaved with
the side going first rotating. It prints a table to stderr and ONE JSON object to stdout,
with `ratio_to_mul` = side median / mul median for both timings.

    python benchmarks/masking.py --threads 1      # ~10 s
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch


def make(b: int, t: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(t // 4, t + 1, (b,), generator=g)
    valid = torch.arange(t)[None, :] < lengths[:, None]  # (B, T) bool, right padding
    x = torch.randn(b, t, generator=g)
    x[~valid] = float("nan")  # what the NaN-safe sides must never read
    return x, valid


def sides(x: torch.Tensor, valid: torch.Tensor) -> dict:
    zero, invalid = torch.zeros(()), ~valid
    weight = valid.view(torch.uint8).to(torch.float32)
    bits = valid.to(torch.int32).neg_()
    return {
        "where": lambda v: torch.where(valid, v, zero),
        "masked_fill": lambda v: v.masked_fill(invalid, 0.0),
        "mul": lambda v: v * weight,
        "bitwise": lambda v: (v.view(torch.int32) & bits).view(torch.float32),
    }


def timed(fns: dict, arg_of, reps: int, warmup: int, backward: bool) -> dict:
    times = {k: [] for k in fns}
    names = list(fns)
    for i in range(warmup + reps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            arg = arg_of()
            t = time.perf_counter()
            out = fns[name](arg)
            if backward:
                out.sum().backward()
            dt = time.perf_counter() - t
            if i >= warmup:
                times[name].append(dt)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=[64, 512], metavar=("B", "T"))
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x, valid = make(*args.shape, seed=0)
    fns = sides(x, valid)
    for name in ("where", "masked_fill", "bitwise"):  # the NaN-safe ones really are
        out = fns[name](x)
        if not (torch.isfinite(out).all() and (out[~valid] == 0).all() and torch.equal(out[valid], x[valid])):
            raise SystemExit(f"{name}: padding not cleaned to 0, or valid values changed")
    fwd = timed(fns, lambda: x, args.reps, args.warmup, backward=False)
    leaf = torch.where(valid, x, torch.zeros(()))  # finite, so mul's backward is comparable
    diff = {k: f for k, f in fns.items() if k != "bitwise"}

    def fresh_leaf():
        return leaf.clone().requires_grad_(True)

    fb = timed(diff, fresh_leaf, args.reps, args.warmup, backward=True)
    print(f"{'side':<13}{'forward us':>12}{'/ mul':>7}{'fwd+bwd us':>12}{'/ mul':>7}", file=sys.stderr)
    for name in fns:
        f_b = f"{fb[name]:>12.1f}{fb[name] / fb['mul']:>7.2f}" if name in fb else f"{'-':>12}{'-':>7}"
        print(f"{name:<13}{fwd[name]:>12.1f}{fwd[name] / fwd['mul']:>7.2f}{f_b}", file=sys.stderr)
    print(json.dumps({
        "shape": args.shape, "threads": torch.get_num_threads(), "reps": args.reps,
        "forward_us": {k: round(v, 2) for k, v in fwd.items()},
        "forward_backward_us": {k: round(v, 2) for k, v in fb.items()},
        "ratio_to_mul": {"forward": {k: round(v / fwd["mul"], 2) for k, v in fwd.items()},
                         "forward_backward": {k: round(v / fb["mul"], 2) for k, v in fb.items()}},
        "torch": torch.__version__, "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
