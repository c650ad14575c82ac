"""anyio's locks (its asyncio backend): Lock, Semaphore, CapacityLimiter and
the default thread limiter behind to_thread.run_sync.  Exact figures from
handshakes, the names a user knows them by, anyio's semantics kept, lazy
patching, and anyio's own synchronization tests passing profiled."""
import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lockprof

from . import library_suites

anyio = pytest.importorskip("anyio")     # a test extra: installed in CI everywhere

ROOT = Path(__file__).resolve().parent.parent
HOLD = 0.05
# (the tests count every acquisition: rate 1.0 with the CPU budget off)


def _rows(kind):
    return [r for r in lockprof.stats() if r["kind"] == kind]


_only = library_suites.only


async def _handshakes(lock, n):
    """n times: a holder takes the lock and keeps it HOLD s; a waiter asks
    for it once the holder has it.  Exactly n contentions."""
    for _ in range(n):
        held = anyio.Event()

        async def holder():
            async with lock:
                held.set()
                await anyio.sleep(HOLD)

        async def waiter():
            async with lock:
                pass
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await held.wait()
            tg.start_soon(waiter)


@pytest.mark.parametrize("make, kind", [
    (lambda: anyio.Lock(), "anyio.Lock"),                         # made here: Lock
    (lambda: anyio.Semaphore(1), "anyio.Semaphore"),              # made here: Semaphore
    (lambda: anyio.CapacityLimiter(1), "anyio.CapacityLimiter"),  # made here: CapacityLimiter
])
def test_contentions_are_exact_and_waits_are_the_holds(make, kind):
    lockprof.start(1.0, max_overhead=0)
    n = 4

    async def main():
        shared = make()
        await _handshakes(shared, n)
        for _ in range(3):          # uncontended: a checkpoint, not a wait
            async with shared:
                pass
    anyio.run(main)
    r = _only(kind)
    assert r["contentions"] == n
    assert r["acquisitions"] == 2 * n + 3
    assert r["timeouts"] == 0
    # each wait lasts what is left of a HOLD-long hold: within 10% of it
    mean_wait = r["wait_ns"] / n / 1e9
    assert HOLD * 0.9 <= mean_wait <= HOLD * 1.1 + 0.01, mean_wait
    # made in the lambda's line; named by the variable its first recorded
    # event found it in (the holder's `lock`)
    made = _line_of(f"# made here: {kind.split('.')[1]}")
    assert r["name"] == f"{__file__}:{made}:lock", r["name"]



def _line_of(text):
    return library_suites.line_of(__file__, text)


def test_a_lock_is_named_at_the_programs_line():
    lockprof.start(1.0, max_overhead=0)

    async def main():
        account_lock = anyio.Lock()
        async with account_lock:
            pass
        cond = anyio.Condition()        # its own lock, made inside anyio, stays anyio's
        async with cond:
            pass
    anyio.run(main)
    names = {(r["kind"], r["name"]) for r in lockprof.stats() if r["kind"].startswith("anyio")}
    assert names == {
        ("anyio.Lock", f"{__file__}:{_line_of('account_lock = anyio.Lock()')}:account_lock"),
        ("anyio.Condition", f"{__file__}:{_line_of('cond = anyio.Condition()')}:cond")}, names


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_condition_waits_are_exact_on_either_backend(backend):
    if backend == "trio":
        pytest.importorskip("trio")
    lockprof.start(1.0, max_overhead=0)
    rounds = 3

    async def main():
        cond = anyio.Condition()
        assert lockprof._lockprof.is_wrapper(cond) and isinstance(cond, anyio.Condition)
        got = []

        async def consumer():
            async with cond:
                for _ in range(rounds):
                    await cond.wait()
                    got.append(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            for _ in range(rounds):
                await anyio.sleep(HOLD)
                async with cond:
                    cond.notify()
        assert len(got) == rounds
        assert cond.statistics().lock_statistics.locked is False
    anyio.run(main, backend=backend)
    r = _only("anyio.Condition")
    # every acquire is a checkpoint on either backend, and none waited
    assert r["acquisitions"] == rounds + 1 and r["contentions"] == 0, r
    assert r["cond_waits"] == rounds
    assert rounds * HOLD * 0.9 <= r["cond_wait_ns"] / 1e9 <= rounds * HOLD * 1.1 + 0.05, r


def test_uncontended_acquires_read_no_clock_and_count_no_wait():
    lockprof.start(1.0, max_overhead=0)

    async def main():
        lock, sem, lim = anyio.Lock(), anyio.Semaphore(3), anyio.CapacityLimiter(3)
        for _ in range(50):
            async with lock, sem, lim:
                await anyio.sleep(0)
    anyio.run(main)
    for kind in ("anyio.Lock", "anyio.Semaphore", "anyio.CapacityLimiter"):
        r = _only(kind)
        assert r["acquisitions"] == 50 and r["contentions"] == 0 and r["wait_ns"] == 0, r


def test_the_default_thread_limiter_is_named_and_its_wait_charged_to_the_caller():
    lockprof.start(1.0, max_overhead=0)
    calls = 3

    async def main():
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        started = []

        def work():
            started.append(1)
            time.sleep(HOLD)

        async def endpoint():
            await anyio.to_thread.run_sync(work)     # the endpoint's line
        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(endpoint)
        assert len(started) == calls
    anyio.run(main)
    r = _only("anyio.CapacityLimiter")
    assert r["name"] == "anyio default thread limiter"
    assert r["acquisitions"] == calls
    # the first call takes the token at once; the other two wait for it
    assert r["contentions"] == calls - 1
    line = _line_of("await anyio.to_thread.run_sync(work)     # the endpoint's line")
    waits = [s for s in lockprof.samples() if s["kind"] == "anyio.CapacityLimiter"
             and s["event"] == "contention"]
    assert waits
    work_line = _line_of("        def work():")
    for s in waits:
        assert any(f[0] == __file__ and f[2] == line for f in s["frames"]), s["frames"]
        # the function handed to the worker thread is shown innermost, at its def
        assert tuple(s["frames"][0][:3]) == (__file__, "work", work_line), s["frames"][:3]
    # in the file a user reads, too
    prof = lockprof.profile()
    assert "anyio default thread limiter" in {lk["name"] for lk in prof.locks}


def test_semantics_kept():
    lockprof.start(1.0, max_overhead=0)

    async def main():
        lock = anyio.Lock()
        assert lockprof._lockprof.is_wrapper(lock)
        assert isinstance(lock, anyio.Lock)
        assert not lock.locked()
        lock.acquire_nowait()
        assert lock.locked() and lock.statistics().locked
        raised = []

        async def other():
            try:
                lock.acquire_nowait()
            except anyio.WouldBlock:
                raised.append("WouldBlock")
            try:                    # release by a task that does not hold it
                lock.release()
            except RuntimeError as e:
                raised.append(str(e))
        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
        assert raised == ["WouldBlock", "The current task is not holding this lock"]
        lock.release()

        # a cancelled waiter leaves the lock consistent
        await lock.acquire()
        async with anyio.create_task_group() as tg:
            async def waiter():
                await lock.acquire()
            tg.start_soon(waiter)
            await anyio.sleep(0.01)
            assert lock.statistics().tasks_waiting == 1
            tg.cancel_scope.cancel()
        assert lock.statistics().tasks_waiting == 0
        lock.release()
        assert not lock.locked()
        async with lock:
            assert lock.locked()

        sem = anyio.Semaphore(2, max_value=2)
        async with sem as value:
            assert value is sem          # anyio's Semaphore.__aenter__ returns it
            assert sem.value == 1
        with pytest.raises(ValueError, match="semaphore released too many times"):
            sem.release()
        assert sem.max_value == 2 and sem.statistics().tasks_waiting == 0

        lim = anyio.CapacityLimiter(2)
        lim.total_tokens = 3             # set on the wrapped limiter
        assert lim.total_tokens == 3 and lim.available_tokens == 3
        with pytest.raises(TypeError, match="total_tokens must be an int or math.inf"):
            lim.total_tokens = 2.5
        borrower = object()
        await lim.acquire_on_behalf_of(borrower)
        assert lim.borrowed_tokens == 1 and lim.statistics().borrowers == (borrower,)
        with pytest.raises(RuntimeError, match="already holding"):
            await lim.acquire_on_behalf_of(borrower)
        lim.release_on_behalf_of(borrower)
        with pytest.raises(RuntimeError, match="isn't holding"):
            lim.release_on_behalf_of(borrower)
        assert lim.borrowed_tokens == 0
    anyio.run(main)
    assert lockprof.counters()["errors"] == 0


def _run(code, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    e.pop("LOCKPROF_ENABLED", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=e)


def test_lazy_nothing_imported_and_patched_when_imported_later():
    r = _run("""
        import sys, lockprof
        lockprof.start(1.0, max_overhead=0)     # every acquisition
        assert "anyio" not in sys.modules
        import anyio                        # after start(): patched when its backend loads
        async def main():
            lock = anyio.Lock()
            async with lock:
                pass
            return lockprof._lockprof.is_wrapper(lock)
        print(anyio.run(main), [r["kind"] for r in lockprof.stats() if r["kind"].startswith("anyio")])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "True ['anyio.Lock']", r.stdout


def test_stop_puts_the_classes_back():
    lockprof.start(1.0, max_overhead=0)

    async def made():
        return anyio.Lock(), anyio.CapacityLimiter(1)
    lock, lim = anyio.run(made)
    assert lockprof._lockprof.is_wrapper(lock) and lockprof._lockprof.is_wrapper(lim)
    lockprof.stop()
    lock, lim = anyio.run(made)
    assert not lockprof._lockprof.is_wrapper(lock) and not lockprof._lockprof.is_wrapper(lim)


def _anyio_tests_dir():
    """anyio's own tests, from its sdist (CI unpacks it and names it in
    LOCKPROF_ANYIO_TESTS; .ci/run)."""
    d = os.environ.get("LOCKPROF_ANYIO_TESTS")
    return Path(d) if d else None


@pytest.mark.skipif(_anyio_tests_dir() is None,
                    reason="LOCKPROF_ANYIO_TESTS does not name anyio's sdist tests (.ci/run does)")
def test_anyios_own_synchronization_tests_pass_profiled(tmp_path):
    tests = _anyio_tests_dir()
    # both backends: on trio, anyio's classes delegate to trio's, profiled
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:lockprof",
            "tests/test_synchronization.py", "-W", "ignore::DeprecationWarning"]
    kinds = library_suites.passes_profiled_as_plain(args, tests, tmp_path / "anyio.pprof")
    assert {"anyio.Lock", "anyio.Semaphore", "anyio.CapacityLimiter"} <= kinds, kinds
    if importlib.util.find_spec("trio") is not None:
        assert {"trio.Lock", "trio.Semaphore", "trio.CapacityLimiter"} <= kinds, kinds


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_server_on_loopback_shows_the_limiter_and_lock_waits(tmp_path):
    """examples/threadpool_app.py on uvicorn, profiled by `lockprof run`,
    under a bounded load from real HTTP clients: the report names the
    default thread limiter and the app's anyio.Lock, with their waits."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    import signal
    import socket
    examples = ROOT / "examples"
    port = _free_port()
    out = tmp_path / "app.pprof"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LOCKPROF_ENABLED", None)
    srv = subprocess.Popen([sys.executable, "-m", "lockprof", "run", "-q", "-o", str(out),
                            "-m", "uvicorn", "threadpool_app:app", "--host", "127.0.0.1",
                            "--port", str(port), "--log-level", "warning"],
                           cwd=examples, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if srv.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(srv.communicate()[1][-3000:])
                time.sleep(0.1)
        load = subprocess.run([sys.executable, "threadpool_app.py", "load",
                               f"http://127.0.0.1:{port}", "120"], cwd=examples, env=env,
                              capture_output=True, text=True, timeout=300)
        assert load.returncode == 0, load.stderr
    finally:
        srv.send_signal(signal.SIGINT)
        _, err = srv.communicate(timeout=60)
    assert srv.returncode == 0, err[-3000:]
    from lockprof.export import pprof
    prof = pprof.read(str(out))
    locks = {lk["name"]: lk for lk in prof.locks}
    limiter = locks["anyio default thread limiter"]
    # 16 clients, 4 tokens, 60 sync requests of 20 ms each: most wait
    assert limiter["kind"] == "anyio.CapacityLimiter" and limiter["contentions"] > 0, limiter
    app_line = _line_in(examples / "threadpool_app.py", "ledger_lock = anyio.Lock()")
    ledger = locks[f"{examples / 'threadpool_app.py'}:{app_line}:ledger_lock"]
    assert ledger["kind"] == "anyio.Lock" and ledger["contentions"] > 0, ledger
    # the limiter's waits are charged to the stack that asked for a worker
    # thread: Starlette's run_in_threadpool, called by its router
    waits = [s for s in prof.samples() if s["lock_name"] == "anyio default thread limiter"
             and s["event"] == "contention"]
    assert waits and all(any(f[1] == "run_in_threadpool" for f in s["frames"]) for s in waits)
    # with the sync endpoint handed to the worker thread, at its def line,
    # innermost (the library's frame that waited comes next)
    def_line = _line_in(examples / "threadpool_app.py", "def report(request):")
    for s in waits:
        assert s["frames"][0][:3] == (str(examples / "threadpool_app.py"), "report", def_line) \
            or list(s["frames"][0][:3]) == [str(examples / "threadpool_app.py"), "report",
                                            def_line], s["frames"][:3]
    # and lockprof report, as a user runs it, shows both first
    rep = subprocess.run([sys.executable, "-m", "lockprof", "report", str(out)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert rep.returncode == 0, rep.stderr
    top = rep.stdout.splitlines()[3:5]
    assert any(x.startswith("anyio default thread limiter ") for x in top), rep.stdout
    assert any(x.split()[0].endswith(f"threadpool_app.py:{app_line}:ledger_lock")
               for x in top), rep.stdout


def _line_in(path, text):
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if text in line:
            return i
    raise AssertionError(text)
