"""The variable a lock is created into, read from its creation site's bytecode.

`self.lock = threading.Lock()`, `lock = threading.Lock()` and, in a module
or class body, `LOCK = threading.Lock()` name the lock where it is made, so
its name does not depend on where its first recorded event happens (inside a
helper taking it as a parameter, say).  The C runtime calls this once per
creation site (CPython 3.11+, where a site is an instruction), and falls back
to looking the lock up in the recording frame when it returns None."""
from __future__ import annotations

import dis
from typing import Optional

_STORES = frozenset(("STORE_FAST", "STORE_NAME", "STORE_GLOBAL", "STORE_DEREF", "STORE_ATTR"))
_SKIP = frozenset(("CACHE", "EXTENDED_ARG", "NOP"))
# `obj.x = Lock()`: the call, then obj loaded, then STORE_ATTR x
_OWNER_LOADS = frozenset(("LOAD_FAST", "LOAD_NAME", "LOAD_GLOBAL", "LOAD_DEREF",
                          "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR"))


def assignment_target(code, offset: int) -> Optional[str]:
    """The name the call at byte `offset` of `code` stores its result in, or
    None when the result goes elsewhere (a list, an argument, a return) or
    the instruction there is not a call."""
    it = dis.get_instructions(code)
    for ins in it:
        if ins.offset == offset:
            if not ins.opname.startswith("CALL"):
                return None
            break
    else:
        return None
    after = _take(it, 2)
    if not after:
        return None
    first = after[0]
    if first.opname in _STORES and isinstance(first.argval, str):
        return first.argval
    if first.opname == "STORE_FAST_LOAD_FAST" and isinstance(first.argval, tuple):
        return first.argval[0]          # 3.13: `x = Lock()` then a use of x
    if (first.opname in _OWNER_LOADS and len(after) == 2 and after[1].opname == "STORE_ATTR"
            and isinstance(after[1].argval, str)):
        return after[1].argval
    return None


def _take(it, n: int):
    """The next n instructions that are not caches or padding."""
    out = []
    for ins in it:
        if ins.opname in _SKIP:
            continue
        out.append(ins)
        if len(out) == n:
            break
    return out
