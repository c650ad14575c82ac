"""lockprof's command line: `lockprof run [options] (-m module | -c code | script.py) [args...]`."""
from __future__ import annotations

import argparse
import os
import runpy
import sys

from lockprof import _config


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _ArgError(message)


_VALUE_FLAGS = {f for o in _config.OPTIONS if o.parse is not None for f in o.flags}


def _argtype(opt):
    def parse(text):
        try:
            return opt.parse(text)
        except _config.ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = opt.name.replace("_", " ")
    return parse


COMMANDS = ("run", "report", "convert", "flamegraph", "merge")


def _parser(only=None) -> argparse.ArgumentParser:
    """The command line's parser; `only`: build that subcommand alone (each
    argparse parser costs a few gettext lookups: `lockprof run` builds one)."""
    p = _Parser(prog="lockprof", description="Lock-contention profiler for CPython.")
    sub = p.add_subparsers(dest="command")
    if only in (None, "run"):
        _run_parser(sub)
    if only in (None, "report", "convert", "flamegraph", "merge"):
        _file_parsers(sub)
    return p


def _run_parser(sub) -> None:
    run = sub.add_parser(
        "run", help="run a Python program under the profiler",
        description="Run a Python program as `python` would, profiling its locks; the "
                    "profile is written at exit (also on an uncaught exception or SIGTERM). "
                    "Every option has an environment twin: LOCKPROF_<OPTION>, e.g. "
                    "LOCKPROF_SAMPLE_RATE=0.1; the command line wins.")
    for opt in _config.OPTIONS:
        kw = {"dest": opt.name, "help": f"{opt.help} [{opt.env}]"}
        if opt.parse is None:
            kw["action"] = "store_true"
        else:
            kw["type"] = _argtype(opt)
            kw["metavar"] = opt.metavar
            if opt.repeat:
                kw["action"] = "append"
        run.add_argument(*opt.flags, **kw)
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("-m", dest="module", help="run a library module as a script")
    target.add_argument("-c", dest="code", help="run a program passed as a string")
    target.add_argument("script", nargs="?", help="the script to run")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the program")


_FILES_HELP = ("pprof files, or directories of them (the output of --interval and of forked "
               "workers): read as one profile, figures summed")


def _label_name(text: str) -> str:
    from lockprof._labels import _is_key
    if not _is_key(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a label name (letters, digits, '_', '.', '-', not starting "
            f"with a digit)")
    return text


def _file_parsers(sub) -> None:
    rep = sub.add_parser("report", help="the text report of saved profiles")
    rep.add_argument("files", nargs="+", metavar="FILE", help=_FILES_HELP)
    rep.add_argument("--top", type=_config.BY_NAME["top"].parse, default=10)
    rep.add_argument("--sort", choices=("wait", "lock-wait", "hold", "contentions",
                                        "acquisitions"), default="wait",
                     help="wait (default): the time threads were blocked, lock wait and "
                          "Condition wait of requests together; lock-wait: lock wait only")
    own = _config.BY_NAME["own_code"]
    rep.add_argument("--own-code", metavar="PATH", action="append", default=[],
                     type=_argtype(own), help=f"{own.help} [{own.env}]")
    rep.add_argument("--json", action="store_true", help="per-lock records as JSON")
    rep.add_argument("--by", metavar="LABEL", type=_label_name,
                     help="group the figures by a request label (lockprof.labels; the "
                          "middleware's is 'endpoint')")
    conv = sub.add_parser("convert", help="convert saved pprof profiles to another format")
    conv.add_argument("files", nargs="+", metavar="FILE", help=_FILES_HELP)
    conv.add_argument("-f", "--format", required=True, choices=_config.FORMATS)
    conv.add_argument("-o", "--output")
    conv.add_argument("--force", action="store_true")
    fg = sub.add_parser("flamegraph", help="an HTML page of saved pprof profiles: per-lock "
                                           "table, flame graph, wait over time")
    fg.add_argument("files", nargs="+", metavar="FILE", help=_FILES_HELP)
    fg.add_argument("-o", "--output", help="default: FILE with .html")
    fg.add_argument("--force", action="store_true")
    mg = sub.add_parser("merge", help="merge saved pprof profiles into one pprof file")
    mg.add_argument("files", nargs="+", metavar="FILE", help=_FILES_HELP)
    mg.add_argument("-o", "--output", required=True, help="the merged profile (.pprof)")
    mg.add_argument("--force", action="store_true")


def _expand(paths):
    """the files named, a directory standing for its pprof files (sorted)"""
    from lockprof import export

    out = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path)
                           if export.split_ext(n)[1] in (".pprof", ".pb.gz"))
            if not found:
                raise _ArgError(f"directory {path!r} holds no profile (*.pprof, *.pb.gz)")
            out += found
        elif not os.path.exists(path):
            raise _ArgError(f"profile {path!r} not found")
        else:
            out.append(path)
    return out


def _load(paths):
    """one Profile of every file named (merged when more than one)"""
    from lockprof.export import Profile, pprof

    files = _expand(paths)
    profiles = []
    for path in files:
        try:
            profiles.append(pprof.read(path))
        except pprof.ProfileError as e:
            raise _ArgError(str(e)) from None
    if len(profiles) == 1:
        return profiles[0]
    return Profile.merge(profiles, title=f"lockprof: {len(profiles)} profiles",
                         sources=[os.path.basename(f) for f in files])


def _report(ns) -> int:
    import json

    from lockprof.export import text

    prof = _load(ns.files)
    own = [p for group in ns.own_code for p in group]
    if not own and os.environ.get("LOCKPROF_OWN_CODE"):
        try:
            own = list(_config.parse_value(_config.BY_NAME["own_code"],
                                           os.environ["LOCKPROF_OWN_CODE"], "LOCKPROF_OWN_CODE"))
        except _config.ConfigError as e:
            raise _ArgError(str(e)) from None
    if own:
        from lockprof.export._names import set_own_code
        set_own_code(own)
    if ns.by is not None:
        if ns.json:
            groups = prof.by_label(ns.by)
            for g in groups:
                g["locks"] = [{"name": prof.locks[lk]["name"], "kind": prof.locks[lk]["kind"],
                               "wait_ns": w, "cond_wait_ns": cw} for lk, w, cw in g["locks"]]
            print(json.dumps(groups, indent=1))
        else:
            print(text.report_by(prof, ns.by, ns.top))
        return 0
    if ns.json:
        # exact: the figures are the run's own counts (lockprof's file), not
        # estimates from the file's samples
        # in the text report's order, with its derived figures
        idle = prof.idle_cond_waits()
        key = text.SORT_KEYS[ns.sort]
        print(json.dumps([dict(prof.locks[i], exact=prof.exact, blocked_ns=prof.blocked_ns(i),
                               idle_cond_wait_ns=idle.get(i, 0.0))
                          for i in prof.ranked(key)], indent=1))
        return 0
    print(text.report(prof, ns.top, sort=ns.sort))
    if prof.lock_order:
        from lockprof import _order
        print()
        print(_order.report(prof.lock_order))
    return 0


def _output_for(ns, fmt: str) -> str:
    from lockprof import export

    first = ns.files[0].rstrip("/\\")
    stem, ext = export.split_ext(first)
    out = ns.output or (stem if ext else os.path.splitext(first)[0]) + "." + \
        export.EXTENSION[fmt]
    try:
        export.check_writable(out)
    except export.FormatError as e:
        raise _ArgError(str(e)) from None
    if os.path.exists(out) and not ns.force:
        raise _ArgError(f"{out!r} exists; use --force to overwrite it")
    return out


def _convert(ns) -> int:
    from lockprof import export

    prof = _load(ns.files)
    out = _output_for(ns, ns.format)
    if len(ns.files) == 1 and not os.path.isdir(ns.files[0]):
        prof.title = f"lockprof: {os.path.basename(ns.files[0])}"
    export.write(prof, out, ns.format)
    print(f"lockprof: wrote {out}", file=sys.stderr)
    return 0


def _flamegraph(ns) -> int:
    ns.format = "html"
    return _convert(ns)


def _merge(ns) -> int:
    from lockprof import export

    if export.split_ext(ns.output)[1] not in (".pprof", ".pb.gz"):
        raise _ArgError(f"-o {ns.output!r}: the merged profile is a pprof file; "
                        f"accepted extensions: .pprof, .pb.gz")
    prof = _load(ns.files)
    out = _output_for(ns, "pprof")
    export.write(prof, out, "pprof")
    n = len(_expand(ns.files))
    print(f"lockprof: merged {n} profile{'s' if n != 1 else ''} into {out}", file=sys.stderr)
    return 0


def _merge_settings(ns) -> dict:
    """defaults < environment < command line; repeatable options add up."""
    settings = _config.defaults()
    try:
        env = _config.from_env(os.environ)
    except _config.ConfigError as e:
        raise _ArgError(str(e)) from None
    settings.update(env)
    for opt in _config.OPTIONS:
        value = getattr(ns, opt.name)
        if opt.repeat:
            if value:
                settings[opt.name] = tuple(settings[opt.name]) + tuple(
                    m for group in value for m in group)
        elif opt.parse is None:
            settings[opt.name] = settings[opt.name] or value
        elif value is not None:
            settings[opt.name] = value
    return settings


def _run_target(ns) -> int:
    from lockprof._session import Session

    settings = _merge_settings(ns)
    if ns.module:
        stem = ns.module.replace(".", "_")
    elif ns.code is not None:
        stem = "c"
    else:
        if not os.path.isfile(ns.script):
            raise _ArgError(f"script {ns.script!r} not found")
        stem = os.path.splitext(os.path.basename(ns.script))[0]
    auto = sys.modules.get("lockprof._autostart")
    if auto is not None and auto.session is not None:   # LOCKPROF_ENABLED too: run wins
        auto.session.cancel()
        auto.session = None
    try:
        session = Session(settings, stem)    # checks the output before the program runs
    except Exception as e:
        raise _ArgError(str(e)) from None
    if ns.module:
        sys.argv = [ns.module] + ns.args
        runner = lambda: runpy.run_module(ns.module, run_name="__main__", alter_sys=True)  # noqa
    elif ns.code is not None:
        sys.argv = ["-c"] + ns.args
        sys.path.insert(0, "")
        if sys.version_info >= (3, 13):   # as python -c: tracebacks show the source
            import linecache
            linecache.cache["<string>"] = (len(ns.code), None, ns.code.splitlines(True),
                                           "<string>")
        runner = lambda: exec(compile(ns.code, "<string>", "exec"), _main_globals())  # noqa
    else:
        sys.argv = [ns.script] + ns.args
        sys.path[0] = os.path.dirname(os.path.abspath(ns.script))
        runner = lambda: runpy.run_path(ns.script, run_name="__main__")  # noqa
    # the profile is written at exit, after the program's non-daemon threads
    # and its own atexit handlers ran (they may take locks too)
    session.start()
    try:
        runner()
    except SystemExit:
        raise
    except BaseException:
        # as python reports an uncaught exception: through sys.excepthook,
        # with a traceback that starts in the program
        etype, value, tb = sys.exc_info()
        while tb is not None and _own_frame(tb.tb_frame):
            tb = tb.tb_next
        if value is not None:
            value.__traceback__ = tb
        sys.excepthook(etype, value, tb)
        if isinstance(value, KeyboardInterrupt):
            session.finish()
            _die_of(__import__("signal").SIGINT)
        return 1
    return 0


_own_main = None


def _main_globals() -> dict:
    """A fresh __main__ module for -c code, as python gives it."""
    import types
    global _own_main
    _own_main = sys.modules.get("__main__")   # lockprof's own, kept alive
    mod = types.ModuleType("__main__")
    mod.__dict__.update(__builtins__=__builtins__, __spec__=None, __loader__=None,
                        __package__=None)
    sys.modules["__main__"] = mod
    return vars(mod)


def _own_frame(frame) -> bool:
    from lockprof import _is_runpy

    f = frame.f_code.co_filename
    return f == __file__ or _is_runpy(f)


def _die_of(signum) -> None:
    import signal
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


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
                if a in _VALUE_FLAGS:
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
            ns = _parser("run").parse_args(head)
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
        if ns.command == "flamegraph":
            return _flamegraph(ns)
        if ns.command == "merge":
            return _merge(ns)
    except _ArgError as e:
        print(f"lockprof: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`lockprof report ... | head`): quietly, as
        # cat does; stdout's last flush at exit must not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
