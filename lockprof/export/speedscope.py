"""speedscope's file format: one sampled profile per measure."""
from __future__ import annotations

import json
from typing import Any, Dict, List

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
    stacks: Dict[int, List[int]] = {}
    ev, st, lk_col = p.rows["event"], p.rows["stack"], p.rows["lock"]
    profiles = []
    for measure, (event, column, unit) in MEASURES.items():
        e = EVENT_ID[event]
        values = p.rows[column]
        samples, weights = [], []
        for i in range(p.nrows):
            if ev[i] != e:
                continue
            w = int(round(values[i]))
            if w <= 0:
                continue
            s = st[i]
            root_first = stacks.get(s)
            if root_first is None:
                root_first = stacks[s] = list(reversed(p.stack_ids(s)))
            samples.append(root_first + [lock_frame[lk_col[i]]])
            weights.append(w)
        profiles.append({"type": "sampled", "name": f"{name}: {measure}", "unit": unit,
                         "startValue": 0, "endValue": sum(weights), "samples": samples,
                         "weights": weights})
    doc = {"$schema": "https://www.speedscope.app/file-format-schema.json",
           "shared": {"frames": frames}, "profiles": profiles, "name": name,
           "activeProfileIndex": 0, "exporter": "lockprof"}
    return json.dumps(doc, separators=(",", ":"))


def write(p: Profile, path: str) -> None:
    write_text(path, render(p))
