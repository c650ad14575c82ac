"""The variable a lock is created into, read from its creation site's bytecode.

`self.lock = threading.Lock()`, `lock = threading.Lock()` and, in a module
or class body, `LOCK = threading.Lock()` name the lock where it is made, so
its name does not depend on where its first recorded event happens (inside a
helper taking it as a parameter, say).  The C runtime calls this once per
creation site, on the first recorded event of a lock made there, and falls
back to looking the lock up in the recording frame when it returns None.
Before 3.11 a site is a line, not an instruction: the offset is then -1, and
only a library's label (LABELS) is answered.

It reads the two instructions after the call straight from `co_code`: a few
dozen operations, whatever the size of the function (disassembling a module
body with `dis` takes milliseconds, too long inside a recorded event)."""
from __future__ import annotations

import opcode as _opcode
TYPE_CHECKING = False
if TYPE_CHECKING:        # not imported at run time (start-up cost)
    from typing import Dict, Optional, Tuple

_NAMES = _opcode.opname
_CACHE = _opcode.opmap.get("CACHE", -1)
_EXTENDED_ARG = _opcode.opmap["EXTENDED_ARG"]
_NOP = _opcode.opmap.get("NOP", -1)
# stores whose argument indexes co_names, and those indexing the fast locals
_BY_NAME = frozenset(("STORE_NAME", "STORE_GLOBAL"))
_BY_LOCAL = frozenset(("STORE_FAST", "STORE_DEREF"))
# `obj.x = Lock()`: the call, then obj loaded, then STORE_ATTR x
# (3.14 loads a local it only reads as LOAD_FAST_BORROW)
_OWNER_LOADS = frozenset(("LOAD_FAST", "LOAD_NAME", "LOAD_GLOBAL", "LOAD_DEREF",
                          "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR", "LOAD_FAST_BORROW"))
# every opcode this reader knows the meaning of after a call: the test that
# compares it with dis fails on any other store or owner load it meets
KNOWN = _BY_NAME | _BY_LOCAL | _OWNER_LOADS | {"STORE_FAST_LOAD_FAST", "STORE_ATTR"}


def _next(raw: bytes, i: int) -> Tuple[Optional[str], int, int]:
    """(opname, full argument, offset after) of the instruction at or after
    byte i, past inline caches, padding and EXTENDED_ARG prefixes."""
    arg = 0
    while i + 1 < len(raw):
        op, a = raw[i], raw[i + 1]
        i += 2
        if op == _CACHE or op == _NOP:
            continue
        if op == _EXTENDED_ARG:
            arg = (arg | a) << 8
            continue
        return _NAMES[op], arg | a, i
    return None, 0, i


def _local(code, index: int) -> Optional[str]:
    # 3.11+: STORE_FAST/STORE_DEREF index the frame's "fast locals plus"
    # (arguments, locals, cells, free variables), as dis reads them
    name_of = getattr(code, "_varname_from_oparg", None)
    if name_of is None:
        return None
    name = name_of(index)
    return name if isinstance(name, str) else None


# Locks a library makes for itself, which the program never names: the code
# object of the making function -> the name a user knows the lock by (anyio's
# default thread limiter, behind to_thread.run_sync).  A name with a space in
# it is a label: reports show it alone, without the library's file:line
# (lockprof.export.model.lock_name).  Filled by lockprof._patch.
LABELS: Dict[object, str] = {}


def is_label(var: Optional[str]) -> bool:
    """A library's name for a lock it makes (LABELS), shown without the
    file:line inside the library."""
    return bool(var) and " " in var


def assignment_target(code, offset: int) -> Optional[str]:
    """The name the call at byte `offset` of `code` stores its result in, or
    None when the result goes elsewhere (a list, an argument, a return) or
    the instruction there is not a call."""
    label = LABELS.get(code)
    if label is not None:
        return label
    try:
        raw = code.co_code
        if offset < 0 or offset + 1 >= len(raw) or not _NAMES[raw[offset]].startswith("CALL"):
            return None
        name, arg, i = _next(raw, offset + 2)
        if name in _BY_NAME:
            return code.co_names[arg]
        if name in _BY_LOCAL:
            return _local(code, arg)
        if name == "STORE_FAST_LOAD_FAST":      # 3.13: `x = Lock()` then a use of x
            return _local(code, arg >> 4)
        if name in _OWNER_LOADS:
            name, arg, _ = _next(raw, i)
            if name == "STORE_ATTR":
                return code.co_names[arg]
        return None
    except (IndexError, AttributeError, TypeError, ValueError):
        return None
