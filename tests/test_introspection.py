"""What a program or library may ask of the patched names, natively and
profiled (issue 12 §2; grows with each gap closed)."""
import copy
import pickle
import subprocess
import sys
import textwrap
import threading

import pytest

import lockprof

NAMES = ["threading.Lock", "threading.RLock", "threading.Semaphore",
         "threading.BoundedSemaphore", "threading.Condition"]


def _resolve(dotted):
    mod, _, attr = dotted.rpartition(".")
    return getattr(sys.modules[mod], attr)


@pytest.fixture
def profiling():
    lockprof.start(1.0)
    yield
    lockprof.stop()
    lockprof.reset()


@pytest.mark.parametrize("name", NAMES)
def test_patched_names_pickle_by_reference(profiling, name):
    obj = _resolve(name)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(obj, proto)
        assert pickle.loads(data) is obj          # here: the factory itself
        assert b"lockprof" not in data             # the stream names no lockprof
    # in an unprofiled interpreter, the same bytes give the stdlib's object
    code = (f"import pickle, sys, threading; obj = pickle.loads(sys.stdin.buffer.read()); "
            f"print(obj is {name})")
    r = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(obj),
                       capture_output=True, timeout=120)
    assert r.stdout.strip() == b"True", r.stderr


@pytest.mark.parametrize("name", NAMES)
def test_patched_names_copy_as_themselves(profiling, name):
    obj = _resolve(name)
    assert copy.copy(obj) is obj and copy.deepcopy(obj) is obj


def test_process_pool_with_spawn_and_forkserver(profiling):
    import concurrent.futures
    import multiprocessing
    for method in ("spawn", "forkserver"):
        ctx = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
            assert list(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]
    # and the locks made meanwhile are still profiled
    assert lockprof._lockprof.is_wrapper(threading.Lock())


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_the_originals(name):
    import inspect

    def sig():
        try:
            return str(inspect.signature(_resolve(name)))
        except ValueError as e:         # natively too, for some C functions
            return f"ValueError: {e}"

    native = sig()
    lockprof.start(1.0)
    try:
        profiled = sig()
    finally:
        lockprof.stop()
    assert profiled == native
    if name in ("threading.Semaphore", "threading.BoundedSemaphore"):
        assert native == "(value=1)"


# ---------------------------------------------------------------------------
# The differential probe: every question tests/introspect_probe.py asks, of
# the nine names and their objects, natively and profiled, on this CPython.
# A difference must be one of these, each a consequence of a design choice
# the README's "known differences" states; any other fails the test, and so
# does a listed one that no longer shows (the list and README must follow).
# ---------------------------------------------------------------------------
ALL = ("threading.Lock", "threading.RLock", "threading.Semaphore",
       "threading.BoundedSemaphore", "threading.Condition", "asyncio.Lock",
       "asyncio.Semaphore", "asyncio.BoundedSemaphore", "asyncio.Condition")
try:                                    # a test extra: in CI everywhere
    import anyio  # noqa: F401
except ImportError:
    ANYIO = ()
else:
    ANYIO = ("anyio.Lock", "anyio.Semaphore", "anyio.CapacityLimiter", "anyio.Condition")
try:                                    # a test extra where it builds (not free-threaded)
    import gevent.lock  # noqa: F401
except ImportError:
    GEVENT = ()
else:
    GEVENT = ("gevent.lock.Semaphore", "gevent.lock.BoundedSemaphore", "gevent.lock.RLock")
try:                                    # a test extra: in CI everywhere
    import trio  # noqa: F401
except ImportError:
    TRIO = ()
else:
    TRIO = ("trio.Lock", "trio.StrictFIFOLock", "trio.Semaphore", "trio.Condition",
            "trio.CapacityLimiter")
MULTIPROCESSING = ("multiprocessing.Lock", "multiprocessing.RLock", "multiprocessing.Semaphore",
                   "multiprocessing.BoundedSemaphore", "multiprocessing.Condition")
ALL += MULTIPROCESSING + ANYIO + GEVENT + TRIO
ASYNC = tuple(n for n in ALL if n.startswith(("asyncio.", "anyio.", "trio.")))
CLASSES = tuple(n for n in ALL if n != "threading.RLock")   # natively classes
CONDITIONS = ("threading.Condition", "asyncio.Condition")
KNOWN = [
    ("an instance's type is its wrapper type (same name, module and repr; "
     "obj.__class__ and isinstance answer as natively)",
     CLASSES, ("type(obj) is N", "issubclass(type(obj), N)")),
    ("the recorded methods are C methods of the wrapper type",
     ALL, tuple(f"{q}(obj.{m})" for q in ("repr",) for m in ("acquire", "release", "wait"))
     + tuple(f"obj.{m}.__qualname__" for m in ("acquire", "release"))),
    ("a Condition's acquire and release are the wrapper's, not its lock's bound methods",
     CONDITIONS, ("obj.acquire.__self__ is obj", "obj.release.__self__ is obj",
                  "inspect.signature(obj.acquire)", "inspect.signature(obj.release)")),
    ("multiprocessing's acquire and release, natively its semaphore's bound methods set "
     "per instance (a Condition's: its lock's), are the wrapper's",
     MULTIPROCESSING, ("obj.acquire.__self__ is obj", "obj.release.__self__ is obj")),
    ("methods passed through unrecorded are the wrapped object's bound methods",
     ALL, ("obj.locked.__self__ is obj", "obj.notify.__self__ is obj",
           "obj.statistics.__self__ is obj", "obj.acquire_nowait.__self__ is obj",
           "obj.wait.__self__ is obj")),
    ("asyncio's acquire() returns lockprof's awaitable (asyncio.iscoroutine and "
     "inspect.isawaitable still say True)",
     ASYNC, ("type(obj.acquire())",)),
    ("a recorded method of a class with annotations shows no return annotation in "
     "inspect.signature (a C method's text signature cannot carry one)",
     ANYIO + TRIO, ("inspect.signature(obj.acquire)", "inspect.signature(obj.release)",
                    "inspect.signature(obj.wait)")),
    ("threading.Lock and threading.RLock are factory objects, not the builtin "
     "function, class or Python function (subclassing fails with another TypeError); "
     "so are gevent's Semaphore classes (C classes: a class statement subclasses them, "
     "type() with three arguments and types.new_class fail)",
     ("threading.Lock", "threading.RLock") + tuple(n for n in GEVENT if "Semaphore" in n),
     ("type", "type() with three arguments", "types.new_class")),
]
if sys.version_info < (3, 10):
    KNOWN.append(("3.9's multiprocessing semaphore methods have no text signature; the "
                  "wrapper's recorded methods have one", MULTIPROCESSING,
                  ("inspect.signature(obj.acquire)", "inspect.signature(obj.release)")))


def _probe(mode):
    import json
    import os
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("LOCKPROF_ENABLED", None)
    r = subprocess.run([sys.executable, str(root / "tests" / "introspect_probe.py"), mode],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(root))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def differences():
    native, profiled = _probe("native"), _probe("profiled")
    kinds = profiled.pop("<profiled kinds>")["kinds"]
    assert "<profiled kinds>" not in native
    # the profiled run did profile every one of them
    for name in ALL:
        assert repr(name) in kinds, (name, kinds)
    assert native.keys() == profiled.keys()
    diffs = {}
    for name in native:
        assert native[name].keys() == profiled[name].keys(), name
        for q, answer in native[name].items():
            if profiled[name][q] != answer:
                diffs[(name, q)] = (answer, profiled[name][q])
    return diffs, native


def _known(name, q):
    return [i for i, (_, names, queries) in enumerate(KNOWN) if name in names and q in queries]


def test_profiled_answers_equal_native_ones(differences):
    differences, _ = differences
    unexplained = {k: v for k, v in differences.items() if not _known(*k)}
    assert not unexplained, "\n".join(
        f"{name}: {q}\n  native:   {a}\n  profiled: {b}"
        for (name, q), (a, b) in sorted(unexplained.items()))


def test_every_known_difference_still_shows(differences):
    differences, _ = differences
    seen = {i for k in differences for i in _known(*k)}
    stale = [KNOWN[i][0] for i in range(len(KNOWN)) if i not in seen]
    assert not stale, f"no longer different (update KNOWN and the README): {stale}"


def test_the_probe_asks_enough(differences):
    # the comparison covers the questions the issue names, for every name
    _, native = differences
    for name in ALL:
        asked = set(native[name])
        for q in ("pickle by reference", "copy", "inspect.signature", "__name__", "__qualname__",
                  "__module__", "__doc__", "type() with three arguments", "types.new_class",
                  "class statement", "obj + 1", "await obj", "repr(obj)", "vars(obj)",
                  "weakref", "dir(obj)", "iter(obj)"):
            assert q in asked, (name, q)


# ---------------------------------------------------------------------------
# The attribute model of the wrappers of Python classes (runtime/lp_attrs.c):
# generic attribute lookup (the interpreter's method-call fast path), and the
# class's other attributes forwarded, as natively looked up.
# ---------------------------------------------------------------------------
def test_wrappers_keep_the_generic_attribute_lookup(profiling):
    import asyncio

    async def alock():                  # 3.9 binds it to the running loop
        return asyncio.Lock()
    for obj in (threading.Semaphore(), threading.Condition(), asyncio.run(alock())):
        assert lockprof._lockprof.is_wrapper(obj)
        t = type(obj)
        assert t.__getattribute__ is object.__getattribute__
        assert "__getattr__" not in vars(t)


def test_instance_and_class_attributes_forwarded(profiling):
    from unittest import mock
    s, c = threading.Semaphore(3), threading.Condition()
    assert s._value == 3 and c._waiters is lockprof._lockprof.unwrap(c)._waiters
    s.label = "db"                          # set through the wrapper: on the stdlib object
    assert s.label == "db" and lockprof._lockprof.unwrap(s).label == "db"
    del s.label
    with pytest.raises(AttributeError) as ei:
        s.label
    assert str(ei.value) == "'Semaphore' object has no attribute 'label'"
    calls = []
    with c:
        c.notify()                          # the class's function, bound to the stdlib object
        with mock.patch.object(threading.Condition, "notify", lambda self, n=1: calls.append(n)):
            c.notify(2)                     # the class patched after the wrapper was made
        c.notify()
        c.notify = lambda n=1: calls.append(("instance", n))
        c.notify(3)                         # an instance attribute shadows the class's
    assert calls == [2, ("instance", 3)]
    assert c.notify.__name__ == "<lambda>"


def test_recorded_method_patched_on_the_class_then_restored(profiling):
    """the wrapper calls a Python class's function directly while the class
    is unchanged; a patch of the class (and lockprof's own __new__ going in
    at start() on 3.13+) is seen, and so is the original again afterwards"""
    from unittest import mock
    s = threading.Semaphore(2)
    calls = []
    orig = threading.Semaphore.release

    def patched(self, n=1):
        calls.append(n)
        return orig(self, n)
    assert s.acquire() is True and s.acquire() is True
    s.release()
    with mock.patch.object(threading.Semaphore, "release", patched):
        s.release()
        assert calls == [1]
        with s:
            pass
        assert calls == [1, 1]
    with s:
        pass
    assert s.acquire() is True
    s.release()
    assert calls == [1, 1]
    assert lockprof._lockprof.unwrap(s)._value == 2


def test_recorded_methods_after_the_class_runs_out_of_version_tags():
    """CPython 3.12+ gives a class at most 1,000 version tags: past them the
    wrapper calls by name for good, and behaves the same"""
    code = textwrap.dedent("""
        import threading, lockprof
        lockprof.start(1.0, max_overhead=0)   # every acquisition, exactly
        s = threading.Semaphore(2)
        for i in range(1200):            # each change, then a lookup: a new tag
            threading.Semaphore.x = i
            threading.Semaphore.acquire
            assert s.acquire() is True
            s.release()
        with s:
            assert lockprof._lockprof.unwrap(s)._value == 1
        lockprof.stop()
        [rec] = [r for r in lockprof.stats() if r["kind"] == "threading.Semaphore"]
        print(int(rec["acquisitions"]), lockprof._lockprof.unwrap(s)._value)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1201", "2"]


def test_forwarded_method_is_bound_to_the_stdlib_object(profiling):
    c = threading.Condition()
    m = c.notify_all
    assert m.__func__ is threading.Condition.notify_all
    assert m.__self__ is lockprof._lockprof.unwrap(c)


def test_forwarder_refuses_another_object(profiling):
    fwd = vars(type(threading.Condition()))["notify"]
    with pytest.raises(TypeError, match="doesn't apply to a 'int' object"):
        fwd.__get__(1, int)
    assert fwd.__get__(None, type(threading.Condition())) is threading.Condition.notify


_BOUND_LOCK_PROGRAM = textwrap.dedent("""
    import asyncio, sys, threading
    from unittest import mock
    if sys.argv[1] == "profiled":
        import lockprof
        lockprof.start(1.0, max_overhead=0)   # every acquisition, exactly
    log = []

    class PyLock:
        # a Python lock class a threading.Condition binds in __init__
        def __init__(self):
            self._l = threading.Lock()
        def acquire(self, blocking=True, timeout=-1):
            log.append("acquire")
            return self._l.acquire(blocking, timeout)
        def release(self):
            log.append("release")
            self._l.release()
        def locked(self):                  # (3.14's Condition binds it too)
            return self._l.locked()

    def spy(name, orig):
        def f(self, *a):
            log.append("patched " + name)
            return orig(self, *a)
        return f

    async def main():
        before = asyncio.Condition()
        tc = threading.Condition(PyLock())
        with mock.patch.object(asyncio.Lock, "acquire", spy("acquire", asyncio.Lock.acquire)), \\
                mock.patch.object(asyncio.Lock, "release", spy("release", asyncio.Lock.release)), \\
                mock.patch.object(PyLock, "acquire", spy("acquire", PyLock.acquire)):
            during = asyncio.Condition()
            tc2 = threading.Condition(PyLock())
            for c in (before, during):
                async with c:
                    log.append(c.locked())
                await c.acquire()
                c.release()
            for c in (tc, tc2):
                # (not `with`: it calls the lock's acquire and release where
                # natively it calls its __enter__ and __exit__; README)
                log.append(c.acquire())
                c.release()
                log.append(c.acquire(False))
                c.release()
        async with during:
            pass
        try:
            before.release()
        except RuntimeError as e:
            log.append(str(e))
        try:
            await before.acquire(1)
        except TypeError as e:
            log.append(str(e))
    asyncio.run(main())
    if sys.argv[1] == "profiled":
        lockprof.stop()
        kinds = {}
        for r in lockprof.stats():
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + int(r["acquisitions"])
        log.append((kinds.get("asyncio.Condition"), kinds.get("threading.Condition")))
    print(log)
""")


def test_conditions_call_their_locks_bound_methods_as_bound():
    """A Condition's acquire/release are its lock's methods, bound in
    __init__; lockprof calls the functions those bound methods hold directly.
    As natively, a patch of the lock's class after the Condition was made is
    not seen, one made before is, and the errors are the lock's own."""
    runs = {}
    for mode in ("plain", "profiled"):
        out = subprocess.run([sys.executable, "-c", _BOUND_LOCK_PROGRAM, mode],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        runs[mode] = out.stdout.strip()
    plain, profiled = runs["plain"], runs["profiled"]
    assert plain.count("patched acquire") == 5 and "patched release" in plain
    # profiled: the same log, then the acquisitions recorded
    assert profiled.startswith(plain[:-1] + ", ("), (plain, profiled)
    assert profiled.endswith(", (5, 4)]"), profiled
