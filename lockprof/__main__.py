"""lockprof's command line: `lockprof run [options] (-m module | -c code | script.py) [args...]`."""
from __future__ import annotations

import argparse
import os
import runpy
import sys

import lockprof
from lockprof.report import text_table


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _ArgError(message)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sample rate {text!r} is not a number in [0, 1]") from None
    if not (0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"sample rate {text!r} is not a number in [0, 1]")
    return value


FORMATS = ("pprof", "collapsed", "speedscope", "text")


def _env_defaults() -> dict:
    """Defaults of `run` from the environment (LOCKPROF_*); a bad value is
    reported naming the variable, before anything runs."""
    out = {}
    rate = os.environ.get("LOCKPROF_SAMPLE_RATE")
    if rate is not None:
        try:
            out["sample_rate"] = _rate(rate)
        except argparse.ArgumentTypeError:
            raise _ArgError(f"LOCKPROF_SAMPLE_RATE={rate!r} is not a number in [0, 1]") from None
    frames = os.environ.get("LOCKPROF_MAX_FRAMES")
    if frames is not None:
        try:
            out["max_frames"] = _frames(frames)
        except argparse.ArgumentTypeError:
            raise _ArgError(f"LOCKPROF_MAX_FRAMES={frames!r} is not an integer in [1, 512]") from None
    fmt = os.environ.get("LOCKPROF_FORMAT")
    if fmt is not None:
        if fmt not in FORMATS:
            raise _ArgError(f"LOCKPROF_FORMAT={fmt!r} is not one of {', '.join(FORMATS)}")
        out["format"] = fmt
    if os.environ.get("LOCKPROF_OUTPUT"):
        out["output"] = os.environ["LOCKPROF_OUTPUT"]
    return out


def _frames(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 512:
        raise argparse.ArgumentTypeError(f"max frames {text!r} is not an integer in [1, 512]")
    return value


def _parser(run_defaults=None) -> argparse.ArgumentParser:
    p = _Parser(prog="lockprof", description="Lock-contention profiler for CPython.")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a Python program under the profiler")
    run.add_argument("--sample-rate", type=_rate, default=lockprof.DEFAULT_SAMPLE_RATE,
                     help="probability that an acquisition is sampled (default 0.01)")
    run.add_argument("--top", type=int, default=10, help="locks shown in the report (default 10)")
    run.add_argument("-q", "--quiet", action="store_true", help="print no report")
    run.add_argument("-o", "--output", help="profile file (default: lockprof-<script>.<pid>.pprof)")
    run.add_argument("-f", "--format", choices=FORMATS,
                     help="output format (default: from the output's extension)")
    run.add_argument("--max-frames", type=_frames, default=lockprof.DEFAULT_MAX_FRAMES,
                     help="frames kept per stack (default 64)")
    run.add_argument("--force", action="store_true", help="overwrite an existing output file")
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("-m", dest="module", help="run a library module as a script")
    target.add_argument("-c", dest="code", help="run a program passed as a string")
    target.add_argument("script", nargs="?", help="the script to run")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the program")
    run.set_defaults(**(run_defaults or {}))
    rep = sub.add_parser("report", help="the text report of a saved profile")
    rep.add_argument("file")
    rep.add_argument("--top", type=int, default=10)
    rep.add_argument("--sort", choices=("wait", "hold", "contentions", "acquisitions"),
                     default="wait")
    rep.add_argument("--json", action="store_true", help="per-lock records as JSON")
    conv = sub.add_parser("convert", help="convert a saved pprof profile to another format")
    conv.add_argument("file")
    conv.add_argument("-f", "--format", required=True,
                      choices=("pprof", "collapsed", "speedscope", "text"))
    conv.add_argument("-o", "--output")
    conv.add_argument("--force", action="store_true")
    return p


def _default_output(ns) -> str:
    if ns.module:
        stem = ns.module.replace(".", "_")
    elif ns.code is not None:
        stem = "c"
    else:
        stem = os.path.splitext(os.path.basename(ns.script))[0]
    ext = {"pprof": "pprof", "collapsed": "folded", "speedscope": "speedscope.json",
           "text": "txt"}[ns.format or "pprof"]
    return f"lockprof-{stem}.{os.getpid()}.{ext}"


def _check_output(ns) -> str:
    from lockprof import formats

    path = ns.output or _default_output(ns)
    try:
        formats.format_for(path, ns.format)
        formats.check_writable(path)
    except formats.FormatError as e:
        raise _ArgError(str(e)) from None
    if os.path.exists(path) and not ns.force:
        raise _ArgError(f"{path!r} exists; use --force to overwrite it")
    return path


def _load(path: str):
    from lockprof import pprof

    try:
        return pprof.read(path)
    except pprof.ProfileError as e:
        raise _ArgError(str(e)) from None


def _report(ns) -> int:
    import json

    from lockprof.report import stats_from_samples

    prof = _load(ns.file)
    records = stats_from_samples(prof["samples"])
    if ns.json:
        print(json.dumps(records, indent=1))
        return 0
    rate = next((c.split("=", 1)[1] for c in prof["comments"]
                 if c.startswith("lockprof sample_rate=")), "None")
    print(text_table(records, ns.top, float(rate) if rate != "None" else 0.0, sort=ns.sort))
    return 0


def _convert(ns) -> int:
    from lockprof import formats, pprof
    from lockprof.report import stats_from_samples

    prof = _load(ns.file)
    ext = {"pprof": "pprof", "collapsed": "folded", "speedscope": "speedscope.json",
           "text": "txt"}[ns.format]
    out = ns.output or os.path.splitext(ns.file)[0] + "." + ext
    try:
        formats.check_writable(out)
    except formats.FormatError as e:
        raise _ArgError(str(e)) from None
    if os.path.exists(out) and not ns.force:
        raise _ArgError(f"{out!r} exists; use --force to overwrite it")
    rows = prof["samples"]
    if ns.format == "pprof":
        pprof.write(out, rows, time_nanos=prof["time_nanos"],
                    duration_nanos=prof["duration_nanos"], comments=prof["comments"])
    elif ns.format == "text":
        formats.write_text(out, text_table(stats_from_samples(rows), 20) + "\n")
    else:
        formats.write_text(out, formats.WRITERS[ns.format](rows))
    print(f"lockprof: wrote {out}", file=sys.stderr)
    return 0


def _run_target(ns) -> int:
    code = 0
    output = _check_output(ns)       # before any of the program runs
    if ns.module:
        sys.argv = [ns.module] + ns.args
        runner = lambda: runpy.run_module(ns.module, run_name="__main__", alter_sys=True)  # noqa
    elif ns.code is not None:
        sys.argv = ["-c"] + ns.args
        runner = lambda: exec(compile(ns.code, "<string>", "exec"), {"__name__": "__main__"})  # noqa
    else:
        if not os.path.isfile(ns.script):
            raise _ArgError(f"script {ns.script!r} not found")
        sys.argv = [ns.script] + ns.args
        sys.path.insert(0, os.path.dirname(os.path.abspath(ns.script)))
        runner = lambda: runpy.run_path(ns.script, run_name="__main__")  # noqa
    lockprof.start(ns.sample_rate, max_frames=ns.max_frames)
    try:
        runner()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    finally:
        lockprof.stop()
        lockprof.write(output, ns.format)
        if not ns.quiet:
            print(text_table(lockprof.stats(), ns.top, ns.sample_rate), file=sys.stderr)
            print(f"lockprof: profile written to {output}; next: "
                  + _next_command(output, ns.format), file=sys.stderr)
    return code


def _next_command(path: str, fmt) -> str:
    from lockprof import formats

    kind = formats.format_for(path, fmt)
    if kind == "pprof":
        return f"go tool pprof -http=: {path}  (or -top; the default view is delay)"
    if kind == "speedscope":
        return f"open {path} at speedscope.app or with `speedscope {path}`"
    if kind == "collapsed":
        return f"flamegraph.pl {path} > locks.svg"
    return f"less {path}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # options of `run` end at the target; what follows it is the program's
        if argv and argv[0] == "run":
            head, rest = ["run"], argv[1:]
            i = 0
            while i < len(rest):
                a = rest[i]
                if a in ("-m", "-c"):
                    head += rest[i:i + 2]
                    tail = rest[i + 2:]
                    break
                if a in ("--sample-rate", "--top", "-o", "--output", "-f", "--format",
                         "--max-frames"):
                    head += rest[i:i + 2]
                    i += 2
                    continue
                if a.startswith("-"):
                    head.append(a)
                    i += 1
                    continue
                head.append(a)
                tail = rest[i + 1:]
                break
            else:
                tail = []
            ns = _parser(_env_defaults()).parse_args(head)
            ns.args = tail
            return _run_target(ns)
        ns = _parser().parse_args(argv)
        if ns.command is None:
            _parser().print_help()
            return 2
        if ns.command == "report":
            return _report(ns)
        if ns.command == "convert":
            return _convert(ns)
    except _ArgError as e:
        print(f"lockprof: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
