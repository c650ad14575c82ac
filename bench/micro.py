"""Per-type microbenchmarks: ns per operation, native against lockprof.

Every configuration is measured interleaved in one process (round after
round), and the minimum over rounds is kept, so that a noisy neighbour slows
every configuration alike instead of one.
"""
from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Callable, Dict, List, Tuple

import lockprof

UNROLL = 20

SYNC_OPS = {
    "acquire+release": "l.acquire(); l.release()",
    "with": "with l: pass",
    "failed try": "l.acquire(False)",   # on a held lock
}
ASYNC_OPS = {
    "async with": "async with l: pass",
}
SYNC_TYPES = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition"]
ASYNC_TYPES = ["Lock", "Semaphore", "BoundedSemaphore"]

# configuration -> sampling rate while measuring (None: profiling stopped)
CONFIGS = [("native", None), ("stopped", None), ("rate 0", 0.0),
           ("rate 0.01", 0.01), ("rate 1", 1.0)]


def _loop_fn(stmt: str, is_async: bool) -> Callable:
    """run(l, n): `stmt` unrolled UNROLL times inside an n-times loop."""
    body = "\n".join("        " + stmt for _ in range(UNROLL))
    src = f"{'async ' if is_async else ''}def run(l, n):\n    for _ in range(n):\n{body}\n"
    ns: Dict = {}
    exec(compile(src, f"<bench {stmt}>", "exec"), ns)
    return ns["run"]


def _make_locks(name: str, is_async: bool):
    """(native, wrapped) instances of one type."""
    mod = asyncio if is_async else threading
    native = getattr(mod, name)()
    lockprof.start(0.0)
    try:
        wrapped = getattr(mod, name)()
    finally:
        lockprof.stop()
    assert type(wrapped) is not type(native), f"{name} was not wrapped"
    return native, wrapped


def measure(rounds: int = 7, loops: int = 2000, types=None, ops=None) -> List[dict]:
    results = []
    loop = asyncio.new_event_loop()
    try:
        cases: List[Tuple[str, str, bool, str, str]] = []
        for t in SYNC_TYPES:
            for op, stmt in SYNC_OPS.items():
                if op == "failed try" and t in ("RLock", "Condition"):
                    continue   # reentrant: a try by the owner succeeds
                cases.append((f"threading.{t}", t, False, op, stmt))
        for t in ASYNC_TYPES:
            for op, stmt in ASYNC_OPS.items():
                cases.append((f"asyncio.{t}", t, True, op, stmt))
        for key, name, is_async, op, stmt in cases:
            if types and key not in types:
                continue
            if ops and op not in ops:
                continue
            native, wrapped = _make_locks(name, is_async)
            if op == "failed try":
                native.acquire()
                wrapped.acquire()
            fn = _loop_fn(stmt, is_async)
            best = {c: float("inf") for c, _ in CONFIGS}
            gc.disable()
            try:
                for rnd in range(rounds + 1):   # round 0 warms up, unmeasured
                    for cname, rate in CONFIGS:
                        if rate is not None:
                            lockprof.start(rate)
                        obj = native if cname == "native" else wrapped
                        t0 = time.perf_counter_ns()
                        if is_async:
                            loop.run_until_complete(fn(obj, loops))
                        else:
                            fn(obj, loops)
                        dt = time.perf_counter_ns() - t0
                        if rate is not None:
                            lockprof.stop()
                        if rnd > 0:
                            best[cname] = min(best[cname], dt / (loops * UNROLL))
            finally:
                gc.enable()
                lockprof.reset()
            base = best["native"]
            results.append({
                "type": key, "op": op,
                "ns": {c: round(v, 1) for c, v in best.items()},
                "ratio": {c: round(v / base, 3) for c, v in best.items()},
            })
    finally:
        loop.close()
    return results
