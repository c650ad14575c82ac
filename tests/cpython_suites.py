"""Runs CPython's own test modules with unittest and writes what did not pass,
as JSON: `python cpython_suites.py OUT.json test.test_queue ...`, run plainly
and under `lockprof run` by tests/test_cpython_suites.py, which compares the
two. Under lockprof it also records how many locks were profiled, so that a
run that profiled nothing cannot pass for one that did."""
import json
import os
import sys
import time
import unittest


class _Result(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad = {}

    def _note(self, test, kind, err=None):
        text = self._exc_info_to_string(err, test) if err is not None else ""
        self.bad[test.id()] = f"{kind}: {text.strip().splitlines()[-1] if text else ''}"

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._note(test, "FAIL", err)

    def addError(self, test, err):
        super().addError(test, err)
        self._note(test, "ERROR", err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._note(test, "UNEXPECTED SUCCESS")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:     # noted under its test's id, which can be run again
            self._note(test, "FAIL" if issubclass(err[0], test.failureException)
                       else "ERROR", err)


# CPython's multiprocessing tests of its locks, for one start method:
# "multiprocessing:fork" installs test._test_multiprocessing's classes for
# that method into a module of their own (as test_multiprocessing_fork does,
# which some installs lack) and names its Lock, Semaphore and Condition tests
MP_TESTS = ("WithProcessesTestLock", "WithProcessesTestSemaphore", "WithProcessesTestCondition")


def _mp_names(method: str, where: str):
    """Writes the module (spawned children import it by name) into `where`,
    which goes on sys.path, and names its tests."""
    import importlib
    name = f"lockprof_mp_{method}"
    path = os.path.join(where, f"{name}.py")
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write("from test import _test_multiprocessing\n"
                    f"_test_multiprocessing.install_tests_in_module_dict(globals(), {method!r})\n")
        os.replace(path + ".tmp", path)
    if where not in sys.path:
        sys.path.insert(0, where)
    mod = importlib.import_module(name)
    return [f"{name}.{cls}" for cls in MP_TESTS if hasattr(mod, cls)]


# CPython tests left out, plainly and profiled alike.  test_print_exception_
# gh_102056 runs a child that recurses exponentially until
# _thread.interrupt_main() stops it after a second; it takes no lock of the
# test's, and on a loaded 2-core machine both its runs (plain and profiled)
# once spun for 20 minutes (the interrupt lost in the recursion), where it
# normally ends in 3 s.
LEFT_OUT = ("test_print_exception_gh_102056",)
# CPython's ProcessPoolExecutor could deadlock at shutdown (gh-125451, fixed in
# 3.12.8 and 3.13.1): its manager thread joins the queue feeder thread while
# holding the executor's shutdown lock, which the feeder takes to report a
# task that failed to pickle.  test_shutdown_deadlock_pickle (gh-110337) and
# test_processes_terminate hit it at random; on this machine's 3.13.0 the
# profiled run of test_concurrent_futures once hung there (the feeder in
# _SafeQueue._on_queue_feeder_error, the manager in Thread.join).
if sys.version_info[:3] < (3, 12, 8) or sys.version_info[:3] == (3, 13, 0):
    LEFT_OUT += ("test_shutdown_deadlock_pickle", "test_processes_terminate")


def _without(suite, names):
    """suite without the tests whose method name is in `names`"""
    out = unittest.TestSuite()
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            out.addTest(_without(t, names))
        elif t.id().rsplit(".", 1)[-1] not in names:
            out.addTest(t)
    return out


def main() -> int:
    out, names = sys.argv[1], sys.argv[2:]
    where = os.path.dirname(os.path.abspath(out))
    suite = unittest.TestSuite()
    loader = unittest.defaultTestLoader
    for name in names:
        if name.startswith("multiprocessing:"):
            for sub in _mp_names(name.split(":", 1)[1], where):
                suite.addTests(loader.loadTestsFromName(sub))
            continue
        if name.startswith("lockprof_mp_"):       # a retry of one of those tests
            _mp_names(name.split(".")[0][len("lockprof_mp_"):], where)
        suite.addTests(loader.loadTestsFromName(name))
    suite = _without(suite, LEFT_OUT)
    t0 = time.monotonic()
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=0, resultclass=_Result)
    result = runner.run(suite)
    report = {"ran": result.testsRun, "skipped": len(result.skipped), "bad": result.bad,
              "seconds": round(time.monotonic() - t0, 1)}
    lockprof = sys.modules.get("lockprof")
    if lockprof is not None and lockprof.is_running():
        report["profiled_locks"] = lockprof.counters().get("locks", 0)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
