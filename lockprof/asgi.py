"""ASGI middleware: each request's lock events carry the label `endpoint`.

    app.add_middleware(lockprof.asgi.LockprofMiddleware)     # Starlette, FastAPI
    app = lockprof.asgi.LockprofMiddleware(app)              # any ASGI app

The value is the route template Starlette and FastAPI put in the scope when
they route a request (`scope["route"].path`, `/orders/{order_id}`), read when
an event is recorded; before routing, or for other frameworks, it is the path
with its id-like segments collapsed (`/orders/{id}`).  The label follows the
request's task, the tasks it starts and the worker threads of sync endpoints
(anyio copies the context).  lockprof imports no framework.
"""
from __future__ import annotations

from typing import Any, Callable

from ._labels import _VAR, _set_late, route_or_path

__all__ = ["LockprofMiddleware"]


class LockprofMiddleware:
    """Wraps an ASGI application; `label` names the label (default
    "endpoint").  Lifespan and other non-request scopes pass through."""

    def __init__(self, app: Callable, label: str = "endpoint") -> None:
        self.app = app
        self.label = label

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        if scope.get("type") not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        value = route_or_path(scope, "route", ("path",), scope.get("path") or "/")
        token = _set_late(self.label, value)
        try:
            return await self.app(scope, receive, send)
        finally:
            _VAR.reset(token)
