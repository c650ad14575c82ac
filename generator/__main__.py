"""python -m generator [--check] [--spec FILE] [--out DIR]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import model, render


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m generator",
                                description="Render lockprof's C wrapper types from the lock spec.")
    p.add_argument("--check", action="store_true",
                   help="do not write; exit 1 naming the files that differ from a fresh render")
    p.add_argument("--spec", type=Path, default=render.DEFAULT_SPEC, help="lock spec (JSON)")
    p.add_argument("--templates", type=Path, default=render.DEFAULT_TEMPLATES)
    p.add_argument("--out", type=Path, default=render.DEFAULT_OUT, help="output folder")
    args = p.parse_args(argv)
    try:
        files = render.render(args.spec, args.templates)
    except (model.SpecError, OSError) as e:
        print(f"generator: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        bad = render.stale(files, args.out)
        if bad:
            print("generator: out of date (run `python -m generator`): " + ", ".join(bad),
                  file=sys.stderr)
            return 1
        print(f"generator: {len(files)} files up to date")
        return 0
    changed = render.write(files, args.out)
    print(f"generator: {len(changed)} of {len(files)} files written"
          + (": " + ", ".join(changed) if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
