"""Threads truly in parallel: exact figures, the sampling rate, controls and
exports while threads hammer locks, lock order and the hang doctor.

These run on every build; on a free-threaded CPython (3.13t and later) the
threads run Python at once and the GIL must stay off under lockprof, which
the first tests assert.  On a GIL build they still check the same figures,
with the interleavings the GIL allows."""
import asyncio
import math
import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time

import pytest

import lockprof
from lockprof import _lockprof
from lockprof.export import pprof

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lockprof.__file__)))
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
needs_ft = pytest.mark.skipif(not FREE_THREADED, reason="a free-threaded CPython only")

THREAD_TYPES = ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition")


def _env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOCKPROF_") and k != "PYTHON_GIL"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def _python(code, *args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-W", "error", *args, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, env=_env(env))


def _parallel(n, fn):
    """runs fn(i) in n threads started together; re-raises their errors"""
    errors = []
    go = threading.Barrier(n)

    def run(i):
        try:
            go.wait()
            fn(i)
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)

    ths = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(120)
    assert not any(t.is_alive() for t in ths), "a thread did not finish"
    if errors:
        raise errors[0]


# -- the GIL stays off ------------------------------------------------------

GIL_PROBE = """
import sys, threading, asyncio
assert not sys._is_gil_enabled(), "on at start"
import lockprof
assert not sys._is_gil_enabled(), "turned on by import lockprof"
lockprof.start(1.0, lock_order=True, hang_timeout=30, max_locks=1000, max_frames=16,
               wait_period_ns=1000, max_samples=1000, seed=3, exclude_modules=["json"],
               max_stacks=100, max_sites=100, max_thread_names=10, max_task_names=10,
               max_order_edges=100, max_hang_waits=10)
assert not sys._is_gil_enabled(), "turned on by start()"
lock, cond = threading.Lock(), threading.Condition()
def work():
    for _ in range(1000):
        with lock:
            pass
        with cond:
            cond.notify_all()
ts = [threading.Thread(target=work) for _ in range(4)]
for t in ts: t.start()
for t in ts: t.join()
async def main():
    l = asyncio.Lock()
    async with l:
        pass
asyncio.run(main())
lockprof.write(sys.argv[1], "pprof")
lockprof.stop()
assert not sys._is_gil_enabled(), "turned on while profiling"
print("gil off")
"""


@needs_ft
def test_gil_stays_off_after_import_and_start_with_every_option(tmp_path):
    r = subprocess.run([sys.executable, "-W", "error", "-c", GIL_PROBE, str(tmp_path / "p.pprof")],
                       capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 0 and r.stdout == "gil off\n", r.stderr
    assert r.stderr == ""           # no RuntimeWarning (and -W error made any fatal)


@needs_ft
def test_gil_stays_off_under_lockprof_run_and_autostart(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("import sys, threading\nl = threading.Lock()\nwith l: pass\n"
                    "print(sys._is_gil_enabled())\n")
    r = subprocess.run([sys.executable, "-W", "error", "-m", "lockprof", "run", "-q",
                        "--lock-order", "--hang-timeout", "30", "--interval", "5",
                        "-o", str(tmp_path / "out"), str(prog)],
                       capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "False\n", r.stderr
    r = subprocess.run([sys.executable, "-W", "error", str(prog)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path,
                       env=_env({"LOCKPROF_ENABLED": "1", "LOCKPROF_OUTPUT": str(tmp_path / "auto"),
                                 "LOCKPROF_QUIET": "1"}))
    assert r.returncode == 0 and r.stdout == "False\n", r.stderr


# -- exact figures with threads in parallel ---------------------------------

def _acquires_in_file(path, kind):
    prof = pprof.read(str(path))
    return sum(s["count"] for s in prof.samples()
               if s["event"] == "acquire" and s["kind"] == kind)


@pytest.mark.parametrize("name", THREAD_TYPES)
def test_shared_lock_counts_are_exact_at_rate_one(tmp_path, name):
    """N threads x M acquisitions of one shared lock: exactly N*M, in
    stats() and in the file; the lock still excludes (no lost update)."""
    n, m = 4, 3000
    lockprof.start(1.0, max_overhead=0)   # every event: exact counts
    try:
        lock = getattr(threading, name)()
        box = [0]

        def work(i):
            for k in range(m):
                if k % 2:
                    with lock:
                        box[0] += 1
                else:
                    lock.acquire()
                    box[0] += 1
                    lock.release()

        _parallel(n, work)
        path = tmp_path / "p.pprof"
        lockprof.write(str(path), "pprof")
    finally:
        lockprof.stop()
    assert box[0] == n * m
    kind = "threading." + name
    recs = [r for r in lockprof.stats() if r["kind"] == kind]
    assert len(recs) == 1, recs
    assert recs[0]["acquisition_samples"] == n * m
    assert recs[0]["acquisitions"] == n * m
    assert recs[0]["hold_samples"] == n * m
    assert _acquires_in_file(path, kind) == n * m


@pytest.mark.parametrize("name", ("Lock", "Semaphore", "BoundedSemaphore", "Condition"))
def test_asyncio_locks_in_parallel_loops_are_exact(name):
    """asyncio locks belong to one loop: N threads, each its own loop and
    lock (one creation site), tasks contending in each; exactly N*M."""
    n, tasks, m = 4, 5, 400
    lockprof.start(1.0, max_overhead=0)
    try:
        def work(i):
            async def main():
                lock = getattr(asyncio, name)()

                async def one():
                    for _ in range(m):
                        async with lock:
                            await asyncio.sleep(0)
                await asyncio.gather(*(one() for _ in range(tasks)))
            asyncio.run(main())

        _parallel(n, work)
    finally:
        lockprof.stop()
    recs = [r for r in lockprof.stats() if r["kind"] == "asyncio." + name]
    assert sum(r["acquisition_samples"] for r in recs) == n * tasks * m
    # every task but the running one waited at each step: contentions exact
    # and non-zero, each one with its wait
    assert sum(r["contentions"] for r in recs) > 0


def _wait_entered(ident, var, timeout=20.0):
    """until the hang doctor's table holds a wait of thread `ident` on the
    lock named `var` (entered once its non-blocking try failed, before the
    wait blocks)"""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(w["ident"] == ident and w["lock"].endswith(":" + var)
               for w in _lockprof.hang_waits()):
            return
        time.sleep(0.0005)
    raise AssertionError(f"thread {ident} entered no wait")


@pytest.mark.parametrize("name", THREAD_TYPES)
def test_contentions_made_by_handshakes_are_exact(name):
    """Pairs of threads in parallel, each pair on its own lock: the holder
    lets go only once its partner's wait is entered, k times: exactly k
    contentions per lock, none elsewhere."""
    k, pairs = 40, 3
    lockprof.start(0.0, hang_timeout=3600)     # the table of waits, never a report
    try:
        made = threading.Barrier(pairs)
        locks = [None] * pairs

        def pair(i):
            # each pair's lock made at one line; variable names per pair
            locks[i] = lk = getattr(threading, name)()
            made.wait()
            want, done = threading.Semaphore(0), threading.Semaphore(0)

            def partner():
                for _ in range(k):
                    want.acquire()
                    with lk:
                        pass
                    done.release()
            t = threading.Thread(target=partner)
            t.start()
            for _ in range(k):
                lk.acquire()
                want.release()
                _wait_entered(t.ident, "lk")
                lk.release()
                done.acquire()
            t.join()

        _parallel(pairs, pair)
    finally:
        lockprof.stop()
    recs = [r for r in lockprof.stats() if r["kind"] == "threading." + name and r["var"] == "lk"]
    assert sorted(r["contentions"] for r in recs) == [k] * pairs, recs
    assert all(r["wait_ns"] > 0 for r in recs)


def test_sampling_rate_per_thread_locks_within_binomial_bounds():
    """T threads, each on its own Lock, at 1%: the sampled acquisitions are
    Binomial(T*M, 0.01); the total stays within 5 standard deviations.  A
    countdown shared without the GIL loses decrements and misses this."""
    t_n, m, p = 4, 100_000, 0.01
    lockprof.start(p, max_overhead=0)    # the fixed rate p
    try:
        def work(i):
            lock = threading.Lock()
            acq, rel = lock.acquire, lock.release
            for _ in range(m):
                acq()
                rel()

        _parallel(t_n, work)
    finally:
        lockprof.stop()
    got = sum(r["acquisition_samples"] for r in lockprof.stats() if r["kind"] == "threading.Lock")
    n = t_n * m
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    assert abs(got - mean) <= 5 * sd, (got, mean, sd)


# -- controls and exports while threads hammer -------------------------------

HAMMER = """
import threading, time, sys
shared = threading.Lock()
counts = [0] * 4
end = time.monotonic() + 1.6
def work(i):
    n = 0
    while time.monotonic() < end:
        with shared:
            n += 1
    counts[i] = n
ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
print("n", sum(counts))
"""


def test_interval_windows_sum_to_the_total_while_threads_hammer(tmp_path):
    prog = tmp_path / "hammer.py"
    prog.write_text(HAMMER)
    r = subprocess.run([sys.executable, "-m", "lockprof", "run", "-q", "--sample-rate", "1", "--max-overhead", "0",
                        "--interval", "0.3", "--keep", "1000", "-o", "snaps", str(prog)],
                       capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.split()[1])
    files = sorted((tmp_path / "snaps").glob("lockprof-hammer.*.pprof"))
    assert len(files) >= 2, files
    total = 0
    for f in files:
        prof = pprof.read(str(f))
        total += sum(s["count"] for s in prof.samples()
                     if s["event"] == "acquire" and s["lock_name"].endswith(":shared"))
    assert total == n


def test_start_stop_reset_export_while_threads_hammer(tmp_path):
    """Controllers restart, reset, read and write while workers run: no
    crash, no deadlock, every profile written is readable, and the lock
    still excludes."""
    lockprof.start(1.0)
    shared = [threading.Lock(), threading.RLock(), threading.Condition()]
    counts = [0, 0, 0]
    stop_at = time.monotonic() + 2.0
    errors = []

    def worker(i):
        k = 0
        while time.monotonic() < stop_at:
            j = k % 3
            with shared[j]:
                counts[j] += 1
            k += 1

    def controller(i):
        j = 0
        while time.monotonic() < stop_at:
            op = (i + j) % 5
            if op == 0:
                lockprof.reset()
            elif op == 1:
                lockprof.write(str(tmp_path / f"w{i}.pprof"), "pprof", reset=bool(j % 2))
            elif op == 2:
                lockprof.stop()
                lockprof.start(1.0 if j % 2 else 0.01)
            elif op == 3:
                lockprof.stats()
                lockprof.samples()
            else:
                lockprof.counters()
            j += 1
            time.sleep(0.002)

    def run(i):
        try:
            (worker if i < 4 else controller)(i)
        except BaseException as e:  # noqa: B902
            errors.append(e)

    _parallel(6, run)
    lockprof.stop()
    assert errors == []
    for f in tmp_path.glob("w*.pprof"):
        pprof.read(str(f))
    assert lockprof.counters()["errors"] == 0


# -- lock order and the hang doctor with parallel threads ---------------------

INVERSION = """
import threading, lockprof
lockprof.start(0.01, lock_order=True)
a = threading.Lock()
b = threading.Lock()
def forward(n):
    for _ in range(n):
        with a:
            with b:
                pass
ts = [threading.Thread(target=forward, args=(2000,)) for _ in range(4)]
for t in ts: t.start()
for t in ts: t.join()
def backward():
    with b:
        with a:
            pass
t = threading.Thread(target=backward); t.start(); t.join()
cycles = lockprof.lock_order_cycles()
print(len(cycles), sorted(e["held"].rsplit(":", 1)[1] + ">" + e["acquired"].rsplit(":", 1)[1]
                          for e in cycles[0]))
"""


def test_lock_order_with_parallel_threads_reports_the_cycle_once():
    r = _python(INVERSION, env={"PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "1 ['a>b', 'b>a']", r.stdout + r.stderr


def test_hang_doctor_with_parallel_contention_is_quiet_and_leaves_no_wait():
    """Many short waits entered and removed at once from several threads:
    none past the timeout, so no report, and the table ends empty."""
    lockprof.start(0.01, hang_timeout=30)
    try:
        shared = threading.Lock()

        def work(i):
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                with shared:
                    pass

        _parallel(4, work)
        c = lockprof.counters()
    finally:
        lockprof.stop()
    assert c["hang_waits"] == 0 and c["hang_reports"] == 0 and c["hang_errors"] == 0
    assert c["errors"] == 0
