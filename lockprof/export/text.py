"""The text report: the top locks by wait (or another column), each of the
first few followed by its hottest stacks, and a footer naming every cap
that dropped or folded something."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ._files import write_text
from ._names import frame_name, is_own, owner_suffix, short_name, short_path
from .._names import is_label
from .model import EVENT_ID, Profile

# "wait": lock wait and the Condition wait of requests together (blocked);
# "lock-wait": lock wait alone
SORT_KEYS = {"wait": "blocked", "lock-wait": "wait_ns", "hold": "hold_ns",
             "contentions": "contentions", "acquisitions": "acquisitions"}


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
    return name + owner_suffix(lk)


def hot_stacks(p: Profile, lock: int, n: int = 2, depth: int = 4) -> List[str]:
    """Lock `lock`'s n stacks with the most wait (else the most
    acquisitions), innermost frame first, one line each."""
    return hot_stacks_of(p, [lock], n, depth)[lock]


def stack_summary(p: Profile, stack: int, depth: int = 4) -> Tuple:
    """A stack as the report sums it: its `depth` innermost frames and, when
    none of them is the program's own code, the innermost frame that is
    (None: there is none, or it is among those shown)."""
    ids = p.trimmed_stack_ids(stack)
    shown = tuple(p.frames[f] for f in ids[:depth])
    if any(is_own(fr[0]) for fr in shown):
        return shown, None
    own = next((p.frames[f] for f in ids[depth:] if is_own(p.frames[f][0])), None)
    return shown, own


def summary_text(shown: Tuple, own) -> str:
    """`emit (__init__.py:1160) <- ... <- *index (flask_app.py:65)`: the
    program's own frame, when past the innermost ones, marked with *"""
    text = " <- ".join(frame_name(f) for f in shown)
    return text + f" <- ... <- *{frame_name(own)}" if own is not None else text


def hot_stacks_of(p: Profile, locks: List[int], n: int = 2, depth: int = 4,
                  idle: bool = False) -> Dict[int, List[str]]:
    """hot_stacks() of several locks, in one pass over the rows: by the wait
    (lock wait and Condition wait; with idle, the idle Condition waits
    only), else by acquisitions.  Each stack is its innermost frames and the
    program's own innermost frame (stack_summary)."""
    wanted = set(locks)
    wait_e, acq_e, cw_e = EVENT_ID["contention"], EVENT_ID["acquire"], EVENT_ID["cond_wait"]
    per: Dict[Tuple[int, int], Dict[int, float]] = {}
    for e, lk, s, ls, c, v in zip(*p.columns("event", "lock", "stack", "labels", "count",
                                             "value")):
        if lk not in wanted or e not in (wait_e, acq_e, cw_e):
            continue
        if e == cw_e:
            if p.is_idle_wait(s, ls) != idle:
                continue
            e = wait_e
        elif idle:
            continue
        d = per.setdefault((lk, e), {})
        d[s] = d.get(s, 0) + (v if e == wait_e else c)
    out: Dict[int, List[str]] = {}
    for lock in locks:
        out[lock] = []
        for e, what in ((wait_e, "wait"), (acq_e, "acquisitions")):
            by: Dict[Tuple, float] = {}
            for s, v in per.get((lock, e), {}).items():
                key = stack_summary(p, s, depth)
                by[key] = by.get(key, 0) + v
            if by:
                total = sum(by.values())
                best = sorted(by.items(), key=lambda kv: -kv[1])[:n]
                out[lock] = [f"{100 * v / total:5.1f}% of {what}: " + summary_text(*key)
                             for key, v in best if v > 0]
                break
    return out


def report(p: Profile, top: int = 10, sort: str = "wait", stacks: int = 3) -> str:
    """The top locks: by default by the time they blocked threads and
    requests (lock wait, and Condition wait outside idle waits for work),
    each of the first `stacks` with its hottest stacks; then the idle
    Condition waits (threads waiting for work) apart; then the caps."""
    order = p.ranked(SORT_KEYS[sort])
    shown = order[:top]
    idle = p.idle_cond_waits()
    head = ["lock (file:line:name)", "kind", "blocked ms", "contentions", "wait ms",
            "mean wait us", "max wait ms", "cond.wait ms", "hold ms", "acquisitions"]
    body = []
    for i in shown:
        r = p.locks[i]
        c = r["contentions"]
        cw = max(0.0, (r.get("cond_wait_ns") or 0) - idle.get(i, 0.0))    # (rounding)
        body.append([shown_name(r), r["kind"], _ms(p.blocked_ns(i)), f"{c:.0f}",
                     _ms(r["wait_ns"]), f"{r['wait_ns'] / c / 1e3:.1f}" if c else "-",
                     _ms(r["max_wait_ns"]) if r.get("max_wait_ns") is not None else "-",
                     _ms(cw) if r.get("cond_waits") else "-",
                     _ms(r["hold_ns"]), f"{r['acquisitions']:.0f}"])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

    def fmt(row):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    rate = p.sample_rate if p.sample_rate is not None else 0.0
    figures = ("contentions and waits exact, acquisitions and hold estimated" if p.exact else
               "no exact figures in this file: every column is estimated from its samples")
    by = ("blocked time (lock wait + Condition wait of requests)" if sort == "wait"
          else sort)
    lines = [f"lockprof: top {len(shown)} of {len(order)} lock names by {by} "
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
    # threads waiting for work: not requests waiting, so not ranked above
    waiting = sorted((i for i, v in idle.items() if v > 0), key=lambda i: -idle[i])
    extra: List[str] = []
    if waiting:
        extra = ["", "waiting for work (idle threads in Condition.wait; not ranked above):"]
        idle_hot = hot_stacks_of(p, waiting[:top], n=1, idle=True) if stacks else {}
        for i in waiting[:top]:
            extra.append(f"  {shown_name(p.locks[i])}  {p.locks[i]['kind']}  "
                         f"{_ms(idle[i])} ms idle")
            extra += [f"    {line}" for line in idle_hot.get(i, [])]
    return _finish(p, lines, "hottest stacks (innermost first; *: your code's innermost "
                   "frame, past those shown):", blocks, extra)


def _finish(p: Profile, lines: List[str], title: str, blocks: List[str],
            extra: List[str] = ()) -> str:
    """the report's lines, then its blocks under `title`, then `extra`, then
    a line per cap that dropped something"""
    if blocks:
        lines = lines + ["", title] + blocks
    lines = lines + list(extra)
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
