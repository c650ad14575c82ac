"""python -m bench [--quick] [--json FILE] [--md FILE]"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from . import micro, sampled


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout.strip()
    except OSError:
        return "unknown"


def table(results) -> str:
    cols = [c for c, _ in micro.CONFIGS]
    lines = ["| type | op | " + " | ".join(f"{c} ns" for c in cols) + " | default/native |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for r in results:
        cells = " | ".join(f"{r['ns'][c]:.0f}" for c in cols)
        lines.append(f"| {r['type']} | {r['op']} | {cells} | {r['ratio']['rate 0.01']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="lockprof microbenchmarks")
    p.add_argument("--quick", action="store_true", help="few rounds (smoke test)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--loops", type=int, default=2000)
    p.add_argument("--json", help="write results as JSON to this file")
    p.add_argument("--md", help="write the Markdown table to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.loops = 2, 50
    meta = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
            "commit": _commit(), "rounds": args.rounds, "loops": args.loops * micro.UNROLL}
    results = micro.measure(rounds=args.rounds, loops=args.loops)
    events = sampled.measure(rounds=args.rounds, loops=max(10, args.loops))
    md = (f"{meta['date']}, CPython {meta['python']}, {meta['machine']}, commit {meta['commit']}; "
          f"min of {meta['rounds']} interleaved rounds\n\n" + table(results) +
          "\n\nOne recorded event (a sampled acquisition or its hold, with its stack):\n\n"
          "| stack depth | ns per recorded event |\n|---|---|\n" +
          "\n".join(f"| {e['depth']} | {e['ns_per_event']:.0f} |" for e in events))
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "sampled_event": events}, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
