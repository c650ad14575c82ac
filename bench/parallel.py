"""Threads in parallel: ns per operation with 1, 2 (and more, where the
machine has the cores) threads, each on its own lock and all on one shared
lock, native against lockprof at its default rate.  On a free-threaded
CPython the threads run at once, and profiling must not stop them scaling:
the ratio of the k-thread time to the 1-thread time, profiled over native,
is the figure (<= 1.05 for threads on their own locks).

One process; rounds interleave the configurations; the minimum of the rounds
is kept (the machines are shared).  python -m bench --only parallel
"""
from __future__ import annotations

import os
import sys
import sysconfig
import threading
import time
from typing import Any, Dict, List

import lockprof


def _run(locks: List[Any], n: int) -> float:
    """seconds for len(locks) threads, thread i taking locks[i] n times"""
    k = len(locks)
    go = threading.Barrier(k + 1)
    done = threading.Barrier(k + 1)

    def work(lock):
        acq, rel = lock.acquire, lock.release
        go.wait()
        for _ in range(n // 10):
            acq(); rel(); acq(); rel(); acq(); rel(); acq(); rel(); acq(); rel()  # noqa: E702
            acq(); rel(); acq(); rel(); acq(); rel(); acq(); rel(); acq(); rel()  # noqa: E702
        done.wait()

    ths = [threading.Thread(target=work, args=(lk,)) for lk in locks]
    for t in ths:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    done.wait()
    t1 = time.perf_counter()
    for t in ths:
        t.join()
    return t1 - t0


def measure(rounds: int = 7, n: int = 200_000, max_threads: int = 0) -> Dict[str, Any]:
    cpus = os.cpu_count() or 1
    counts = [1, 2] + [k for k in (4, 8, 16) if k <= (max_threads or cpus)]
    counts = sorted(set(k for k in counts if k <= max(2, max_threads or cpus)))
    was = lockprof.is_running()
    # native locks, made before start(); profiled ones at the default rate
    lockprof.stop()
    native = {"own": [threading.Lock() for _ in range(max(counts))], "shared": threading.Lock()}
    lockprof.start(lockprof.DEFAULT_SAMPLE_RATE)
    profiled = {"own": [threading.Lock() for _ in range(max(counts))], "shared": threading.Lock()}
    best: Dict[str, Dict[str, Dict[int, float]]] = {
        c: {"own": {}, "shared": {}} for c in ("native", "lockprof")}
    try:
        for _ in range(rounds):
            for k in counts:
                for how in ("own", "shared"):
                    for config, locks in (("native", native), ("lockprof", profiled)):
                        ls = locks["own"][:k] if how == "own" else [locks["shared"]] * k
                        ns = _run(ls, n) / n * 1e9      # per operation of one thread
                        cur = best[config][how].get(k)
                        best[config][how][k] = ns if cur is None else min(cur, ns)
    finally:
        lockprof.stop()
        if was:
            lockprof.start()
    rows = []
    for how in ("own", "shared"):
        for k in counts:
            nat, ours = best["native"][how][k], best["lockprof"][how][k]
            scale_n = nat / best["native"][how][1]
            scale_p = ours / best["lockprof"][how][1]
            rows.append({"locks": how, "threads": k, "native_ns": round(nat, 1),
                         "lockprof_ns": round(ours, 1), "ratio": round(ours / nat, 3),
                         "scaling_native": round(scale_n, 3), "scaling_lockprof": round(scale_p, 3),
                         "scaling_ratio": round(scale_p / scale_n, 3)})
    return {"python": sys.version.split()[0],
            "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
            "gil": getattr(sys, "_is_gil_enabled", lambda: True)(),
            "cpus": cpus, "rounds": rounds, "ops_per_thread": n, "rows": rows}


def table(res: Dict[str, Any]) -> List[str]:
    out = ["| locks | threads | native ns/op | lockprof ns/op | ratio | k-thread / 1-thread time: "
           "native, lockprof | lockprof's scaling over native |",
           "|---|---:|---:|---:|---:|---|---:|"]
    for r in res["rows"]:
        out.append(f"| {'each its own' if r['locks'] == 'own' else 'one shared'} | {r['threads']} | "
                   f"{r['native_ns']:.0f} | {r['lockprof_ns']:.0f} | {r['ratio']:.2f}x | "
                   f"{r['scaling_native']:.2f}, {r['scaling_lockprof']:.2f} | "
                   f"{r['scaling_ratio']:.2f} |")
    return out
