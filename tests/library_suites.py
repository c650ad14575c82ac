"""Helpers shared by the tests of third-party lock types (anyio, trio):
a library's own pytest suite run plainly and under `lockprof run` at rate
1.0, and the one row of a kind."""
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Set

import lockprof

ROOT = Path(__file__).resolve().parent.parent


def only(kind: str):
    """The one stats() row of `kind`."""
    rows = [r for r in lockprof.stats() if r["kind"] == kind]
    assert len(rows) == 1, rows
    return rows[0]


def line_of(path: str, text: str) -> int:
    """The line of `path` holding `text` (the first)."""
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if text in line and "line_of" not in line:
            return i
    raise AssertionError(text)


def _summary(r) -> str:
    lines = [x for x in r.stdout.splitlines() if " passed" in x or " failed" in x]
    assert lines, r.stdout[-3000:] + r.stderr[-3000:]
    return lines[-1].split(" in ")[0]


def passes_profiled_as_plain(args: List[str], cwd, out: Path) -> Set[str]:
    """Runs `python <args>` (a pytest suite) plainly and profiled; both must
    pass with the same summary.  The kinds the profiled run recorded."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LOCKPROF_ENABLED", None)
    plain = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True,
                           timeout=600, env=env)
    # every acquisition recorded: the CPU budget off (under a sanitizer a
    # recorded event costs tenfold, and the budget would lower the rate)
    profiled = subprocess.run([sys.executable, "-m", "lockprof", "run", "--sample-rate", "1.0",
                               "--max-overhead", "0", "-q", "-o", str(out)] + args, cwd=cwd, capture_output=True,
                              text=True, timeout=600, env=env)
    assert _summary(profiled) == _summary(plain)
    assert " passed" in _summary(plain) and "failed" not in _summary(plain), _summary(plain)
    from lockprof.export import pprof
    return {s["kind"] for s in pprof.read(str(out)).samples()}
