"""Collapsed stacks: `frame;frame;[lock name] value` per line, root first
(flamegraph.pl's input and speedscope's "collapsed" import)."""
from __future__ import annotations

from typing import Dict

from ._files import write_text
from ._names import frame_name
from .model import EVENT_ID, MEASURES, Profile


def render(p: Profile, measure: str = "delay") -> str:
    event, column, _ = MEASURES[measure]
    e = EVENT_ID[event]
    names = [frame_name(f) for f in p.frames]
    locks = [f"[{lk['name']}]" for lk in p.locks]
    prefixes: Dict[int, str] = {}
    totals: Dict[str, int] = {}
    for ev, s, lk, value in zip(*p.columns("event", "stack", "lock", column)):
        if ev != e:
            continue
        v = int(round(value))
        if v <= 0:
            continue
        prefix = prefixes.get(s)
        if prefix is None:
            prefix = prefixes[s] = "".join(names[f] + ";" for f in reversed(p.trimmed_stack_ids(s)))
        key = prefix + locks[lk]
        totals[key] = totals.get(key, 0) + v
    return "".join(f"{k} {v}\n" for k, v in sorted(totals.items()))


def write(p: Profile, path: str) -> None:
    write_text(path, render(p))
