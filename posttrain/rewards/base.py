"""The reward contract: a registry of reward functions, a safe wrapper that never lets one
crash, hang or exhaust the training run, and `RewardSet`, which scores a batch of
completions on K named components into the (N, K) matrix the advantage code takes.

A reward function is `fn(completion: str, example: dict, **params) -> float | RewardResult`
(params are keyword options with defaults, bound by `get_reward(name, **params)`). It may
raise, loop forever or allocate without bound; `SafeReward` turns each of those into the
component's floor score and a reason that is counted in the metrics:

    ok          the function returned a finite number (clamped to [floor, ceiling])
    error       it raised an exception
    timeout     it ran past `timeout_s` (its worker process is killed and replaced)
    memory      it hit the worker's memory cap (MemoryError, or the worker was killed)
    crash       the worker process exited (os._exit, a segfault in a C extension)
    too_large   the completion was longer than `max_chars` (not run at all)
    bad_value   it returned NaN, inf or a non-number

Isolation: by default a reward runs in a long-lived worker process forked from the trainer,
so a timeout can be enforced from any thread (no signals) by killing the worker, and the
worker's address space is capped (RLIMIT_AS = its size at start + `POSTTRAIN_REWARD_MEM_MB`,
default 1024). `isolate=False` runs the function in the calling process: faster, but then
only exceptions and the size cap are handled, not timeouts or memory. Functions registered
after the worker was forked are picked up by re-forking it (a registry version counter).
"""

from __future__ import annotations

import inspect
import math
import multiprocessing as mp
import os
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from posttrain.registry import Registry

REASONS = ("ok", "error", "timeout", "memory", "crash", "too_large", "bad_value")


@dataclass(frozen=True)
class RewardResult:
    """A score with the reason it was given (a short tag such as "ok", "no_payload",
    "parse_error", "wrong_answer") and an optional human-readable detail."""

    score: float
    reason: str = "ok"
    detail: str = ""


@dataclass(frozen=True)
class RewardSpec:
    """One registered reward and what the docs say about it."""

    name: str
    fn: Callable[[str, dict], "float | RewardResult"]
    checks: str
    """One sentence: what it scores."""
    limits: str = ""
    """Size, time and other limits the function itself enforces (docs)."""
    floor: float = 0.0
    ceiling: float = 1.0
    timeout_s: float = 5.0
    max_chars: int = 200_000
    isolate: bool = True


class _RewardRegistry(Registry[RewardSpec]):
    version = 0

    def register(self, name, item=None):  # noqa: D401 - same contract as Registry.register
        out = super().register(name, item)
        type(self).version += 1
        return out


REWARDS: Registry[RewardSpec] = _RewardRegistry("reward")


def register_reward(name: str, *, checks: str, limits: str = "", floor: float = 0.0,
                    ceiling: float = 1.0, timeout_s: float = 5.0, max_chars: int = 200_000,
                    isolate: bool = True):
    """Decorator: `@register_reward("json_format", checks="...")` over `fn(completion, example)`."""
    def deco(fn):
        REWARDS.register(name, RewardSpec(name=name, fn=fn, checks=checks, limits=limits,
                                          floor=floor, ceiling=ceiling, timeout_s=timeout_s,
                                          max_chars=max_chars, isolate=isolate))
        return fn
    return deco


# --------------------------------------------------------------------------- running one call


def _as_result(value: Any) -> RewardResult:
    if isinstance(value, RewardResult):
        return value
    return RewardResult(float(value))


def _run_inline(spec: RewardSpec, completion: str, example: Mapping, params: Mapping) -> RewardResult:
    """Call the function in this process; exceptions become reasons, never propagate."""
    try:
        return _as_result(spec.fn(completion, dict(example), **params))
    except MemoryError:
        return RewardResult(spec.floor, "memory", "MemoryError")
    except RecursionError:
        return RewardResult(spec.floor, "error", "RecursionError")
    except Exception as exc:  # noqa: BLE001 - the whole point: any failure is a score
        return RewardResult(spec.floor, "error", f"{type(exc).__name__}: {str(exc)[:200]}")
    except BaseException as exc:  # SystemExit, KeyboardInterrupt from inside the function
        if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            raise
        return RewardResult(spec.floor, "error", type(exc).__name__)


def _finish(spec: RewardSpec, res: RewardResult) -> RewardResult:
    """Clamp a returned score to [floor, ceiling]; NaN, inf and non-numbers score the floor."""
    try:
        score = float(res.score)
    except (TypeError, ValueError):
        return RewardResult(spec.floor, "bad_value", repr(res.score)[:80])
    if not math.isfinite(score):
        return RewardResult(spec.floor, "bad_value", repr(score))
    if res.reason in REASONS[1:]:
        score = spec.floor
    return RewardResult(min(max(score, spec.floor), spec.ceiling), res.reason, res.detail)


def _worker_main(conn, mem_mb: int) -> None:
    """The isolated worker: cap its address space, then answer (name, completion, example)."""
    try:
        import resource
        with open("/proc/self/statm") as f:
            vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = vm_bytes + mem_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except Exception:  # noqa: BLE001 - no /proc or no resource module: run uncapped
        pass
    # The trainer's threads (torch's pools, the progress bar) do not exist in this forked
    # child; keep any library that would start them single-threaded.
    os.environ["OMP_NUM_THREADS"] = "1"
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        name, completion, example, params = msg
        spec = REWARDS.get(name)
        res = _run_inline(spec, completion, example, params)
        try:
            conn.send((res.score, res.reason, res.detail))
        except Exception:  # noqa: BLE001 - e.g. an unpicklable score
            conn.send((spec.floor, "bad_value", "unpicklable result"))


class _Worker:
    """One forked worker process; restarted after a timeout, a crash or a registry change."""

    def __init__(self):
        self.proc = None
        self.conn = None
        self.version = -1
        self.lock = threading.Lock()

    def _start(self) -> None:
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        mem_mb = int(os.environ.get("POSTTRAIN_REWARD_MEM_MB", "1024"))
        with warnings.catch_warnings():  # Python >= 3.12 warns on fork with threads alive
            warnings.simplefilter("ignore", DeprecationWarning)
            proc = ctx.Process(target=_worker_main, args=(child, mem_mb), daemon=True,
                               name="posttrain-reward-worker")
            proc.start()
        child.close()
        self.proc, self.conn, self.version = proc, parent, _RewardRegistry.version

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=5)
            self.conn.close()
        self.proc = self.conn = None

    def call(self, spec: RewardSpec, completion: str, example: Mapping, params: Mapping) -> RewardResult:
        with self.lock:
            if self.proc is None or not self.proc.is_alive() or self.version != _RewardRegistry.version:
                self.stop()
                self._start()
            try:
                self.conn.send((spec.name, completion, dict(example), dict(params)))
            except Exception as exc:  # noqa: BLE001 - an unpicklable example
                return RewardResult(spec.floor, "error", f"cannot send the example: {exc}")
            if not self.conn.poll(spec.timeout_s):
                self.stop()
                return RewardResult(spec.floor, "timeout", f"over {spec.timeout_s:g} s")
            try:
                score, reason, detail = self.conn.recv()
            except (EOFError, OSError):  # the worker died: killed (memory) or a hard crash
                self.proc.join(timeout=5)
                code = self.proc.exitcode
                self.stop()
                if code is not None and code < 0:
                    return RewardResult(spec.floor, "memory", f"the reward worker was killed by signal {-code}")
                return RewardResult(spec.floor, "crash", f"the reward worker exited with code {code}")
            return RewardResult(score, reason, detail)


_WORKER = _Worker()


class SafeReward:
    """`get_reward(name)`: call it as `score = r(completion, example)` (a float that is
    always finite and in [floor, ceiling]) or `r.evaluate(...)` for the `RewardResult`."""

    def __init__(self, spec: RewardSpec, params: Mapping[str, Any] | None = None):
        self.spec = spec
        self.name = spec.name
        self.params = dict(params or {})
        _check_params(spec, self.params)

    def evaluate(self, completion: Any, example: Mapping | None = None) -> RewardResult:
        spec = self.spec
        example = {} if example is None else example
        if not isinstance(completion, str):
            return RewardResult(spec.floor, "bad_value", f"completion is {type(completion).__name__}, not str")
        if len(completion) > spec.max_chars:
            return RewardResult(spec.floor, "too_large", f"{len(completion)} chars > {spec.max_chars}")
        if spec.isolate:
            res = _WORKER.call(spec, completion, example, self.params)
        else:
            res = _run_inline(spec, completion, example, self.params)
        return _finish(spec, res)

    def __call__(self, completion: Any, example: Mapping | None = None) -> float:
        return self.evaluate(completion, example).score

    def __repr__(self) -> str:
        return f"SafeReward({self.name!r}, {self.params})"


def reward_params(spec: RewardSpec) -> dict[str, Any]:
    """The keyword options a reward takes, with their defaults."""
    sig = inspect.signature(spec.fn)
    return {p.name: p.default for p in list(sig.parameters.values())[2:]
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}


def _check_params(spec: RewardSpec, params: Mapping[str, Any]) -> None:
    known = reward_params(spec)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ValueError(f"reward {spec.name!r} has no option {unknown[0]!r}; "
                         f"its options: {', '.join(known) or 'none'}")


def get_reward(name: str, **params: Any) -> SafeReward:
    """The safe, wrapped reward registered under `name` (UnknownName lists the known ones),
    with its keyword options bound (an unknown option is a ValueError)."""
    return SafeReward(REWARDS.get(name), params)


# --------------------------------------------------------------------------- a set of components


@dataclass
class RewardBatch:
    """Scores of N completions on K components."""

    names: list[str]
    weights: list[float]
    scores: list[list[float]]
    """N rows of K floats; `matrix()` gives the (N, K) float32 tensor."""
    reasons: list[list[str]]
    seconds: float
    failures: Counter = field(default_factory=Counter)
    """(component, reason) -> count, for every reason other than "ok" and the function's
    own tags (which are counted in `tags`)."""
    tags: Counter = field(default_factory=Counter)

    def matrix(self):
        import torch
        return torch.tensor(self.scores, dtype=torch.float32).reshape(len(self.scores), len(self.names))

    def total(self) -> list[float]:
        return [sum(w * s for w, s in zip(self.weights, row)) for row in self.scores]

    def metrics(self) -> dict[str, float]:
        """reward/mean, reward/std, reward/<component>/mean, reward_fail/<component>/<reason>."""
        n = len(self.scores)
        out: dict[str, float] = {}
        tot = self.total()
        if n:
            mean = sum(tot) / n
            out["reward/mean"] = mean
            out["reward/std"] = math.sqrt(sum((t - mean) ** 2 for t in tot) / n)
            for k, name in enumerate(self.names):
                out[f"reward/{name}/mean"] = sum(row[k] for row in self.scores) / n
        for (name, reason), c in sorted(self.failures.items()):
            out[f"reward_fail/{name}/{reason}"] = float(c)
        out["time/reward"] = self.seconds
        return out


class RewardSet:
    """K named components with weights, e.g.

        RewardSet({"format": "structured_format", "schema": "structured_schema"},
                  weights={"format": 1.0, "schema": 0.8})

    `components` maps the name used in metrics to a registered reward name, or to
    {"reward": name, "params": {...}} for one with options (a list of reward names uses
    each as its own metric name). `evaluate(completions, examples)` returns a
    RewardBatch; no reward can raise out of it.
    """

    def __init__(self, components: Mapping[str, str] | Sequence[str],
                 weights: Mapping[str, float] | Sequence[float] | None = None):
        if not isinstance(components, Mapping):
            components = {c: c for c in components}
        if not components:
            raise ValueError("a RewardSet needs at least one component")
        self.names = list(components)
        self.rewards = [get_reward(r) if isinstance(r, str) else get_reward(r["reward"], **r.get("params", {}))
                        for r in components.values()]
        if weights is None:
            self.weights = [1.0] * len(self.names)
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(self.names)
            if unknown:
                raise ValueError(f"weights for unknown components {sorted(unknown)}; components: {self.names}")
            self.weights = [float(weights.get(n, 1.0)) for n in self.names]
        else:
            if len(weights) != len(self.names):
                raise ValueError(f"{len(weights)} weights for {len(self.names)} components {self.names}")
            self.weights = [float(w) for w in weights]

    def evaluate(self, completions: Sequence[str], examples: Sequence[Mapping]) -> RewardBatch:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        t0 = time.perf_counter()
        scores, reasons = [], []
        failures, tags = Counter(), Counter()
        for completion, example in zip(completions, examples):
            row, why = [], []
            for name, reward in zip(self.names, self.rewards):
                res = reward.evaluate(completion, example)
                row.append(res.score)
                why.append(res.reason)
                if res.reason in REASONS[1:]:
                    failures[(name, res.reason)] += 1
                elif res.reason != "ok":
                    tags[(name, res.reason)] += 1
            scores.append(row)
            reasons.append(why)
        return RewardBatch(self.names, self.weights, scores, reasons,
                           time.perf_counter() - t0, failures, tags)
