"""The pytest plugin, run through pytester in a subprocess (a fresh
interpreter: lockprof's tables are per process)."""
import os
import re

import pytest

from lockprof.export import pprof

CONTENDED = '''
import threading, time

def contend(lock, hold_s):
    def holder():
        with lock:
            time.sleep(hold_s)
    t = threading.Thread(target=holder)
    t.start()
    time.sleep(hold_s / 5)
    with lock:
        pass
    t.join()

def test_gate():
    gate = threading.Lock()
    with gate:           # first used here: named after this variable
        pass
    contend(gate, 0.06)

def test_quiet():
    calm = threading.Lock()
    with calm:
        pass
'''


def _run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_registered_as_pytest11_entry_point():
    from importlib import metadata
    eps = metadata.entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
    assert any(ep.value == "lockprof.pytest_plugin" for ep in group)


def test_off_unless_asked(pytester):
    pytester.makepyfile(test_off='''
        import threading
        from lockprof._lockprof import is_wrapper
        def test_native():
            assert not is_wrapper(threading.Lock())
    ''')
    r = _run(pytester)
    r.assert_outcomes(passed=1)
    assert "lockprof: lock contention" not in r.stdout.str()


@pytest.mark.parametrize("how", ["flag", "ini"])
def test_session_summary(pytester, how):
    pytester.makepyfile(test_locks=CONTENDED)
    if how == "ini":
        pytester.makeini("[pytest]\nlockprof = true\nlockprof_sample_rate = 1\n")
        r = _run(pytester)
    else:
        # the lock is named `gate` after the variable it is made into (3.11+),
        # or where its first recorded event happens, the test's own `with gate:`
        r = _run(pytester, "--lockprof", "--lockprof-sample-rate", "1")
    r.assert_outcomes(passed=2)
    out = r.stdout.str()
    assert "lockprof: lock contention" in out
    # the gate lock, with its one contention and about 48 ms of wait
    row = next(line for line in out.splitlines() if re.match(r"test_locks\.py:\d+:gate ", line))
    cells = row.split()
    # kind, blocked ms, contentions, wait ms
    assert cells[1] == "threading.Lock" and cells[3] == "1"
    assert 30 < float(cells[4]) < 500 and cells[2] == cells[4]
    assert re.search(r"tests with the most lock wait:\n\s+[0-9.]+ ms\s+test_locks\.py::test_gate",
                     out)


def test_per_test_profiles(pytester):
    pytester.makepyfile(test_locks=CONTENDED)
    r = _run(pytester, "--lockprof-dir", "profiles", "--lockprof-sample-rate", "1")
    r.assert_outcomes(passed=2)
    d = pytester.path / "profiles"
    files = sorted(os.listdir(d))
    assert files == ["test_locks.py_test_gate.pprof", "test_locks.py_test_quiet.pprof"]
    gate = pprof.read(str(d / files[0])).samples()
    quiet = pprof.read(str(d / files[1])).samples()
    names = lambda rows: {r["lock_name"].rsplit(":", 1)[-1] for r in rows}  # noqa: E731
    assert names(gate) == {"gate"} and names(quiet) == {"calm"}
    assert sum(r["count"] for r in gate if r["event"] == "contention") == 1
    assert sum(r["count"] for r in quiet if r["event"] == "acquire") == 1
    assert "2 per-test profiles in profiles" in r.stdout.str()


def test_limit_lock_wait_marker(pytester):
    text = CONTENDED + '''
import pytest

@pytest.mark.limit_lock_wait("10 ms")
def test_over():
    shared = threading.Lock()
    with shared:
        pass
    contend(shared, 0.08)

@pytest.mark.limit_lock_wait("2 s")
def test_under():
    shared = threading.Lock()
    contend(shared, 0.02)

@pytest.mark.limit_lock_wait("ten minutes")
def test_bad_budget():
    pass

@pytest.mark.limit_lock_wait(0.001)
def test_fails_anyway():
    assert 1 == 2
'''
    pytester.makepyfile(test_budget=text)
    r = _run(pytester)      # the marker works without --lockprof
    r.assert_outcomes(passed=3, failed=3)
    out = r.stdout.str()
    m = re.search(r"lock wait ([0-9.]+) ms exceeds the limit_lock_wait budget of 10\.00 ms", out)
    assert m and 40 < float(m.group(1)) < 1000, out
    # the lock's creation line in test_over, named where it was first recorded
    line = text.strip().splitlines().index("    shared = threading.Lock()") + 1
    assert re.search(rf"in 1 waits on test_budget\.py:{line}:\w+ \(threading\.Lock\)", out), out
    assert re.search(r"100\.0% of wait: contend \(test_budget\.py:\d+\) <- test_over", out)
    assert "'ten minutes' is not a duration" in out
    assert "assert 1 == 2" in out        # the test's own failure is not replaced
    assert "lockprof: lock contention" not in out


def test_bad_options_are_usage_errors(pytester):
    pytester.makepyfile(test_x="def test_x(): pass")
    r = _run(pytester, "--lockprof", "--lockprof-sample-rate", "2")
    assert r.ret == 4
    assert "lockprof: --lockprof-sample-rate='2' is not a number in [0, 1]" in r.stderr.str()


@pytest.mark.parametrize("how", ["lockprof run", "import lockprof first"])
def test_a_suite_treating_warnings_as_errors_starts_with_lockprof_imported(tmp_path, how):
    """pytest marks the plugin's distribution for assertion rewriting; with
    lockprof already imported that used to warn, which `filterwarnings =
    error` turns into an abort at startup."""
    import subprocess
    import sys
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    # what pytest does at startup for the packages of an installed (not
    # editable) distribution that carries a pytest11 plugin
    (tmp_path / "conftest.py").write_text(
        "def pytest_configure(config):\n"
        "    config.pluginmanager.rewrite_hook.mark_rewrite('lockprof')\n")
    (tmp_path / "test_x.py").write_text("import threading\n"
                                        "def test_x():\n    with threading.Lock():\n"
                                        "        assert 1 + 1 == 2\n")
    if how == "lockprof run":
        argv = [sys.executable, "-m", "lockprof", "run", "-q", "-o", "p.pprof", "-m", "pytest",
                "-q", "-p", "no:cacheprovider"]
    else:
        argv = [sys.executable, "-c", "import sys, lockprof, pytest; "
                "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider']))"]
    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout and "cannot be rewritten" not in r.stdout + r.stderr


def test_plugin_under_pytester_with_warnings_as_errors(pytester):
    import lockprof  # noqa: F401  (imported before the inner session starts)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makepyfile("import threading\n"
                        "def test_x():\n    with threading.Lock():\n        pass\n")
    r = pytester.runpytest_subprocess("--lockprof", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    assert "lockprof: lock contention" in r.stdout.str()


ORDER_TESTS = '''
    import threading

    a = threading.Lock()
    b = threading.Lock()


    def test_clean():
        with a:
            with b:
                pass


    def test_inverting():
        with b:
            with a:
                pass


    def test_clean_after():
        with a:
            with b:
                pass
'''


@pytest.mark.parametrize("how", ["option", "ini"])
def test_lock_order_fails_the_inverting_test(pytester, how):
    pytester.makepyfile(test_order=ORDER_TESTS)
    if how == "ini":
        pytester.makeini("[pytest]\nlockprof_lock_order = true\n")
        r = _run(pytester, "-rf")
    else:
        r = _run(pytester, "--lockprof-lock-order", "-rf")
    r.assert_outcomes(passed=2, failed=1)
    out = r.stdout.str()
    assert "FAILED test_order.py::test_inverting" in out
    assert "lockprof: potential deadlock (lock-order inversion): test_order.py:" in out
    assert "test_order.py:15 in test_inverting" in out and "test_order.py:9 in test_clean" in out


def test_lock_order_off_passes_all(pytester):
    pytester.makepyfile(test_order=ORDER_TESTS)
    _run(pytester, "--lockprof").assert_outcomes(passed=3)
