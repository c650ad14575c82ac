"""The text report: the top locks by wait (or another column), each of the
first few followed by its hottest stacks, and a footer naming every cap
that dropped or folded something."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ._files import write_text
from ._names import frame_name, short_name, short_path
from .._names import is_label
from .model import EVENT_ID, Profile, has_event

SORT_KEYS = {"wait": "wait_ns", "hold": "hold_ns", "contentions": "contentions",
             "acquisitions": "acquisitions"}


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def shown_name(lk: Dict[str, Any]) -> str:
    if is_label(lk.get("var")):
        name = lk["var"]
    elif lk.get("file"):
        name = f"{short_path(lk['file'])}:{lk['line']}"
        name = f"{name}:{lk['var']}" if lk.get("var") else name
    else:
        name = short_name(lk["name"])
    if (lk.get("locks") or 1) > 1:
        name += f" (x{lk['locks']})"
    return name


def hot_stacks(p: Profile, lock: int, n: int = 2, depth: int = 4) -> List[str]:
    """Lock `lock`'s n stacks with the most wait (else the most
    acquisitions), innermost frame first, one line each."""
    return hot_stacks_of(p, [lock], n, depth)[lock]


def hot_stacks_of(p: Profile, locks: List[int], n: int = 2,
                  depth: int = 4) -> Dict[int, List[str]]:
    """hot_stacks() of several locks, in one pass over the rows."""
    wanted = set(locks)
    wait_e, acq_e = EVENT_ID["contention"], EVENT_ID["acquire"]
    per: Dict[Tuple[int, int], Dict[int, float]] = {}
    for e, lk, s, c, v in zip(*p.columns("event", "lock", "stack", "count", "value")):
        if lk in wanted and (e == wait_e or e == acq_e):
            d = per.setdefault((lk, e), {})
            d[s] = d.get(s, 0) + (v if e == wait_e else c)
    out: Dict[int, List[str]] = {}
    for lock in locks:
        out[lock] = []
        for e, what in ((wait_e, "wait"), (acq_e, "acquisitions")):
            by: Dict[Tuple, float] = {}
            for s, v in per.get((lock, e), {}).items():
                key = tuple(p.frames[f] for f in p.trimmed_stack_ids(s)[:depth])
                by[key] = by.get(key, 0) + v
            if by:
                total = sum(by.values())
                best = sorted(by.items(), key=lambda kv: -kv[1])[:n]
                out[lock] = [f"{100 * v / total:5.1f}% of {what}: "
                             + " <- ".join(frame_name(f) for f in frames)
                             for frames, v in best if v > 0]
                break
    return out


def report(p: Profile, top: int = 10, sort: str = "wait", stacks: int = 3) -> str:
    key = SORT_KEYS[sort]
    order = sorted(range(len(p.locks)),
                   key=lambda i: (-p.locks[i][key], -p.locks[i]["wait_ns"]))
    order = [i for i in order if has_event(p.locks[i])]
    shown = order[:top]
    head = ["lock (file:line:name)", "kind", "contentions", "wait ms", "mean wait us",
            "max wait ms", "hold ms", "acquisitions", "cond.wait ms"]
    body = []
    for i in shown:
        r = p.locks[i]
        c = r["contentions"]
        body.append([shown_name(r), r["kind"], f"{c:.0f}", _ms(r["wait_ns"]),
                     f"{r['wait_ns'] / c / 1e3:.1f}" if c else "-",
                     _ms(r["max_wait_ns"]) if r.get("max_wait_ns") is not None else "-",
                     _ms(r["hold_ns"]), f"{r['acquisitions']:.0f}",
                     _ms(r["cond_wait_ns"]) if r.get("cond_waits") else "-"])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

    def fmt(row):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    rate = p.sample_rate if p.sample_rate is not None else 0.0
    figures = ("contentions and waits exact, acquisitions and hold estimated" if p.exact else
               "no exact figures in this file: every column is estimated from its samples")
    lines = [f"lockprof: top {len(shown)} of {len(order)} lock names by {sort} "
             f"(sample rate {rate:g}; {figures})", fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body]
    if not shown:
        lines.append("(no lock events recorded)")
    blocks = []
    hot = hot_stacks_of(p, shown[:stacks]) if stacks else {}
    for b, i in zip(body, shown[:stacks]):
        found = hot[i]
        if found:
            blocks.append(f"  {b[0]}")
            blocks += [f"    {line}" for line in found]
    return _finish(p, lines, "hottest stacks (innermost first):", blocks)


def _finish(p: Profile, lines: List[str], title: str, blocks: List[str]) -> str:
    """the report's lines, then its blocks under `title`, then a line per
    cap that dropped something"""
    if blocks:
        lines = lines + ["", title] + blocks
    notes = p.cap_notes()
    if notes:
        lines = lines + [""] + [f"lockprof: {n}" for n in notes]
    return "\n".join(lines)


def report_by(p: Profile, key: str, top: int = 10, locks: int = 3) -> str:
    """The figures grouped by request label `key` (lockprof.labels, the
    middleware's `endpoint`): one line per value, most blocked first, each
    followed by the locks it waited on most."""
    groups = p.by_label(key)
    with_key = [g for g in groups if g["value"] is not None]
    head = [key, "contentions", "wait ms", "cond.wait ms", "wait caused ms", "hold ms",
            "acquisitions"]
    body = []
    for g in groups[:top]:
        body.append([str(g["value"]) if g["value"] is not None else f"(no {key})",
                     f"{g['contentions']:.0f}", _ms(g["wait_ns"]), _ms(g["cond_wait_ns"]),
                     _ms(g["caused_wait_ns"]), _ms(g["hold_ns"]), f"{g['acquisitions']:.0f}"])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

    def fmt(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    lines = [f"lockprof: {len(with_key)} values of label {key!r}, by lock wait plus "
             f"Condition wait (estimated from the samples; waits of a wait period or more "
             f"are all recorded)", fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body]
    if not with_key:
        known = ", ".join(p.label_keys()) or "none"
        lines.append(f"(no event carries the label {key!r}; the labels in this profile: "
                     f"{known})")
    blocks = []
    for b, g in zip(body, groups[:top]):
        waited = [t for t in g["locks"][:locks] if t[1] + t[2] > 0]
        if waited:
            blocks.append(f"  {b[0]}")
            blocks += [f"    {_ms(w + cw)} ms  {shown_name(p.locks[lk])}"
                       + (f" (Condition.wait {_ms(cw)} ms)" if cw else "")
                       for lk, w, cw in waited]
    return _finish(p, lines, "waited on (lock wait + Condition wait):", blocks)


def write(p: Profile, path: str) -> None:
    write_text(path, report(p, 20) + "\n")
