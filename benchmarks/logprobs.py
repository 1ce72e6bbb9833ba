"""Chunked log-probs vs the naive full-logits path: peak memory and time, side by side.

Each case runs forward + backward of  loss = sum(logp) + 0.01 * sum(entropy)  over
N = batch * seq rows with a trainable LM head (weight (V, H) requires grad):

    naive    logits = hidden @ W.T (fp32, (N, V)) -> log_softmax -> gather the label;
             entropy = -sum(exp(logsm) * logsm) from the full probabilities
    chunked  posttrain.models.logprobs.token_logprobs(..., chunk_size)

for every V in --vocabs, each case in a fresh subprocess so one case's allocator state
cannot leak into the next.

Peak memory is the increase over a baseline taken after the inputs are allocated:
  * cpu:  the process's resident-set high-water mark. After allocating the inputs the
          worker writes "5" to /proc/self/clear_refs, which resets VmHWM to the current
          VmRSS (Linux >= 4.0), records VmRSS as the baseline, runs warm-up + timed reps,
          and reports VmHWM - baseline from /proc/self/status. (If clear_refs is not
          writable it falls back to VmHWM before/after, which can only over-state the
          baseline and so under-state the increase.)
  * cuda: torch.cuda.reset_peak_memory_stats() after the inputs, then
          max_memory_allocated() - memory_allocated() at that point.
Both include the gradients the run produces (hidden.grad (N, H) and W.grad (V, H)),
which the two paths share. Time is the median over --reps after --warmup runs.

Prints a table to stderr and ONE JSON object to stdout, with memory_ratio = naive peak /
chunked peak and time_ratio = chunked time / naive time at the largest V (151,936 by default).

    python benchmarks/logprobs.py                                  # GPU-sized defaults
    python benchmarks/logprobs.py --seq 256 --chunk-size 256       # a few minutes on 2 CPU cores
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
from posttrain.models.logprobs import token_logprobs  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="hidden and weight dtype")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocabs", type=int, nargs="+", default=[32000, 151936])
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "V"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---- worker: one (method, V) case in this process -----------------------------------


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def naive_logprobs(hidden, weight, labels, temperature):
    """The full-logits path: (N, H), (V, H), (N,) -> (logp (N,), entropy (N,))."""
    logits = hidden.float() @ weight.float().T  # (N, V) fp32
    logsm = torch.log_softmax(logits / temperature, dim=-1)
    logp = logsm.gather(-1, labels[:, None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def run_worker(args) -> dict:
    method, vocab = args.worker[0], int(args.worker[1])
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    n = args.batch * args.seq
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
        cleared = _reset_rss_peak()
        base = (_proc_status_kib("VmRSS") if cleared else _proc_status_kib("VmHWM")) * 1024
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
        peak = _proc_status_kib("VmHWM") * 1024 - base
        how = ("VmHWM - VmRSS after inputs (VmHWM reset via /proc/self/clear_refs)" if cleared
               else "VmHWM after - VmHWM after inputs (clear_refs not writable)")
    return {"peak_mib": round(peak / 2**20, 1), "time_s": round(statistics.median(times), 4),
            "times_s": [round(t, 4) for t in times], "memory_method": how}


# ---- driver ------------------------------------------------------------------------


def run_case(method: str, vocab: int, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", method, str(vocab)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case {method} V={vocab} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    cases = {}
    for vocab in args.vocabs:
        for method in ("naive", "chunked"):
            r = cases.setdefault(str(vocab), {})[method] = run_case(method, vocab, argv)
            how = r.pop("memory_method")
            print(f"  V={vocab} {method}: {r}", file=sys.stderr)
    top = cases[str(max(args.vocabs))]
    result = {
        "benchmark": "logprobs",
        "device": _device_name(args.device),
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "rows": args.batch * args.seq,
        "loss": "sum(logp) + 0.01 * sum(entropy), forward + backward, LM head trainable",
        "memory_method": how,
        "cases": cases,
        "memory_ratio": round(top["naive"]["peak_mib"] / max(top["chunked"]["peak_mib"], 1e-9), 3),
        "time_ratio": round(top["chunked"]["time_s"] / top["naive"]["time_s"], 3),
        "ratio_vocab": max(args.vocabs),
    }
    print(f"{'V':>8} {'method':>8} {'peak MiB':>10} {'time s':>8}", file=sys.stderr)
    for vocab, by_method in cases.items():
        for method, r in by_method.items():
            print(f"{vocab:>8} {method:>8} {r['peak_mib']:>10.1f} {r['time_s']:>8.3f}", file=sys.stderr)
    print(f"memory_ratio (naive/chunked) = {result['memory_ratio']}, "
          f"time_ratio (chunked/naive) = {result['time_ratio']} at V={max(args.vocabs)}", file=sys.stderr)
    print(json.dumps(result))


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown cpu"
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


if __name__ == "__main__":
    main()
