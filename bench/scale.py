"""The profile at service scale: rows, bytes, export and exit cost as a
program creates more tasks, threads and stacks.

- tasks: N short asyncio tasks through one code path, each taking an
  asyncio lock, at N and 10 N;
- threads: thread-per-request (a new thread per unit of work), at N and 10 N;
- stacks: a program taking one lock through A x B distinct call paths
  (>= 100,000 rows), with each format's export time;
- server: an asyncio streams server on loopback, a task per connection,
  driven by a client in the same interpreter for a bounded request count.

Each program runs in a fresh interpreter, plain (`python prog.py`) and under
`python -m lockprof run`, interleaved, after one warm-up run of each (with
bytecode caching on); medians of the rounds.  User CPU
is the reaped children's (getrusage); the exit time is from the program's last
statement to the process's end.
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

TASKS = r"""
import asyncio, sys, time
N = int(sys.argv[1])
async def handle(lock, i):
    await asyncio.sleep(0)
    async with lock:
        pass
async def serve():
    lock = asyncio.Lock()
    for start in range(0, N, 1000):
        await asyncio.gather(*(handle(lock, i) for i in range(start, min(N, start + 1000))))
asyncio.run(serve())
import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time())
"""

# the same, holding the lock across an await: every task queues behind the
# others, so every acquisition is a contention (counted exactly, its wait's
# stack sampled in proportion to its length)
TASKS_CONTENDED = TASKS.replace("    await asyncio.sleep(0)\n    async with lock:\n        pass",
                                "    async with lock:\n        await asyncio.sleep(0)")

THREADS = r"""
import sys, threading, time
N = int(sys.argv[1])
lock = threading.Lock()
def handle(i):
    with lock:
        pass
for start in range(0, N, 50):
    batch = [threading.Thread(target=handle, args=(i,)) for i in range(start, min(N, start + 50))]
    for t in batch: t.start()
    for t in batch: t.join()
import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time())
"""

# one lock taken through n x n distinct call paths (a{i} called by b{j}):
# n * n stacks, 2 n * n rows at rate 1.0
PATHS = r"""
def run_paths(n, lk):
    src = "\n".join(f"def a{i}(lk):\n    with lk:\n        pass\n" for i in range(n))
    src += "\n" + "\n".join(f"def b{j}(fn, lk):\n    fn(lk)\n" for j in range(n))
    ns = {}
    exec(compile(src, "paths.py", "exec"), ns)
    fa = [ns[f"a{i}"] for i in range(n)]
    for j in range(n):
        b = ns[f"b{j}"]
        for a in fa:
            b(a, lk)
"""

STACKS = ("import sys, threading, time\n" + PATHS +
          "run_paths(int(sys.argv[1]), threading.Lock())\n"
          "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
          "time.time())\n")

SERVER = r"""
import asyncio, sys, time
N = int(sys.argv[1])
async def main():
    lock = asyncio.Lock()
    hits = [0]
    async def handle(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            async with lock:
                hits[0] += 1
            writer.write(b"ok\n")
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async def client(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            w.write(b"get\n")
            await w.drain()
            await r.readline()
        w.close()
    # a connection (so a server task) per 4 requests, 16 at a time
    per, conns = 4, N // 4
    for start in range(0, conns, 16):
        await asyncio.gather(*(client(per) for _ in range(start, min(conns, start + 16))))
    server.close()
    await server.wait_closed()
    assert hits[0] == conns * per
asyncio.run(main())
import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time())
"""

# hours of a service, compressed: rounds of requests, each a task with a
# lock of its own and the shared one, and a short thread per 50 requests;
# RSS after the first fifth and at the end
LONG = r"""
import asyncio, resource, sys, threading, time
N = int(sys.argv[1])
shared = threading.Lock()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4     # resident pages, kB
async def request(lock):
    mine = asyncio.Lock()
    async with mine:
        async with lock:
            await asyncio.sleep(0)
def thread_work():
    with shared:
        pass
async def main():
    lock = asyncio.Lock()
    for r in range(N // 1000):
        await asyncio.gather(*(request(lock) for _ in range(1000)))
        for _ in range(20):
            t = threading.Thread(target=thread_work)
            t.start()
            t.join()
        if r == N // 5000:
            print("rss_at_fifth", rss())
asyncio.run(main())
print("rss_at_end", rss())
import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time())
"""

PROGRAMS = {"long": LONG, "tasks": TASKS, "tasks-contended": TASKS_CONTENDED, "threads": THREADS,
            "stacks": STACKS, "server": SERVER}


def _run(argv: List[str], cwd: str, env: Dict[str, str]) -> Dict[str, float]:
    p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.communicate(timeout=900)
    end = time.time()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {err.decode()[-2000:]}")
    words = out.split()
    res = {"end": end, "last": float(words[-1]), "rss_kb": int(words[-2])}
    for line in out.decode().splitlines():
        if line.startswith("rss_at_"):
            k, v = line.split()
            res[k] = int(v)
    return res


def _measure(argv, cwd, env):
    """(user CPU s, exit ms, max RSS kB at the program's end) of one run in a
    fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = _run(argv, cwd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user = after.ru_utime - before.ru_utime
    return user, max(0.0, (r["end"] - r["last"]) * 1e3), r["rss_kb"], \
        r.get("rss_at_end", 0) - r.get("rss_at_fifth", 0)


def run_program(name: str, n: int, rounds: int = 3, rate: float = 0.01) -> Dict[str, Any]:
    from lockprof.export import pprof

    d = tempfile.mkdtemp(prefix=f"lockprof-scale-{name}-")
    script = os.path.join(d, f"{name}.py")
    with open(script, "w") as f:
        f.write(PROGRAMS[name])
    env = dict(os.environ)
    env.pop("LOCKPROF_ENABLED", None)
    # bytecode cached, as where programs are deployed (a shell with
    # PYTHONDONTWRITEBYTECODE set would compile lockprof anew in every run)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = os.path.join(d, "p.pprof")
    plain = [sys.executable, script, str(n)]
    # no CPU budget: the rows of every sampled path are what is measured
    prof = [sys.executable, "-m", "lockprof", "run", "-q", "--force", "--sample-rate", str(rate),
            "--max-overhead", "0", "-o", out, script, str(n)]
    runs: Dict[str, List] = {"plain": [], "lockprof": []}
    _measure(plain, d, env)         # warm-up: caches, bytecode
    _measure(prof, d, env)
    for _ in range(rounds):
        runs["plain"].append(_measure(plain, d, env))
        runs["lockprof"].append(_measure(prof, d, env))
    p = pprof.read(out)
    med = {k: tuple(statistics.median(x[i] for x in v) for i in range(4))
           for k, v in runs.items()}
    labels = {"tasks": len({r["task_name"] for r in p.samples()}),
              "threads": len({r["thread_name"] for r in p.samples()})}
    return {"program": name, "n": n, "rate": rate, "rows": p.nrows,
            "bytes": os.path.getsize(out), "labels": labels,
            "user_s": {k: v[0] for k, v in med.items()},
            "exit_ms": {k: v[1] for k, v in med.items()},
            "rss_kb": {k: v[2] for k, v in med.items()},
            # the long program: RSS growth from its first fifth to its end
            "rss_growth_kb": {k: v[3] for k, v in med.items()},
            "cpu_ratio": med["lockprof"][0] / max(med["plain"][0], 1e-9)}


def export_costs(paths: int = 320) -> Dict[str, Any]:
    """In this interpreter: the many-paths program at rate 1.0, then each
    format's export, and the snapshot, encode and gzip steps of pprof's."""
    import threading

    import lockprof
    from lockprof import export
    from lockprof.export import pprof

    lockprof.stop()
    lockprof.reset()
    ns: Dict[str, Any] = {}
    exec(PATHS, ns)
    lockprof.start(1.0, max_overhead=0)
    ns["run_paths"](paths, threading.Lock())
    lockprof.stop()
    d = tempfile.mkdtemp(prefix="lockprof-export-")
    out: Dict[str, Any] = {}
    best: Dict[str, float] = {}
    for _ in range(3):
        t0 = time.perf_counter()
        p = lockprof.profile()
        t1 = time.perf_counter()
        data = pprof.encode(p)
        t2 = time.perf_counter()
        gz = pprof.compress(data)
        t3 = time.perf_counter()
        for k, v in (("snapshot", t1 - t0), ("encode", t2 - t1), ("gzip", t3 - t2)):
            best[k] = min(best.get(k, v), v)
        for fmt in export.FORMATS:
            path = os.path.join(d, f"p.{export.EXTENSION[fmt]}")
            t = time.perf_counter()
            export.write(p, path, fmt)
            best[fmt] = min(best.get(fmt, 1e9), time.perf_counter() - t)
            out.setdefault("bytes", {})[fmt] = os.path.getsize(path)
        # the readers of many files: read one back, merge eight windows
        t = time.perf_counter()
        back = pprof.read(os.path.join(d, f"p.{export.EXTENSION['pprof']}"))
        t1 = time.perf_counter()
        export.Profile.merge([back] * 8)
        t2 = time.perf_counter()
        best["read"] = min(best.get("read", 1e9), t1 - t)
        best["merge x8"] = min(best.get("merge x8", 1e9), t2 - t1)
    rows = p.nrows
    out["rows_per_s"] = {"read": rows / best["read"], "merge": 8 * rows / best["merge x8"]}
    out.update({"rows": rows, "stacks": p.nstacks, "pprof_raw_bytes": len(data),
                "pprof_bytes": len(gz),
                "ms": {k: v * 1e3 for k, v in best.items()},
                # from the C tables to the written file
                "us_per_row": {fmt: (best["snapshot"] + best[fmt]) * 1e6 / rows
                               for fmt in export.FORMATS}})
    lockprof.reset()
    return out


def measure(n_tasks: int = 2000, n_threads: int = 500, paths: int = 224, rounds: int = 3,
            server_requests: int = 4000, rate: float = 0.01,
            export_paths: int = 320, long_requests: int = 200_000) -> Dict[str, Any]:
    """rate: the sample rate of every program but `stacks` (1.0: its rows;
    224 x 224 paths give 100,352 rows)."""
    res: Dict[str, Any] = {"programs": []}
    for name, n, r in (("tasks", n_tasks, rate), ("tasks", 10 * n_tasks, rate),
                       ("tasks-contended", n_tasks, rate),
                       ("tasks-contended", 10 * n_tasks, rate),
                       ("threads", n_threads, rate), ("threads", 10 * n_threads, rate),
                       ("stacks", paths, 1.0), ("server", server_requests, rate)):
        res["programs"].append(run_program(name, n, rounds=rounds, rate=r))
    res["long"] = run_program("long", long_requests, rounds=1, rate=rate)
    res["export"] = export_costs(export_paths)
    return res


def table(res: Dict[str, Any]) -> List[str]:
    lines = ["| program | N | rate | rows | distinct task / thread labels | profile bytes | "
             "user CPU s plain / lockprof run (ratio) | exit ms plain / lockprof | "
             "max RSS MB plain / lockprof |",
             "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in res["programs"]:
        lines.append(f"| {r['program']} | {r['n']:,} | {r['rate']:g} | {r['rows']:,} | "
                     f"{r['labels']['tasks']} / {r['labels']['threads']} | {r['bytes']:,} | "
                     f"{r['user_s']['plain']:.3f} / {r['user_s']['lockprof']:.3f} "
                     f"({r['cpu_ratio']:.3f}x) | {r['exit_ms']['plain']:.0f} / "
                     f"{r['exit_ms']['lockprof']:.0f} | {r['rss_kb']['plain'] / 1024:.1f} / "
                     f"{r['rss_kb']['lockprof'] / 1024:.1f} |")
    lg = res.get("long")
    if lg:
        lines += ["", f"A long run ({lg['n']:,} requests, each a task with a lock of its own and a "
                      f"shared one, and a short thread per 50 requests): RSS grew "
                      f"{lg['rss_growth_kb']['plain']:.0f} kB (plain) and "
                      f"{lg['rss_growth_kb']['lockprof']:.0f} kB (lockprof run, rate "
                      f"{lg['rate']:g}) from its first fifth to its end; the profile has "
                      f"{lg['rows']:,} rows."]
    e = res["export"]
    lines += ["", f"Export of a {e['rows']:,}-row profile ({e['stacks']:,} stacks; rate 1.0), "
                  f"best of 3, from the C tables to the written file: snapshot "
                  f"{e['ms']['snapshot']:.1f} ms, then pprof encode {e['ms']['encode']:.1f} ms + "
                  f"gzip {e['ms']['gzip']:.1f} ms ({e['pprof_raw_bytes'] / 1e6:.1f} MB -> "
                  f"{e['pprof_bytes'] / 1e6:.2f} MB).", "",
              "| format | write ms (after the snapshot) | us per row, snapshot included | bytes |",
              "|---|---:|---:|---:|"]
    for fmt, us in e["us_per_row"].items():
        lines.append(f"| {fmt} | {e['ms'][fmt]:.1f} | {us:.2f} | {e['bytes'][fmt]:,} |")
    if "rows_per_s" in e:
        lines += ["", f"Reading many files: the pprof file read back in {e['ms']['read']:.1f} ms "
                      f"({e['rows_per_s']['read'] / 1e3:,.0f}k rows/s); eight such windows "
                      f"merged into one profile in {e['ms']['merge x8']:.1f} ms "
                      f"({e['rows_per_s']['merge'] / 1e3:,.0f}k rows/s)."]
    return lines
