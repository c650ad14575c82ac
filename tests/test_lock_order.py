"""Lock-order inversion detection (issue 13): small programs with a known
answer, each run under `lockprof run --lock-order`; the reports on stderr
and lock_order_cycles() are what is checked."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import lockprof
from lockprof import _order

FIX = Path(__file__).parent / "fixtures" / "order"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "inversion.py"
HEAD = "lockprof: potential deadlock (lock-order inversion):"


def _run(tmp_path, name, *args, quiet=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent)]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for k in list(env):
        if k.startswith("LOCKPROF_"):
            del env[k]
    cmd = [sys.executable, "-m", "lockprof", "run", "--lock-order", "--force", "-o",
           str(tmp_path / "out.pprof")] + (["-q"] if quiet else []) + [
               str(EXAMPLE if name == "inversion.py" else FIX / name), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    blocks = [b for b in r.stderr.split("\n\n") if b.startswith(HEAD)]
    assert r.stderr.count(HEAD) == len(blocks)
    return blocks, r.stderr


def _cycle_names(block):
    first = block.splitlines()[0][len(HEAD):].strip()
    return first.split(" -> ")


def test_opposite_orders_in_two_threads_is_one_report(tmp_path):
    blocks, _ = _run(tmp_path, "inversion.py")      # examples/inversion.py
    assert len(blocks) == 1
    names = _cycle_names(blocks[0])
    assert sorted(set(names)) == ["inversion.py:5:ledger_lock", "inversion.py:6:audit_lock"]
    b = blocks[0]
    # both edges, their threads, both stacks, innermost first
    assert "by thread 'post'" in b and "by thread 'audit'" in b
    assert "inversion.py:11 in post" in b and "inversion.py:10 in post" in b
    assert "inversion.py:17 in audit" in b and "inversion.py:16 in audit" in b
    lines = b.splitlines()
    taken = lines.index("    inversion.py:6:audit_lock taken at:")
    assert "inversion.py:11 in post" in lines[taken + 1]


def test_one_order_from_eight_threads_is_none(tmp_path):
    blocks, _ = _run(tmp_path, "same_order.py")
    assert blocks == []


def test_one_lock_per_account(tmp_path):
    assert _run(tmp_path, "accounts.py", "sorted")[0] == []
    blocks, _ = _run(tmp_path, "accounts.py", "args")
    assert len(blocks) == 1
    assert _cycle_names(blocks[0]) == ["accounts.py:11:lock"] * 3


def test_a_cycle_through_three_locks_of_three_types(tmp_path):
    blocks, _ = _run(tmp_path, "three.py")
    assert len(blocks) == 1
    names = _cycle_names(blocks[0])
    assert len(names) == 4 and names[0] == names[-1]
    assert sorted(names[:3]) == ["three.py:4:lock", "three.py:5:rlock", "three.py:6:sem"]
    assert blocks[0].count("  edge ") == 3


def test_two_asyncio_tasks_in_opposite_orders(tmp_path):
    blocks, _ = _run(tmp_path, "tasks.py")
    assert len(blocks) == 1
    assert sorted(set(_cycle_names(blocks[0]))) == ["tasks.py:7:a", "tasks.py:8:b"]
    assert "by task 'forward'" in blocks[0] and "by task 'backward'" in blocks[0]


def test_an_asyncio_lock_and_a_threading_lock_in_one_task(tmp_path):
    blocks, _ = _run(tmp_path, "mixed.py")
    assert len(blocks) == 1
    b = blocks[0]
    assert sorted(set(_cycle_names(b))) == ["mixed.py:11:cache_lock", "mixed.py:7:registry_lock"]
    assert "by task 'a' in thread 'MainThread'" in b and "by task 'b' in thread 'MainThread'" in b
    # each stack starts at the task's coroutine: the event loop's frames are trimmed
    assert "base_events.py" not in b and "events.py" not in b
    lines = b.splitlines()
    taken = lines.index("    mixed.py:7:registry_lock taken at:")
    assert lines[taken + 1].endswith("mixed.py:15 in a")


def test_reentrancy_condition_wait_and_tries_are_not_inversions(tmp_path):
    assert _run(tmp_path, "not_inversions.py")[0] == []


def test_printed_even_quiet_and_with_the_report(tmp_path):
    quiet, err_q = _run(tmp_path, "inversion.py", quiet=True)
    loud, err_l = _run(tmp_path, "inversion.py", quiet=False)
    assert len(quiet) == len(loud) == 1
    assert "profile written" not in err_q and "profile written" in err_l


def _invert():
    """a -> b, then b -> a, in this thread (two lines: two classes on 3.9 and
    3.10 too, where a creation site is a line)"""
    a = threading.Lock()
    b = threading.Lock()
    with a:
        with b:
            pass
    with b:
        with a:
            pass


def test_api_cycles_and_counters():
    lockprof.start(0.01, lock_order=True)
    try:
        _invert()
        cycles = lockprof.lock_order_cycles()
        assert len(cycles) == 1 and len(cycles[0]) == 2
        edge = cycles[0][0]
        assert set(edge) == {"held", "acquired", "thread_name", "task_name", "held_frames",
                             "acquired_frames"}
        assert {e["held"].rsplit(":", 1)[1] for e in cycles[0]} == {"a", "b"}
        assert edge["thread_name"] == "MainThread" and edge["task_name"] is None
        file, line, func = edge["acquired_frames"][0]
        assert file == __file__ and func == "_invert"
        assert edge["acquired_frames"][1][2] == "test_api_cycles_and_counters"
        c = lockprof.counters()
        assert c["order_edges"] == 2 and c["order_cycles"] == 1 and c["dropped_order_edges"] == 0
        assert _order.report(cycles).startswith(HEAD)
    finally:
        lockprof.stop()
        lockprof._lockprof.lock_order_clear()
        lockprof.reset()


def test_off_by_default_records_no_order():
    lockprof.start(1.0)
    try:
        _invert()
        assert lockprof.lock_order_cycles() == []
        assert lockprof.counters()["order_edges"] == 0
    finally:
        lockprof.stop()
        lockprof.reset()


def test_the_pair_cap_is_counted():
    lockprof.start(0.01, lock_order=True, max_order_edges=2)
    try:
        locks = [threading.Lock() for _ in range(4)]
        for i in range(4):
            for j in range(4):
                if i < j:
                    with locks[i]:
                        with locks[j]:
                            pass
        c = lockprof.counters()
        assert c["max_order_edges"] == 2 and c["order_instance_pairs"] == 2
        assert c["dropped_order_edges"] == 4     # 6 same-class pairs, 2 kept
    finally:
        lockprof.stop()
        lockprof._lockprof.lock_order_clear()
        lockprof.reset()


def test_cycles_travel_in_the_profile_file(tmp_path):
    from lockprof.export import Profile, pprof
    _run(tmp_path, "inversion.py")
    path = tmp_path / "out.pprof"
    p = pprof.read(str(path))
    assert len(p.lock_order) == 1
    names = {e["held"].rsplit("/", 1)[-1] for e in p.lock_order[0]}
    assert names == {"inversion.py:5:ledger_lock", "inversion.py:6:audit_lock"}
    assert all(isinstance(f, tuple) and len(f) == 3 for e in p.lock_order[0]
               for f in e["held_frames"] + e["acquired_frames"])
    # merged windows or processes: the same potential deadlock once
    assert len(Profile.merge([p, pprof.read(str(path))]).lock_order) == 1
    # lockprof report prints it after the table
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, "-m", "lockprof", "report", str(path)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(HEAD) == 1 and "inversion.py:11 in post" in r.stdout
    # Go's reader skips the section
    import shutil
    go = shutil.which("go")
    if go is not None:
        g = subprocess.run([go, "tool", "pprof", "-raw", str(path)], capture_output=True,
                           text=True, timeout=300)
        assert g.returncode == 0, g.stderr
        assert "Sample types" in g.stdout or "contentions" in g.stdout


def test_a_timeout_that_waits_forever_is_untimed(tmp_path):
    """acquire(timeout=-1) and acquire(True, -1) are acquire(): the inversion
    written with them is reported as the plain one is (issue 23)."""
    blocks, _ = _run(tmp_path, "untimed.py")
    assert len(blocks) == 1
    assert sorted(set(_cycle_names(blocks[0]))) == ["untimed.py:5:ledger_lock",
                                                    "untimed.py:6:audit_lock"]


def test_a_group_held_readers_writer_lock_is_no_deadlock_asyncio(tmp_path):
    """The first reader takes `resource` for the group, the last one (another
    task) gives it back: the cycle it makes with count_lock is set aside,
    named and counted, never reported."""
    blocks, err = _run(tmp_path, "rwlock_async.py")
    assert blocks == [], err
    assert "lockprof: lock order: 1 cycle set aside" in err
    assert "rwlock_async.py:12:resource: released by another thread or task" in err


def test_a_group_held_readers_writer_lock_is_no_deadlock_threads(tmp_path):
    blocks, err = _run(tmp_path, "rwlock_threads.py")
    assert blocks == [], err
    assert "rwlock_threads.py:11:resource: released by another thread or task" in err


def test_the_owned_twin_of_the_readers_writer_lock_is_reported(tmp_path):
    blocks, err = _run(tmp_path, "rwlock_owned.py")
    assert len(blocks) == 1
    assert sorted(set(_cycle_names(blocks[0]))) == ["rwlock_owned.py:20:count_lock",
                                                    "rwlock_owned.py:21:resource"]
    assert "set aside" not in err


def test_cycles_of_one_code_pattern_are_one_report(tmp_path):
    blocks, err = _run(tmp_path, "variants.py")
    assert len(blocks) == 1, err
    assert "(and 1 more cycle of the same code paths" in blocks[0]


def test_order_exempt_sets_a_lock_aside_and_says_so(tmp_path):
    blocks, err = _run(tmp_path, "exempt.py")
    assert blocks == [], err
    assert "exempt.py:7:gate: lockprof.order_exempt()" in err


def test_cycles_found_before_the_release_that_shows_a_signal_are_set_aside():
    """A lock first used as if owned (AB, then BA), later released by
    another thread: the cycle found earlier leaves lock_order_cycles(), and
    the counters say so."""
    lockprof.start(0.0, lock_order=True)
    try:
        signal = threading.Lock()
        data = threading.Lock()
        with signal:
            with data:
                pass
        with data:
            with signal:
                pass
        assert len(lockprof.lock_order_cycles()) == 1
        assert lockprof.order_exempt(object()) is False     # not a profiled lock
        signal.acquire()
        t = threading.Thread(target=signal.release)          # released by another thread
        t.start()
        t.join()
        assert lockprof.lock_order_cycles() == []
        c = lockprof.counters()
        assert c["order_cycles_set_aside"] == 1 and c["order_unordered_classes"] == 1
        # and from now on no edge starts at it
        before = c["order_unordered_skips"]
        with signal:
            with data:
                pass
        assert lockprof.counters()["order_unordered_skips"] == before + 1
    finally:
        lockprof.stop()
        lockprof._lockprof.lock_order_clear()


def test_the_queue_put_deadlock_of_a_process_pool_library_is_reported(tmp_path):
    blocks, err = _run(tmp_path, "queue_put.py")
    assert len(blocks) == 1, err
    import re
    names = sorted(set(_cycle_names(blocks[0])))
    assert re.fullmatch(r"queue\.py:\d+:mutex", names[0]) and names[1] == "queue_put.py:9:cond", \
        names
    assert "queue_put.py:14 in _put" in blocks[0] and "queue_put.py:27 in watcher" in blocks[0]


def test_an_acquire_bounded_by_wait_for_adds_no_edge_into_its_lock(tmp_path):
    blocks, err = _run(tmp_path, "asyncio_wait_for.py", "bounded")
    assert blocks == [], err


def test_an_acquire_inside_asyncio_timeout_is_timed(tmp_path):
    """an armed asyncio.timeout() bounds the acquire (no edge into its lock);
    asyncio.timeout(None) has no deadline: the same inversion is reported"""
    import pytest
    if sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout() is new in 3.11")
    blocks, err = _run(tmp_path, "asyncio_wait_for.py", "timeout")
    assert blocks == [], err
    blocks, err = _run(tmp_path, "asyncio_wait_for.py", "timeout_none")
    assert len(blocks) == 1, err
    assert sorted(set(_cycle_names(blocks[0]))) == ["asyncio_wait_for.py:53:a",
                                                    "asyncio_wait_for.py:53:b"], blocks[0]


def test_held_since_names_the_line_that_awaited_wait_for(tmp_path):
    """held where the caller awaited wait_for: on 3.12+ the acquire runs in
    the caller's task; on 3.9-3.11 wait_for runs it in a task of its own,
    and the caller's task (suspended in wait_for) holds it, so the lock the
    caller takes next is ordered after it and the inversion is reported"""
    import re
    blocks, err = _run(tmp_path, "asyncio_wait_for.py", "held")
    assert len(blocks) == 1, err
    b = blocks[0]
    # 3.9/3.10 name the lock by its line only (no variable name before 3.11)
    held = re.split(r"asyncio_wait_for\.py:35(?::a)? held since:\n", b)[1].splitlines()
    assert held[0].strip() == "tests/fixtures/order/asyncio_wait_for.py:39 in one" or \
        held[0].strip().endswith("asyncio_wait_for.py:39 in one"), b
    assert "tasks.py" not in b and " in wait_for" not in b, b


def test_a_lock_taken_through_wait_for_and_released_by_its_caller_stays_ordered():
    """3.9-3.11 run wait_for's acquire in a task of its own; the caller's
    release of the lock it got that way is no signal."""
    import asyncio
    lockprof.start(0.0, lock_order=True)
    try:
        async def main():
            count = asyncio.Lock()
            await asyncio.wait_for(count.acquire(), timeout=5)
            count.release()
        asyncio.run(main())
        assert lockprof._lockprof.lock_order_unordered() == []
        assert lockprof.counters()["order_unordered_classes"] == 0
    finally:
        lockprof.stop()
        lockprof._lockprof.lock_order_clear()


def test_report_stacks_mark_the_programs_line_and_drop_the_runners_frames():
    """A stack whose innermost frames are a library's: the program's own
    innermost frame is marked, shown even past the limit; the frames outside
    the program beyond its outermost one (a test runner's) are one line."""
    from lockprof._order import OWN, frame_lines
    lib = "/usr/lib/python3.11/"
    site = "/venv/lib/python3.11/site-packages/"
    frames = ([(lib + "queue.py", 140, "put"), (lib + "threading.py", 300, "wait")]
              + [(site + "lib/mod.py", i, f"f{i}") for i in range(14)]
              + [("/srv/app/app.py", 12, "handler"), ("/srv/app/app.py", 30, "main")]
              + [(site + "_pytest/python.py", i, f"p{i}") for i in range(40)])
    lines = frame_lines(frames, "  ", 12)
    assert lines[0] == f"  {lib}queue.py:140 in put"
    assert lines[12] == "  ... 4 more"
    assert lines[13] == f"  /srv/app/app.py:12 in handler{OWN}"
    assert lines[14] == "  /srv/app/app.py:30 in main"
    assert lines[15:] == ["  ... 40 more"]
    # the program's frame innermost: nothing to mark; no own frame: the limit
    assert frame_lines(frames[16:], "", 12)[0] == "/srv/app/app.py:12 in handler"
    only_lib = frame_lines(frames[:16], "", 12)
    assert len(only_lib) == 13 and only_lib[-1] == "... 4 more" and OWN not in "".join(only_lib)
