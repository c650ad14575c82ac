"""Writing profiles in pprof's format (profile.proto, gzip-compressed).

The encoder is lockprof's own: a profile is a handful of protobuf messages,
so a few varint helpers are all it takes and lockprof needs no dependency.
"""
from __future__ import annotations

import gzip
import re
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
    from .formats import write_atomic
    write_atomic(path, data)


def profile_comments(sample_rate: Optional[float], wait_period_ns: Optional[int],
                     counters: Optional[Dict[str, int]] = None) -> List[str]:
    """The settings, and what did not fit or failed (never dropped silently)."""
    out = [f"lockprof sample_rate={sample_rate}", f"lockprof wait_period_ns={wait_period_ns}"]
    for key in ("dropped_locks", "dropped_stacks", "dropped_samples", "errors", "name_errors"):
        if counters is not None and key in counters:
            out.append(f"lockprof {key}={counters[key]}")
    return out


class ProfileError(ValueError):
    """A file that is not a readable lockprof pprof profile."""


def _read_varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ProfileError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field, wire type, value) of one message; value is int or bytes."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            if i + n > len(buf):
                raise ProfileError("truncated field")
            value, i = buf[i:i + n], i + n
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ProfileError(f"unsupported wire type {wire}")
        yield field, wire, value


def _ints(value, wire) -> List[int]:
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _read_varint(value, i)
        out.append(v)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def read(path: str) -> Dict[str, Any]:
    """Reads a pprof file written by lockprof back into sample rows (the
    shape of lockprof.samples()).  Raises ProfileError, naming the file, on
    anything else or on a damaged file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ProfileError(f"cannot read {path!r}: {e.strerror}") from None
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as e:
        raise ProfileError(f"{path!r} is not a valid pprof file: {e}") from None
    try:
        return _decode(data)
    except (ProfileError, IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path!r} is not a valid pprof file: {e}") from None


def _decode(data: bytes) -> Dict[str, Any]:
    strings: List[str] = []
    types, samples_raw, locations, functions, comments = [], [], {}, {}, []
    meta: Dict[str, int] = {}
    for field, wire, value in _fields(data):
        if field == 1:
            t = {f: v for f, _, v in _fields(value)}
            types.append((t.get(1, 0), t.get(2, 0)))
        elif field == 2:
            samples_raw.append(value)
        elif field == 4:
            loc = {"lines": []}
            for f, w, v in _fields(value):
                if f == 1:
                    loc["id"] = v
                elif f == 4:
                    ln = {lf: lv for lf, _, lv in _fields(v)}
                    loc["lines"].append((ln.get(1, 0), _signed(ln.get(2, 0))))
            locations[loc.get("id", 0)] = loc["lines"]
        elif field == 5:
            fn = {f: v for f, _, v in _fields(value)}
            functions[fn.get(1, 0)] = (fn.get(2, 0), fn.get(4, 0))
        elif field == 6:
            strings.append(value.decode("utf-8"))
        elif field in (9, 10, 14):
            meta[{9: "time_nanos", 10: "duration_nanos", 14: "default"}[field]] = value
        elif field == 13:
            comments.append(value)
    names = [strings[t] for t, _ in types]
    # columns by sample-type name: lockprof's own files, and Go's mutex and
    # block profiles (contentions/delay) or anything else carrying those
    col = {n: i for i, n in enumerate(names)}
    if "contentions" not in col or "delay" not in col:
        raise ProfileError("it has no contentions/delay sample types, so it is not a lock "
                           f"profile (its types: {', '.join(names) or 'none'})")
    by_name = [n for n, _ in SAMPLE_TYPES]
    columns = {event: tuple(col.get(by_name[c]) if c is not None else None for c in cols)
               for event, cols in _COLUMNS.items()}
    rows = []
    for sraw in samples_raw:
        locs, values, labels = [], [], {}
        for f, w, v in _fields(sraw):
            if f == 1:
                locs += _ints(v, w)
            elif f == 2:
                values += [_signed(x) for x in _ints(v, w)]
            elif f == 3:
                lab = {lf: lv for lf, _, lv in _fields(v)}
                key = strings[lab.get(1, 0)]
                labels[key] = strings[lab[2]] if lab.get(2) else lab.get(3, 0)
        frames, omitted = [], 0
        for lid in locs:
            for fid, line in locations.get(lid, []):
                name_i, file_i = functions.get(fid, (0, 0))
                name = strings[name_i]
                m = re.fullmatch(r"<(\d+) frames omitted>", name)
                if m and not strings[file_i]:
                    omitted = int(m.group(1))
                else:
                    frames.append((strings[file_i], name, line))
        for event, (count_col, ns_col) in columns.items():
            count = values[count_col] if count_col is not None and count_col < len(values) else 0
            value = values[ns_col] if ns_col is not None and ns_col < len(values) else 0
            if count or value:
                rows.append({"event": event, "count": count, "value": value,
                             "frames": frames, "omitted": omitted,
                             "lock_name": labels.get("lock name"), "kind": labels.get("lock kind"),
                             "thread_name": labels.get("thread name"),
                             "thread_id": labels.get("thread id"),
                             "task_name": labels.get("task name")})
    return {"samples": rows, "comments": [strings[c] for c in comments],
            "time_nanos": meta.get("time_nanos", 0), "duration_nanos": meta.get("duration_nanos", 0)}
