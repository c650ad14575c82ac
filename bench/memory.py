"""Memory: bytes per wrapper object, per lock record, and the profile's size
after a million recorded events over a thousand distinct stacks.

Allocations are counted with tracemalloc, which sees the C runtime's tables
too (they are allocated with PyMem_*)."""
from __future__ import annotations

import asyncio
import gc
import sys
import threading
import tracemalloc
from typing import Dict, List

import lockprof

TYPES = [("threading", "Lock"), ("threading", "RLock"), ("threading", "Semaphore"),
         ("threading", "BoundedSemaphore"), ("threading", "Condition"), ("asyncio", "Lock"),
         ("asyncio", "Semaphore"), ("asyncio", "BoundedSemaphore"), ("asyncio", "Condition")]


def _traced(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return after - before


def per_wrapper(n: int = 5000) -> List[Dict]:
    """Bytes a wrapped lock costs beyond the native lock it wraps, and the
    lock record its first recorded event adds."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)     # 3.9's asyncio locks bind to the current loop when made
    try:
        return _per_wrapper(n)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _per_wrapper(n: int) -> List[Dict]:
    out = []
    for modname, kind in TYPES:
        mod = threading if modname == "threading" else asyncio
        def make():
            return getattr(mod, kind)()      # looked up each time: patched or not
        native = _traced(lambda: [make() for _ in range(n)]) / n
        lockprof.start(0.0)
        try:
            wrapped = _traced(lambda: [make() for _ in range(n)]) / n
            sample = make()
            assert lockprof._lockprof.is_wrapper(sample), f"{modname}.{kind} was not wrapped"
        finally:
            lockprof.stop()
        lockprof.start(1.0, max_overhead=0)
        try:
            locks = [make() for _ in range(n)]

            def first_events():
                for lk in locks:
                    if modname == "threading":
                        lk.acquire()
                        lk.release()
                return None
            record = _traced(first_events) / n if modname == "threading" else None
        finally:
            lockprof.stop()
            lockprof.reset()
        out.append({"type": f"{modname}.{kind}", "getsizeof": sys.getsizeof(sample),
                    "native_bytes": round(native, 1), "wrapped_bytes": round(wrapped, 1),
                    "wrapper_bytes": round(wrapped - native, 1),
                    "record_bytes": None if record is None else round(record, 1)})
    return out


def _stack_functions(k: int):
    """k functions with distinct code objects, each taking the lock."""
    fns = []
    for i in range(k):
        ns: Dict = {}
        exec(compile(f"def site_{i}(lock):\n    with lock:\n        pass\n", f"<site {i}>", "exec"),
             ns)
        fns.append(ns[f"site_{i}"])
    return fns


def profile_size(events: int = 1_000_000, stacks: int = 1000) -> Dict:
    """The profile's memory after `events` recorded events (rate 1: each
    `with` records an acquisition and a hold) over `stacks` distinct stacks."""
    fns = _stack_functions(stacks)
    lockprof.reset()
    lockprof.start(1.0, max_overhead=0)
    try:
        lock = threading.Lock()

        def run():
            per = max(1, events // (2 * stacks))
            for _ in range(per):
                for f in fns:
                    f(lock)
            return None
        grown = _traced(run)
        counters = lockprof.counters()
    finally:
        lockprof.stop()
        lockprof.reset()
    return {"events": events, "stacks": stacks, "bytes": grown,
            "bytes_per_stack": round(grown / stacks, 1),
            "table_counters": {k: v for k, v in counters.items()
                               if k in ("locks", "sites") or k.startswith("dropped")}}
