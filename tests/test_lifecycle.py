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
    for _ in range(3):
        r = _python(SHUTDOWN.format(stop=stop))
        assert r.returncode == 0 and r.stdout == "bye\n", r.stderr
        assert "Fatal" not in r.stderr and "Exception ignored" not in r.stderr


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


GEVENT = """
{first}
import sys
import gevent.monkey
{early}
import lockprof, threading
lockprof.start(1.0)
{late}
import gevent
lk = threading.Lock()
def g(i):
    for _ in range(3):
        with lk:
            gevent.sleep(0)
gevent.joinall([gevent.spawn(g, i) for i in range(4)])
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    lockprof.stop()
acq = sum(r["acquisitions"] for r in lockprof.stats() if r["var"] == "lk")
tasks = sorted(set(s["task_name"] for s in lockprof.samples() if s["event"] == "acquire"
                   and s["lock_name"].endswith(":lk")), key=str)
print(lockprof._lockprof.is_wrapper(lk), int(acq), len(w), tasks, file=sys.stderr)
print(lockprof._lockprof.is_wrapper(lk), int(acq), len(w))
"""


@pytest.mark.parametrize("order, expect", [
    # patched before lockprof is imported: lockprof wraps gevent's own lock
    # class, and greenlets' waits are profiled
    ("patch, import, start", "True 12 0"),
    # lockprof imported first: gevent's class is not the one it was built
    # for; those locks stay unprofiled, and that is told once
    ("import, patch, start", "False 0 1"),
    # patched after start: the factories were replaced; told once
    ("import, start, patch", "False 0 1"),
])
def test_gevent_monkey_patching(order, expect):
    pytest.importorskip("gevent")
    code = GEVENT.format(
        first="import lockprof" if order.startswith("import") else "",
        early="gevent.monkey.patch_all()" if order in ("patch, import, start",
                                                       "import, patch, start") else "",
        late="gevent.monkey.patch_all()" if order == "import, start, patch" else "")
    r = _python(code, start=False)
    assert r.returncode == 0, r.stderr
    wrapped, acquisitions, warned = r.stdout.split()
    want = expect.split()
    assert [wrapped, acquisitions] == want[:2], (r.stdout, r.stderr)
    assert (int(warned) >= 1) == (want[2] == "1")     # told, or silent when all is well
    if wrapped == "True":
        # greenlets are the tasks: each acquisition labelled with its greenlet
        names = eval(r.stderr.strip().splitlines()[-1].split(" ", 3)[3])
        assert len(names) == 4 and all(n and n.startswith("Greenlet-") for n in names), names


def test_reimporting_threading_is_told_not_silent():
    r = _python("""
        import importlib, threading, warnings
        importlib.reload(threading)          # threading.Lock is the stdlib's again
        lk = threading.Lock()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            lockprof.stop()
        print(lockprof._lockprof.is_wrapper(lk), any("replaced" in str(x.message) for x in w))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]
