"""WSGI middleware: each request's lock events carry the label `endpoint`.

    app.wsgi_app = lockprof.wsgi.LockprofMiddleware(app.wsgi_app)    # Flask
    application = lockprof.wsgi.LockprofMiddleware(application)      # any WSGI app

The value is the request's route template where the framework exposes one:
Flask (werkzeug) puts the request in environ["werkzeug.request"], and its
`url_rule.rule` (`/orders/<int:order_id>`) is read when an event is recorded,
once Flask has routed the request.  Elsewhere it is the path with its id-like
segments collapsed (`/orders/{id}`).  For Django, add
"lockprof.wsgi.DjangoMiddleware" to MIDDLEWARE: its label is the resolver's
`route`.  lockprof imports no framework.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ._labels import _VAR, _set_late, route_or_path

__all__ = ["LockprofMiddleware", "DjangoMiddleware"]


class LockprofMiddleware:
    """Wraps a WSGI application; `label` names the label (default
    "endpoint")."""

    def __init__(self, app: Callable, label: str = "endpoint") -> None:
        self.app = app
        self.label = label

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        value = route_or_path(environ, "werkzeug.request", ("url_rule", "rule"),
                              environ.get("PATH_INFO") or "/")
        token = _set_late(self.label, value)
        try:
            result = self.app(environ, start_response)
        finally:
            _VAR.reset(token)
        if isinstance(result, (list, tuple)):
            return result
        # a streamed body runs the application's code as the server iterates
        return _Labelled(result, self.label, value)


class _Labelled:
    """A response iterable whose iteration carries the request's label."""

    __slots__ = ("_it", "_result", "_label", "_value")

    def __init__(self, result: Iterable[bytes], label: str, value: Any) -> None:
        self._result = result
        self._it = None
        self._label = label
        self._value = value

    def __iter__(self) -> "_Labelled":
        return self

    def __next__(self) -> bytes:
        token = _set_late(self._label, self._value)
        try:
            if self._it is None:
                self._it = iter(self._result)
            return next(self._it)
        finally:
            _VAR.reset(token)

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            token = _set_late(self._label, self._value)
            try:
                close()
            finally:
                _VAR.reset(token)


class DjangoMiddleware:
    """Django middleware (MIDDLEWARE = ["lockprof.wsgi.DjangoMiddleware",
    ...]): the label is the URL pattern Django resolved the request to
    (`request.resolver_match.route`, e.g. "orders/<int:pk>/"), read once
    Django has resolved it; the collapsed path before that."""

    label = "endpoint"

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        value = route_or_path(getattr(request, "__dict__", None), "resolver_match", ("route",),
                              getattr(request, "path_info", None) or "/")
        token = _set_late(self.label, value)
        try:
            return self.get_response(request)
        finally:
            _VAR.reset(token)
