"""pprof (profile.proto, gzip-compressed): the writer and the reader.

The writer hands the model's columns to the runtime's C encoder
(_lockprof.encode_pprof) and compresses its bytes; nothing per row runs in
Python.  Besides the samples, a lockprof file carries each lock's exact
figures in the Profile message's field 1000 (one message per lock), which
pprof readers skip as an unknown field: `go tool pprof` totals are those of
the samples alone.  The reader rebuilds the same model from a file, lockprof's
or another program's (Go's mutex and block profiles): a foreign file has no
exact section, and its figures are estimates from its samples.
"""
from __future__ import annotations

import gzip
import json
import zlib
from typing import Any, Dict, List, Optional, Tuple

from .. import _lockprof
from ._files import write_atomic
from .model import EVENT_ID, NONE, Builder, Profile, lock_name

# (type, unit) of each column, and each event's (count column, ns column or
# None): the C encoder's own table.  Go's names for the first two, so that
# `go tool pprof -contentions / -total_delay` work as on Go's profiles.
SAMPLE_TYPES: Tuple[Tuple[str, str], ...] = _lockprof.PPROF_SAMPLE_TYPES
DEFAULT_SAMPLE_TYPE = "delay"
COLUMNS = dict(_lockprof.PPROF_EVENT_COLUMNS)
# the fields of one lock in the exact section, numbered from 1
EXACT_SECTION = 1000
LOCK_ORDER_SECTION = 1001     # potential deadlocks: JSON, see _order_section
WINDOWS_SECTION = 1002        # the windows of a merged profile: JSON, see _windows_section
RATES_SECTION = 1003          # the sampling rate over time: JSON, see _rates_section
_EXACT = ("name", "kind", "file", "line", "function", "var", "locks", "acquisition_samples",
          "acquisitions", "contentions", "timeouts", "wait_ns", "max_wait_ns", "hold_samples",
          "hold_ns", "cond_waits", "cond_wait_ns", "owner")
_EXACT_STR = {"name", "kind", "file", "function", "var", "owner"}
GZIP_LEVEL = 1
# the sample labels lockprof writes itself; any other string label is a
# request label (lockprof.labels, or a Go program's pprof.Do labels)
_OWN_LABELS = frozenset(("lock name", "lock kind", "thread name", "thread id", "task name"))


class ProfileError(ValueError):
    """A file that is not a readable pprof lock profile (the message says why)."""


def _exact_tuple(lk: Dict[str, Any]) -> tuple:
    out = []
    for f in _EXACT:
        v = lk.get(f)
        if f in _EXACT_STR:
            out.append(v if v else None)
        elif v is None:
            out.append(None)
        else:
            out.append(int(round(v)))
    return tuple(out)


def encode(p: Profile) -> bytes:
    """The uncompressed profile.proto bytes of a profile."""
    r = p.rows
    return _lockprof.encode_pprof(
        list(p.frames), p.stack_offsets, p.stack_frames, r["lock"], r["stack"], r["event"],
        r["thread"], r["task"], r["count"], r["value"],
        [(lk["name"], lk["kind"] or "<unknown>") for lk in p.locks], list(p.threads),
        [int(t or 0) for t in p.thread_ids], list(p.tasks), p.comments(),
        int(p.time_nanos), int(p.duration_nanos),
        [_exact_tuple(lk) for lk in p.locks] if p.exact else None,
        r["labels"], list(p.label_sets))


def compress(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)    # gzip framing, mtime 0
    return c.compress(data) + c.flush()


def _order_section(p: Profile) -> bytes:
    """The potential deadlocks as field LOCK_ORDER_SECTION of the Profile
    message (JSON; Go's reader skips the field)"""
    if not p.lock_order:
        return b""
    body = json.dumps(p.lock_order, separators=(",", ":")).encode("utf-8")
    return _varint(LOCK_ORDER_SECTION << 3 | 2) + _varint(len(body)) + body


def _windows_section(p: Profile) -> bytes:
    """The windows a merged profile was made of (time range, source, exact
    wait per lock, the lock by name and kind) as field WINDOWS_SECTION
    (JSON; Go's reader skips it): a merged file's page keeps its chart"""
    if not p.windows:
        return b""
    keyed = [{"start_ns": w["start_ns"], "duration_ns": w["duration_ns"],
              "source": w.get("source"),
              "wait": [[p.locks[i]["name"], p.locks[i]["kind"], v]
                       for i, v in w["wait"].items() if i is not None and i < len(p.locks)]}
             for w in p.windows]
    body = json.dumps(keyed, separators=(",", ":")).encode("utf-8")
    return _varint(WINDOWS_SECTION << 3 | 2) + _varint(len(body)) + body


def _rates_section(p: Profile) -> bytes:
    """The sampling rate over time, [[wall ns, rate], ...] (the CPU budget
    moves it), as field RATES_SECTION (JSON; Go's reader skips it)"""
    if not p.rates:
        return b""
    body = json.dumps([[t, r] for t, r in p.rates], separators=(",", ":")).encode("utf-8")
    return _varint(RATES_SECTION << 3 | 2) + _varint(len(body)) + body


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def dumps(p: Profile) -> bytes:
    # a message's fields may come in any order: the section is appended
    return compress(encode(p) + _order_section(p) + _windows_section(p) + _rates_section(p))


def write(p: Profile, path: str) -> None:
    """A gzip-compressed pprof file; a temporary name is renamed into place,
    so a crash never leaves half a profile."""
    write_atomic(path, dumps(p))


# -- reading ------------------------------------------------------------------

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


def _py_fields(buf: bytes):
    """(field, wire type, value) of one message; value is int or bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            size, i = _read_varint(buf, i)
            if i + size > n:
                raise ProfileError("truncated field")
            value, i = buf[i:i + size], i + size
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ProfileError(f"unsupported wire type {wire}")
        yield field, wire, value


def _py_ints(value, wire) -> List[int]:
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _read_varint(value, i)
        out.append(v)
    return out


try:        # the same two loops in C (runtime/lp_pbread.c): ten times the rows a second
    from lockprof._lockprof import pb_fields as _c_fields, pb_varints as _c_varints
except ImportError:      # pragma: no cover (the extension is part of lockprof)
    _c_fields = _c_varints = None
if _c_fields is not None:
    _fields = _c_fields

    def _ints(value, wire) -> List[int]:
        return [value] if wire == 0 else _c_varints(value)
else:
    _fields, _ints = _py_fields, _py_ints


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def read(path: str) -> Profile:
    """A pprof file as a Profile.  Raises ProfileError, naming the file, on
    anything that is not a lock profile or is damaged."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ProfileError(f"cannot read {path!r}: {e.strerror}") from None
    return loads(raw, path)


def loads(raw: bytes, path: str = "<bytes>") -> Profile:
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise ProfileError(f"{path!r} is not a valid pprof file: {e}") from None
    try:
        return _decode(data)
    except (ProfileError, IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path!r} is not a valid pprof file: {e}") from None


def _decode(data: bytes) -> Profile:
    strings: List[str] = []
    types, samples_raw, exact_raw, comments, order_raw = [], [], [], [], []
    windows_raw: List[bytes] = []
    rates_raw: List[bytes] = []
    locations: Dict[int, List[Tuple[int, int]]] = {}
    functions: Dict[int, Tuple[int, int]] = {}
    meta: Dict[str, int] = {}
    for field, wire, value in _fields(data):
        if field == 1:
            t = {f: v for f, _, v in _fields(value)}
            types.append((t.get(1, 0), t.get(2, 0)))
        elif field == 2:
            samples_raw.append(value)
        elif field == 4:
            lid, lines = 0, []
            for f, w, v in _fields(value):
                if f == 1:
                    lid = v
                elif f == 4:
                    ln = {lf: lv for lf, _, lv in _fields(v)}
                    lines.append((ln.get(1, 0), _signed(ln.get(2, 0))))
            locations[lid] = lines
        elif field == 5:
            fn = {f: v for f, _, v in _fields(value)}
            functions[fn.get(1, 0)] = (fn.get(2, 0), fn.get(4, 0))
        elif field == 6:
            strings.append(value.decode("utf-8"))
        elif field in (9, 10):
            meta[{9: "time_nanos", 10: "duration_nanos"}[field]] = _signed(value)
        elif field == 13:
            comments.append(value)
        elif field == EXACT_SECTION and wire == 2:
            exact_raw.append(value)
        elif field == LOCK_ORDER_SECTION and wire == 2:
            order_raw.append(value)
        elif field == WINDOWS_SECTION and wire == 2:
            windows_raw.append(value)
        elif field == RATES_SECTION and wire == 2:
            rates_raw.append(value)
    names = [strings[t] for t, _ in types]
    col = {n: i for i, n in enumerate(names)}
    if "contentions" not in col or "delay" not in col:
        raise ProfileError("it has no contentions/delay sample types, so it is not a lock "
                           f"profile (its types: {', '.join(names) or 'none'})")
    by_name = [n for n, _ in SAMPLE_TYPES]
    columns = [(EVENT_ID[event], col.get(by_name[c]) if c is not None else None,
                col.get(by_name[n]) if n is not None else None)
               for event, (c, n) in COLUMNS.items()]

    b = Builder()
    for raw in order_raw:
        cycles = json.loads(raw.decode("utf-8"))
        if not isinstance(cycles, list):
            raise ProfileError("its lock-order section is not a list of cycles")
        for c in cycles:
            b.cycle([dict(e, held_frames=[tuple(f) for f in e.get("held_frames", ())],
                          acquired_frames=[tuple(f) for f in e.get("acquired_frames", ())])
                     for e in c])
    loc_frames: Dict[int, List[int]] = {}
    for lid, lines in locations.items():
        loc_frames[lid] = [b.frame((strings[functions.get(fid, (0, 0))[1]],
                                    strings[functions.get(fid, (0, 0))[0]], line))
                           for fid, line in lines]

    # a profile with no sample has nothing to estimate (an empty window of
    # --interval): exact, or merging it would make the merge estimated
    exact = bool(exact_raw) or not samples_raw
    for raw in exact_raw:
        lk: Dict[str, Any] = {f: None if f in _EXACT_STR else 0 for f in _EXACT}
        for f, w, v in _fields(raw):
            if 1 <= f <= len(_EXACT):
                name = _EXACT[f - 1]
                lk[name] = (strings[v] or None) if name in _EXACT_STR else _signed(v)
        lk["name"] = lk["name"] or lock_name(lk["file"], lk["line"], lk["var"])
        lk["kind"] = lk["kind"] or "<unknown>"
        lk["site"] = f"{lk['file']}:{lk['line']}" if lk["file"] else "<unknown>"
        b.lock(lk)

    estimated: Dict[int, Dict[str, Any]] = {}     # locks the exact section lacks
    for sraw in samples_raw:
        locs: List[int] = []
        values: List[int] = []
        labels: Dict[str, Any] = {}
        request: List[Tuple[str, str]] = []
        for f, w, v in _fields(sraw):
            if f == 1:
                locs += _ints(v, w)
            elif f == 2:
                values += [_signed(x) for x in _ints(v, w)]
            elif f == 3:
                lab = {lf: lv for lf, _, lv in _fields(v)}
                key = strings[lab.get(1, 0)]
                if key in _OWN_LABELS:
                    labels[key] = strings[lab[2]] if lab.get(2) else lab.get(3, 0)
                elif lab.get(2):
                    request.append((key, strings[lab[2]]))
        st = b.stack(tuple(j for lid in locs for j in loc_frames.get(lid, ())))
        name = labels.get("lock name") or "<unknown>"
        kind = labels.get("lock kind") or "<unknown>"
        lk = b.find_lock(name, kind)
        if lk is None:
            lk = b.lock({"name": name, "kind": kind, "file": None, "line": 0, "var": None,
                         "function": None, "site": name, "locks": 1,
                         "acquisition_samples": 0, "acquisitions": 0, "contentions": 0,
                         "timeouts": 0, "wait_ns": 0, "max_wait_ns": None,
                         "hold_samples": 0, "hold_ns": 0, "cond_waits": 0, "cond_wait_ns": 0})
            estimated[lk] = b.locks[lk]
        tname = labels.get("thread name")
        th = b.thread(tname, labels.get("thread id") or 0) if tname is not None else NONE
        kname = labels.get("task name")
        tk = b.task(kname) if kname is not None else NONE
        ls = b.label_set(request) if request else NONE
        for ev, c, n in columns:
            count = values[c] if c is not None and c < len(values) else 0
            value = values[n] if n is not None and n < len(values) else 0
            if not (count or value):
                continue
            b.add(lk, st, ev, th, tk, 1, count, value, ls)
            est = estimated.get(lk)
            if est is not None:
                # no exact figures for this lock: its figures from its samples
                if ev == EVENT_ID["contention"]:
                    est["contentions"] += count
                    est["wait_ns"] += value
                elif ev == EVENT_ID["acquire"]:
                    est["acquisitions"] += count
                elif ev == EVENT_ID["hold"]:
                    est["hold_ns"] += value
                elif ev == EVENT_ID["cond_wait"]:
                    est["cond_waits"] += count
                    est["cond_wait_ns"] += value

    texts = [strings[c] for c in comments]
    counters: Dict[str, int] = {}
    sample_rate: Optional[float] = None
    wait_period: Optional[int] = None
    max_overhead: Optional[float] = None
    other = []
    for c in texts:
        if c.startswith("lockprof ") and "=" in c:
            k, _, v = c[len("lockprof "):].partition("=")
            if k == "sample_rate":
                sample_rate = None if v == "None" else float(v)
                continue
            if k == "wait_period_ns":
                wait_period = None if v == "None" else int(v)
                continue
            if k == "max_overhead":
                max_overhead = float(v)
                continue
            if v.isdigit():
                counters[k] = int(v)
                continue
        other.append(c)
    windows = []
    for raw in windows_raw:
        ws = json.loads(raw.decode("utf-8"))
        if not isinstance(ws, list):
            raise ProfileError("its windows section is not a list of windows")
        for w in ws:
            wait = {}
            for name, kind, v in w.get("wait", ()):
                j = b.find_lock(name, kind)
                if j is not None:
                    wait[j] = wait.get(j, 0) + v
            windows.append({"start_ns": int(w.get("start_ns", 0)),
                            "duration_ns": int(w.get("duration_ns", 0)),
                            "source": w.get("source"), "wait": wait})
    rates = []
    for raw in rates_raw:
        rs = json.loads(raw.decode("utf-8"))
        if not isinstance(rs, list) or not all(isinstance(x, list) and len(x) == 2 for x in rs):
            raise ProfileError("its rates section is not a list of [time, rate] pairs")
        rates += [(int(t), float(r)) for t, r in rs]
    return b.build(exact=exact, time_nanos=meta.get("time_nanos", 0),
                   duration_nanos=meta.get("duration_nanos", 0), sample_rate=sample_rate,
                   wait_period_ns=wait_period, counters=counters, comments=other,
                   windows=windows, max_overhead=max_overhead, rates=rates)
