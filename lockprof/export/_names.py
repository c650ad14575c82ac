"""How frames, paths and lock names are shown."""
from __future__ import annotations

import os
import re
from typing import List


def frame_name(frame) -> str:
    """`function (file.py:LINE)` of a (file, function, line) frame."""
    file, func, line = frame
    return f"{func} ({os.path.basename(file)}:{line})" if file else func


_prefix_cache: List[List[str]] = []


def _prefixes() -> List[str]:
    """the interpreter's stdlib and site-packages directories, longest first
    (found once: the hang doctor's report must import nothing)"""
    if not _prefix_cache:
        import sysconfig
        paths = sysconfig.get_paths()
        out = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        _prefix_cache.append(sorted((p.rstrip(os.sep) + os.sep for p in out if p),
                                    key=len, reverse=True))
    return _prefix_cache[0]


def short_path(path: str) -> str:
    """A path as the report shows it: relative to the working directory when
    under it, relative to the stdlib or site-packages when there."""
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return rel
    except ValueError:
        pass
    for prefix in _prefixes():
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def base_name(name: str) -> str:
    """A lock name `path:line[:var]` with the directory left out."""
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def short_name(name: str) -> str:
    """A lock name `path:line[:var]` with its path shortened."""
    m = re.match(r"(.+?):(\d+)(:.*)?\Z", name)
    if not m or m.group(1).startswith("<"):
        return name
    return f"{short_path(m.group(1))}:{m.group(2)}{m.group(3) or ''}"


# ---- the program's own code -------------------------------------------------
# "Own code" is what is neither the stdlib, nor an installed package, nor
# lockprof: found by path, so that profiles made elsewhere read alike.  Where
# that guess is wrong, --own-code (LOCKPROF_OWN_CODE) names the directories
# (or files) that are the program's, and only they are.
_LIB_PATH = re.compile(r"[/\\](site|dist)-packages[/\\]|[/\\]lib[/\\]python\d+\.\d+t?[/\\]"
                       r"|[/\\]Lib[/\\]|[/\\]lib-dynload[/\\]")
_LOCKPROF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_own_prefixes: List[str] = []


def set_own_code(paths) -> None:
    """The directories or files that are the program's own (empty: guess by
    path); relative paths are taken from the working directory."""
    global _own_prefixes
    _own_prefixes = [os.path.abspath(p) for p in paths]
    is_own.cache_clear()


def _own(file: str) -> bool:
    if not file or file.startswith("<"):
        # <string>, <stdin> (-c code and the like) are the program's; frozen
        # modules (<frozen runpy>) are the stdlib's
        return bool(file) and not file.startswith("<frozen")
    if _own_prefixes:
        return any(file == p or file.startswith(p.rstrip(os.sep) + os.sep)
                   for p in _own_prefixes)
    if file.startswith(_LOCKPROF_DIR):
        return False
    return _LIB_PATH.search(file) is None and not any(file.startswith(p) for p in _prefixes())


def _cached(fn):
    import functools
    return functools.lru_cache(maxsize=4096)(fn)


is_own = _cached(_own)
is_own.__doc__ = "whether a frame's file is the program's own code (see set_own_code)"


def owner_suffix(lk) -> str:
    """` (Queue of QueuePool)`: what a lock made inside a library belongs to,
    where the runtime found it; nothing for the program's own locks (their
    names say it) or where none was found"""
    owner = lk.get("owner")
    if not owner or not lk.get("file") or is_own(lk["file"]):
        return ""
    return f" ({owner})"
