"""Writing files whole: a temp file renamed into place, never half a file."""
from __future__ import annotations

import os


class FormatError(ValueError):
    """A format or output path lockprof cannot use (the message says which)."""


def _umask() -> int:
    # /proc tells without changing anything; os.umask can only be read by
    # setting it, which for an instant would affect the program's other threads
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_atomic(path: str, data: bytes) -> None:
    """Temp file + rename: a crash never leaves half a file.  The file gets
    the permissions open() would give it (mkstemp's are 0600).  A path that
    is not a regular file (/dev/stdout, /dev/null, a FIFO) is written into,
    never replaced."""
    import stat
    import tempfile

    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        special = False
    if special:
        with open(path, "wb") as f:
            f.write(data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lockprof-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text(path: str, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def check_writable(path: str) -> None:
    """Raises FormatError naming the path when it cannot be written."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise FormatError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise FormatError(f"cannot write {path!r}: directory {directory!r} is not writable")
    if os.path.isdir(path):
        raise FormatError(f"cannot write {path!r}: it is a directory")
