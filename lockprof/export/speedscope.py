"""speedscope's file format: one sampled profile per measure."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence, Tuple

from ._files import write_text
from .model import EVENT_ID, MEASURES, Profile


def render(p: Profile, name: str = "lockprof") -> str:
    frames: List[Dict[str, Any]] = []
    for file, func, line in p.frames:
        frames.append({"name": func, "file": file, "line": line} if file else {"name": func})
    lock_frame = []
    for lk in p.locks:
        lock_frame.append(len(frames))
        frames.append({"name": f"[{lk['name']}]"})
    # one pass over the rows: each event feeds its measures
    keys = list(MEASURES)
    samples: List[List] = [[] for _ in keys]
    weights: List[List[int]] = [[] for _ in keys]
    feeds: Dict[int, List[Tuple[int, Sequence]]] = {}
    for m, (event, column, _) in enumerate(MEASURES.values()):
        feeds.setdefault(EVENT_ID[event], []).append((m, p.rows[column]))
    stacks: Dict[int, List[int]] = {}
    ev, st, lk_col = p.rows["event"], p.rows["stack"], p.rows["lock"]
    for i in range(p.nrows):
        feed = feeds.get(ev[i])
        if feed is None:
            continue
        stack = None
        for m, values in feed:
            w = int(round(values[i]))
            if w <= 0:
                continue
            if stack is None:
                s = st[i]
                root_first = stacks.get(s)
                if root_first is None:
                    root_first = stacks[s] = list(reversed(p.stack_ids(s)))
                stack = root_first + [lock_frame[lk_col[i]]]
            samples[m].append(stack)
            weights[m].append(w)
    profiles = []
    for m, (measure, (_, _, unit)) in enumerate(MEASURES.items()):
        profiles.append({"type": "sampled", "name": f"{name}: {measure}", "unit": unit,
                         "startValue": 0, "endValue": sum(weights[m]), "samples": samples[m],
                         "weights": weights[m]})
    doc = {"$schema": "https://www.speedscope.app/file-format-schema.json",
           "shared": {"frames": frames}, "profiles": profiles, "name": name,
           "activeProfileIndex": 0, "exporter": "lockprof"}
    return json.dumps(doc, separators=(",", ":"))


def write(p: Profile, path: str) -> None:
    write_text(path, render(p))
