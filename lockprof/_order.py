"""The text of lock-order inversion reports (lock_order=True): one block per
potential deadlock, the cycle of locks first, then each edge with its
thread or task and the two stacks, innermost first."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from lockprof.export._names import base_name, is_own
from lockprof.export.model import _is_loop_step, is_outer, trim_outer

HEAD = "lockprof: potential deadlock (lock-order inversion):"
EXEMPT = "lockprof.order_exempt()"      # the reason the runtime gives for an annotation


def trim(frames: Sequence[Sequence[Any]]) -> List[Sequence[Any]]:
    """(file, line, function) frames, innermost first, without the ones every
    thread starts with (the same trimming as every profile reader's)"""
    return list(trim_outer(frames, lambda fr: is_outer(fr[0]),
                           lambda fr: _is_loop_step(fr[0], fr[2])))


OWN = "  <- your code"


def frame_lines(frames: Sequence[Sequence[Any]], indent: str, limit: int) -> List[str]:
    """(file, line, function) frames as report lines, innermost first: up to
    `limit` of them, the program's own innermost frame marked when library
    frames come before it (and shown even when past the limit); frames outside the program's code beyond its
    outermost frame (a test runner's, a server's) left out as `... N more`."""
    frames = trim(frames)
    own = [i for i, fr in enumerate(frames) if is_own(fr[0])]
    keep = list(range(min(len(frames), limit)))
    if own:
        keep = [i for i in keep if i <= own[-1]]
        if own[0] >= limit:
            # the program's innermost frame and a few outward, to its outermost
            keep += range(own[0], min(own[-1], own[0] + 3) + 1)
    out: List[str] = []
    prev = -1
    for i in keep:
        if i > prev + 1:
            out.append(f"{indent}... {i - prev - 1} more")
        file, line, func = frames[i]
        # marked where library frames come first (else it is the first line)
        out.append(f"{indent}{file}:{line} in {func}"
                   + (OWN if own and i == own[0] and i > 0 else ""))
        prev = i
    if len(frames) > prev + 1:
        out.append(f"{indent}... {len(frames) - prev - 1} more")
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
        lines.extend(frame_lines(e["acquired_frames"], "      ", limit))
        lines.append(f"    {base_name(e['held'])} held since:")
        lines.extend(frame_lines(e["held_frames"], "      ", limit))
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
