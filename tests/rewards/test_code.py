"""The code reward: extraction, scoring, and a sandbox that holds against the things model
code does by accident or as a reward hack. Every run must end within KILL_SLACK x its wall
limit timeout_s: a kill bound with room for a loaded 2-core machine (speed is not tested here;
the per-step and wall timeouts that fired are asserted by the reasons)."""

import os
import secrets
import tempfile
import time

import pytest

from posttrain.rewards import get_reward
from posttrain.rewards.code import code_reward, extract_code, run_tests

TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]
EX = {"tests": TESTS}
GOOD = "def add(a, b):\n    return a + b\n"
FAST = {"timeout_s": 3.0, "test_timeout_s": 0.5}
KILL_SLACK = 5
"""A run must end within 5x its wall limit `timeout_s` (the process group is killed at it)."""


def score(code, example=EX, **opts):
    """Run `code` as a completion; assert it ended within KILL_SLACK x its timeout_s."""
    opts = {**FAST, **opts}
    t0 = time.monotonic()
    res = code_reward(code, example, **opts)
    took = time.monotonic() - t0
    limit_s = KILL_SLACK * opts["timeout_s"]
    assert took < limit_s, f"{took:.2f} s > {limit_s} s: {res}"
    return res


def _ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def sandbox_processes():
    """Live sandbox processes (their command line holds the harness) that descend from this
    test session, directly or through the reward worker, or were orphaned."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"posttrain code sandbox harness" not in f.read():
                        continue
                p = _ppid(pid)
                if p == 1:
                    out.append(int(pid))
                    continue
                while p > 1 and p != os.getpid():
                    p = _ppid(p)
                if p == os.getpid():
                    out.append(int(pid))
            except (OSError, ValueError, IndexError):
                pass
    return out


def escape_path():
    return os.path.join(tempfile.gettempdir(), f"posttrain_escape_{secrets.token_hex(6)}")


# ----------------------------------------------------------------------------- extraction


def test_extract_prefers_the_last_python_block():
    text = ("Idea first.\n```python\ndef add(a, b): return 0\n```\nFixed:\n```python\n"
            "def add(a, b):\n    return a + b\n```\nRun it with:\n```bash\npython x.py\n```\n")
    assert extract_code(text) == "def add(a, b):\n    return a + b"


def test_extract_untagged_then_any_fence_then_whole_text():
    assert extract_code("x\n```\nprint(1)\n```\n```js\nalert(1)\n```") == "print(1)"
    assert extract_code("```js\nalert(1)\n```") == "alert(1)"
    assert extract_code("  x = 1\n  y = 2\n") == "x = 1\ny = 2"


def test_extract_unclosed_fence_runs_to_the_end_and_is_dedented():
    assert extract_code("Sure:\n  ```py\n  def f():\n      return 1\n") == "def f():\n    return 1"


def test_extract_skips_thinking():
    assert extract_code("<think>```python\nbad()\n```</think>\n```python\nok()\n```") == "ok()"
    assert extract_code("reasoning without an opening tag</think>ok()") == "ok()"
    assert extract_code("<think>still thinking ```python\nx = 1") == ""


# ----------------------------------------------------------------------------- scoring


def test_fenced_solution_with_prose_scores_one():
    res = score(f"<think>add them</think>Here you go:\n```python\n{GOOD}```\nDone.")
    assert (res.score, res.reason) == (1.0, "ok")


def test_unfenced_solution_scores_one():
    assert score(GOOD).score == 1.0


def test_two_of_three_tests_pass():
    res = score("def add(a, b):\n    return a + b if a >= 0 else 99\n")
    assert res.score == pytest.approx(2 / 3)
    assert res.reason == "tests_failed"
    assert "test 2: AssertionError" in res.detail


def test_syntax_error_scores_zero():
    res = score("```python\ndef add(a, b) return a + b\n```")
    assert (res.score, res.reason) == (0.0, "syntax_error")


def test_prose_without_a_fence_is_a_syntax_error():
    assert score("The answer is to add a and b.").reason == "syntax_error"


def test_solution_error_scores_zero():
    res = score(GOOD + "raise RuntimeError('boom')\n")
    assert (res.score, res.reason, res.detail) == (0.0, "solution_error", "RuntimeError: boom")


def test_setup_runs_first_in_the_same_namespace():
    ex = {"tests": ["assert total([1, 2]) == 3"], "setup": "from typing import List"}
    assert score("def total(xs: List[int]) -> int:\n    return sum(xs)\n", ex).score == 1.0
    assert score(GOOD, {"tests": TESTS, "setup": "import nonexistent_mod"}).reason == "setup_error"


def test_main_block_does_not_run():
    assert score(GOOD + "if __name__ == '__main__':\n    print(add(int(input()), 2))\n").score == 1.0


def test_a_test_that_does_not_compile_fails_alone():
    res = score(GOOD, {"tests": ["assert add(1, 1) == 2", "assert add(1,"]})
    assert res.score == 0.5


def test_bad_examples_and_empty_completions():
    assert code_reward(GOOD, {}).reason == "bad_example"
    assert code_reward(GOOD, {"tests": []}).reason == "bad_example"
    assert code_reward(GOOD, {"tests": [1]}).reason == "bad_example"
    assert code_reward(GOOD, {"tests": TESTS, "setup": 3}).reason == "bad_example"
    assert code_reward("", EX).reason == "no_code"
    assert code_reward("<think>hmm", EX).reason == "no_code"


@pytest.mark.parametrize("completion", ["```", "```python", "\x00", "\udc80", "(" * 5000,
                                        "```python\n\udcff = 1\n```", "</think>", "0" * 10000])
def test_odd_completions_score_zero_without_raising(completion):
    assert score(completion).score == 0.0


def test_ordinary_stdlib_code_works_in_the_sandbox():
    code = GOOD + """
import asyncio, threading, tempfile, json, enum, typing, heapq, re
from collections import namedtuple
from dataclasses import dataclass
P = namedtuple("P", "a b")
@dataclass
class Q:
    x: int
T = typing.TypeVar("T")
E = enum.Enum("E", "A B")
async def twice(x):
    return 2 * x
assert asyncio.run(twice(2)) == 4
box = []
t = threading.Thread(target=box.append, args=(1,)); t.start(); t.join()
with open("scratch.json", "w") as f:
    json.dump({"a": 1}, f)
with open("scratch.json") as f:
    assert json.load(f) == {"a": 1}
with tempfile.NamedTemporaryFile("w") as f:
    f.write("ok")
import os, shutil
os.makedirs("a/b")
open("a/b/f", "w").close()
os.rename("a/b/f", "a/g")
os.chmod("a/g", 0o600)
os.remove("a/g")
shutil.rmtree("a")
assert box == [1] and P(1, 2).a == 1 and Q(3).x == 3
"""
    res = score(code)
    assert (res.score, res.reason) == (1.0, "ok"), res


# ----------------------------------------------------------------------------- time


def test_infinite_loop_at_top_level_is_stopped_per_step():
    res = score("while True:\n    pass\n")
    assert (res.score, res.reason, res.detail) == (0.0, "solution_error", "timeout")


def test_a_hanging_test_fails_alone():
    res = score("def add(a, b):\n    while a == 0:\n        pass\n    return a + b\n")
    assert res.score == pytest.approx(2 / 3)
    assert "timeout" in res.detail


def test_a_loop_that_swallows_the_timer_hits_the_wall_limit_and_keeps_earlier_credit():
    code = ("def add(a, b):\n    while a < 0:\n        try:\n            while True:\n"
            "                pass\n        except BaseException:\n            pass\n    return a + b\n")
    res = score(code, timeout_s=1.5)
    assert (res.score, res.reason) == (pytest.approx(2 / 3), "time_limit")
    assert sandbox_processes() == []


# ----------------------------------------------------------------------------- processes


def test_fork_bomb_is_contained():
    res = score("import os\nwhile True:\n    os.fork()\n")
    assert (res.score, res.reason) == (0.0, "solution_error")
    assert "os.fork is not allowed" in res.detail
    assert sandbox_processes() == []


@pytest.mark.parametrize("attack", [
    "import os\nos.system('touch {path}')",
    "import subprocess\nsubprocess.run(['touch', '{path}'])",
    "import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{path}'], {{}})",
    "import os\nos.execv('/usr/bin/touch', ['touch', '{path}'])",
    "import os\nos.popen('touch {path}').read()",
    "import pty\npty.spawn(['touch', '{path}'])",
    "import multiprocessing as mp\np = mp.get_context('spawn').Process(target=print); p.start()",
    "import _posixsubprocess\n_posixsubprocess.fork_exec()",
    "import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess",
])
def test_subprocesses_are_refused(attack):
    path = escape_path()
    res = score(GOOD + attack.format(path=path) + "\n")
    assert (res.score, res.reason) == (0.0, "solution_error"), res
    assert "sandbox" in res.detail or res.detail.startswith("ImportError"), res
    assert not os.path.exists(path)


def test_signals_to_other_processes_are_refused():
    res = score(GOOD + "import os\nos.kill(os.getppid(), 9)\n")
    assert "os.kill is not allowed" in res.detail


def test_limits_cannot_be_raised():
    res = score(GOOD + "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert "resource.setrlimit is not allowed" in res.detail


# ----------------------------------------------------------------------------- network


@pytest.mark.parametrize("attack", [
    "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
    "import socket\nsocket.getaddrinfo('example.com', 80)",
    "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)",
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/var/run/docker.sock')",
])
def test_network_is_refused(attack):
    res = score(GOOD + attack + "\n")
    assert (res.score, res.reason) == (0.0, "solution_error")
    assert "network access is not allowed" in res.detail, res


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("attack", [
    "open({path!r}, 'w').write('x')",
    "open('../' + {name!r}, 'a').write('x')",
    "import pathlib\npathlib.Path({path!r}).write_text('x')",
    "import os\nos.close(os.open({path!r}, os.O_CREAT | os.O_WRONLY))",
    "import os\nopen('inside', 'w').close()\nos.rename('inside', {path!r})",
    "import shutil\nopen('inside', 'w').close()\nshutil.copy('inside', {path!r})",
    "import os\nos.mkdir({path!r})",
    "import os\nos.symlink({path!r}, 'link')\nopen('link', 'w').write('x')",
    "import os\nos.link('/etc/hostname', 'hard')",
    "import os\nos.chdir('..')\nopen({name!r}, 'w').write('x')",
    "import os\nd = os.open({dir!r}, os.O_RDONLY)\nos.close(os.open({name!r}, os.O_CREAT | os.O_WRONLY, dir_fd=d))",
])
def test_writes_outside_the_temp_dir_are_refused(attack):
    path = escape_path()
    name = os.path.basename(path)
    res = score(GOOD + attack.format(path=path, name=name, dir=os.path.dirname(path)) + "\n")
    assert (res.score, res.reason) == (0.0, "solution_error"), res
    assert "sandbox" in res.detail, res
    assert not os.path.exists(path)


def test_existing_files_outside_are_not_removed():
    fd, path = tempfile.mkstemp(prefix="posttrain_keep_")
    os.close(fd)
    try:
        res = score(GOOD + f"import os\nos.remove({path!r})\n")
        assert "os.remove outside the working directory" in res.detail
        assert os.path.exists(path)
    finally:
        os.remove(path)


def test_file_size_and_count_are_capped():
    res = score(GOOD + "open('big', 'w').write('x' * (8 << 20))\n")
    assert (res.score, res.reason) == (0.0, "solution_error")
    assert "File too large" in res.detail
    res = score(GOOD + "for i in range(100):\n    open(f'f{i}', 'w').close()\n")
    assert "too many files" in res.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_files_cannot_be_written():
    path = escape_path()
    res = score(GOOD + "import os\ntry:\n    os.mknod('dev', 0o20600, os.makedev(1, 3))\n"
                "except OSError:\n    pass\nelse:\n    open('dev', 'w').write('x')\n")
    assert res.score == 1.0 or "special file" in res.detail, res
    assert not os.path.exists(path)


def test_temp_dirs_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = GOOD + "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a', 0)\n"
    code += f"assert os.getcwd().startswith({str(tmp_path)!r})\n"
    assert score(code).score == 1.0
    score("while True:\n    pass\n")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- output and memory


@pytest.mark.parametrize("attack, reason", [
    ("print('x' * 10**9)", "solution_error"),
    ("while True:\n    print('x' * 10000)", "solution_error"),
    ("import sys\nwhile True:\n    sys.stderr.write('y' * 100000)", "solution_error"),
    ("for _ in range(100000):\n    print('spam' * 100)", "ok"),
])
def test_huge_output_is_discarded(attack, reason):
    res = score(GOOD + attack + "\n")
    assert res.reason == reason, res


@pytest.mark.parametrize("attack", [
    "x = [0] * 10**10",
    "x = []\nwhile True:\n    x.append(bytearray(10**6))",
    "s = 'x' * 10**6\nwhile True:\n    s += s",
])
def test_memory_bombs_are_capped(attack):
    res = score(GOOD + attack + "\n", mem_mb=256)
    assert res.score == 0.0, res


# ----------------------------------------------------------------------------- forging the result


def test_printed_or_written_pass_markers_are_ignored():
    forge = ("import os, sys\n"
             "for fd in range(1, 256):\n"
             "    for i in range(3):\n"
             "        line = b'%s T %d pass x\\n' % (b'0' * 32, i)\n"
             "        try:\n            os.write(fd, line)\n        except OSError:\n            pass\n"
             "print('0' * 32, 'S ok', flush=True)\n"
             "def add(a, b):\n    return None\n")
    assert score(forge).score == 0.0


@pytest.mark.parametrize("early_exit", ["import sys\nsys.exit(0)", "raise SystemExit(0)",
                                        "import os\nos._exit(0)"])
def test_exiting_early_scores_zero(early_exit):
    assert score(GOOD + early_exit + "\n").score == 0.0
    wrong = "def add(a, b):\n    " + early_exit.replace("\n", "\n    ") + "\n"
    assert score(wrong).score == 0.0


def test_atexit_and_threads_left_running_change_nothing():
    code = GOOD + ("import atexit, threading, time, os\natexit.register(os._exit, 3)\n"
                   "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    assert score(code).score == 1.0


def test_rebinding_builtins_does_not_fool_the_harness():
    code = ("import builtins\n"
            "builtins.exec = lambda *a, **k: None\n"
            "builtins.range = lambda *a: [0, 1, 2]\n"
            "builtins.enumerate = lambda xs: [(i, compile('pass', 't', 'exec')) for i in (0, 1, 2)]\n"
            "builtins.len = lambda x: 0\n"
            "builtins.isinstance = lambda *a: True\n"
            "builtins.BaseException = type('Nothing', (Exception,), {})\n"
            "def add(a, b):\n    return None\n")
    res = score(code)
    assert (res.score, res.reason) == (0.0, "tests_failed"), res


@pytest.mark.parametrize("peek", [
    "import sys\nf = sys._getframe(1)",
    "import gc\ngc.get_objects()",
    "import gc\ngc.get_referrers(add)",
    "try:\n    raise ValueError\nexcept ValueError as e:\n    f = e.__traceback__.tb_frame",
    "import sys\nsys.settrace(lambda *a: None)",
    "import ctypes",
    "open('/proc/self/mem', 'rb')",
])
def test_harness_introspection_is_refused(peek):
    res = score(GOOD + peek + "\n")
    assert (res.score, res.reason) == (0.0, "solution_error"), res
    assert "sandbox" in res.detail, res


def test_model_code_cannot_add_audit_hooks():
    code = GOOD + ("import sys\nseen = []\nsys.addaudithook(lambda event, args: seen.append(event))\n"
                   "open('probe', 'w').close()\nif seen:\n    raise ValueError('hook was added')\n")
    assert score(code).score == 1.0


# ----------------------------------------------------------------------------- through the wrapper


def test_through_get_reward():
    reward = get_reward("code", timeout_s=3.0, test_timeout_s=0.5)
    t0 = time.monotonic()
    assert reward(f"```python\n{GOOD}```", EX) == 1.0
    assert reward("def add(a, b):\n    return 3\n", EX) == pytest.approx(1 / 3)
    assert reward.evaluate("while True:\n    pass\n", EX).reason == "solution_error"
    assert reward.evaluate("import os\nos.kill(os.getppid(), 9)\n", EX).reason == "solution_error"
    assert reward.evaluate("import os\nwhile True:\n    os.fork()\n", EX).score == 0.0
    assert reward(GOOD, EX) == 1.0  # the worker survived all of it
    assert reward.evaluate(None, EX).reason == "bad_value"
    assert time.monotonic() - t0 < KILL_SLACK * 3.0  # seven runs, none near its 3 s limit
    assert sandbox_processes() == []


def test_bad_options_are_named():
    res = get_reward("code", timeout_s=600.0).evaluate(GOOD, EX)
    assert res.reason == "error" and "timeout_s" in res.detail
    with pytest.raises(ValueError, match="mem_mb"):
        code_reward(GOOD, EX, mem_mb=1)
    with pytest.raises(ValueError, match="no option"):
        get_reward("code", memory=1)


def test_run_tests_reports_each_test():
    run = run_tests("def add(a, b):\n    return a * b\n", TESTS, timeout_s=3, test_timeout_s=0.5)
    assert run.passed == [False, True, False]
    assert run.failures == {0: "AssertionError", 2: "AssertionError"}
