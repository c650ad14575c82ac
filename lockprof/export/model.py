"""The profile model: one value every writer reads.

A Profile is built once per export, from the runtime's tables
(Profile.from_snapshot, on what _lockprof.export() returns) or from a pprof
file (lockprof.export.pprof.read).  It holds:

- locks: one dict per lock name and kind (the locks of one creation line and
  variable are one entry, `locks` says how many), with the exact figures
  (contentions, timeouts, wait_ns, max_wait_ns, cond_waits, cond_wait_ns)
  and the estimated ones (acquisitions, hold_ns);
- frames: (file, function, line) tuples, each once;
- stacks: a flat array of frame indices (leaf first) cut by stack_offsets;
- rows: columns (lock, stack, event, thread, task, labels, samples, count,
  value), one entry per (lock, stack, event, thread label, task label,
  request label set);
- threads / tasks: the labels the thread and task columns index (None where
  a row has none), thread_ids: the one thread a label stood for, or 0;
- label_sets: the request label sets (lockprof.labels) the labels column
  indexes, each a tuple of (key, value) pairs sorted by key;
- the time window, the settings and the runtime's counters.

Rows are never dicts inside the model; samples() makes them for the Python
API and for tests.  Writers only read a Profile; none imports another.
"""
from __future__ import annotations

import os
import re
from array import array
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .._names import is_label

EVENTS: Tuple[str, ...] = ("acquire", "contention", "hold", "cond_wait", "delay")
EVENT_ID = {e: i for i, e in enumerate(EVENTS)}

# measure -> (event, column, unit)
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

NONE = 0xFFFFFFFF          # a row with no thread or task label

# the per-lock fields, in the order the runtime's export gives them
_LOCK_FIELDS = ("kind", "file", "line", "function", "var", "locks", "acquisition_samples",
                "acquisitions", "contentions", "timeouts", "wait_ns", "max_wait_ns",
                "hold_samples", "hold_ns", "cond_waits", "cond_wait_ns", "owner")
EXACT_FIELDS = ("contentions", "timeouts", "wait_ns", "max_wait_ns", "cond_waits",
                "cond_wait_ns", "locks")

# the runtime's caps: counter of what was dropped -> (cap, what it bounds,
# the setting that raises it)
CAPS: Dict[str, Tuple[str, str]] = {
    "dropped_locks": ("max_locks", "locks past the cap were folded into one <other> record"),
    "dropped_stacks": ("max_stacks", "events whose stack did not fit kept no stack"),
    "dropped_samples": ("max_samples", "stack samples whose row did not fit were dropped"),
    "dropped_sites": ("max_sites", "locks whose creation site did not fit have none"),
    "dropped_thread_names": ("max_thread_names",
                             "events of threads past the cap are labelled <other>"),
    "dropped_task_names": ("max_task_names",
                           "events of tasks past the cap are labelled <other>"),
    "dropped_label_sets": ("max_label_sets",
                           "events with request label sets past the cap have their label "
                           "values recorded as <other>"),
    "cut_label_values": ("max_label_value",
                         "events had request label values longer than the cap, cut to it"),
    "dropped_order_edges": ("max_order_edges",
                            "lock-order pairs past the cap were not checked for cycles"),
    "dropped_hang_waits": ("max_hang_waits",
                           "waits past the cap were not watched by the hang doctor"),
    "dropped_http_clients": ("http_max_clients",
                             "requests to the live endpoint past the cap were answered 503"),
    "dropped_rate_windows": ("max_rate_windows",
                             "the oldest changes of the sampling rate were dropped from the "
                             "profile's history of it"),
}
COMMENT_COUNTERS = tuple(CAPS) + ("errors", "name_errors", "foreign_locks", "recording_ns",
                                  "rate_cuts") + tuple(cap for cap, _ in CAPS.values())


_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_OWN_ENTRY = ("__main__.py", "_session.py", "_autostart.py", "__init__.py")


def is_outer(file: Optional[str]) -> bool:
    """A frame every thread or program starts with, trimmed from the root end
    of stacks by every reader but pprof (which keeps whole stacks for `go
    tool pprof`): threading's bootstrap, runpy, lockprof's own entry points.
    Matched by file name, so profiles made on other machines trim alike."""
    if not file:
        return False
    f = file.replace("\\", "/")
    base = f.rsplit("/", 1)[-1]
    if base in ("threading.py", "runpy.py") or f in ("<frozen runpy>", "<frozen threading>"):
        return True
    return file.startswith(_OWN_DIR) or (f.rsplit("/", 2)[-2:-1] == ["lockprof"]
                                         and base in _OWN_ENTRY)


def _is_loop_step(file: Optional[str], func: Optional[str]) -> bool:
    """asyncio's Handle._run: every task step's frames start under it"""
    return bool(file) and func == "_run" and file.replace("\\", "/").endswith(
        "asyncio/events.py")


def trim_outer(frames: Sequence, outer, step=None) -> Sequence:
    """frames (leaf first) without the outer ones at the root end (outer(f):
    is_outer of its file), and, in an asyncio task, without the event loop's
    frames under its step (step(f): _is_loop_step; None when no frame is
    one): the task's coroutines are the root.  One frame is always kept."""
    n = len(frames)
    if step is not None:
        for k in range(1, n):
            if step(frames[k]):
                n = k
                break
    while n > 1 and outer(frames[n - 1]):
        n -= 1
    return frames[:n]


def has_event(lk: Dict[str, Any]) -> bool:
    """Whether a lock's figures record anything."""
    return bool(lk["contentions"] or lk["acquisitions"] or lk["hold_ns"] or lk["cond_waits"]
                or lk.get("acquisition_samples") or lk.get("hold_samples"))


def lock_name(file: Optional[str], line: int, var: Optional[str]) -> str:
    if is_label(var):
        return var
    site = f"{file}:{line}" if file else "<unknown>"
    return f"{site}:{var}" if var else site


def _u32(data: bytes = b"") -> memoryview:
    return memoryview(data).cast("I") if data else memoryview(array("I"))


class Profile:
    """One export's data; see the module's docstring."""

    def __init__(self, *, locks: List[Dict[str, Any]], frames: List[Tuple[str, str, int]],
                 stack_offsets: Sequence[int], stack_frames: Sequence[int],
                 rows: Dict[str, Sequence], threads: List[Optional[str]],
                 thread_ids: List[int], tasks: List[Optional[str]], exact: bool,
                 thread_native_ids: Optional[List[int]] = None,
                 time_nanos: int = 0, duration_nanos: int = 0,
                 sample_rate: Optional[float] = None, wait_period_ns: Optional[int] = None,
                 counters: Optional[Dict[str, int]] = None, comments: Sequence[str] = (),
                 title: str = "lockprof", lock_order: Sequence[List[Dict[str, Any]]] = (),
                 windows: Sequence[Dict[str, Any]] = (),
                 label_sets: Sequence[Tuple[Tuple[str, str], ...]] = (),
                 max_overhead: Optional[float] = None,
                 rates: Sequence[Tuple[int, float]] = ()):
        self.locks = locks
        # the CPU budget (percent; None: not recorded) and the sampling rate
        # over time: (wall ns, rate in force from then), in time order; one
        # entry, the start, unless the budget moved it
        self.max_overhead = max_overhead
        self.rates = sorted((int(t), float(r)) for t, r in rates)
        # the profiles a merged one was made of, in time order: each a dict
        # with start_ns, duration_ns, source (file name) and wait ({lock
        # index: exact wait ns}); empty for a profile read or made whole
        self.windows = list(windows)
        # potential deadlocks (lock_order=True): cycles of edge dicts, as
        # lockprof.lock_order_cycles() gives them
        self.lock_order = [list(c) for c in lock_order]
        self.frames = frames
        self.stack_offsets = stack_offsets
        self.stack_frames = stack_frames
        self.rows = rows
        self.threads = threads
        self.thread_ids = thread_ids
        self.thread_native_ids = thread_native_ids or [0] * len(thread_ids)
        self.tasks = tasks
        self.label_sets = [tuple(tuple(p) for p in s) for s in label_sets]
        if "labels" not in rows:
            rows["labels"] = array("I", [NONE]) * len(rows["lock"])
        self.exact = exact
        self.time_nanos = time_nanos
        self.duration_nanos = duration_nanos
        self.sample_rate = sample_rate
        self.wait_period_ns = wait_period_ns
        self.counters = dict(counters or {})
        self.extra_comments = list(comments)
        self.title = title

    # -- building --------------------------------------------------------
    @classmethod
    def from_snapshot(cls, snap: Dict[str, Any], **meta) -> "Profile":
        """From _lockprof.export()'s dict: columns stay the bytes it made."""
        locks = []
        for t in snap["locks"]:
            d = dict(zip(_LOCK_FIELDS, t))
            d["name"] = lock_name(d["file"], d["line"], d["var"])
            d["site"] = f"{d['file']}:{d['line']}" if d["file"] else "<unknown>"
            locks.append(d)
        rows = {"lock": _u32(snap["row_lock"]), "stack": _u32(snap["row_stack"]),
                "event": memoryview(snap["row_event"]),
                "thread": _u32(snap["row_thread"]), "task": _u32(snap["row_task"]),
                "labels": _u32(snap["row_labels"]),
                "samples": memoryview(snap["row_samples"]).cast("Q") if snap["row_samples"]
                else memoryview(array("Q")),
                "count": memoryview(snap["row_count"]).cast("d") if snap["row_count"]
                else memoryview(array("d")),
                "value": memoryview(snap["row_value"]).cast("d") if snap["row_value"]
                else memoryview(array("d"))}
        return cls(locks=locks, frames=snap["frames"],
                   stack_offsets=_u32(snap["stack_offsets"]),
                   stack_frames=_u32(snap["stack_frames"]), rows=rows,
                   threads=snap["threads"], thread_ids=[i for i, _ in snap["thread_ids"]],
                   thread_native_ids=[n for _, n in snap["thread_ids"]],
                   tasks=snap["tasks"], label_sets=snap["label_sets"], exact=True,
                   counters=snap["counters"], **meta)

    # -- reading ---------------------------------------------------------
    @property
    def nrows(self) -> int:
        return len(self.rows["lock"])

    @property
    def nstacks(self) -> int:
        return len(self.stack_offsets) - 1

    def columns(self, *names: str) -> List[List]:
        """Row columns as lists (faster to walk in Python than the arrays)."""
        return [self.rows[n].tolist() for n in names]

    def stack(self, i: int) -> List[Tuple[str, str, int]]:
        """Stack i's frames, innermost first."""
        a, z = self.stack_offsets[i], self.stack_offsets[i + 1]
        frames = self.frames
        return [frames[f] for f in self.stack_frames[a:z]]

    def stack_ids(self, i: int) -> Sequence[int]:
        return self.stack_frames[self.stack_offsets[i]:self.stack_offsets[i + 1]]

    def trimmed_stack_ids(self, i: int) -> Sequence[int]:
        """stack i (leaf first) without the frames every thread starts with
        (is_outer, trim_outer): what the page, the text report, collapsed and
        speedscope show.  Each frame is classified once per profile."""
        flags = self.__dict__.get("_frame_flags")
        if flags is None or len(flags[0]) != len(self.frames):
            outer = bytearray(is_outer(fr[0]) for fr in self.frames)
            step = bytearray(_is_loop_step(fr[0], fr[1]) for fr in self.frames)
            flags = self._frame_flags = (outer, step, any(step))
        outer, step, any_step = flags
        return trim_outer(self.stack_ids(i), outer.__getitem__,
                          step.__getitem__ if any_step else None)

    def comments(self) -> List[str]:
        """The settings, and every cap with what it dropped (never silent)."""
        out = [f"lockprof sample_rate={self.sample_rate}",
               f"lockprof wait_period_ns={self.wait_period_ns}"]
        if self.max_overhead is not None:
            out.append(f"lockprof max_overhead={self.max_overhead:g}")
        for key in COMMENT_COUNTERS:
            if key in self.counters:
                out.append(f"lockprof {key}={self.counters[key]}")
        return out + [c for c in self.extra_comments if c not in out]

    def cap_notes(self) -> List[str]:
        """One line per cap that dropped or folded something."""
        out = []
        for key, (cap, what) in CAPS.items():
            n = self.counters.get(key, 0)
            if n:
                limit = self.counters.get(cap)
                out.append(f"{key}={n}: {cap}={limit} was reached; {what} "
                           f"(raise it: lockprof.start({cap}=...))")
        cuts = self.counters.get("rate_cuts", 0)
        if cuts and self.rates:
            low = min(r for _, r in self.rates)
            budget = f"{self.max_overhead:g}%" if self.max_overhead is not None else "its"
            out.append(f"rate_cuts={cuts}: the CPU budget (max_overhead={budget}) lowered the "
                       f"sampling rate, to {low:.3g} at the lowest; acquisitions and holds are "
                       f"weighted by the rate in force (raise it: lockprof.start(max_overhead="
                       f"...) or --max-overhead)")
        n = self.counters.get("errors", 0) + self.counters.get("name_errors", 0)
        if n:
            out.append(f"errors={n}: failures inside profiling were absorbed; some events or "
                       f"names may be missing")
        return out

    def samples(self) -> List[Dict[str, Any]]:
        """The rows as dicts (lockprof.samples()' shape)."""
        return list(self.iter_samples())

    def iter_samples(self) -> Iterator[Dict[str, Any]]:
        r = self.rows
        stacks: Dict[int, Tuple[List, int]] = {}
        for i in range(self.nrows):
            s = r["stack"][i]
            got = stacks.get(s)
            if got is None:
                frames = self.stack(s)
                omitted = 0
                if frames and not frames[-1][0]:
                    m = re.fullmatch(r"<(\d+) frames omitted>", frames[-1][1])
                    if m:
                        omitted = int(m.group(1))
                        frames = frames[:-1]
                got = stacks[s] = (frames, omitted)
            lock = self.locks[r["lock"][i]]
            th, tk, ls = r["thread"][i], r["task"][i], r["labels"][i]
            tid = self.thread_ids[th] if th < len(self.thread_ids) else 0
            nid = self.thread_native_ids[th] if th < len(self.thread_native_ids) else 0
            yield {"lock_id": r["lock"][i], "kind": lock["kind"], "lock_name": lock["name"],
                   "site": lock.get("site"), "event": EVENTS[r["event"][i]],
                   "samples": r["samples"][i], "count": r["count"][i], "value": r["value"][i],
                   "frames": list(got[0]), "omitted": got[1],
                   "thread_id": tid or None, "thread_native_id": nid or None,
                   "thread_name": self.threads[th] if th < len(self.threads) else None,
                   "task_name": self.tasks[tk] if tk < len(self.tasks) else None,
                   "labels": dict(self.label_sets[ls]) if ls < len(self.label_sets) else {}}

    def label_keys(self) -> List[str]:
        """The request label names that occur in this profile, sorted."""
        return sorted({k for ls in self.label_sets for k, _ in ls})

    def by_label(self, key: str) -> List[Dict[str, Any]]:
        """The figures of the rows grouped by the value of request label
        `key` (None: rows without it, last), most blocked (lock wait plus
        Condition wait) first.  Each group: value, contentions, wait_ns,
        caused_wait_ns, acquisitions, hold_ns, cond_waits, cond_wait_ns
        (estimates from the samples, exact where every wait was recorded),
        and locks: [(lock index, wait_ns, cond_wait_ns)] most blocked first."""
        value_of = [dict(ls).get(key) for ls in self.label_sets]
        groups: Dict[Optional[str], Dict[str, Any]] = {}
        per_lock: Dict[Optional[str], Dict[int, List[float]]] = {}
        names = {EVENT_ID["contention"]: ("contentions", "wait_ns"),
                 EVENT_ID["delay"]: (None, "caused_wait_ns"),
                 EVENT_ID["acquire"]: ("acquisitions", None),
                 EVENT_ID["hold"]: (None, "hold_ns"),
                 EVENT_ID["cond_wait"]: ("cond_waits", "cond_wait_ns")}
        for e, lk, ls, c, v in zip(*self.columns("event", "lock", "labels", "count", "value")):
            val = value_of[ls] if ls < len(value_of) else None
            g = groups.get(val)
            if g is None:
                g = groups[val] = {"value": val, "contentions": 0.0, "wait_ns": 0.0,
                                   "caused_wait_ns": 0.0, "acquisitions": 0.0, "hold_ns": 0.0,
                                   "cond_waits": 0.0, "cond_wait_ns": 0.0}
                per_lock[val] = {}
            cname, vname = names.get(e, (None, None))
            if cname:
                g[cname] += c
            if vname:
                g[vname] += v
            if e in (EVENT_ID["contention"], EVENT_ID["cond_wait"]):
                acc = per_lock[val].setdefault(lk, [0.0, 0.0])
                acc[0 if e == EVENT_ID["contention"] else 1] += v
        out = []
        for val, g in groups.items():
            g["locks"] = sorted(((lk, w, cw) for lk, (w, cw) in per_lock[val].items()),
                                key=lambda t: -(t[1] + t[2]))
            out.append(g)
        # events outside any labelled request (idle workers, start-up) last
        out.sort(key=lambda g: (g["value"] is None, -(g["wait_ns"] + g["cond_wait_ns"]),
                                -g["contentions"], -g["acquisitions"], str(g["value"])))
        return out

    def idle_cond_waits(self) -> Dict[int, float]:
        """Per lock, the part of its Condition wait (ns, of the exact total)
        that was idle: threads waiting for work, not requests waiting.  With
        request labels in the profile a wait outside any labelled request is
        idle; without, a wait whose stack holds no frame of the program's own
        code (_names.is_own: a pool worker's or a server thread's loop).  The
        split is the rows' (sampled) and is applied to the exact total."""
        got = self.__dict__.get("_idle")
        if got is not None:
            return got
        cw = EVENT_ID["cond_wait"]
        total: Dict[int, float] = {}
        idle: Dict[int, float] = {}
        for e, lk, st, ls, v in zip(*self.columns("event", "lock", "stack", "labels", "value")):
            if e != cw or v <= 0:
                continue
            total[lk] = total.get(lk, 0.0) + v
            if self.is_idle_wait(st, ls):
                idle[lk] = idle.get(lk, 0.0) + v
        out = {}
        for lk, v in idle.items():
            exact = self.locks[lk].get("cond_wait_ns") or 0
            out[lk] = exact * v / total[lk] if total[lk] > 0 else 0.0
        self._idle = out
        return out

    def is_idle_wait(self, stack: int, labels: int) -> bool:
        """Whether a Condition wait row (its stack, its label set) is a thread
        waiting for work: outside any labelled request when the profile has
        labels, else no frame of the program's own code in its stack (a wait
        with no frames kept tells nothing: a request's)."""
        cache = self.__dict__.get("_idle_rule")
        if cache is None:
            cache = self._idle_rule = (any(ls != NONE for ls in self.rows["labels"]), {})
        labelled, own_stack = cache
        if labelled:
            return labels == NONE
        own = own_stack.get(stack)
        if own is None:
            from ._names import is_own
            ids = self.trimmed_stack_ids(stack)
            own = own_stack[stack] = not len(ids) or any(is_own(self.frames[f][0]) for f in ids)
        return not own

    def blocked_ns(self, i: int) -> float:
        """What lock i's waiters were blocked: its lock wait and the Condition
        wait of requests (idle_cond_waits left out)."""
        lk = self.locks[i]
        cond = max(0.0, (lk.get("cond_wait_ns") or 0) - self.idle_cond_waits().get(i, 0.0))
        return (lk.get("wait_ns") or 0) + cond

    def ranked(self, sort: str = "blocked") -> List[int]:
        """The locks with events, in the report's order: by blocking time
        (lock wait and request Condition wait together; locks that blocked
        nobody after all that did), or by sort ("wait_ns", "hold_ns",
        "contentions", "acquisitions")."""
        idx = [i for i, lk in enumerate(self.locks) if has_event(lk)]
        if sort == "blocked":
            def key(i):
                b = self.blocked_ns(i)
                return (b <= 0, -b, -(self.locks[i].get("acquisitions") or 0))
        else:
            def key(i):
                return (-(self.locks[i].get(sort) or 0), -(self.locks[i].get("wait_ns") or 0))
        return sorted(idx, key=key)

    def active_locks(self) -> List[Dict[str, Any]]:
        """The locks with any event in this profile."""
        return [lk for lk in self.locks if has_event(lk)]

    def sums_by_stack_lock(self) -> Tuple[int, List[Dict[int, int]]]:
        """(n, totals): per measure (MEASURES' order), the rounded positive
        values summed by stack * n + lock: what a flame graph draws, in one
        pass over the rows."""
        n = max(1, len(self.locks))
        totals: List[Dict[int, int]] = [{} for _ in MEASURES]
        counts, values = self.columns("count", "value")
        column = {"count": counts, "value": values}
        feeds: Dict[int, List[Tuple[Dict[int, int], List]]] = {}
        for m, (event, col, _) in enumerate(MEASURES.values()):
            feeds.setdefault(EVENT_ID[event], []).append((totals[m], column[col]))
        for i, (e, s, lk) in enumerate(zip(*self.columns("event", "stack", "lock"))):
            for tot, vals in feeds.get(e, ()):
                w = int(round(vals[i]))
                if w > 0:
                    key = s * n + lk
                    tot[key] = tot.get(key, 0) + w
        return n, totals

    # -- combining -------------------------------------------------------
    @classmethod
    def merge(cls, profiles: Sequence["Profile"], sources: Optional[Sequence[str]] = None,
              **meta) -> "Profile":
        """One profile of several (the windows of one process, the files of
        forked workers, the per-test windows of a suite): locks by name and
        kind with their figures summed, frames, stacks, labels and rows
        re-interned.  Each input is kept as a window (its time range and the
        wait of each lock), so a reader can draw wait over time."""
        b = Builder()
        windows: List[Dict[str, Any]] = []
        for n, p in enumerate(profiles):
            b.add_profile(p)
            ix = [b.find_lock(lk["name"], lk["kind"]) for lk in p.locks]
            if p.windows:
                for w in p.windows:
                    windows.append(dict(w, wait={ix[i]: v for i, v in w["wait"].items()}))
                continue
            windows.append({"start_ns": p.time_nanos, "duration_ns": p.duration_nanos,
                            "source": sources[n] if sources else p.title,
                            "wait": {ix[i]: lk["wait_ns"] for i, lk in enumerate(p.locks)
                                     if lk.get("wait_ns")}})
        windows.sort(key=lambda w: w["start_ns"])
        first = profiles[0] if profiles else None
        start = min((p.time_nanos for p in profiles if p.time_nanos), default=0)
        end = max((p.time_nanos + p.duration_nanos for p in profiles if p.time_nanos),
                  default=0)
        meta.setdefault("time_nanos", start)
        meta.setdefault("duration_nanos", max(0, end - start))
        meta.setdefault("sample_rate", first.sample_rate if first else None)
        meta.setdefault("wait_period_ns", first.wait_period_ns if first else None)
        meta.setdefault("max_overhead", first.max_overhead if first else None)
        meta.setdefault("rates", [x for p in profiles for x in p.rates])
        meta.setdefault("windows", windows)
        # a profile with no lock cannot make the others' figures estimates
        return b.build(exact=all(p.exact for p in profiles if p.locks), **meta)


    @classmethod
    def delta(cls, before: "Profile", after: "Profile", **meta) -> "Profile":
        """What happened between two profiles of one process (Go's
        `?seconds=N`): after's figures less before's, lock by lock and row by
        row; rows and locks with nothing left drop out.  When the tables were
        reset in between (a figure went down), after is all there is since."""
        old = {(lk["name"], lk["kind"]): lk for lk in before.locks}
        for lk in after.locks:
            prev = old.get((lk["name"], lk["kind"]))
            if prev is not None and any((lk.get(f) or 0) < (prev.get(f) or 0)
                                        for f in ("contentions", "acquisitions", "wait_ns")):
                return after
        b = Builder()
        b.add_profile(after)
        b.add_profile(before, sign=-1)
        meta.setdefault("time_nanos", after.time_nanos)
        meta.setdefault("duration_nanos",
                        max(0, after.time_nanos + after.duration_nanos
                            - before.time_nanos - before.duration_nanos))
        meta.setdefault("sample_rate", after.sample_rate)
        meta.setdefault("wait_period_ns", after.wait_period_ns)
        meta.setdefault("max_overhead", after.max_overhead)
        # the rate in force at before's end, and its changes since
        cut = before.time_nanos + before.duration_nanos
        since = [x for x in after.rates if x[0] > cut]
        at_cut = [x for x in after.rates if x[0] <= cut][-1:]
        meta.setdefault("rates", [(cut, r) for _, r in at_cut] + since)
        meta.setdefault("title", after.title)
        meta.setdefault("counters", dict(after.counters))
        p = b.build(exact=after.exact and before.exact, **meta)
        # a lock whose figures did not move is not in the delta
        keep = [i for i, lk in enumerate(p.locks) if has_event(lk)]
        if len(keep) == len(p.locks):
            return p
        b2 = Builder()
        b2.add_profile(p)
        b2.locks = [b2.locks[i] for i in keep]
        remap = {old: new for new, old in enumerate(keep)}
        b2._rows = {(remap[k[0]],) + k[1:]: v for k, v in b2._rows.items() if k[0] in remap}
        return b2.build(exact=p.exact, **dict(meta, counters=p.counters, windows=()))


_SUMMED = ("locks", "acquisition_samples", "acquisitions", "contentions", "timeouts", "wait_ns",
           "hold_samples", "hold_ns", "cond_waits", "cond_wait_ns")


class Builder:
    """Builds a Profile piece by piece, interning as it goes: locks by name
    and kind (their figures summed), frames, stacks (tuples of frame
    indices), thread and task labels, and rows by their key.  The pprof
    reader and Profile.merge build through it."""

    def __init__(self) -> None:
        self.locks: List[Dict[str, Any]] = []
        self._lock_ix: Dict[Tuple, int] = {}
        self.frames: List[Tuple[str, str, int]] = []
        self._frame_ix: Dict[Tuple, int] = {}
        self.offsets, self.flat = array("I", [0]), array("I")
        self._stack_ix: Dict[Tuple[int, ...], int] = {}
        self.threads: List[Optional[str]] = []
        self.thread_ids: List[int] = []
        self._thread_ix: Dict[Any, int] = {}
        self.tasks: List[Optional[str]] = []
        self._task_ix: Dict[Any, int] = {}
        self.label_sets: List[Tuple[Tuple[str, str], ...]] = []
        self._set_ix: Dict[Tuple, int] = {}
        self._rows: Dict[Tuple, List[float]] = {}
        self.counters: Dict[str, int] = {}
        self.profiles = 0           # added whole by add_profile
        self.exact = True           # every profile added had exact figures
        self.lock_order: List[List[Dict[str, Any]]] = []
        self._cycle_keys: set = set()

    def add_profile(self, p: "Profile", sign: int = 1) -> None:
        """All of p: its locks, stacks, labels and rows re-interned, its
        counters summed (caps: the last one's).  sign=-1 takes p's figures
        away instead (Profile.delta); counters are then left as they are."""
        if sign < 0:
            self._subtract(p)
            return
        lmap = [self.lock(lk, whole=True) for lk in p.locks]
        fmap = [self.frame(fr) for fr in p.frames]
        smap = [self.stack(tuple(fmap[f] for f in p.stack_ids(s))) for s in range(p.nstacks)]
        thmap = [self.thread(name, p.thread_ids[i] if i < len(p.thread_ids) else 0)
                 for i, name in enumerate(p.threads)]
        tkmap = [self.task(name) for name in p.tasks]
        lsmap = [self.label_set(ls) for ls in p.label_sets]
        for lk, st, ev, th, tk, ls, n, c, v in zip(*p.columns(
                "lock", "stack", "event", "thread", "task", "labels", "samples", "count",
                "value")):
            self.add(lmap[lk], smap[st], ev, thmap[th] if th < len(thmap) else NONE,
                     tkmap[tk] if tk < len(tkmap) else NONE, n, c, v,
                     lsmap[ls] if ls < len(lsmap) else NONE)
        for k, v in p.counters.items():
            if k.startswith("max_"):
                self.counters[k] = v
            elif isinstance(v, int):
                self.counters[k] = self.counters.get(k, 0) + v
        self.profiles += 1
        self.exact = self.exact and p.exact
        for cycle in p.lock_order:
            self.cycle(cycle)

    def _subtract(self, p: "Profile") -> None:
        for lk in p.locks:
            j = self._lock_ix.get((lk["name"], lk["kind"]))
            if j is None:
                continue
            g = self.locks[j]
            for f in _SUMMED:
                if f != "locks" and g.get(f) is not None:
                    g[f] = max(0, g[f] - (lk.get(f) or 0))
            if not g.get("contentions"):
                g["max_wait_ns"] = 0
        lmap = [self._lock_ix.get((lk["name"], lk["kind"])) for lk in p.locks]
        fmap = [self._frame_ix.get(fr) for fr in p.frames]
        smap = []
        for s in range(p.nstacks):
            ids = tuple(fmap[f] for f in p.stack_ids(s))
            smap.append(None if None in ids else self._stack_ix.get(ids))
        thmap = [self._thread_ix.get(name) for name in p.threads]
        tkmap = [self._task_ix.get(name) for name in p.tasks]
        lsmap = [self._set_ix.get(ls) for ls in p.label_sets]
        for lk, st, ev, th, tk, ls, n, c, v in zip(*p.columns(
                "lock", "stack", "event", "thread", "task", "labels", "samples", "count",
                "value")):
            key = (lmap[lk], smap[st], ev, thmap[th] if th < len(thmap) else NONE,
                   tkmap[tk] if tk < len(tkmap) else NONE,
                   lsmap[ls] if ls < len(lsmap) else NONE)
            acc = self._rows.get(key)
            if acc is None:
                continue
            acc[0] -= n
            acc[1] -= c
            acc[2] -= v
            if acc[0] <= 0 and acc[1] <= 1e-9 and acc[2] <= 1e-9:
                del self._rows[key]
            else:
                acc[0], acc[1], acc[2] = max(acc[0], 0), max(acc[1], 0.0), max(acc[2], 0.0)

    def cycle(self, edges: List[Dict[str, Any]]) -> None:
        """A potential deadlock, kept once (windows and processes repeat it)."""
        key = tuple(sorted((e.get("held"), e.get("acquired")) for e in edges))
        if key not in self._cycle_keys:
            self._cycle_keys.add(key)
            self.lock_order.append(list(edges))

    def lock(self, lk: Dict[str, Any], whole: bool = False) -> int:
        """The index of lk's name and kind; a second lock of both adds up.
        whole: lk is one profile's entry for the name (merging profiles),
        whose lock count is the most any one profile had, not the sum (the
        windows of one process see the same locks again)."""
        k = (lk["name"], lk["kind"])
        j = self._lock_ix.get(k)
        if j is None:
            self._lock_ix[k] = j = len(self.locks)
            self.locks.append(dict(lk))
            return j
        g = self.locks[j]
        for f in _SUMMED:
            if f == "locks" and whole:
                g[f] = max(g.get(f) or 1, lk.get(f) or 1)
            elif g.get(f) is not None or lk.get(f) is not None:
                g[f] = (g.get(f) or 0) + (lk.get(f) or 0)
        if lk.get("max_wait_ns") is not None:
            g["max_wait_ns"] = max(g.get("max_wait_ns") or 0, lk["max_wait_ns"])
        return j

    def find_lock(self, name: str, kind: str) -> Optional[int]:
        return self._lock_ix.get((name, kind))

    def frame(self, fr: Tuple[str, str, int]) -> int:
        j = self._frame_ix.get(fr)
        if j is None:
            self._frame_ix[fr] = j = len(self.frames)
            self.frames.append(fr)
        return j

    def stack(self, frames: Tuple[int, ...]) -> int:
        j = self._stack_ix.get(frames)
        if j is None:
            self._stack_ix[frames] = j = len(self.offsets) - 1
            self.flat.extend(frames)
            self.offsets.append(len(self.flat))
        return j

    def thread(self, name: Optional[str], tid: int = 0) -> int:
        """A thread label; its id stays only while one thread carried it."""
        j = self._thread_ix.get(name)
        if j is None:
            self._thread_ix[name] = j = len(self.threads)
            self.threads.append(name)
            self.thread_ids.append(tid)
        elif self.thread_ids[j] != tid:
            self.thread_ids[j] = 0
        return j

    def task(self, name: Optional[str]) -> int:
        j = self._task_ix.get(name)
        if j is None:
            self._task_ix[name] = j = len(self.tasks)
            self.tasks.append(name)
        return j

    def label_set(self, pairs) -> int:
        """A request label set (pairs of key and value, in any order)."""
        key = tuple(sorted(tuple(p) for p in pairs))
        j = self._set_ix.get(key)
        if j is None:
            self._set_ix[key] = j = len(self.label_sets)
            self.label_sets.append(key)
        return j

    def add(self, lock: int, stack: int, event: int, thread: int, task: int,
            samples: float, count: float, value: float, labels: int = NONE) -> None:
        key = (lock, stack, event, thread, task, labels)
        acc = self._rows.get(key)
        if acc is None:
            self._rows[key] = [samples, count, value]
        else:
            acc[0] += samples
            acc[1] += count
            acc[2] += value

    def build(self, *, exact: bool, **meta) -> Profile:
        meta.setdefault("counters", self.counters)
        meta.setdefault("lock_order", self.lock_order)
        cols = {"lock": array("I"), "stack": array("I"), "event": array("B"),
                "thread": array("I"), "task": array("I"), "labels": array("I"),
                "samples": array("Q"),
                "count": array("d"), "value": array("d")}
        for (lk, st, ev, th, tk, ls), (n, c, v) in self._rows.items():
            cols["lock"].append(lk)
            cols["stack"].append(st)
            cols["event"].append(ev)
            cols["thread"].append(th)
            cols["task"].append(tk)
            cols["labels"].append(ls)
            cols["samples"].append(int(n))
            cols["count"].append(c)
            cols["value"].append(v)
        return Profile(locks=self.locks, frames=self.frames, stack_offsets=self.offsets,
                       stack_frames=self.flat, rows=cols, threads=self.threads,
                       thread_ids=self.thread_ids, tasks=self.tasks,
                       label_sets=self.label_sets, exact=exact, **meta)
