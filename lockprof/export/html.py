"""A self-contained flame graph page (no network): one view per measure,
zoom by click, regex search, hover details; state in the URL fragment
(``#measure=hold&search=queue``)."""
from __future__ import annotations

from typing import Dict, List, Tuple

from ._files import write_text
from .model import LABELS, MEASURES, Profile


def render(p: Profile, title: str = "lockprof", meta: str = "") -> str:
    import html as _html
    import json
    from importlib import resources

    frames: List[List] = [[func, file, line, "py" if file else "omitted"]
                          for file, func, line in p.frames]
    lock_frame = []
    for lk in p.locks:
        name = lk["name"]
        short = name.replace("\\", "/").rsplit("/", 1)[-1]
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
    data = json.dumps({"title": title, "meta": meta, "frames": frames, "measures": measures},
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
