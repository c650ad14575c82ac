"""Output formats: pprof, collapsed stacks, speedscope and text, chosen by
name or by the output file's extension."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

# measure -> (event, field, unit) in lockprof.samples() rows
MEASURES: Dict[str, Tuple[str, str, str]] = {
    "delay": ("contention", "value", "nanoseconds"),
    "contentions": ("contention", "count", "none"),
    "caused-delay": ("delay", "value", "nanoseconds"),
    "acquisitions": ("acquire", "count", "none"),
    "hold": ("hold", "value", "nanoseconds"),
    "cond-wait": ("cond_wait", "value", "nanoseconds"),
}
FORMATS = ("pprof", "collapsed", "speedscope", "text")
_EXTENSIONS = ((".speedscope.json", "speedscope"), (".pb.gz", "pprof"), (".pprof", "pprof"),
               (".folded", "collapsed"), (".collapsed", "collapsed"), (".txt", "text"))


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


def _frame_name(frame) -> str:
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
        frames = [_frame_name(f) for f in reversed(s["frames"])]
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


def write_text(path: str, text: str) -> None:
    """Temp file + rename: a crash never leaves half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lockprof-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_writable(path: str) -> None:
    """Raises FormatError naming the path when it cannot be written."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise FormatError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise FormatError(f"cannot write {path!r}: directory {directory!r} is not writable")
    if os.path.isdir(path):
        raise FormatError(f"cannot write {path!r}: it is a directory")


WRITERS: Dict[str, Callable[..., str]] = {"collapsed": collapsed, "speedscope": speedscope}
