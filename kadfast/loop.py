"""Event-loop selection: uvloop when it is installed (the default), the stock
asyncio loop otherwise or on request."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

__all__ = ["LOOP_KINDS", "new_event_loop", "run", "uvloop_available"]

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
