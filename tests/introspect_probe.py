"""Asks the lock names and the objects they make what programs and libraries
ask of them, and prints the answers as JSON: run once natively and once with
lockprof started (`python introspect_probe.py native|profiled`), the two must
agree but for the differences test_introspection.KNOWN lists.

Every answer is a string: the value's repr with addresses masked, or
"<ExceptionType>: <message>"."""
import asyncio
import copy
import inspect
import json
import pickle
import re
import sys
import threading  # noqa: F401  (the names are looked up in sys.modules)
import types
import weakref

NAMES = ["threading.Lock", "threading.RLock", "threading.Semaphore",
         "threading.BoundedSemaphore", "threading.Condition",
         "asyncio.Lock", "asyncio.Semaphore", "asyncio.BoundedSemaphore", "asyncio.Condition"]
# multiprocessing's, through its default context's methods (which make
# multiprocessing.synchronize's classes)
import multiprocessing  # noqa: E402,F401
NAMES += ["multiprocessing.Lock", "multiprocessing.RLock", "multiprocessing.Semaphore",
          "multiprocessing.BoundedSemaphore", "multiprocessing.Condition"]
# third-party lock types, where installed: imported before lockprof starts,
# their backend module after (anyio imports its asyncio backend on first use)
try:
    import anyio
except ImportError:
    anyio = None
else:
    NAMES += ["anyio.Lock", "anyio.Semaphore", "anyio.CapacityLimiter", "anyio.Condition"]
try:
    import gevent.lock  # noqa: F401
except ImportError:
    pass
else:
    NAMES += ["gevent.lock.Semaphore", "gevent.lock.BoundedSemaphore", "gevent.lock.RLock"]
try:
    import trio
except ImportError:
    trio = None
else:
    # probed inside trio.run (their methods need a trio task)
    NAMES += ["trio.Lock", "trio.StrictFIFOLock", "trio.Semaphore", "trio.Condition",
              "trio.CapacityLimiter"]
# what the name is called with to make an object
ARGS = {"anyio.Semaphore": (2,), "anyio.CapacityLimiter": (2,), "trio.Semaphore": (2,),
        "trio.CapacityLimiter": (2,)}
ASYNC_MODULES = ("asyncio", "anyio", "trio")

_ADDR = re.compile(r"0x[0-9a-fA-F]+")


def _mask(text: str) -> str:
    return _ADDR.sub("0x…", text)


def _answer(fn):
    try:
        value = fn()
    except BaseException as e:          # the answer is what was raised
        return _mask(f"{type(e).__name__}: {e}")
    if isinstance(value, str):
        return _mask(value)
    return _mask(repr(value))


def _names(classes):
    return [f"{c.__module__}.{c.__qualname__}" for c in classes]


def _name_queries(N, args=()):
    q = {}
    q["repr"] = lambda: repr(N)
    q["type"] = lambda: repr(type(N))
    for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
        q[attr] = lambda attr=attr: getattr(N, attr)
    q["callable"] = lambda: callable(N)
    q["pickle by reference"] = lambda: [pickle.loads(pickle.dumps(N, p)) is N
                                        for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    q["copy"] = lambda: (copy.copy(N) is N, copy.deepcopy(N) is N)
    q["inspect.signature"] = lambda: str(inspect.signature(N))
    q["inspect.isclass"] = lambda: inspect.isclass(N)
    q["type() with three arguments"] = lambda: _names(type("X", (N,), {}).__mro__)
    q["types.new_class"] = lambda: _names(types.new_class("X", (N,)).__mro__)

    def class_statement():
        class X(N):
            pass
        return _names(X.__mro__)
    q["class statement"] = class_statement

    def subclass_instance():
        class X(N):
            pass
        x = X(*args)
        return (type(x).__name__, isinstance(x, N), x.__class__ is X)
    q["subclass instance"] = subclass_instance
    if sys.version_info >= (3, 10):
        q["N | None"] = lambda: repr(N | None)
    q["weakref to the name"] = lambda: weakref.ref(N)() is N
    q["hash"] = lambda: hash(N) == hash(N)
    return q


def _object_queries(N, obj, is_async):
    q = {}
    q["isinstance(obj, N)"] = lambda: isinstance(obj, N)
    q["type(obj) is N"] = lambda: type(obj) is N
    q["issubclass(type(obj), N)"] = lambda: issubclass(type(obj), N)
    q["obj.__class__"] = lambda: repr(obj.__class__)
    for attr in ("__name__", "__qualname__", "__module__"):
        q[f"type(obj).{attr}"] = lambda attr=attr: getattr(type(obj), attr)
    q["repr(obj)"] = lambda: repr(obj)
    q["str(obj)"] = lambda: str(obj)
    q["dir(obj)"] = lambda: dir(obj)
    q["vars(obj)"] = lambda: sorted(vars(obj))
    q["weakref"] = lambda: weakref.ref(obj)() is obj
    q["hash, ==, bool"] = lambda: (hash(obj) == hash(obj), obj == obj, obj != obj, bool(obj))

    def pickled():
        out = []
        for p in range(pickle.HIGHEST_PROTOCOL + 1):
            try:
                back = pickle.loads(pickle.dumps(obj, p))
                out.append(f"{type(back).__name__}")
            except Exception as e:
                out.append(f"{type(e).__name__}: {e}")
        return out
    # (3.9's asyncio locks hold their loop, whose copy is a half-made loop)
    if not (is_async and sys.version_info < (3, 10)):
        q["pickle"] = pickled
        q["copy.copy"] = lambda: type(copy.copy(obj)).__qualname__
        q["copy.deepcopy"] = lambda: type(copy.deepcopy(obj)).__qualname__
    q["obj + 1"] = lambda: obj + 1
    q["obj < obj"] = lambda: obj < obj
    q["-obj"] = lambda: -obj
    q["len(obj)"] = lambda: len(obj)
    q["iter(obj)"] = lambda: iter(obj)
    q["obj()"] = lambda: obj()
    q["obj[0]"] = lambda: obj[0]
    q["obj.missing"] = lambda: obj.missing
    q["del obj.missing"] = lambda: delattr(obj, "missing")

    def set_attribute():
        obj.extra = 1
        try:
            return obj.extra
        finally:
            del obj.extra
    q["obj.extra = 1"] = set_attribute
    for attr in ("value", "max_value", "total_tokens", "borrowed_tokens", "available_tokens"):
        if attr in dir(type(obj)):
            q[f"obj.{attr}"] = lambda attr=attr: getattr(obj, attr)

    def set_total_tokens():
        obj.total_tokens = 3
        try:
            return (obj.total_tokens, obj.available_tokens)
        finally:
            obj.total_tokens = 2
    if "total_tokens" in dir(type(obj)):
        q["obj.total_tokens = 3"] = set_total_tokens
    for meth in ("acquire", "release", "locked", "notify", "wait", "statistics",
                 "acquire_nowait"):
        if not hasattr(obj, meth):
            continue
        m = getattr(obj, meth)
        q[f"obj.{meth}.__name__"] = lambda m=m: m.__name__
        q[f"obj.{meth}.__qualname__"] = lambda m=m: m.__qualname__
        q[f"obj.{meth}.__self__ is obj"] = lambda m=m: m.__self__ is obj
        q[f"repr(obj.{meth})"] = lambda m=m: repr(m)
        q[f"inspect.signature(obj.{meth})"] = lambda m=m: str(inspect.signature(m))
    if not is_async:
        q["with obj: (return value)"] = lambda: _with(obj)
    return q


def _with(obj):
    with obj as value:
        return value


async def _async_queries(obj, is_async):
    q = {}

    async def await_obj():
        return await obj
    q["await obj"] = await_obj

    async def async_with():
        async with obj as value:
            return value
    q["async with obj: (return value)"] = async_with

    async def for_():
        async for _ in obj:
            pass
    q["async for in obj"] = for_
    if is_async:
        def sync_with():
            with obj:
                pass
        q["with obj"] = sync_with
        acq = obj.acquire()
        q["type(obj.acquire())"] = lambda: type(acq).__name__
        q["inspect.isawaitable(obj.acquire())"] = lambda: inspect.isawaitable(acq)
        q["asyncio.iscoroutine(obj.acquire())"] = lambda: asyncio.iscoroutine(acq)
        await acq
        obj.release()
    out = {}
    for key, fn in q.items():
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
            out[key] = _mask(repr(value))
        except BaseException as e:
            out[key] = _mask(f"{type(e).__name__}: {e}")
    return out


async def _probe_all(names):
    result = {}
    for dotted in names:
        modname, _, attr = dotted.rpartition(".")
        N = getattr(sys.modules[modname], attr)
        is_async = modname in ASYNC_MODULES
        args = ARGS.get(dotted, ())
        answers = {k: _answer(fn) for k, fn in _name_queries(N, args).items()}
        obj = N(*args)
        answers.update({k: _answer(fn) for k, fn in _object_queries(N, obj, is_async).items()})
        answers.update(await _async_queries(N(*args), is_async))
        result[dotted] = answers
    return result


def main() -> None:
    mode = sys.argv[1]
    if mode == "profiled":
        import lockprof
        lockprof.start(1.0)
    elif mode != "native":
        raise SystemExit(f"usage: {sys.argv[0]} native|profiled")
    result = asyncio.run(_probe_all([n for n in NAMES if not n.startswith("trio.")]))
    if trio is not None:
        result.update(trio.run(_probe_all, [n for n in NAMES if n.startswith("trio.")]))
    if mode == "profiled":
        import lockprof
        stats = lockprof.stats()
        kinds = sorted({s["kind"] for s in stats})
        result["<profiled kinds>"] = {"kinds": repr(kinds)}
        lockprof.stop()
    json.dump(result, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
