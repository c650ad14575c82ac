"""Stacks recorded with each event: the leaf is the line that took the lock,
deep stacks are cut at max_frames with the count of what was left out, and a
repeated stack is one row."""
import sys
import threading
import time

import pytest

import lockprof


def _line():
    return sys._getframe(1).f_lineno


def test_leaf_is_the_acquiring_line_and_stacks_are_interned():
    lockprof.start(1.0)
    lock = threading.Lock()

    def work():
        for _ in range(50):
            lock.acquire(); line = _line()  # noqa: E702
            lock.release()
        return line

    acquire_line = work()
    lockprof.stop()
    rows = [s for s in lockprof.samples() if s["event"] == "acquire"]
    assert len(rows) == 1                      # one stack, seen 50 times
    row = rows[0]
    assert row["samples"] == 50 and row["count"] == 50.0
    file, func, line = row["frames"][0]
    assert (file, func, line) == (__file__, "work", acquire_line)
    assert row["frames"][1][1] == "test_leaf_is_the_acquiring_line_and_stacks_are_interned"
    holds = [s for s in lockprof.samples() if s["event"] == "hold"]
    assert holds and holds[0]["frames"][0][2] == acquire_line + 1   # the releasing line


def test_deep_stack_cut_at_max_frames_with_marker():
    lockprof.start(1.0, max_frames=5)
    lock = threading.Lock()

    def recurse(n):
        if n == 0:
            with lock:
                pass
            return
        recurse(n - 1)

    recurse(30)
    lockprof.stop()
    row = [s for s in lockprof.samples() if s["event"] == "acquire"][0]
    assert len(row["frames"]) == 5
    assert [f[1] for f in row["frames"]] == ["recurse"] * 5
    # every frame below the 5 kept ones is counted, none is lost
    total = 0
    f = sys._getframe()
    while f is not None:
        total += 1
        f = f.f_back
    assert row["omitted"] == 31 - 5 + total


def test_contention_stack_and_wait():
    lockprof.start(0.0)
    lock = threading.Lock()
    lock.acquire()

    def waiter():
        with lock:
            pass

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    lock.release()
    t.join()
    lockprof.stop()
    rows = [s for s in lockprof.samples() if s["event"] == "contention"]
    assert len(rows) == 1 and rows[0]["count"] == 1.0 and rows[0]["samples"] == 1
    assert rows[0]["frames"][0][1] == "waiter"
    assert rows[0]["value"] >= 0.04e9
    assert [s for s in lockprof.samples() if s["event"] == "acquire"] == []   # rate 0


@pytest.mark.parametrize("bad", [0, 513, "5", 2.0, True])
def test_bad_max_frames(bad):
    with pytest.raises(ValueError, match=r"max_frames must be an integer in \[1, 512\]"):
        lockprof.start(max_frames=bad)
    assert not lockprof.is_running()


def test_samples_carry_thread_identity_after_the_thread_exited():
    lockprof.start(1.0)
    lock = threading.Lock()
    native_ids = {}

    def worker():
        native_ids[threading.current_thread().name] = threading.get_native_id()
        for _ in range(3):
            with lock:
                pass

    threads = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(2)]
    for t in threads:
        t.start()
        t.join()                      # exited before the profile is read
    with lock:
        pass
    lockprof.stop()
    rows = [s for s in lockprof.samples() if s["event"] == "acquire"]
    by_name = {}
    for r in rows:
        by_name[r["thread_name"]] = by_name.get(r["thread_name"], 0) + r["count"]
    assert by_name == {"worker-0": 3, "worker-1": 3, threading.current_thread().name: 1}
    for r in rows:
        if r["thread_name"].startswith("worker-"):
            assert r["thread_native_id"] == native_ids[r["thread_name"]]
    assert {r["thread_id"] for r in rows if r["thread_name"] == threading.current_thread().name} \
        == {threading.get_ident()}


def test_short_waits_sampled_in_proportion_and_unbiased():
    """Waits shorter than the period keep their stack with probability
    wait/period; the scaled per-stack total still estimates the exact
    per-lock wait."""
    lockprof.start(0.0, wait_period_ns=5_000_000, seed=7)    # 5 ms period
    lock = threading.Lock()
    rounds = 200
    for _ in range(rounds):
        lock.acquire()
        t = threading.Thread(target=lambda: (lock.acquire(), lock.release()))
        t.start()
        time.sleep(0.001)            # the thread waits about 1 ms
        lock.release()
        t.join()
    lockprof.stop()
    rec = [r for r in lockprof.stats() if r["kind"] == "threading.Lock"][0]
    rows = [s for s in lockprof.samples() if s["event"] == "contention"]
    taken = sum(r["samples"] for r in rows)
    assert rec["contentions"] >= rounds * 0.9
    assert 0 < taken < rec["contentions"] * 0.8       # short waits were thinned
    est_wait = sum(r["value"] for r in rows)
    est_count = sum(r["count"] for r in rows)
    assert abs(est_wait - rec["wait_ns"]) <= 0.5 * rec["wait_ns"]
    assert abs(est_count - rec["contentions"]) <= 0.5 * rec["contentions"]


def test_delay_is_charged_to_the_holders_release_stack():
    """Go's mutex-profile view: who made others wait, not only who waited."""
    lockprof.start(0.0)
    lock = threading.Lock()
    waited = []
    started = threading.Event()

    def waiter():
        started.wait()
        t0 = time.monotonic_ns()
        with lock:
            waited.append(time.monotonic_ns() - t0)

    def slow_critical_section():
        with lock:
            started.set()
            time.sleep(0.05)

    t = threading.Thread(target=waiter)
    t.start()
    slow_critical_section()
    with_line = slow_critical_section.__code__.co_firstlineno + 1
    t.join()
    lockprof.stop()
    delay = [s for s in lockprof.samples() if s["event"] == "delay"]
    assert len(delay) == 1
    func, line = delay[0]["frames"][0][1:]
    # CPython attributes a with-block's exit to the `with` line (3.10+) or to
    # the block's last line (3.9)
    assert func == "slow_critical_section" and line in (with_line, with_line + 2)
    assert abs(delay[0]["value"] - waited[0]) <= 0.10 * waited[0]
    wait = [s for s in lockprof.samples() if s["event"] == "contention"]
    assert wait[0]["frames"][0][1] == "waiter"


def test_steady_state_allocates_nothing_per_event():
    """Repeated events on known stacks cost a hash, not memory: the runtime's
    tables allocate with PyMem, which tracemalloc sees."""
    import tracemalloc

    lockprof.start(1.0, max_overhead=0)
    lock = threading.Lock()

    def work(n):
        for _ in range(n):
            with lock:
                pass

    work(2000)                                   # tables warmed up
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        work(20000)                              # 40,000 recorded events
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        lockprof.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 4096, after.compare_to(before, "filename")[:5]
    rows = [s for s in lockprof.samples() if s["event"] == "acquire"]
    assert sum(r["samples"] for r in rows) == 22000


def test_asyncio_samples_carry_task_names():
    """A task the program named keeps its name; auto-named ones (Task-N)
    are labelled by their coroutine's qualified name, one label for all."""
    import asyncio

    async def main():
        lock = asyncio.Lock()

        async def worker():
            for _ in range(3):
                async with lock:
                    await asyncio.sleep(0)

        named = asyncio.ensure_future(worker())
        named.set_name("db-writer")
        await asyncio.gather(named, *(asyncio.ensure_future(worker()) for _ in range(2)))
        tasks = sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())
        return tasks

    lockprof.start(1.0)
    asyncio.run(main())
    lockprof.stop()
    rows = [s for s in lockprof.samples() if s["event"] == "acquire" and s["kind"] == "asyncio.Lock"]
    per_task = {}
    for r in rows:
        per_task[r["task_name"]] = per_task.get(r["task_name"], 0) + r["count"]
    assert per_task == {"db-writer": 3,
                        "test_asyncio_samples_carry_task_names.<locals>.main.<locals>.worker": 6}
    # outside asyncio there is no task
    lockprof.reset()
    lockprof.start(1.0)
    with threading.Lock():
        pass
    lockprof.stop()
    assert [s["task_name"] for s in lockprof.samples() if s["event"] == "acquire"] == [None]


def test_tables_grow_and_still_find_every_entry():
    """700 distinct stacks and creation sites (past the first index size),
    each seen twice: one row per stack with both events in it."""
    n = 700
    src = "\n".join(f"def f{i}(lock):\n    with lock:\n        pass\n" for i in range(n))
    ns = {}
    exec(compile(src, "<many_sites>", "exec"), ns)
    lockprof.start(1.0, max_overhead=0)
    locks = [threading.Lock() for _ in range(n)]
    for _ in range(2):
        for i in range(n):
            ns[f"f{i}"](locks[i])
    lockprof.stop()
    rows = [s for s in lockprof.samples() if s["event"] == "acquire"]
    assert len(rows) == n
    assert all(r["samples"] == 2 for r in rows)
    assert sorted(r["frames"][0][1] for r in rows) == sorted(f"f{i}" for i in range(n))
    assert lockprof.counters()["dropped_samples"] == 0
