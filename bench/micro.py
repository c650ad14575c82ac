"""Per-type microbenchmarks: ns per operation for native locks, lockprof in
each configuration, the seed-style pure-Python reference and ddtrace.

Every configuration is measured interleaved in one process (round after
round, configurations in turn), and the minimum and median over rounds are
kept, so that a noisy neighbour slows every configuration alike.
"""
from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import lockprof

from . import ddtrace_locks, reference

UNROLL = 20

# name -> (family, lockprof sampling rate while measuring)
CONFIGS = [("native", "native", None), ("stopped", "lockprof", None),
           ("rate 0", "lockprof", 0.0), ("rate 0.01", "lockprof", 0.01),
           ("rate 1", "lockprof", 1.0), ("reference 1%", "reference", None),
           ("ddtrace 1%", "ddtrace", None)]
DEFAULT = "rate 0.01"

SYNC_TYPES = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition"]
ASYNC_TYPES = ["Lock", "Semaphore", "BoundedSemaphore", "Condition"]


def _unrolled(stmt: str, is_async: bool) -> Callable:
    """run(l, n): `stmt` unrolled UNROLL times inside an n-times loop."""
    body = "\n".join("        " + stmt for _ in range(UNROLL))
    src = f"{'async ' if is_async else ''}def run(l, n):\n    for _ in range(n):\n{body}\n"
    ns: Dict = {}
    exec(compile(src, f"<bench {stmt}>", "exec"), ns)
    return ns["run"]


# -- operations: (ops per call, runner(lock, loops, loop) -> elapsed ns) ----

def _uncontended(stmt: str, is_async: bool, prepare=None):
    fn = _unrolled(stmt, is_async)

    def run(lock, loops, loop):
        if prepare:
            prepare(lock)
        try:
            t0 = time.perf_counter_ns()
            if is_async:
                loop.run_until_complete(fn(lock, loops))
            else:
                fn(lock, loops)
            return time.perf_counter_ns() - t0
        finally:
            if prepare:
                lock.release()
    return run, UNROLL


def _threads(n_threads: int):
    def worker(lock, n, start):
        start.wait()
        for _ in range(n):
            with lock:
                pass

    def run(lock, loops, loop):
        start = threading.Event()
        ts = [threading.Thread(target=worker, args=(lock, loops, start)) for _ in range(n_threads)]
        for t in ts:
            t.start()
        t0 = time.perf_counter_ns()
        start.set()
        for t in ts:
            t.join()
        return time.perf_counter_ns() - t0
    return run, n_threads


def _tasks(n_tasks: int):
    async def worker(lock, n):
        for _ in range(n):
            async with lock:
                await asyncio.sleep(0)

    async def main(lock, n):
        await asyncio.gather(*(worker(lock, n) for _ in range(n_tasks)))

    def run(lock, loops, loop):
        t0 = time.perf_counter_ns()
        loop.run_until_complete(main(lock, loops))
        return time.perf_counter_ns() - t0
    return run, n_tasks


def _trio_uncontended():
    """async with, timed inside trio.run (its locks need a trio task)."""
    fn = _unrolled("async with l: pass", True)

    def run(lock, loops, loop):
        import trio

        async def main():
            t0 = time.perf_counter_ns()
            await fn(lock, loops)
            return time.perf_counter_ns() - t0
        return trio.run(main)
    return run, UNROLL


def _trio_tasks(n_tasks: int):
    def run(lock, loops, loop):
        import trio

        async def worker():
            for _ in range(loops):
                async with lock:
                    await trio.sleep(0)

        async def main():
            t0 = time.perf_counter_ns()
            async with trio.open_nursery() as nursery:
                for _ in range(n_tasks):
                    nursery.start_soon(worker)
            return time.perf_counter_ns() - t0
        return trio.run(main)
    return run, n_tasks


def _round_trip():
    """Two threads hand a turn back and forth through Condition wait/notify."""
    def player(cond, me, turn, n):
        for _ in range(n):
            with cond:
                while turn[0] != me:
                    cond.wait()
                turn[0] = 1 - me
                cond.notify()

    def run(cond, loops, loop):
        turn = [0]
        ts = [threading.Thread(target=player, args=(cond, me, turn, loops)) for me in (0, 1)]
        t0 = time.perf_counter_ns()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.perf_counter_ns() - t0
    return run, 1


def cases() -> List[Dict[str, Any]]:
    out = []
    for t in SYNC_TYPES:
        reentrant = t in ("RLock", "Condition")
        out.append(dict(type=f"threading.{t}", kind=t, is_async=False, op="acquire+release",
                        make=lambda: _uncontended("l.acquire(); l.release()", False)))
        out.append(dict(type=f"threading.{t}", kind=t, is_async=False, op="with",
                        make=lambda: _uncontended("with l: pass", False)))
        if not reentrant:   # a try by the owner of a reentrant lock succeeds
            out.append(dict(type=f"threading.{t}", kind=t, is_async=False, op="failed try",
                            make=lambda: _uncontended("l.acquire(False)", False,
                                                      prepare=lambda lk: lk.acquire())))
        for n in (2, 8):
            out.append(dict(type=f"threading.{t}", kind=t, is_async=False,
                            op=f"with, {n} threads", make=lambda n=n: _threads(n), scale=0.05))
    out.append(dict(type="threading.Condition", kind="Condition", is_async=False,
                    op="notify/wait round trip", make=_round_trip, scale=0.02))
    for t in ASYNC_TYPES:
        out.append(dict(type=f"asyncio.{t}", kind=t, is_async=True, op="async with",
                        make=lambda: _uncontended("async with l: pass", True)))
        out.append(dict(type=f"asyncio.{t}", kind=t, is_async=True, op="async with, 8 tasks",
                        make=lambda: _tasks(8), scale=0.1))
    try:                # third-party types, where installed (a test extra)
        import trio  # noqa: F401
    except ImportError:
        pass
    else:
        for t in TRIO_TYPES:
            out.append(dict(type=f"trio.{t}", kind=t, is_async=True, lib="trio",
                            op="async with", make=_trio_uncontended))
            out.append(dict(type=f"trio.{t}", kind=t, is_async=True, lib="trio",
                            op="async with, 8 tasks", make=lambda: _trio_tasks(8), scale=0.1))
    try:
        import anyio  # noqa: F401
    except ImportError:
        return out
    for t in ANYIO_TYPES:
        out.append(dict(type=f"anyio.{t}", kind=t, is_async=True, lib="anyio", op="async with",
                        make=lambda: _uncontended("async with l: pass", True)))
        out.append(dict(type=f"anyio.{t}", kind=t, is_async=True, lib="anyio",
                        op="async with, 8 tasks", make=lambda: _tasks(8), scale=0.1))
    return out


ANYIO_TYPES = ("Lock", "Semaphore", "CapacityLimiter")
TRIO_TYPES = ("Lock", "Semaphore", "CapacityLimiter", "Condition")


def _make(case):
    """A lock of the case's type, made as a program makes it (anyio's on a
    running event loop, where its backend is known)."""
    kind = case["kind"]
    if case.get("lib") == "trio":
        import trio
        return getattr(trio, kind)(*((1,) if kind in ("Semaphore", "CapacityLimiter") else ()))
    if case.get("lib") == "anyio":
        import anyio
        args = (1,) if kind in ("Semaphore", "CapacityLimiter") else ()

        async def make():
            return getattr(anyio, kind)(*args)
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(make())
        finally:
            loop.close()
    return getattr(asyncio if case["is_async"] else threading, kind)()


def _objects(case, configs) -> Dict[str, Optional[Any]]:
    """One lock per family; None where a configuration has no such lock."""
    kind = case["kind"]
    objs: Dict[str, Optional[Any]] = {"native": _make(case)}
    lockprof.start(0.0)
    try:
        objs["lockprof"] = _make(case)
    finally:
        lockprof.stop()
    assert type(objs["lockprof"]) is not type(objs["native"]), f"{kind} was not wrapped"
    families = {fam for _, fam, _ in configs}
    if "reference" in families:
        objs["reference"] = (None if case["is_async"] or case.get("lib")
                             else reference.Profiler(1.0).make(kind))
    if "ddtrace" in families:
        objs["ddtrace"] = (ddtrace_locks.make(kind, case["is_async"])
                           if ddtrace_locks.why_unavailable() is None and not case.get("lib")
                           else None)
    return objs


def measure(rounds: int = 7, loops: int = 2000, types=None, ops=None,
            configs=None) -> List[dict]:
    configs = [c for c in CONFIGS if configs is None or c[0] in configs]
    results = []
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)     # 3.9's asyncio locks bind to the current loop when made
    try:
        for case in cases():
            if (types and case["type"] not in types) or (ops and case["op"] not in ops):
                continue
            objs = _objects(case, configs)
            run, per_call = case["make"]()
            n = max(1, int(loops * case.get("scale", 1.0)))
            times: Dict[str, List[float]] = {c: [] for c, fam, _ in configs
                                             if objs.get(fam) is not None}
            gc.disable()
            try:
                for rnd in range(rounds + 1):   # round 0 warms up, unmeasured
                    for cname, fam, rate in configs:
                        if cname not in times:
                            continue
                        if fam == "lockprof" and rate is not None:
                            lockprof.start(rate)
                        try:
                            dt = run(objs[fam], n, loop)
                        finally:
                            if fam == "lockprof" and rate is not None:
                                lockprof.stop()
                        if rnd > 0:
                            times[cname].append(dt / (n * per_call))
            finally:
                gc.enable()
                lockprof.reset()
            best = {c: min(v) for c, v in times.items()}
            base = best["native"]
            results.append({
                "type": case["type"], "op": case["op"],
                "ns": {c: round(v, 1) for c, v in best.items()},
                "median_ns": {c: round(statistics.median(v), 1) for c, v in times.items()},
                "ratio": {c: round(v / base, 3) for c, v in best.items()},
            })
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return results
