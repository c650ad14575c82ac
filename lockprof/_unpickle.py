"""Locks a child process unpickles: multiprocessing's, handed to a spawned
or forkserver child as a Process argument (or inside a Queue, a Pool...).

The parent pickles such a lock as the wrapped object would pickle, wrapped
in a call of rebuild() with the lock's spec key and its name in the parent.
The child makes the object exactly as pickle would have, then, if the child
profiles, wraps it as made at the parent's line: the child's rows carry the
parent's name (`app.py:12:lock`), and `lockprof merge` adds them up.

Owns: _SITES, the code objects that make a lock "at" a parent's line, one
per name (bounded by the parent's creation sites, and capped)."""
from __future__ import annotations

import sys
from typing import Dict

_SITES: Dict[str, object] = {}
_MAX_SITES = 1024


def rebuild(key: str, name: str, func, args, state):
    """What unpickling the wrapped object gives, profiled when this process
    profiles."""
    obj = func(*args)
    if state is not None:
        setstate = getattr(obj, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        else:
            obj.__dict__.update(state)
    lockprof = sys.modules.get("lockprof")
    if lockprof is None or not lockprof.is_running():
        return obj
    try:
        return _adopt(key, name, obj)
    except Exception:
        # a profiler error never reaches the program: counted, object as is
        from . import _lockprof
        _lockprof.count_error()
        return obj


def _site(name: str):
    """(code, variable) whose run makes the lock at the parent's file:line
    and stores it in the parent's variable."""
    found = _SITES.get(name)
    if found is not None:
        return found
    from . import _names
    file, line, var = name, 1, None
    parts = name.rsplit(":", 2)
    if _names.is_label(name):
        file = "<lockprof: unpickled>"
    elif len(parts) == 3 and parts[1].isdigit() and parts[2].isidentifier():
        file, line, var = parts[0], int(parts[1]), parts[2]
    elif len(parts) >= 2 and parts[-1].isdigit():
        file, line = name.rsplit(":", 1)[0], int(parts[-1])
    target = var or "lock"
    code = compile("\n" * (max(line, 1) - 1) + f"{target} = adopt(key, obj)\n", file, "exec")
    if _names.is_label(name):
        _names.LABELS[code] = name
    found = (code, target)
    if len(_SITES) < _MAX_SITES:
        _SITES[name] = found
    return found


def _adopt(key: str, name: str, obj):
    from . import _lockprof
    code, target = _site(name)
    ns = {"adopt": _lockprof.adopt, "key": key, "obj": obj}
    exec(code, ns)
    return ns[target]
