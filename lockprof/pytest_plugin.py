"""pytest plugin (entry point `pytest11`), off unless asked.

    pytest --lockprof                 profile the session; top locks in the summary
    pytest --lockprof-dir DIR         also one profile per test in DIR
    [pytest] lockprof = true          the ini twins: lockprof, lockprof_dir,
                                      lockprof_sample_rate, lockprof_format
    @pytest.mark.limit_lock_wait("10 ms")
                                      fail a test whose total lock wait (all its
                                      threads, exact) exceeds the budget

Each test is one window of the profile (setup, call and teardown), taken and
cleared atomically at its end, so per-test numbers never mix."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

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
    parser.addini("lockprof", "profile the test session's locks (like --lockprof)",
                  type="bool", default=False)
    parser.addini("lockprof_dir", "directory of per-test profiles (like --lockprof-dir)",
                  default="")
    parser.addini("lockprof_sample_rate", "like --lockprof-sample-rate", default="")
    parser.addini("lockprof_format", "like --lockprof-format", default="")


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
    def __init__(self, enabled: bool, directory: Optional[str], rate: float, fmt: str):
        self.enabled = enabled
        self.directory = directory
        self.rate = rate
        self.fmt = fmt
        self.started = False
        self.rows: List[Dict[str, Any]] = []          # every window's rows, merged
        self.per_test: List[tuple] = []               # (wait ns, nodeid)
        self.written: List[str] = []
        self.errors: List[str] = []
        self._pending: List[Dict[str, Any]] = []

    @classmethod
    def from_config(cls, config) -> "LockprofPlugin":
        from lockprof import _config, formats

        directory = _choice(config, "lockprof_dir", "lockprof_dir") or None
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
        return cls(enabled, directory, rate, fmt)

    # -- life cycle ----------------------------------------------------------
    def _start(self):
        import lockprof
        if not self.started:
            lockprof.reset()
            lockprof.start(self.rate)
            self.started = True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session):
        if self.enabled:    # before collection: module-level locks are covered too
            self._start()

    def pytest_collection_modifyitems(self, session, config, items):
        if not self.started and any(i.get_closest_marker("limit_lock_wait") for i in items):
            self._start()    # the marker alone: locks made from here on

    def _take(self) -> List[Dict[str, Any]]:
        import lockprof
        win = lockprof._current(take=True)
        self.rows.extend(win.rows)
        return win.rows

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if self.started:
            self._take()     # what happened between tests stays out of this one

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        marker = item.get_closest_marker("limit_lock_wait")
        if not self.started or marker is None:
            yield
            return
        self._pending = self._take()            # setup's events
        outcome = yield
        call = self._take()
        self._pending = self._pending + call
        try:
            budget = parse_budget(marker.args[0] if marker.args else marker.kwargs.get("budget"))
        except ValueError as e:
            _fail(outcome, str(e))
            return
        message = over_budget(call, budget)
        if message is not None and outcome.excinfo is None:
            _fail(outcome, message)

    def pytest_runtest_logfinish(self, nodeid, location):
        if not self.started:
            return
        rows = self._pending + self._take()
        self._pending = []
        wait = sum(r["value"] for r in rows if r["event"] == "contention")
        self.per_test.append((wait, nodeid))
        if self.directory is not None:
            self._write_test(nodeid, rows)

    def _write_test(self, nodeid: str, rows):
        import lockprof
        from lockprof import formats, pprof

        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:200]
        path = os.path.join(self.directory, f"{name}.{formats.EXTENSION[self.fmt]}")
        try:
            import time
            formats.write_rows(path, self.fmt, rows, sample_rate=self.rate,
                               title=f"lockprof: {nodeid}", time_nanos=time.time_ns(),
                               comments=pprof.profile_comments(self.rate, None,
                                                               lockprof.counters())
                               + [f"lockprof test {nodeid}"])
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
        from lockprof.report import stats_from_samples, text_table

        tr = terminalreporter
        tr.section("lockprof: lock contention")
        records = stats_from_samples(self.rows)
        tr.write_line(text_table(records, 10, self.rate, samples=self.rows))
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


def over_budget(rows, budget_ns: float) -> Optional[str]:
    """The failure message when the rows' total wait exceeds the budget."""
    from lockprof.report import hot_stacks, short_name

    by_lock: Dict[str, List[float]] = {}
    total = 0.0
    for r in rows:
        if r["event"] == "contention":
            total += r["value"]
            w = by_lock.setdefault(r["lock_name"], [0.0, 0, r["kind"]])
            w[0] += r["value"]
            w[1] += r["count"]
    if total <= budget_ns:
        return None
    lines = [f"lock wait {_fmt_ns(total)} exceeds the limit_lock_wait budget of "
             f"{_fmt_ns(budget_ns)}"]
    for name, (wait, count, kind) in sorted(by_lock.items(), key=lambda kv: -kv[1][0])[:3]:
        lines.append(f"  {_fmt_ns(wait)} in {count:.0f} waits on {short_name(name)} ({kind})")
        lines += [f"    {s}" for s in hot_stacks(rows, name, n=1, depth=4)]
    return "\n".join(lines)


def _fail(outcome, message: str) -> None:
    exc = pytest.fail.Exception(message, pytrace=False)
    if hasattr(outcome, "force_exception"):
        outcome.force_exception(exc)
    else:   # pluggy < 1.1
        outcome._excinfo = (type(exc), exc, None)
