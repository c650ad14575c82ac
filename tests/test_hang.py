"""The hang doctor (issue 13): small programs that hang, deadlock or do not,
each run under `lockprof run --hang-timeout`; the report on stderr is what
is checked, and the program's own output must be what it is unprofiled."""
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lockprof

FIX = Path(__file__).parent / "fixtures" / "hang"
ROOT = Path(__file__).resolve().parent.parent
HEAD = "lockprof: hang:"


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for k in list(env):
        if k.startswith("LOCKPROF_"):
            del env[k]
    env.update(extra)
    return env


def _run(tmp_path, name, *opts, env=None, profiled=True):
    prog = str(FIX / name)
    if profiled:
        cmd = [sys.executable, "-m", "lockprof", "run", "-q", "--force", "-o",
               str(tmp_path / "out.pprof"), *opts, prog]
    else:
        cmd = [sys.executable, prog]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(**(env or {})))
    assert r.returncode == 0, r.stderr
    return r


def _reports(stderr):
    """the hang reports: each from its head line to the next unindented one"""
    out, cur = [], None
    for line in stderr.splitlines():
        if line.startswith(HEAD):
            cur = [line]
            out.append(cur)
        elif cur is not None and line.startswith("  "):
            cur.append(line)
        else:
            cur = None
    return ["\n".join(r) for r in out]


def test_two_thread_deadlock_names_both_threads_locks_holders_and_the_cycle(tmp_path):
    r = _run(tmp_path, "two_threads.py", "--hang-timeout", "0.3")
    plain = _run(tmp_path, "two_threads.py", profiled=False)
    assert r.stdout == plain.stdout == "alive: post audit\nthreads seen by threading: 3\n"
    reports = _reports(r.stderr)
    assert len(reports) == 1, r.stderr          # once per episode, not once per tick
    rep = reports[0]
    # both waits begin at the barrier; the report comes when the first passes
    # the timeout, and on a loaded machine the second may have begun a moment
    # later: it is listed either way, counted past the timeout or not
    assert re.match(rf"{re.escape(HEAD)} (2 threads|1 thread) waited over 0\.3 s for a lock"
                    r"( \(hang timeout\), 2 threads waiting in all)?", rep), rep
    lines = rep.splitlines()
    # each waiter, the lock it waits on, where it waits, the holder and where
    # the holder took the lock and is now
    post = next(i for i, ln in enumerate(lines) if ln.startswith("  thread 'post' has waited"))
    assert "two_threads.py:8:audit_lock (threading.RLock)" in lines[post]
    assert lines[post + 1].endswith("two_threads.py:15 in post")
    assert lines[post + 2].startswith("    held by thread 'audit', taken at ")
    assert "two_threads.py:20 in audit" in lines[post + 2]
    assert lines[post + 3].endswith("two_threads.py:22 in audit")
    audit = next(i for i, ln in enumerate(lines) if ln.startswith("  thread 'audit' has waited"))
    assert "two_threads.py:7:ledger_lock (threading.Lock)" in lines[audit]
    assert lines[audit + 1].endswith("two_threads.py:22 in audit")
    assert "held by thread 'post', taken at " in lines[audit + 2]
    assert "two_threads.py:13 in post" in lines[audit + 2]
    # the threads' bootstrap frames are trimmed
    assert "threading.py" not in rep and "runpy" not in rep
    dl = [i for i, ln in enumerate(lines) if ln.startswith("  deadlock: ")]
    assert len(dl) == 1
    assert lines[dl[0]] in ("  deadlock: thread 'post' and thread 'audit' wait for each other:",
                            "  deadlock: thread 'audit' and thread 'post' wait for each other:")
    cycle = lines[dl[0] + 1:dl[0] + 3]
    assert sorted(cycle) == [
        "    thread 'audit' waits for two_threads.py:7:ledger_lock, held by thread 'post'",
        "    thread 'post' waits for two_threads.py:8:audit_lock, held by thread 'audit'"]
    assert lines[dl[0] + 3].startswith("    None of them can go on")


def test_env_twin_and_lock_order_together(tmp_path):
    r = _run(tmp_path, "two_threads.py", "--lock-order",
             env={"LOCKPROF_HANG_TIMEOUT": "0.3"})
    assert len(_reports(r.stderr)) == 1
    assert "  deadlock: " in r.stderr
    # the inversion is found as well, from the same run
    assert "lockprof: potential deadlock (lock-order inversion):" in r.stderr


def test_a_slow_holder_is_a_hang_without_deadlock(tmp_path):
    r = _run(tmp_path, "slow_holder.py", "--hang-timeout", "0.3")
    assert r.stdout == "done\n"
    reports = _reports(r.stderr)
    assert len(reports) == 1, r.stderr
    rep = reports[0]
    assert rep.startswith(f"{HEAD} 1 thread waited over 0.3 s")
    assert "thread 'lookup' has waited" in rep and "slow_holder.py:7:cache_lock" in rep
    lines = rep.splitlines()
    held = next(i for i, ln in enumerate(lines) if "held by thread 'refresh'" in ln)
    assert "slow_holder.py:11 in refresh" in lines[held]
    # where the holder is now: in its sleep
    assert lines[held + 1].endswith("slow_holder.py:13 in refresh")
    assert "deadlock:" not in r.stderr


def test_waits_shorter_than_the_timeout_report_nothing(tmp_path):
    r = _run(tmp_path, "short_waits.py", "--hang-timeout", "1")
    assert r.stdout == "done\n"
    assert HEAD not in r.stderr and r.stderr == ""


def test_a_thread_waiting_for_itself(tmp_path):
    r = _run(tmp_path, "self_deadlock.py", "--hang-timeout", "0.3")
    assert r.stdout == "alive: True\n"
    rep, = _reports(r.stderr)
    assert "held by thread 'updater', taken at" in rep
    assert "self_deadlock.py:8 in update" in rep
    assert ("  deadlock: thread 'updater' waits for itself:\n"
            "    thread 'updater' waits for self_deadlock.py:4:state_lock, held by "
            "thread 'updater'\n") in rep


def test_a_timed_wait_in_a_cycle_is_said_to_end(tmp_path):
    r = _run(tmp_path, "timed_self.py", "--hang-timeout", "0.3")
    assert r.stdout == "second acquire: False\n"
    rep, = _reports(r.stderr)
    assert ("    thread 'updater' waits for timed_self.py:5:state_lock, held by thread "
            "'updater' (with a timeout)\n") in rep
    assert "A wait with a timeout will end it" in rep and "It cannot go on" not in rep


def test_two_asyncio_tasks_deadlocked(tmp_path):
    r = _run(tmp_path, "tasks.py", "--hang-timeout", "0.3")
    plain = _run(tmp_path, "tasks.py", profiled=False)
    assert r.stdout == plain.stdout == "pending: restock sell\ncancelled: True\n"
    rep, = _reports(r.stderr)
    assert re.match(rf"{re.escape(HEAD)} (2 tasks|1 task) waited over 0\.3 s", rep), rep
    assert "task 'sell' in thread 'MainThread' has waited" in rep
    assert "tasks.py:7:stock (asyncio.Semaphore)" in rep
    assert "tasks.py:6:books (asyncio.Lock)" in rep
    assert "held by task 'restock' in thread 'MainThread', taken at" in rep
    assert "  deadlock: task 'sell' in thread 'MainThread' and task 'restock' in thread " \
           "'MainThread' wait for each other:" in rep or \
           "  deadlock: task 'restock' in thread 'MainThread' and task 'sell' in thread " \
           "'MainThread' wait for each other:" in rep
    assert "    task 'sell' in thread 'MainThread' waits for tasks.py:7:stock, held by task " \
           "'restock' in thread 'MainThread'\n" in rep
    assert "    task 'restock' in thread 'MainThread' waits for tasks.py:6:books, held by task " \
           "'sell' in thread 'MainThread'\n" in rep


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_has_its_own_watchdog(tmp_path):
    r = _run(tmp_path, "fork_child.py", "--hang-timeout", "0.3")
    assert r.stdout == "child done\n"
    rep, = _reports(r.stderr)
    assert "thread 'one'" in rep and "thread 'two'" in rep and "  deadlock: " in rep


def test_bad_values_are_one_line_errors(tmp_path):
    for args, env in ((["--hang-timeout", "0"], {}), (["--hang-timeout", "x"], {}),
                      ([], {"LOCKPROF_HANG_TIMEOUT": "-1"})):
        cmd = [sys.executable, "-m", "lockprof", "run", *args, "-c", "pass"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env(**env),
                           cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and "hang" in line.lower()
        assert "accepted" in line or "is not a number" in line
    with pytest.raises(ValueError, match="hang_timeout"):
        lockprof.start(hang_timeout=0)
    with pytest.raises(ValueError, match="hang_timeout"):
        lockprof.start(hang_timeout="1")
    assert not lockprof.is_running()


def test_in_process_waits_counters_and_stop():
    """The API: the waits as the report sees them, the counters, and stop()
    ending the watchdog (no thread of lockprof is left)."""
    lockprof.start(1.0, hang_timeout=60)
    try:
        lock = threading.Lock()
        lock.acquire()
        t = threading.Thread(target=lambda: lock.acquire() and lock.release(), name="waiter")
        t.start()
        deadline = time.monotonic() + 10
        while not lockprof._lockprof.hang_waits() and time.monotonic() < deadline:
            time.sleep(0.01)
        waits = lockprof._lockprof.hang_waits()
        assert len(waits) == 1
        w = waits[0]
        assert w["ident"] == t.ident and w["kind"] == "threading.Lock"
        assert re.search(r"test_hang\.py:\d+:lock$", w["lock"])
        ident, task_id, file, line, func = w["holders"][0]
        assert ident == threading.get_ident() and task_id is None
        assert file == __file__ and func == "test_in_process_waits_counters_and_stop"
        c = lockprof.counters()
        assert c["hang_waits"] == 1 and c["max_hang_waits"] == 4096
        assert c["dropped_hang_waits"] == 0 and c["hang_reports"] == 0
        lock.release()
        t.join()
        assert lockprof._lockprof.hang_waits() == []
        # the watchdog is no thread of the program's
        assert all(th.name != "_hang_watchdog" for th in threading.enumerate())
        n = threading.active_count()
    finally:
        lockprof.stop()
    assert threading.active_count() == n
    assert lockprof.counters()["hang_waits"] == 0


def test_the_cap_on_waits_is_counted_and_in_the_profile():
    lockprof.start(1.0, hang_timeout=60, max_hang_waits=1)
    try:
        lock = threading.Lock()
        lock.acquire()
        ts = [threading.Thread(target=lambda: lock.acquire(timeout=5) and lock.release())
              for _ in range(3)]
        for t in ts:
            t.start()
        deadline = time.monotonic() + 10
        while lockprof.counters()["dropped_hang_waits"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        c = lockprof.counters()
        assert c["hang_waits"] == 1 and c["dropped_hang_waits"] == 2
        lock.release()
        for t in ts:
            t.join()
        p = lockprof.profile()
        assert "lockprof dropped_hang_waits=2" in p.comments()
        assert "lockprof max_hang_waits=1" in p.comments()
        assert any(n.startswith("dropped_hang_waits=2: max_hang_waits=1 was reached")
                   for n in p.cap_notes())
    finally:
        lockprof.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_forks_after_a_watched_wait_warn_as_unprofiled(tmp_path):
    """CPython 3.12+ warns on os.fork() in a multi-threaded process; the
    watchdog thread ends before each fork, so the program warns exactly as
    it does unprofiled."""
    env = {"PYTHONWARNINGS": "always::DeprecationWarning"}
    plain = _run(tmp_path, "fork_after_wait.py", env=env, profiled=False)
    prof = _run(tmp_path, "fork_after_wait.py", "--hang-timeout", "30", env=env)
    assert prof.stdout == plain.stdout == "forked 5 times\n"
    # Unprofiled, the program warns only where the runtime itself runs a
    # thread (a ThreadSanitizer build has one): profiled, it warns as often.
    warned = plain.stderr.count("is multi-threaded")
    assert warned in (0, 5), plain.stderr
    assert prof.stderr.count("is multi-threaded") == warned, prof.stderr
    # and the hang doctor still watches after the forks
    r = subprocess.run([sys.executable, "-c", (
        "import lockprof, os, threading, time\n"
        "lockprof.start(0.01, hang_timeout=0.2)\n"
        "l = threading.Lock()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "l.acquire()\n"
        "t = threading.Thread(target=l.acquire, daemon=True, name='late')\n"
        "t.start()\n"
        "time.sleep(1.0)\n")], capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 0 and HEAD in r.stderr and "'late'" in r.stderr, r.stderr
