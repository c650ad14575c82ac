"""--lock-order and --hang-timeout on code nobody here wrote: the test suites
of libraries that take several locks together (a cache with a lock around
its calls, a sync/async queue, a process pool), run as a user would.  Every report they gave was triaged (README,
"Lock order"); the false ones are gone, so each suite must pass as it does
plainly, with its true reports only and no fork warning.  CI unpacks the
sdists (.ci/order-suites) and names the directory in
LOCKPROF_ORDER_SUITES."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = os.environ.get("LOCKPROF_ORDER_SUITES")

# (sdist directory, its import path inside it, pytest arguments, the
# reports expected: each the set of lock names of a true cycle)
SUITES = [
    ("cachetools-8.0.2", "src", ["tests"], []),
    ("janus-2.0.0", ".", ["tests", "--ignore=tests/test_benchmarks.py"], []),
    # readers-writer and process locks across forked pool workers; until
    # 2026-12-05 a pool test of it hung now and then: a worker sent SIGTERM
    # in C just before a lock wait outlived it (runtime/lp_signal.c)
    ("fasteners-0.20", ".", ["tests", "--ignore=tests/test_eventlet.py"], []),
    # a process-pool library: its thread-side tests.  The one report is the
    # real deadlock of its waitforqueues(): Queue.put holds the queue's mutex
    # and calls the replaced _put, which takes waitforqueues' Condition,
    # while waitforqueues holds that Condition and calls Queue.empty(), which
    # takes the mutex (reproduced without lockprof; README, "Lock order")
    ("pebble-5.2.3", ".", ["test/test_thread_pool.py", "test/test_concurrent_thread.py",
                           "test/test_pebble.py"],
     [{"queue.py:mutex", "functions.py:_lock"}]),
]
def _run(d, path, args, profiled):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("LOCKPROF_"):
            del env[k]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(d / path), str(Path(SUITES_DIR) / "deps")])
    env["PYTHONWARNINGS"] = "always::DeprecationWarning"
    cmd = [sys.executable]
    if profiled:
        cmd += ["-m", "lockprof", "run", "--lock-order", "--hang-timeout", "60", "-q",
                "--force", "-o", str(d / "suite.pprof")]
    cmd += ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *args]
    return subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=900, env=env)


def _summary(r):
    lines = [x for x in r.stdout.splitlines() if " passed" in x or " failed" in x]
    assert lines, r.stdout[-3000:] + r.stderr[-3000:]
    return lines[-1].split(" in ")[0]


def _cycles(stderr):
    """each report's locks, as file:var with the line left out (it differs
    between CPython versions for queue.py)"""
    import re
    out = []
    for line in stderr.splitlines():
        if line.startswith("lockprof: potential deadlock (lock-order inversion): "):
            names = line.split(": ", 2)[2].split(" -> ")
            out.append({re.sub(r":\d+:", ":", n) for n in names})
    return out


@pytest.mark.skipif(SUITES_DIR is None, reason="LOCKPROF_ORDER_SUITES does not name the "
                    "unpacked suites (.ci/run does, with .ci/order-suites)")
@pytest.mark.parametrize("name, path, args, expected", SUITES, ids=[s[0] for s in SUITES])
def test_a_third_party_suite_under_lock_order_reports_what_is_true(name, path, args, expected):
    d = Path(SUITES_DIR) / name
    plain = _run(d, path, args, profiled=False)
    prof = _run(d, path, args, profiled=True)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    assert prof.returncode == 0, prof.stdout[-3000:] + prof.stderr[-3000:]
    assert _summary(prof) == _summary(plain) and " passed" in _summary(plain)
    assert _cycles(prof.stderr) == expected, prof.stderr[-6000:]
    assert "lockprof: hang:" not in prof.stderr, prof.stderr[-6000:]
    # the hang doctor's thread makes no fork warning the plain run lacks
    assert prof.stdout.count("multi-threaded") + prof.stderr.count("multi-threaded") == \
        plain.stdout.count("multi-threaded") + plain.stderr.count("multi-threaded")
