"""Code reward: run the completion's Python against the example's test asserts in a
sandboxed subprocess; the score is the fraction of tests that pass.

    get_reward("code")(completion, {"tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
                                    "setup": "from typing import List"})   # -> 0.0 .. 1.0

Extraction (`extract_code`): after dropping `<think>...</think>` (the text after the last
`</think>`; an unclosed `<think>` means no code, as the math reward reads it), the last
```` ```python ```` block (also `py`, `python3`); else the last untagged fence; else the last
fence of any language; an unclosed final fence runs to the end of the text; no fence at
all means the whole text is the program. The block is dedented.

Execution: one child process runs `setup` (trusted, from the dataset), then the solution,
then each test in turn, in one namespace (the module `solution`, so an
`if __name__ == "__main__":` block in the solution does not run). A test passes when it
runs without raising. Each step (setup, solution, one test) has `test_timeout_s` (SIGALRM,
so a loop of Python code is interrupted; a single long C call is not), and the whole run
has `timeout_s` of wall time, after which the process group is killed: tests reported
before the kill keep their credit (reason "time_limit"). Results go to the parent over a
pipe the harness inherits, one line per step prefixed with a random nonce the parent
hands over on stdin; the solution's stdout goes to /dev/null, so printing a pass marker,
exiting early (`sys.exit`, `os._exit`) or writing guesses to every fd gains nothing.

The sandbox, in the child, before any model code runs:

    limits      RLIMIT_AS `mem_mb` (512 MB; a thread's stack takes 8 MB of it, so about
                50 threads fit), RLIMIT_CPU ceil(timeout_s) + 1 s (all threads together),
                RLIMIT_FSIZE 4 MB per file, RLIMIT_NOFILE 256, RLIMIT_CORE 0, RLIMIT_NPROC
                (64 in the child's own user namespace, see below; otherwise the
                machine's task count + 64, and root ignores it)
    namespaces  best effort, Linux: unshare(CLONE_NEWUSER | CLONE_NEWNET) with the uid and
                gid mapped to themselves, so the child has no network interface but
                loopback (down), and RLIMIT_NPROC counts only its own tasks (kernel 5.14+)
    audit hook  (PEP 578) refuses: sockets other than AF_UNIX pairs, and connect, bind,
                sendto and name lookups on any; os.fork/forkpty/posix_spawn/exec*/system,
                subprocess (its `_posixsubprocess.fork_exec` is replaced), pty.spawn;
                os.kill/killpg; resource.setrlimit; sys.settrace/setprofile/addaudithook;
                importing ctypes, cffi, subinterpreters and the _test* modules; opening for
                writing, creating, removing, renaming, chmod/chown, mkdir, chdir outside
                the temp dir (and writing to anything there but a regular file); os.open
                of directories outside it; links and symlinks; more than 64 created files;
                reading /proc/*/mem; and the frame and gc introspection (sys._getframe,
                tb_frame, gi_frame, gc.get_objects/referrers) a solution could use to find
                the harness's nonce
    files       cwd, HOME and TMPDIR are a fresh temp dir, deleted afterwards; `python -I -S
                -B` (no environment variables, user site, site-packages or .pyc files;
                `site_packages=True` keeps site-packages); a minimal environment

What it does not do: this is defence in depth against the accidents and naive reward hacks
of model-written code, NOT a security boundary against a determined attacker. PEP 578
hooks run in the attacked process and can be defeated from Python (a `__fspath__` that
answers differently on its second call, loading an extension module through `_imp`,
frames reached through a signal handler); reads are not restricted (a solution can read
any file the trainer can); an object whose `__eq__` always returns True passes
`assert f(x) == y`; as root, files outside the temp dir are protected only by the hook.
For untrusted code at scale run the reward inside a container or nsjail/gVisor with no
network. Linux only (RLIMIT_AS is not enforced on macOS).

Costs: one Python start per completion (about 20-40 ms with the namespaces), plus the tests.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from importlib import resources

from posttrain.rewards.base import REWARDS, RewardResult, register_reward

WRAPPER_TIMEOUT_S = 60.0
"""The safe wrapper's limit for one call; `timeout_s` must stay below it by _MARGIN_S."""
_MARGIN_S = 5.0
_MAX_RESULT_BYTES = 1 << 20
_MAX_STDERR_BYTES = 4096
_FILE_MB = 4
_MAX_FILES = 64
_PY_TAGS = ("python", "py", "python3", "py3")

# ----------------------------------------------------------------------------- extraction


def extract_code(completion: str) -> str:
    """The program in a completion: see the module docstring for the rules."""
    close = completion.rfind("</think>")
    if close != -1:
        text = completion[close + len("</think>"):]
    elif "<think>" in completion:
        return ""  # still thinking: no program yet
    else:
        text = completion
    blocks: list[tuple[str, list[str]]] = []  # (language tag, lines)
    current: tuple[str, list[str]] | None = None
    for line in text.split("\n"):
        s = line.strip()
        if current is None:
            if s.startswith("```"):
                info = s.lstrip("`").strip()
                current = (info.split()[0].lower() if info else "", [])
        elif s.startswith("```") and not s.lstrip("`").strip():
            blocks.append(current)
            current = None
        else:
            current[1].append(line)
    if current is not None:  # a truncated completion: the open fence runs to the end
        blocks.append(current)
    if not blocks:
        return textwrap.dedent(text).strip()
    python = [lines for tag, lines in blocks if tag in _PY_TAGS]
    untagged = [lines for tag, lines in blocks if not tag]
    lines = (python or untagged or [lines for _, lines in blocks])[-1]
    return textwrap.dedent("\n".join(lines)).strip()


# ----------------------------------------------------------------------------- the harness

# The child's side lives in sandbox_harness.py, a real module read here as text and run as
# `python -I -S -B -c _HARNESS` (its first line marks the sandbox's command line).
_HARNESS = (resources.files("posttrain.rewards") / "sandbox_harness.py").read_text(
    encoding="utf-8")


# ----------------------------------------------------------------------------- running


@dataclass
class SandboxRun:
    """What happened to one program: `passed[i]` for each test, and a status tag."""

    passed: list[bool]
    status: str
    """ok, tests_failed, syntax_error, solution_error, setup_error, time_limit, incomplete,
    sandbox_error"""
    detail: str = ""
    failures: dict[int, str] = field(default_factory=dict)
    """test index -> why it failed (exception type, "timeout", "not run")"""


def run_tests(code: str, tests: list[str], setup: str = "", *, timeout_s: float = 10.0,
              test_timeout_s: float = 3.0, mem_mb: int = 512,
              site_packages: bool = False) -> SandboxRun:
    """Run `setup`, then `code`, then each test in the sandbox (see the module docstring)."""
    n = len(tests)
    nonce = secrets.token_hex(16)
    tmp = None
    read_fd = write_fd = -1
    proc = None
    try:
        try:
            tmp = os.path.realpath(tempfile.mkdtemp(prefix="posttrain-code-"))
            read_fd, write_fd = os.pipe()
        except OSError as exc:  # a full disk, out of file descriptors
            return SandboxRun([False] * n, "sandbox_error", f"cannot set up the sandbox: {exc}")
        payload = json.dumps({
            "nonce": nonce, "fd": write_fd, "tmp": tmp, "code": code, "setup": setup,
            "tests": list(tests), "step_s": float(test_timeout_s), "mem_mb": int(mem_mb),
            "cpu_s": int(math.ceil(timeout_s)) + 1, "file_mb": _FILE_MB,
            "max_files": _MAX_FILES}).encode("ascii")
        argv = [sys.executable, "-I", "-B", "-X", "utf8"] + ([] if site_packages else ["-S"])
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MALLOC_ARENA_MAX": "2"}  # glibc reserves 64 MB of address space per arena
        start = time.monotonic()
        try:
            # No preexec_fn (unsafe in a threaded parent): the harness sets its own limits.
            proc = subprocess.Popen(argv + ["-c", _HARNESS], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp,
                                    env=env, pass_fds=(write_fd,), start_new_session=True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return SandboxRun([False] * n, "sandbox_error", f"cannot start Python: {exc}")
        finally:
            os.close(write_fd)
        results, stderr, timed_out = _communicate(proc, payload, read_fd, start + timeout_s)
        _kill_group(proc)
        return _parse(results, stderr, nonce, n, timed_out, proc.returncode, timeout_s)
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc)
        if read_fd != -1:
            os.close(read_fd)
        if tmp is not None:
            _remove_tree(tmp)


def _communicate(proc: subprocess.Popen, payload: bytes, res_fd: int,
                 deadline: float) -> tuple[bytes, bytes, bool]:
    """Feed stdin and drain the results pipe and stderr, each capped, until both close (the
    child exited) or the deadline; then wait for the child up to the deadline. Nothing
    blocks past it."""
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "in")
    sel.register(res_fd, selectors.EVENT_READ, "res")
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, "err")
    todo = memoryview(payload)
    bufs = {"res": bytearray(), "err": bytearray()}
    caps = {"res": _MAX_RESULT_BYTES, "err": _MAX_STDERR_BYTES}
    try:
        while any(key.data != "in" for key in sel.get_map().values()):
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(bufs["res"]), bytes(bufs["err"]), True
            for key, _ in sel.select(left):
                if key.data == "in":
                    try:
                        todo = todo[os.write(key.fd, todo[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the child is gone: BrokenPipe
                        todo = todo[:0]
                    if not todo:
                        sel.unregister(key.fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf, cap = bufs[key.data], caps[key.data]
                if len(buf) < cap:  # past the cap the pipe is still drained, not kept
                    buf += chunk[:cap - len(buf)]
    finally:
        sel.close()
    # Both pipes closed: the child has exited, or closed them and runs on.
    while time.monotonic() < deadline:
        if _exited(proc):
            return bytes(bufs["res"]), bytes(bufs["err"]), False
        time.sleep(0.005)
    return bytes(bufs["res"]), bytes(bufs["err"]), not _exited(proc)


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it (its pid stays the group's id)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (it leads its own session), then reap the child.
    Called before the reap, so the group id cannot have been reused."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # stuck in the kernel; leave it to init
        pass
    for f in (proc.stdin, proc.stderr):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):  # the program made a directory unreadable: open everything up
        for root, dirs, _ in os.walk(path):
            for d in dirs:
                try:
                    os.chmod(os.path.join(root, d), 0o700)
                except OSError:
                    pass
        shutil.rmtree(path, ignore_errors=True)


def _parse(results: bytes, stderr: bytes, nonce: str, n: int, timed_out: bool,
           returncode: int | None, timeout_s: float) -> SandboxRun:
    """Turn the harness's lines into a SandboxRun; a line without the nonce, a repeated test
    index or an out-of-range one is ignored (the first report of a test counts)."""
    status = why = None
    done = False
    outcome: dict[int, tuple[bool, str]] = {}
    for raw in results.split(b"\n"):
        parts = raw.decode("ascii", "replace").split(" ", 4)
        if parts[0] != nonce or len(parts) < 4:
            continue
        if parts[1] == "S" and status is None:
            status, why = parts[2], " ".join(parts[3:])
        elif parts[1] == "T" and status == "ok" and parts[2].isdigit():
            i = int(parts[2])
            if i < n and i not in outcome:
                outcome[i] = (parts[3] == "pass", parts[4] if len(parts) > 4 else "")
        elif parts[1] == "D" and status == "ok":
            done = True
    passed = [outcome.get(i, (False, ""))[0] for i in range(n)]
    failures = {i: outcome[i][1] if i in outcome else "not run" for i in range(n) if not passed[i]}
    if status is not None and status != "ok":
        return SandboxRun(passed, status, why.strip(), failures)
    k = sum(passed)
    if done:
        if k == n:
            return SandboxRun(passed, "ok", f"{n}/{n} passed", failures)
        first = min(failures)
        return SandboxRun(passed, "tests_failed",
                          f"{k}/{n} passed; test {first}: {failures[first] or 'failed'}", failures)
    if timed_out:
        return SandboxRun(passed, "time_limit",
                          f"{k}/{n} passed before the {timeout_s:g} s limit", failures)
    if returncode is not None and returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = str(-returncode)
        how = f"killed by {sig}"
    else:
        how = f"exited with code {returncode}"
    if status is None:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return SandboxRun(passed, "incomplete",
                          f"no result: the process {how} {tail[0][:200]}".strip(), failures)
    return SandboxRun(passed, "incomplete", f"{k}/{n} passed; the process {how}", failures)


# ----------------------------------------------------------------------------- the reward


def _check_options(timeout_s: float, test_timeout_s: float, mem_mb: int) -> None:
    limit = REWARDS.get("code").timeout_s - _MARGIN_S
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= limit):
        raise ValueError(f"code reward: timeout_s must be in (0, {limit:g}] seconds, the safe "
                         f"wrapper's {limit + _MARGIN_S:g} s less a {_MARGIN_S:g} s margin; "
                         f"got {timeout_s!r}")
    if not (isinstance(test_timeout_s, (int, float)) and test_timeout_s > 0):
        raise ValueError(f"code reward: test_timeout_s must be > 0 seconds, got {test_timeout_s!r}")
    if not (isinstance(mem_mb, int) and mem_mb >= 64):
        raise ValueError(f"code reward: mem_mb must be an int >= 64 (Python needs ~30 MB to "
                         f"start), got {mem_mb!r}")


_LIMITS = (f"Wall time timeout_s (10 s) per completion and test_timeout_s (3 s) per test; "
           f"address space mem_mb (512 MB); {_FILE_MB} MB per file, {_MAX_FILES} files, in a "
           f"temp dir; no network, subprocesses or writes outside it (defence in depth, not a "
           f"security boundary: see posttrain/rewards/code.py).")


@register_reward(
    "code",
    checks="The fraction of example['tests'] (Python assert statements) that pass after "
           "running example.get('setup') and the completion's last python code fence (else "
           "the whole text after `</think>`) in a sandboxed subprocess.",
    limits=_LIMITS, timeout_s=WRAPPER_TIMEOUT_S)
def code_reward(completion: str, example: dict, *, timeout_s: float = 10.0,
                test_timeout_s: float = 3.0, mem_mb: int = 512,
                site_packages: bool = False) -> RewardResult:
    _check_options(timeout_s, test_timeout_s, mem_mb)
    tests, setup = example.get("tests"), example.get("setup") or ""
    if isinstance(tests, str):
        tests = [tests]
    if (not isinstance(tests, (list, tuple)) or not tests
            or not all(isinstance(t, str) and t.strip() for t in tests)):
        return RewardResult(0.0, "bad_example",
                            "example['tests'] must be a non-empty list of assert statements "
                            f"(strings); got {type(tests).__name__}")
    if not isinstance(setup, str):
        return RewardResult(0.0, "bad_example",
                            "example['setup'] must be a string of code, got "
                            f"{type(setup).__name__}")
    code = extract_code(completion)
    if not code.strip():
        return RewardResult(0.0, "no_code", "no program in the completion")
    run = run_tests(code, list(tests), setup, timeout_s=timeout_s,
                    test_timeout_s=test_timeout_s, mem_mb=mem_mb, site_packages=site_packages)
    return RewardResult(sum(run.passed) / len(tests), run.status, run.detail)
