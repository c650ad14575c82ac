"""gevent's monkey-patching plugin hook (entry point
`gevent.plugins.monkey.did_patch_module`, declared in setup.py).

gevent calls it after patching each module.  When gevent has just replaced
threading's lock factories while lockprof runs, lockprof puts its factories
back around gevent's, so greenlets' locks stay profiled.  Nothing happens
when lockprof is not running."""
from __future__ import annotations


def did_patch_module(event) -> None:
    if getattr(event, "module_name", None) not in ("thread", "threading"):
        return
    from . import _patch
    if _patch.is_running():
        _patch.reinstall()
