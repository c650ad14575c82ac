"""multiprocessing's process-shared locks (multiprocessing.synchronize's
Lock, RLock, Semaphore, BoundedSemaphore, Condition, as multiprocessing.Lock()
and a context's methods make them): waits counted in the process that
waited, for fork, spawn and forkserver children; a lock pickled to a child
is profiled there under the parent's name; semantics kept."""
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lockprof

ROOT = Path(__file__).resolve().parent.parent
HOLD = 0.2

CHILD_WAITS = """
import multiprocessing as mp, sys, time, json
import lockprof

def child(lock, ready, out):
    ready.set()
    with lock:              # waits for the parent's hold
        pass
    rows = [r for r in lockprof.stats() if r["kind"] == "multiprocessing.Lock"]
    out.put(json.dumps([lockprof.is_running(), lockprof._lockprof.is_wrapper(lock),
                        [(r["name"], r["contentions"], r["wait_ns"]) for r in rows]]))

def holder(lock, ready):
    with lock:
        ready.set()
        time.sleep(%(hold)s)

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    lock = ctx.Lock()
    ready, out = ctx.Event(), ctx.Queue()
    with lock:
        p = ctx.Process(target=child, args=(lock, ready, out))
        p.start()
        ready.wait(60)
        time.sleep(%(hold)s)
    got = out.get(timeout=60)
    p.join(60)
    print(got)
    print(p.exitcode)
    # and the parent's own wait for a child's hold
    ready = ctx.Event()
    p = ctx.Process(target=holder, args=(lock, ready))
    p.start()
    ready.wait(60)
    with lock:
        pass
    p.join(60)
    r = [r for r in lockprof.stats() if r["kind"] == "multiprocessing.Lock"]
    print(json.dumps([(x["name"], x["contentions"], x["wait_ns"]) for x in r]))
""" % {"hold": HOLD}


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_waits_count_in_the_process_that_waited(method, tmp_path):
    """A child waits once for the parent's hold, the parent once for a
    child's: each counts exactly one contention of about HOLD, under the
    lock's name in the parent.  Spawned and forkserver children profile
    with LOCKPROF_ENABLED (the autostart hook, here through
    sitecustomize); their lock is the one they unpickled."""
    import multiprocessing as mp
    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} unavailable")
    script = tmp_path / "prog.py"
    script.write_text(CHILD_WAITS)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text((ROOT / "lockprof-autostart.pth").read_text())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]),
               LOCKPROF_ENABLED="1", LOCKPROF_SAMPLE_RATE="1.0",
               LOCKPROF_OUTPUT=str(tmp_path / "p.{pid}.pprof"))
    r = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True,
                       timeout=180, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json
    child, code, parent = r.stdout.strip().splitlines()
    running, wrapped, rows = json.loads(child)
    assert code == "0"
    line = CHILD_WAITS.splitlines().index("    lock = ctx.Lock()") + 1
    name = f"{script}:{line}:lock"
    assert running and wrapped, child
    rows = [x for x in rows if x[0] == name]
    assert [(n, c) for n, c, _ in rows] == [(name, 1)], rows
    assert HOLD * 0.9 <= rows[0][2] / 1e9 <= HOLD * 1.5, rows
    # (the Queue's own lock, queues.py:_rlock, is profiled too)
    [(pname, pcont, pwait)] = [x for x in json.loads(parent) if x[0] == name]
    assert (pname, pcont) == (name, 1)
    assert HOLD * 0.9 <= pwait / 1e9 <= HOLD * 1.5


def test_types_semantics_and_pickling_kept():
    import multiprocessing as mp
    import multiprocessing.synchronize as ms
    lockprof.start(1.0)
    lock, rlock = mp.Lock(), mp.RLock()
    sem, bsem, cond = mp.Semaphore(2), mp.BoundedSemaphore(1), mp.Condition()
    for obj, cls in ((lock, ms.Lock), (rlock, ms.RLock), (sem, ms.Semaphore),
                     (bsem, ms.BoundedSemaphore), (cond, ms.Condition)):
        assert lockprof._lockprof.is_wrapper(obj) and isinstance(obj, cls)
        # shared with a process only by inheritance, as natively
        with pytest.raises(RuntimeError, match="should only be shared between processes "
                                               "through inheritance"):
            pickle.dumps(obj)
    assert lock.acquire(block=False) is True
    assert lock.acquire(block=False) is False
    assert lock.acquire(timeout=0.01) is False
    lock.release()
    with pytest.raises(ValueError):
        lock.release()
    with rlock:
        with rlock:
            assert repr(rlock).endswith(", 2)>")
    with pytest.raises(AssertionError):
        rlock.release()
    assert sem.get_value() == 2
    with sem:
        assert sem.get_value() == 1
    bsem.acquire()
    bsem.release()
    with pytest.raises(ValueError):
        bsem.release()
    with cond:
        assert cond.wait(0.05) is False
        assert cond.wait_for(lambda: True) is True
    r = lockprof.stats()
    waited = [x for x in r if x["kind"] == "multiprocessing.Condition"]
    assert len(waited) == 1 and waited[0]["cond_waits"] == 2, waited
    # a Condition's own lock and semaphores are multiprocessing's internals:
    # the Condition is the only row they make
    assert {x["kind"] for x in r} >= {"multiprocessing.Lock", "multiprocessing.RLock",
                                      "multiprocessing.Semaphore",
                                      "multiprocessing.BoundedSemaphore"}
    assert sum(x["kind"] == "multiprocessing.RLock" for x in r) == 1
    assert lockprof.counters()["errors"] == 0


def test_lazy_nothing_imported_and_patched_when_imported_later():
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.pop("LOCKPROF_ENABLED", None)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, lockprof
        lockprof.start(1.0)
        assert "multiprocessing.synchronize" not in sys.modules
        import multiprocessing
        lock = multiprocessing.Lock()
        with lock:
            pass
        print(lockprof._lockprof.is_wrapper(lock), [r["name"] for r in lockprof.stats()
                                                    if r["kind"].startswith("multiprocessing")])
        lockprof.stop()
        print(lockprof._lockprof.is_wrapper(multiprocessing.Lock()))
    """)], capture_output=True, text=True, timeout=120, env=e)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["True ['<string>:6:lock']", "False"], r.stdout


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition"])
def test_contentions_are_exact_and_waits_are_the_holds(kind):
    """Handshakes between two threads of one process: n contentions, each
    waiting what is left of a HOLD-long hold."""
    import multiprocessing as mp
    import threading
    import time
    lockprof.start(1.0)
    n, hold = 3, 0.05
    lock = getattr(mp, kind)()
    for _ in range(n):
        held = threading.Event()

        def holder():
            with lock:
                held.set()
                time.sleep(hold)
        t = threading.Thread(target=holder)
        t.start()
        held.wait()
        with lock:
            pass
        t.join()
    [r] = [x for x in lockprof.stats() if x["kind"] == f"multiprocessing.{kind}"]
    assert r["contentions"] == n and r["acquisitions"] == 2 * n, r
    assert hold * 0.9 <= r["wait_ns"] / n / 1e9 <= hold * 1.1 + 0.01, r
    assert r["name"].endswith(":lock"), r["name"]
