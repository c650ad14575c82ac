"""The cost of lock-order tracking and of the hang doctor (issue 13):
`python -m bench.order`.

- Instructions per operation (callgrind) for lockprof without either, with
  lock_order, with the hang doctor (hang_timeout), and natively.  Without
  them the hot path must be the one before the features.
- Wall clock, interleaved in one process (the features switched on and off
  between rounds), for an uncontended acquire()+release() while one other
  lock is held.  Target for lock order: at most +60 ns over lockprof without
  it.  The hang doctor keeps the same held-lock lists (no edges); its
  watchdog sleeps and costs nothing per operation."""
from __future__ import annotations

import sys
import threading
import time

CASES = [("threading.Lock", "acquire+release"), ("threading.Lock", "with"),
         ("threading.Lock", "acquire+release holding one"),
         ("threading.RLock", "acquire+release holding one")]
CONFIGS = ("native", "0.01", "0.01+order", "0.01+hang")


def wall(rounds: int = 15, n: int = 200_000) -> dict:
    import lockprof
    from lockprof import _lockprof
    lockprof.start(0.01, seed=1)
    try:
        outer, inner = threading.Lock(), threading.Lock()

        def run() -> float:
            with outer:
                t = time.perf_counter_ns()
                for _ in range(n):
                    inner.acquire()
                    inner.release()
                return (time.perf_counter_ns() - t) / n
        res = {"off": [], "order": [], "hang": []}
        for _ in range(rounds):
            for mode in res:
                _lockprof.configure(True, 0.01, lock_order=mode == "order")
                if mode == "hang":
                    _lockprof.hang_start(60.0, 2, lambda waits, timeout: "")
                res[mode].append(run())
                if mode == "hang":
                    _lockprof.hang_stop()
        _lockprof.lock_order_clear()
    finally:
        lockprof.stop()
    return {"lockprof_ns": min(res["off"]), "lock_order_ns": min(res["order"]),
            "hang_ns": min(res["hang"])}


def main() -> int:
    from bench import instructions
    w = wall()
    base = w["lockprof_ns"]
    print(f"acquire()+release() holding one other lock, ns (min of 15 interleaved rounds): "
          f"lockprof {base:.1f}; with lock order {w['lock_order_ns']:.1f} "
          f"(+{w['lock_order_ns'] - base:.1f}, target +60); with the hang doctor "
          f"{w['hang_ns']:.1f} (+{w['hang_ns'] - base:.1f})")
    if instructions.available() is None:
        print("instructions per operation (callgrind): native / lockprof / lockprof+order / "
              "lockprof+hang")
        for r in instructions.measure(n=20000, configs=CONFIGS, cases=CASES):
            i = r["instructions"]
            print(f"  {r['type']} {r['op']}: " + " / ".join(f"{i[c]:.0f}" for c in CONFIGS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
