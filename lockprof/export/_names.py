"""How frames, paths and lock names are shown."""
from __future__ import annotations

import os
import re
from typing import List


def frame_name(frame) -> str:
    """`function (file.py:LINE)` of a (file, function, line) frame."""
    file, func, line = frame
    return f"{func} ({os.path.basename(file)}:{line})" if file else func


def _prefixes() -> List[str]:
    import sysconfig
    paths = sysconfig.get_paths()
    out = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted((p.rstrip(os.sep) + os.sep for p in out if p), key=len, reverse=True)


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
