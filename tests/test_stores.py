"""RecordStore conformance, run against MemoryStore and SqliteStore alike, and
SqliteStore's own promises: persistence across reopen (with wall-clock expiry),
durability of acknowledged puts under SIGKILL, clear errors on a bad file, and
the ``open_store`` spec parser."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from kadfast import Ed25519KeyPair, Key, MemoryStore, Multiaddr, ProviderRecord, Record
from kadfast.errors import RecordTooLarge, StoreError, StoreFull
from kadfast.sqlite_store import SqliteStore, open_store
from kadfast.store import RecordStore, StoreConfig


def peers(n):
    return [Ed25519KeyPair.generate().peer_id for _ in range(n)]


@pytest.fixture(params=["memory", "sqlite", "sqlite-group"])
def make_store(request, tmp_path):
    """make_store(local_peer_id, config=None) -> a fresh store of the kind under test
    (sqlite-group: group commit, never committed, so the store reads its own
    pending changes)."""
    opened = []

    def make(local, config=None):
        if request.param == "memory":
            return MemoryStore(local, config)
        s = SqliteStore(tmp_path / f"store{len(opened)}.db", local, config,
                        group_commit=request.param == "sqlite-group")
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


# -- conformance: the cases of tests/test_store.py, for every store ---------------


def test_is_a_record_store(make_store):
    assert isinstance(make_store(peers(1)[0]), RecordStore)


def test_one_record_per_key_last_writer_wins(make_store):
    a, b = peers(2)
    s = make_store(a)
    s.put(Record(b"/ns/k", b"v1", publisher=a, expires=100.0), now=0.0)
    s.put(Record(b"/ns/k", b"v2", publisher=b, expires=200.0), now=1.0)
    rec = s.get(b"/ns/k", now=2.0)
    assert rec.value == b"v2" and rec.publisher == b and rec.expires == 200.0
    assert len(s) == 1
    assert s.remove(b"/ns/k").value == b"v2"
    assert s.get(b"/ns/k", 2.0) is None
    assert s.remove(b"/ns/k") is None


def test_record_without_publisher_or_expiry(make_store):
    s = make_store(peers(1)[0])
    s.put(Record(b"k", b""), 0.0)
    rec = s.get(b"k", 1e12)
    assert rec == Record(b"k", b"", None, None)


def test_record_expiry_and_sweep(make_store):
    s = make_store(peers(1)[0])
    s.put(Record(b"a", b"1", expires=10.0), 0.0)
    s.put(Record(b"b", b"2", expires=20.0), 0.0)
    s.put(Record(b"c", b"3"), 0.0)
    assert s.get(b"a", 9.9) is not None
    assert s.get(b"a", 10.0) is None
    assert s.sweep(20.0) == (1, 0)
    assert [r.key for r in s.records()] == [b"c"]


def test_sweep_keys_names_the_records_it_dropped_without_listing_the_store(make_store):
    a = peers(1)[0]
    s = make_store(a)
    for i in range(50):
        s.put(Record(b"/k%02d" % i, b"v", expires=10.0 if i % 5 == 0 else 100.0), 0.0)
    s.put(Record(b"/forever", b"v"), 0.0)
    s.add_provider(ProviderRecord(b"/p", a, (), expires=10.0), 0.0)

    def no_walk():
        raise AssertionError("sweep_keys listed every record")

    # the node sweeps every minute: listing 100,000 records from sqlite held its loop 0.3 s
    s.records = no_walk
    keys, providers = s.sweep_keys(10.0)
    assert sorted(keys) == [b"/k%02d" % i for i in range(0, 50, 5)] and providers == 1
    assert s.sweep_keys(10.0) == ([], 0)
    assert len(s) == 41 and s.get(b"/k00", 10.0) is None and s.get(b"/k01", 10.0) is not None


def test_record_keys_and_published_by(make_store):
    a, b = peers(2)
    s = make_store(a)
    for i in range(6):
        s.put(Record(b"/k%d" % i, b"v", publisher=a if i % 2 else b), 0.0)
    s.put(Record(b"/anon", b"v"), 0.0)
    assert s.record_keys() == [b"/k%d" % i for i in range(6)] + [b"/anon"]
    mine = s.published_by(a)
    assert [r.key for r in mine] == [b"/k1", b"/k3", b"/k5"] and all(r.publisher == a for r in mine)
    assert [r.key for r in s.published_by(b)] == [b"/k0", b"/k2", b"/k4"]
    assert s.published_by(peers(1)[0]) == []


def test_sweep_keys_default_for_other_stores():
    """A RecordStore that only has sweep(): the default sweep_keys finds the
    expired keys by walking its records, then sweeps."""
    class Plain(MemoryStore):
        sweep_keys = RecordStore.sweep_keys

        def sweep(self, now):
            return MemoryStore.sweep_keys(self, now)[0].__len__(), 0

    s = Plain(peers(1)[0])
    s.put(Record(b"old", b"v", expires=1.0), 0.0)
    s.put(Record(b"new", b"v", expires=9.0), 0.0)
    assert s.sweep_keys(5.0) == ([b"old"], 0) and [r.key for r in s.records()] == [b"new"]


def test_records_keep_insertion_order_across_overwrite(make_store):
    s = make_store(peers(1)[0])
    for k in (b"x", b"y", b"z"):
        s.put(Record(k, b"1"), 0.0)
    s.put(Record(b"x", b"2"), 0.0)
    assert [(r.key, r.value) for r in s.records()] == [(b"x", b"2"), (b"y", b"1"), (b"z", b"1")]


def test_record_limits(make_store):
    s = make_store(peers(1)[0], StoreConfig(max_records=2, max_value_bytes=4))
    with pytest.raises(RecordTooLarge):
        s.put(Record(b"k", b"12345"), 0.0)
    s.put(Record(b"k1", b"1"), 0.0)
    s.put(Record(b"k2", b"1"), 0.0)
    with pytest.raises(StoreFull):
        s.put(Record(b"k3", b"1"), 0.0)
    s.put(Record(b"k2", b"22"), 0.0)  # overwriting is not growth
    with pytest.raises(StoreError):
        s.put(Record("text", b"1"), 0.0)
    with pytest.raises(StoreError):
        s.put(Record(b"k2", "text"), 0.0)
    assert len(s) == 2 and s.get(b"k2", 0.0).value == b"22"
    assert issubclass(StoreFull, StoreError) and issubclass(RecordTooLarge, StoreError)


def test_default_limits_match_rust_libp2p():
    """rust's MemoryStoreConfig, but for the value limit: what fits in a
    16 KiB GET_VALUE answer (rust's store allows 65 KiB that its own message
    limit then cannot carry)."""
    from kadfast.kad.pb import MAX_VALUE_SIZE

    cfg = StoreConfig()
    assert (cfg.max_records, cfg.max_value_bytes, cfg.max_providers_per_key, cfg.max_provided_keys) == (1024, MAX_VALUE_SIZE, 20, 1024)
    assert MAX_VALUE_SIZE == 12 * 1024


def test_providers_accumulate_distinct_and_refresh(make_store):
    me, a, b = peers(3)
    s = make_store(me)
    assert s.add_provider(ProviderRecord(b"key", a, expires=10.0), 0.0)
    assert s.add_provider(ProviderRecord(b"key", b, expires=10.0), 0.0)
    assert s.add_provider(ProviderRecord(b"key", a, expires=50.0), 1.0)  # refresh
    got = s.providers(b"key", 11.0)
    assert [p.provider for p in got] == [a]
    assert got[0].expires == 50.0
    assert s.providers(b"other", 0.0) == []


def test_provider_addrs_round_trip_and_refresh(make_store):
    me, a = peers(2)
    s = make_store(me)
    addrs = (Multiaddr("/ip4/10.0.0.1/tcp/4001"), Multiaddr("/ip6/::1/udp/4001/quic-v1"))
    s.add_provider(ProviderRecord(b"key", a, addrs), 0.0)
    assert tuple(s.providers(b"key", 0.0)[0].addrs) == addrs
    s.add_provider(ProviderRecord(b"key", a, addrs[:1]), 0.0)
    assert tuple(s.providers(b"key", 0.0)[0].addrs) == addrs[:1]


def test_providers_are_ordered_closest_first(make_store):
    me = peers(1)[0]
    s = make_store(me)
    target = Key(b"k")
    ps = peers(6)
    for p in ps:
        s.add_provider(ProviderRecord(b"k", p), 0.0)
    got = [p.provider for p in s.providers(b"k", 0.0)]
    assert got == sorted(ps, key=lambda p: target.distance(Key(p.to_bytes())))


def test_full_key_keeps_the_providers_that_came_first(make_store):
    """A key full of live providers refuses newcomers, however close to the
    key (identities ground near it would otherwise evict the honest ones,
    issue of Sybils; rust-libp2p ignores newcomers too). Held providers are
    refreshed, an expired one makes room, and answers come closest first."""
    me = peers(1)[0]
    s = make_store(me, StoreConfig(max_providers_per_key=3))
    key = b"some key"
    target = Key(key)
    first, later = peers(3), peers(9)
    for p in first[:2]:
        assert s.add_provider(ProviderRecord(key, p), 0.0)
    assert s.add_provider(ProviderRecord(key, first[2], expires=5.0), 0.0)
    for p in later:
        assert s.add_provider(ProviderRecord(key, p), 0.0) is False
    kept = [p.provider for p in s.providers(key, 0.0)]
    assert kept == sorted(first, key=lambda p: target.distance(Key(p.to_bytes())))
    assert s.add_provider(ProviderRecord(key, first[0], expires=99.0), 0.0)  # a refresh
    # once first[2] expired, the next newcomer takes its place
    assert s.add_provider(ProviderRecord(key, later[0]), 6.0)
    assert {p.provider for p in s.providers(key, 6.0)} == {first[0], first[1], later[0]}


def test_the_local_provider_always_gets_in_and_is_never_displaced(make_store):
    key = b"key"
    target = Key(key)
    candidates = sorted(peers(8), key=lambda p: target.distance(Key(p.to_bytes())))
    me = candidates[-1]  # the farthest of all
    s = make_store(me, StoreConfig(max_providers_per_key=2))
    assert s.add_provider(ProviderRecord(key, me), 0.0)
    assert [r.key for r in s.provided()] == [key]
    assert s.add_provider(ProviderRecord(key, candidates[0]), 0.0)
    assert s.add_provider(ProviderRecord(key, candidates[1]), 0.0) is False
    assert [p.provider for p in s.providers(key, 0.0)] == [candidates[0], me]
    assert [r.key for r in s.provided()] == [key]
    # a full key of others: our own record replaces the farthest of them
    other = b"other"
    t2 = Key(other)
    theirs = sorted(candidates[:3], key=lambda p: t2.distance(Key(p.to_bytes())))
    for p in theirs[:2]:
        assert s.add_provider(ProviderRecord(other, p), 0.0)
    assert s.add_provider(ProviderRecord(other, me), 0.0)
    assert {p.provider for p in s.providers(other, 0.0)} == {theirs[0], me}
    assert sorted(r.key for r in s.provided()) == [key, other]


def test_local_provided_keys_are_tracked_and_bounded(make_store):
    me, other = peers(2)
    s = make_store(me, StoreConfig(max_provided_keys=2))
    s.add_provider(ProviderRecord(b"k1", me), 0.0)
    s.add_provider(ProviderRecord(b"k2", me, expires=5.0), 0.0)
    s.add_provider(ProviderRecord(b"k2", other), 0.0)
    with pytest.raises(StoreFull):
        s.add_provider(ProviderRecord(b"k3", me), 0.0)
    assert s.add_provider(ProviderRecord(b"k1", me, expires=99.0), 0.0)  # refreshing is not growth
    assert sorted(r.key for r in s.provided()) == [b"k1", b"k2"]
    assert s.sweep(5.0) == (0, 1)
    assert [r.key for r in s.provided()] == [b"k1"]
    assert [p.provider for p in s.providers(b"k2", 6.0)] == [other]
    assert s.remove_provider(b"k1", me) is True
    assert s.remove_provider(b"k1", me) is False
    assert list(s.provided()) == []


def test_expired_providers_are_dropped_on_read(make_store):
    me, a, b = peers(3)
    s = make_store(me)
    s.add_provider(ProviderRecord(b"k", a, expires=5.0), 0.0)
    s.add_provider(ProviderRecord(b"k", b, expires=50.0), 0.0)
    assert [p.provider for p in s.providers(b"k", 5.0)] == [b]
    assert s.sweep(10.0) == (0, 0)  # already gone
    assert s.sweep(50.0) == (0, 1)
    assert s.provider_keys() == 0


def test_provider_key_limit(make_store):
    me = peers(1)[0]
    s = make_store(me, StoreConfig(max_records=2))
    p, q = peers(2)
    s.add_provider(ProviderRecord(b"a", p), 0.0)
    s.add_provider(ProviderRecord(b"b", p), 0.0)
    with pytest.raises(StoreFull):
        s.add_provider(ProviderRecord(b"c", p), 0.0)
    assert s.add_provider(ProviderRecord(b"a", q), 0.0)  # a key already held is not growth
    assert s.provider_keys() == 2


# -- SqliteStore: persistence -------------------------------------------------------


def test_reopen_keeps_records_providers_and_expiry(tmp_path):
    me, a, b = peers(3)
    path = tmp_path / "s.db"
    addrs = (Multiaddr("/ip4/127.0.0.1/tcp/4001"),)
    now = time.monotonic()
    with SqliteStore(path, me) as s:
        s.put(Record(b"r1", b"v1", publisher=a, expires=now + 3600), now)
        s.put(Record(b"r2", b"v2"), now)
        s.add_provider(ProviderRecord(b"k", a, addrs, now + 600), now)
        s.add_provider(ProviderRecord(b"k", me, (), now + 600), now)
        s.add_provider(ProviderRecord(b"k", b, (), now + 1), now)
    assert s.closed
    with pytest.raises(StoreError, match="closed"):
        s.get(b"r1", now)
    with SqliteStore(path, me) as s:
        now2 = time.monotonic()
        r1 = s.get(b"r1", now2)
        assert (r1.value, r1.publisher) == (b"v1", a)
        assert r1.expires == pytest.approx(now + 3600, abs=0.05)
        assert s.get(b"r2", now2) == Record(b"r2", b"v2", None, None)
        got = {p.provider: p for p in s.providers(b"k", now2)}
        assert set(got) == {a, me, b}
        assert tuple(got[a].addrs) == addrs and got[a].expires == pytest.approx(now + 600, abs=0.05)
        assert [r.key for r in s.provided()] == [b"k"]
        assert len(s) == 2
        assert s.sweep(now + 2) == (0, 1)


def test_expiry_is_wall_clock_across_a_restart(tmp_path):
    """The monotonic origin changes between runs; expiry stays wall-clock."""
    me = peers(1)[0]
    path = tmp_path / "s.db"
    # first run: monotonic 0 is wall 1_000_000; a record for 100 s, put at monotonic 50
    with SqliteStore(path, me, clock_offset=1_000_000.0) as s:
        s.put(Record(b"k", b"v", expires=150.0), 50.0)
        s.add_provider(ProviderRecord(b"p", me, (), 150.0), 50.0)
    # after a reboot, monotonic 0 is wall 1_000_120: the record has 30 s left
    with SqliteStore(path, me, clock_offset=1_000_120.0) as s:
        assert s.get(b"k", 0.0).expires == pytest.approx(30.0)
        assert s.providers(b"p", 0.0)[0].expires == pytest.approx(30.0)
        assert s.get(b"k", 29.9) is not None
        assert s.sweep(30.0) == (1, 1)


def test_acknowledged_puts_survive_sigkill(tmp_path):
    me = peers(1)[0]
    path = tmp_path / "s.db"
    child = textwrap.dedent(
        f"""
        import sys, time
        from kadfast import PeerId, Record
        from kadfast.sqlite_store import SqliteStore
        s = SqliteStore({str(path)!r}, PeerId.from_bytes({me.to_bytes()!r}))
        i = 0
        while True:
            s.put(Record(b"key-%d" % i, b"value-%d" % i * 50), time.monotonic())
            print("acked", i, flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            assert line.startswith("acked "), line
            acked.append(int(line.split()[1]))
            if len(acked) >= 200:
                break
        # kill mid-stream: the child is still putting
        proc.send_signal(signal.SIGKILL)
        # every line it managed to print before dying is an acknowledged put
        rest = proc.stdout.read()
        acked += [int(ln.split()[1]) for ln in rest.splitlines() if ln.startswith("acked ")]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 200
    with SqliteStore(path, me) as s:
        now = time.monotonic()
        missing = [i for i in acked if s.get(b"key-%d" % i, now) is None]
        assert missing == []
        assert s.get(b"key-%d" % acked[-1], now).value == b"value-%d" % acked[-1] * 50
        assert len(s) >= len(acked)


def test_an_empty_store_is_truthy(tmp_path):
    # KadNode does ``store or MemoryStore(...)``; an empty SqliteStore must survive that
    with SqliteStore(tmp_path / "s.db", peers(1)[0]) as s:
        assert len(s) == 0 and bool(s) is True


@pytest.mark.parametrize("group_commit", [False, True])
def test_put_many_stores_in_one_transaction_within_the_limits(tmp_path, group_commit):
    pub = peers(1)[0]
    with SqliteStore(tmp_path / "s.db", pub, config=StoreConfig(max_records=5, max_value_bytes=8),
                     group_commit=group_commit) as s:
        assert s.put_many(Record(b"/k%d" % i, b"v", publisher=pub, expires=100.0) for i in range(3)) == 3
        s.put(Record(b"/k0", b"w"), 1.0)
        # over the limit: nothing of them is stored
        with pytest.raises(StoreFull):
            s.put_many(Record(b"/n%d" % i, b"v") for i in range(3))
        # a value over the limit is refused before anything is written
        with pytest.raises(RecordTooLarge):
            s.put_many([Record(b"/n0", b"v"), Record(b"/n1", b"x" * 9)])
        # a key already held is updated, not counted again
        assert s.put_many([Record(b"/k1", b"new"), Record(b"/n0", b"v"), Record(b"/n1", b"v")]) == 3
        if group_commit:
            s.commit()
        assert sorted(s.record_keys()) == [b"/k0", b"/k1", b"/k2", b"/n0", b"/n1"]
        assert s.get(b"/k1", 1.0).value == b"new" and s.get(b"/k0", 1.0).value == b"w"
        assert s.get(b"/k2", 1.0).publisher == pub and s.get(b"/k2", 1.0).expires == pytest.approx(100.0)


def test_uses_wal_and_full_sync(tmp_path):
    with SqliteStore(tmp_path / "s.db", peers(1)[0]) as s:
        assert s.journal_mode == "wal"
        assert s.synchronous == 2  # FULL


def test_garbage_file_is_a_clear_store_error(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(StoreError, match="not a usable kadfast SQLite store"):
        SqliteStore(path, peers(1)[0])
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database\n" * 100)
    with pytest.raises(StoreError):
        SqliteStore(text, peers(1)[0])


def test_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a kadfast store"):
        SqliteStore(path, peers(1)[0])


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.db"
    SqliteStore(path, peers(1)[0]).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(path, peers(1)[0])


def test_network_and_origins_are_kept(make_store):
    """Each record and provider record keeps the network it was stored from
    (what the node's quotas are rebuilt from); ``record_origins`` and
    ``provider_origins`` list the live ones."""
    me, a, b = peers(3)
    s = make_store(me)
    s.put(Record(b"/n/1", b"v", publisher=a, expires=100.0, network="1.2.3.0/24"), now=0.0)
    s.put(Record(b"/n/2", b"v", publisher=b, expires=10.0), now=0.0)
    s.put(Record(b"/n/3", b"v", publisher=me), now=0.0)
    assert s.get(b"/n/1", now=1.0).network == "1.2.3.0/24"
    assert sorted(s.record_origins(now=20.0)) == sorted([(b"/n/1", a, "1.2.3.0/24"), (b"/n/3", me, None)])
    s.add_provider(ProviderRecord(b"p", a, (), 100.0, "5.6.7.0/24"), now=0.0)
    s.add_provider(ProviderRecord(b"p", b, (), 10.0, "5.6.8.0/24"), now=0.0)
    s.add_provider(ProviderRecord(b"q", me, (), 100.0), now=0.0)
    assert [p.network for p in s.providers(b"p", now=1.0)] in (["5.6.7.0/24", "5.6.8.0/24"], ["5.6.8.0/24", "5.6.7.0/24"])
    assert list(s.provider_origins(now=20.0)) == [(b"p", "5.6.7.0/24")]


def test_schema_version_1_is_migrated(tmp_path):
    """A store written by the previous schema (no network columns) opens:
    its records come back with no network, and new ones keep theirs."""
    path = tmp_path / "v1.db"
    me, a = peers(2)
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE records (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL, publisher BLOB, expires REAL);
        CREATE INDEX records_expires ON records(expires) WHERE expires IS NOT NULL;
        CREATE TABLE providers (key BLOB NOT NULL, provider BLOB NOT NULL, distance BLOB NOT NULL,
                                addrs BLOB NOT NULL, expires REAL, PRIMARY KEY (key, provider));
        CREATE INDEX providers_by_distance ON providers(key, distance);
        CREATE INDEX providers_expires ON providers(expires) WHERE expires IS NOT NULL;
        CREATE INDEX providers_by_provider ON providers(provider);
        PRAGMA application_id=1262568518;
        PRAGMA user_version=1;
    """)
    conn.execute("INSERT INTO records VALUES (?, ?, ?, NULL)", (b"/old", b"v", a.to_bytes()))
    conn.commit()
    conn.close()
    with SqliteStore(path, me) as s:
        assert s.get(b"/old", now=0.0) == Record(b"/old", b"v", publisher=a)
        assert list(s.record_origins(now=0.0)) == [(b"/old", a, None)]
        s.put(Record(b"/new", b"w", publisher=a, network="1.2.3.0/24"), now=0.0)
    with SqliteStore(path, me) as s:
        assert s.get(b"/new", now=0.0).network == "1.2.3.0/24"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_unopenable_path_is_a_store_error(tmp_path):
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "no" / "such" / "dir" / "s.db", peers(1)[0])


# -- open_store -------------------------------------------------------------------


def test_open_store_specs(tmp_path):
    me = peers(1)[0]
    cfg = StoreConfig(max_records=7)
    m = open_store("memory", me, cfg)
    assert isinstance(m, MemoryStore) and m.config is cfg
    s = open_store(f"sqlite:{tmp_path / 'x.db'}", me, cfg)
    try:
        assert isinstance(s, SqliteStore) and s.config is cfg and s.local_peer_id == me
    finally:
        s.close()
    assert (tmp_path / "x.db").exists()


@pytest.mark.parametrize("spec", ["", "Memory", "sqlite:", "sqlite", "redis://x", "memory:x"])
def test_open_store_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match="store spec"):
        open_store(spec, peers(1)[0])


# -- group commit ------------------------------------------------------------------


def _rows_seen_by_another_connection(path) -> int:
    other = sqlite3.connect(path)
    try:
        return other.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        other.close()


def test_group_commit_holds_changes_until_commit(tmp_path):
    me, other = peers(2)
    path = tmp_path / "g.db"
    calls = []
    s = SqliteStore(path, me, group_commit=True)
    s.on_dirty = lambda: calls.append(1)
    assert not s.dirty
    s.commit()                                     # nothing pending: a no-op
    s.put(Record(b"/a", b"1", publisher=other), 0.0)
    s.put(Record(b"/b", b"2", publisher=other), 0.0)
    assert s.dirty and calls == [1]                # once per transaction
    assert s.get(b"/a", 0.0).value == b"1"         # its own pending change
    assert _rows_seen_by_another_connection(path) == 0
    s.commit()
    assert not s.dirty and _rows_seen_by_another_connection(path) == 2
    s.remove(b"/a")
    assert calls == [1, 1]                         # a new transaction
    s.close()                                      # commits what is pending
    assert _rows_seen_by_another_connection(path) == 1


def test_group_commit_a_failed_call_undoes_only_itself(tmp_path):
    me, other = peers(2)
    path = tmp_path / "g.db"
    with SqliteStore(path, me, StoreConfig(max_records=2), group_commit=True) as s:
        s.put(Record(b"/a", b"1", publisher=other), 0.0)
        s.put(Record(b"/b", b"2", publisher=other), 0.0)
        with pytest.raises(StoreFull):
            s.put(Record(b"/c", b"3", publisher=other), 0.0)
        with pytest.raises(RecordTooLarge):
            s.put(Record(b"/a", b"x" * (StoreConfig().max_value_bytes + 1), publisher=other), 0.0)
        assert s.dirty
        s.commit()
        assert sorted(r.key for r in s.records()) == [b"/a", b"/b"]
        assert s.get(b"/a", 0.0).value == b"1"
    assert _rows_seen_by_another_connection(path) == 2


def test_open_store_passes_group_commit(tmp_path):
    me = peers(1)[0]
    with open_store(f"sqlite:{tmp_path / 'a.db'}", me, group_commit=True) as s:
        assert s.group_commit
    with open_store(f"sqlite:{tmp_path / 'b.db'}", me) as s:
        assert not s.group_commit
