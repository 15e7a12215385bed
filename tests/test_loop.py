"""Event-loop selection, the server GC settings and the memory trimmer."""

from __future__ import annotations

import gc
import sys

import pytest

from kadfast.loop import MemoryTrimmer, malloc_trim, new_event_loop, tune_gc_for_server, uvloop_available


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


def test_memory_trimmer_trims_after_a_large_drop_at_most_once_a_minute():
    calls = []
    t = MemoryTrimmer(min_drop=1000, min_interval=60.0, trim=lambda: calls.append(1) or True)
    assert not t.observe(500, 0.0)
    assert not t.observe(3000, 1.0)          # the peak
    assert not t.observe(2001, 2.0)          # fell by 999
    assert t.observe(2000, 3.0) and calls == [1] and t.trims == 1
    # the count starts over from 2000; a new drop of 1000 within a minute waits
    assert not t.observe(1000, 30.0)
    assert t.observe(900, 63.0) and t.trims == 2
    assert not t.observe(2500, 64.0)         # a new peak
    assert not t.observe(1000, 65.0)         # fell by 1500, but too soon after the last trim
    assert t.observe(1000, 124.0) and t.trims == 3
    assert not t.observe(1000, 500.0)        # nothing fell since
    # without an allocator call nothing is counted
    u = MemoryTrimmer(trim=lambda: False)
    u.observe(5000, 0.0)
    assert not u.observe(0, 1.0) and u.trims == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_malloc_trim_hands_freed_memory_back():
    def rss_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    assert malloc_trim()
    blocks = [bytearray(100_000) for _ in range(2000)]   # ~200 MB from the C heap, touched
    keep = [bytearray(10) for _ in range(2000)]          # small survivors in between
    high = rss_kib()
    del blocks
    gc.collect()
    malloc_trim()
    assert rss_kib() < high - 100_000, (high, rss_kib())
    del keep
