"""Request labels: `with lockprof.labels(endpoint="/orders/{id}"):`.

The labels live in one ContextVar, as a tuple of (key, value) pairs sorted by
key, so they follow asyncio tasks and the threads the stdlib hands a copied
context (asyncio.to_thread, loop.run_in_executor through it).  The runtime
reads the variable only on a sampled or contended event (lp_stack.c:
labels_now), interns the set, and keys that event's row by it; nothing on the
hot path looks at it.

A value is a str, or, for the middleware, a late value the runtime resolves
when it reads it: (mapping, key, (attr, ...), fallback), read as
mapping[key].attr... when that is a non-empty str, else fallback.  The route
template of a request is known only once the framework has routed it; the
late value reads it where the framework puts it.
"""
from __future__ import annotations

import contextvars
TYPE_CHECKING = False
if TYPE_CHECKING:        # not imported at run time (start-up cost)
    from typing import Any, Dict, Optional, Tuple

from . import _lockprof

__all__ = ["labels", "current_labels", "collapse_path"]

_VAR: "contextvars.ContextVar[Tuple[Tuple[str, Any], ...]]" = contextvars.ContextVar(
    "lockprof.labels", default=())
_lockprof.set_labels_var(_VAR)

_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def _is_key(k: Any) -> bool:
    """[A-Za-z_][A-Za-z0-9_.-]* (without importing re: start-up cost)"""
    return (isinstance(k, str) and k != "" and not k[0].isdigit() and k[0] not in ".-"
            and _KEY_CHARS.issuperset(k))


def _check(kv: Dict[str, Any]) -> None:
    for k, v in kv.items():
        if not _is_key(k):
            raise ValueError(f"lockprof.labels: label name {k!r} is not accepted "
                             f"(letters, digits, '_', '.', '-', not starting with a digit)")
        if not isinstance(v, str):
            raise TypeError(f"lockprof.labels: the value of {k!r} must be a str, "
                            f"got {type(v).__name__} {v!r}")


class labels:
    """`with lockprof.labels(endpoint="/orders/{id}", tenant="acme"):` — every
    lock event inside (in this thread or task, and in the tasks and threads
    that copy its context) carries these labels, added to any set outside.
    They are pprof labels in the profile, `labels` in samples(), and what
    `lockprof report --by KEY` groups by.  Values are strs; past
    max_label_value characters they are cut, and past max_label_sets distinct
    sets an event's values are recorded as "<other>" (both counted).  Usable
    as a decorator too; entering costs one ContextVar.set."""

    __slots__ = ("_kv", "_tokens")

    def __init__(self, **kv: str) -> None:
        _check(kv)
        self._kv = kv
        self._tokens: list = []

    def __enter__(self) -> "labels":
        outer = _VAR.get()
        if outer:
            merged = dict(outer)
            merged.update(self._kv)
            items = merged.items()
        else:
            items = self._kv.items()
        self._tokens.append(_VAR.set(tuple(sorted(items))))
        return self

    def __exit__(self, *exc: Any) -> None:
        _VAR.reset(self._tokens.pop())

    def __call__(self, fn):
        import functools
        import inspect
        kv = self._kv
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args, **kwargs):
                with labels(**kv):
                    return await fn(*args, **kwargs)
            return run_async

        @functools.wraps(fn)
        def run(*args, **kwargs):
            with labels(**kv):
                return fn(*args, **kwargs)
        return run

    def __repr__(self) -> str:
        return f"lockprof.labels({', '.join(f'{k}={v!r}' for k, v in self._kv.items())})"


def current_labels() -> Dict[str, str]:
    """The labels in effect here (late values as their fallback)."""
    return {k: (v if isinstance(v, str) else v[3]) for k, v in _VAR.get()}


def _set_late(key: str, value: Any) -> contextvars.Token:
    """For the middleware: key=value (a str or a late value) added to the
    labels in effect; undone with _VAR.reset(token)."""
    merged = dict(_VAR.get())
    merged[key] = value
    return _VAR.set(tuple(sorted(merged.items())))


# a path segment that names one object, not a route: numbers, hex ids,
# UUIDs, long tokens with digits
_ID_SEGMENT_RE = (
    r"\d+|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{12,}|(?=[^/]*\d)[A-Za-z0-9_\-.~%]{16,}|[^/]*\d[^/]*\d[^/]*\d[^/]*\d[^/]*")
_id_segment = None          # compiled at first use (re is not imported at start-up)


def collapse_path(path: str, max_segments: int = 8) -> str:
    """A request path with its id-like segments (numbers, UUIDs, hex and
    other digit-heavy tokens) as `{id}`, and at most max_segments segments:
    /orders/8812/items/3f2c9a1e-... -> /orders/{id}/items/{id}.  The query
    string is dropped.  Used where the framework gives no route template."""
    global _id_segment
    if _id_segment is None:
        import re
        _id_segment = re.compile(_ID_SEGMENT_RE)
    is_id = _id_segment.fullmatch
    path = path.split("?", 1)[0] or "/"
    parts = path.split("/")
    out = ["{id}" if p and is_id(p) else p for p in parts[:max_segments + 1]]
    if len(parts) > max_segments + 1:
        out.append("...")
    return "/".join(out)


def route_or_path(mapping: Optional[dict], key: str, attrs: Tuple[str, ...],
                  path: str) -> Any:
    """A late value: mapping[key].attrs... once the framework has routed the
    request, the collapsed path until then (or when it never does)."""
    fallback = collapse_path(path)
    if mapping is None:
        return fallback
    return (mapping, key, attrs, fallback)
