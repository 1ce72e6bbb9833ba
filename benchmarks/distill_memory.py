"""Chunked draft-distillation terms vs plain autograd: peak memory and time, side by side.

Each case runs forward + backward of distill_loss("survival_eal", ...) (it reads every
per-position term: KL_k, log a_k, the argmaxes) on R = N K positions of fp32 logits over a
vocabulary V (default 151,936, Qwen3's):

    plain    the same BlockTerms built with plain autograd ops (this module's `plain_terms`,
             the first implementation in posttrain: log_softmax of each side over the whole
             (N, K, V), KL as an einsum, log a_k a gather) and fed to the registered loss
    chunked  posttrain.objectives.distill.block_terms (custom autograd function, chunks of
             --chunk positions)

Every case runs in a fresh subprocess (one case's allocator state cannot leak into the next).
Memory (MiB = 2**20 bytes), CPU: the process's resident-set high-water mark above a baseline
taken after the inputs (draft logits, target logits, mask) are allocated: the worker writes
"5" to /proc/self/clear_refs (resets VmHWM to VmRSS, Linux >= 4.0), records VmRSS, runs the
warm-up and timed reps, and reports VmHWM - baseline. CUDA: max_memory_allocated() after
reset_peak_memory_stats(), minus memory_allocated() after the inputs.
`grad_mib` = R V 4 bytes, the gradient w.r.t. the draft logits, which any implementation
returns; `extra_mib` = peak - grad_mib, `extra_vs_logits` the same in units of one (R, V)
fp32 tensor. A plain case whose estimate (PLAIN_TENSORS (R, V) fp32 tensors) exceeds
--plain-limit-gib is skipped and recorded as such.

Prints a table to stderr and one JSON object to stdout:

    python benchmarks/distill_memory.py                       # CPU, V = 151936
    python benchmarks/distill_memory.py --device cuda --rows 2048 4096 8192
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from posttrain.objectives.distill import BlockTerms, distill_loss  # noqa: E402
from posttrain.objectives import distill as distill_mod  # noqa: E402
from _proc import reset_peak, status_kib  # noqa: E402  (benchmarks/_proc.py)

MIB = 2**20
PLAIN_TENSORS = 6  # (R, V) fp32 tensors the plain path holds at its peak, with the gradient


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--block", type=int, default=16, help="block size B; K = B - 1 positions a block")
    p.add_argument("--rows", type=int, nargs="*", default=[240, 480, 960, 1920],
                   help="positions R = N K per case (rounded down to a multiple of K)")
    p.add_argument("--chunk", type=int, default=240, help="chunk_positions of the chunked path")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--plain-limit-gib", type=float, default=6.0)
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "ROWS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def plain_terms(draft_logits, target_logits, mask, temperature=1.0, chunk=None):
    """BlockTerms with plain autograd over the whole (N, K, V) (T = 1 only)."""
    valid = mask.bool()
    logq = F.log_softmax(draft_logits.float(), dim=-1)  # (N, K, V), saved for backward
    with torch.no_grad():
        logp = F.log_softmax(target_logits.detach().float(), dim=-1)  # (N, K, V)
        tgt = logp.argmax(-1)
        top1 = (draft_logits.detach().argmax(-1) == tgt) & valid
        p = logp.exp()  # (N, K, V), saved by the einsum
        neg_ent = torch.einsum("nkv,nkv->nk", p, logp)
    kl = torch.where(valid, neg_ent - torch.einsum("nkv,nkv->nk", p, logq), 0.0)
    la = torch.where(valid, logq.gather(-1, tgt[..., None]).squeeze(-1), 0.0)
    return BlockTerms(kl, la, valid, torch.cumprod(valid.float(), -1), top1)



def run_worker(args) -> dict:
    method, rows = args.worker[0], int(args.worker[1])
    if args.threads:
        torch.set_num_threads(args.threads)
    K = args.block - 1
    N, dev = rows // K, torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    draft = (torch.randn(N, K, args.vocab, generator=g) * 2).to(dev).requires_grad_()
    target = (torch.randn(N, K, args.vocab, generator=g) * 2).to(dev)
    mask = torch.ones(N, K, device=dev)
    if method == "plain":
        distill_mod.block_terms = plain_terms  # distill_loss looks it up at call time
    losses = []

    def step():
        out = distill_loss("survival_eal", draft, target, mask, chunk_positions=args.chunk)
        out.loss.backward()
        losses.append(float(out.loss))
        draft.grad = None  # every rep starts from the same memory state

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak()
        base = status_kib("VmRSS") * 1024
    times = []
    for i in range(args.warmup + args.reps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else status_kib("VmHWM") * 1024) - base
    return {"peak_bytes": peak, "time_s": round(statistics.median(times), 4),
            "times_s": [round(t, 4) for t in times], "loss": losses[-1], "N": N, "K": K}


def run_case(method: str, rows: int, argv: list[str]) -> dict:
    args = parse_args(argv)
    K = args.block - 1
    rows = rows // K * K
    grad = rows * args.vocab * 4
    if method == "plain" and PLAIN_TENSORS * grad > args.plain_limit_gib * 2**30:
        return {"skipped": f"estimated {PLAIN_TENSORS * grad / 2**30:.1f} GiB > --plain-limit-gib"}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", method, str(rows)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case {method} rows={rows} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = r.pop("peak_bytes")
    return {"rows": rows, "peak_mib": round(peak / MIB, 1), "grad_mib": round(grad / MIB, 1),
            "extra_mib": round((peak - grad) / MIB, 1),
            "extra_vs_logits": round((peak - grad) / grad, 3), **r}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    cases = {}
    for rows in args.rows:
        for method in ("plain", "chunked"):
            r = cases.setdefault(str(rows), {})[method] = run_case(method, rows, argv)
            print(f"  rows={rows} {method}: {r}", file=sys.stderr)
    both = [c for c in cases.values() if "peak_mib" in c["plain"]]
    top = both[-1] if both else None
    chunked_peaks = [c["chunked"]["extra_mib"] for c in cases.values()]
    result = {
        "benchmark": "distill_memory",
        "device": args.device if args.device != "cpu" else f"cpu, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "loss": "survival_eal forward + backward on fp32 logits",
        "cases": cases,
        "memory_ratio": round(top["plain"]["peak_mib"] / top["chunked"]["peak_mib"], 3) if top else None,
        "extra_ratio": round(top["plain"]["extra_mib"] / max(top["chunked"]["extra_mib"], 1e-9), 3) if top else None,
        "time_ratio": round(top["chunked"]["time_s"] / top["plain"]["time_s"], 3) if top else None,
        "ratio_rows": top["chunked"]["rows"] if top else None,
        "max_loss_rel_diff": max((abs(c["plain"]["loss"] - c["chunked"]["loss"]) / abs(c["plain"]["loss"])
                                  for c in both), default=None),
        "chunked_extra_mib_over_rows": chunked_peaks,
    }
    print(f"{'rows':>6} {'method':>8} {'peak MiB':>9} {'grad MiB':>9} {'extra MiB':>10} "
          f"{'extra/RV4':>9} {'time s':>8}", file=sys.stderr)
    for c in cases.values():
        for method, r in c.items():
            if "skipped" in r:
                print(f"{'':>6} {method:>8} skipped: {r['skipped']}", file=sys.stderr)
                continue
            print(f"{r['rows']:>6} {method:>8} {r['peak_mib']:>9.1f} {r['grad_mib']:>9.1f} "
                  f"{r['extra_mib']:>10.1f} {r['extra_vs_logits']:>9.3f} {r['time_s']:>8.3f}", file=sys.stderr)
    print(f"at rows={result['ratio_rows']}: peak plain/chunked = {result['memory_ratio']}, extra "
          f"plain/chunked = {result['extra_ratio']}, time chunked/plain = {result['time_ratio']}",
          file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
