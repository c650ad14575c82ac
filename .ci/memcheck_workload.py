"""A short workload for valgrind memcheck: every wrapped type, contention,
Condition waits, asyncio (imported after start: its types are looked up
then), threading's Python RLock, stacks, names, export, reset, stop."""
import os
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lockprof  # noqa: E402

lockprof.start(1.0, max_locks=50, max_samples=500)
import asyncio  # noqa: E402  (after start: the import watch installs its factories)
kinds = [threading.Lock, threading.RLock, threading.Semaphore, threading.BoundedSemaphore,
         threading.Condition]
for round_ in range(3):
    locks = [k() for k in kinds for _ in range(20)]
    for lk in locks:
        with lk:
            pass
    saved, threading._CRLock = threading._CRLock, None    # as gevent leaves it
    py_rlocks = [threading.RLock() for _ in range(5)]
    threading._CRLock = saved
    assert all(lockprof._lockprof.is_wrapper(r) for r in py_rlocks)
    for rl in py_rlocks:
        with rl:
            with rl:
                rl._is_owned()
    gate = threading.Lock()
    cond = threading.Condition()
    box = []

    def worker():
        for _ in range(50):
            with gate:
                box.append(1)
        with cond:
            cond.notify_all()
    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    with cond:
        cond.wait(0.05)
    for t in ts:
        t.join()

    async def aio():
        al, sem, ac = asyncio.Lock(), asyncio.Semaphore(2), asyncio.Condition()
        assert lockprof._lockprof.is_wrapper(al) and lockprof._lockprof.is_wrapper(ac)

        async def task(i):
            async with al:
                await asyncio.sleep(0)
            async with sem:
                pass
            async with ac:
                ac.notify_all()
        await asyncio.gather(*(task(i) for i in range(10)))
    asyncio.run(aio())
    with tempfile.TemporaryDirectory() as d:
        for ext in ("pprof", "folded", "speedscope.json", "html", "txt"):
            lockprof.write(os.path.join(d, "p." + ext))
        # the C encoder on a model read back from a file (array columns)
        from lockprof.export import pprof
        pprof.write(pprof.read(os.path.join(d, "p.pprof")), os.path.join(d, "q.pprof"))
        lockprof.profile(reset=True)
    lockprof.samples()
    lockprof.stats()
    del locks
    for i in range(300):            # short-lived locks: their records are folded per site
        short = threading.Lock()
        with short:
            pass
    lockprof.stats()
    lockprof.reset()
lockprof.stop()
print("memcheck workload done", lockprof.counters())
