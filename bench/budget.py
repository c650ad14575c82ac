"""The CPU budget (--max-overhead) on a program taking a threading.Lock in a
tight loop: locks a second, lockprof's recording time over wall time, and
the estimated acquisitions against the true count, at sample rates 1 and
0.01 with the budget off (0) and at its default (1%).  Each configuration
runs in a fresh interpreter.

    python -m bench.budget [--seconds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List

PROGRAM = """
import json, sys, threading, time
import lockprof
rate, budget, seconds = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
lockprof.start(rate, max_overhead=budget)
lock = threading.Lock()
n = 0
t0 = time.perf_counter()
end = t0 + seconds
while time.perf_counter() < end:
    for _ in range(10000):
        with lock:
            pass
    n += 10000
wall = time.perf_counter() - t0
c = lockprof.counters()
est = sum(r["acquisitions"] for r in lockprof.stats() if r["var"] == "lock")
print(json.dumps({"ops": n, "wall": wall, "est": est, "recording_ns": c["recording_ns"],
                  "rate_cuts": c["rate_cuts"]}))
"""


def measure(seconds: float = 3.0) -> List[Dict]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = []
    for rate, budget in ((1.0, 0.0), (1.0, 1.0), (0.01, 0.0), (0.01, 1.0)):
        r = subprocess.run([sys.executable, "-c", PROGRAM, str(rate), str(budget), str(seconds)],
                           capture_output=True, text=True, timeout=300, env=env, check=True)
        d = json.loads(r.stdout)
        out.append({"sample_rate": rate, "max_overhead": budget,
                    "locks_per_s": round(d["ops"] / d["wall"]),
                    "recording_share": round(d["recording_ns"] / 1e9 / d["wall"], 5),
                    "estimate_error": round(d["est"] / d["ops"] - 1, 5),
                    "rate_cuts": d["rate_cuts"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print("| --sample-rate | --max-overhead | locks / s | recording / wall | estimate vs true |")
    print("|---:|---:|---:|---:|---:|")
    for r in measure(args.seconds):
        print(f"| {r['sample_rate']:g} | {r['max_overhead']:g} | {r['locks_per_s'] / 1e6:.2f} M | "
              f"{100 * r['recording_share']:.2f}% | {100 * r['estimate_error']:+.2f}% |")


if __name__ == "__main__":
    main()
