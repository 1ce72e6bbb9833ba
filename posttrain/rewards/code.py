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

# Runs as `python -I -S -B -c _HARNESS`. Everything it needs after model code starts is
# bound to a local of `_main` first: model code can rebind builtins, os.path or json, but
# not the locals of a frame it cannot reach (sys._getframe, tb_frame and gc are refused).
_HARNESS = r'''# posttrain code sandbox harness (posttrain/rewards/code.py)
import os, sys


def _main():
    import builtins, json, resource, signal, stat, types
    chunks = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    cfg = json.loads(b"".join(chunks))
    del chunks
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    nonce, out, tmp = cfg["nonce"], cfg["fd"], cfg["tmp"]

    # -- namespaces: no network, and a task count of our own for RLIMIT_NPROC
    isolated = False
    uid, gid = os.geteuid(), os.getegid()
    try:
        flags = 0x10000000 | 0x40000000  # CLONE_NEWUSER | CLONE_NEWNET
        if hasattr(os, "unshare"):
            os.unshare(flags)
            isolated = True
        else:
            import ctypes
            isolated = ctypes.CDLL(None, use_errno=True).unshare(flags) == 0
    except Exception:
        pass
    finally:
        for name in [m for m in sys.modules if m.startswith(("ctypes", "_ctypes"))]:
            del sys.modules[name]  # a later `import ctypes` must raise the import event
    if isolated:
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)),
                           ("gid_map", "%d %d 1" % (gid, gid))):
            try:
                with open("/proc/self/" + name, "w") as f:
                    f.write(text)
            except OSError:
                pass

    # -- limits
    def limit(which, n, hard=None):
        try:
            cur = resource.getrlimit(which)[1]
            hard = n if hard is None else hard
            if cur != resource.RLIM_INFINITY:
                n, hard = min(n, cur), min(hard, cur)
            resource.setrlimit(which, (n, hard))
        except (ValueError, OSError):
            pass
    try:
        release = tuple(int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        release = (0, 0)
    if isolated and release >= (5, 14):
        nproc = 64  # counted in our own user namespace: we are task 1
    else:
        try:
            with open("/proc/loadavg") as f:
                nproc = int(f.read().split()[3].split("/")[1]) + 64
        except (OSError, ValueError, IndexError):
            nproc = 4096
    limit(resource.RLIMIT_AS, cfg["mem_mb"] << 20)
    limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    limit(resource.RLIMIT_FSIZE, cfg["file_mb"] << 20)
    limit(resource.RLIMIT_NOFILE, 256)
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_NPROC, nproc)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises instead

    # -- subprocess without an audit event of its own: neutralise its fork
    import _posixsubprocess

    def no_fork_exec(*args, **kwargs):
        raise PermissionError("sandbox: subprocesses are not allowed")
    _posixsubprocess.fork_exec = no_fork_exec

    # -- the audit hook
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    o_creat, getcwd, readlink, stat_, S_ISREG, S_ISDIR = (
        os.O_CREAT, os.getcwd, os.readlink, os.stat, stat.S_ISREG, stat.S_ISDIR)
    join, bdecode, fspath, type_, str_, bytes_, int_, isinstance_, issubclass_, range_ = (
        "".join, bytes.decode, os.fspath, type, str, bytes, int, isinstance, issubclass, range)
    Permission, Import, Value, Attribute, Runtime, OSError_, Base = (
        PermissionError, ImportError, ValueError, AttributeError, RuntimeError, OSError,
        BaseException)
    budget = [cfg["max_files"]]
    deny_events = frozenset((
        "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
        "os.startfile", "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg",
        "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "sys.settrace",
        "sys.setprofile", "sys._current_frames", "sys._current_exceptions",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.link", "os.symlink"))
    deny_imports = frozenset((
        "ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "_xxsubinterpreters",
        "_xxinterpchannels", "_interpreters", "_interpchannels", "_interpqueues"))
    path_events = {  # event -> positions of (path, dir_fd) pairs that must lie inside tmp
        "os.mkdir": ((0, 2),), "os.rmdir": ((0, 1),), "os.remove": ((0, 1),),
        "os.rename": ((0, 2), (1, 3)), "os.truncate": ((0, None),), "os.chdir": ((0, None),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
        "os.chflags": ((0, None),), "os.lchflags": ((0, None),), "os.lchmod": ((0, None),),
        "os.setxattr": ((0, None),), "os.removexattr": ((0, None),)}
    frame_attrs = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame"))

    def text(x):  # an exact str (a str subclass could override startswith)
        if type_(x) is str_:
            return x
        if isinstance_(x, bytes_):
            return bdecode(x, "utf-8", "surrogateescape")
        return join((x,))

    def where(path, dir_fd=None):
        """The absolute, normalised path; symlinks cannot exist under tmp (os.symlink is
        refused), so a lexical normalisation is enough to tell inside from outside."""
        if isinstance_(path, int_):
            p = readlink("/proc/self/fd/%d" % path)
        else:
            p = text(fspath(path))
            if p[:1] != "/":
                # events pass dir_fd -1 when none was given; -100 is AT_FDCWD
                base = (getcwd() if dir_fd is None or dir_fd < 0
                        else readlink("/proc/self/fd/%d" % dir_fd))
                p = base + "/" + p
        parts = []
        for part in p.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    def inside(path, dir_fd=None):
        try:
            p = where(path, dir_fd)
        except Base:
            return False
        return p == tmp or p.startswith(tmp + "/")

    def check_open(path, mode, flags):
        if isinstance_(path, int_):
            return  # an fd that is already open
        flags = flags if isinstance_(flags, int_) else 0
        writing = flags & write_flags
        if mode is not None:
            mode = text(mode)
            writing = writing or "w" in mode or "a" in mode or "x" in mode or "+" in mode
        p = where(path)
        if p == "/dev/null":
            return
        if p.startswith("/proc/") and p.endswith("/mem"):
            raise Permission("sandbox: reading process memory is not allowed")
        if writing or mode is None:  # mode is None: os.open, which can give a directory fd
            if not (p == tmp or p.startswith(tmp + "/")):
                if writing:
                    raise Permission("sandbox: writing outside the working directory "
                                     "is not allowed")
                try:
                    is_dir = S_ISDIR(stat_(p).st_mode)
                except OSError_:
                    is_dir = False
                if is_dir:
                    raise Permission("sandbox: os.open of a directory outside the working "
                                     "directory is not allowed")
                return
            if writing:
                try:
                    mode_bits = stat_(p).st_mode
                except OSError_:  # a new file: counts against the budget
                    if flags & o_creat or mode is not None:
                        if budget[0] <= 0:
                            raise Permission("sandbox: too many files created")
                        budget[0] -= 1
                else:  # a directory: tempfile passes one to io.open with an opener
                    if not (S_ISREG(mode_bits) or S_ISDIR(mode_bits)):
                        raise Permission("sandbox: writing to a special file is not allowed")

    def hook(event, args):
        if event in deny_events:
            raise Permission("sandbox: %s is not allowed" % event)
        if event == "open":
            check_open(*args[:3])
        elif event in path_events:
            for i, j in path_events[event]:
                if not inside(args[i], None if j is None else args[j]):
                    raise Permission("sandbox: %s outside the working directory" % event)
            if event == "os.mkdir":
                if budget[0] <= 0:
                    raise Permission("sandbox: too many files created")
                budget[0] -= 1
        elif event == "import":
            name = text(args[0])
            if name.split(".")[0] in deny_imports:
                raise Import("sandbox: importing %s is not allowed" % name)
        elif event == "sys._getframe":
            raise Value("sandbox: frames are not available")  # what stdlib callers expect
        elif event == "object.__getattr__":
            if args[1] in frame_attrs:
                raise Attribute("sandbox: frames are not available")
        elif event == "sys.addaudithook":
            raise Runtime("sandbox: audit hooks are not allowed")
        elif event[:7] == "socket.":
            if event != "socket.__new__" or args[1] != 1:  # AF_UNIX, e.g. asyncio's socketpair
                raise Permission("sandbox: network access is not allowed")
        elif event[:7] == "ctypes.":
            raise Permission("sandbox: ctypes is not allowed")

    # -- compile everything before any model code runs
    import _signal  # the C functions: signal.signal is Python and reads module globals
    write, exit_, exec_, setitimer, set_handler = (
        os.write, os._exit, exec, _signal.setitimer, _signal.signal)
    SIGALRM, ITIMER_REAL, step_s = signal.SIGALRM, signal.ITIMER_REAL, cfg["step_s"]
    type_name = type.__dict__["__name__"].__get__
    exc_args = BaseException.__dict__["args"].__get__

    def emit(*fields):
        line = (nonce + " " + " ".join(fields)).replace("\n", " ")[:300] + "\n"
        data = line.encode("ascii", "replace")
        while data:
            data = data[write(out, data):]

    def describe(exc, depth=0):
        """The exception's type name, and its message when that is a plain string, or the
        exception it wraps (urllib's URLError): str() of anything else would run model
        code inside the harness."""
        try:
            name = join((type_name(type_(exc)),))[:60].replace(" ", "_")
            for arg in exc_args(exc)[:2]:
                if type_(arg) is str_:
                    return name + ": " + arg[:120]
                if depth == 0 and issubclass_(type_(arg), Base):
                    return name + ": " + describe(arg, 1)
            return name
        except Base:
            return "?"

    class Timeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise Timeout

    def run(code):
        """None if `code` ran without raising, else why not."""
        try:
            try:
                set_handler(SIGALRM, on_alarm)
                setitimer(ITIMER_REAL, step_s)
                exec_(code, ns)
            finally:
                setitimer(ITIMER_REAL, 0)
        except Timeout:
            return "timeout"
        except Base as exc:
            return describe(exc)
        return None

    def compiled(source, name):
        try:
            return compile(source, name, "exec"), ""
        except Base as exc:
            where_ = " line %s" % exc.lineno if isinstance(exc, SyntaxError) and exc.lineno else ""
            return None, "%s%s: %s" % (type_name(type_(exc)), where_, getattr(exc, "msg", "") or "")

    setup, setup_err = compiled(cfg["setup"], "<setup>")
    solution, solution_err = compiled(cfg["code"], "<solution>")
    tests = [compiled(t, "<test %d>" % i)[0] for i, t in enumerate(cfg["tests"])]
    n_tests = len(tests)
    del cfg
    module = types.ModuleType("solution")
    sys.modules["solution"] = module
    ns = module.__dict__
    ns["__builtins__"] = builtins
    sys.addaudithook(hook)

    if setup is None:
        emit("S", "setup_error", setup_err)
        exit_(0)
    why = run(setup)
    if why is not None:
        emit("S", "setup_error", why)
        exit_(0)
    if solution is None:
        emit("S", "syntax_error", solution_err)
        exit_(0)
    why = run(solution)
    if why is not None:
        emit("S", "solution_error", why)
        exit_(0)
    emit("S", "ok", "")
    for i in range_(n_tests):  # range_: model code may have rebound builtins.range
        code = tests[i]
        why = "test_does_not_compile" if code is None else run(code)
        emit("T", "%d" % i, "pass" if why is None else "fail", why or "")
    emit("D", "", "")
    exit_(0)


_main()
'''


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
