"""MemoryStore: libp2p record and provider semantics, limits and expiry."""

import pytest

from kadfast import Ed25519KeyPair, Key, MemoryStore, ProviderRecord, Record
from kadfast.errors import RecordTooLarge, StoreError, StoreFull
from kadfast.store import RecordStore, StoreConfig


def peers(n):
    return [Ed25519KeyPair.generate().peer_id for _ in range(n)]


def test_is_a_record_store():
    assert isinstance(MemoryStore(peers(1)[0]), RecordStore)


def test_one_record_per_key_last_writer_wins():
    a, b = peers(2)
    s = MemoryStore(a)
    s.put(Record(b"/ns/k", b"v1", publisher=a, expires=100.0), now=0.0)
    s.put(Record(b"/ns/k", b"v2", publisher=b, expires=200.0), now=1.0)
    rec = s.get(b"/ns/k", now=2.0)
    assert rec.value == b"v2" and rec.publisher == b and rec.expires == 200.0
    assert len(s) == 1
    assert s.remove(b"/ns/k").value == b"v2"
    assert s.get(b"/ns/k", 2.0) is None


def test_record_expiry_and_sweep():
    s = MemoryStore(peers(1)[0])
    s.put(Record(b"a", b"1", expires=10.0), 0.0)
    s.put(Record(b"b", b"2", expires=20.0), 0.0)
    s.put(Record(b"c", b"3"), 0.0)
    assert s.get(b"a", 9.9) is not None
    assert s.get(b"a", 10.0) is None
    assert s.sweep(20.0) == (1, 0)
    assert [r.key for r in s.records()] == [b"c"]


def test_record_limits():
    s = MemoryStore(peers(1)[0], StoreConfig(max_records=2, max_value_bytes=4))
    with pytest.raises(RecordTooLarge):
        s.put(Record(b"k", b"12345"), 0.0)
    s.put(Record(b"k1", b"1"), 0.0)
    s.put(Record(b"k2", b"1"), 0.0)
    with pytest.raises(StoreFull):
        s.put(Record(b"k3", b"1"), 0.0)
    s.put(Record(b"k2", b"22"), 0.0)  # overwriting is not growth
    with pytest.raises(StoreError):
        s.put(Record("text", b"1"), 0.0)
    assert issubclass(StoreFull, StoreError) and issubclass(RecordTooLarge, StoreError)


def test_default_limits_match_rust_libp2p():
    cfg = StoreConfig()
    assert (cfg.max_records, cfg.max_value_bytes, cfg.max_providers_per_key, cfg.max_provided_keys) == (1024, 65 * 1024, 20, 1024)


def test_providers_accumulate_distinct_and_refresh():
    me, a, b = peers(3)
    s = MemoryStore(me)
    assert s.add_provider(ProviderRecord(b"key", a, expires=10.0), 0.0)
    assert s.add_provider(ProviderRecord(b"key", b, expires=10.0), 0.0)
    assert s.add_provider(ProviderRecord(b"key", a, expires=50.0), 1.0)  # refresh
    got = s.providers(b"key", 11.0)
    assert [p.provider for p in got] == [a]
    assert got[0].expires == 50.0
    assert s.providers(b"other", 0.0) == []


def test_full_key_keeps_the_closest_providers():
    me = peers(1)[0]
    s = MemoryStore(me, StoreConfig(max_providers_per_key=3))
    key = b"some key"
    target = Key(key)
    candidates = peers(12)
    for p in candidates:
        s.add_provider(ProviderRecord(key, p), 0.0)
    kept = [p.provider for p in s.providers(key, 0.0)]
    expected = sorted(candidates, key=lambda p: target.distance(Key(p.to_bytes())))[:3]
    assert kept == expected
    farther = sorted(candidates, key=lambda p: target.distance(Key(p.to_bytes())))[-1]
    assert s.add_provider(ProviderRecord(key, farther), 0.0) is False


def test_local_provided_keys_are_tracked_and_bounded():
    me, other = peers(2)
    s = MemoryStore(me, StoreConfig(max_provided_keys=2))
    s.add_provider(ProviderRecord(b"k1", me), 0.0)
    s.add_provider(ProviderRecord(b"k2", me, expires=5.0), 0.0)
    s.add_provider(ProviderRecord(b"k2", other), 0.0)
    with pytest.raises(StoreFull):
        s.add_provider(ProviderRecord(b"k3", me), 0.0)
    assert sorted(r.key for r in s.provided()) == [b"k1", b"k2"]
    assert s.sweep(5.0) == (0, 1)
    assert [r.key for r in s.provided()] == [b"k1"]
    assert [p.provider for p in s.providers(b"k2", 6.0)] == [other]
    assert s.remove_provider(b"k1", me) is True
    assert s.remove_provider(b"k1", me) is False
    assert list(s.provided()) == []


def test_provider_key_limit():
    me = peers(1)[0]
    s = MemoryStore(me, StoreConfig(max_records=2))
    p = peers(1)[0]
    s.add_provider(ProviderRecord(b"a", p), 0.0)
    s.add_provider(ProviderRecord(b"b", p), 0.0)
    with pytest.raises(StoreFull):
        s.add_provider(ProviderRecord(b"c", p), 0.0)
