"""Process accounting shared by the benchmarks (Linux /proc): peak resident set and CPU time.

Peak memory on CPU is the process's resident-set high-water mark, VmHWM. Writing "5" to
/proc/self/clear_refs resets it to the current VmRSS (Linux >= 4.0), so a measurement can
start from a baseline taken after its inputs are allocated.
"""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
