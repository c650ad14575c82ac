"""What a program or library may ask of the patched names, natively and
profiled (issue 12 §2; grows with each gap closed)."""
import copy
import pickle
import subprocess
import sys
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
