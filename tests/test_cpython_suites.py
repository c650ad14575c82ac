"""CPython's own tests of its synchronization primitives, run with every lock
profiled (sample rate 1.0) under `lockprof run`: no test may fail that does
not fail in the plain run of the same suite on the same interpreter.

test_threading holds test.lock_tests' Lock, RLock, Condition, Semaphore,
BoundedSemaphore, Event and Barrier tests. These take minutes, so they run
when LOCKPROF_CPYTHON_SUITES is set (CI sets it): `all` (or 1) runs the four,
`locks` all but test_concurrent_futures (2.5 of its 3 minutes); a missing
`test` package (Debian ships it as libpython3.X-testsuite) is then a failure,
not a skip.  The plain and the profiled run of a suite go side by side."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOCK_SUITES = ["test.test_threading", "test.test_queue", "test.test_asyncio.test_locks",
               # multiprocessing's Lock, Semaphore and Condition tests, per start
               # method (tests/cpython_suites.py): locks shared with forked
               # children, and pickled to spawned ones
               "multiprocessing:fork", "multiprocessing:spawn"]
SUITES = LOCK_SUITES + ["test.test_concurrent_futures"]
MODE = os.environ.get("LOCKPROF_CPYTHON_SUITES", "")
SELECTED = SUITES if MODE in ("1", "all") else LOCK_SUITES if MODE == "locks" else []
DRIVER = Path(__file__).with_name("cpython_suites.py")
RETRIES = 2        # a new failure must repeat in each retry to count

pytestmark = pytest.mark.skipif(
    not SELECTED,
    reason="CPython's suites take minutes: LOCKPROF_CPYTHON_SUITES=all|locks runs them (CI does)")


def _run(tmp_path, tag, names, profiled):
    out = tmp_path / f"{tag}.json"
    cmd = [sys.executable]
    if profiled:
        cmd += ["-m", "lockprof", "run", "--sample-rate", "1.0", "-q",
                "-o", str(tmp_path / f"{tag}.pprof")]
    cmd += [str(DRIVER), str(out)] + list(names)
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for k in list(env):
        if k.startswith("LOCKPROF_") and k != "LOCKPROF_CPYTHON_SUITES":
            del env[k]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env,
                       cwd=str(tmp_path))
    assert out.exists(), f"{' '.join(cmd)} wrote no result (rc {r.returncode}):\n{r.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("suite", SELECTED or SUITES)
def test_suite_passes_profiled_as_plain(suite, tmp_path):
    module = "test._test_multiprocessing" if suite.startswith("multiprocessing:") else suite
    if importlib.util.find_spec(module.rpartition(".")[0] or module) is None or \
            importlib.util.find_spec(module) is None:
        pytest.fail(f"{suite} is not installed: CPython's test package is needed "
                    "(Debian: libpython3.X-testsuite)")
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        plain_f = pool.submit(_run, tmp_path, "plain", [suite], False)
        prof_f = pool.submit(_run, tmp_path, "profiled", [suite], True)
        plain, prof = plain_f.result(), prof_f.result()
    assert prof["profiled_locks"] > 0, "the profiled run profiled no lock"
    assert prof["ran"] == plain["ran"] and prof["ran"] > 0
    new = sorted(set(prof["bad"]) - set(plain["bad"]))
    for attempt in range(RETRIES):
        if not new:
            break
        again = _run(tmp_path, f"retry{attempt}", new, profiled=True)
        new = sorted(t for t in new if t in again["bad"])
    assert not new, "fail profiled only:\n" + "\n".join(f"{t}: {prof['bad'][t]}" for t in new)
    print(f"{suite}: {plain['ran']} tests, plain {plain['seconds']} s, profiled "
          f"{prof['seconds']} s, {prof['profiled_locks']} locks profiled, "
          f"{len(plain['bad'])} failing in both")
