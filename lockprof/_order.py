"""The text of lock-order inversion reports (lock_order=True): one block per
potential deadlock, the cycle of locks first, then each edge with its
thread or task and the two stacks, innermost first."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from lockprof.export._names import base_name
from lockprof.export.model import _is_loop_step, is_outer, trim_outer

HEAD = "lockprof: potential deadlock (lock-order inversion):"


def trim(frames: Sequence[Sequence[Any]]) -> List[Sequence[Any]]:
    """(file, line, function) frames, innermost first, without the ones every
    thread starts with (the same trimming as every profile reader's)"""
    return list(trim_outer(frames, lambda fr: is_outer(fr[0]),
                           lambda fr: _is_loop_step(fr[0], fr[2])))


def _frames(frames: Sequence[Sequence[Any]], indent: str, limit: int) -> List[str]:
    frames = trim(frames)
    out = [f"{indent}{file}:{line} in {func}" for file, line, func in list(frames)[:limit]]
    if len(frames) > limit:
        out.append(f"{indent}... {len(frames) - limit} more")
    return out


def block(cycle: List[Dict[str, Any]], limit: int = 12) -> str:
    names = [base_name(e["held"]) for e in cycle]
    lines = [f"{HEAD} {' -> '.join(names + [names[0]])}"]
    for i, e in enumerate(cycle, 1):
        who = e.get("task_name") and f"task {e['task_name']!r} in thread {e['thread_name']!r}" \
            or f"thread {e.get('thread_name')!r}"
        lines.append(f"  edge {i} of {len(cycle)}: {e['acquired']} taken while holding "
                     f"{e['held']}, by {who}")
        lines.append(f"    {base_name(e['acquired'])} taken at:")
        lines.extend(_frames(e["acquired_frames"], "      ", limit))
        lines.append(f"    {base_name(e['held'])} held since:")
        lines.extend(_frames(e["held_frames"], "      ", limit))
    lines.append("  Each edge happened on this run without deadlocking; run concurrently, "
                 "they can deadlock. Take these locks in one order everywhere.")
    return "\n".join(lines)


def report(cycles: List[List[Dict[str, Any]]]) -> str:
    return "\n\n".join(block(c) for c in cycles)
