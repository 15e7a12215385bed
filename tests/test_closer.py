"""kadfast._closer (the kad server's closerPeers cache walk) against its
plain-Python twin and against the rule spelled out over
``RoutingTable.closest``."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast import _closer, _closer_py, _routing, _routing_py, _xor, _xor_py

IMPLS = [(_routing, _xor, _closer), (_routing_py, _xor_py, _closer_py)]


class _Book:
    """Stands in for an address book view: what ``cached_fields`` reads."""

    __slots__ = ("version", "min_expires")

    def __init__(self, version: int, min_expires: float) -> None:
        self.version = version
        self.min_expires = min_expires


# per key: how its cache entry looks (0 none, 1 valid, 2 stale epoch, 3 stale
# version, 4 expired, 5 not a 5-tuple) and whether refresh finds it a value
cache_kinds = st.lists(st.tuples(st.integers(min_value=0, max_value=5), st.booleans()), min_size=80, max_size=80)


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=80, unique=True),
       st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32), cache_kinds,
       st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=25),
       st.sets(st.integers(min_value=0, max_value=79), max_size=10), st.integers(min_value=-1, max_value=79))
def test_cached_fields_matches_twin_and_the_spelled_out_rule(digests, local, target, kinds, limit, k,
                                                               unreachable_idx, skip_idx):
    epoch, now = 7, 100.0
    results = []
    for rt, x, c in IMPLS:
        table = rt.RoutingTable(x.Key.from_digest(local), k=20)
        keys = [x.Key.from_digest(d) for d in digests]
        for i, key in enumerate(keys):
            table.update(key, i, 0.0)
        cache = {}
        for i, key in enumerate(keys):
            kind = kinds[i][0]
            if kind == 1:
                cache[key] = (_Book(3, 200.0), 3, 0, epoch, f"cached{i}")
            elif kind == 2:
                cache[key] = (_Book(3, 200.0), 3, 0, epoch - 1, f"old-epoch{i}")
            elif kind == 3:
                cache[key] = (_Book(4, 200.0), 3, 0, epoch, f"old-version{i}")
            elif kind == 4:
                cache[key] = (_Book(3, now), 3, 0, epoch, f"expired{i}")
            elif kind == 5:
                cache[key] = (f"not a 5-tuple{i}",)
        calls = []

        def refresh(key, value, hit, calls=calls, cache=cache):
            assert hit is cache.get(key)
            calls.append(value)
            return f"fresh{value}" if kinds[value][1] else None

        skip = keys[skip_idx] if 0 <= skip_idx < len(keys) else None
        unreachable = {keys[i] for i in unreachable_idx if i < len(keys)}
        got = c.cached_fields(table.closest(x.Key.from_digest(target), limit), k, cache, skip,
                              unreachable or None, epoch, now, refresh)
        # the rule, spelled out over closest()
        want, want_calls = [], []
        if k > 0:
            for e in table.closest(x.Key.from_digest(target), limit):
                if e.key == skip or e.key in unreachable:
                    continue
                kind = kinds[e.value][0]
                if kind == 1:
                    want.append(f"cached{e.value}")
                else:
                    want_calls.append(e.value)
                    if not kinds[e.value][1]:
                        continue
                    want.append(f"fresh{e.value}")
                if len(want) >= k:
                    break
        assert got == want
        assert calls == want_calls
        results.append((got, calls))
    assert results[0] == results[1]


@pytest.mark.parametrize("rt,x,c", IMPLS)
def test_cached_fields_survives_refresh_emptying_the_cache(rt, x, c):
    # the server's refresh may clear the whole cache (it is bounded) while the
    # walk holds the entry it just looked up
    local = x.Key.from_digest(bytes(32))
    table = rt.RoutingTable(local, k=20)
    keys = [x.Key.from_digest(bytes([i + 1]) * 32) for i in range(30)]
    for i, key in enumerate(keys):
        table.update(key, i, 0.0)
    target = x.Key.from_digest(b"\x55" * 32)
    order = [e.value for e in table.closest(target, 25)]
    cache = {key: (_Book(1, 50.0), 1, 0, 3, f"cached{i}") for i, key in enumerate(keys)}
    del cache[keys[order[2]]]  # the third closest misses
    calls = []

    def refresh(key, value, hit):
        calls.append(value)
        cache.clear()
        cache[key] = (_Book(2, 50.0), 2, 0, 3, f"fresh{value}")
        return f"fresh{value}"

    got = c.cached_fields(table.closest(target, 25), 20, cache, None, None, 3, 10.0, refresh)
    assert got[:2] == [f"cached{v}" for v in order[:2]]
    assert got[2:] == [f"fresh{v}" for v in order[2:20]]
    assert calls == order[2:20]
