"""A self-contained flame graph page (no network): one view per measure,
zoom by click, regex search, hover details; state in the URL fragment
(``#measure=hold&search=queue``)."""
from __future__ import annotations

from typing import Dict, List, Tuple

from ._files import write_text
from ._names import base_name, owner_suffix
from .model import LABELS, MEASURES, Profile


def _shown(lk) -> str:
    """file:line:var with the directory left out, and (xN) for N locks"""
    return (base_name(lk["name"]) + (f" (x{lk['locks']})" if (lk.get("locks") or 1) > 1 else "")
            + owner_suffix(lk))


def _own_frames(p: Profile) -> Dict[int, str]:
    """Per lock, the program's own innermost frame (`function (file:line)`)
    in the stack that blocked most on it (lock and Condition waits), else
    the one that took it most: the line the text report marks with *."""
    from ._names import frame_name, is_own
    from .model import EVENT_ID
    wait_e, cw_e, acq_e = EVENT_ID["contention"], EVENT_ID["cond_wait"], EVENT_ID["acquire"]
    best: Dict[int, Dict[int, float]] = {}
    acq: Dict[int, Dict[int, float]] = {}
    for e, lk, st, c, v in zip(*p.columns("event", "lock", "stack", "count", "value")):
        if e == wait_e or e == cw_e:
            d = best.setdefault(lk, {})
            d[st] = d.get(st, 0.0) + v
        elif e == acq_e:
            d = acq.setdefault(lk, {})
            d[st] = d.get(st, 0.0) + c
    out: Dict[int, str] = {}
    for lk in set(best) | set(acq):
        d = best.get(lk) or acq.get(lk)
        for st in sorted(d, key=lambda k: -d[k]):
            f = next((p.frames[i] for i in p.trimmed_stack_ids(st) if is_own(p.frames[i][0])),
                     None)
            if f is not None:
                out[lk] = frame_name(f)
                break
    return out


def render(p: Profile, title: str = "lockprof", meta: str = "") -> str:
    import html as _html
    import json
    from importlib import resources

    frames: List[List] = [[func, file, line, "py" if file else "omitted"]
                          for file, func, line in p.frames]
    lock_frame = []
    for lk in p.locks:
        name = lk["name"]
        short = base_name(name)
        lock_frame.append(len(frames))
        frames.append([f"[{short}]", name, 0, "lock"])
    nlocks, totals = p.sums_by_stack_lock()
    stacks: Dict[int, Tuple[int, ...]] = {}
    measures = []
    for m, (measure, (_, _, unit)) in enumerate(MEASURES.items()):
        rows = []
        for key, v in sorted(totals[m].items(), key=lambda kv: -kv[1]):
            s, lk = divmod(key, nlocks)
            root_first = stacks.get(s)
            if root_first is None:
                root_first = stacks[s] = tuple(reversed(p.trimmed_stack_ids(s)))
            rows.append((root_first + (lock_frame[lk],), v))
        measures.append({"key": measure, "label": LABELS[measure], "unit": unit,
                         "total": sum(totals[m].values()), "stacks": rows})
    table, index = [], {}
    idle = p.idle_cond_waits()
    own = _own_frames(p)
    for i in p.ranked():        # the text report's order
        lk = p.locks[i]
        index[i] = len(table)
        c = lk.get("contentions") or 0
        table.append({"name": lk["name"], "short": _shown(lk), "kind": lk["kind"],
                      "blocked_ns": p.blocked_ns(i), "idle_ns": idle.get(i) or None,
                      "own": own.get(i),
                      "frame": lock_frame[i], "contentions": c, "wait_ns": lk.get("wait_ns") or 0,
                      "mean_wait_ns": (lk.get("wait_ns") or 0) / c if c else None,
                      "max_wait_ns": lk.get("max_wait_ns"), "hold_ns": lk.get("hold_ns") or 0,
                      "acquisitions": lk.get("acquisitions") or 0, "locks": lk.get("locks") or 1,
                      "cond_wait_ns": lk.get("cond_wait_ns") if lk.get("cond_waits") else None})
    windows = [{"start": w["start_ns"], "duration": w["duration_ns"], "source": w.get("source"),
                "wait": {str(index[i]): v for i, v in w["wait"].items() if i in index and v}}
               for w in p.windows]
    figures = ("contentions and waits exact, acquisitions and hold estimated" if p.exact
               else "every figure estimated from the file's samples")
    # the figures grouped by each request label (lockprof.labels): the
    # page's "group by" selector; bounded by max_label_sets
    labels = {}
    for key in p.label_keys():
        labels[key] = [dict({k: g[k] for k in ("value", "contentions", "wait_ns", "cond_wait_ns",
                                                "caused_wait_ns", "hold_ns", "acquisitions")},
                            locks=[[_shown(p.locks[lk]), w + cw] for lk, w, cw in g["locks"][:3]
                                   if w + cw > 0])
                       for g in p.by_label(key)]
    data = json.dumps({"title": title, "meta": meta, "frames": frames, "measures": measures,
                       "locks": table, "windows": windows, "figures": figures,
                       "labels": labels, "span": p.duration_nanos,
                       "max_overhead": p.max_overhead,
                       "rates": [[max(0, t - p.time_nanos), r] for t, r in p.rates]},
                      separators=(",", ":"))
    # inside <script>, "</" could end the element early; JSON allows "<\/"
    data = data.replace("</", "<\\/").replace("<!--", "<\\u0021--")
    page = resources.files(__package__).joinpath("flamegraph.html").read_text(encoding="utf-8")
    head, tail = page.split("__DATA__")
    return head.replace("__TITLE__", _html.escape(title)) + data + tail


def write(p: Profile, path: str) -> None:
    write_text(path, render(p, title=p.title, meta=meta_line(p)))


def meta_line(p: Profile) -> str:
    import time
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.time_nanos / 1e9))
    figures = ("contentions and waits exact, acquisitions and hold estimated" if p.exact
               else "figures estimated from the file's samples")
    return f"{when}, {p.duration_nanos / 1e9:.1f} s, sample rate {p.sample_rate}; {figures}"
