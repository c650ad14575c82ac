"""speedscope's file format: one sampled profile per measure."""
from __future__ import annotations

import json
from typing import Any, Dict, List

from ._files import write_text
from .model import MEASURES, Profile


def render(p: Profile, name: str = "lockprof") -> str:
    frames: List[Dict[str, Any]] = []
    for file, func, line in p.frames:
        frames.append({"name": func, "file": file, "line": line} if file else {"name": func})
    lock_frame = []
    for lk in p.locks:
        lock_frame.append(len(frames))
        frames.append({"name": f"[{lk['name']}]"})
    nlocks, totals = p.sums_by_stack_lock()
    stacks: Dict[int, List[int]] = {}
    profiles = []
    for m, (measure, (_, _, unit)) in enumerate(MEASURES.items()):
        samples, weights = [], []
        for key, w in totals[m].items():
            s, lk = divmod(key, nlocks)
            root_first = stacks.get(s)
            if root_first is None:
                root_first = stacks[s] = list(reversed(p.trimmed_stack_ids(s)))
            samples.append(root_first + [lock_frame[lk]])
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
