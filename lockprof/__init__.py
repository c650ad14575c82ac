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
from typing import Any, Dict, List, Optional

from . import _lockprof, _patch

__all__ = ["start", "stop", "is_running", "stats", "reset", "Profiler", "DEFAULT_SAMPLE_RATE"]

DEFAULT_SAMPLE_RATE = 0.01
DEFAULT_MAX_LOCKS = 100_000


def _check_rate(sample_rate: Any) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise ValueError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
    rate = float(sample_rate)
    if not (0.0 <= rate <= 1.0) or math.isnan(rate):
        raise ValueError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
    return rate


def start(sample_rate: float = DEFAULT_SAMPLE_RATE, *, max_locks: int = DEFAULT_MAX_LOCKS,
          seed: Optional[int] = None) -> None:
    """Start profiling: new locks made through threading/asyncio are wrapped.

    Idempotent; calling it while running changes the sampling rate."""
    rate = _check_rate(sample_rate)
    if isinstance(max_locks, bool) or not isinstance(max_locks, int) or max_locks < 1:
        raise ValueError(f"max_locks must be a positive integer, got {max_locks!r}")
    _patch.start(rate, max_locks, seed)


def stop() -> None:
    """Stop profiling: the stdlib's factories are restored; existing wrapped
    locks keep working as plain pass-through (no sampling, no clock)."""
    _patch.stop()


def is_running() -> bool:
    return _patch.is_running()


def reset() -> None:
    """Forget everything recorded so far."""
    _lockprof.reset()


def stats() -> List[Dict[str, Any]]:
    """One record per lock with recorded events, most waited-on first.

    Fields: kind, site (file:line of creation), acquisitions (estimated, scaled
    by the sampling rate), contentions and wait_ns (exact), max_wait_ns, hold_ns
    (estimated), cond_waits and cond_wait_ns (Condition.wait, exact)."""
    out = []
    for r in _lockprof.snapshot():
        r = dict(r)
        r["site"] = f"{r['file']}:{r['line']}" if r["file"] else "<unknown>"
        r["name"] = r["site"]
        out.append(r)
    out.sort(key=lambda r: (-r["wait_ns"], -r["acquisitions"]))
    return out


def counters() -> Dict[str, int]:
    """Runtime counters: errors inside profiling, locks past the cap, table sizes."""
    return _lockprof.counters()


class Profiler:
    """Profile a block: ``with lockprof.Profiler(sample_rate=0.1) as p: ...``."""

    def __init__(self, sample_rate: float = DEFAULT_SAMPLE_RATE, *,
                 max_locks: int = DEFAULT_MAX_LOCKS, seed: Optional[int] = None):
        self.sample_rate = _check_rate(sample_rate)
        self.max_locks = max_locks
        self.seed = seed

    def start(self) -> "Profiler":
        reset()
        start(self.sample_rate, max_locks=self.max_locks, seed=self.seed)
        return self

    def stop(self) -> None:
        stop()

    def stats(self) -> List[Dict[str, Any]]:
        return stats()

    def __enter__(self) -> "Profiler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
