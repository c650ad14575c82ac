"""A profiled program behaves exactly as an unprofiled one.

Each scenario runs twice, once on the stdlib's objects and once on
lockprof's wrapped ones (at each sampling rate), and the traces -- return
values, exceptions with their messages, reprs with addresses normalised --
must be identical."""
import asyncio
import copy
import inspect
import pickle
import re
import sys
import threading
import weakref

import pytest

import lockprof
from lockprof import _lockprof

from .conftest import RATES

SYNC = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition"]
ASYNC = ["Lock", "Semaphore", "BoundedSemaphore", "Condition"]


def norm(s):
    s = re.sub(r"0x[0-9a-f]+", "0xADDR", s)
    return re.sub(r"owner=\d+", "owner=N", s)


def attempt(trace, fn, *args, **kw):
    try:
        r = fn(*args, **kw)
    except BaseException as e:  # noqa: B902 - the exception is the result
        trace.append(("raise", type(e).__name__, norm(str(e))))
        return None
    trace.append(("ok", norm(repr(r))))
    return r


def run_sync(name, scenario, rate):
    """(native trace, wrapped trace, the wrapped object)"""
    native_trace = []
    scenario(getattr(threading, name), native_trace)
    lockprof.start(rate)
    try:
        made = getattr(threading, name)
        wrapped_trace = []
        scenario(made, wrapped_trace)
    finally:
        lockprof.stop()
    return native_trace, wrapped_trace


def basic_sync(factory, t):
    l = factory()
    t.append(("repr", norm(repr(l))))
    attempt(t, l.acquire)
    t.append(("repr-held", norm(repr(l))))
    attempt(t, l.acquire, False)
    attempt(t, l.acquire, True, 0.01)
    attempt(t, l.acquire, timeout=0.01)
    attempt(t, l.acquire, blocking=False)
    attempt(t, l.acquire, False, 1)          # ValueError: timeout with non-blocking
    attempt(t, l.acquire, True, -5)          # ValueError: negative timeout
    attempt(t, l.acquire, "x", "y")          # bad timeout type
    attempt(t, l.acquire, 1, 2, 3)           # too many arguments
    attempt(t, l.release)
    attempt(t, l.release)
    attempt(t, l.release)
    attempt(t, l.release)
    with l:
        t.append(("in-with", norm(repr(l))))
    t.append(("after-with", norm(repr(l))))
    try:
        with l:
            raise KeyError("boom")
    except KeyError as e:
        t.append(("with-exc", str(e)))
    attempt(t, l.acquire)
    attempt(t, l.release)
    attempt(t, l.__enter__)
    attempt(t, l.__exit__, None, None, None)
    for meth in ("locked", "_is_owned", "_recursion_count", "_release_save", "_at_fork_reinit",
                 "wait", "notify", "notify_all", "_value", "_initial_value", "nonexistent"):
        t.append(("has", meth, hasattr(l, meth)))
    attempt(t, getattr, l, "nonexistent")
    if hasattr(l, "locked"):
        attempt(t, l.locked)
    if hasattr(l, "_is_owned"):
        attempt(t, l._is_owned)
    if hasattr(l, "_value"):
        attempt(t, lambda: l._value)
    t.append(("weakref", weakref.ref(l)() is l))
    # Pickling fails for every threading lock natively (they hold a lock); the
    # message can differ while a class is shadowed by its factory, since
    # pickle checks the class reference before the state (see README).
    t.append(("pickles", _pickles(l)))
    attempt(t, lambda: type(copy.copy(l)).__name__)
    attempt(t, setattr, l, "custom_attr", 1)
    attempt(t, getattr, l, "custom_attr")


def _pickles(obj):
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


def thread_cross(factory, t):
    """acquire in one thread, release in another; waits with timeouts"""
    l = factory()
    attempt(t, l.acquire)
    res = []
    th = threading.Thread(target=lambda: res.append(l.acquire(timeout=0.05)))
    th.start()
    th.join()
    t.append(("other-thread-timeout", res))
    th = threading.Thread(target=lambda: res.append(attempt(t, l.release)))
    th.start()
    th.join()
    t.append(("repr-end", norm(repr(l))))


def rlock_recursion(factory, t):
    l = factory()
    if not hasattr(l, "_release_save"):   # not reentrant: would deadlock
        t.append(("not reentrant",))
        return
    for _ in range(3):
        attempt(t, l.acquire)
    t.append(("repr", norm(repr(l))))
    if hasattr(l, "_recursion_count"):
        attempt(t, l._recursion_count)
    if hasattr(l, "_release_save"):
        state = attempt(t, l._release_save)
        t.append(("repr-saved", norm(repr(l))))
        if state is not None:
            attempt(t, l._acquire_restore, state)
    for _ in range(4):
        attempt(t, l.release)


def semaphore_counts(factory, t):
    if factory in (threading.Lock, threading.RLock, threading.Condition) or \
            getattr(factory, "__lockprof_original__", None) in (threading.Lock, threading.RLock):
        return
    try:
        s = factory(2)
    except TypeError as e:
        t.append(("ctor", str(e)))
        return
    attempt(t, factory, -1)
    for _ in range(3):
        attempt(t, s.acquire, False)
    attempt(t, s.release, 2)
    attempt(t, s.release)
    attempt(t, s.release, 0)
    t.append(("value", s._value))


def condition_usage(factory, t):
    c = factory()
    if not hasattr(c, "wait"):
        return
    attempt(t, c.wait, 0.01)               # not owned: RuntimeError
    attempt(t, c.notify)
    with c:
        attempt(t, c.wait, 0.01)
        attempt(t, c.wait_for, lambda: True, 0.01)
        attempt(t, c.wait_for, lambda: False, 0.01)
        attempt(t, c.notify)
        attempt(t, c.notify_all)
        attempt(t, c._is_owned)
    got = []

    def waiter():
        with c:
            got.append(c.wait(5))

    th = threading.Thread(target=waiter)
    th.start()
    while True:
        with c:
            if c._waiters:
                c.notify()
                break
    th.join()
    t.append(("notified", got))


def bad_arguments(factory, t):
    """every acquire/release spelling called with arguments it does not take:
    the same errors and messages (a C lock's release is METH_NOARGS in the
    wrapper too)"""
    l = factory()
    for name in ("release", "release_lock", "acquire", "acquire_lock", "__enter__", "__exit__"):
        m = getattr(l, name, None)
        if m is None:
            continue
        attempt(t, m, 1, 2, 3, 4, 5)
        attempt(t, m, bogus=1)
    attempt(t, l.acquire)
    attempt(t, l.release, 1)
    attempt(t, l.release)


SCENARIOS = [basic_sync, thread_cross, rlock_recursion, semaphore_counts, condition_usage,
             bad_arguments]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", SYNC)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_sync_same_as_native(name, scenario, rate):
    native, wrapped = run_sync(name, scenario, rate)
    assert wrapped == native


@pytest.mark.parametrize("name", SYNC)
def test_sync_objects_are_wrapped(name):
    lockprof.start()
    obj = getattr(threading, name)()
    lockprof.stop()
    assert _lockprof.is_wrapper(obj)
    orig = getattr(threading, name)
    if isinstance(orig, type):
        assert isinstance(obj, orig)
        assert obj.__class__ is orig or issubclass(obj.__class__, orig)
    assert type(obj).__name__ == type(_lockprof.unwrap(obj)).__name__


async def async_scenario(factory, t):
    l = factory()
    t.append(("repr", norm(repr(l))))
    attempt(t, l.locked)
    r = await l.acquire()
    t.append(("acquired", r, norm(repr(l))))
    attempt(t, l.release)
    attempt(t, l.release)
    async with l as v:
        t.append(("in", v, norm(repr(l))))
    t.append(("after", norm(repr(l))))
    # contention between tasks, with the waiter count in the repr
    await l.acquire()
    order = []

    async def other(i):
        async with l:
            order.append(i)

    tasks = [asyncio.ensure_future(other(i)) for i in range(3)]
    await asyncio.sleep(0)
    t.append(("waiting", norm(repr(l))))
    l.release()
    await asyncio.gather(*tasks)
    t.append(("order", order))
    # cancellation of a waiting acquire
    await l.acquire()
    task = asyncio.ensure_future(l.acquire())
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        t.append(("cancelled", True))
    t.append(("after-cancel", norm(repr(l))))
    l.release()
    # timeouts via wait_for
    await l.acquire()
    try:
        await asyncio.wait_for(l.acquire(), 0.01)
    except asyncio.TimeoutError:
        t.append(("timeout", True))
    l.release()
    t.append(("final", norm(repr(l)), l.locked()))
    if hasattr(l, "wait"):
        async with l:
            try:
                await asyncio.wait_for(l.wait(), 0.01)
            except asyncio.TimeoutError:
                t.append(("cond-timeout", l.locked()))
            l.notify_all()
        attempt(t, l.notify)
    t.append(("waiters-attr", hasattr(l, "_waiters")))
    attempt(t, pickle.dumps, l)
    t.append(("weakref", weakref.ref(l)() is l))
    await async_bad_arguments(l, t)


async def async_bad_arguments(l, t):
    """__aenter__/__aexit__ called as no `async with` calls them: the arity
    error is raised at the call, with the native message; a call that is
    accepted (keyword arguments) is awaited and does what the native does"""
    calls = {"__aenter__": [((1, 2, 3, 4, 5), {}), ((), {"bogus": 1}), ((None,), {})],
             "__aexit__": [((1, 2, 3, 4, 5), {}), ((), {"bogus": 1}), ((), {}), ((None, None), {})]}
    for name, spellings in calls.items():
        for a, k in spellings:
            r = attempt(t, getattr(l, name), *a, **k)
            if r is not None:
                await r
    await l.acquire()
    params = list(inspect.signature(type(_lockprof.unwrap(l)).__aexit__).parameters)[1:]
    r = attempt(t, l.__aexit__, **dict.fromkeys(params))
    if r is not None:
        t.append(("aexit-kw", await r))
    t.append(("after-aexit-kw", l.locked()))


def run_async(name, rate):
    native_trace = []
    asyncio.run(async_scenario(getattr(asyncio, name), native_trace))
    lockprof.start(rate)
    try:
        wrapped_trace = []
        made = []

        def factory(*a, **k):
            obj = getattr(asyncio, name)(*a, **k)
            made.append(obj)
            return obj

        asyncio.run(async_scenario(factory, wrapped_trace))
    finally:
        lockprof.stop()
    assert made and all(_lockprof.is_wrapper(o) for o in made)
    return native_trace, wrapped_trace


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", ASYNC)
def test_async_same_as_native(name, rate):
    native, wrapped = run_async(name, rate)
    assert wrapped == native


def test_isinstance_subclass_union_and_names():
    lockprof.start()
    try:
        s = threading.Semaphore()
        assert isinstance(s, threading.Semaphore)
        assert isinstance(threading.Semaphore(), threading.Semaphore)
        assert isinstance(threading.Semaphore, type)
        assert threading.Semaphore.__name__ == "Semaphore"
        assert issubclass(threading.BoundedSemaphore, threading.Semaphore) is True

        class Mine(threading.Semaphore):
            def acquire(self, *a, **k):
                return super().acquire(*a, **k)

        m = Mine(1)
        assert m.acquire() is True and isinstance(m, threading.Semaphore)
        m.release()

        class MyCond(asyncio.Condition):
            pass

        if sys.version_info >= (3, 10):   # 3.9 needs an event loop to make one
            assert isinstance(MyCond(), asyncio.Condition)
        assert issubclass(MyCond, asyncio.Condition)
        if sys.version_info >= (3, 10):
            u = threading.Semaphore | None
            assert isinstance(s, u) and isinstance(None, u)
            u2 = asyncio.Condition | None
            assert None.__class__ in u2.__args__
        with pytest.raises(TypeError) as ei:
            class Bad(threading.RLock):  # a function natively: not subclassable
                pass
        native_msg = None
        try:
            class Bad2(lockprof._patch._installed["threading.RLock"][2]):
                pass
        except TypeError as e:
            native_msg = str(e)
        assert str(ei.value) == native_msg
    finally:
        lockprof.stop()


def test_from_import_names_are_patched_and_restored():
    import types
    mod = types.ModuleType("lp_user_mod")
    exec("from threading import Lock, RLock\nfrom asyncio import Lock as ALock\n"
         "def make():\n    return Lock(), RLock()\n", mod.__dict__)
    sys.modules["lp_user_mod"] = mod
    try:
        orig_lock = mod.Lock
        lockprof.start()
        a, b = mod.make()
        assert _lockprof.is_wrapper(a) and _lockprof.is_wrapper(b)
        # a class written in Python is profiled in place: the name keeps it
        assert mod.ALock is sys.modules["asyncio"].Lock

        async def amake():
            return mod.ALock()
        assert _lockprof.is_wrapper(asyncio.run(amake()))
        lockprof.stop()
        assert not _lockprof.is_wrapper(asyncio.run(amake()))
        assert mod.Lock is orig_lock
        a2, _ = mod.make()
        assert not _lockprof.is_wrapper(a2)
    finally:
        del sys.modules["lp_user_mod"]


def test_stdlib_internal_locks_stay_native():
    lockprof.start(1.0)
    try:
        s = threading.Semaphore()
        e = threading.Event()
        b = threading.Barrier(1)
        c = threading.Condition()

        async def make():            # 3.9 needs a running loop
            return asyncio.Condition()

        ac = asyncio.run(make())
    finally:
        lockprof.stop()
    assert not _lockprof.is_wrapper(_lockprof.unwrap(s)._cond)
    assert not _lockprof.is_wrapper(e._cond)
    assert not _lockprof.is_wrapper(b._cond)
    assert not _lockprof.is_wrapper(_lockprof.unwrap(c)._lock)
    assert not _lockprof.is_wrapper(_lockprof.unwrap(ac)._lock)
    # one profiled semaphore is counted once
    lockprof.start(1.0)
    try:
        for _ in range(10):
            with s:
                pass
    finally:
        lockprof.stop()
    recs = lockprof.stats()
    assert [r["kind"] for r in recs] == ["threading.Semaphore"]
    assert recs[0]["acquisitions"] == 10


def test_condition_over_wrapped_lock_counts_once():
    lockprof.start(1.0)
    try:
        lock = threading.Lock()
        c = threading.Condition(lock)
        for _ in range(5):
            with c:
                c.notify()
        with lock:
            pass
        assert c._lock is lock
    finally:
        lockprof.stop()
    recs = lockprof.stats()
    assert [r["kind"] for r in recs] == ["threading.Lock"]
    assert recs[0]["acquisitions"] == 6


def test_event_barrier_queue_on_wrapped_primitives():
    import queue
    lockprof.start(1.0)
    try:
        q = queue.Queue()
        e = threading.Event()
        b = threading.Barrier(2)
        out = []

        def worker():
            b.wait()
            while True:
                item = q.get()
                if item is None:
                    break
                out.append(item * 2)
                q.task_done()
            e.set()

        th = threading.Thread(target=worker)
        th.start()
        b.wait()
        for i in range(100):
            q.put(i)
        q.join()
        q.put(None)
        assert e.wait(5)
        th.join()
    finally:
        lockprof.stop()
    assert out == [i * 2 for i in range(100)]
    kinds = {r["kind"] for r in lockprof.stats()}
    assert "threading.Lock" in kinds          # the queue's mutex


def test_wrappers_outlive_stop_as_pass_through():
    lockprof.start(1.0)
    l = threading.Lock()
    lockprof.stop()
    lockprof.reset()
    for _ in range(100):
        with l:
            pass
    assert lockprof.stats() == []
    assert lockprof.is_running() is False


def test_start_stop_idempotent_and_threadsafe():
    errors = []

    def flip():
        try:
            for _ in range(50):
                lockprof.start()
                threading.Lock().acquire()
                lockprof.stop()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ths = [threading.Thread(target=flip) for _ in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert errors == []
    lockprof.stop()
    lockprof.stop()
    assert not lockprof.is_running()
    assert threading.Lock is lockprof._patch._originals()["threading.Lock"][2]


def test_bad_settings():
    for bad in (-0.1, 1.5, "0.1", None, float("nan"), True):
        with pytest.raises(ValueError, match="sample_rate must be a number in \\[0, 1\\]"):
            lockprof.start(bad)
    assert not lockprof.is_running()


def test_monkeypatched_stdlib_method_is_honoured():
    """The wrapper caches a Python class's methods; patching the class after
    the wrapper exists must still take effect, as it does natively."""
    lockprof.start(1.0)
    try:
        s = threading.Semaphore(1)
        assert s.acquire() is True
        s.release()
        cls = type(_lockprof.unwrap(s))
        calls = []
        original = cls.acquire

        def patched(self, *a, **k):
            calls.append(a)
            return original(self, *a, **k)

        cls.acquire = patched
        try:
            assert s.acquire() is True
            s.release()
        finally:
            cls.acquire = original
        assert calls, "the patched method was not called"
        assert s.acquire() is True       # and the original again afterwards
        s.release()
        assert len(calls) == 1
    finally:
        lockprof.stop()


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_python_rlock_same_as_native(monkeypatch, scenario, rate):
    # With threading._CRLock None (gevent sets it so), threading.RLock() makes
    # threading's Python RLock, wrapped by the threading._RLock entry. Its
    # reentrant acquire returns 1, not True: still "acquired".
    monkeypatch.setattr(threading, "_CRLock", None)
    native, wrapped = run_sync("RLock", scenario, rate)
    assert wrapped == native
    lockprof.start(rate)
    try:
        r = threading.RLock()
    finally:
        lockprof.stop()
    assert _lockprof.is_wrapper(r) and type(_lockprof.unwrap(r)) is threading._PyRLock
    lockprof.reset()
    lockprof.start(1.0)
    try:
        r = threading.RLock()
        with r:
            with r:
                assert r._is_owned() and "count=2" in repr(r)
        assert not r._is_owned() and "count=0" in repr(r)
    finally:
        lockprof.stop()
    rows = [x for x in lockprof.stats() if x["kind"] == "threading._RLock"]
    assert [x["acquisitions"] for x in rows] == [2.0]
