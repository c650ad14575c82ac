"""The text of lock-order inversion reports (lock_order=True): one block per
potential deadlock, the cycle of locks first, then each edge with its
thread or task and the two stacks, innermost first."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from lockprof.export._names import base_name
from lockprof.export.model import _is_loop_step, is_outer, trim_outer

HEAD = "lockprof: potential deadlock (lock-order inversion):"
EXEMPT = "lockprof.order_exempt()"      # the reason the runtime gives for an annotation


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


def _where(frames: Sequence[Sequence[Any]]) -> tuple:
    t = trim(frames)
    return (t[0][0], t[0][2]) if t else ()


def signature(cycle: List[Dict[str, Any]]) -> frozenset:
    """What two reports of one code pattern share: for each edge, the
    functions (and files) where its two locks were taken.  Cycles through
    other instances or creation sites of the same pattern (a test suite's
    tests each making their own locks) have the same signature."""
    return frozenset((_where(e.get("held_frames") or ()), _where(e.get("acquired_frames") or ()))
                     for e in cycle)


def block(cycle: List[Dict[str, Any]], limit: int = 12, variants: int = 0) -> str:
    names = [base_name(e["held"]) for e in cycle]
    lines = [f"{HEAD} {' -> '.join(names + [names[0]])}"]
    if variants:
        lines.append(f"  (and {variants} more cycle{'s' if variants > 1 else ''} of the same "
                     f"code paths through other locks or creation sites, not shown)")
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


def report(cycles: List[List[Dict[str, Any]]], unordered: Sequence[Sequence[str]] = (),
           set_aside: int = 0) -> str:
    """One block per code pattern (cycles of the same signature are one
    block, with their count), and, when cycles were set aside (set_aside:
    how many), a footer naming the lock classes taken out of the order
    (unordered: (name, reason) pairs)."""
    groups: Dict[frozenset, List[List[Dict[str, Any]]]] = {}
    for c in cycles:
        groups.setdefault(signature(c), []).append(c)
    out = [block(cs[0], variants=len(cs) - 1) for cs in groups.values()]
    exempt = [(n, why) for n, why in unordered if why == EXEMPT]
    if set_aside or exempt:
        head = (f"{set_aside} cycle{'s' if set_aside > 1 else ''} set aside: "
                f"{'they pass' if set_aside > 1 else 'it passes'} through locks that are not "
                f"ordered" if set_aside else "locks not ordered")
        lines = [f"lockprof: lock order: {head} (a signal or a group-held lock cannot be part "
                 f"of a deadlock by its order):"]
        lines += [f"  {base_name(name)}: {why}" for name, why in (unordered if set_aside
                                                                else exempt)]
        out.append("\n".join(lines))
    return "\n\n".join(out)
