"""pytest plugin (entry point `pytest11`), off unless asked.

    pytest --lockprof                 profile the session; top locks in the summary
    pytest --lockprof-dir DIR         also one profile per test in DIR
    pytest --lockprof-lock-order      fail a test during which a lock-order
                                      inversion (a potential deadlock) was found
    [pytest] lockprof = true          the ini twins: lockprof, lockprof_dir,
                                      lockprof_sample_rate, lockprof_format,
                                      lockprof_lock_order
    @pytest.mark.limit_lock_wait("10 ms")
                                      fail a test whose total lock wait (all its
                                      threads, exact) exceeds the budget

Each test is one window of the profile (setup, call and teardown), taken and
cleared atomically at its end, so per-test numbers never mix."""
from __future__ import annotations

import os
import re
from typing import Any, List, Optional

import pytest

_UNITS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}
_BUDGET = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ns|us|µs|ms|s)?\s*\Z")


def parse_budget(value: Any) -> float:
    """'10 ms', '1.5s', '200 us', 0.01 (seconds) -> nanoseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value) * 1e9
    m = _BUDGET.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"limit_lock_wait: {value!r} is not a duration "
                         f"(a number with ns, us, ms or s, like '10 ms'; a bare number is seconds)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _fmt_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} us"
    return f"{ns:.0f} ns"


def pytest_addoption(parser):
    group = parser.getgroup("lockprof", "lock-contention profiling (lockprof)")
    group.addoption("--lockprof", action="store_true", default=None,
                    help="profile the test session's locks; top locks in the summary")
    group.addoption("--lockprof-dir", default=None, metavar="DIR",
                    help="write one profile per test into DIR (implies --lockprof)")
    group.addoption("--lockprof-sample-rate", default=None, metavar="R",
                    help="sampling rate of acquisitions and holds (default 0.01); "
                         "contentions and waits are always exact")
    group.addoption("--lockprof-format", default=None, metavar="FORMAT",
                    help="format of the per-test profiles (default pprof)")
    group.addoption("--lockprof-lock-order", action="store_true", default=None,
                    help="find lock-order inversions (potential deadlocks); a test during "
                         "which one is found fails with its report (implies --lockprof)")
    parser.addini("lockprof", "profile the test session's locks (like --lockprof)",
                  type="bool", default=False)
    parser.addini("lockprof_dir", "directory of per-test profiles (like --lockprof-dir)",
                  default="")
    parser.addini("lockprof_sample_rate", "like --lockprof-sample-rate", default="")
    parser.addini("lockprof_format", "like --lockprof-format", default="")
    parser.addini("lockprof_lock_order", "like --lockprof-lock-order", type="bool",
                  default=False)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "limit_lock_wait(budget): fail the test when its threads wait on locks "
                   "longer than budget in total ('10 ms', '1.5 s', or seconds)")
    plugin = LockprofPlugin.from_config(config)
    config.pluginmanager.register(plugin, "lockprof-plugin")


def _choice(config, opt: str, ini: str):
    value = config.getoption(opt)
    if value is None or value == "":
        value = config.getini(ini)
    return value


class LockprofPlugin:
    def __init__(self, enabled: bool, directory: Optional[str], rate: float, fmt: str,
                 lock_order: bool = False):
        self.enabled = enabled or lock_order
        self.lock_order = lock_order
        self._cycles_seen: set = set()
        self.directory = directory
        self.rate = rate
        self.fmt = fmt
        self.started = False
        self.session = None     # lockprof.export.Builder: every window, folded as it comes
        self.per_test: List[tuple] = []               # (wait ns, nodeid)
        self.written: List[str] = []
        self.errors: List[str] = []
        self._pending: List[Any] = []

    @classmethod
    def from_config(cls, config) -> "LockprofPlugin":
        from lockprof import _config
        from lockprof import export as formats

        directory = _choice(config, "lockprof_dir", "lockprof_dir") or None
        lock_order = bool(_choice(config, "lockprof_lock_order", "lockprof_lock_order"))
        enabled = bool(_choice(config, "lockprof", "lockprof")) or directory is not None
        rate_text = _choice(config, "lockprof_sample_rate", "lockprof_sample_rate") or "0.01"
        fmt = _choice(config, "lockprof_format", "lockprof_format") or "pprof"
        try:
            rate = _config.parse_value(_config.BY_NAME["sample_rate"], str(rate_text),
                                       "--lockprof-sample-rate")
            fmt = _config.parse_value(_config.BY_NAME["format"], fmt, "--lockprof-format")
            if directory is not None:
                os.makedirs(directory, exist_ok=True)
                formats.check_writable(os.path.join(directory, "x"))
        except (_config.ConfigError, formats.FormatError, OSError) as e:
            raise pytest.UsageError(f"lockprof: {e}") from None
        return cls(enabled, directory, rate, fmt, lock_order)

    # -- life cycle ----------------------------------------------------------
    def _start(self):
        import lockprof
        if not self.started:
            lockprof.reset()
            lockprof.start(self.rate, lock_order=self.lock_order)
            self.started = True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session):
        if self.enabled:    # before collection: module-level locks are covered too
            self._start()

    def pytest_collection_modifyitems(self, session, config, items):
        if not self.started and any(i.get_closest_marker("limit_lock_wait") for i in items):
            self._start()    # the marker alone: locks made from here on

    def _take(self) -> List[Any]:
        """This window's profile (cleared from the tables in the same step);
        empty windows are not kept."""
        import lockprof
        from lockprof.export.model import Builder
        win = lockprof.profile(reset=True)
        if win.nrows == 0 and not win.active_locks():
            return []
        if self.session is None:
            self.session = Builder()
        self.session.add_profile(win)       # the session's summary: nothing kept per window
        return [win]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if self.started:
            self._take()     # what happened between tests stays out of this one
            if self.lock_order:
                import lockprof
                # by identity: a cycle set aside later (a lock found
                # unordered) leaves the list, so its length does not count
                self._cycles_seen = {id(c) for c in lockprof.lock_order_cycles()}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        marker = item.get_closest_marker("limit_lock_wait")
        if not self.started or (marker is None and not self.lock_order):
            yield
            return
        if marker is None:
            outcome = yield
            self._check_order(outcome)
            return
        self._pending = self._take()            # setup's events
        outcome = yield
        windows = self._take()
        call = _merged(windows)
        self._pending = self._pending + windows
        try:
            budget = parse_budget(marker.args[0] if marker.args else marker.kwargs.get("budget"))
        except ValueError as e:
            _fail(outcome, str(e))
            return
        message = over_budget(call, budget)
        if message is not None and outcome.excinfo is None:
            _fail(outcome, message)
        self._check_order(outcome)

    def _check_order(self, outcome) -> None:
        """The test fails when a lock-order inversion was found during it
        (its setup included): the report is the failure message."""
        if not self.lock_order:
            return
        import lockprof
        from lockprof import _order
        cycles = lockprof.lock_order_cycles()
        seen = self._cycles_seen
        new = [c for c in cycles if id(c) not in seen]
        self._cycles_seen = seen | {id(c) for c in cycles}
        if new and outcome.excinfo is None:
            _fail(outcome, _order.report(new))

    def pytest_runtest_logfinish(self, nodeid, location):
        if not self.started:
            return
        test = _merged(self._pending + self._take())
        self._pending = []
        wait = sum(lk["wait_ns"] for lk in test.locks)
        self.per_test.append((wait, nodeid))
        if self.directory is not None:
            self._write_test(nodeid, test)

    def _write_test(self, nodeid: str, test):
        from lockprof import export

        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:200]
        path = os.path.join(self.directory, f"{name}.{export.EXTENSION[self.fmt]}")
        try:
            test.title = f"lockprof: {nodeid}"
            test.extra_comments.append(f"lockprof test {nodeid}")
            export.write(test, path, self.fmt)
            self.written.append(path)
        except Exception as e:     # a profile that cannot be written never fails a test
            self.errors.append(f"{path}: {e}")

    def pytest_sessionfinish(self, session):
        import lockprof
        if self.started:
            self._take()
            lockprof.stop()

    def pytest_terminal_summary(self, terminalreporter):
        if not self.enabled or not self.started:
            return
        from lockprof.export import text

        tr = terminalreporter
        tr.section("lockprof: lock contention")
        import lockprof
        if self.session is None:
            summary = _merged([])
        else:
            summary = self.session.build(exact=self.session.exact,
                                         sample_rate=lockprof._window["sample_rate"])
        tr.write_line(text.report(summary, 10))
        slow = sorted((t for t in self.per_test if t[0] > 0), reverse=True)[:5]
        if slow:
            tr.write_line("")
            tr.write_line("tests with the most lock wait:")
            for wait, nodeid in slow:
                tr.write_line(f"  {_fmt_ns(wait):>10}  {nodeid}")
        if self.directory is not None:
            tr.write_line(f"lockprof: {len(self.written)} per-test profiles in {self.directory}")
        for err in self.errors[:3]:
            tr.write_line(f"lockprof: could not write {err}")


def _merged(windows):
    """One profile of the windows (an empty one when there are none)."""
    import lockprof
    from lockprof.export import Profile

    if len(windows) == 1:
        return windows[0]
    p = Profile.merge(windows)
    if not windows:
        p.sample_rate = lockprof._window["sample_rate"]
    return p


def over_budget(test, budget_ns: float) -> Optional[str]:
    """The failure message when a test's total wait (exact) exceeds the budget."""
    from lockprof.export import text

    total = sum(lk["wait_ns"] for lk in test.locks)
    if total <= budget_ns:
        return None
    lines = [f"lock wait {_fmt_ns(total)} exceeds the limit_lock_wait budget of "
             f"{_fmt_ns(budget_ns)}"]
    worst = sorted(range(len(test.locks)), key=lambda i: -test.locks[i]["wait_ns"])[:3]
    for i in worst:
        lk = test.locks[i]
        if not lk["wait_ns"]:
            continue
        lines.append(f"  {_fmt_ns(lk['wait_ns'])} in {lk['contentions']:.0f} waits on "
                     f"{text.shown_name(lk)} ({lk['kind']})")
        lines += [f"    {s}" for s in text.hot_stacks(test, i, n=1, depth=4)]
    return "\n".join(lines)


def _fail(outcome, message: str) -> None:
    exc = pytest.fail.Exception(message, pytrace=False)
    if hasattr(outcome, "force_exception"):
        outcome.force_exception(exc)
    else:   # pluggy < 1.1
        outcome._excinfo = (type(exc), exc, None)
