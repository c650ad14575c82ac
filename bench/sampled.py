"""Cost of one recorded event: a sampled acquisition and its hold, each with
a captured stack, at several stack depths.

Measured as the difference between rate 1 (every acquisition recorded, with
its hold) and rate 0 (none), interleaved, min over rounds, divided by the two
events each `with` records."""
from __future__ import annotations

import threading
import time
from typing import Dict, List

import lockprof


def _at_depth(depth: int, fn):
    if depth <= 1:
        return fn()
    return _at_depth(depth - 1, fn)


def _loop(lock, n: int) -> None:
    for _ in range(n):
        with lock:
            pass


def measure(depths=(5, 20, 64), rounds: int = 7, loops: int = 2000) -> List[Dict]:
    out = []
    for depth in depths:
        best = {0.0: float("inf"), 1.0: float("inf")}
        for rnd in range(rounds + 1):
            for rate in (0.0, 1.0):
                lockprof.start(rate, max_frames=64, max_overhead=0)
                lock = threading.Lock()
                # the loop runs `depth` frames below this one (incl. _loop)
                t0 = time.perf_counter_ns()
                _at_depth(depth - 1, lambda: _loop(lock, loops))
                dt = (time.perf_counter_ns() - t0) / loops
                lockprof.stop()
                lockprof.reset()
                if rnd:
                    best[rate] = min(best[rate], dt)
        per_event = (best[1.0] - best[0.0]) / 2
        out.append({"depth": depth, "ns_per_event": round(per_event, 1),
                    "ns_unsampled_with": round(best[0.0], 1)})
    return out


def first_event(rounds: int = 7, n: int = 2000) -> Dict:
    """A lock's first recorded event also creates its record and resolves its
    variable name (locals, globals, self): fresh locks, each made at a site of
    its own (a name is reused for locks of one site), one `with` each, at
    rate 1 against rate 0; minus the two ordinary events that `with` records."""
    makers = []
    for i in range(n):
        ns: Dict = {"threading": threading}
        exec(compile("def make():\n    return threading.Lock()\n", f"<site {i}>", "exec"), ns)
        makers.append(ns["make"])

    def run(rate: float) -> float:
        lockprof.start(rate, max_overhead=0)
        try:
            locks = [make() for make in makers]
            t0 = time.perf_counter_ns()
            for fresh_lock in locks:
                with fresh_lock:
                    pass
            return (time.perf_counter_ns() - t0) / n
        finally:
            lockprof.stop()
            lockprof.reset()

    best = {0.0: float("inf"), 1.0: float("inf")}
    for rnd in range(rounds + 1):
        for rate in (0.0, 1.0):
            dt = run(rate)
            if rnd:
                best[rate] = min(best[rate], dt)
    events = measure(depths=(2,), rounds=rounds, loops=n)[0]["ns_per_event"]
    return {"ns_first_event": round(best[1.0] - best[0.0] - 2 * events, 1),
            "ns_per_event_depth_2": events}
