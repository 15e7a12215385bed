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
