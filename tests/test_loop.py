"""Event-loop selection and the server GC settings."""

from __future__ import annotations

import gc

import pytest

from kadfast.loop import new_event_loop, tune_gc_for_server, uvloop_available


def test_loop_kinds():
    loop = new_event_loop("asyncio")
    loop.close()
    if uvloop_available():
        import uvloop

        loop = new_event_loop("auto")
        assert isinstance(loop, uvloop.Loop)
        loop.close()
    with pytest.raises(ValueError):
        new_event_loop("trio")


def test_tune_gc_for_server_sets_and_freezes():
    old = gc.get_threshold()
    try:
        tune_gc_for_server(0)  # leaves everything alone
        assert gc.get_threshold() == old and gc.get_freeze_count() == 0
        tune_gc_for_server(12_345)
        assert gc.get_threshold() == (12_345, old[1], old[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)
