"""Swapping the stdlib's lock factories for lockprof's, and back."""
from __future__ import annotations

import _thread
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:        # not imported at run time (start-up cost)
    from typing import Dict, List, Tuple

from . import _lockprof, _names

# Modules whose own code must keep native locks: the stdlib's synchronization
# code (a Semaphore's inner Condition and Lock, an Event, a Barrier...),
# gevent's, and lockprof itself.  Their names are not rebound by the module
# scan either.
_SKIP_PREFIXES = ("_thread", "threading", "asyncio.", "lockprof", "importlib", "gevent",
                  "_dummy_thread", "dummy_threading")

_guard = _thread.allocate_lock()   # never profiled: made before any patching
_running = False
# key -> (module, attribute, original, factory)
_installed: Dict[str, Tuple[str, str, object, object]] = {}
# (module object, attribute name, original, factory) rebound by the scan
_rebound: List[Tuple[object, str, object, object]] = []


def _originals() -> Dict[str, Tuple[str, str, object]]:
    """What each factory name holds now, for the modules already imported.
    asyncio is never imported here: its factories are installed when the
    program imports it (see _ImportWatch)."""
    out = {}
    for key, modname, attr, _wtype, _inner, _is_async, _is_cond in _lockprof.TYPES:
        if modname is None:        # made_by another entry: no factory of its own
            continue
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        current = getattr(mod, attr, None)
        if current is None:
            continue
        orig = getattr(current, "__lockprof_original__", current)
        out[key] = (modname, attr, orig)
    return out


def _defined_here(value, modname: str, attr: str) -> bool:
    """The module defines `value` under this name (gevent.thread.LockType once
    gevent patched threading.Lock with it): the definition stays as it is;
    only other modules' imported names are rebound."""
    return (getattr(value, "__module__", None) == modname
            and getattr(value, "__name__", None) == attr)


def _scan_and_rebind(by_id: Dict[int, object]) -> None:
    """Names other modules imported (`from threading import Lock`) are
    rebound to the factories; the search is one C pass over the modules'
    dicts."""
    mods = []
    for name, mod in list(sys.modules.items()):
        if mod is None or name == "asyncio" or name.startswith(_SKIP_PREFIXES):
            continue
        try:
            d = vars(mod)
        except TypeError:
            continue
        if isinstance(d, dict):
            mods.append((name, mod, d))
    originals = tuple(getattr(f, "__lockprof_original__", None) for f in by_id.values())
    originals = tuple(o for o in originals if o is not None and id(o) in by_id)
    if not originals:
        return
    for i, attr, value in _lockprof.find_refs([d for _, _, d in mods], originals):
        name, mod, _ = mods[i]
        factory = by_id.get(id(value))
        if factory is None or factory is value or isinstance(value, _lockprof.Factory):
            continue            # (a class profiled in place is its own name)
        if _defined_here(value, name, attr):
            continue
        try:
            setattr(mod, attr, factory)
        except Exception:
            continue
        _rebound.append((mod, attr, value, factory))


# code in these modules always gets native locks: the stdlib's own
# synchronization (a Semaphore's inner Condition, an Event, a Barrier, asyncio's
# internals), gevent's (its hub, thread pool and monkey-patching), and
# lockprof itself
DEFAULT_EXCLUDE = ("threading", "_threading_local", "asyncio", "gevent", "lockprof",
                   # trio.Condition() makes its own trio.Lock, which must
                   # stay trio's class (Condition checks type(lock) is Lock)
                   "trio._sync",
                   # anyio's Condition's own lock (its class is profiled)
                   "anyio._core._synchronization",
                   # a multiprocessing Condition's, Event's and Barrier's own
                   # locks and semaphores
                   "multiprocessing.synchronize")


# libraries' modules whose lock-making functions only pass a program's call
# on (anyio's public classes make their backend's): a lock made through them
# is named, and sited, at the program's line that called them
_PASS_THROUGH_MODULES = ("anyio._core._synchronization", "anyio._backends._asyncio",
                         "anyio._backends._trio")


def _sync_files() -> List[str]:
    files = []
    for name in ("threading", "asyncio.locks", "multiprocessing.synchronize") + _PASS_THROUGH_MODULES:
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__file__", None):
            files.append(mod.__file__)
    return files


def _code_of(modname: str, owner: str, name: str):
    """The code object of function `name` in the dict of class `owner` of an
    imported module (through staticmethod, classmethod, property), or None."""
    cls = getattr(sys.modules.get(modname), owner, None)
    fn = cls.__dict__.get(name) if isinstance(cls, type) else None
    if isinstance(fn, (staticmethod, classmethod)):
        fn = fn.__func__
    elif isinstance(fn, property):
        fn = fn.fget
    return getattr(fn, "__code__", None)


def _set_labels() -> None:
    """Names for the locks libraries make for themselves (_names.LABELS)."""
    code = _code_of("anyio._backends._asyncio", "AsyncIOBackend", "current_default_thread_limiter")
    if code is not None:
        _names.LABELS[code] = "anyio default thread limiter"
    # trio's, which anyio's trio backend also hands out
    fn = getattr(sys.modules.get("trio._threads"), "current_default_thread_limiter", None)
    code = getattr(fn, "__code__", None)
    if code is not None:
        _names.LABELS[code] = "trio default thread limiter"


def _pass_through_codes() -> List[object]:
    """The code objects of libraries' lock-making functions: a lock's
    creation site, and the module whose locks are profiled or not, is the
    first frame outside them.  (anyio.Lock() runs Lock.__new__, which asks
    the backend's create_lock, which calls the backend's class;
    anyio.Condition is profiled as a class of its own; its Lock is not.)"""
    core, backend, trio_backend = _PASS_THROUGH_MODULES
    codes = [c for c in (_code_of(mod, owner, name) for mod, owner, name in (
        (core, "Lock", "__new__"), (core, "Semaphore", "__new__"),
        (core, "CapacityLimiter", "__new__"),
        (core, "LockAdapter", "_lock"), (core, "SemaphoreAdapter", "_semaphore"),
        (core, "CapacityLimiterAdapter", "_limiter"),
        (backend, "AsyncIOBackend", "create_lock"), (backend, "AsyncIOBackend", "create_semaphore"),
        (backend, "AsyncIOBackend", "create_capacity_limiter"),
        # on trio, anyio's classes make trio's, which are the ones profiled
        (trio_backend, "Lock", "__init__"), (trio_backend, "Semaphore", "__init__"),
        (trio_backend, "CapacityLimiter", "__init__"),
        (trio_backend, "TrioBackend", "create_lock"),
        (trio_backend, "TrioBackend", "create_semaphore"),
        (trio_backend, "TrioBackend", "create_capacity_limiter"))) if c is not None]
    # multiprocessing.Lock() and a context's Lock() call the class from
    # the context's method
    mp = "multiprocessing.context"
    codes += [c for c in (_code_of(mp, "BaseContext", name) for name in (
        "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition")) if c is not None]
    return codes


def _dispatchers() -> List[tuple]:
    """(code, local name) of the functions that hand a function to a worker
    thread and wait for a token first: a limiter wait's stack shows the
    function handed over (a sync endpoint)."""
    pairs = []
    for mod, owner, name in (("anyio._backends._asyncio", "AsyncIOBackend",
                              "run_sync_in_worker_thread"),
                             ("anyio._backends._trio", "TrioBackend",
                              "run_sync_in_worker_thread")):
        code = _code_of(mod, owner, name)
        if code is not None and "func" in code.co_varnames:
            pairs.append((code, "func"))
    fn = getattr(sys.modules.get("trio._threads"), "to_thread_run_sync", None)
    code = getattr(fn, "__code__", None)
    if code is not None and "sync_fn" in code.co_varnames:
        pairs.append((code, "sync_fn"))
    return pairs


def _after_fork_in_child() -> None:
    """A forked child starts a fresh profile of its own; the guard another
    thread may have held at the fork is made new."""
    global _guard
    try:
        _guard._at_fork_reinit()
    except AttributeError:
        _guard = _thread.allocate_lock()
    try:
        _lockprof.after_fork()
    except Exception:
        pass
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
          exclude=(), include=(), caps=None) -> None:
    """caps: the other table caps (max_stacks, max_sites, max_thread_names,
    max_task_names) by name."""
    caps = dict(caps or {})
    global _running
    with _guard:
        _lockprof.set_filters(DEFAULT_EXCLUDE + tuple(exclude), tuple(include))
        _lockprof.set_target_finder(_names.assignment_target)
        _lockprof.set_name_skip(_sync_files())
        _lockprof.set_site_skip(_pass_through_codes())
        _lockprof.set_dispatch(_dispatchers())
        _set_labels()
        if _running:
            _lockprof.configure(True, sample_rate, max_locks, seed, max_frames, wait_period_ns,
                                max_samples, **caps)
            return
        _lockprof.imports_changed()
        by_id = _install_all()
        _scan_and_rebind(by_id)
        if _watch not in sys.meta_path:
            sys.meta_path.insert(0, _watch)
        _lockprof.configure(True, sample_rate, max_locks, seed, max_frames, wait_period_ns,
                                max_samples, **caps)
        _running = True


def _install_all() -> Dict[int, object]:
    """Puts a factory wherever a factory name holds something else: at start,
    and again when threading or asyncio was (re-)imported or gevent patched
    them.  A class written in Python (threading.Semaphore, asyncio.Lock) is
    its own factory: it is hooked in place and the name keeps it.  Returns
    {id(original): factory} of those installed now."""
    by_id: Dict[int, object] = {}
    for key, (modname, attr, orig) in _originals().items():
        mod = sys.modules[modname]
        current = getattr(mod, attr, None)
        if key in _installed and _installed[key][3] is current:
            continue               # ours, in place
        # anything else, a factory left over from an earlier start() included
        # (its original is what _originals() reports), gets a new one
        try:
            factory = _lockprof.make_factory(key, orig)
        except LookupError:        # a lazy entry whose module is not imported
            continue
        setattr(mod, attr, factory)
        _installed[key] = (modname, attr, orig, factory)   # stop() puts orig back
        by_id[id(orig)] = factory
    return by_id


def reinstall() -> None:
    """Called when threading or asyncio has been imported or re-imported, or
    gevent has monkey-patched them, while profiling runs: the factory names
    get lockprof's factories again, around what they hold now.  Never
    raises; a failure is counted as a profiler error."""
    try:
        with _guard:
            if not _running:
                return
            _lockprof.imports_changed()
            _install_all()
            _lockprof.set_name_skip(_sync_files())
            _lockprof.set_site_skip(_pass_through_codes())
            _lockprof.set_dispatch(_dispatchers())
            _set_labels()
    except Exception:
        _lockprof.count_error()


class _Loader:
    """Runs a watched module's own loader, then tells lockprof; puts the
    module's __loader__ and __spec__.loader back to that loader first, so
    nothing of this remains visible."""

    def __init__(self, loader, name: str) -> None:
        self._loader = loader
        self._name = name

    def __getattr__(self, attr):
        return getattr(self._loader, attr)

    @property
    def __class__(self):
        # `isinstance(spec.loader, SourceFileLoader)` answers as for the
        # loader it stands for (importlib.util.find_spec hands specs out)
        return type(self._loader)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                spec.loader = self._loader
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self._loader
        reinstall()


class _ImportWatch:
    """A sys.meta_path entry that finds nothing by itself.  For threading and
    asyncio it asks the finders after it and wraps the loader they return,
    so that asyncio imported after start() is profiled and a re-import of
    threading or asyncio (importlib.reload) gets the factories back."""

    WATCHED = frozenset(("threading", "asyncio", "anyio", "anyio._backends._asyncio", "gevent.lock",
                         "trio", "anyio._backends._trio", "multiprocessing.synchronize",
                         # the runtime looks these up for task labels
                         # (imports_changed): "_asyncio" comes with asyncio
                         "gevent"))

    def find_spec(self, name, path=None, target=None):
        mp = sys.meta_path
        if mp and mp[0] is not self:
            # a finder put before this one (pytest's assertion rewriter, which
            # claims the modules of plugins such as anyio's) would keep the
            # watched modules from it: back to the front.  Safe while the
            # import system iterates the list: it is at this entry, and the
            # entries after it keep their places.
            try:
                mp.remove(self)
                mp.insert(0, self)
            except ValueError:
                return None
        if name not in self.WATCHED:
            return None
        try:
            finders = sys.meta_path[sys.meta_path.index(self) + 1:]
        except ValueError:
            return None
        for finder in finders:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if getattr(spec, "loader", None) is not None and hasattr(spec.loader, "exec_module"):
            try:
                spec.loader = _Loader(spec.loader, name)
            except Exception:
                pass
        return spec


_watch = _ImportWatch()


def stop() -> None:
    global _running
    with _guard:
        if not _running:
            return
        _lockprof.configure(False, 0.0)
        try:
            sys.meta_path.remove(_watch)
        except ValueError:
            pass
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
        _lockprof.unhook_classes()
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
