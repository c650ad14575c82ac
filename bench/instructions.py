"""Instructions per operation, counted by valgrind's callgrind: deterministic
where wall-clock timing on a shared machine is not.

Each (type, operation, configuration) runs in its own interpreter under
callgrind twice, with N operations and with none; the difference divided by
N is the cost of one operation, interpreter start and imports cancelling out.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

CASES = [
    ("threading.Lock", "acquire+release"), ("threading.Lock", "with"),
    ("threading.RLock", "acquire+release"), ("threading.RLock", "with"),
    ("threading.Semaphore", "acquire+release"), ("threading.Semaphore", "with"),
    ("threading.BoundedSemaphore", "acquire+release"), ("threading.BoundedSemaphore", "with"),
    ("threading.Condition", "acquire+release"), ("threading.Condition", "with"),
    ("asyncio.Lock", "async with"), ("asyncio.Semaphore", "async with"),
    ("asyncio.Condition", "async with"),
    # the stdlib's own user of Conditions over a wrapped lock (its mutex)
    ("queue.Queue", "put+get"),
    # methods passed through unrecorded, on a held Condition
    ("threading.Condition", "notify"), ("threading.Condition", "notify_all"),
]
# process-shared locks (a semaphore syscall-free when uncontended)
CASES += [(f"multiprocessing.{t}", op) for t in ("Lock", "RLock", "Semaphore")
          for op in ("acquire+release", "with")]
try:                    # third-party types, where installed (a test extra)
    import anyio  # noqa: F401
except ImportError:
    pass
else:
    CASES += [("anyio.Lock", "async with"), ("anyio.Semaphore", "async with"),
              ("anyio.CapacityLimiter", "async with")]
try:
    import trio  # noqa: F401
except ImportError:
    pass
else:
    CASES += [("trio.Lock", "async with"), ("trio.Semaphore", "async with"),
              ("trio.CapacityLimiter", "async with"), ("trio.Condition", "async with")]
STMTS = {"acquire+release": "l.acquire(); l.release()", "with": "with l: pass",
         "async with": "async with l: pass", "put+get": "l.put(1); l.get()",
         "notify": "l.notify()", "notify_all": "l.notify_all()",
         "acquire+release holding one": "holding: l.acquire(); l.release()"}

SCRIPT = """
import sys, asyncio, threading, queue, multiprocessing
config, key, stmt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if config != "native":
    import lockprof
    rate, _, extra = config.partition("+")
    lockprof.start(float(rate), seed=1, lock_order=extra == "order", max_overhead=0,
                   hang_timeout=60.0 if extra == "hang" else None)
    if extra == "labels":        # request labels set around every operation
        lockprof.labels(endpoint="/orders/{id}", tenant="acme").__enter__()
    elif extra == "late":        # the middleware's late value: a route read at each event
        from lockprof._labels import _set_late, route_or_path
        class Route:                 # as Starlette's: the template an instance attribute
            def __init__(self):
                self.path = "/orders/{order_id}"
        _set_late("endpoint", route_or_path({"route": Route()}, "route", ("path",), "/orders/7"))
modname, kind = key.split(".")
if modname in ("anyio", "trio"):
    mod = __import__(modname)     # run in its own loop (below)
else:
    mod = {"asyncio": asyncio, "threading": threading, "queue": queue,
           "multiprocessing": multiprocessing}[modname]
args = (1,) if kind in ("Semaphore", "CapacityLimiter") else ()
l = getattr(mod, kind)(*args) if modname != "anyio" else None
if stmt.startswith("l.notify"):
    l.acquire()
if stmt.startswith("holding"):
    outer = getattr(mod, kind)()     # one other lock, held throughout
    outer.acquire()
    stmt = stmt.split(": ", 1)[1]
body = "\\n".join("        " + stmt for _ in range(10))
is_async = stmt.startswith("async")
src = ("async " if is_async else "") + "def run(l, n):\\n    for _ in range(n):\\n" + body + "\\n"
ns = {}
exec(src, ns)
if modname in ("anyio", "trio"):
    async def main():
        await ns["run"](getattr(mod, kind)(*args), n // 10)
    mod.run(main)
elif is_async:
    asyncio.new_event_loop().run_until_complete(ns["run"](l, n // 10))
else:
    ns["run"](l, n // 10)
"""


def _python() -> str:
    """The interpreter to count: a venv's own python (its packages: anyio and
    trio's rows), else the resolved binary (not a launcher script)."""
    if sys.prefix != sys.base_prefix:
        return sys.executable
    return os.path.realpath(sys.executable)


def available() -> Optional[str]:
    """None when callgrind can run, else the reason."""
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (Debian package valgrind)"
    return None


def _count(config: str, key: str, op: str, n: int, script: str) -> int:
    return _count_argv([_python(), script, config, key, STMTS[op],
                        str(n)])


def measure(n: int = 20000, configs=("native", "0.01"), cases=None) -> List[Dict]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(SCRIPT)
        script = f.name
    results = []
    try:
        os.environ.setdefault("PYTHONPATH", root)
        for config in configs:
            # a first run writes whatever .pyc files are missing or stale:
            # compiling would otherwise count in one of the two runs below
            _count(config, "threading.Lock", "with", 0, script)
        for key, op in cases or CASES:
            per = {}
            for config in configs:
                per[config] = (_count(config, key, op, n, script)
                               - _count(config, key, op, 0, script)) / n
            base = per["native"]
            results.append({"type": key, "op": op,
                            "instructions": {c: round(v, 1) for c, v in per.items()},
                            "ratio": {c: round(v / base, 3) for c, v in per.items()}})
    finally:
        os.unlink(script)
    return results


def labels_cost(n: int = 20000) -> Dict[str, float]:
    """Request labels (lockprof.labels): instructions per `with` on a
    threading.Lock at the default rate with labels set against none (the hot
    path does not read them: the same), and per recorded event at rate 1
    (two per `with`: acquire and hold) with two labels, and with the
    middleware's late route value, over none."""
    rows = measure(n=n, configs=("native", "0.01", "0.01+labels", "1", "1+labels", "1+late"),
                   cases=[("threading.Lock", "with")])
    per = rows[0]["instructions"]
    r = {"native": per["native"], "default": per["0.01"], "default_labels": per["0.01+labels"],
         "event_labels": round((per["1+labels"] - per["1"]) / 2, 1),
         "event_late": round((per["1+late"] - per["1"]) / 2, 1),
         "event": round((per["1"] - per["0.01"]) / 2, 1)}
    return r


def _count_argv(argv: List[str]) -> int:
    out = tempfile.mktemp(prefix="lockprof-cg-")
    try:
        r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            *argv], capture_output=True, text=True, timeout=600,
                           env={**{k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
                                "PYTHONHASHSEED": "0"})
        m = re.search(r"Collected : (\d+)", r.stderr) or re.search(r"refs:\s+([\d,]+)", r.stderr)
        if r.returncode != 0 or m is None:
            raise RuntimeError(f"callgrind failed: {r.stderr.strip().splitlines()[-1:]}")
        return int(m.group(1).replace(",", ""))
    finally:
        if os.path.exists(out):
            os.unlink(out)


CONTENDED_SCRIPT = """
import sys, asyncio, threading
config, case, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if config != "native":
    import lockprof
    rate, _, fixed = config.partition("/")
    # "/fixed": no wait is long enough, against a wait period of a year, to
    # keep a stack: the fixed cost alone (clock reads, counters, the draw)
    lockprof.start(float(rate), seed=1, max_overhead=0,
                   wait_period_ns=365 * 86400 * 10**9 if fixed else 1_000_000)

def pingpong(n):
    # two threads hand two locks back and forth: each acquire waits for the
    # other thread's release (a contended acquire, then a release that has
    # a waiter), n round trips
    a, b = threading.Lock(), threading.Lock()
    a.acquire(); b.acquire()
    def other():
        for _ in range(n):
            a.acquire()
            b.release()
    t = threading.Thread(target=other)
    t.start()
    for _ in range(n):
        a.release()
        b.acquire()
    t.join()

def condition(n):
    # a Condition round trip: each thread waits for its turn, then passes it
    cond = threading.Condition()
    turn = [0]
    def play(me, n):
        for _ in range(n):
            with cond:
                while turn[0] != me:
                    cond.wait()
                turn[0] = 1 - me
                cond.notify()
    t = threading.Thread(target=play, args=(1, n))
    t.start()
    play(0, n)
    t.join()

def async_with(n):
    # two tasks on one asyncio.Lock, each suspending inside it: the other's
    # acquire waits every time (contended), in one thread: deterministic
    async def main():
        lock = asyncio.Lock()
        async def task():
            for _ in range(n):
                async with lock:
                    await asyncio.sleep(0)
        await asyncio.gather(task(), task())
    asyncio.new_event_loop().run_until_complete(main())

{"pingpong": pingpong, "condition": condition, "async with": async_with}[case](n)
if config != "native" and n:
    c = sum(r["contentions"] for r in lockprof.stats())
    print("contentions", c, file=sys.stderr)
"""
CONTENDED = {"pingpong": "threading.Lock, contended acquire+release (two-thread hand-off)",
             "condition": "threading.Condition, wait/notify round trip (two threads)",
             "async with": "asyncio.Lock, contended async with (two tasks)"}


def contended_cost(n: int = 2000, configs=("native", "0.01", "0.01/fixed")) -> List[Dict]:
    """The contended paths, scripted so every operation waits (callgrind
    runs one thread at a time, and a thread that blocks hands over): per
    round trip (two contended acquires and their releases; a Condition
    wait and notify each side; each task's `async with`), N minus none.

    The stacks of waits are sampled by time (a wait in proportion to its
    length, a release stack once per wait period): under callgrind, 20-50x
    slower than the machine, far more of them are kept than in a real run.
    "0.01/fixed" keeps none: the fixed cost of a contended operation."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CONTENDED_SCRIPT)
        script = f.name
    python = _python()
    os.environ.setdefault("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = []
    try:
        for case, what in CONTENDED.items():
            per = {}
            for config in configs:
                per[config] = (_count_argv([python, script, config, case, str(n)])
                               - _count_argv([python, script, config, case, "0"])) / n
            base = per["native"]
            out.append({"case": case, "what": what,
                        "instructions": {c: round(v, 1) for c, v in per.items()},
                        "added": {c: round(v - base, 1) for c, v in per.items()},
                        "ratio": {c: round(v / base, 3) for c, v in per.items()}})
    finally:
        os.unlink(script)
    return out


def startup_cost() -> Dict[str, float]:
    """`import lockprof` and `lockprof.start()`: instructions over a bare
    interpreter (-S: no site, so nothing the environment imports is shared),
    min of three runs each (bytecode cached by a first run).  deps: the
    stdlib modules lockprof imports (threading, contextvars, opcode, os),
    which a program taking locks has mostly imported already; _own: import
    and start over an interpreter that has them."""
    import lockprof
    root = os.path.dirname(os.path.dirname(os.path.abspath(lockprof.__file__)))
    python = _python()
    head = f"import sys; sys.path.insert(0, {root!r})"
    # what lockprof needs that a program taking locks imports anyway
    deps = "; import threading, contextvars, opcode, os"
    steps = {"bare": head, "deps": head + deps, "import": head + "; import lockprof",
             "import+start": head + "; import lockprof; lockprof.start()",
             "deps+import+start": head + deps + "; import lockprof; lockprof.start()"}
    # bytecode cached, as where programs are deployed
    saved = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        for code in steps.values():
            subprocess.run([python, "-S", "-c", code], check=True)     # .pyc written
        counts = {k: min(_count_argv([python, "-S", "-c", code]) for _ in range(3))
                  for k, code in steps.items()}
    finally:
        if saved is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = saved
    return {"import": counts["import"] - counts["bare"],
            "import_start": counts["import+start"] - counts["bare"],
            "deps": counts["deps"] - counts["bare"],
            "import_start_own": counts["deps+import+start"] - counts["deps"]}


MUTEX_SCRIPT = """
import sys, threading, lockprof
lockprof.start(1.0, seed=1, max_overhead=0)
l = threading.Lock()
for _ in range(int(sys.argv[1])):
    l.acquire(); l.release()
"""


def mutex_cost(n: int = 20000) -> Optional[Dict[str, float]]:
    """Free-threaded builds: instructions the tables' mutex costs a sampled
    event, counted by callgrind in lp_enter/lp_exit (out of line there for
    this), calls included; at rate 1.0 every acquire and every release is one
    event.  None on a GIL build (the mutex compiles away)."""
    import sysconfig
    if not sysconfig.get_config_var("Py_GIL_DISABLED") or shutil.which("callgrind_annotate") is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(MUTEX_SCRIPT)
        script = f.name
    out = tempfile.mktemp(prefix="lockprof-cgm-")
    try:
        r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            _python(), script, str(n)],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONHASHSEED": "0",
                                "PYTHONPATH": os.environ.get("PYTHONPATH") or root})
        if r.returncode != 0:
            raise RuntimeError(f"callgrind failed: {r.stderr.strip().splitlines()[-1:]}")
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
                             capture_output=True, text=True, timeout=600).stdout
    finally:
        os.unlink(script)
        if os.path.exists(out):
            os.unlink(out)
    incl = {}
    for line in ann.splitlines():
        # the functions' own lines (their source file), not the inlined
        # header code counted inside them
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*runtime/lp_thread\.c:(lp_enter|lp_exit)"
                     r"(\s|$)", line)
        if m:       # one line per debug-info path of the function: summed
            incl[m.group(2)] = incl.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    events = 2 * n              # one acquire and one release event per iteration
    if "lp_enter" not in incl or "lp_exit" not in incl:
        raise RuntimeError("callgrind_annotate did not list lp_enter/lp_exit")
    # each of the two call sites pays its call: 2 instructions (callgrind)
    mutex = (incl["lp_enter"] + incl["lp_exit"]) / events + 4
    return {"mutex_per_event": round(mutex, 1)}


def _annotate(argv: List[str]) -> Tuple[int, Dict[str, int]]:
    """Runs argv under callgrind: its total and the exclusive instructions
    of each function (callgrind_annotate's "file:function [object]" keys)."""
    out = tempfile.mktemp(prefix="lockprof-cgs-")
    try:
        r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
                           capture_output=True, text=True, timeout=1800,
                           env={**{k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
                                "PYTHONHASHSEED": "0"})
        if r.returncode != 0:
            raise RuntimeError(f"callgrind failed: {r.stderr.strip().splitlines()[-1:]}")
        ann = subprocess.run(["callgrind_annotate", "--threshold=100", out],
                             capture_output=True, text=True, timeout=600).stdout
    finally:
        if os.path.exists(out):
            os.unlink(out)
    total, funcs = 0, {}
    for line in ann.splitlines():
        # the per-function summary ("N (p%)  file:function [object]"), not
        # the annotated source lines or the calls ("=>") below it
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(?!=>)(\S.*? \[.*\]|PROGRAM TOTALS)\s*$",
                     line)
        if m is None:
            continue
        n = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in m.group(2):
            total = n
        else:
            funcs[m.group(2)] = funcs.get(m.group(2), 0) + n
    return total, funcs


def service_breakdown(requests: int = 2000) -> Dict:
    """Where a service's extra instructions go: bench/service.py's workload
    (queue, pool, RLock cache, logging, an asyncio side) under callgrind,
    with no profiler and with lockprof at its defaults; per request, the
    total of each, lockprof's own functions (its extension module), and the
    functions whose count moved most.  callgrind runs one thread at a time,
    so the threads' interleaving (how often a lock is contended) is
    callgrind's, not the machine's: the same for both runs, not equal to a
    real run's."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python = _python()
    os.environ.setdefault("PYTHONPATH", root)
    runs = {}
    for config in ("off", "lockprof"):
        runs[config] = _annotate([python, "-m", "bench.service", "--config", config,
                                  "--requests", str(requests)])
    (t_off, f_off), (t_on, f_on) = runs["off"], runs["lockprof"]
    ours = {k: v for k, v in f_on.items() if "_lockprof." in k}
    moved = sorted(((f_on.get(k, 0) - f_off.get(k, 0), k) for k in set(f_on) | set(f_off)
                    if "_lockprof." not in k), key=lambda kv: -abs(kv[0]))
    per = float(requests)
    return {"requests": requests,
            "off_per_request": round(t_off / per), "lockprof_per_request": round(t_on / per),
            "ratio": round(t_on / t_off, 4),
            "ours_per_request": round(sum(ours.values()) / per),
            "ours_top": [(k, round(v / per, 1)) for k, v in
                         sorted(ours.items(), key=lambda kv: -kv[1])[:12]],
            "others_moved": [(k, round(d / per, 1)) for d, k in moved[:12]]}
