"""The profile at service scale: its size follows the code paths, not the
tasks and threads a program creates; every cap is counted and told; a saved
file tells the same truth as the report at exit."""
import asyncio
import gzip
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import lockprof
from lockprof import export
from lockprof.export import pprof, text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GO = shutil.which("go")
needs_go = pytest.mark.skipif(_GO is None and not os.environ.get("LOCKPROF_REQUIRE_GO"),
                              reason="go not installed")


@pytest.fixture(autouse=True)
def _clean():
    lockprof.stop()
    lockprof.reset()
    yield
    lockprof.stop()
    lockprof.reset()


def _tasks(n):
    async def handle(lock, i):
        async with lock:
            pass

    async def serve():
        lock = asyncio.Lock()
        await asyncio.gather(*(handle(lock, i) for i in range(n)))

    asyncio.run(serve())


def _threads(n, lock):
    def worker():
        with lock:
            pass

    for _ in range(n):          # one after the other: no contention, same rows
        t = threading.Thread(target=worker)
        t.start()
        t.join()


def _run_workload(n_tasks, n_threads):
    lockprof.reset()
    lockprof.start(1.0, max_overhead=0)
    lock = threading.Lock()
    _tasks(n_tasks)
    _threads(n_threads, lock)
    lockprof.stop()
    return lockprof.profile()


def test_rows_follow_code_paths_not_tasks_or_threads():
    small = _run_workload(100, 100)
    big = _run_workload(10_000, 2_000)
    assert big.nrows == small.nrows
    rows = big.samples()
    # every event is counted, whatever the label
    acquired = {r["kind"]: 0 for r in rows}
    for r in rows:
        if r["event"] == "acquire":
            acquired[r["kind"]] += r["count"]
    assert acquired["asyncio.Lock"] == 10_000 and acquired["threading.Lock"] == 2_000
    tasks = {r["task_name"] for r in rows if r["kind"] == "asyncio.Lock"}
    assert tasks == {"_tasks.<locals>.handle"}
    threads = {r["thread_name"] for r in rows if r["kind"] == "threading.Lock"}
    assert threads == ({"Thread (worker)"} if sys.version_info >= (3, 10) else {"Thread"})
    # a label that 2,000 threads carried names no single thread
    assert {r["thread_id"] for r in rows if r["kind"] == "threading.Lock"} == {None}
    c = lockprof.counters()
    assert c["thread_names"] <= 3 and c["task_names"] <= 3
    assert c["dropped_thread_names"] == c["dropped_task_names"] == 0


def test_names_the_program_chose_are_kept():
    lockprof.start(1.0)
    lock = threading.Lock()

    def worker():
        with lock:
            pass

    for name in ("db-writer", "db-writer", "Thread-7-mine"):
        t = threading.Thread(target=worker, name=name)
        t.start()
        t.join()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: worker(), range(8)))
    with ThreadPoolExecutor(2, thread_name_prefix="io") as pool:
        list(pool.map(lambda _: worker(), range(8)))

    async def main():
        async def job():
            async with alock:
                pass
        alock = asyncio.Lock()
        t = asyncio.ensure_future(job())
        t.set_name("flusher")
        await asyncio.gather(t, job())

    asyncio.run(main())
    lockprof.stop()
    rows = lockprof.samples()
    threads = {r["thread_name"] for r in rows if r["lock_name"].endswith(":lock")}
    assert threads == {"db-writer", "Thread-7-mine", "ThreadPoolExecutor", "io"}
    tasks = {r["task_name"] for r in rows if r["kind"] == "asyncio.Lock"}
    assert tasks == {"flusher", "test_names_the_program_chose_are_kept.<locals>.main."
                                "<locals>.job"}
    # the main thread alone carried its label: its id is exact
    main = {r["thread_id"] for r in rows if r["thread_name"] == "MainThread"}
    assert main == {threading.get_ident()}


CAP_WORKLOAD = r"""
import asyncio, threading
locks = [
    threading.Lock(),
    threading.Lock(),
    threading.Lock(),
    threading.Lock(),
    threading.Lock(),
    threading.Lock(),
]

def take(lk):
    with lk:
        pass

def worker(lk):
    take(lk)

for i, lk in enumerate(locks):
    t = threading.Thread(target=worker, args=(lk,), name=f"named-{i}")
    t.start()
    t.join()
for lk in locks:
    (lambda: take(lk))()

async def main():
    alock = asyncio.Lock()

    async def job():
        async with alock:
            pass
    tasks = [asyncio.ensure_future(job()) for _ in range(6)]
    for i, t in enumerate(tasks):
        t.set_name(f"task-{i}")
    await asyncio.gather(*tasks)

asyncio.run(main())
"""
_runs = [0]


def _cap_workload():
    """Something for every cap to drop: 6 live locks made on 6 lines, 6
    named threads, 6 named tasks, 6 stacks; compiled afresh each time, so
    that its sites and stacks are new to the runtime's tables (which keep
    what they saw for the process's life)."""
    _runs[0] += 1
    ns = {}
    exec(compile(CAP_WORKLOAD, f"cap_workload_{_runs[0]}.py", "exec"), ns)
    return ns["locks"]


@pytest.mark.parametrize("cap, dropped", [
    ("max_locks", "dropped_locks"), ("max_stacks", "dropped_stacks"),
    ("max_samples", "dropped_samples"), ("max_sites", "dropped_sites"),
    ("max_thread_names", "dropped_thread_names"), ("max_task_names", "dropped_task_names"),
])
def test_every_cap_when_hit_is_counted_written_and_reported(tmp_path, cap, dropped):
    lockprof.start(1.0, **{cap: 2})
    locks = _cap_workload()
    lockprof.stop()
    c = lockprof.counters()
    assert c[dropped] > 0 and c[cap] == 2
    path = str(tmp_path / "p.pprof")
    lockprof.write(path)
    del locks
    prof = pprof.read(path)
    assert f"lockprof {dropped}={c[dropped]}" in prof.comments()
    assert f"lockprof {cap}=2" in prof.comments()
    for report in (text.report(lockprof.profile()), text.report(prof)):
        note = [line for line in report.splitlines() if line.startswith(f"lockprof: {dropped}=")]
        assert len(note) == 1 and f"{cap}=2 was reached" in note[0], report
    r = subprocess.run([sys.executable, "-m", "lockprof", "report", path], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and f"lockprof: {dropped}={c[dropped]}: {cap}=2" in r.stdout


def test_caps_are_not_told_when_nothing_was_dropped():
    lockprof.start(1.0, max_overhead=0)
    _cap_workload()
    lockprof.stop()
    assert lockprof.profile().cap_notes() == []
    assert "lockprof: dropped" not in text.report(lockprof.profile())


CONTENDED = r"""
import threading, time
class Account:
    def __init__(self):
        self.lock = threading.Lock()
accounts = [Account() for _ in range(4)]
ledger_lock = threading.Lock()
def work(i):
    for k in range(30):
        with ledger_lock:
            time.sleep(0.0005)
        with accounts[(i + k) % 4].lock:
            time.sleep(0.0002)
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
cond = threading.Condition()
with cond:
    cond.wait(0.01)
"""


def _run_app(tmp_path, rate, out, *flags):
    """CONTENDED under `lockprof run`, writing `out` in tmp_path."""
    (tmp_path / "app.py").write_text(CONTENDED)
    r = subprocess.run([sys.executable, "-m", "lockprof", "run", *flags, "--sample-rate", rate,
                        "-o", out, "app.py"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def _table(report):
    """The report's table: header line to the blank line after it."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("lockprof: top"))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_report_of_the_file_equals_the_report_at_exit(tmp_path):
    r = _run_app(tmp_path, "1", "p.pprof")
    at_exit = _table(r.stderr)
    f = subprocess.run([sys.executable, "-m", "lockprof", "report", "p.pprof"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert f.returncode == 0, f.stderr
    from_file = _table(f.stdout)
    assert from_file == at_exit
    assert "contentions and waits exact" in from_file[0]
    # exact figures, not estimates from the samples: x4 accounts, max wait
    # (before 3.11 the accounts' locks, first taken as `accounts[i].lock`, have no variable name)
    assert any(re.search(r"app\.py:5(:lock)? \(x4\)", line) for line in from_file), from_file
    prof = pprof.read(str(tmp_path / "p.pprof"))
    ledger = next(lk for lk in prof.locks if lk["var"] == "ledger_lock")
    assert ledger["contentions"] > 0 and ledger["max_wait_ns"] > 0
    cond = next(lk for lk in prof.locks if lk["kind"] == "threading.Condition")
    assert cond["cond_waits"] == 1 and cond["cond_wait_ns"] >= 5_000_000


def _go_total(path, index):
    r = subprocess.run([_GO or "go", "tool", "pprof", "-raw", f"-sample_index={index}", path],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_go
def test_exact_section_leaves_go_pprof_totals_unchanged(tmp_path):
    _run_app(tmp_path, "1", "p.pprof", "-q")
    with_exact = str(tmp_path / "p.pprof")
    prof = pprof.read(with_exact)
    assert prof.exact and b"\xc2\x3e" in gzip.decompress(open(with_exact, "rb").read())
    prof.exact = False
    without = str(tmp_path / "plain.pprof")
    pprof.write(prof, without)
    for index in ("delay", "contentions"):
        tops = []
        for path in (with_exact, without):
            rr = subprocess.run([_GO or "go", "tool", "pprof", "-top", f"-sample_index={index}",
                                 path], capture_output=True, text=True, timeout=300)
            assert rr.returncode == 0, rr.stderr
            tops.append([ln for ln in rr.stdout.splitlines() if "total" in ln])
        assert tops[0] == tops[1] and tops[0], tops
    # and Go's total is the samples' own sum
    delay = sum(r["value"] for r in prof.samples() if r["event"] == "contention")
    raw = _go_total(with_exact, "delay")
    assert "delay/nanoseconds" in raw and delay > 0


def test_model_round_trips_through_pprof(tmp_path):
    _run_app(tmp_path, "0.5", "a.pprof", "-q")
    a = pprof.read(str(tmp_path / "a.pprof"))
    pprof.write(a, str(tmp_path / "b.pprof"))
    b = pprof.read(str(tmp_path / "b.pprof"))
    pprof.write(b, str(tmp_path / "c.pprof"))

    def rows(p):
        return sorted((r["lock_name"], r["kind"], r["event"], tuple(r["frames"]), r["omitted"],
                       r["thread_name"], r["task_name"], r["count"], r["value"])
                      for r in p.samples())

    assert rows(a) == rows(b) and len(rows(a)) > 5
    assert a.locks == b.locks and a.exact and b.exact
    assert (tmp_path / "b.pprof").read_bytes() == (tmp_path / "c.pprof").read_bytes()
    # every other format writes from the model read back as from the live one
    for fmt in ("collapsed", "speedscope", "html", "text"):
        out = tmp_path / f"b.{export.EXTENSION[fmt]}"
        export.write(b, str(out), fmt)
        assert out.stat().st_size > 0


def test_windows_and_merge_add_up():
    lockprof.start(1.0)
    lock = threading.Lock()
    windows = []
    for _ in range(3):
        _threads(20, lock)
        windows.append(lockprof.profile(reset=True))
    lockprof.stop()
    merged = export.Profile.merge(windows)
    total = sum(r["count"] for r in merged.samples() if r["event"] == "acquire")
    assert total == 60
    assert merged.nrows == windows[0].nrows
    (lk,) = [lk for lk in merged.locks if lk["kind"] == "threading.Lock"]
    assert lk["acquisitions"] == 60
