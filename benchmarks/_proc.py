"""Process accounting shared by the benchmarks (Linux /proc): peak resident set and CPU time,
the pipe a benchmark driver steps its worker processes over, and the CPU's name.

Peak memory on CPU is the process's resident-set high-water mark, VmHWM. Writing "5" to
/proc/self/clear_refs resets it to the current VmRSS (Linux >= 4.0), so a measurement can
start from a baseline taken after its inputs are allocated.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the machine a figure was measured on)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown cpu"


def status_kib(field: str, pid: int | str = "self") -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def reset_peak() -> bool:
    """VmHWM := VmRSS for this process; False where clear_refs is not writable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def busy_s() -> float:
    """CPU-seconds spent busy on all CPUs since boot (/proc/stat: all but idle and iowait)."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / CLK_TCK


def tree_cpu_s(root: int) -> float:
    """utime + stime of `root` and all its live descendants."""
    parent, cpu = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2:].split()
        parent[int(d.name)] = int(rest[1])
        cpu[int(d.name)] = (int(rest[11]) + int(rest[12])) / CLK_TCK
    total = 0.0
    for pid, t in cpu.items():
        p = pid
        while p and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += t
    return total


class Channel:
    """A worker's end of the driver pipe: JSON lines out on a saved copy of fd 1 (fd 1 itself
    then points at stderr, so library prints cannot corrupt the protocol), commands in on stdin."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def send(self, obj: dict) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def recv(self) -> str:
        line = sys.stdin.readline()
        return line.strip() or "stop"


class PeakTracker:
    """VmHWM before and after the reset that starts the timed steps."""

    def __init__(self):
        self.setup_rss = self.before_reset = self.base = None
        self.cleared = False

    def ready(self) -> float:
        self.setup_rss = status_kib("VmRSS") / 1024
        return self.setup_rss

    def reset(self) -> dict:
        self.before_reset = status_kib("VmHWM") / 1024
        self.cleared = reset_peak()
        self.base = status_kib("VmRSS") / 1024
        return {"cleared": self.cleared}

    def final(self) -> dict:
        hwm = status_kib("VmHWM") / 1024
        cuda = _cuda_peak_mib()
        before = self.before_reset if self.before_reset is not None else hwm
        out = {"peak_rss_mib": round(max(hwm, before), 1), "rss_after_setup_mib": round(self.setup_rss, 1)}
        if self.base is not None:
            out["peak_rss_setup_warmup_mib"] = round(before, 1)
            out["rss_before_timed_mib"] = round(self.base, 1)
            out["timed_peak_increase_mib"] = round(hwm - self.base, 1) if self.cleared else None
        if cuda is not None:
            out["cuda_peak_allocated_mib"] = cuda
        return out


def _cuda_peak_mib() -> float | None:
    import torch
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)
