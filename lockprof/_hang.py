"""The hang doctor's report (hang_timeout=SECONDS): every thread or task
waiting on a lock, what it waits on, who holds that lock and where the
holder is now, and `deadlock:` when the waits form a cycle.

report() runs on the runtime's watchdog thread while the program may be
stuck: it imports nothing, takes no lock and reads only what the runtime
handed it, sys._current_frames() and the threads' and tasks' own objects."""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lockprof._order import frame_lines, trim
from lockprof.export._names import base_name, is_own

HEAD = "lockprof: hang:"
_LIMIT = 12
is_own("/")         # the stdlib's paths found now: a report must import nothing

Node = Tuple[int, Optional[int]]        # (thread ident, task id or None)


def _thread_name(ident: int) -> str:
    threading = sys.modules.get("threading")
    t = getattr(threading, "_active", {}).get(ident) if threading is not None else None
    name = getattr(t, "name", None)
    return repr(name) if isinstance(name, str) else f"{ident}"


def _task_name(task: Any) -> str:
    try:
        return repr(task.get_name())
    except Exception:
        return f"<task at {id(task):#x}>"


def _who(ident: int, task: Any, task_id: Optional[int]) -> str:
    if task_id is None:
        return f"thread {_thread_name(ident)}"
    name = _task_name(task) if task is not None else f"<task at {task_id:#x}>"
    return f"task {name} in thread {_thread_name(ident)}"


def _frame_list(f: Any) -> List[Tuple[str, int, str]]:
    out = []
    while f is not None and len(out) < 64:
        code = f.f_code
        out.append((code.co_filename, f.f_lineno or 0, code.co_name))
        f = f.f_back
    return out


def _task_frames(task: Any) -> List[Tuple[str, int, str]]:
    """innermost first: the task's coroutine and those it awaits"""
    outer_first = []
    try:
        coro = task.get_coro()
    except Exception:
        return []
    seen = 0
    while coro is not None and seen < 64:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        outer_first.append((code.co_filename, frame.f_lineno or 0, code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        seen += 1
    return outer_first[::-1]


def _lines(frames: Sequence[Tuple[str, int, str]], indent: str) -> List[str]:
    if not trim(frames):
        return [f"{indent}(no Python frame)"]
    return frame_lines(frames, indent, _LIMIT)


def _tasks_of(waits: Sequence[Dict[str, Any]]) -> Dict[int, Any]:
    """the tasks the report may name, by id: the waiting ones, and every task
    of their loops (a holder that does not wait is one of them)"""
    out: Dict[int, Any] = {}
    loops = []
    for w in waits:
        t = w["task"]
        if t is not None:
            out[id(t)] = t
            try:
                loop = t.get_loop()
            except Exception:
                continue
            if all(loop is not other for other in loops):
                loops.append(loop)
    asyncio = sys.modules.get("asyncio")
    for loop in loops:
        for _attempt in range(3):
            try:
                for t in asyncio.all_tasks(loop):
                    out[id(t)] = t
                break
            except RuntimeError:       # the set changed while read: again
                continue
            except Exception:
                break
    return out


def _cycle(waits: Sequence[Dict[str, Any]]) -> Optional[List[Dict[str, Any]]]:
    """waits w1..wn where the holder of each one's lock makes the next wait,
    and the last one's the first: a deadlock"""
    by_node: Dict[Node, Dict[str, Any]] = {}
    for w in waits:
        by_node.setdefault((w["ident"], w["task_id"]), w)
    for start in by_node:
        path: List[Dict[str, Any]] = []
        on_path: Dict[Node, int] = {}
        node: Optional[Node] = start
        while node is not None and node in by_node and node not in on_path:
            on_path[node] = len(path)
            w = by_node[node]
            path.append(w)
            nxt = None
            for ident, task_id, *_where in w["holders"]:
                if (ident, task_id) in by_node:
                    nxt = (ident, task_id)
                    break
            node = nxt
        if node is not None and node in on_path:
            return path[on_path[node]:]
    return None


def _count(waits: Sequence[Dict[str, Any]]) -> str:
    tasks = sum(1 for w in waits if w["task_id"] is not None)
    threads = len(waits) - tasks
    parts = [f"{n} {what}{'s' if n != 1 else ''}"
             for n, what in ((threads, "thread"), (tasks, "task")) if n]
    return " and ".join(parts) or "none"


def report(waits: Sequence[Dict[str, Any]], timeout: float) -> str:
    if not waits:
        return ""
    frames = sys._current_frames()
    tasks = _tasks_of(waits)
    long_ones = [w for w in waits if w["waited"] >= timeout]
    lines = [f"{HEAD} {_count(long_ones)} waited over {timeout:g} s for a lock "
             f"(hang timeout), {_count(waits)} waiting in all; the program keeps running"]
    for w in sorted(waits, key=lambda w: -w["waited"]):
        who = _who(w["ident"], w["task"], w["task_id"])
        lines.append(f"  {who} has waited {w['waited']:.1f} s for {w['lock']} ({w['kind']}), at:")
        if w["task"] is not None:
            lines.extend(_lines(_task_frames(w["task"]), "      "))
        else:
            lines.extend(_lines(_frame_list(frames.get(w["ident"])), "      "))
        if not w["holders"]:
            lines.append(f"    {base_name(w['lock'])} is held by no tracked thread or task (taken "
                         f"before profiling began, or by code lockprof does not see)")
        for ident, task_id, file, line, func in w["holders"]:
            task = tasks.get(task_id) if task_id is not None else None
            holder = _who(ident, task, task_id)
            where = f"{file}:{line} in {func}" if file is not None else "an unknown place"
            lines.append(f"    held by {holder}, taken at {where}; the holder is now at:")
            if task_id is not None:
                now = _task_frames(task) if task is not None else []
            else:
                now = _frame_list(frames.get(ident))
            lines.extend(_lines(now, "      "))
    cyc = _cycle(waits)
    if cyc:
        names = [_who(w["ident"], w["task"], w["task_id"]) for w in cyc]
        if len(cyc) == 1:
            lines.append(f"  deadlock: {names[0]} waits for itself:")
        else:
            lines.append(f"  deadlock: {', '.join(names[:-1])} and {names[-1]} wait for "
                         f"each other:")
        for i, w in enumerate(cyc):
            lines.append(f"    {names[i]} waits for {base_name(w['lock'])}, held by "
                         f"{names[(i + 1) % len(cyc)]}"
                         + (" (with a timeout)" if w.get("bounded") else ""))
        if any(w.get("bounded") for w in cyc):
            lines.append("    A wait with a timeout will end it: then its acquire fails, and "
                         "the cycle is only broken, not resolved.")
        else:
            lines.append("    None of them can go on; take these locks in one order everywhere."
                         if len(cyc) > 1 else
                         "    It cannot go on; a non-reentrant lock was taken again by its "
                         "holder.")
    return "\n".join(lines) + "\n"
