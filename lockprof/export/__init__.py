"""Exporting profiles: the model (model.Profile) and one writer per format.

    C tables -> _lockprof.export() -> model.Profile -> pprof / collapsed /
    speedscope / html / text writers;  pprof.read(file) -> model.Profile

Data flows one way: writers read a Profile and import nothing of each other.
"""
from __future__ import annotations

from typing import Optional, Tuple

import importlib

from ._files import FormatError, check_writable, write_atomic, write_text
from .model import MEASURES, Profile

__all__ = ["FORMATS", "EXTENSION", "FormatError", "Profile", "MEASURES", "format_for",
           "split_ext", "write", "check_writable", "write_atomic", "write_text"]

FORMATS = ("pprof", "collapsed", "speedscope", "html", "text")
EXTENSION = {"pprof": "pprof", "collapsed": "folded", "speedscope": "speedscope.json",
             "html": "html", "text": "txt"}
_EXTENSIONS = ((".speedscope.json", "speedscope"), (".pb.gz", "pprof"), (".pprof", "pprof"),
               (".folded", "collapsed"), (".collapsed", "collapsed"), (".html", "html"),
               (".htm", "html"), (".txt", "text"))


def format_for(path: str, fmt: Optional[str] = None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise FormatError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
        return fmt
    for ext, name in _EXTENSIONS:
        if path.endswith(ext):
            return name
    accepted = ", ".join(e for e, _ in _EXTENSIONS)
    raise FormatError(f"cannot tell the format of {path!r} from its extension ({accepted}); "
                      f"give one with -f/format=")


def split_ext(path: str) -> Tuple[str, str]:
    """(stem, extension) by the extensions lockprof knows (".speedscope.json"
    is one); (path, "") for any other name."""
    for ext in sorted((e for e, _ in _EXTENSIONS), key=len, reverse=True):
        if path.endswith(ext):
            return path[:-len(ext)], ext
    return path, ""


def write(p: Profile, path: str, fmt: str) -> None:
    """Writes profile p to path in format fmt (whole, or not at all).  Each
    format's writer is the module of its name, imported when first used (a
    `lockprof run` that writes pprof never imports the page's)."""
    importlib.import_module(f"{__name__}.{fmt}").write(p, path)
