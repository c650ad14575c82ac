"""A reference lock profiler in pure Python, built the way the seed analysis
describes today's Python-level profilers: a wrapper object per lock whose
methods take *args/**kwargs, a shared per-type counter sampler, and on a
sampled acquisition two clock reads and a stack walk appended to a list.

It is the baseline the seed measured (~600 ns per operation), rebuilt here so
every run compares against it on the same machine and CPython.  It profiles
only locks made through `make(kind)`; it never patches the stdlib.
"""
from __future__ import annotations

import sys
import threading
import time

_allocate = {"Lock": threading.Lock, "RLock": threading.RLock,
             "Semaphore": threading.Semaphore, "BoundedSemaphore": threading.BoundedSemaphore,
             "Condition": threading.Condition}


class Sampler:
    """Capture percentage as a running counter (a fixed period, shared by
    every lock of a type)."""

    def __init__(self, pct: float):
        self.pct = pct
        self.acc = 0.0

    def capture(self) -> bool:
        self.acc += self.pct
        if self.acc >= 100.0:
            self.acc -= 100.0
            return True
        return False


class Recorder:
    def __init__(self, max_frames: int = 64):
        self.events = []
        self.max_frames = max_frames

    def record(self, lock, kind: str, duration: int) -> None:
        frames = []
        f = sys._getframe(3)
        while f is not None and len(frames) < self.max_frames:
            frames.append((f.f_code.co_filename, f.f_code.co_name, f.f_lineno))
            f = f.f_back
        self.events.append((lock.name, kind, duration, threading.get_ident(), tuple(frames)))


class ProfiledLock:
    def __init__(self, wrapped, sampler: Sampler, recorder: Recorder, name: str):
        self.__wrapped__ = wrapped
        self.sampler = sampler
        self.recorder = recorder
        self.name = name
        self.acquired_at = None

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)

    def _acquire(self, inner, *args, **kwargs):
        if not self.sampler.capture():
            return inner(*args, **kwargs)
        start = time.monotonic_ns()
        try:
            return inner(*args, **kwargs)
        finally:
            end = time.monotonic_ns()
            self.acquired_at = end
            self.recorder.record(self, "acquire-wait", end - start)

    def acquire(self, *args, **kwargs):
        return self._acquire(self.__wrapped__.acquire, *args, **kwargs)

    def _release(self, inner, *args, **kwargs):
        start = self.acquired_at
        self.acquired_at = None
        try:
            return inner(*args, **kwargs)
        finally:
            if start is not None:
                self.recorder.record(self, "hold", time.monotonic_ns() - start)

    def release(self, *args, **kwargs):
        return self._release(self.__wrapped__.release, *args, **kwargs)

    def __enter__(self, *args, **kwargs):
        return self._acquire(self.__wrapped__.__enter__, *args, **kwargs)

    def __exit__(self, *args, **kwargs):
        return self._release(self.__wrapped__.__exit__, *args, **kwargs)


class Profiler:
    def __init__(self, pct: float = 1.0):
        self.recorder = Recorder()
        self.samplers = {k: Sampler(pct) for k in _allocate}

    def make(self, kind: str, *args):
        inner = _allocate[kind](*args)
        caller = sys._getframe(1)
        name = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        return ProfiledLock(inner, self.samplers[kind], self.recorder, name)
