"""The generator's model: the spec, checked, with every derived flag.

Templates branch only on what this module computes; they hold no logic of
their own.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

# role -> (METH_* flags of the wrapper method, the wrapped method it calls or
# None for "the one of the same name")
ROLES: Dict[str, Tuple[str, Optional[str]]] = {
    "acquire": ("METH_FASTCALL | METH_KEYWORDS", None),
    "enter": ("METH_FASTCALL | METH_KEYWORDS", "acquire"),
    "release": ("METH_FASTCALL | METH_KEYWORDS", None),
    "exit": ("METH_FASTCALL | METH_KEYWORDS", "release"),
    "forward": ("METH_FASTCALL | METH_KEYWORDS", None),
    "release_save": ("METH_FASTCALL | METH_KEYWORDS", None),
    "acquire_restore": ("METH_FASTCALL | METH_KEYWORDS", None),
    "reinit": ("METH_FASTCALL | METH_KEYWORDS", None),
    "wait": ("METH_FASTCALL | METH_KEYWORDS", None),
    "async_acquire": ("METH_FASTCALL | METH_KEYWORDS", None),
    "aenter": ("METH_FASTCALL | METH_KEYWORDS", "acquire"),
    "aexit": ("METH_FASTCALL | METH_KEYWORDS", "release"),
    "async_wait": ("METH_FASTCALL | METH_KEYWORDS", None),
}
SYNC_ONLY = {"acquire", "enter", "exit", "wait"}
ASYNC_ONLY = {"async_acquire", "aenter", "aexit", "async_wait"}
FIELDS = {"key", "module", "factory", "inner_type", "type_name", "native", "async",
          "reentrant", "condition", "methods", "bound_in_init", "busy_probe", "lazy",
          "made_by", "wait_yield", "unwrap_args", "profile_unpickled"}
REQUIRED = FIELDS - {"type_name", "bound_in_init", "busy_probe", "lazy", "made_by", "module",
                     "factory", "wait_yield", "unwrap_args", "profile_unpickled"}


class SpecError(ValueError):
    """The spec is malformed; the message names the entry and the field."""


def _ident(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_")


def _version_hex(since: str, where: str, field: str = "since") -> str:
    m = re.fullmatch(r"3\.(\d+)", since)
    if not m:
        raise SpecError(f"{where}: {field}={since!r} is not a CPython version like '3.11'")
    return "0x03%02X0000" % int(m.group(1))


def _text_signature(name: str, sig: Optional[str]) -> str:
    """The docstring's first lines from which CPython answers
    inspect.signature() of a C method (bound: without $self)."""
    if sig is None:
        return ""
    params = sig[1:-1].strip()
    return f"{name}($self, /{', ' + params if params else ''})\n--\n\n"


@dataclass(frozen=True)
class Method:
    name: str               # Python-visible name on the wrapper
    role: str
    c_name: str             # <prefix>_<meth>
    meth_flags: str         # METH_* of the wrapper method
    inner: str              # name of the wrapped method it calls
    inner_c: str            # C variable of that lp_method
    guard: Optional[str]    # "PY_VERSION_HEX >= 0x030B0000" or None
    doc: str                # may start with a text signature
    # a "forward" of a Python class's method: exposed as a getter returning
    # the wrapped object's bound method, so that the call stays Python to
    # Python (a C method calling into Python costs a C-level frame)
    as_getter: bool = False
    # an "aenter" whose wrapped __aenter__ returns the lock itself (anyio's
    # Semaphore): `async with lock as x` gives the wrapper; otherwise None
    returns_self: bool = False
    # an "enter" whose wrapped __enter__ returns None (gevent's Semaphore),
    # not acquire()'s True
    returns_none: bool = False
    # METH_NOARGS only from a CPython version on ("PY_VERSION_HEX >= ..."),
    # where the wrapped method takes no arguments (3.15's C lock __enter__)
    noargs_guard: Optional[str] = None

    @property
    def c_doc(self) -> str:
        """doc as a C string literal"""
        return json.dumps(self.doc)


@dataclass(frozen=True)
class InnerMethod:
    name: str
    c_var: str
    guard: Optional[str]
    # the wrapper's method is METH_NOARGS, so the C method it calls must take
    # no arguments too (checked when the module is set up; under
    # noargs_guard only, when that is set)
    noargs: bool = False
    noargs_guard: Optional[str] = None


@dataclass(frozen=True)
class LockType:
    key: str
    index: int              # the lock kind id used by the runtime
    module: Optional[str]   # where the factory is patched (None: made_by)
    factory: Optional[str]
    inner_type: str
    type_name: str          # the dotted name the type is made under
    type_module: str        # __module__ of the stdlib's class
    native: bool
    is_async: bool
    reentrant: bool
    condition: bool
    methods: Tuple[Method, ...]
    inner_methods: Tuple[InnerMethod, ...]
    spec_line: int
    # the class is looked up only once the program has imported its module
    # (lockprof never imports it; asyncio, gevent)
    lazy: bool
    # key of the entry whose factory returns this class once another library
    # has replaced that factory (gevent's monkey-patching); no factory of its own
    made_by: Optional[str]
    # an async entry whose acquire yields to its event loop even when
    # uncontended (trio's checkpoints): the class of the yielded value that
    # means "suspended until woken" (trio's WaitTaskRescheduled); None: any
    # value other than a bare yield (asyncio's futures)
    wait_yield: Optional[str]
    # the class refuses our wrappers as arguments (trio.Condition(lock)
    # checks type(lock) is Lock): a wrapper argument is replaced by the
    # object it wraps when the class is called
    unwrap_args: bool
    # pickled to a child process (multiprocessing's locks): the copy the
    # child unpickles is profiled there when the child profiles, under the
    # parent's name (lockprof/_unpickle.py); otherwise pickling is the
    # wrapped object's own
    profile_unpickled: bool
    # derived
    prefix: str             # C prefix, e.g. lp_threading_Lock
    kind_macro: str         # e.g. LP_KIND_THREADING_LOCK
    gc: bool                # can hold references to arbitrary objects
    forward_attrs: bool     # unknown attributes come from the wrapped object
    probe_c: Optional[str]  # lp_method of the busy probe (e.g. Lock.locked), or None
    binds_lock: bool        # acquire/release are the inner lock's, bound per
                            # instance: cached at wrap time (lp_cond_wrapper)
    release_method: Optional[Method]   # the release __aexit__ runs (async types)
    release_inner_c: str    # lp_method of the wrapped release (undoes a try)
    sync_acquire: bool      # has a threading-style acquire (emits acquire_impl)
    has_enter: bool         # has an 'enter' (emits the __enter__-is-acquire check)
    # C initialisers of the lp_typedef's strings: a literal, or NULL
    c_module: str
    c_factory: str
    c_made_by: str
    c_short_name: str       # the bare name it is renamed to, or NULL
    c_wait_yield: str       # wait_yield as a C string, or NULL


@dataclass(frozen=True)
class Spec:
    path: str
    types: Tuple[LockType, ...]


def _c_str(value: Optional[str]) -> str:
    return "NULL" if value is None else json.dumps(value)


def _line_of(text: str, key: str) -> int:
    idx = text.find(f'"key": "{key}"')
    return text.count("\n", 0, idx) + 1 if idx >= 0 else 0


def _lock_type(raw: Dict[str, Any], index: int, text: str) -> LockType:
    key = raw.get("key")
    where = f"spec entry #{index} ({key!r})"
    if not isinstance(key, str) or not key:
        raise SpecError(f"{where}: 'key' must be a non-empty string")
    unknown = set(raw) - FIELDS
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {sorted(unknown)}; accepted: {sorted(FIELDS)}")
    missing = REQUIRED - set(raw)
    if missing:
        raise SpecError(f"{where}: missing field(s) {sorted(missing)}")
    for flag in ("native", "async", "reentrant", "condition"):
        if not isinstance(raw[flag], bool):
            raise SpecError(f"{where}: {flag!r} must be true or false, got {raw[flag]!r}")
    inner_type = raw["inner_type"]
    if not isinstance(inner_type, str) or "." not in inner_type:
        raise SpecError(f"{where}: 'inner_type' must be a dotted path like 'threading.Semaphore'")
    type_module, _, last = inner_type.rpartition(".")
    # the type is made under a dotted name (its __module__ comes from it);
    # a Python class's is then renamed to its bare name, as its tp_name is
    # (error messages say 'Semaphore')
    type_name = raw.get("type_name") or inner_type
    shown = type_name    # in docstrings
    prefix = "lp_" + _ident(key)
    is_async = raw["async"]

    methods: List[Method] = []
    inner: Dict[str, InnerMethod] = {}
    seen = set()
    for m in raw["methods"]:
        name, role = m.get("name"), m.get("role")
        mwhere = f"{where}, method {name!r}"
        if not isinstance(name, str) or not name.isidentifier():
            raise SpecError(f"{mwhere}: 'name' must be an identifier")
        if name in seen:
            raise SpecError(f"{mwhere}: listed twice")
        seen.add(name)
        if role not in ROLES:
            raise SpecError(f"{mwhere}: role {role!r} unknown; accepted: {sorted(ROLES)}")
        if is_async and role in SYNC_ONLY:
            raise SpecError(f"{mwhere}: role {role!r} is for threading types; this entry is async")
        if not is_async and role in ASYNC_ONLY:
            raise SpecError(f"{mwhere}: role {role!r} is for asyncio types; this entry is not async")
        if role in ("wait", "async_wait") and not raw["condition"]:
            raise SpecError(f"{mwhere}: role {role!r} needs \"condition\": true")
        extra = set(m) - {"name", "role", "since", "signature", "returns", "noargs"}
        if extra:
            raise SpecError(f"{mwhere}: unknown field(s) {sorted(extra)}")
        if "returns" in m and not ((m["returns"] == "self" and role == "aenter")
                                   or (m["returns"] == "none" and role == "enter")):
            raise SpecError(f"{mwhere}: 'returns' is \"self\" for an 'aenter' method whose "
                            f"wrapped __aenter__ returns the lock, or \"none\" for an 'enter' "
                            f"method whose wrapped __enter__ returns None")
        guard = None
        if "since" in m:
            guard = f"PY_VERSION_HEX >= {_version_hex(m['since'], mwhere)}"
        sig = m.get("signature")
        if sig is not None and (not isinstance(sig, str) or not re.fullmatch(r"\(.*\)", sig)
                                or raw["native"]):
            raise SpecError(f"{mwhere}: 'signature' must be the parameters after self, as "
                            "'(blocking=True, timeout=None)', and only for a Python class "
                            "(a C method's is taken from it at run time)")
        flags, inner_name = ROLES[role]
        inner_name = inner_name or name
        noargs = m.get("noargs", False)
        noargs_guard = None
        if noargs is not False and (not (noargs is True or isinstance(noargs, str))
                                    or role not in ("release", "enter") or not raw["native"]
                                    or (noargs is True and role == "enter")):
            raise SpecError(f"{mwhere}: 'noargs' is true for a 'release' method of a C class "
                            "whose release takes no arguments on every supported CPython, or "
                            "a CPython version ('3.15') for a 'release' or 'enter' method "
                            "whose wrapped method takes none from that version on")
        if isinstance(noargs, str):
            noargs_guard = f"PY_VERSION_HEX >= {_version_hex(noargs, mwhere, 'noargs')}"
            # what is checked at set-up is the wrapped method of that name
            # (an 'enter' calls the wrapped acquire)
            inner[name] = InnerMethod(name, f"{prefix}_m_{_ident(name)}", guard, True,
                                      noargs_guard)
            noargs = False
        elif noargs:
            # the interpreter calls a METH_NOARGS method with no argument
            # handling at all (3.15: no fastcall-with-keywords helper)
            flags = "METH_NOARGS"
        c_var = f"{prefix}_m_{_ident(inner_name)}"
        if role == "forward" and not raw["native"]:
            if name == raw.get("busy_probe"):
                # still called from C, as the probe
                inner[name] = InnerMethod(name, c_var, guard)
            methods.append(Method(
                name=name, role=role, c_name=f"{prefix}_{_ident(name) or name}",
                meth_flags="", inner=inner_name, inner_c="", guard=guard,
                doc=f"{name}: the wrapped {shown}'s own (not recorded).", as_getter=True))
            continue
        if inner_name not in inner:
            inner[inner_name] = InnerMethod(inner_name, c_var, guard, noargs)
        elif inner[inner_name].guard != guard and inner[inner_name].guard is not None:
            inner[inner_name] = InnerMethod(inner_name, c_var, None, inner[inner_name].noargs)
        methods.append(Method(
            name=name, role=role, c_name=f"{prefix}_{_ident(name) or name}",
            meth_flags=flags, inner=inner_name, inner_c=c_var, guard=guard,
            doc=_text_signature(name, sig)
            + f"{name}: as {shown}.{inner_name}, recorded by lockprof ({role}).",
            returns_self=m.get("returns") == "self",
            returns_none=m.get("returns") == "none",
            noargs_guard=noargs_guard))
    release = None
    if any(x.role == "aexit" for x in methods):
        release = next((x for x in methods if x.name == "release"), None)
        if release is None:
            raise SpecError(f"{where}: an 'aexit' method needs a 'release' method")
    if "release" not in inner:
        raise SpecError(f"{where}: needs a method calling the wrapped 'release'")
    native = raw["native"]
    bound = raw.get("bound_in_init", [])
    if not isinstance(bound, list) or not all(isinstance(x, str) for x in bound):
        raise SpecError(f"{where}: 'bound_in_init' must be a list of method names")
    probe = raw.get("busy_probe")
    if probe is not None:
        # exact only when the probe cannot switch threads: a C method
        # (gevent's Cython semaphore qualifies), never Python code
        if not isinstance(probe, str) or probe not in inner:
            raise SpecError(f"{where}: 'busy_probe' must name one of the entry's methods")
    lazy = raw.get("lazy", False)
    if not isinstance(lazy, bool):
        raise SpecError(f"{where}: 'lazy' must be true or false, got {lazy!r}")
    wait_yield = raw.get("wait_yield")
    if wait_yield is not None and (not isinstance(wait_yield, str) or "." not in wait_yield
                                   or not is_async):
        raise SpecError(f"{where}: 'wait_yield' must be the dotted path of a class, as "
                        "'trio._core._traps.WaitTaskRescheduled', on an async entry")
    unwrap_args = raw.get("unwrap_args", False)
    if not isinstance(unwrap_args, bool):
        raise SpecError(f"{where}: 'unwrap_args' must be true or false, got {unwrap_args!r}")
    profile_unpickled = raw.get("profile_unpickled", False)
    if not isinstance(profile_unpickled, bool) or (profile_unpickled and raw["native"]):
        raise SpecError(f"{where}: 'profile_unpickled' must be true or false, and only for a "
                        "Python class")
    made_by = raw.get("made_by")
    if made_by is not None:
        if not isinstance(made_by, str) or not made_by:
            raise SpecError(f"{where}: 'made_by' must be the key of another entry")
        if "module" in raw or "factory" in raw:
            raise SpecError(f"{where}: an entry 'made_by' another has no 'module'/'factory' "
                            "of its own")
    else:
        for f in ("module", "factory"):
            if not isinstance(raw.get(f), str) or not raw.get(f):
                raise SpecError(f"{where}: missing field {f!r} (or 'made_by')")
    return LockType(
        key=key, index=index, module=raw.get("module"), factory=raw.get("factory"),
        lazy=lazy, made_by=made_by, wait_yield=wait_yield, unwrap_args=unwrap_args,
        profile_unpickled=profile_unpickled,
        c_wait_yield=_c_str(wait_yield),
        inner_type=inner_type, type_name=type_name, type_module=type_module,
        native=native, is_async=is_async, reentrant=raw["reentrant"],
        condition=raw["condition"], methods=tuple(methods),
        inner_methods=tuple(inner.values()), spec_line=_line_of(text, key),
        prefix=prefix, kind_macro="LP_KIND_" + _ident(key).upper(),
        gc=not native, forward_attrs=not native, release_method=release,
        release_inner_c=inner["release"].c_var,
        binds_lock={"acquire", "release"} <= set(bound),
        probe_c=inner[probe].c_var if probe else None,
        c_module=_c_str(raw.get("module")), c_factory=_c_str(raw.get("factory")),
        c_made_by=_c_str(made_by),
        c_short_name=_c_str(None if raw.get("type_name") else last),
        sync_acquire=any(x.role in ("acquire", "enter") for x in methods),
        has_enter=any(x.role == "enter" for x in methods),
    )


def load(path: Path) -> Spec:
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not valid JSON: {e}") from None
    entries = raw.get("locks") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{path}: expected an object with a non-empty 'locks' list")
    types = tuple(_lock_type(e, i, text) for i, e in enumerate(entries))
    keys = [t.key for t in types]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise SpecError(f"{path}: key(s) listed twice: {sorted(dup)}")
    prefixes = [t.prefix for t in types]
    clash = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if clash:
        raise SpecError(f"{path}: keys giving the same C prefix {clash}; make them differ "
                        "in more than punctuation")
    with_factory = {t.key: t for t in types if t.made_by is None}
    for t in types:
        if t.made_by is not None:
            base = with_factory.get(t.made_by)
            if base is None:
                raise SpecError(f"{path}: {t.key!r}: made_by={t.made_by!r} names no entry with "
                                f"a factory; accepted: {sorted(with_factory)}")
            if (base.is_async, base.condition) != (t.is_async, t.condition):
                raise SpecError(f"{path}: {t.key!r}: made_by={t.made_by!r} must agree with it "
                                "on 'async' and 'condition'")
    return Spec(path=path.as_posix(), types=types)
