"""--lock-order and --hang-timeout on code nobody here wrote: the test suites
of libraries that take several locks together (a cache with a lock around
its calls, a sync/async queue, process and readers-writer locks, a
readers-writer lock library), run as a user would.  Every report they gave
was triaged (README, "Lock order"); the false ones are gone, so each suite
must pass as it does plainly, with no report and no fork warning.  CI
unpacks the sdists (.ci/order-suites) and names the directory in
LOCKPROF_ORDER_SUITES."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = os.environ.get("LOCKPROF_ORDER_SUITES")

# (sdist directory, its import path inside it, pytest arguments)
SUITES = [
    ("cachetools-8.0.2", "src", ["tests"]),
    ("janus-2.0.0", ".", ["tests", "--ignore=tests/test_benchmarks.py"]),
    ("fasteners-0.20", ".", ["tests", "--ignore=tests/test_eventlet.py"]),
    # the readers-writer lock library whose asyncio locks gave 18 false
    # reports; without its two stress tests, which run 30 s per lock type
    ("readerwriterlock-1.0.10", ".", ["tests", "-k", "not test_multi"]),
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


@pytest.mark.skipif(SUITES_DIR is None, reason="LOCKPROF_ORDER_SUITES does not name the "
                    "unpacked suites (.ci/run does, with .ci/order-suites)")
@pytest.mark.parametrize("name, path, args", SUITES, ids=[s[0] for s in SUITES])
def test_a_third_party_suite_under_lock_order_reports_nothing_false(name, path, args):
    d = Path(SUITES_DIR) / name
    plain = _run(d, path, args, profiled=False)
    prof = _run(d, path, args, profiled=True)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    assert prof.returncode == 0, prof.stdout[-3000:] + prof.stderr[-3000:]
    assert _summary(prof) == _summary(plain) and " passed" in _summary(plain)
    assert "potential deadlock" not in prof.stderr, prof.stderr[-6000:]
    assert "lockprof: hang:" not in prof.stderr, prof.stderr[-6000:]
    # the hang doctor's thread makes no fork warning the plain run lacks
    assert prof.stdout.count("multi-threaded") + prof.stderr.count("multi-threaded") == \
        plain.stdout.count("multi-threaded") + plain.stderr.count("multi-threaded")
