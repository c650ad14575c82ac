"""trio's locks: Lock, StrictFIFOLock, Semaphore, Condition, CapacityLimiter
and the default thread limiter behind trio.to_thread.run_sync; anyio on its
trio backend, which delegates to them.  Exact figures from handshakes, the
names a user knows them by, trio's semantics kept (checkpoints,
cancellation, fairness, borrowers), lazy patching, and trio's own sync and
thread tests passing profiled."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lockprof

from . import library_suites

trio = pytest.importorskip("trio")       # a test extra: installed in CI everywhere
import trio.testing  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOLD = 0.05
# (the tests count every acquisition: rate 1.0 with the CPU budget off, which
# on a slow build would lower the rate within trio.run)


_only = library_suites.only



def _line_of(text):
    return library_suites.line_of(__file__, text)


async def _handshakes(lock, n):
    """n times: a holder takes the lock and keeps it HOLD s; a waiter asks
    for it once the holder has it.  Exactly n contentions."""
    for _ in range(n):
        held = trio.Event()

        async def holder():
            async with lock:
                held.set()
                await trio.sleep(HOLD)

        async def waiter():
            async with lock:
                pass
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await held.wait()
            nursery.start_soon(waiter)


@pytest.mark.parametrize("make, kind", [
    (lambda: trio.Lock(), "trio.Lock"),                         # made here: Lock
    (lambda: trio.StrictFIFOLock(), "trio.StrictFIFOLock"),     # made here: StrictFIFOLock
    (lambda: trio.Semaphore(1), "trio.Semaphore"),              # made here: Semaphore
    (lambda: trio.Condition(), "trio.Condition"),               # made here: Condition
    (lambda: trio.CapacityLimiter(1), "trio.CapacityLimiter"),  # made here: CapacityLimiter
])
def test_contentions_are_exact_and_waits_are_the_holds(make, kind):
    lockprof.start(1.0, max_overhead=0)
    n = 4

    async def main():
        shared = make()
        await _handshakes(shared, n)
        for _ in range(3):      # uncontended: trio's checkpoint, not a wait
            async with shared:
                pass
    trio.run(main)
    r = _only(kind)
    assert r["contentions"] == n
    assert r["acquisitions"] == 2 * n + 3
    assert r["timeouts"] == 0
    mean_wait = r["wait_ns"] / n / 1e9
    assert HOLD * 0.9 <= mean_wait <= HOLD * 1.1 + 0.01, mean_wait
    made = _line_of(f"# made here: {kind.split('.')[1]}")
    assert r["name"] == f"{__file__}:{made}:lock", r["name"]


def test_uncontended_acquires_stay_checkpoints_and_count_no_wait():
    lockprof.start(1.0, max_overhead=0)

    async def main():
        lock, sem, lim = trio.Lock(), trio.Semaphore(3), trio.CapacityLimiter(3)
        for _ in range(50):
            # trio's own check: each acquire is still a schedule point
            with trio.testing.assert_checkpoints():
                await lock.acquire()
            with trio.testing.assert_checkpoints():
                async with sem, lim:
                    pass
            lock.release()
    trio.run(main)
    for kind in ("trio.Lock", "trio.Semaphore", "trio.CapacityLimiter"):
        r = _only(kind)
        assert r["acquisitions"] == 50 and r["contentions"] == 0 and r["wait_ns"] == 0, r


def test_condition_waits_and_a_profiled_lock_given_to_a_condition():
    lockprof.start(1.0, max_overhead=0)
    rounds = 3

    async def main():
        lock = trio.Lock()
        cond = trio.Condition(lock)      # trio checks type(lock) is Lock: it gets trio's
        assert lockprof._lockprof.is_wrapper(lock) and lockprof._lockprof.is_wrapper(cond)
        assert isinstance(cond, trio.Condition)
        got = []

        async def consumer():
            async with cond:
                for _ in range(rounds):
                    await cond.wait()
                    got.append(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            for _ in range(rounds):
                await trio.sleep(HOLD)
                async with cond:
                    cond.notify()
        assert len(got) == rounds
        # the Condition and the lock are one lock to trio
        async with lock:
            assert cond.locked()
    trio.run(main)
    r = _only("trio.Condition")
    assert r["cond_waits"] == rounds
    assert rounds * HOLD * 0.9 <= r["cond_wait_ns"] / 1e9 <= rounds * HOLD * 1.1 + 0.05, r


def test_the_default_thread_limiter_is_named_and_its_wait_charged_to_the_caller():
    lockprof.start(1.0, max_overhead=0)
    calls = 3

    async def main():
        trio.to_thread.current_default_thread_limiter().total_tokens = 1
        done = []

        def work():
            time.sleep(HOLD)
            done.append(1)

        async def endpoint():
            await trio.to_thread.run_sync(work)     # the endpoint's line
        async with trio.open_nursery() as nursery:
            for _ in range(calls):
                nursery.start_soon(endpoint)
        assert len(done) == calls
    trio.run(main)
    r = _only("trio.CapacityLimiter")
    assert r["name"] == "trio default thread limiter"
    assert r["acquisitions"] == calls
    assert r["contentions"] == calls - 1
    line = _line_of("await trio.to_thread.run_sync(work)     # the endpoint's line")
    waits = [s for s in lockprof.samples() if s["kind"] == "trio.CapacityLimiter"
             and s["event"] == "contention"]
    assert waits
    work_line = _line_of("        def work():")
    for s in waits:
        assert any(f[0] == __file__ and f[2] == line for f in s["frames"]), s["frames"]
        # the function handed to the worker thread is shown innermost, at its def
        assert tuple(s["frames"][0][:3]) == (__file__, "work", work_line), s["frames"][:3]


def test_semantics_kept():
    lockprof.start(1.0, max_overhead=0)

    async def main():
        lock = trio.Lock()
        assert lockprof._lockprof.is_wrapper(lock)
        assert isinstance(lock, trio.Lock)
        lock.acquire_nowait()
        assert lock.locked() and lock.statistics().locked
        with pytest.raises(RuntimeError, match="attempt to re-acquire an already held Lock"):
            lock.acquire_nowait()
        raised = []

        async def other():
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                raised.append("WouldBlock")
            try:
                lock.release()
            except RuntimeError as e:
                raised.append(str(e))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
        assert raised == ["WouldBlock", "can't release a Lock you don't own"]

        # waiters are served first come, first served
        order = []

        async def waiter(i):
            async with lock:
                order.append(i)
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(waiter, i)
                await trio.testing.wait_all_tasks_blocked()
            lock.release()
        assert order == [0, 1, 2, 3]

        # a cancelled waiter leaves the lock consistent
        await lock.acquire()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lock.acquire)
            await trio.testing.wait_all_tasks_blocked()
            assert lock.statistics().tasks_waiting == 1
            nursery.cancel_scope.cancel()
        assert lock.statistics().tasks_waiting == 0 and lock.statistics().owner is not None
        lock.release()
        assert not lock.locked()

        sem = trio.Semaphore(1, max_value=1)
        async with sem:
            assert sem.value == 0
        with pytest.raises(ValueError, match="semaphore released too many times"):
            sem.release()
        assert sem.max_value == 1 and sem.statistics().tasks_waiting == 0

        lim = trio.CapacityLimiter(2)
        lim.total_tokens = 3             # set on the wrapped limiter
        assert lim.total_tokens == 3 and lim.available_tokens == 3
        with pytest.raises(TypeError):
            lim.total_tokens = 2.5
        borrower = object()
        await lim.acquire_on_behalf_of(borrower)
        assert lim.borrowed_tokens == 1 and lim.statistics().borrowers == [borrower]
        with pytest.raises(RuntimeError, match="already holding"):
            await lim.acquire_on_behalf_of(borrower)
        lim.release_on_behalf_of(borrower)
        with pytest.raises(RuntimeError, match="isn't holding"):
            lim.release_on_behalf_of(borrower)

        with pytest.raises(TypeError, match="subclass"):
            class Mine(trio.Lock):     # trio's classes are final, profiled or not
                pass
    trio.run(main)
    assert lockprof.counters()["errors"] == 0


def test_anyio_on_trio_is_profiled_through_trios_locks():
    anyio = pytest.importorskip("anyio")
    lockprof.start(1.0, max_overhead=0)
    n = 3

    async def main():
        account_lock = anyio.Lock()
        for _ in range(n):
            held = anyio.Event()

            async def holder():
                async with account_lock:
                    held.set()
                    await anyio.sleep(HOLD)

            async def waiter():
                async with account_lock:
                    pass
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await held.wait()
                tg.start_soon(waiter)
        await anyio.to_thread.run_sync(time.sleep, 0)
    anyio.run(main, backend="trio")
    r = _only("trio.Lock")
    assert r["contentions"] == n and r["acquisitions"] == 2 * n
    # 3.11+ reads the variable the creating call stores in; before, the lock
    # is looked up where its first event ran: inside anyio's Lock
    var = "account_lock" if sys.version_info >= (3, 11) else "_Lock__original"
    assert r["name"] == f"{__file__}:{_line_of('account_lock = anyio.Lock()')}:{var}"
    assert _only("trio.CapacityLimiter")["name"] == "trio default thread limiter"


def test_lazy_nothing_imported_and_patched_when_imported_later():
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.pop("LOCKPROF_ENABLED", None)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, lockprof
        lockprof.start(1.0, max_overhead=0)
        assert "trio" not in sys.modules
        import trio
        async def main():
            lock = trio.Lock()
            async with lock:
                pass
            return lockprof._lockprof.is_wrapper(lock)
        print(trio.run(main), [r["kind"] for r in lockprof.stats() if r["kind"].startswith("trio")])
        lockprof.stop()
        print(trio.run(main))
    """)], capture_output=True, text=True, timeout=120, env=e)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["True ['trio.Lock']", "False"], r.stdout


@pytest.mark.parametrize("suite", ["test_sync", "test_threads"])
def test_trios_own_tests_pass_profiled(tmp_path, suite):
    """trio ships its tests in its package: its sync primitives' and its
    worker threads' (the default limiter), plainly and profiled at rate 1."""
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:lockprof",
            "-p", "trio._tests.pytest_plugin", "--pyargs", f"trio._tests.{suite}",
            # its KeyboardInterrupt tests race a signal against threads: on a
            # loaded machine they fail plainly now and then
            "-k", "not _ki"]
    kinds = library_suites.passes_profiled_as_plain(args, tmp_path, tmp_path / "trio.pprof")
    expect = ({"trio.Lock", "trio.StrictFIFOLock", "trio.Semaphore", "trio.Condition",
               "trio.CapacityLimiter"} if suite == "test_sync" else {"trio.CapacityLimiter"})
    assert expect <= kinds, kinds
