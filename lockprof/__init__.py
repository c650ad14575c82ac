"""lockprof: a low-overhead lock-contention profiler for CPython.

    import lockprof
    lockprof.start()            # sample_rate=0.01
    ...
    lockprof.stop()
    for rec in lockprof.stats(): print(rec)

While running, threading.Lock/RLock/Semaphore/BoundedSemaphore/Condition and
asyncio.Lock/Semaphore/BoundedSemaphore/Condition make wrapped locks whose
methods are C functions generated from a spec; every contended acquisition is
counted exactly with its wait, acquisitions and hold times are sampled.
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _lockprof, _patch

__all__ = ["start", "stop", "is_running", "stats", "samples", "write", "reset", "Profiler",
           "DEFAULT_SAMPLE_RATE"]

# what the profile covers: since the last reset (or import), with which settings
_window = {"time_ns": time.time_ns(), "mono_ns": time.monotonic_ns(),
           "sample_rate": None, "wait_period_ns": None}

DEFAULT_SAMPLE_RATE = 0.01
DEFAULT_MAX_LOCKS = 100_000
DEFAULT_MAX_FRAMES = 64
DEFAULT_WAIT_PERIOD_NS = 1_000_000
DEFAULT_MAX_SAMPLES = 1 << 20


def _check_rate(sample_rate: Any) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise ValueError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
    rate = float(sample_rate)
    if not (0.0 <= rate <= 1.0) or math.isnan(rate):
        raise ValueError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
    return rate


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def _check_modules(name: str, value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a list of module names, got {value!r}") from None
    for m in names:
        if not isinstance(m, str) or not _MODULE_NAME.match(m):
            raise ValueError(f"{name}: {m!r} is not a module name "
                             f"(dotted identifiers, like 'myapp' or 'myapp.db')")
    return names


def start(sample_rate: float = DEFAULT_SAMPLE_RATE, *, max_locks: int = DEFAULT_MAX_LOCKS,
          max_frames: int = DEFAULT_MAX_FRAMES, wait_period_ns: int = DEFAULT_WAIT_PERIOD_NS,
          max_samples: int = DEFAULT_MAX_SAMPLES, seed: Optional[int] = None,
          exclude_modules: Sequence[str] = (), include_modules: Sequence[str] = ()) -> None:
    """Start profiling: new locks made through threading/asyncio are wrapped.

    Locks are profiled by the module whose code creates them:
    exclude_modules (module names; a name covers its submodules) get native
    locks, in addition to the stdlib's synchronization code and lockprof;
    when include_modules is given, only code in those modules gets profiled
    locks.  Idempotent; calling it while running changes the settings."""
    rate = _check_rate(sample_rate)
    _check_int("max_locks", max_locks, 1, 2**32 - 1)
    _check_int("max_frames", max_frames, 1, 512)
    _check_int("wait_period_ns", wait_period_ns, 1, 2**62)
    _check_int("max_samples", max_samples, 1, 2**32 - 1)
    exclude = _check_modules("exclude_modules", exclude_modules)
    include = _check_modules("include_modules", include_modules)
    _patch.start(rate, max_locks, seed, max_frames, wait_period_ns, max_samples,
                 exclude=exclude, include=include)
    _window["sample_rate"] = rate
    _window["wait_period_ns"] = wait_period_ns


def stop() -> None:
    """Stop profiling: the stdlib's factories are restored; existing wrapped
    locks keep working as plain pass-through (no sampling, no clock)."""
    _warn_errors()       # first: what was replaced is known while installed
    _patch.stop()


_warned = {"errors": False, "replaced": False, "foreign": False}


def _tell_once(key: str, message: str) -> None:
    if not _warned[key]:
        _warned[key] = True
        import warnings
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _warn_errors() -> None:
    """Failures inside profiling never reach the program: they are counted
    (counters()["errors"], ["name_errors"], in the profile's comments) and
    told once, as a RuntimeWarning; so are locks lockprof could not wrap."""
    gone = _patch.replaced()
    if gone:
        _tell_once("replaced", f"lockprof: {', '.join(gone)} replaced after lockprof.start() by "
                               f"an assignment lockprof does not hear of (gevent's patching and "
                               f"re-imports it does): locks made through the new ones are not "
                               f"profiled; start lockprof after such patching")
    try:
        c = _lockprof.counters()
    except Exception:
        return
    foreign = c.get("foreign_locks", 0)
    if foreign:
        _tell_once("foreign", f"lockprof: {foreign} lock(s) made through a patched factory are of "
                              f"a class lockprof has no wrapper for (another library's lock "
                              f"class, or a class made anew by importlib.reload) and are not "
                              f"profiled")
    n = c.get("errors", 0) + c.get("name_errors", 0)
    if n:
        _tell_once("errors", f"lockprof: {n} failure(s) inside profiling were absorbed (the "
                             f"program was not affected; see lockprof.counters()); the profile "
                             f"may miss some events or names")


def is_running() -> bool:
    return _patch.is_running()


def reset() -> None:
    """Forget everything recorded so far."""
    _lockprof.reset()
    _window["time_ns"] = time.time_ns()
    _window["mono_ns"] = time.monotonic_ns()


def _stats(snapshot) -> List[Dict[str, Any]]:
    out = []
    for r in snapshot:
        r = dict(r)
        r["site"] = f"{r['file']}:{r['line']}" if r["file"] else "<unknown>"
        r["name"] = f"{r['site']}:{r['var']}" if r["var"] else r["site"]
        out.append(r)
    out.sort(key=lambda r: (-r["wait_ns"], -r["acquisitions"]))
    return out


def stats() -> List[Dict[str, Any]]:
    """One record per lock with recorded events, most waited-on first (locks
    that no longer exist are folded into one record per creation site, kind
    and name).

    Fields: kind, site (file:line of creation), acquisitions (estimated, scaled
    by the sampling rate), contentions and wait_ns (exact), max_wait_ns, hold_ns
    (estimated), cond_waits and cond_wait_ns (Condition.wait, exact), locks
    (how many locks the record stands for: more than 1 once dead ones were
    folded)."""
    return _stats(_lockprof.snapshot())


_CLI_FILE = __file__[:-len("__init__.py")] + "__main__.py"


def _is_runpy(filename: str) -> bool:
    return filename == "<frozen runpy>" or filename.endswith(("/runpy.py", "\\runpy.py"))


def _trim(frames, omitted):
    """Stacks end at the user's program: the frames of `lockprof run` and of
    runpy below it are not the program's and are cut."""
    for i, frame in enumerate(frames):
        if frame[0] == _CLI_FILE:
            frames, omitted = frames[:i], 0
            while frames and _is_runpy(frames[-1][0]):
                frames = frames[:-1]
            break
    return tuple(frames), omitted


def _samples(snapshot, raw) -> List[Dict[str, Any]]:
    locks = {r["id"]: r for r in snapshot}
    stacks: Dict[int, Any] = {}
    merged: Dict[Any, Dict[str, Any]] = {}
    for lock_id, stack_id, event, count, estimate, value, thread, task in raw:
        if stack_id not in stacks:
            stacks[stack_id] = _trim(*_lockprof.stack(stack_id))
        frames, omitted = stacks[stack_id]
        # stacks are captured as instruction offsets; two offsets on one line
        # (e.g. before and after CPython specialises a call) are one row here
        key = (lock_id, event, frames, omitted, thread, task)
        row = merged.get(key)
        if row is None:
            lock = locks.get(lock_id, {})
            site = f"{lock['file']}:{lock['line']}" if lock.get("file") else "<unknown>"
            merged[key] = {"lock_id": lock_id, "kind": lock.get("kind", "<other>"),
                           "lock_name": f"{site}:{lock['var']}" if lock.get("var") else site,
                           "site": site,
                           "event": event, "samples": count, "count": estimate,
                           "value": value,
                           "frames": list(frames), "omitted": omitted,
                           "thread_id": thread[0], "thread_native_id": thread[1],
                           "thread_name": thread[2], "task_name": task}
        else:
            row["samples"] += count
            row["count"] += estimate
            row["value"] += value
    return list(merged.values())


def samples() -> List[Dict[str, Any]]:
    """Recorded events by lock and stack: one dict per (lock, stack, event).

    event is "acquire", "contention" (value: ns waited), "delay" (value: ns
    others waited, charged to the stack that released the lock), "hold"
    (value: ns held, on the releasing stack) or "cond_wait" (value: ns in
    Condition.wait).  count and value are estimates scaled by the inverse of
    the sampling probability (acquisitions and holds: sample_rate; waits: in
    proportion to their length, see wait_period_ns); samples is how many
    stacks were actually taken.  thread_id, thread_native_id and thread_name
    say which thread, task_name which asyncio task (None outside one).  frames
    lists (file, function, line) from the innermost frame out; omitted counts
    the frames past max_frames."""
    return _samples(_lockprof.snapshot(), _lockprof.samples())


class _Window:
    """What one export covers: records, sample rows and the time window."""

    def __init__(self, records, rows, counters, time_ns, duration_ns):
        self.records, self.rows, self.counters = records, rows, counters
        self.time_ns, self.duration_ns = time_ns, duration_ns


def _current(take: bool = False) -> _Window:
    """Everything recorded so far; with take=True the tables are reset in the
    same step, so the next window starts exactly where this one ends."""
    counts = counters()
    now = time.monotonic_ns()
    if take:
        snap, raw = _lockprof.take()
    else:
        snap, raw = _lockprof.snapshot(), _lockprof.samples()
    win = _Window(_stats(snap), _samples(snap, raw), counts, _window["time_ns"],
                  max(0, now - _window["mono_ns"]))
    if take:
        _window["time_ns"] = time.time_ns()
        _window["mono_ns"] = now
    return win


def write(path: str, format: Optional[str] = None, *, reset: bool = False) -> None:
    """Write what has been recorded to `path`, in `format` (pprof, collapsed,
    speedscope, html or text) or the one its extension names (.pprof /
    .pb.gz, .folded / .collapsed, .speedscope.json, .html, .txt).  pprof's
    default sample type is delay; collapsed stacks carry the delay at the
    waiting stacks.  With reset=True the recorded data is cleared in the same
    step (periodic export: each file covers the time since the last)."""
    from . import formats

    fmt = formats.format_for(path, format)
    formats.check_writable(path)
    _warn_errors()
    _write_window(path, fmt, _current(take=reset))


def _write_window(path: str, fmt: str, win: _Window) -> None:
    import sys

    from . import formats, pprof

    rate = _window["sample_rate"]
    prog = " ".join(sys.argv[:1]) or "python"
    meta = (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(win.time_ns / 1e9))}, "
            f"{win.duration_ns / 1e9:.1f} s, sample rate {rate}; contentions and waits "
            f"exact, acquisitions and hold estimated")
    formats.write_rows(path, fmt, win.rows, records=win.records, sample_rate=rate,
                       title=f"lockprof: {prog}", meta=meta, time_nanos=win.time_ns,
                       duration_nanos=win.duration_ns,
                       comments=pprof.profile_comments(rate, _window["wait_period_ns"],
                                                       win.counters))


def counters() -> Dict[str, int]:
    """Runtime counters: errors inside profiling, locks past the cap, table sizes."""
    return _lockprof.counters()


class Profiler:
    """Profile a block: ``with lockprof.Profiler(sample_rate=0.1) as p: ...``."""

    def __init__(self, sample_rate: float = DEFAULT_SAMPLE_RATE, *,
                 max_locks: int = DEFAULT_MAX_LOCKS, max_frames: int = DEFAULT_MAX_FRAMES,
                 seed: Optional[int] = None, exclude_modules: Sequence[str] = (),
                 include_modules: Sequence[str] = ()):
        self.sample_rate = _check_rate(sample_rate)
        self.max_locks = _check_int("max_locks", max_locks, 1, 2**32 - 1)
        self.max_frames = _check_int("max_frames", max_frames, 1, 512)
        self.exclude_modules = _check_modules("exclude_modules", exclude_modules)
        self.include_modules = _check_modules("include_modules", include_modules)
        self.seed = seed

    def start(self) -> "Profiler":
        reset()
        start(self.sample_rate, max_locks=self.max_locks, max_frames=self.max_frames,
              seed=self.seed, exclude_modules=self.exclude_modules,
              include_modules=self.include_modules)
        return self

    def stop(self) -> None:
        stop()

    def stats(self) -> List[Dict[str, Any]]:
        return stats()

    def samples(self) -> List[Dict[str, Any]]:
        return samples()

    def write(self, path: str, format: Optional[str] = None) -> None:
        write(path, format)

    def __enter__(self) -> "Profiler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
