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


def main() -> int:
    out, names = sys.argv[1], sys.argv[2:]
    suite = unittest.TestSuite()
    loader = unittest.defaultTestLoader
    for name in names:
        suite.addTests(loader.loadTestsFromName(name))
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
