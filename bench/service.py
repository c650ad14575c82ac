"""A service-like workload: many lock operations per request, as a threaded
Python service does them, served in-process and measured end to end.

Per request (a closed loop: 16 clients, each waiting for its reply before
sending the next):
  - a `queue.Queue` hands it to one of 8 worker threads;
  - the worker takes a connection from a pool (a BoundedSemaphore plus a
    Lock-guarded free list), works on it, and gives it back;
  - reads and fills a shared cache under an RLock;
  - logs a line through `logging` (its handler's RLock);
  - every fourth request also goes through an asyncio service on its own
    event-loop thread (an asyncio.Semaphore and asyncio.Lock), and the worker
    waits for that reply.

`python -m bench.service --config off|lockprof|lockprof-1|ddtrace` runs one
configuration and prints JSON; `run()` runs each in a fresh interpreter,
interleaved, several times, and reports medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

CONFIGS = ("off", "lockprof", "lockprof-1", "ddtrace")


def _start_profiler(config: str) -> str:
    """Starts the profiler before the workload's modules make their locks."""
    if config == "lockprof":
        import lockprof
        lockprof.start(0.01)
        return "lockprof at the default rate 0.01"
    if config == "lockprof-1":
        import lockprof
        lockprof.start(1.0)
        return "lockprof at rate 1"
    if config == "ddtrace":
        from bench import ddtrace_locks
        reason = ddtrace_locks.why_unavailable()
        if reason is not None:
            raise SystemExit(f"ddtrace unavailable: {reason}")
        from ddtrace.profiling.collector import asyncio as da
        from ddtrace.profiling.collector import threading as dt
        collectors = [getattr(m, n)(capture_pct=1.0)
                      for m, prefix in ((dt, "Threading"), (da, "Asyncio"))
                      for n in dir(m) if n.startswith(prefix) and n.endswith("Collector")]
        for c in collectors:
            c.start()
        _keep.extend(collectors)
        return f"ddtrace {ddtrace_locks.version()} lock collectors, capture 1%"
    return "no profiler"


_keep: list = []


def serve(requests: int, clients: int = 16, workers: int = 8) -> Dict:
    import asyncio
    import logging
    import queue
    import threading

    class CountingHandler(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = 0

        def emit(self, record):
            self.format(record)
            self.lines += 1

    log = logging.getLogger("bench.service")
    log.propagate = False
    handler = CountingHandler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    class Pool:
        def __init__(self, size):
            self.slots = threading.BoundedSemaphore(size)
            self.lock = threading.Lock()
            self.free = [{"id": i, "uses": 0} for i in range(size)]

        def use(self, work):
            with self.slots:
                with self.lock:
                    conn = self.free.pop()
                try:
                    conn["uses"] += 1
                    return work(conn)
                finally:
                    with self.lock:
                        self.free.append(conn)

    pool = Pool(4)
    cache: Dict[int, int] = {}
    cache_lock = threading.RLock()

    # the asyncio side: its own loop thread
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def loop_main():
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    loop_thread = threading.Thread(target=loop_main, name="asyncio-loop", daemon=True)
    loop_thread.start()
    ready.wait()
    state = {}

    async def make_async_state():
        state["sem"] = asyncio.Semaphore(8)
        state["lock"] = asyncio.Lock()
        state["count"] = 0
    asyncio.run_coroutine_threadsafe(make_async_state(), loop).result()

    async def async_part(key):
        async with state["sem"]:
            await asyncio.sleep(0)
            async with state["lock"]:
                state["count"] += 1
        return key * 2

    def handle(key: int) -> int:
        value = pool.use(lambda conn: sum(range(100 + key % 50)) + conn["id"])
        with cache_lock:
            hit = cache.get(key % 512)
            if hit is None:
                cache[key % 512] = value
        log.info("request %d served by %s", key, threading.current_thread().name)
        if key % 4 == 0:
            value += asyncio.run_coroutine_threadsafe(async_part(key), loop).result()
        return value

    jobs: "queue.Queue" = queue.Queue(maxsize=256)

    def worker():
        while True:
            job = jobs.get()
            if job is None:
                return
            key, reply = job
            reply.put(handle(key))

    latencies: List[int] = []
    per_client = requests // clients

    def client(c):
        reply = queue.SimpleQueue()
        lat = []
        for i in range(per_client):
            t0 = time.perf_counter_ns()
            jobs.put((c * per_client + i, reply))
            reply.get()
            lat.append(time.perf_counter_ns() - t0)
        latencies.extend(lat)

    ws = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(workers)]
    for w in ws:
        w.start()
    cs = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for c in cs:
        c.start()
    for c in cs:
        c.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for _ in ws:
        jobs.put(None)
    for w in ws:
        w.join()
    loop.call_soon_threadsafe(loop.stop)
    loop_thread.join()
    latencies.sort()
    n = len(latencies)
    assert handler.lines == n and state["count"] == sum(1 for k in range(n) if k % 4 == 0)
    return {"requests": n, "wall_s": wall, "cpu_s": cpu, "throughput": n / wall,
            "p50_us": latencies[n // 2] / 1e3, "p99_us": latencies[int(n * 0.99)] / 1e3}


def _one(config: str, requests: int) -> Dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "bench.service", "--config", config,
                        "--requests", str(requests)], capture_output=True, text=True, env=env,
                       cwd=root, timeout=600)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout)


def run(requests: int = 20000, rounds: int = 5, configs=CONFIGS) -> Dict:
    """Each configuration in a fresh interpreter, interleaved, `rounds` times;
    medians, and ratios against `off`."""
    samples: Dict[str, List[Dict]] = {c: [] for c in configs}
    errors: Dict[str, str] = {}
    for _ in range(rounds):
        for c in configs:
            if c in errors:
                continue
            res = _one(c, requests)
            if "error" in res:
                errors[c] = res["error"]
            else:
                samples[c].append(res)
    out = {"requests": requests, "rounds": rounds, "configs": {}, "errors": errors}
    for c, runs in samples.items():
        if not runs:
            continue
        med = {k: statistics.median(r[k] for r in runs)
               for k in ("throughput", "p50_us", "p99_us", "cpu_s", "wall_s")}
        med["profiler"] = runs[0]["profiler"]
        out["configs"][c] = med
    base = out["configs"].get("off")
    if base:
        for c, m in out["configs"].items():
            m["vs_off"] = {k: round(m[k] / base[k], 3) for k in ("throughput", "p50_us", "p99_us",
                                                                 "cpu_s")}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.service")
    p.add_argument("--config", choices=CONFIGS, required=True)
    p.add_argument("--requests", type=int, default=20000)
    args = p.parse_args(argv)
    profiler = _start_profiler(args.config)
    res = serve(args.requests)
    res["profiler"] = profiler
    if args.config.startswith("lockprof"):
        import lockprof
        waited = [r for r in lockprof.stats() if r["contentions"]]
        res["lockprof_locks_with_waits"] = len(waited)
        lockprof.stop()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
