"""Event-loop selection: uvloop when it is installed (the default), the stock
asyncio loop otherwise or on request."""

from __future__ import annotations

import asyncio
import gc
from typing import Awaitable, Callable, TypeVar

__all__ = ["LOOP_KINDS", "new_event_loop", "run", "tune_gc_for_server", "uvloop_available"]

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


def run(main: Callable[[], Awaitable[T]], kind: str = "auto") -> T:
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
    CPU in full collections (see README, Benchmarks). Process-wide;
    ``young_threshold`` 0 leaves the settings alone."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, t1, t2 = gc.get_threshold()
    gc.set_threshold(young_threshold, t1, t2)
