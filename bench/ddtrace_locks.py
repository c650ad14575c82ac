"""ddtrace's lock profiler as a benchmark configuration, when ddtrace is
installed (`pip install -e '.[bench]'`): only its lock collectors, at its
default capture of 1%, recording into its native exporter (ddup) with a file
output, so that sampled events cost what they cost in production.

Its collectors patch threading/asyncio while started; the benchmark makes its
locks then and stops the collectors again (their wrappers keep sampling), so
that lockprof's own patching never sees them."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

_state: dict = {}


def why_unavailable() -> Optional[str]:
    """None when ddtrace's lock profiler can be used, else the reason."""
    if "error" in _state:
        return _state["error"]
    if "ready" in _state:
        return None
    try:
        import ddtrace
        from ddtrace.internal.datadog.profiling import ddup
        from ddtrace.profiling.collector import asyncio as da  # noqa: F401
        from ddtrace.profiling.collector import threading as dt  # noqa: F401
        if not ddup.is_available:
            raise RuntimeError("ddtrace's native exporter (ddup) is not available")
        out = os.path.join(tempfile.mkdtemp(prefix="lockprof-bench-dd-"), "ddprof")
        ddup.config(service="lockprof-bench", env="bench", version="0", output_filename=out)
        ddup.start()
        _state["version"] = ddtrace.__version__
        _state["ready"] = True
        return None
    except Exception as e:   # not installed, or an API this adapter does not know
        _state["error"] = f"{type(e).__name__}: {e}"
        return _state["error"]


def version() -> str:
    return _state.get("version", "")


def make(kind: str, is_async: bool, capture_pct: float = 1.0) -> Any:
    """A ddtrace-profiled lock of `kind` (Lock, RLock, Semaphore, ...)."""
    if why_unavailable() is not None:
        raise RuntimeError(_state["error"])
    if is_async:
        import asyncio
        from ddtrace.profiling.collector import asyncio as mod
        name, target = f"Asyncio{kind}Collector", asyncio
    else:
        import threading
        from ddtrace.profiling.collector import threading as mod
        name, target = f"Threading{kind}Collector", threading
    collector = getattr(mod, name)(capture_pct=capture_pct)
    collector.start()
    try:
        lock = getattr(target, kind)()
    finally:
        collector.stop()
    if type(lock).__module__.split(".")[0] != "ddtrace":
        raise RuntimeError(f"ddtrace did not wrap {target.__name__}.{kind}")
    return lock
