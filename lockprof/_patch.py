"""Swapping the stdlib's lock factories for lockprof's, and back."""
from __future__ import annotations

import _thread
import sys
from typing import Dict, List, Tuple

from . import _lockprof

# Modules whose own code must keep native locks: the stdlib's synchronization
# code (a Semaphore's inner Condition and Lock, an Event, a Barrier...) and
# lockprof itself.  Their names are not rebound by the module scan either.
_SKIP_PREFIXES = ("_thread", "threading", "asyncio.", "lockprof", "importlib", "_dummy_thread",
                  "dummy_threading")

_guard = _thread.allocate_lock()   # never profiled: made before any patching
_running = False
# key -> (module, attribute, original, factory)
_installed: Dict[str, Tuple[str, str, object, object]] = {}
# (module object, attribute name, original, factory) rebound by the scan
_rebound: List[Tuple[object, str, object, object]] = []


def _originals() -> Dict[str, Tuple[str, str, object]]:
    out = {}
    for key, modname, attr, _wtype, _inner, _is_async, _is_cond in _lockprof.TYPES:
        mod = sys.modules.get(modname) or __import__(modname)
        current = getattr(mod, attr)
        orig = getattr(current, "__lockprof_original__", current)
        out[key] = (modname, attr, orig)
    return out


def _scan_and_rebind(by_id: Dict[int, object]) -> None:
    for name, mod in list(sys.modules.items()):
        if mod is None or name == "asyncio" or name.startswith(_SKIP_PREFIXES):
            continue
        try:
            d = vars(mod)
        except TypeError:
            continue
        try:
            items = list(d.items())
        except RuntimeError:
            continue
        for attr, value in items:
            factory = by_id.get(id(value))
            if factory is not None and not isinstance(value, _lockprof.Factory):
                try:
                    setattr(mod, attr, factory)
                except Exception:
                    continue
                _rebound.append((mod, attr, value, factory))


# code in these modules always gets native locks: the stdlib's own
# synchronization (a Semaphore's inner Condition, an Event, a Barrier, asyncio's
# internals) and lockprof itself
DEFAULT_EXCLUDE = ("threading", "_threading_local", "asyncio", "lockprof")


def _sync_files() -> List[str]:
    files = []
    for name in ("threading", "asyncio.locks"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__file__", None):
            files.append(mod.__file__)
    return files


def _after_fork_in_child() -> None:
    """A forked child starts a fresh profile of its own; the guard another
    thread may have held at the fork is made new."""
    global _guard
    try:
        _guard._at_fork_reinit()
    except AttributeError:
        _guard = _thread.allocate_lock()
    if _running:
        try:
            import lockprof
            lockprof.reset()
        except Exception:
            pass


if hasattr(__import__("os"), "register_at_fork"):
    __import__("os").register_at_fork(after_in_child=_after_fork_in_child)


def start(sample_rate: float, max_locks: int, seed, max_frames: int = 64,
          wait_period_ns: int = 1_000_000, max_samples: int = 1 << 20,
          exclude=(), include=()) -> None:
    global _running
    with _guard:
        _lockprof.set_filters(DEFAULT_EXCLUDE + tuple(exclude), tuple(include))
        _lockprof.set_name_skip(_sync_files())
        if _running:
            _lockprof.configure(True, sample_rate, max_locks, seed, max_frames, wait_period_ns,
                                max_samples)
            return
        origs = _originals()
        by_id: Dict[int, object] = {}
        for key, (modname, attr, orig) in origs.items():
            factory = _lockprof.make_factory(key, orig)
            mod = sys.modules[modname]
            setattr(mod, attr, factory)
            _installed[key] = (modname, attr, orig, factory)
            by_id[id(orig)] = factory
        _scan_and_rebind(by_id)
        _lockprof.configure(True, sample_rate, max_locks, seed, max_frames, wait_period_ns,
                                max_samples)
        _running = True


def stop() -> None:
    global _running
    with _guard:
        if not _running:
            return
        _lockprof.configure(False, 0.0)
        for mod, attr, orig, factory in reversed(_rebound):
            try:
                if getattr(mod, attr, None) is factory:
                    setattr(mod, attr, orig)
            except Exception:
                pass
        _rebound.clear()
        for key, (modname, attr, orig, factory) in _installed.items():
            mod = sys.modules.get(modname)
            if mod is not None and getattr(mod, attr, None) is factory:
                setattr(mod, attr, orig)
        _installed.clear()
        _running = False


def replaced() -> List[str]:
    """The factories someone else replaced while profiling runs (gevent's
    monkey-patching, a re-import of threading): locks made through them are
    not profiled."""
    out = []
    for key, (modname, attr, orig, factory) in list(_installed.items()):
        mod = sys.modules.get(modname)
        if mod is not None and getattr(mod, attr, None) is not factory:
            out.append(f"{modname}.{attr}")
    return out


def is_running() -> bool:
    return _running
