"""A failure inside profiling never reaches the program: with every fallible
step of the runtime failing (allocations, wrapping, name lookup), programs
behave exactly as unprofiled, the failures are counted and told once."""
import asyncio
import threading
import time
import warnings

import pytest

import lockprof
from lockprof import _lockprof


def _workload():
    """Everything a program does with locks; returns what it observed."""
    seen = []
    lock, rlock = threading.Lock(), threading.RLock()
    sem, bsem = threading.Semaphore(2), threading.BoundedSemaphore(1)
    cond = threading.Condition()
    for lk in (lock, rlock, sem, bsem, cond):
        with lk:
            seen.append(("with", type(lk).__name__))
        seen.append(("acquire", lk.acquire(), lk.release()))
    seen.append(("try-held", lock.acquire(), lock.acquire(False), lock.acquire(timeout=0.01)))
    lock.release()
    with rlock:
        with rlock:
            seen.append(("rlock", rlock._is_owned()))
    try:
        bsem.release()
    except ValueError as e:
        seen.append(("bsem", str(e)))

    # contention: a waiter blocks behind a holder
    gate = threading.Lock()
    gate.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(gate.acquire(timeout=5)))
    t.start()
    time.sleep(0.02)
    gate.release()
    t.join()
    gate.release()
    seen.append(("contended", got))

    # Condition wait / notify across threads
    box = []

    def consumer():
        with cond:
            cond.wait_for(lambda: box, timeout=5)
            box.append("seen")
    c = threading.Thread(target=consumer)
    c.start()
    time.sleep(0.01)
    with cond:
        box.append(1)
        cond.notify_all()
    c.join()
    seen.append(("cond", box))

    async def aio():
        al, asem, acond = asyncio.Lock(), asyncio.Semaphore(1), asyncio.Condition()
        async with al:
            pass
        async with asem:
            pass
        async with acond:
            acond.notify_all()
        return al.locked(), asem.locked()
    seen.append(("asyncio", asyncio.run(aio())))
    for lk in (lock, gate):
        seen.append(("final", lk.locked()))
    return seen


def test_every_failure_absorbed_and_reported_once():
    expected = _workload()                      # unprofiled
    lockprof._warned["errors"] = 0
    lockprof.start(1.0, seed=1)
    old = _lockprof._inject_faults(10**9)
    try:
        got = _workload()
    finally:
        left = _lockprof._inject_faults(old)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        lockprof.stop()
        lockprof.stop()
    assert got == expected
    assert left < 10**9                         # the fault points were reached
    c = lockprof.counters()
    assert c["errors"] > 0 and c["dropped_stacks"] >= 0
    told = [x for x in w if issubclass(x.category, RuntimeWarning) and "lockprof" in str(x.message)]
    assert len(told) == 1 and "absorbed" in str(told[0].message)


def test_wrapping_failure_gives_the_native_object():
    lockprof.start(1.0)
    old = _lockprof._inject_faults(1)
    try:
        lk = threading.Lock()
    finally:
        _lockprof._inject_faults(old)
    assert not _lockprof.is_wrapper(lk) and type(lk) is type(threading.Lock.__lockprof_original__())
    assert lockprof.counters()["errors"] == 1
    lk2 = threading.Lock()
    assert _lockprof.is_wrapper(lk2)


def test_profiling_recovers_after_faults(tmp_path):
    lockprof.start(1.0)
    old = _lockprof._inject_faults(10**9)
    try:
        broken = threading.Lock()      # native: wrapping failed
        with broken:
            pass
    finally:
        _lockprof._inject_faults(old)
    lockprof.reset()                   # counts cleared with the records
    healthy = threading.Lock()
    for _ in range(3):
        with healthy:
            pass
    lockprof.stop()
    recs = [r for r in lockprof.stats() if r["var"] == "healthy"]
    assert len(recs) == 1 and recs[0]["acquisitions"] == 3
    lockprof.write(str(tmp_path / "p.pprof"))
    from lockprof.export import pprof
    rows = pprof.read(str(tmp_path / "p.pprof")).samples()
    assert sum(r["count"] for r in rows if r["event"] == "acquire") == 3


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_a_few_faults_anywhere(n):
    # the first n fallible steps fail, wherever they fall in the workload
    expected = _workload()
    lockprof.start(1.0, seed=n)
    old = _lockprof._inject_faults(n)
    try:
        got = _workload()
    finally:
        _lockprof._inject_faults(old)
        lockprof.stop()
    assert got == expected
