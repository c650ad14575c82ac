"""Profiling from interpreter start, without code changes: the file
lockprof-autostart.pth, which pip puts in site-packages, imports this module
when LOCKPROF_ENABLED is set (1, true, yes or on).  The settings come from
the LOCKPROF_* twins of `lockprof run`'s options; the profile is written at
exit (also on SIGTERM, and by each forked child under its own pid).

A bad setting is reported in one line on stderr and profiling stays off: the
program itself always runs."""
from __future__ import annotations

import os
import sys
from typing import Optional

session = None   # the running Session, if any


def _stem() -> str:
    argv = sys.argv or [""]
    if argv[0] == "-c":
        return "c"
    if argv[0] == "-m":
        orig = getattr(sys, "orig_argv", [])
        if "-m" in orig[:-1]:
            return orig[orig.index("-m") + 1].replace(".", "_")
        return "m"
    base = os.path.basename(argv[0])
    return os.path.splitext(base)[0] or "python"


def start() -> Optional[object]:
    global session
    from lockprof import _config
    from lockprof._session import Session

    try:
        if session is not None or not _config.enabled(os.environ):
            return session
        settings = _config.defaults()
        settings.update(_config.from_env(os.environ))
        s = Session(settings, _stem(), report=False)
        s.start()
        session = s
    except Exception as e:   # never stop the program from running
        print(f"lockprof: error: {e}; profiling is off", file=sys.stderr)
    return session


start()
