"""Event-loop selection: uvloop when it is installed (the default), the stock
asyncio loop otherwise or on request."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import sys
from typing import Any, Callable, Coroutine, TypeVar

__all__ = [
    "LOOP_KINDS",
    "MemoryTrimmer",
    "malloc_trim",
    "new_event_loop",
    "run",
    "tune_gc_for_server",
    "uvloop_available",
]

T = TypeVar("T")
LOOP_KINDS = ("auto", "uvloop", "asyncio")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    if kind not in LOOP_KINDS:
        raise ValueError(f"loop kind must be one of {LOOP_KINDS}")
    if kind in ("auto", "uvloop") and uvloop_available():
        import uvloop

        return uvloop.new_event_loop()
    if kind == "uvloop":
        raise RuntimeError("uvloop was requested but is not installed")
    return asyncio.new_event_loop()


def run(main: Callable[[], Coroutine[Any, Any, T]], kind: str = "auto") -> T:
    """Run ``main()`` to completion on a fresh loop of the given kind."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        return runner.run(main())


def tune_gc_for_server(young_threshold: int = 10_000) -> None:
    """Cyclic-GC settings for a long-running server process (``kadfast
    server`` applies them; a library never does on its own): what exists
    after start-up is frozen out of every later collection (``gc.freeze``),
    and the young generation is collected after ``young_threshold``
    allocations instead of 700, so that a connection's short-lived state
    mostly dies by reference counting before it is promoted. Without this a
    server holding 10,000 connections spends ~10% of each new connection's
    CPU in full collections (see docs/benchmarks.md). Process-wide;
    ``young_threshold`` 0 leaves the settings alone."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, t1, t2 = gc.get_threshold()
    gc.set_threshold(young_threshold, t1, t2)


@functools.cache
def _libc_malloc_trim():
    """glibc's ``malloc_trim``, or None (not Linux, or not glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def malloc_trim() -> bool:
    """Hand the C heap's free memory back to the OS (glibc's
    ``malloc_trim(0)``). True if it ran; False where there is no such call
    (not Linux, or not glibc)."""
    fn = _libc_malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


class MemoryTrimmer:
    """Returns freed memory to the OS after many connections closed.

    A server that held many connections keeps the memory they used after
    they close: the C allocator keeps freed pages for reuse (its high-water
    mark). :meth:`observe` is told the open-connection count now and then;
    once it has fallen by ``min_drop`` from the highest count seen since
    the last trim, and at least ``min_interval`` seconds after it, the
    allocator is trimmed (``trim``, by default :func:`malloc_trim`: a few
    milliseconds on the loop). ``kadfast server`` runs one; ``trims``
    counts the trims done."""

    def __init__(self, min_drop: int = 1000, min_interval: float = 60.0, trim: Callable[[], bool] = malloc_trim) -> None:
        self.min_drop = min_drop
        self.min_interval = min_interval
        self._trim = trim
        self.peak = 0
        self.last: float | None = None
        self.trims = 0

    def observe(self, connections: int, now: float) -> bool:
        """Note the connection count at ``now``; True if it trimmed."""
        if connections > self.peak:
            self.peak = connections
        if self.peak - connections < self.min_drop:
            return False
        if self.last is not None and now - self.last < self.min_interval:
            return False
        self.last = now
        self.peak = connections
        if self._trim():
            self.trims += 1
            return True
        return False
