"""A profiling session of a whole process, as `lockprof run` and
LOCKPROF_ENABLED start it: output naming, the write at exit (also on SIGTERM
and in forked children), periodic export with rotation."""
from __future__ import annotations

import _thread
import atexit
import os
import re
import signal
import sys
from typing import Any, Dict, List, Optional

import lockprof
from lockprof import _lockprof
from lockprof import export as formats

_EXT = formats.EXTENSION


class Session:
    """settings: the dict of lockprof._config (defaults() updated by the
    environment and the command line).  stem names the program in default
    output names; interactive sessions print the report at exit."""

    def __init__(self, settings: Dict[str, Any], stem: str, report: bool = True,
                 announce: bool = True):
        self.s = dict(settings)
        self.stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "python"
        self.report = report and not self.s["quiet"]
        self.announce = announce and not self.s["quiet"]
        self.template = self.s["output"]
        self.fmt = self.s["format"]
        self.parent_pid = os.getpid()
        self.pid = os.getpid()
        self._lock = _thread.allocate_lock()    # native: made by _thread, never profiled
        self._done_pid = None
        self._seq = 0
        self._stop_interval = None
        self._writer_ready = False
        self.errors: List[str] = []
        self.written: List[str] = []
        self.last = None
        self.output = self._resolve_output()

    # -- where profiles go -------------------------------------------------
    def _resolve_output(self) -> str:
        """Checks the output before anything runs; FormatError names it."""
        out = self.s["output"]
        if out is not None:
            out = out.replace("{pid}", str(self.pid))
        if self.s["interval"] is not None:
            directory = out or f"lockprof-{self.stem}.{self.pid}"
            if os.path.exists(directory) and not os.path.isdir(directory):
                raise formats.FormatError(
                    f"--interval writes into a directory, and {directory!r} is a file")
            parent = os.path.dirname(os.path.abspath(directory))
            if not os.path.isdir(directory):
                formats.check_writable(os.path.join(parent, "x"))
            else:
                formats.check_writable(os.path.join(directory, "x"))
            self.fmt = self.fmt or "pprof"
            return directory
        path = out or f"lockprof-{self.stem}.{self.pid}.{_EXT[self.fmt or 'pprof']}"
        self.fmt = formats.format_for(path, self.fmt) if (out or self.fmt) else "pprof"
        formats.check_writable(path)
        if os.path.exists(path) and not self.s["force"]:
            raise formats.FormatError(f"{path!r} exists; use --force to overwrite it")
        return path

    def _path(self) -> str:
        """This process's file (a forked child writes under its own pid)."""
        pid = os.getpid()
        if self.s["interval"] is not None:
            self._seq += 1
            return os.path.join(self.output,
                                f"lockprof-{self.stem}.{pid}.{self._seq:06d}.{_EXT[self.fmt]}")
        if pid == self.parent_pid:
            return self.output
        if self.template is not None and "{pid}" in self.template:
            return self.template.replace("{pid}", str(pid))
        token = f".{self.parent_pid}."
        if token in self.output:
            return self.output.replace(token, f".{pid}.")
        stem, ext = formats.split_ext(self.output)
        return f"{stem}.{pid}{ext}"

    def _rotate(self) -> None:
        pattern = re.compile(re.escape(f"lockprof-{self.stem}.{os.getpid()}.") + r"\d{6}\.")
        try:
            mine = sorted(n for n in os.listdir(self.output) if pattern.match(n))
        except OSError:
            return
        for name in mine[:-self.s["keep"]]:
            try:
                os.unlink(os.path.join(self.output, name))
            except OSError:
                pass

    def _write(self) -> Optional[str]:
        with self._lock:
            try:
                if self.s["interval"] is not None:
                    os.makedirs(self.output, exist_ok=True)
                path = self._path()
                formats.check_writable(path)
                lockprof._warn_errors()
                # one model per write: the file and the report at exit read it
                self.last = lockprof.profile(reset=self.s["interval"] is not None)
                formats.write(self.last, path, self.fmt)
                if self.s["interval"] is not None:
                    self._rotate()
                self.written.append(path)
                return path
            except Exception as e:   # the program goes on; the failure is told once
                msg = f"lockprof: could not write the profile: {e}"
                if msg not in self.errors:
                    self.errors.append(msg)
                    print(msg, file=sys.stderr)
                return None

    # -- life cycle ----------------------------------------------------------
    def start(self) -> None:
        s = self.s
        if s.get("own_code"):
            from lockprof.export._names import set_own_code
            set_own_code(s["own_code"])
        lockprof.start(s["sample_rate"], max_frames=s["max_frames"],
                       **{cap: s[cap] for cap in lockprof.CAPS},
                       exclude_modules=s["exclude_module"], include_modules=s["include_module"],
                       max_overhead=s.get("max_overhead", 1.0),
                       lock_order=s["lock_order"], max_order_edges=s["max_order_edges"],
                       hang_timeout=s["hang_timeout"], max_hang_waits=s["max_hang_waits"],
                       http=s.get("http"), http_max_clients=s.get("http_max_clients", 8))
        atexit.register(self.finish)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=self._before_fork, after_in_child=self._after_fork_child)
        self._install_sigterm()
        if s["interval"] is not None:
            self._start_interval()

    def _install_sigterm(self) -> None:
        # only where the program has not chosen its own handling; the process
        # still dies of SIGTERM, as it would unprofiled
        try:
            if (threading_main() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
                signal.signal(signal.SIGTERM, self._on_sigterm)
                # a SIGTERM that reaches the main thread in C code just before
                # a blocking call would leave the process waiting where it
                # would have died: the guard then kills it after a second
                # (runtime/lp_signal.c)
                _lockprof.sigterm_guard()
        except (ValueError, OSError, AttributeError):
            pass

    def _on_sigterm(self, signum, frame) -> None:
        _lockprof.sigterm_disarm()
        self.finish()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def _start_interval(self) -> None:
        stop = _thread.allocate_lock()
        stop.acquire()
        self._stop_interval = stop
        period = self.s["interval"]

        def loop():
            # a bare _thread thread: invisible to threading.enumerate() and
            # never keeps the process alive
            while not stop.acquire(True, period):
                if self._done_pid == os.getpid():
                    return
                self._write()

        _thread.start_new_thread(loop, ())

    def _before_fork(self) -> None:
        """The writer is imported once, in the parent, before its first fork:
        else every forked child that writes imports it again at exit (5 ms
        of its 7)."""
        if not self._writer_ready and lockprof.is_running():
            self._writer_ready = True
            try:
                __import__(f"lockprof.export.{self.fmt}")
            except Exception:
                pass

    def _after_fork_child(self) -> None:
        """A forked child starts a profile of its own."""
        if self._done_pid is not None or not lockprof.is_running():
            return
        self._lock = _thread.allocate_lock()
        self.pid = os.getpid()
        self._seq = 0          # (the tables were reset by lockprof's own fork hook)
        if self.s["interval"] is not None:
            self._start_interval()
        # multiprocessing's children end in os._exit, after its finalizers
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            try:
                mp_util.register_after_fork(self, Session._mp_child)
            except Exception:
                pass

    def _mp_child(self) -> None:
        from multiprocessing import util
        util.Finalize(self, self.finish, exitpriority=-1000)

    def _end_interval(self) -> None:
        if self._stop_interval is not None:
            try:
                self._stop_interval.release()
            except RuntimeError:
                pass

    def cancel(self) -> None:
        """Stop without writing (another session takes over)."""
        self._done_pid = os.getpid()
        atexit.unregister(self.finish)
        self._end_interval()
        lockprof.stop()

    def finish(self) -> None:
        """Stop and write this process's last profile, once."""
        pid = os.getpid()
        if self._done_pid == pid:
            return
        self._done_pid = pid
        self._end_interval()
        lockprof.stop()
        if self.s["lock_order"]:
            # a finding, not a table: printed even with -q
            from lockprof import _order
            text_ = _order.report(
                lockprof.lock_order_cycles(), lockprof._lockprof.lock_order_unordered(),
                lockprof._lockprof.lock_order_counters()["order_cycles_set_aside"])
            if text_:
                print(text_, file=sys.stderr)
        child = pid != self.parent_pid
        if child and not self.written and not lockprof._lockprof.snapshot():
            # a forked worker that took no profiled lock leaves no file
            return
        path = self._write()
        if path is None:
            return
        if self.report and not child and self.s["interval"] is None and self.last is not None:
            from lockprof.export import text
            print(text.report(self.last, self.s["top"], stacks=0 if self.fmt == "text" else 3),
                  file=sys.stderr)
        if self.announce:
            where = (f"{len(self.written)} profiles in {self.output}"
                     if self.s["interval"] is not None else path)
            who = f" (child {pid})" if child else ""
            print(f"lockprof{who}: profile written to {where}; next: "
                  + next_command(path, self.fmt), file=sys.stderr)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def next_command(path: str, fmt: str) -> str:
    if fmt == "pprof":
        return f"go tool pprof -http=: {path}  (or: lockprof report {path})"
    if fmt == "speedscope":
        return f"open it at https://www.speedscope.app or with `speedscope {path}`"
    if fmt == "collapsed":
        return f"flamegraph.pl {path} > locks.svg"
    if fmt == "html":
        return f"open {path} in a browser"
    return f"less {path}"
