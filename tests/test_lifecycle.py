"""Fork, multiprocessing, interpreter shutdown, memory over time, and
patching by others (gevent, re-imports)."""
import gc
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import warnings

import pytest

import lockprof

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lockprof.__file__)))


def _python(code, start=True, timeout=120):
    prefix = "import lockprof\nlockprof.start(1.0)\n" if start else ""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", prefix + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, env=env)


FORK_WITH_HOLDERS = """
import os, threading, time
held, free, cond = threading.Lock(), threading.Lock(), threading.Condition()
ready, go = threading.Event(), threading.Event()
def holder():
    with held:
        ready.set()
        go.wait(5)
t = threading.Thread(target=holder, daemon=True)
t.start()
ready.wait(5)
with free:
    pass
pid = os.fork()
if pid == 0:
    out = [held.locked(), free.locked()]
    held._at_fork_reinit()                      # as the stdlib does for its own
    out += [held.acquire(timeout=1), free.acquire(timeout=1)]
    with cond:
        out.append(cond.wait(0.01))
    try:
        import lockprof
        out.append(sum(r["acquisitions"] for r in lockprof.stats()) <= 3)   # fresh profile
    except ImportError:
        out.append(True)
    print(out, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
go.set()
t.join()
print("parent", os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_other_threads_hold_locks():
    native = _python(FORK_WITH_HOLDERS, start=False)
    profiled = _python(FORK_WITH_HOLDERS)
    assert native.returncode == profiled.returncode == 0, profiled.stderr
    assert profiled.stdout == native.stdout
    assert "[True, False, True, True, False, True]" in native.stdout


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_start_methods(method, tmp_path):
    import multiprocessing as mp
    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} unavailable")
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing as mp, threading
        import lockprof

        def work(q):
            l = threading.Lock()
            with l:
                q.put(sum(range(10)))

        if __name__ == "__main__":
            lockprof.start(1.0)
            ctx = mp.get_context({method!r})
            q = ctx.Queue()
            lock = threading.Lock()
            with lock:
                ps = [ctx.Process(target=work, args=(q,)) for _ in range(2)]
                for p in ps:
                    p.start()
            got = sorted(q.get(timeout=60) for _ in ps)
            for p in ps:
                p.join(60)
            print(got, [p.exitcode for p in ps])
    """))
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[45, 45] [0, 0]"


SHUTDOWN = """
import atexit, threading, time
shared = threading.Lock()
rl = threading.RLock()
def spin():
    while True:
        with shared:
            pass
        with rl:
            pass
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
class Finalized:
    def __del__(self):
        with shared:
            pass
keep = Finalized()
cycle = Finalized(); cycle.me = cycle
def at_exit():
    with rl:
        pass
    {stop}
atexit.register(at_exit)
time.sleep(0.05)
print("bye")
"""


@pytest.mark.parametrize("stop", ["", "lockprof.stop()", "lockprof.stop(); lockprof.reset()"])
def test_interpreter_shutdown_with_daemon_threads_and_finalizers(stop):
    # A free-threaded CPython clears the module's globals before `keep` is
    # finalised, so its __del__ finds `shared` None there, profiled or not:
    # what the plain run prints is what the profiled one may print
    plain = _python(SHUTDOWN.format(stop=""), start=False)
    assert plain.returncode == 0 and plain.stdout == "bye\n", plain.stderr
    native_ignored = "Exception ignored" in plain.stderr
    for _ in range(3):
        r = _python(SHUTDOWN.format(stop=stop))
        assert r.returncode == 0 and r.stdout == "bye\n", r.stderr
        assert "Fatal" not in r.stderr
        assert ("Exception ignored" in r.stderr) == native_ignored, r.stderr
        if native_ignored:
            assert "in __del__" in r.stderr and "lockprof" not in r.stderr, r.stderr


def test_memory_flat_under_a_long_sampled_load():
    """Wrappers free what they own, and with reset() between windows the
    profile's memory does not grow: batches 3..6 allocate no more than
    batch 2 did (stacks are interned once; records of dead locks freed)."""
    def batch():
        locks = [threading.Lock() for _ in range(200)] + [threading.RLock() for _ in range(50)]
        for _ in range(10):
            for lk in locks:
                with lk:
                    pass
        c = threading.Condition()
        with c:
            c.wait(0)
        del locks, c
        lockprof.samples()
        lockprof.reset()

    lockprof.start(0.5)
    batch()
    gc.collect()
    tracemalloc.start()
    try:
        batch()
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        n_objects = len(gc.get_objects())
        for _ in range(4):
            batch()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        lockprof.stop()
    assert after - base < 64 * 1024, after - base
    assert len(gc.get_objects()) - n_objects < 200


def test_replaced_factories_are_told(monkeypatch):
    lockprof.start(1.0)
    original = threading.Lock.__lockprof_original__

    def someone_elses_lock(*a):
        return original(*a)
    monkeypatch.setattr(threading, "Lock", someone_elses_lock)
    lk = threading.Lock()
    assert not lockprof._lockprof.is_wrapper(lk)
    lockprof._warned["replaced"] = False
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        lockprof.stop()
    msgs = [str(x.message) for x in w if "replaced" in str(x.message)]
    assert msgs and "threading.Lock replaced after lockprof.start()" in msgs[0]


def test_foreign_lock_class_is_never_wrapped():
    # a factory returning an object of another class (gevent's lock after
    # monkey-patching) gets it back untouched: our methods would not fit it
    class Other:
        pass
    f = lockprof._lockprof.make_factory("threading.Lock", Other)
    lockprof.start(1.0)
    try:
        obj = f()
    finally:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            lockprof.stop()
    assert type(obj) is Other
    with pytest.raises(TypeError, match="needs a"):
        lockprof._lockprof.wrap("threading.Lock", Other())


# greenlets on a Lock, a (Python) RLock taken twice and a Semaphore; prints the
# interleaving and the results to stderr, first line
GEVENT_WORKLOAD = """
import gevent, sys, threading
lk, rl, sem = threading.Lock(), threading.RLock(), threading.Semaphore(2)
order = []
def g(i):
    for n in range(3):
        with lk:
            with rl:
                with rl:
                    order.append((i, n))
                    gevent.sleep(0)
        with sem:
            gevent.sleep(0)
    return lk.acquire(timeout=0.01), lk.release(), rl._is_owned(), lk.locked()
results = [x.value for x in gevent.joinall([gevent.spawn(g, i) for i in range(4)])]
print(order, results, file=sys.stderr)
"""

GEVENT = """
{first}
import sys
import gevent.monkey
{early}
import lockprof, threading
lockprof.start(1.0)
{late}
{workload}
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    lockprof.stop()
acq = {{v: int(sum(r["acquisitions"] for r in lockprof.stats() if r["var"] == v))
       for v in ("lk", "rl", "sem")}}
kinds = sorted({{r["kind"] for r in lockprof.stats() if r["var"] in ("lk", "rl")}})
tasks = sorted(set(s["task_name"] for s in lockprof.samples() if s["event"] == "acquire"
                   and s["lock_name"].endswith(":lk")), key=str)
print(hash(repr((order, results))), [str(x.message) for x in w], kinds, tasks, file=sys.stderr)
print(lockprof._lockprof.is_wrapper(lk), lockprof._lockprof.is_wrapper(rl), acq["lk"], acq["rl"],
      acq["sem"], len(w))
"""

BASELINE = "import gevent.monkey\ngevent.monkey.patch_all()\n" + GEVENT_WORKLOAD


@pytest.mark.parametrize("order", [
    # patched before lockprof is imported: lockprof finds gevent's class
    "patch, import, start",
    # lockprof imported first: its threading.Lock factory returns gevent's
    # lock (and threading's Python RLock), which the gevent.thread.LockType
    # and threading._RLock entries wrap
    "import, patch, start",
    # patched after start: gevent replaced the factories; its plugin hook
    # (lockprof._gevent) puts lockprof's back around gevent's
    "import, start, patch",
])
def test_gevent_monkey_patching(order):
    pytest.importorskip("gevent")
    code = GEVENT.format(
        first="import lockprof" if order.startswith("import") else "",
        early="gevent.monkey.patch_all()" if order in ("patch, import, start",
                                                       "import, patch, start") else "",
        late="gevent.monkey.patch_all()" if order == "import, start, patch" else "",
        workload=GEVENT_WORKLOAD)
    r = _python(code, start=False)
    assert r.returncode == 0, r.stderr
    base = _python(BASELINE, start=False)
    assert base.returncode == 0, base.stderr
    # the program behaves as it does unprofiled under gevent: same interleaving
    # of greenlets, same results
    assert r.stderr.splitlines()[0] == base.stderr.strip(), (r.stderr, base.stderr)
    # every lock wrapped and every acquisition counted (Lock: 3 rounds and one
    # timed acquire per greenlet; RLock: 2 per round);
    # nothing told, since nothing was missed
    assert r.stdout.split() == ["True", "True", "16", "24", "12", "0"], (r.stdout, r.stderr)
    # the 4 auto-named greenlets (Greenlet-N) carry one label: their function's name
    last = r.stderr.strip().splitlines()[-1]
    tasks = eval(last[last.rindex("["):])
    assert tasks == ["g"], r.stderr


def test_reimporting_threading_keeps_profiling():
    r = _python("""
        import importlib, threading, warnings
        importlib.reload(threading)          # threading.Lock is the stdlib's again...
        lk, rl = threading.Lock(), threading.RLock()
        sem = threading.Semaphore()          # ...and Semaphore a new class
        with lk, rl, sem:
            pass
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            lockprof.stop()
        acq = {r["var"]: int(r["acquisitions"]) for r in lockprof.stats()
               if r["var"] in ("lk", "rl")}
        print(lockprof._lockprof.is_wrapper(lk), lockprof._lockprof.is_wrapper(rl),
              acq.get("lk"), acq.get("rl"), lockprof._lockprof.is_wrapper(sem),
              sum("importlib.reload" in str(x.message) for x in w),
              threading.__loader__ is threading.__spec__.loader,
              type(threading.__loader__).__module__)
    """)
    assert r.returncode == 0, r.stderr
    # the factories are put back: Lock and RLock (C classes) stay profiled; the
    # re-created Semaphore class is left alone, and that is told
    assert r.stdout.split() == ["True", "True", "1", "1", "False", "1", "True",
                                "_frozen_importlib_external"], r.stdout


def test_asyncio_is_not_imported_by_lockprof_and_profiled_when_imported_later():
    r = _python("""
        import sys
        before = "asyncio" in sys.modules
        import asyncio                       # after start()
        async def main():
            lk, sem = asyncio.Lock(), asyncio.Semaphore(2)
            async def t():
                async with lk:
                    await asyncio.sleep(0)
                async with sem:
                    pass
            await asyncio.gather(*(t() for _ in range(3)))
            return lk, sem
        lk, sem = asyncio.run(main())
        import importlib
        importlib.reload(asyncio)            # asyncio.Lock & co. are the stdlib's again...
        lk2, sem2 = asyncio.run(main())      # ...and get lockprof's factories back
        lockprof.stop()
        acq = {}
        for row in lockprof.stats():
            acq[row["var"]] = acq.get(row["var"], 0) + int(row["acquisitions"])
        print(before, lockprof._lockprof.is_wrapper(lk), lockprof._lockprof.is_wrapper(lk2),
              acq.get("lk"), acq.get("sem"), asyncio.__loader__ is asyncio.__spec__.loader)
    """)
    assert r.returncode == 0, r.stderr
    # 3 tasks in each of the two runs, on two locks of each name
    assert r.stdout.split() == ["False", "True", "True", "6", "6", "True"], r.stdout


def test_find_spec_of_a_watched_module_looks_as_usual():
    r = _python("""
        import importlib.machinery, importlib.util
        spec = importlib.util.find_spec("asyncio")     # not imported yet: the watch wraps it
        print(isinstance(spec.loader, importlib.machinery.SourceFileLoader),
              spec.loader.is_package("asyncio"), spec.name)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "asyncio"]


def test_import_watch_is_there_only_while_running():
    import sys as _sys
    from lockprof import _patch
    assert _patch._watch not in _sys.meta_path
    lockprof.start(0.01)
    try:
        assert _sys.meta_path[0] is _patch._watch
        # it finds nothing by itself: other modules import as usual
        assert _patch._watch.find_spec("json") is None
    finally:
        lockprof.stop()
    assert _patch._watch not in _sys.meta_path
