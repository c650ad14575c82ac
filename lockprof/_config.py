"""The settings of a profiling session, each with a command-line option and an
environment twin (LOCKPROF_<NAME>), parsed and checked in one place so that
`lockprof run`, LOCKPROF_ENABLED start-up and their error messages agree."""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

FORMATS = ("pprof", "collapsed", "speedscope", "html", "text")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class ConfigError(ValueError):
    """A setting's value is not accepted; the message names it and what is."""


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{text!r} is not a number in [0, 1]")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 100.0:
        raise ConfigError(f"{text!r} is not a percentage in [0, 100]")
    return value


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise ConfigError(f"{text!r} is not an integer in [{lo}, {hi}]")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.1 <= value <= 86400 * 7:
        raise ConfigError(f"{text!r} is not a number of seconds in [0.1, 604800]")
    return value


def _format(text: str) -> str:
    if text not in FORMATS:
        raise ConfigError(f"{text!r} is not one of {', '.join(FORMATS)}")
    return text


def _modules(text: str) -> Tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        if not _MODULE.match(n):
            raise ConfigError(f"{n!r} is not a module name (dotted identifiers, "
                              f"comma-separated: myapp,myapp.db)")
    return names


def _paths(text: str) -> Tuple[str, ...]:
    import os
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in paths:
        if not os.path.exists(p):
            raise ConfigError(f"{p!r} is not an existing directory or file (the program's own "
                              f"code, comma-separated: src/myapp,tools/run.py)")
    return paths


def _http_address(text: str) -> str:
    from ._http import HTTPConfigError, parse_address
    try:
        parse_address(text)
    except HTTPConfigError as e:
        raise ConfigError(str(e)) from None
    return text


def _flag(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{text!r} is not one of 1, true, yes, on, 0, false, no, off")


class Option:
    """One setting: its command-line flags, parser, default and help.  (A
    plain class: dataclasses would cost every `lockprof run` 5 ms of imports.)"""

    __slots__ = ("name", "flags", "parse", "default", "help", "metavar", "repeat")

    def __init__(self, name: str, flags: Tuple[str, ...],
                 parse: Optional[Callable[[str], Any]], default: Any, help: str,
                 metavar: Optional[str] = None, repeat: bool = False):
        self.name = name              # attribute in the settings
        self.flags = flags            # command line ((): environment only)
        self.parse = parse            # None: a flag without a value
        self.default = default
        self.help = help
        self.metavar = metavar
        self.repeat = repeat          # may be given several times; values add up

    @property
    def env(self) -> str:
        return "LOCKPROF_" + self.name.upper()


OPTIONS: Sequence[Option] = (
    Option("sample_rate", ("--sample-rate",), _rate, 0.01,
           "probability that an acquisition is sampled; contentions are always counted "
           "(default 0.01)", "R"),
    Option("output", ("-o", "--output"), str, None,
           "profile file; with --interval, a directory (default: lockprof-<program>.<pid>"
           ".<ext>)", "PATH"),
    Option("format", ("-f", "--format"), _format, None,
           f"output format: {', '.join(FORMATS)} (default: from the output's extension, "
           f"else pprof)", "FORMAT"),
    Option("max_frames", ("--max-frames",), _int_in(1, 512), 64,
           "frames kept per stack (default 64)", "N"),
    Option("max_locks", ("--max-locks",), _int_in(1, 2**32 - 2), 100000,
           "cap: records of live locks (dead ones fold per creation site; default 100000)",
           "N"),
    Option("max_stacks", ("--max-stacks",), _int_in(1, 2**32 - 2), 1 << 18,
           "cap: distinct stacks (default 262144)", "N"),
    Option("max_samples", ("--max-samples",), _int_in(1, 2**32 - 2), 1 << 20,
           "cap: rows of (lock, stack, event, thread, task) (default 1048576)", "N"),
    Option("max_sites", ("--max-sites",), _int_in(1, 2**32 - 2), 1 << 20,
           "cap: distinct lock creation sites (default 1048576)", "N"),
    Option("max_thread_names", ("--max-thread-names",), _int_in(1, 2**32 - 2), 4096,
           "cap: distinct thread labels; past it, <other> (default 4096)", "N"),
    Option("max_task_names", ("--max-task-names",), _int_in(1, 2**32 - 2), 4096,
           "cap: distinct asyncio task labels; past it, <other> (default 4096)", "N"),
    Option("max_label_sets", ("--max-label-sets",), _int_in(1, 2**32 - 2), 1024,
           "cap: distinct request label sets (lockprof.labels); past it, values are <other> "
           "(default 1024)", "N"),
    Option("max_label_value", ("--max-label-value",), _int_in(1, 2**32 - 2), 200,
           "cap: characters kept of a request label value (default 200)", "N"),
    Option("max_overhead", ("--max-overhead",), _percent, 1.0,
           "CPU budget: percent of wall time spent recording sampled events, past which "
           "the sampling rate is lowered (estimates stay unbiased; contentions stay exact); "
           "0: no limit (default 1)", "PERCENT"),
    Option("max_rate_windows", ("--max-rate-windows",), _int_in(1, 2**32 - 2), 3600,
           "cap: changes of the sampling rate kept in the profile (default 3600)", "N"),
    Option("interval", ("--interval",), _seconds, None,
           "write a fresh profile every SECONDS into the output directory, and the last one "
           "at exit", "SECONDS"),
    Option("keep", ("--keep",), _int_in(1, 100000), 24,
           "with --interval, how many profiles to keep in the directory (default 24)", "N"),
    Option("exclude_module", ("--exclude-module",), _modules, (),
           "locks made by code in this module (and its submodules) stay native; "
           "repeatable, comma-separated; adds to the built-in exclusions", "MODULE", True),
    Option("include_module", ("--include-module",), _modules, (),
           "profile only locks made by code in these modules; repeatable, comma-separated",
           "MODULE", True),
    Option("lock_order", ("--lock-order",), None, False,
           "find lock-order inversions (potential deadlocks), reported at exit even with -q"),
    Option("max_order_edges", ("--max-order-edges",), _int_in(1, 2**31 - 1), 10000,
           "cap: lock-order pairs kept, of lock classes and of same-class instances, each "
           "(default 10000)", "N"),
    Option("hang_timeout", ("--hang-timeout",), _seconds, None,
           "hang doctor: when a thread or task has waited on one lock longer than SECONDS, "
           "print the waiters, the locks' holders and their stacks, and any deadlock cycle",
           "SECONDS"),
    Option("max_hang_waits", ("--max-hang-waits",), _int_in(1, 2**31 - 1), 4096,
           "cap: waits the hang doctor tracks at once (default 4096)", "N"),
    Option("http", ("--http",), _http_address, None,
           "serve the live profile over HTTP, as Go's net/http/pprof does "
           "(/debug/pprof/mutex); loopback unless a host is given, and a host that is not "
           "loopback needs LOCKPROF_HTTP_TOKEN", metavar="[HOST:]PORT"),
    Option("http_max_clients", ("--http-max-clients",), _int_in(1, 1024), 8,
           "cap: requests the endpoint serves at once; more get 503, counted (default 8)", "N"),
    Option("own_code", ("--own-code",), _paths, (),
           "the program's own code is under these directories or files (repeatable, "
           "comma-separated); the report marks its lines and tells idle waits by them "
           "(default: what is neither the stdlib nor an installed package)", "PATH", True),
    Option("top", ("--top",), _int_in(0, 100000), 10,
           "locks shown in the report at exit (default 10)", "N"),
    Option("quiet", ("-q", "--quiet"), None, False, "print no report at exit"),
    Option("force", ("--force",), None, False, "overwrite an existing output file"),
)
BY_NAME: Dict[str, Option] = {o.name: o for o in OPTIONS}


def parse_value(opt: Option, text: str, source: str) -> Any:
    """The value of `opt` given as `text` by `source` (an option or a
    variable name); ConfigError names the source and what is accepted."""
    try:
        return _flag(text) if opt.parse is None else opt.parse(text)
    except ConfigError as e:
        raise ConfigError(f"{source}={e}" if str(e).startswith(repr(text))
                          else f"{source}={text!r}: {e}") from None


def from_env(environ: Mapping[str, str]) -> Dict[str, Any]:
    """The settings given by LOCKPROF_* variables (only those that are set)."""
    out: Dict[str, Any] = {}
    for opt in OPTIONS:
        text = environ.get(opt.env)
        if text is None or (opt.parse is not None and text == ""):
            continue
        out[opt.name] = parse_value(opt, text, opt.env)
    return out


def defaults() -> Dict[str, Any]:
    return {o.name: o.default for o in OPTIONS}


def enabled(environ: Mapping[str, str]) -> bool:
    """LOCKPROF_ENABLED: start profiling at interpreter start."""
    return parse_value(Option("enabled", (), None, False, ""), environ.get("LOCKPROF_ENABLED", ""),
                       "LOCKPROF_ENABLED")
