"""The ``run`` fixture that the network tests share: a coroutine function
run on each event loop kadfast supports (stock asyncio, and uvloop where
installed), failing on a timeout and on exceptions that the loop saw but
nobody handled. Imported as a sibling module (tests/conftest.py puts this
directory on ``sys.path``)."""

from __future__ import annotations

import asyncio

import pytest

from kadfast.loop import new_event_loop, uvloop_available

LOOPS = ["asyncio"] + (["uvloop"] if uvloop_available() else [])


def loop_runner(default_timeout: float):
    """A ``run`` fixture whose runner waits at most ``default_timeout`` seconds
    unless a test gives its own ``timeout``."""

    @pytest.fixture(params=LOOPS)
    def run(request):
        loop = new_event_loop(request.param)
        unhandled: list = []
        loop.set_exception_handler(lambda l, ctx: unhandled.append(ctx))

        def runner(fn, timeout=default_timeout):
            return loop.run_until_complete(asyncio.wait_for(fn(), timeout))

        yield runner
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        assert not [u for u in unhandled if "exception" in u], unhandled

    return run
