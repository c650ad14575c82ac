"""Output formats: pprof, collapsed stacks, speedscope and text, chosen by
name or by the output file's extension."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# measure -> (event, field, unit) in lockprof.samples() rows
MEASURES: Dict[str, Tuple[str, str, str]] = {
    "delay": ("contention", "value", "nanoseconds"),
    "contentions": ("contention", "count", "none"),
    "caused-delay": ("delay", "value", "nanoseconds"),
    "acquisitions": ("acquire", "count", "none"),
    "hold": ("hold", "value", "nanoseconds"),
    "cond-wait": ("cond_wait", "value", "nanoseconds"),
}
LABELS = {"delay": "wait", "contentions": "contentions", "caused-delay": "wait caused (releaser)",
          "acquisitions": "acquisitions", "hold": "hold", "cond-wait": "Condition.wait"}
FORMATS = ("pprof", "collapsed", "speedscope", "html", "text")
EXTENSION = {"pprof": "pprof", "collapsed": "folded", "speedscope": "speedscope.json",
             "html": "html", "text": "txt"}
_EXTENSIONS = ((".speedscope.json", "speedscope"), (".pb.gz", "pprof"), (".pprof", "pprof"),
               (".folded", "collapsed"), (".collapsed", "collapsed"), (".html", "html"),
               (".htm", "html"), (".txt", "text"))


class FormatError(ValueError):
    """A format or output path lockprof cannot use (the message says which)."""


def format_for(path: str, fmt: Optional[str] = None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise FormatError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
        return fmt
    for ext, name in _EXTENSIONS:
        if path.endswith(ext):
            return name
    accepted = ", ".join(e for e, _ in _EXTENSIONS)
    raise FormatError(f"cannot tell the format of {path!r} from its extension ({accepted}); "
                      f"give one with -f/format=")


def split_ext(path: str) -> Tuple[str, str]:
    """(stem, extension) by the extensions lockprof knows (".speedscope.json"
    is one); (path, "") for any other name."""
    for ext in sorted((e for e, _ in _EXTENSIONS), key=len, reverse=True):
        if path.endswith(ext):
            return path[:-len(ext)], ext
    return path, ""


def frame_name(frame) -> str:
    """`function (file.py:LINE)` of a (file, function, line) frame."""
    file, func, line = frame
    return f"{func} ({os.path.basename(file)}:{line})" if file else func


def collapsed(samples: List[Dict[str, Any]], measure: str = "delay") -> str:
    """`frame;frame;[lock name] value` per line, root first (flamegraph.pl's
    input and speedscope's "collapsed" import)."""
    event, field, _ = MEASURES[measure]
    totals: Dict[str, int] = {}
    for s in samples:
        if s["event"] != event:
            continue
        frames = [frame_name(f) for f in reversed(s["frames"])]
        if s.get("omitted"):
            frames.insert(0, f"<{s['omitted']} frames omitted>")
        key = ";".join(frames + [f"[{s.get('lock_name') or s.get('site')}]"])
        totals[key] = totals.get(key, 0) + int(round(s[field]))
    return "".join(f"{k} {v}\n" for k, v in sorted(totals.items()) if v > 0)


def speedscope(samples: List[Dict[str, Any]], name: str = "lockprof") -> str:
    """One sampled profile per measure, in speedscope's file format."""
    frames: List[Dict[str, Any]] = []
    index: Dict[Any, int] = {}

    def frame_id(key, entry) -> int:
        i = index.get(key)
        if i is None:
            i = index[key] = len(frames)
            frames.append(entry)
        return i

    profiles = []
    for measure, (event, field, unit) in MEASURES.items():
        stacks, weights = [], []
        for s in samples:
            if s["event"] != event or s[field] <= 0:
                continue
            stack = []
            if s.get("omitted"):
                stack.append(frame_id(("omitted", s["omitted"]),
                                      {"name": f"<{s['omitted']} frames omitted>"}))
            for file, func, line in reversed(s["frames"]):
                stack.append(frame_id((file, func, line),
                                      {"name": func, "file": file, "line": line}))
            lock = s.get("lock_name") or s.get("site") or "<unknown>"
            stack.append(frame_id(("lock", lock), {"name": f"[{lock}]"}))
            stacks.append(stack)
            weights.append(int(round(s[field])))
        total = sum(weights)
        profiles.append({"type": "sampled", "name": f"{name}: {measure}", "unit": unit,
                         "startValue": 0, "endValue": total, "samples": stacks,
                         "weights": weights})
    doc = {"$schema": "https://www.speedscope.app/file-format-schema.json",
           "shared": {"frames": frames}, "profiles": profiles, "name": name,
           "activeProfileIndex": 0, "exporter": "lockprof"}
    return json.dumps(doc)


def html(samples: List[Dict[str, Any]], title: str = "lockprof", meta: str = "") -> str:
    """A self-contained flame graph page (no network): one view per measure,
    zoom by click, regex search, hover details; state in the URL fragment
    (``#measure=hold&search=queue``)."""
    import html as _html
    from importlib import resources

    frames: List[List[Any]] = []
    index: Dict[Any, int] = {}

    def frame_id(key, entry) -> int:
        i = index.get(key)
        if i is None:
            i = index[key] = len(frames)
            frames.append(entry)
        return i

    measures = []
    for measure, (event, field, unit) in MEASURES.items():
        totals: Dict[Tuple[int, ...], int] = {}
        for s in samples:
            weight = int(round(s[field])) if s["event"] == event else 0
            if weight <= 0:
                continue
            stack = []
            if s.get("omitted"):
                stack.append(frame_id(("omitted", s["omitted"]),
                                      [f"<{s['omitted']} frames omitted>", "", 0, "omitted"]))
            for file, func, line in reversed(s["frames"]):
                stack.append(frame_id((file, func, line), [func, file, line, "py"]))
            lock = s.get("lock_name") or s.get("site") or "<unknown>"
            short = lock.replace("\\", "/").rsplit("/", 1)[-1]
            stack.append(frame_id(("lock", lock), [f"[{short}]", lock, 0, "lock"]))
            key = tuple(stack)
            totals[key] = totals.get(key, 0) + weight
        stacks = [[list(k), v] for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]
        measures.append({"key": measure, "label": LABELS[measure], "unit": unit,
                         "total": sum(totals.values()), "stacks": stacks})
    data = json.dumps({"title": title, "meta": meta, "frames": frames, "measures": measures},
                      separators=(",", ":"))
    # inside <script>, "</" could end the element early; JSON allows "<\/"
    data = data.replace("</", "<\\/").replace("<!--", "<\\u0021--")
    page = resources.files(__package__).joinpath("flamegraph.html").read_text(encoding="utf-8")
    head, tail = page.split("__DATA__")
    return head.replace("__TITLE__", _html.escape(title)) + data + tail


def write_rows(path: str, fmt: str, rows: List[Dict[str, Any]], *,
               records: Optional[List[Dict[str, Any]]] = None, sample_rate: Optional[float] = None,
               title: str = "lockprof", meta: str = "", time_nanos: int = 0,
               duration_nanos: int = 0, comments: Sequence[str] = ()) -> None:
    """Writes sample rows (lockprof.samples(), or a profile read back) in
    `fmt`; the text table uses `records` (per-lock stats), else the totals of
    the rows; pprof keeps the time window and comments."""
    if fmt == "pprof":
        from . import pprof
        pprof.write(path, rows, time_nanos=time_nanos, duration_nanos=duration_nanos,
                    comments=comments)
    elif fmt == "text":
        from .report import stats_from_samples, text_table
        table = text_table(stats_from_samples(rows) if records is None else records, 20,
                           sample_rate or 0.0, samples=rows)
        write_text(path, table + "\n")
    elif fmt == "html":
        write_text(path, html(rows, title=title, meta=meta))
    else:
        write_text(path, WRITERS[fmt](rows))


def _umask() -> int:
    # /proc tells without changing anything; os.umask can only be read by
    # setting it, which for an instant would affect the program's other threads
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_atomic(path: str, data: bytes) -> None:
    """Temp file + rename: a crash never leaves half a file.  The file gets
    the permissions open() would give it (mkstemp's are 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lockprof-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text(path: str, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def check_writable(path: str) -> None:
    """Raises FormatError naming the path when it cannot be written."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise FormatError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise FormatError(f"cannot write {path!r}: directory {directory!r} is not writable")
    if os.path.isdir(path):
        raise FormatError(f"cannot write {path!r}: it is a directory")


WRITERS: Dict[str, Callable[..., str]] = {"collapsed": collapsed, "speedscope": speedscope,
                                          "html": html}
