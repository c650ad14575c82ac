"""Writing profiles in pprof's format (profile.proto, gzip-compressed).

The encoder is lockprof's own: a profile is a handful of protobuf messages,
so a few varint helpers are all it takes and lockprof needs no dependency.
"""
from __future__ import annotations

import gzip
import os
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

# (type, unit): Go's names for the first two, so that `go tool pprof
# -contentions / -total_delay / -mean_delay` work as they do on Go profiles.
SAMPLE_TYPES: Sequence[Tuple[str, str]] = (
    ("contentions", "count"),           # at the stack that waited
    ("delay", "nanoseconds"),
    ("caused-contentions", "count"),    # at the release that ended the wait
    ("caused-delay", "nanoseconds"),
    ("acquisitions", "count"),
    ("hold", "nanoseconds"),            # at the releasing stack
    ("cond-waits", "count"),
    ("cond-wait", "nanoseconds"),
)
DEFAULT_SAMPLE_TYPE = "delay"
# event -> (column of its count, column of its nanoseconds or None)
_COLUMNS = {
    "contention": (0, 1),
    "delay": (2, 3),
    "acquire": (4, None),
    "hold": (None, 5),
    "cond_wait": (6, 7),
}


def _varint(n: int, out: bytearray) -> None:
    n &= (1 << 64) - 1               # int64 values travel as two's complement
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _key(field: int, wire: int, out: bytearray) -> None:
    _varint((field << 3) | wire, out)


def _int(field: int, value: int, out: bytearray) -> None:
    if value:
        _key(field, 0, out)
        _varint(value, out)


def _bytes(field: int, data: bytes, out: bytearray) -> None:
    _key(field, 2, out)
    _varint(len(data), out)
    out += data


def _packed(field: int, values: Iterable[int], out: bytearray) -> None:
    body = bytearray()
    for v in values:
        _varint(v, body)
    if body:
        _bytes(field, bytes(body), out)


class _Strings:
    def __init__(self) -> None:
        self.table: List[str] = [""]
        self.index: Dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.table)
            self.table.append(s)
        return i


def encode(samples: List[Dict[str, Any]], *, time_nanos: int, duration_nanos: int,
           comments: Sequence[str] = ()) -> bytes:
    """The uncompressed profile.proto bytes for lockprof's sample rows."""
    st = _Strings()
    functions: Dict[Tuple[str, str], int] = {}
    locations: Dict[Tuple[int, int], int] = {}
    body = bytearray()

    for typ, unit in SAMPLE_TYPES:
        vt = bytearray()
        _int(1, st(typ), vt)
        _int(2, st(unit), vt)
        _bytes(1, bytes(vt), body)

    def location(func: str, file: str, line: int) -> int:
        fid = functions.get((func, file))
        if fid is None:
            fid = functions[(func, file)] = len(functions) + 1
        lid = locations.get((fid, line))
        if lid is None:
            lid = locations[(fid, line)] = len(locations) + 1
        return lid

    for s in samples:
        cols = _COLUMNS.get(s["event"])
        if cols is None:
            continue
        values = [0] * len(SAMPLE_TYPES)
        count_col, ns_col = cols
        if count_col is not None:
            values[count_col] = int(round(s["count"]))
        if ns_col is not None:
            values[ns_col] = int(round(s["value"]))
        if not any(values):
            continue
        locs = [location(func, file, line) for file, func, line in s["frames"]]
        if s.get("omitted"):
            locs.append(location(f"<{s['omitted']} frames omitted>", "", 0))
        sample = bytearray()
        _packed(1, locs, sample)
        _packed(2, values, sample)
        labels = [("lock name", s.get("lock_name") or s.get("site") or "<unknown>"),
                  ("lock kind", s.get("kind") or "<unknown>")]
        if s.get("thread_name"):
            labels.append(("thread name", s["thread_name"]))
        if s.get("task_name"):
            labels.append(("task name", s["task_name"]))
        for k, v in labels:
            lab = bytearray()
            _int(1, st(k), lab)
            _int(2, st(str(v)), lab)
            _bytes(3, bytes(lab), sample)
        if s.get("thread_id"):
            lab = bytearray()
            _int(1, st("thread id"), lab)
            _int(3, int(s["thread_id"]), lab)
            _bytes(3, bytes(lab), sample)
        _bytes(2, bytes(sample), body)

    # one mapping that says the profile carries functions, files and lines
    mapping = bytearray()
    _int(1, 1, mapping)
    _int(5, st("python"), mapping)
    for field in (7, 8, 9):
        _int(field, 1, mapping)
    _bytes(3, bytes(mapping), body)

    for (fid, line), lid in locations.items():
        loc = bytearray()
        _int(1, lid, loc)
        _int(2, 1, loc)
        ln = bytearray()
        _int(1, fid, ln)
        _int(2, line, ln)
        _bytes(4, bytes(ln), loc)
        _bytes(4, bytes(loc), body)
    for (func, file), fid in functions.items():
        fn = bytearray()
        _int(1, fid, fn)
        _int(2, st(func), fn)
        _int(3, st(func), fn)
        _int(4, st(file), fn)
        _bytes(5, bytes(fn), body)

    comment_ids = [st(c) for c in comments]
    period = bytearray()
    _int(1, st("contentions"), period)
    _int(2, st("count"), period)
    default = st(DEFAULT_SAMPLE_TYPE)
    for s in st.table:
        _bytes(6, s.encode("utf-8"), body)
    _int(9, time_nanos, body)
    _int(10, duration_nanos, body)
    _bytes(11, bytes(period), body)
    _int(12, 1, body)
    for c in comment_ids:
        _int(13, c, body)
    _int(14, default, body)
    return bytes(body)


def write(path: str, samples: List[Dict[str, Any]], *, time_nanos: int, duration_nanos: int,
          comments: Sequence[str] = ()) -> None:
    """Writes a gzip-compressed pprof file; a temporary name is renamed into
    place, so a crash never leaves half a profile."""
    data = gzip.compress(encode(samples, time_nanos=time_nanos, duration_nanos=duration_nanos,
                                comments=comments), mtime=0)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lockprof-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def profile_comments(sample_rate: Optional[float], wait_period_ns: Optional[int],
                     counters: Optional[Dict[str, int]] = None) -> List[str]:
    """The settings, and what did not fit or failed (never dropped silently)."""
    out = [f"lockprof sample_rate={sample_rate}", f"lockprof wait_period_ns={wait_period_ns}"]
    for key in ("dropped_locks", "dropped_stacks", "dropped_samples", "errors", "name_errors"):
        if counters is not None and key in counters:
            out.append(f"lockprof {key}={counters[key]}")
    return out
