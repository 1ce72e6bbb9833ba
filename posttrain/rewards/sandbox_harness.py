# posttrain code sandbox harness (posttrain/rewards/sandbox_harness.py)
#
# The child side of the code reward's sandbox; see posttrain/rewards/code.py for what it
# does and does not protect against. The parent reads this file as text and runs it as
# `python -I -S -B -c <this source>` (no -S with site_packages=True; the first line above
# marks the sandbox's command line); the nonce, the result pipe's fd, the temp dir, the limits, the program and its
# tests arrive as JSON on stdin. Importing this module only defines `_main`.
#
# Everything it needs after model code starts is bound to a local of `_main` first: model
# code can rebind builtins, os.path or json, but not the locals of a frame it cannot reach
# (sys._getframe, tb_frame and gc are refused).
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


if __name__ == "__main__":
    _main()
