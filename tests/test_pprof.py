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


GO_MUTEX = '''
package main

import (
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"
)

func main() {
	runtime.SetMutexProfileFraction(1)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				mu.Lock()
				time.Sleep(200 * time.Microsecond)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	f, _ := os.Create(os.Args[1])
	pprof.Lookup("mutex").WriteTo(f, 0)
	f.Close()
}
'''


@needs_go
def test_report_reads_a_go_mutex_profile(tmp_path):
    # a profile lockprof did not write: Go's own mutex profile
    src = tmp_path / "main.go"
    src.write_text(GO_MUTEX)
    env = dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath"),
               GOFLAGS="-mod=mod", GO111MODULE="off")
    out = tmp_path / "mutex.pprof"
    subprocess.run([GO, "run", str(src), str(out)], env=env, check=True, timeout=300,
                   capture_output=True)
    from lockprof.export import pprof
    prof = pprof.read(str(out))
    delay = sum(r["value"] for r in prof.samples() if r["event"] == "contention")
    top = _go("-top", "-sample_index=delay", "-unit=ms", str(out))
    go_ms = float(re.search(r"accounting for ([0-9.]+)ms", top).group(1))
    assert delay > 0 and abs(delay / 1e6 - go_ms) < 0.01 + go_ms * 1e-4
    assert any(r["frames"] and r["frames"][0][1].startswith("sync.") for r in prof.samples())
    import sys
    r = subprocess.run([sys.executable, "-m", "lockprof", "report", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "top 1 of 1 lock names" in r.stdout, r.stderr


def test_report_refuses_a_profile_without_lock_types(tmp_path):
    from lockprof.export import pprof
    path = tmp_path / "cpu.pprof"
    # a cpu-like profile: sample types samples/count, cpu/nanoseconds
    body = bytearray()
    strings = ["", "samples", "count", "cpu", "nanoseconds"]
    for t, u in ((1, 2), (3, 4)):
        vt = bytes([0x08, t, 0x10, u])
        body += bytes([0x0a, len(vt)]) + vt
    for s in strings:
        b = s.encode()
        body += bytes([0x32, len(b)]) + b
    path.write_bytes(gzip.compress(bytes(body)))
    with pytest.raises(pprof.ProfileError, match=r"no contentions/delay sample types, so it is "
                                                 r"not a lock profile \(its types: samples, cpu\)"):
        pprof.read(str(path))
