"""pprof output, read back by Go's own pprof (Debian's golang-go; .ci/run
installs it)."""
import gzip
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

import lockprof

GO = shutil.which("go")
if GO is None and os.environ.get("LOCKPROF_REQUIRE_GO"):
    raise RuntimeError("LOCKPROF_REQUIRE_GO is set but `go` is not on PATH (apt-get install golang-go)")
needs_go = pytest.mark.skipif(GO is None, reason="go (Debian package golang-go) is not installed")


def _go(*args):
    return subprocess.run([GO, "tool", "pprof", *args], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def _total(top_output):
    """The `Total samples = N` of `go tool pprof -top` (unit suffix dropped)."""
    return int(re.search(r"Total samples = (\d+)", top_output).group(1))


def _scenario():
    ledger_lock = threading.Lock()

    def waiter():
        with ledger_lock:
            pass

    def slow_holder():
        with ledger_lock:
            t = threading.Thread(target=waiter, name="waiter-thread")
            t.start()
            time.sleep(0.05)
        t.join()

    slow_holder()
    for _ in range(20):
        with ledger_lock:
            pass


@needs_go
def test_go_pprof_reads_types_values_labels(tmp_path):
    path = tmp_path / "locks.pprof"
    with lockprof.Profiler(sample_rate=1.0) as prof:
        _scenario()
    prof.write(str(path))
    stats = [r for r in prof.stats() if r["kind"] == "threading.Lock"][0]
    raw = _go("-raw", str(path))
    header = [l for l in raw.splitlines() if "contentions/count" in l][0]
    assert header.split() == ["contentions/count", "delay/nanoseconds[dflt]",
                              "caused-contentions/count", "caused-delay/nanoseconds",
                              "acquisitions/count", "hold/nanoseconds", "cond-waits/count",
                              "cond-wait/nanoseconds"]
    assert "lock kind:[threading.Lock]" in raw
    assert f"lock name:[{stats['name']}]" in raw and stats["name"].endswith(":ledger_lock")
    assert "thread name:[waiter-thread]" in raw
    assert "lockprof sample_rate=1.0" in raw
    # who waited: the waiter's stack holds the delay, equal to the exact wait
    top = _go("-top", "-sample_index=delay", "-unit=ns", str(path))
    assert "waiter" in top
    assert "Type: delay" in top
    assert _total(top) == stats["wait_ns"]
    # who made them wait: the holder's release stack
    caused = _go("-top", "-sample_index=caused-delay", str(path))
    assert "slow_holder" in caused
    acq = _go("-top", "-sample_index=acquisitions", str(path))
    assert _total(acq) == 22 == stats["acquisitions"]
    assert _total(_go("-top", "-sample_index=contentions", str(path))) == stats["contentions"] == 1


def test_pprof_file_is_gzip_and_written_whole(tmp_path):
    path = tmp_path / "p.pb.gz"
    with lockprof.Profiler(sample_rate=1.0) as prof:
        _scenario()
    prof.write(str(path))
    data = gzip.decompress(path.read_bytes())
    assert data[:1] == b"\x0a"          # field 1 (sample_type) comes first
    assert [p.name for p in tmp_path.iterdir()] == ["p.pb.gz"]   # no temp left


@needs_go
def test_full_sample_table_is_counted_and_reported(tmp_path):
    lockprof.start(1.0, max_samples=3)
    lock = threading.Lock()

    def a():
        with lock:
            pass

    def b():
        with lock:
            pass

    def c():
        with lock:
            pass

    for f in (a, b, c, a, b, c):
        f()
    lockprof.stop()
    dropped = lockprof.counters()["dropped_samples"]
    assert dropped > 0
    assert len(lockprof._lockprof.samples()) == 3
    # the per-lock totals stay exact/whole even when stack rows are dropped
    assert lockprof.stats()[0]["acquisitions"] == 6
    path = tmp_path / "full.pprof"
    lockprof.write(str(path))
    assert f"lockprof dropped_samples={dropped}" in _go("-raw", str(path))
