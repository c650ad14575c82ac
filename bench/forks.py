"""What a forked child costs at exit under lockprof (issue 14):
`python -m bench.forks`.

A program forks 100 children one after the other and waits for each; the
time per child (fork + exit + wait) is measured natively, under
`lockprof run -q` with children that take no lock (they write no file), and
with children that take one lock (each writes its profile; rate 1).  The three runs
are interleaved, five rounds, the minimum kept."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

PROGRAM = """
import os, sys, threading, time
take = sys.argv[1] == "1"
lock = threading.Lock()
t = time.perf_counter()
for i in range(100):
    pid = os.fork()
    if pid == 0:
        if take:
            with lock:
                pass
        raise SystemExit(0)
    os.waitpid(pid, 0)
print((time.perf_counter() - t) * 1e3 / 100)
"""


def _one(mode: str, prog: str, cwd: str) -> float:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    if mode == "native":
        cmd = [sys.executable, prog, "0"]
    else:
        cmd = [sys.executable, "-m", "lockprof", "run", "-q", "--force", "--sample-rate", "1",
               "-o",
               os.path.join(cwd, "p.pprof"), prog, "1" if mode == "children lock" else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd, env=env)
    return float(out.stdout.split()[-1])


def main() -> int:
    modes = ("native", "children take no lock", "children lock")
    best = {m: float("inf") for m in modes}
    with tempfile.TemporaryDirectory() as d:
        prog = os.path.join(d, "forks.py")
        with open(prog, "w") as f:
            f.write(PROGRAM)
        files = {}
        for _ in range(5):
            for m in modes:
                before = set(os.listdir(d))
                best[m] = min(best[m], _one(m, prog, d))
                files[m] = len([n for n in set(os.listdir(d)) - before if n.endswith(".pprof")])
    print("ms per forked child (fork + exit + wait; min of 5 interleaved runs of 100):")
    for m in modes:
        extra = f" (+{best[m] - best['native']:.2f})" if m != "native" else ""
        left = f"; {files[m]} new profile files in the last run" if m != "native" else ""
        print(f"  {m}: {best[m]:.2f}{extra}{left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
