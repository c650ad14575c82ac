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

(PYTEST_DONT_REWRITE: lockprof's distribution carries a pytest plugin, so
pytest marks this package for assertion rewriting at startup; a program that
imported lockprof first, as `lockprof run -m pytest` does, would otherwise get
"Module already imported so cannot be rewritten", an error under
`filterwarnings = error`.  lockprof has no assertions to rewrite.)
"""
from __future__ import annotations

import _thread
import gc
import time
import sys

# not imported at run time: `import lockprof` costs a program's start-up
# nothing it does not use (typing and re take milliseconds)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _lockprof, _names, _patch
from ._labels import current_labels, labels

__all__ = ["start", "stop", "is_running", "stats", "samples", "profile", "write", "reset",
           "labels", "current_labels", "counters", "lock_order_cycles", "order_exempt",
           "Profiler",
           "DEFAULT_SAMPLE_RATE", "CAPS"]

# what the profile covers: since the last reset (or import), with which settings
_window = {"time_ns": time.time_ns(), "mono_ns": time.monotonic_ns(),
           "sample_rate": None, "wait_period_ns": None, "max_overhead": None}

DEFAULT_SAMPLE_RATE = 0.01
DEFAULT_MAX_LOCKS = 100_000
DEFAULT_MAX_FRAMES = 64
DEFAULT_WAIT_PERIOD_NS = 1_000_000
DEFAULT_MAX_SAMPLES = 1 << 20
# every table's cap; what a cap drops or folds is counted in counters()
# (dropped_*), written into the profile's comments and told in the report
CAPS = {"max_locks": DEFAULT_MAX_LOCKS, "max_samples": DEFAULT_MAX_SAMPLES,
        "max_stacks": 1 << 18, "max_sites": 1 << 20, "max_thread_names": 4096,
        "max_task_names": 4096, "max_label_sets": 1024, "max_label_value": 200,
        "max_rate_windows": 3600}
# --max-overhead: the share of wall time (percent) spent recording sampled
# events, past which the sampling rate is lowered (lp_budget.c); 0: none
DEFAULT_MAX_OVERHEAD = 1.0


# start() and stop() one at a time: each patches and unpatches the factories
# in several steps (native: made by _thread, never profiled)
_control = _thread.RLock()


def _reinit_control() -> None:
    global _control
    try:
        _control._at_fork_reinit()
    except AttributeError:
        _control = _thread.RLock()


if hasattr(__import__("os"), "register_at_fork"):
    __import__("os").register_at_fork(after_in_child=_reinit_control)


def _serialized(fn):
    def call(*args, **kwargs):
        with _control:
            return fn(*args, **kwargs)
    # functools.wraps' work, without importing it
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(call, attr, getattr(fn, attr))
    call.__dict__.update(fn.__dict__)
    call.__wrapped__ = fn
    return call


def _check_rate(sample_rate: Any) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise ValueError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
    rate = float(sample_rate)
    if not (0.0 <= rate <= 1.0):       # NaN too
        raise ValueError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
    return rate


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _is_module_name(name: str) -> bool:
    """dotted identifiers, ASCII: [A-Za-z_][A-Za-z0-9_]*(.[A-Za-z_][A-Za-z0-9_]*)*"""
    return name.isascii() and all(part.isidentifier() for part in name.split("."))


def _check_modules(name: str, value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a list of module names, got {value!r}") from None
    for m in names:
        if not isinstance(m, str) or not _is_module_name(m):
            raise ValueError(f"{name}: {m!r} is not a module name "
                             f"(dotted identifiers, like 'myapp' or 'myapp.db')")
    return names


@_serialized
def start(sample_rate: float = DEFAULT_SAMPLE_RATE, *, max_locks: int = DEFAULT_MAX_LOCKS,
          max_frames: int = DEFAULT_MAX_FRAMES, wait_period_ns: int = DEFAULT_WAIT_PERIOD_NS,
          max_samples: int = DEFAULT_MAX_SAMPLES, seed: Optional[int] = None,
          exclude_modules: Sequence[str] = (), include_modules: Sequence[str] = (),
          max_stacks: int = CAPS["max_stacks"], max_sites: int = CAPS["max_sites"],
          max_thread_names: int = CAPS["max_thread_names"],
          max_task_names: int = CAPS["max_task_names"],
          max_label_sets: int = CAPS["max_label_sets"],
          max_label_value: int = CAPS["max_label_value"],
          max_overhead: float = DEFAULT_MAX_OVERHEAD,
          max_rate_windows: int = CAPS["max_rate_windows"], lock_order: bool = False,
          max_order_edges: int = 10000, hang_timeout: Optional[float] = None,
          max_hang_waits: int = 4096, http: Optional[str] = None,
          http_max_clients: int = 8) -> None:
    """Start profiling: new locks made through threading/asyncio are wrapped.

    Locks are profiled by the module whose code creates them:
    exclude_modules (module names; a name covers its submodules) get native
    locks, in addition to the stdlib's synchronization code and lockprof;
    when include_modules is given, only code in those modules gets profiled
    locks.  Idempotent; calling it while running changes the settings.

    The tables are capped, each by its max_* argument (see CAPS for the
    defaults): locks (records of live locks; dead ones are folded per
    creation site), samples (rows of (lock, stack, event, thread, task)),
    stacks, sites (creation sites), thread_names and task_names (distinct
    labels), label_sets (distinct lockprof.labels sets; past it an event's
    label values are "<other>"); max_label_value cuts longer label values.
    Whatever a full table drops or cuts is counted in counters().

    max_overhead: percent of wall time lockprof may spend recording sampled
    acquisitions and holds (default 1; 0: no limit).  Past it, within about
    a second, the sampling rate is lowered, and it rises back to
    sample_rate as the load falls (never below sample_rate / 10,000).
    Each sampled event is weighted by the rate in force, so estimates stay
    unbiased; contentions and waits stay exact.  The rate's changes are in
    the profile (max_rate_windows of them, the oldest dropped and counted).

    lock_order: record which locks are taken while others are held and
    report each cycle (a potential deadlock, found before it happens) in
    lock_order_cycles(); max_order_edges caps the pairs kept (of lock
    classes, and of instances of one class), counted when full.

    hang_timeout: seconds; a thread or task waiting on one lock longer than
    that makes the hang doctor print, once, to the stderr of the moment,
    every waiter, its lock, that lock's holders and where they are now, and
    `deadlock:` with the cycle when the waits form one.  max_hang_waits caps
    the waits tracked at once (counted when full).

    http: "[HOST:]PORT" serves the live profile as Go's net/http/pprof does
    (GET /debug/pprof/mutex, ?seconds=N for a delta) from threads of
    lockprof's own; loopback unless a host is given, and a host that is not
    loopback needs the token in LOCKPROF_HTTP_TOKEN (sent by clients as
    'Authorization: Bearer <token>').  A problem serving is one line on
    stderr; profiling runs on.  stop() stops serving.  http_max_clients
    requests are served at once; more are answered 503 and counted
    (dropped_http_clients in the served profile)."""
    rate = _check_rate(sample_rate)
    _check_int("max_locks", max_locks, 1, 2**32 - 1)
    _check_int("max_frames", max_frames, 1, 512)
    _check_int("wait_period_ns", wait_period_ns, 1, 2**62)
    _check_int("max_samples", max_samples, 1, 2**32 - 1)
    caps = {"max_stacks": max_stacks, "max_sites": max_sites,
            "max_thread_names": max_thread_names, "max_task_names": max_task_names,
            "max_label_sets": max_label_sets, "max_label_value": max_label_value}
    for name, value in caps.items():
        _check_int(name, value, 1, 2**32 - 2)
    if (isinstance(max_overhead, bool) or not isinstance(max_overhead, (int, float))
            or not 0.0 <= max_overhead <= 100.0):
        raise ValueError(f"max_overhead must be a percentage in [0, 100], got {max_overhead!r}")
    _check_int("max_rate_windows", max_rate_windows, 1, 2**32 - 2)
    exclude = _check_modules("exclude_modules", exclude_modules)
    include = _check_modules("include_modules", include_modules)
    if not isinstance(lock_order, bool):
        raise TypeError(f"lock_order must be True or False, got {lock_order!r}")
    _check_int("max_order_edges", max_order_edges, 1, 2**31 - 1)
    if hang_timeout is not None:
        if (isinstance(hang_timeout, bool) or not isinstance(hang_timeout, (int, float))
                or not 0.001 <= hang_timeout <= 86400 * 7):
            raise ValueError(f"hang_timeout must be a number of seconds in [0.001, 604800] "
                             f"or None, got {hang_timeout!r}")
    _check_int("max_hang_waits", max_hang_waits, 1, 2**31 - 1)
    _check_int("http_max_clients", http_max_clients, 1, 1024)
    caps = dict(caps, lock_order=lock_order, max_order_edges=max_order_edges,
                max_overhead=float(max_overhead) / 100.0, max_rate_windows=max_rate_windows)
    _patch.start(rate, max_locks, seed, max_frames, wait_period_ns, max_samples,
                 exclude=exclude, include=include, caps=caps)
    _hang_configure(hang_timeout, max_hang_waits)
    if http is not None:
        from . import _http
        _http.start(http, max_clients=http_max_clients)
    _window["sample_rate"] = rate
    _window["wait_period_ns"] = wait_period_ns
    _window["max_overhead"] = float(max_overhead)


@_serialized
def stop() -> None:
    """Stop profiling: the stdlib's factories are restored; existing wrapped
    locks keep working as plain pass-through (no sampling, no clock)."""
    _warn_errors()       # first: what was replaced is known while installed
    _lockprof.hang_stop()
    _patch.stop()
    if "lockprof._http" in sys.modules:
        sys.modules["lockprof._http"].stop()


_hang_state = {"atexit": False}


def _hang_configure(timeout: Optional[float], max_waits: int) -> None:
    if timeout is None:
        _lockprof.hang_stop()
        return
    import sys
    from . import _hang
    try:
        fd = sys.stderr.fileno()
    except Exception:          # no stderr, or one without a descriptor
        fd = 2
    _lockprof.hang_start(float(timeout), fd, _hang.report, max_waits)
    if not _hang_state["atexit"]:
        import atexit          # the watchdog ends before the interpreter does
        atexit.register(_lockprof.hang_stop)
        _hang_state["atexit"] = True
        import os
        if hasattr(os, "register_at_fork"):
            # no watchdog thread at a fork: the process is not made to look
            # multi-threaded (CPython 3.12+ warns); the next wait restarts it
            os.register_at_fork(before=_lockprof.hang_fork_prepare,
                                after_in_parent=_lockprof.hang_fork_parent)


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
    with _control:     # not while another thread's stop() or start() swaps the factories
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
    _lockprof.budget_state(True)
    _window["time_ns"] = time.time_ns()
    _window["mono_ns"] = time.monotonic_ns()


def _stats(snapshot) -> List[Dict[str, Any]]:
    out = []
    for r in snapshot:
        r = dict(r)
        r["site"] = f"{r['file']}:{r['line']}" if r["file"] else "<unknown>"
        if _names.is_label(r["var"]):
            r["name"] = r["var"]
        else:
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


def profile(reset: bool = False, title: Optional[str] = None):
    """Everything recorded so far as one lockprof.export.Profile (the value
    every writer reads); with reset=True the tables are cleared in the same
    step, so the next profile starts exactly where this one ends.

    Stacks end at the program: the frames of `lockprof run` and of runpy
    below it are cut."""
    import sys

    from .export import Profile

    now = time.monotonic_ns()
    # the collector paused: no finalizer records an event while the tables
    # are read (and the read takes no lock of the program's)
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        snap = _lockprof.export(reset, _CLI_FILE)
    finally:
        if paused:
            gc.enable()
    budget = _lockprof.budget_state(reset)
    snap["counters"] = dict(snap["counters"], **_lockprof.lock_order_counters(),
                            **_lockprof.hang_counters(), **_budget_counters(budget))
    # the rate's changes, on the wall clock, from the window's start
    t0, m0 = _window["time_ns"], _window["mono_ns"]
    rates = [(t0 + max(0, t - m0), r) for t, r in budget["rates"] if t <= now]
    p = Profile.from_snapshot(
        snap, time_nanos=t0, duration_nanos=max(0, now - m0),
        sample_rate=_window["sample_rate"], wait_period_ns=_window["wait_period_ns"],
        max_overhead=_window["max_overhead"], rates=rates,
        title=title or f"lockprof: {' '.join(sys.argv[:1]) or 'python'}",
        lock_order=_lockprof.lock_order_cycles())
    if reset:
        _window["time_ns"] = time.time_ns()
        _window["mono_ns"] = now
    return p


def samples() -> List[Dict[str, Any]]:
    """Recorded events by lock and stack: one dict per (lock name, stack,
    event, thread label, task label).

    event is "acquire", "contention" (value: ns waited), "delay" (value: ns
    others waited, charged to the stack that released the lock), "hold"
    (value: ns held, on the releasing stack) or "cond_wait" (value: ns in
    Condition.wait).  count and value are estimates scaled by the inverse of
    the sampling probability (acquisitions and holds: sample_rate; waits: in
    proportion to their length, see wait_period_ns); samples is how many
    stacks were actually taken.  thread_name is the thread's label (the name
    the program gave it, or the stable part of threading's generated name),
    with thread_id and thread_native_id while one thread only carried that
    label; task_name the asyncio task's (None outside one).  frames lists
    (file, function, line) from the innermost frame out; omitted counts the
    frames past max_frames."""
    return profile().samples()


def write(path: str, format: Optional[str] = None, *, reset: bool = False) -> None:
    """Write what has been recorded to `path`, in `format` (pprof, collapsed,
    speedscope, html or text) or the one its extension names (.pprof /
    .pb.gz, .folded / .collapsed, .speedscope.json, .html, .txt).  pprof's
    default sample type is delay; collapsed stacks carry the delay at the
    waiting stacks.  With reset=True the recorded data is cleared in the same
    step (periodic export: each file covers the time since the last)."""
    from . import export

    fmt = export.format_for(path, format)
    export.check_writable(path)
    _warn_errors()
    export.write(profile(reset=reset), path, fmt)


_BUDGET_COUNTERS = ("recording_ns", "rate_cuts", "dropped_rate_windows", "max_rate_windows")


def _budget_counters(state: Dict[str, Any]) -> Dict[str, int]:
    return {k: state[k] for k in _BUDGET_COUNTERS}


def counters() -> Dict[str, int]:
    """Runtime counters: errors inside profiling, locks past the cap, table
    sizes; recording_ns (time spent recording sampled events, which
    max_overhead limits) and rate_cuts (times the budget lowered the rate)."""
    return dict(_lockprof.counters(), **_lockprof.lock_order_counters(),
                **_lockprof.hang_counters(), **_budget_counters(_lockprof.budget_state()))


def lock_order_cycles() -> List[List[Dict[str, Any]]]:
    """The potential deadlocks found with start(lock_order=True): each a cycle
    of edges, every edge a dict with `held` and `acquired` (lock names,
    file:line:var), `thread_name`, `task_name`, and `held_frames` and
    `acquired_frames` (where each was taken: (file, line, function),
    innermost first).  An edge says: `acquired` was taken while `held` was
    held.  Each cycle is found once, on the run where nothing went wrong."""
    return _lockprof.lock_order_cycles()


# lockprof.order_exempt(lock): the runtime's own function, so that no frame
# of lockprof's is between the caller and the lock's record (its name is
# found in the caller's frame on 3.9 and 3.10)
order_exempt = _lockprof.order_exempt


class Profiler:
    """Profile a block: ``with lockprof.Profiler(sample_rate=0.1) as p: ...``."""

    def __init__(self, sample_rate: float = DEFAULT_SAMPLE_RATE, *,
                 max_locks: int = DEFAULT_MAX_LOCKS, max_frames: int = DEFAULT_MAX_FRAMES,
                 seed: Optional[int] = None, exclude_modules: Sequence[str] = (),
                 include_modules: Sequence[str] = (), **caps: int):
        self.sample_rate = _check_rate(sample_rate)
        self.max_locks = _check_int("max_locks", max_locks, 1, 2**32 - 1)
        self.max_frames = _check_int("max_frames", max_frames, 1, 512)
        self.exclude_modules = _check_modules("exclude_modules", exclude_modules)
        self.include_modules = _check_modules("include_modules", include_modules)
        self.seed = seed
        unknown = sorted(set(caps) - set(CAPS))
        if unknown:
            raise TypeError(f"Profiler() got unexpected argument(s) {', '.join(unknown)}; "
                            f"caps: {', '.join(CAPS)}")
        self.caps = caps

    def start(self) -> "Profiler":
        reset()
        start(self.sample_rate, max_locks=self.max_locks, max_frames=self.max_frames,
              seed=self.seed, exclude_modules=self.exclude_modules,
              include_modules=self.include_modules, **self.caps)
        return self

    def stop(self) -> None:
        stop()

    def stats(self) -> List[Dict[str, Any]]:
        return stats()

    def samples(self) -> List[Dict[str, Any]]:
        return samples()

    def profile(self):
        return profile()

    def write(self, path: str, format: Optional[str] = None) -> None:
        write(path, format)

    def __enter__(self) -> "Profiler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
