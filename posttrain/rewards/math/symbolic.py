"""The symbolic check (`_symbolic`): math-verify compares two answers in a forked child
process that is killed at its deadline; results, timeouts included, are cached per
(pred, ref, timeout).

math-verify's own signal-based timeouts are switched off: they work only on the main
thread, and a kill also bounds sympy's C-level work and its memory (the child's address
space is capped like the reward worker's, `POSTTRAIN_REWARD_MEM_MB`, default 1024). The
fork and the kill need no signal in this process, so the check runs from any thread.
Without math-verify installed, or without `os.fork`, it reports no match with a note
saying why, and the caller has compared strings only.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import threading
import warnings

_MV = None  # the math_verify module once imported and warmed up; False when unavailable
_MV_LOCK = threading.Lock()


def _math_verify():
    global _MV
    if _MV is None:
        with _MV_LOCK:
            if _MV is None:
                try:
                    import math_verify
                    import math_verify.grader
                    import math_verify.parser
                    # We bound the time by killing a child process, so its signal-based
                    # timeouts stay off; silence the once-per-process warning about that,
                    # which every fresh child would otherwise print again.
                    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
                    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
                    # Warm up here, on a fixed input, so each child inherits sympy's and the
                    # LaTeX parser's lazily loaded parts instead of loading them again.
                    _verify(math_verify, "0.5", "\\frac{1}{2}")
                    _MV = math_verify
                except Exception:  # noqa: BLE001 - not installed or broken: strings only
                    _MV = False
    return _MV or None


def _verify(mv, pred: str, ref: str) -> bool:
    gold = mv.parse(f"${ref}$", parsing_timeout=None)
    target = mv.parse(f"${pred}$", parsing_timeout=None)
    return bool(gold and target and mv.verify(gold, target, timeout_seconds=None))


def _cap_child_memory() -> None:
    try:
        import resource
        with open("/proc/self/statm") as f:
            vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = vm_bytes + int(os.environ.get("POSTTRAIN_REWARD_MEM_MB", "1024")) * 2**20
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        if soft == resource.RLIM_INFINITY or cap < soft:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except Exception:  # noqa: BLE001 - no /proc or no resource module: run uncapped
        pass


def _in_child(fn, args: tuple, timeout_s: float) -> tuple[bool | None, str]:
    """Run the bool-valued fn(*args) in a forked child; kill it at the deadline.
    Works from any thread (no signals in this process). (result or None, note)."""
    r, w = os.pipe()
    try:
        with warnings.catch_warnings():  # Python >= 3.12 warns on fork with threads alive
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as exc:
        os.close(r)
        os.close(w)
        return None, f"symbolic check not run: fork failed ({exc})"
    if pid == 0:  # the child: never returns into the caller's code
        code = b"e"
        try:
            os.close(r)
            _cap_child_memory()
            code = b"1" if fn(*args) else b"0"
        except BaseException:  # noqa: BLE001 - any failure is "no match"
            pass
        try:
            os.write(w, code)
        finally:
            os._exit(0)
    os.close(w)
    data = None
    try:
        poller = select.poll()  # not select.select: that fails on descriptors >= 1024
        poller.register(r, select.POLLIN)
        if poller.poll(max(0, int(timeout_s * 1000))):
            data = os.read(r, 1)
    finally:
        if data is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
        os.close(r)
    if data is None:
        return None, f"symbolic check timed out after {timeout_s:g} s"
    if data in (b"0", b"1"):
        return data == b"1", "symbolic"
    return None, "symbolic check failed (error or memory cap)"


@functools.lru_cache(maxsize=4096)
def _symbolic(pred: str, ref: str, timeout_s: float) -> tuple[bool, str]:
    mv = _math_verify()
    if mv is None:
        return False, "math-verify is not installed: strings compared only"
    if not hasattr(os, "fork"):
        return False, "no os.fork on this platform: strings compared only"
    ok, note = _in_child(_verify, (mv, pred, ref), timeout_s)
    return bool(ok), note
