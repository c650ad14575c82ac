"""The text report: a table of the top locks by total wait."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

from .formats import frame_name


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def _prefixes() -> List[str]:
    import sysconfig
    paths = sysconfig.get_paths()
    out = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted((p.rstrip(os.sep) + os.sep for p in out if p), key=len, reverse=True)


def short_path(path: str) -> str:
    """A path as the report shows it: relative to the working directory when
    under it, relative to the stdlib or site-packages when there."""
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return rel
    except ValueError:
        pass
    for prefix in _prefixes():
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def short_name(name: str) -> str:
    """A lock name `path:line[:var]` with its path shortened."""
    m = re.match(r"(.+?):(\d+)(:.*)?\Z", name)
    if not m or m.group(1).startswith("<"):
        return name
    return f"{short_path(m.group(1))}:{m.group(2)}{m.group(3) or ''}"


def _site(r: Dict[str, Any]) -> str:
    if not r.get("file"):
        return "<unknown>"
    name = f"{short_path(r['file'])}:{r['line']}"
    return f"{name}:{r['var']}" if r.get("var") else name


SORT_KEYS = {"wait": "wait_ns", "hold": "hold_ns", "contentions": "contentions",
             "acquisitions": "acquisitions"}


def stats_from_samples(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per-lock totals from sample rows (a profile read back from a file)."""
    locks: Dict[Any, Dict[str, Any]] = {}
    for s in rows:
        name = s.get("lock_name") or "<unknown>"
        r = locks.setdefault(name, {"name": name, "kind": s.get("kind") or "<unknown>",
                                    "contentions": 0, "wait_ns": 0, "max_wait_ns": None,
                                    "hold_ns": 0, "acquisitions": 0, "cond_waits": 0,
                                    "cond_wait_ns": 0})
        if s["event"] == "contention":
            r["contentions"] += s["count"]
            r["wait_ns"] += s["value"]
        elif s["event"] == "acquire":
            r["acquisitions"] += s["count"]
        elif s["event"] == "hold":
            r["hold_ns"] += s["value"]
        elif s["event"] == "cond_wait":
            r["cond_waits"] += s["count"]
            r["cond_wait_ns"] += s["value"]
    return list(locks.values())


_BOOTSTRAP = ("run", "_bootstrap_inner", "_bootstrap")


def hot_stacks(samples: List[Dict[str, Any]], lock_name: str, n: int = 2,
               depth: int = 4) -> List[str]:
    """The lock's n stacks with the most wait (else the most acquisitions),
    innermost frame first, as one line each."""
    for event, field in (("contention", "value"), ("acquire", "count")):
        rows: Dict[Any, float] = {}
        for s in samples:
            if s["event"] == event and (s.get("lock_name") or "<unknown>") == lock_name:
                frames = list(s["frames"])
                while frames and frames[-1][1] in _BOOTSTRAP and frames[-1][0].endswith(
                        "threading.py"):
                    frames.pop()
                key = tuple(frames[:depth])
                rows[key] = rows.get(key, 0) + s[field]
        if rows:
            total = sum(rows.values())
            best = sorted(rows.items(), key=lambda kv: -kv[1])[:n]
            what = "wait" if event == "contention" else "acquisitions"
            return [f"{100 * v / total:5.1f}% of {what}: "
                    + " <- ".join(frame_name(f) for f in frames) for frames, v in best if v > 0]
    return []


_SUMMED = ("contentions", "wait_ns", "hold_ns", "acquisitions", "cond_waits", "cond_wait_ns")


def group_by_name(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Locks that share a name (the same creation line and variable: the
    `lock` of every Account) as one row, with `locks` counting them."""
    out: Dict[Any, Dict[str, Any]] = {}
    for r in records:
        k = (r["name"], r["kind"])
        g = out.get(k)
        if g is None:
            out[k] = dict(r, locks=r.get("locks", 1))
            continue
        g["locks"] += r.get("locks", 1)
        for f in _SUMMED:
            g[f] = g.get(f, 0) + r.get(f, 0)
        if r.get("max_wait_ns") is not None:
            g["max_wait_ns"] = max(g.get("max_wait_ns") or 0, r["max_wait_ns"])
    return list(out.values())


def text_table(records: List[Dict[str, Any]], top: int = 10, sample_rate: float = 0.0,
               sort: str = "wait", samples: Optional[List[Dict[str, Any]]] = None,
               stacks: int = 3) -> str:
    """The table of the top locks; with samples, each of the first `stacks`
    locks is followed by its hottest stacks."""
    key = SORT_KEYS[sort]
    records = group_by_name(records)
    rows = sorted(records, key=lambda r: (-r[key], -r["wait_ns"]))[:top]
    head = ["lock (file:line:name)", "kind", "contentions", "wait ms", "mean wait us", "max wait ms",
            "hold ms", "acquisitions"]
    body = []
    for r in rows:
        c = r["contentions"]
        shown = short_name(r["name"]) if "file" not in r else _site(r)
        if r.get("locks", 1) > 1:
            shown += f" (x{r['locks']})"
        body.append([shown, r["kind"], f"{c:.0f}",
                     _ms(r["wait_ns"]),
                     f"{r['wait_ns'] / c / 1e3:.1f}" if c else "-",
                     _ms(r["max_wait_ns"]) if r.get("max_wait_ns") is not None else "-",
                     _ms(r["hold_ns"]), f"{r['acquisitions']:.0f}"])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    fmt = lambda row: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    lines = [f"lockprof: top {len(rows)} of {len(records)} lock names by {sort} "
             f"(sample rate {sample_rate:g}; contentions and waits exact, acquisitions and hold estimated)",
             fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body]
    if not rows:
        lines.append("(no lock events recorded)")
    if samples:
        hot = [(b[0], r) for b, r in zip(body, rows[:stacks])]
        blocks = []
        for shown, r in hot:
            found = hot_stacks(samples, r["name"])
            if found:
                blocks.append(f"  {shown}")
                blocks += [f"    {line}" for line in found]
        if blocks:
            lines += ["", "hottest stacks (innermost first):"] + blocks
    return "\n".join(lines)
