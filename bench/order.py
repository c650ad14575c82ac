"""The cost of lock-order tracking (issue 13): `python -m bench.order`.

- Instructions per operation (callgrind) for lockprof with lock_order off and
  on, and natively. Off must be the hot path without the feature.
- Wall clock, interleaved in one process (lock_order switched on and off
  between rounds), for an uncontended acquire()+release() while one other
  lock is held. Target: at most +60 ns over lockprof without it."""
from __future__ import annotations

import sys
import threading
import time

CASES = [("threading.Lock", "acquire+release"), ("threading.Lock", "with"),
         ("threading.Lock", "acquire+release holding one"),
         ("threading.RLock", "acquire+release holding one")]


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
        res = {False: [], True: []}
        for _ in range(rounds):
            for order in (False, True):
                _lockprof.configure(True, 0.01, lock_order=order)
                res[order].append(run())
        _lockprof.lock_order_clear()
    finally:
        lockprof.stop()
    return {"lockprof_ns": min(res[False]), "lock_order_ns": min(res[True])}


def main() -> int:
    from bench import instructions
    w = wall()
    print(f"acquire()+release() holding one other lock, ns (min of 15 interleaved rounds): "
          f"lockprof {w['lockprof_ns']:.1f}, with lock order {w['lock_order_ns']:.1f}, "
          f"+{w['lock_order_ns'] - w['lockprof_ns']:.1f} (target +60)")
    if instructions.available() is None:
        print("instructions per operation (callgrind): native / lockprof / lockprof+order")
        for r in instructions.measure(n=20000, configs=("native", "0.01", "0.01+order"),
                                      cases=CASES):
            i = r["instructions"]
            print(f"  {r['type']} {r['op']}: {i['native']:.0f} / {i['0.01']:.0f} / "
                  f"{i['0.01+order']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
