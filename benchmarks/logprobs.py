"""Chunked log-probs vs the naive full-logits path: peak memory and time, side by side.

Each case runs forward + backward of  loss = sum(logp) + 0.01 * sum(entropy)  over
N token rows (batch * seq, flattened) with a trainable LM head (weight (V, H) requires grad):

    naive    logits = hidden @ W.T (fp32, (N, V)) -> log_softmax -> gather the label;
             entropy = -sum(exp(logsm) * logsm) from the full probabilities
    chunked  posttrain.models.logprobs.token_logprobs(..., chunk_size)

Two groups of cases, each case in a fresh subprocess so one case's allocator state cannot
leak into the next:

  * vocabulary comparison: every V in --vocabs at N = --batch * --seq rows, --warmup
    warm-up runs then --reps timed runs (time = their median);
  * rows sweep: every N in --sweep-rows at V = max(--vocabs), --sweep-warmup warm-up
    runs then --sweep-reps timed runs (default 0 and 1, to keep the run short: the sweep
    is about memory, and a peak does not need repeats because every run starts from the
    same memory state). Pass --sweep-rows with no value to skip it. The default rows
    start well above the default chunk_size (165 rows at V = 151,936): below it the chunked
    scratch buffer has N rows, so the chunked peak rises with N up to chunk_size and is
    flat from there. The entry at
    N = batch * seq is the vocabulary comparison's case at that V, reused (marked
    "reused": "cases"; its time is from --warmup/--reps).

A naive case whose estimated peak (NAIVE_LOGITS_TENSORS fp32 (N, V) tensors plus the
gradients) exceeds --naive-limit-gib is not run and is recorded as {"skipped": reason,
"estimated_peak_mib": ...}; the chunked path is always run.

Memory, per case (MiB = 2**20 bytes):
  peak_mib            increase over a baseline taken after the inputs (hidden, W, labels)
                      are allocated:
        cpu:  the process's resident-set high-water mark. The worker writes "5" to
              /proc/self/clear_refs, which resets VmHWM to the current VmRSS (Linux >= 4.0),
              records VmRSS as the baseline, runs warm-up + timed reps, and reports
              VmHWM - baseline from /proc/self/status. (If clear_refs is not writable it
              falls back to VmHWM before/after, which can only over-state the baseline and
              so under-state the increase.)
        cuda: torch.cuda.reset_peak_memory_stats() after the inputs, then
              max_memory_allocated() - memory_allocated() at that point.
  weight_grad_mib     V * H * 4 bytes: the fp32 (V, H) LM-head gradient (the chunked path's
                      fp32 accumulator; W.grad itself when W is fp32). Any trainer of the
                      head holds it; it scales with V but not with N.
  input_grad_mib      N * H * itemsize(--dtype): hidden.grad, which the backbone needs
                      whatever computes the log-probs; it scales with N but not with V.
  activation_peak_mib = peak_mib - weight_grad_mib - input_grad_mib: the memory attributable
                      to the logits work itself (logits, probabilities, their gradients,
                      scratch buffers, casts). Chunked: about min(N, chunk_size) * V * 4
                      bytes; naive: several N * V * 4 bytes.
  activation_vs_logits = activation_peak_mib / (N * V * 4 bytes): the same figure in units
                      of one full fp32 (N, V) logits tensor.
Both paths return the same two gradients, so the subtraction is the same for both. With
--dtype bfloat16 both paths also hold fp32 copies or casts of W or of its gradient (naive:
W.float(), saved for backward; chunked: the bf16 cast of the fp32 accumulator); these
scale with V * H, not with N, and land in activation_peak_mib.

Prints tables to stderr and ONE JSON object to stdout with, besides the per-case figures:
  memory_ratio         naive peak / chunked peak at V = max(--vocabs), N = batch * seq
  time_ratio           chunked time / naive time, same case
  rows_sweep           {N: {"naive": ..., "chunked": ...}} at V = max(--vocabs)
  chunked_peak_growth  chunked peak_mib at the largest swept N / at the smallest
  naive_peak_growth    the same for naive, over the N it was run at (naive_growth_rows)
  chunked_activation_growth, naive_activation_growth: the same for activation_peak_mib

    python benchmarks/logprobs.py                                  # GPU-sized defaults (~4 min on 2 CPU cores)
    python benchmarks/logprobs.py --warmup 0 --reps 1              # ~3 min on 2 CPU cores
    python benchmarks/logprobs.py --sweep-rows                     # vocabulary comparison only
    python benchmarks/logprobs.py --device cuda --dtype bfloat16 --hidden 2560
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from _proc import cpu_name  # noqa: E402  (benchmarks/_proc.py)
from posttrain.models.logprobs import auto_chunk_rows, token_logprobs  # noqa: E402
from _proc import reset_peak, status_kib  # noqa: E402  (benchmarks/_proc.py)

MIB = 2**20
# Upper bound on the number of fp32 (N, V) tensors the naive path holds at its peak, used
# only to decide whether a naive case fits under --naive-limit-gib (measured on CPU fp32:
# about 5; see activation_vs_logits in the output).
NAIVE_LOGITS_TENSORS = 6


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="hidden and weight dtype")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocabs", type=int, nargs="+", default=[32000, 151936])
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="rows per chunk (default: token_logprobs' own, from its memory budget)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--sweep-rows", type=int, nargs="*", default=[1024, 2048, 4096],
                    help="token rows N for the sweep at V = max(--vocabs); none: no sweep")
    ap.add_argument("--sweep-warmup", type=int, default=0)
    ap.add_argument("--sweep-reps", type=int, default=1)
    ap.add_argument("--naive-limit-gib", type=float, default=20.0,
                    help="skip naive cases whose estimated peak exceeds this")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "V", "ROWS"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---- worker: one (method, V, rows) case in this process ---------------------------




def naive_logprobs(hidden, weight, labels, temperature):
    """The full-logits path: (N, H), (V, H), (N,) -> (logp (N,), entropy (N,))."""
    logits = hidden.float() @ weight.float().T  # (N, V) fp32
    logsm = torch.log_softmax(logits / temperature, dim=-1)
    logp = logsm.gather(-1, labels[:, None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def run_worker(args) -> dict:
    method, vocab, n = args.worker[0], int(args.worker[1]), int(args.worker[2])
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(n, args.hidden, generator=g).to(dev, dtype).requires_grad_()
    weight = (torch.randn(vocab, args.hidden, generator=g) / args.hidden**0.5).to(dev, dtype).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=g).to(dev)

    def step():
        if method == "naive":
            logp, ent = naive_logprobs(hidden, weight, labels, args.temperature)
        else:
            logp, ent = token_logprobs(hidden[None], weight, labels[None], chunk_size=args.chunk_size,
                                       temperature=args.temperature)
        (logp.sum() + 0.01 * ent.sum()).backward()
        hidden.grad = weight.grad = None  # every rep starts from the same memory state

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        cleared = reset_peak()
        base = (status_kib("VmRSS") if cleared else status_kib("VmHWM")) * 1024
    times = []
    for i in range(args.warmup + args.reps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        how = "torch.cuda.max_memory_allocated() - memory_allocated() after inputs"
    else:
        peak = status_kib("VmHWM") * 1024 - base
        how = ("VmHWM - VmRSS after inputs (VmHWM reset via /proc/self/clear_refs)" if cleared
               else "VmHWM after - VmHWM after inputs (clear_refs not writable)")
    return {"peak_bytes": peak, "time_s": round(statistics.median(times), 4),
            "times_s": [round(t, 4) for t in times], "memory_method": how}


# ---- driver ------------------------------------------------------------------------


def _grad_bytes(args, vocab: int, rows: int) -> tuple[int, int]:
    """(weight_grad, input_grad) bytes: V*H*4 (fp32 head gradient), N*H*itemsize(dtype)."""
    itemsize = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    return vocab * args.hidden * 4, rows * args.hidden * itemsize


def _naive_estimate_bytes(args, vocab: int, rows: int) -> int:
    w_grad, in_grad = _grad_bytes(args, vocab, rows)
    return NAIVE_LOGITS_TENSORS * rows * vocab * 4 + w_grad + in_grad


def run_case(method: str, vocab: int, rows: int, argv: list[str], extra: list[str] = ()) -> dict:
    args = parse_args(argv)
    w_grad, in_grad = _grad_bytes(args, vocab, rows)
    if method == "naive":
        est = _naive_estimate_bytes(args, vocab, rows)
        if est > args.naive_limit_gib * 2**30:
            return {"skipped": f"estimated peak {est / 2**30:.1f} GiB > --naive-limit-gib {args.naive_limit_gib:g}",
                    "estimated_peak_mib": round(est / MIB, 1)}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, *extra, "--worker", method, str(vocab), str(rows)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case {method} V={vocab} rows={rows} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = r.pop("peak_bytes")
    act = peak - w_grad - in_grad
    return {"peak_mib": round(peak / MIB, 1), "weight_grad_mib": round(w_grad / MIB, 1),
            "input_grad_mib": round(in_grad / MIB, 1), "activation_peak_mib": round(act / MIB, 1),
            "activation_vs_logits": round(act / (rows * vocab * 4), 3), **r}


def _growth(sweep: dict, method: str, key: str) -> tuple[float | None, list[int]]:
    ran = [(int(n), c[method][key]) for n, c in sweep.items() if key in c[method]]
    if len(ran) < 2:
        return None, [n for n, _ in ran]
    (n0, lo), (n1, hi) = min(ran), max(ran)
    return round(hi / max(lo, 1e-9), 3), [n0, n1]


def _fmt(r: dict, key: str, spec: str) -> str:
    return format(r[key], spec) if key in r else "skipped".rjust(len(format(0.0, spec)))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    rows, top_v = args.batch * args.seq, max(args.vocabs)
    how = None
    cases = {}
    for vocab in args.vocabs:
        for method in ("naive", "chunked"):
            r = cases.setdefault(str(vocab), {})[method] = run_case(method, vocab, rows, argv)
            how = r.pop("memory_method", how)
            print(f"  V={vocab} rows={rows} {method}: {r}", file=sys.stderr)
    sweep = {}
    extra = ["--warmup", str(args.sweep_warmup), "--reps", str(args.sweep_reps)]
    for n in sorted(set(args.sweep_rows)):
        for method in ("naive", "chunked"):
            if n == rows:  # the same case as the vocabulary comparison's at V = top_v: reuse it
                sweep.setdefault(str(n), {})[method] = {**cases[str(top_v)][method], "reused": "cases"}
                continue
            r = sweep.setdefault(str(n), {})[method] = run_case(method, top_v, n, argv, extra)
            how = r.pop("memory_method", how)
            print(f"  sweep V={top_v} rows={n} {method}: {r}", file=sys.stderr)

    top = cases[str(top_v)]
    ran_top = "peak_mib" in top["naive"]
    result = {
        "benchmark": "logprobs",
        "device": _device_name(args.device),
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "rows": rows,
        "loss": "sum(logp) + 0.01 * sum(entropy), forward + backward, LM head trainable",
        "memory_method": how,
        "activation_peak": "peak_mib - weight_grad_mib (V*H*4) - input_grad_mib (N*H*itemsize)",
        "cases": cases,
        "memory_ratio": round(top["naive"]["peak_mib"] / max(top["chunked"]["peak_mib"], 1e-9), 3) if ran_top else None,
        "time_ratio": round(top["chunked"]["time_s"] / top["naive"]["time_s"], 3) if ran_top else None,
        "ratio_vocab": top_v,
        "chunk_rows": {str(v): (args.chunk_size or auto_chunk_rows(v)) for v in args.vocabs},
        "rows_sweep": sweep,
        "sweep_vocab": top_v,
    }
    if sweep:
        result["chunked_peak_growth"], result["chunked_growth_rows"] = _growth(sweep, "chunked", "peak_mib")
        result["naive_peak_growth"], result["naive_growth_rows"] = _growth(sweep, "naive", "peak_mib")
        result["chunked_activation_growth"], _ = _growth(sweep, "chunked", "activation_peak_mib")
        result["naive_activation_growth"], _ = _growth(sweep, "naive", "activation_peak_mib")

    head = f"{'V':>8} {'rows':>6} {'method':>8} {'peak MiB':>10} {'W.grad':>8} {'act. MiB':>10} {'act/NV4':>8} {'time s':>8}"
    print(head, file=sys.stderr)
    table = [(v, rows, c) for v, c in cases.items()] + [(str(top_v), int(n), c) for n, c in sweep.items()]
    for vocab, n, by_method in table:
        for method, r in by_method.items():
            print(f"{vocab:>8} {n:>6} {method:>8} {_fmt(r, 'peak_mib', '10.1f')} {_fmt(r, 'weight_grad_mib', '8.1f')} "
                  f"{_fmt(r, 'activation_peak_mib', '10.1f')} {_fmt(r, 'activation_vs_logits', '8.3f')} "
                  f"{_fmt(r, 'time_s', '8.3f')}", file=sys.stderr)
    print(f"memory_ratio (naive/chunked) = {result['memory_ratio']}, "
          f"time_ratio (chunked/naive) = {result['time_ratio']} at V={top_v}, rows={rows}", file=sys.stderr)
    if sweep:
        print(f"peak growth over the rows sweep: chunked x{result['chunked_peak_growth']} "
              f"(rows {result['chunked_growth_rows']}), naive x{result['naive_peak_growth']} "
              f"(rows {result['naive_growth_rows']})", file=sys.stderr)
    print(json.dumps(result))


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


if __name__ == "__main__":
    main()
