"""gevent's own primitives, gevent.lock.Semaphore, BoundedSemaphore and
RLock: exact figures from greenlet handshakes, names, gevent's semantics
kept, lazy patching, and gevent's own tests of them passing profiled.  Each
test runs in a child interpreter: gevent's hub is per process state the
rest of the suite must not share."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("gevent")   # a test extra, except on free-threaded builds (it does not build)

ROOT = Path(__file__).resolve().parent.parent


def _run(code, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LOCKPROF_ENABLED", None)
    r = subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


HANDSHAKES = """
    import lockprof
    lockprof.start(1.0)
    import gevent, gevent.event, gevent.lock        # imported after start(): patched then
    HOLD = 0.05

    def holder(lock, held):
        with lock:
            held.set()
            gevent.sleep(HOLD)

    def waiter(lock):
        with lock:
            pass

    def handshakes(lock, n):
        for _ in range(n):
            held = gevent.event.Event()
            g1 = gevent.spawn(holder, lock, held)
            held.wait()
            g2 = gevent.spawn(waiter, lock)
            gevent.joinall([g1, g2], raise_error=True)

    sem = gevent.lock.Semaphore(1)
    bsem = gevent.lock.BoundedSemaphore(1)
    rlock = gevent.lock.RLock()
    for lock in (sem, bsem, rlock):
        assert lockprof._lockprof.is_wrapper(lock)
        handshakes(lock, 4)
    with rlock:
        with rlock:                     # reentrant: no contention
            pass
    # a timed acquire that times out: a contention and a timeout
    sem.acquire()
    g = gevent.spawn(sem.acquire, timeout=0.02)
    assert g.get() is False
    sem.release()
    for r in lockprof.stats():
        if r["kind"].startswith("gevent.lock."):
            print(r["name"], r["kind"], r["acquisitions"], r["contentions"], r["timeouts"],
                  round(r["wait_ns"] / 1e6, 1))
    print("errors", lockprof.counters()["errors"])
"""


def test_contentions_are_exact_and_waits_are_the_holds():
    out = _run(HANDSHAKES)
    rows = {}
    for line in out.splitlines():
        if line.startswith("errors"):
            assert line == "errors 0"
            continue
        name, kind, acq, cont, timeouts, wait_ms = line.split()
        rows[kind] = (name, float(acq), int(cont), int(timeouts), float(wait_ms))
    assert set(rows) == {"gevent.lock.Semaphore", "gevent.lock.BoundedSemaphore",
                         "gevent.lock.RLock"}, out
    # (the Semaphore: one more acquire, then a timed one that times out)
    for kind, var, extra_acq, extra_cont in (("gevent.lock.Semaphore", "sem", 1, 1),
                                             ("gevent.lock.BoundedSemaphore", "bsem", 0, 0),
                                             ("gevent.lock.RLock", "rlock", 2, 0)):
        name, acq, cont, timeouts, wait_ms = rows[kind]
        # 3.11+ reads the variable the creating call stores in; before, the
        # lock is looked up where its first event ran (the holder's `lock`)
        assert re.fullmatch(rf"<string>:\d+:{var if sys.version_info >= (3, 11) else 'lock'}",
                            name), name
        assert cont == 4 + extra_cont, (kind, cont)
        assert acq == 8 + extra_acq, (kind, acq)
        assert timeouts == extra_cont, (kind, timeouts)
        # each of the 4 waits lasts what is left of a 50 ms hold (within 10%),
        # the timed-out one its 20 ms
        assert 4 * 45 <= wait_ms - 20 * extra_cont <= 4 * 55 + 10, (kind, wait_ms)


def test_semantics_kept():
    out = _run("""
        import lockprof
        lockprof.start(1.0)
        import gevent, gevent.lock
        sem = gevent.lock.Semaphore(2)
        assert isinstance(sem, gevent.lock.Semaphore) and lockprof._lockprof.is_wrapper(sem)
        assert sem.counter == 2 and not sem.locked()
        assert sem.acquire() is True and sem.acquire(blocking=False) is True
        assert sem.locked() and sem.acquire(blocking=False) is False
        assert sem.acquire(timeout=0.01) is False
        assert sem.release() == 1
        with sem:
            assert sem.counter == 0
        b = gevent.lock.BoundedSemaphore(1)
        try:
            b.release()
        except ValueError as e:
            print("ValueError", e)
        r = gevent.lock.RLock()
        with r:
            assert r._is_owned() and r.locked()
        try:
            r.release()
        except RuntimeError as e:
            print("RuntimeError", e)
        print(repr(sem)[:40])
        print("errors", lockprof.counters()["errors"])
    """)
    native = _run("""
        import gevent, gevent.lock
        b = gevent.lock.BoundedSemaphore(1)
        try:
            b.release()
        except ValueError as e:
            print("ValueError", e)
        r = gevent.lock.RLock()
        try:
            r.release()
        except RuntimeError as e:
            print("RuntimeError", e)
        print(repr(gevent.lock.Semaphore(0))[:40])
    """)
    def masked(text):
        return re.sub(r"0x[0-9a-f]+", "0x…", text).splitlines()
    lines = masked(out)
    assert lines[-1] == "errors 0"
    assert lines[:3] == masked(native)[:3], (out, native)


@pytest.mark.parametrize("suite", ["test__semaphore", "test__lock"])
def test_gevents_own_tests_pass_profiled(suite, tmp_path):
    """gevent's own tests of these primitives (shipped in its package), run
    plainly and under `lockprof run` at rate 1.0: the same tests, all OK."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LOCKPROF_ENABLED", None)
    plain = subprocess.run([sys.executable, "-m", f"gevent.tests.{suite}"], capture_output=True,
                           text=True, timeout=600, env=env, cwd=str(tmp_path))
    out = tmp_path / "g.pprof"
    profiled = subprocess.run([sys.executable, "-m", "lockprof", "run", "--sample-rate", "1.0",
                               "-q", "-o", str(out), "-m", f"gevent.tests.{suite}"],
                              capture_output=True, text=True, timeout=600, env=env,
                              cwd=str(tmp_path))

    def ran(r):
        m = re.search(r"Ran (\d+) tests? in [\d.]+s\s+OK", r.stderr)
        assert m, r.stderr[-3000:]
        return int(m.group(1))
    assert ran(profiled) == ran(plain) > 0
    if suite == "test__semaphore":
        from lockprof.export import pprof
        kinds = {s["kind"] for s in pprof.read(str(out)).samples()}
        assert {"gevent.lock.Semaphore", "gevent.lock.BoundedSemaphore"} <= kinds, kinds
