"""kadfast._routing against its plain-Python twin and against brute force."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast import _routing, _routing_py, _xor, _xor_py
from kadfast.errors import RoutingError

IMPLS = [(_routing, _xor), (_routing_py, _xor_py)]


def digest_near(local: bytes, bucket: int, salt: int) -> bytes:
    """A digest whose distance to ``local`` falls in ``bucket``."""
    x = int.from_bytes(local, "big")
    low = int.from_bytes(os.urandom(32), "big") & ((1 << bucket) - 1) if bucket else 0
    low = (low ^ salt) & ((1 << bucket) - 1) if bucket else 0
    return (x ^ (1 << bucket) ^ low).to_bytes(32, "big")


# An operation: (kind, key index, connected, time step)
ops = st.lists(
    st.tuples(
        st.sampled_from(["update", "update", "update", "remove", "apply", "closest", "update_none"]),
        st.integers(min_value=0, max_value=59),
        st.booleans(),
        st.integers(min_value=0, max_value=40),
    ),
    max_size=150,
)


def snapshot(table):
    buckets = {}
    for i in table.nonempty_buckets():
        buckets[i] = [(e.key.digest, e.value, e.connected, e.last_seen) for e in table.bucket(i)]
    pending = {}
    for i in range(256):
        p = table.pending(i)
        if p is not None:
            pending[i] = (p.key.digest, p.value, p.connected, table.pending_deadline(i))
    return len(table), buckets, pending


@given(ops, st.binary(min_size=32, max_size=32), st.integers(min_value=1, max_value=4), st.booleans())
def test_operation_sequences_match_twin(sequence, local, k, few_buckets):
    # Keys crowded into few buckets so that buckets fill and pending entries happen.
    if few_buckets:
        key_digests = [digest_near(local, 250 + i % 3, i * 7919) for i in range(60)]
    else:
        key_digests = [os.urandom(32) for _ in range(59)] + [local]
    tables = [rt.RoutingTable(x.Key.from_digest(local), k=k, pending_timeout=10.0) for rt, x in IMPLS]
    keys = [[x.Key.from_digest(d) for d in key_digests] for _, x in IMPLS]
    now = 0.0
    for kind, idx, connected, step in sequence:
        now += step
        results = []
        for (_rt, x), table, ks in zip(IMPLS, tables, keys):
            out = []
            if kind == "update":
                out.append(table.update(ks[idx], ("v", idx, now), now, connected))
            elif kind == "update_none":
                out.append(table.update(ks[idx], None, now, connected))
            elif kind == "remove":
                e = table.remove(ks[idx])
                out.append(None if e is None else e.key.digest)
            elif kind == "apply":
                out.append(table.apply_pending(now))
            else:
                target = x.Key.from_digest(key_digests[(idx * 31) % len(key_digests)])
                out.append([e.key.digest for e in table.closest(target, idx % 25)])
            out.append([(a.inserted.key.digest, a.evicted and a.evicted.key.digest) for a in table.pop_applied()])
            results.append(out)
        assert results[0] == results[1], kind
        assert snapshot(tables[0]) == snapshot(tables[1])


@pytest.mark.parametrize("rt,x", IMPLS)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=300), st.binary(min_size=32, max_size=32),
       st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5), st.integers(1, 30))
def test_closest_equals_brute_force(rt, x, digests, local, targets, n):
    table = rt.RoutingTable(x.Key.from_digest(local), k=8)
    for d in digests:
        table.update(x.Key.from_digest(d), None, 1.0, True)
    members = [e.key.digest for e in table]
    assert len(members) == len(table) == len(set(members))
    for t in targets:
        got = [e.key.digest for e in table.closest(x.Key.from_digest(t), n)]
        ti = int.from_bytes(t, "big")
        brute = sorted(members, key=lambda d: int.from_bytes(d, "big") ^ ti)[:n]
        assert got == brute


@pytest.mark.parametrize("rt,x", IMPLS)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=200), st.binary(min_size=32, max_size=32))
def test_buckets_are_disjoint_and_cover_key_space(rt, x, digests, local):
    lk = x.Key.from_digest(local)
    table = rt.RoutingTable(lk, k=20)
    for d in digests:
        table.update(x.Key.from_digest(d), None, 0.0, True)
    li = int.from_bytes(local, "big")
    seen = set()
    for i in range(256):
        for e in table.bucket(i):
            dist = int.from_bytes(e.key.digest, "big") ^ li
            # bucket i holds exactly the distances in [2**i, 2**(i+1))
            assert 2**i <= dist < 2 ** (i + 1)
            assert e.key.digest not in seen
            seen.add(e.key.digest)
    # every key other than our own has a bucket: the ranges cover 1..2**256-1
    for d in digests:
        b = x.bucket_index(lk, x.Key.from_digest(d))
        assert (b == -1) == (d == local)
    assert len(seen) == len(table)


@pytest.mark.parametrize("rt,x", IMPLS)
def test_full_bucket_pending_replaces_disconnected_after_timeout(rt, x):
    local = bytes(32)
    table = rt.RoutingTable(x.Key.from_digest(local), k=2, pending_timeout=5.0)
    a, b, c, d = (x.Key.from_digest(digest_near(local, 255, i)) for i in (1, 2, 3, 4))
    assert table.update(a, "a", 0.0, True) == rt.INSERTED
    assert table.update(b, "b", 0.0, True) == rt.INSERTED
    assert table.update(c, "c", 1.0, True) == rt.FULL          # all connected
    assert table.update(a, None, 2.0, False) == rt.UPDATED     # a disconnects
    assert [e.key for e in table.bucket(255)] == [a, b]        # disconnected first
    assert table.update(c, "c", 3.0, True) == rt.PENDING
    assert table.pending(255).value == "c"
    assert table.update(d, "d", 3.0, True) == rt.FULL          # one pending per bucket
    assert table.apply_pending(7.9) == 0                       # not due yet
    assert table.apply_pending(8.0) == 1
    [applied] = table.pop_applied()
    assert applied.inserted.key == c and applied.evicted.key == a
    assert [e.key for e in table.bucket(255)] == [b, c]
    assert table.pop_applied() == []


@pytest.mark.parametrize("rt,x", IMPLS)
def test_pending_dropped_when_head_reconnects(rt, x):
    local = bytes(32)
    table = rt.RoutingTable(x.Key.from_digest(local), k=2, pending_timeout=5.0)
    a, b, c = (x.Key.from_digest(digest_near(local, 200, i)) for i in (1, 2, 3))
    table.update(a, None, 0.0, False)
    table.update(b, None, 0.0, True)
    assert table.update(c, None, 1.0, True) == rt.PENDING
    assert table.update(a, None, 2.0, True) == rt.UPDATED      # a answered
    assert table.apply_pending(6.0) == 1
    assert table.pop_applied() == []                            # pending dropped
    assert table.pending(200) is None
    assert {e.key for e in table.bucket(200)} == {a, b}


@pytest.mark.parametrize("rt,x", IMPLS)
def test_remove_promotes_pending_and_lru_order(rt, x):
    local = bytes(32)
    table = rt.RoutingTable(x.Key.from_digest(local), k=2)
    a, b, c = (x.Key.from_digest(digest_near(local, 10, i)) for i in (1, 2, 3))
    table.update(a, None, 0.0, False)
    table.update(b, None, 1.0, True)
    assert table.update(c, "c", 2.0, True) == rt.PENDING
    assert table.remove(b).key == b
    [applied] = table.pop_applied()
    assert applied.inserted.key == c and applied.evicted is None
    assert len(table) == 2
    assert table.update(a, None, 3.0, True) == rt.UPDATED
    assert [e.key for e in table.bucket(10)] == [c, a]          # a is now most recent
    assert table.get(a).last_seen == 3.0
    assert table.update(x.Key.from_digest(local), None, 0.0) == rt.SELF
    assert table.remove(x.Key.from_digest(local)) is None
    assert x.Key.from_digest(local) not in table


@pytest.mark.parametrize("rt,x", IMPLS)
def test_bad_arguments(rt, x):
    k = x.Key.from_digest(bytes(32))
    with pytest.raises(RoutingError):
        rt.RoutingTable(k, k=0)
    with pytest.raises(RoutingError):
        rt.RoutingTable(k, pending_timeout=-1)
    table = rt.RoutingTable(k)
    with pytest.raises(RoutingError):
        table.bucket(256)
    with pytest.raises(RoutingError):
        table.pending(-1)
    assert table.closest(k) == []


class _Book:
    """Stands in for an address book view: what ``closest_cached`` reads."""

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
def test_closest_cached_matches_twin_and_the_spelled_out_rule(digests, local, target, kinds, limit, k,
                                                               unreachable_idx, skip_idx):
    epoch, now = 7, 100.0
    results = []
    for rt, x in IMPLS:
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
        got = table.closest_cached(x.Key.from_digest(target), limit, k, cache, skip, unreachable or None,
                                   epoch, now, refresh)
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


@pytest.mark.parametrize("rt,x", IMPLS)
def test_closest_cached_survives_refresh_emptying_the_cache(rt, x):
    # the node's refresh may clear the whole cache (it is bounded) while the
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

    got = table.closest_cached(target, 25, 20, cache, None, None, 3, 10.0, refresh)
    assert got[:2] == [f"cached{v}" for v in order[:2]]
    assert got[2:] == [f"fresh{v}" for v in order[2:20]]
    assert calls == order[2:20]
