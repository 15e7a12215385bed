"""A persistent :class:`~kadfast.store.RecordStore` on SQLite (stdlib ``sqlite3``).

Same semantics and limits as :class:`~kadfast.store.MemoryStore`: one record per
key (last writer wins, publisher and expiry kept with it); provider records per
key, distinct by provider, at most ``max_providers_per_key``, the first ones
kept when the key is full (the local node's own record replacing the farthest,
by the XOR distance of :class:`kadfast.Key`); provider records of the local node ("provided" keys) bounded
by ``max_provided_keys``; TTL expiry and :meth:`SqliteStore.sweep`.

Durability
    The database runs with ``PRAGMA journal_mode=WAL`` and
    ``PRAGMA synchronous=FULL``. By default every mutating call commits before
    it returns: a :meth:`put` that returned is on disk.

    With ``group_commit=True`` a mutating call leaves its changes in one open
    transaction (each call inside a savepoint of its own, so a call that
    raises undoes only itself) and :meth:`commit` makes everything since the
    last commit durable with one fsync. ``on_dirty``, when set, is called
    once per transaction, when its first change is made: :class:`KadNode`
    uses it to run the commit as soon as the event loop has handled the
    requests at hand, and holds back the replies that could depend on the
    pending changes (all but FIND_NODE's) until that commit is done. So an
    acknowledged PUT_VALUE is on disk, and a burst of puts from many peers
    costs one fsync instead of one each. The same connection reads its
    own uncommitted changes. :meth:`close` commits what is pending.

Clocks
    The node passes ``now`` and expiry instants on :func:`time.monotonic`,
    whose origin is arbitrary and changes across reboots, so monotonic
    instants cannot be kept on disk. The store keeps *absolute wall-clock*
    expiry instants (:func:`time.time`) on disk and converts with an offset
    computed once when the store is opened::

        offset = time.time() - time.monotonic()
        on disk:   wall = expires + offset
        returned:  expires = wall - offset

    So a record put with ``expires = now + ttl`` still expires ``ttl`` seconds
    of wall-clock time after it was stored, whichever process reopens the
    file. Consequences: a wall-clock step while the store is closed shortens or
    lengthens the remaining lifetimes by that step; while it is open the offset
    is fixed, so expiry follows the monotonic clock. Converting costs float
    precision (a returned expiry may differ from the one put by well under a
    microsecond). ``clock_offset=`` overrides the offset (tests, or a caller
    whose ``now`` is not :func:`time.monotonic`: pass ``0.0`` if it already
    uses wall-clock time).

Each record and provider record keeps the network it was stored from
(``Record.network``, ``ProviderRecord.network``), so that a node rebuilds its
store quotas from the file when it starts. Schema version 2 added these
columns; a version 1 file is migrated when opened (its rows have none).

Provider addresses are stored as binary multiaddrs and returned as
:class:`~kadfast.multiaddr.Multiaddr`. Records and provider records returned are
copies: changing one does not change the store; put or add it again.

Any SQLite failure (a file that is not a kadfast store, a closed store, I/O
errors) is raised as :class:`~kadfast.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import Iterable, Iterator

from ._xor import Key
from .errors import RecordTooLarge, StoreError, StoreFull
from .multiaddr import Multiaddr
from .peerid import PeerId
from .store import MemoryStore, ProviderRecord, Record, RecordStore, StoreConfig
from .varint import decode_uvarint, encode_uvarint

__all__ = ["SqliteStore", "open_store"]

#: ``PRAGMA application_id`` of a kadfast store ("KADF")
APPLICATION_ID = 0x4B414446
SCHEMA_VERSION = 2
#: the schema versions this kadfast opens, each migrated to SCHEMA_VERSION
#: on opening: version 1 lacked the ``network`` columns (its records and
#: provider records then count under no network)
_MIGRATIONS = {
    1: ("ALTER TABLE records ADD COLUMN network TEXT",
        "ALTER TABLE providers ADD COLUMN network TEXT"),
}

_SCHEMA = """
CREATE TABLE records (
    key       BLOB PRIMARY KEY NOT NULL,
    value     BLOB NOT NULL,
    publisher BLOB,
    expires   REAL,           -- wall-clock (time.time()) instant, NULL: never
    network   TEXT            -- the network the record was stored from (the node's quota), NULL: none
);
CREATE INDEX records_expires ON records(expires) WHERE expires IS NOT NULL;
CREATE TABLE providers (
    key      BLOB NOT NULL,
    provider BLOB NOT NULL,
    distance BLOB NOT NULL,   -- 32-byte big-endian XOR distance of the provider to the key
    addrs    BLOB NOT NULL,   -- binary multiaddrs, each prefixed by its varint length
    expires  REAL,            -- wall-clock (time.time()) instant, NULL: never
    network  TEXT,            -- the network the provider was announced from, NULL: none
    PRIMARY KEY (key, provider)
);
CREATE INDEX providers_by_distance ON providers(key, distance);
CREATE INDEX providers_expires ON providers(expires) WHERE expires IS NOT NULL;
CREATE INDEX providers_by_provider ON providers(provider);
"""

# ``expires`` values within this margin of ``now`` are re-checked in Python on
# the converted value, so that the store agrees with ``Record.is_expired``.
_MARGIN = 1.0


def _encode_addrs(addrs) -> bytes:
    out = bytearray()
    for a in addrs:
        raw = a.to_bytes() if isinstance(a, Multiaddr) else bytes(a)
        out += encode_uvarint(len(raw))
        out += raw
    return bytes(out)


def _decode_addrs(data: bytes) -> tuple:
    addrs = []
    pos = 0
    while pos < len(data):
        n, pos = decode_uvarint(data, pos)
        addrs.append(Multiaddr.from_bytes(data[pos:pos + n]))
        pos += n
    return tuple(addrs)


class SqliteStore(RecordStore):
    """A :class:`RecordStore` in an SQLite file at ``path`` (created if missing)."""

    def __init__(
        self,
        path: str | os.PathLike,
        local_peer_id: PeerId,
        config: StoreConfig | None = None,
        *,
        clock_offset: float | None = None,
        group_commit: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        #: changes wait for :meth:`commit` (see the module docstring)
        self.group_commit = group_commit
        self.local_peer_id = local_peer_id
        self.config = config or StoreConfig()
        #: wall-clock instant minus the caller's clock (see the module docstring)
        self.clock_offset = time.time() - time.monotonic() if clock_offset is None else float(clock_offset)
        self._local = local_peer_id.to_bytes()
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path!r}: {exc}") from exc
        try:
            self.journal_mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            #: the SQLite synchronous level its connection runs at (2: FULL)
            self.synchronous: int = conn.execute("PRAGMA synchronous").fetchone()[0]
            self._init_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.path!r} is not a usable kadfast SQLite store: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and version == 0 and n_objects == 0:
                for stmt in _SCHEMA.split(";"):  # not executescript: it would commit
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif app_id != APPLICATION_ID:
                raise StoreError(f"{self.path!r} is an SQLite database but not a kadfast store")
            elif version in _MIGRATIONS:
                for v in range(version, SCHEMA_VERSION):
                    for stmt in _MIGRATIONS[v]:
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path!r} has kadfast store schema version {version}; this kadfast reads version {SCHEMA_VERSION}"
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- plumbing --------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._conn is None

    @property
    def dirty(self) -> bool:
        """True while changes wait for :meth:`commit` (group commit only)."""
        conn = self._conn
        return conn is not None and conn.in_transaction

    def commit(self) -> None:
        """Make the pending changes durable (one fsync); a no-op when there
        are none. On failure the pending changes are rolled back and
        StoreError is raised."""
        conn = self._conn
        if conn is None or not conn.in_transaction:
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise StoreError(f"store {self.path!r}: commit failed: {exc}") from exc

    def close(self) -> None:
        """Commit what is pending and close the database (idempotent)."""
        if self._conn is not None and self._conn.in_transaction:
            self.commit()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise StoreError(f"closing the store {self.path!r}: {exc}") from exc

    def __enter__(self) -> "SqliteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r}{', closed' if self.closed else ''})"

    @contextlib.contextmanager
    def _db(self, write: bool = False):
        """The connection, in a transaction when ``write``; SQLite errors become StoreError."""
        conn = self._conn
        if conn is None:
            raise StoreError(f"the store {self.path!r} is closed")
        try:
            if not write:
                yield conn
                return
            if self.group_commit:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                    if self.on_dirty is not None:
                        self.on_dirty()
                conn.execute("SAVEPOINT op")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    raise
                conn.execute("RELEASE op")
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")  # durable on return: WAL + synchronous=FULL
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path!r}: {exc}") from exc

    def _to_disk(self, expires: float | None) -> float | None:
        return None if expires is None else float(expires) + self.clock_offset

    def _from_disk(self, wall: float | None) -> float | None:
        return None if wall is None else wall - self.clock_offset

    def _record(self, key, value, publisher, expires, network) -> Record:
        return Record(bytes(key), bytes(value), PeerId.from_bytes(publisher) if publisher is not None else None,
                      self._from_disk(expires), network)

    def _provider(self, key, provider, addrs, expires, network) -> ProviderRecord:
        return ProviderRecord(bytes(key), PeerId.from_bytes(provider), _decode_addrs(addrs), self._from_disk(expires),
                              network)

    def _expired(self, wall: float | None, now: float) -> bool:
        # the same test as Record.is_expired, on the converted instant
        return wall is not None and now >= wall - self.clock_offset

    # -- records ---------------------------------------------------------
    def get(self, key: bytes, now: float) -> Record | None:
        with self._db() as db:
            row = db.execute("SELECT key, value, publisher, expires, network FROM records WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if self._expired(row[3], now):
            with self._db(write=True) as db:
                db.execute("DELETE FROM records WHERE key = ? AND expires = ?", (key, row[3]))
            return None
        return self._record(*row)

    def put(self, record: Record, now: float) -> None:
        if not isinstance(record.key, bytes) or not isinstance(record.value, bytes):
            raise StoreError("record key and value must be bytes")
        cfg = self.config
        if len(record.value) > cfg.max_value_bytes:
            raise RecordTooLarge(
                f"record value of {len(record.value)} bytes exceeds the limit of {cfg.max_value_bytes}"
            )
        publisher = record.publisher.to_bytes() if record.publisher is not None else None
        with self._db(write=True) as db:
            exists = db.execute("SELECT 1 FROM records WHERE key = ?", (record.key,)).fetchone()
            if exists is None:
                (n,) = db.execute("SELECT count(*) FROM records").fetchone()
                if n >= cfg.max_records:
                    raise StoreFull(f"the store holds its limit of {cfg.max_records} records")
            db.execute(
                "INSERT INTO records (key, value, publisher, expires, network) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "publisher = excluded.publisher, expires = excluded.expires, network = excluded.network",
                (record.key, record.value, publisher, self._to_disk(record.expires), record.network),
            )

    def put_many(self, records: Iterable[Record]) -> int:
        """Store many records in one transaction, as :meth:`put` would one
        by one but with the store counted once (filling a store from a dump,
        another store, a benchmark's prefill); how many. Nothing is stored
        when one is refused or the store would hold more than its limit."""
        cfg = self.config
        rows = []
        for record in records:
            if not isinstance(record.key, bytes) or not isinstance(record.value, bytes):
                raise StoreError("record key and value must be bytes")
            if len(record.value) > cfg.max_value_bytes:
                raise RecordTooLarge(
                    f"record value of {len(record.value)} bytes exceeds the limit of {cfg.max_value_bytes}"
                )
            publisher = record.publisher.to_bytes() if record.publisher is not None else None
            rows.append((record.key, record.value, publisher, self._to_disk(record.expires), record.network))
        with self._db(write=True) as db:
            db.executemany(
                "INSERT INTO records (key, value, publisher, expires, network) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "publisher = excluded.publisher, expires = excluded.expires, network = excluded.network",
                rows,
            )
            (n,) = db.execute("SELECT count(*) FROM records").fetchone()
            if n > cfg.max_records:
                raise StoreFull(f"{len(rows)} more records would take the store over its limit of {cfg.max_records}")
        return len(rows)

    def remove(self, key: bytes) -> Record | None:
        with self._db(write=True) as db:
            row = db.execute("SELECT key, value, publisher, expires, network FROM records WHERE key = ?", (key,)).fetchone()
            if row is not None:
                db.execute("DELETE FROM records WHERE key = ?", (key,))
        return None if row is None else self._record(*row)

    def records(self) -> Iterator[Record]:
        with self._db() as db:
            rows = db.execute("SELECT key, value, publisher, expires, network FROM records ORDER BY rowid").fetchall()
        return iter([self._record(*r) for r in rows])

    def record_keys(self) -> list[bytes]:
        with self._db() as db:
            return [k for (k,) in db.execute("SELECT key FROM records ORDER BY rowid")]

    def published_by(self, publisher: PeerId) -> list[Record]:
        with self._db() as db:
            rows = db.execute("SELECT key, value, publisher, expires, network FROM records WHERE publisher = ? ORDER BY rowid",
                              (publisher.to_bytes(),)).fetchall()
        return [self._record(*r) for r in rows]

    def record_origins(self, now: float) -> Iterator[tuple[bytes, PeerId | None, str | None]]:
        with self._db() as db:
            rows = db.execute("SELECT key, publisher, network, expires FROM records ORDER BY rowid").fetchall()
        return iter([(bytes(k), PeerId.from_bytes(p) if p is not None else None, n)
                     for k, p, n, e in rows if not self._expired(e, now)])

    def __len__(self) -> int:
        with self._db() as db:
            return db.execute("SELECT count(*) FROM records").fetchone()[0]

    def __bool__(self) -> bool:
        # An empty store is still a store: without this, ``store or MemoryStore(...)``
        # (as in KadNode.__init__) would silently replace an empty SqliteStore.
        return True

    # -- providers -------------------------------------------------------
    def add_provider(self, record: ProviderRecord, now: float) -> bool:
        if not isinstance(record.key, bytes):
            raise StoreError("provider record key must be bytes")
        cfg = self.config
        provider = record.provider.to_bytes()
        is_local = provider == self._local
        addrs = _encode_addrs(record.addrs)
        expires = self._to_disk(record.expires)
        with self._db(write=True) as db:
            (held,) = db.execute("SELECT count(*) FROM providers WHERE key = ?", (record.key,)).fetchone()
            if held == 0:
                (keys,) = db.execute("SELECT count(DISTINCT key) FROM providers").fetchone()
                if keys >= cfg.max_records:
                    raise StoreFull(f"the store holds providers for its limit of {cfg.max_records} keys")
            cur = db.execute(
                "UPDATE providers SET addrs = ?, expires = ?, network = ? WHERE key = ? AND provider = ?",
                (addrs, expires, record.network, record.key, provider),
            )
            if cur.rowcount:
                return True  # refreshed
            if is_local:
                (mine,) = db.execute("SELECT count(*) FROM providers WHERE provider = ?", (provider,)).fetchone()
                if mine >= cfg.max_provided_keys:
                    raise StoreFull(f"this node already provides its limit of {cfg.max_provided_keys} keys")
            distance = Key(record.key).distance(Key(provider)).to_bytes(32, "big")
            if held >= cfg.max_providers_per_key:
                # expired providers make room; then a full key keeps the
                # providers that came first, but for our own record
                db.execute("DELETE FROM providers WHERE key = ? AND expires IS NOT NULL AND expires <= ?",
                           (record.key, self._to_disk(now)))
                (held,) = db.execute("SELECT count(*) FROM providers WHERE key = ?", (record.key,)).fetchone()
            if held >= cfg.max_providers_per_key:
                if not is_local:
                    return False
                db.execute(
                    "DELETE FROM providers WHERE rowid IN (SELECT rowid FROM providers WHERE key = ? "
                    "ORDER BY distance DESC, rowid DESC LIMIT ?)",
                    (record.key, held + 1 - cfg.max_providers_per_key),
                )
            db.execute(
                "INSERT INTO providers (key, provider, distance, addrs, expires, network) VALUES (?, ?, ?, ?, ?, ?)",
                (record.key, provider, distance, addrs, expires, record.network),
            )
        return True

    def providers(self, key: bytes, now: float) -> list[ProviderRecord]:
        with self._db() as db:
            rows = db.execute(
                "SELECT key, provider, addrs, expires, network FROM providers WHERE key = ? ORDER BY distance, rowid", (key,)
            ).fetchall()
        dead = [r[1] for r in rows if self._expired(r[3], now)]
        if dead:
            with self._db(write=True) as db:
                db.executemany("DELETE FROM providers WHERE key = ? AND provider = ?", [(key, p) for p in dead])
        return [self._provider(*r) for r in rows if not self._expired(r[3], now)]

    def provided(self) -> Iterator[ProviderRecord]:
        with self._db() as db:
            rows = db.execute(
                "SELECT key, provider, addrs, expires, network FROM providers WHERE provider = ? ORDER BY rowid", (self._local,)
            ).fetchall()
        return iter([self._provider(*r) for r in rows])

    def remove_provider(self, key: bytes, provider: PeerId) -> bool:
        with self._db(write=True) as db:
            cur = db.execute("DELETE FROM providers WHERE key = ? AND provider = ?", (key, provider.to_bytes()))
            return cur.rowcount > 0

    def provider_origins(self, now: float) -> Iterator[tuple[bytes, str]]:
        with self._db() as db:
            rows = db.execute("SELECT key, network, expires FROM providers WHERE network IS NOT NULL").fetchall()
        return iter([(bytes(k), n) for k, n, e in rows if not self._expired(e, now)])

    def provider_keys(self) -> int:
        """Number of keys with provider records."""
        with self._db() as db:
            return db.execute("SELECT count(DISTINCT key) FROM providers").fetchone()[0]

    # -- expiry ----------------------------------------------------------
    def sweep(self, now: float) -> tuple[int, int]:
        keys, providers = self.sweep_keys(now)
        return len(keys), providers

    def sweep_keys(self, now: float) -> tuple[list[bytes], int]:
        # candidates by wall-clock instant (indexed), then the exact test on the converted instant
        bound = now + self.clock_offset + _MARGIN
        with self._db(write=True) as db:
            recs = [
                k for k, e in db.execute(
                    "SELECT key, expires FROM records WHERE expires IS NOT NULL AND expires <= ?", (bound,)
                ) if self._expired(e, now)
            ]
            provs = [
                (k, p) for k, p, e in db.execute(
                    "SELECT key, provider, expires FROM providers WHERE expires IS NOT NULL AND expires <= ?", (bound,)
                ) if self._expired(e, now)
            ]
            db.executemany("DELETE FROM records WHERE key = ?", [(k,) for k in recs])
            db.executemany("DELETE FROM providers WHERE key = ? AND provider = ?", provs)
        return recs, len(provs)


def open_store(spec: str, local_peer_id: PeerId, config: StoreConfig | None = None, *,
               group_commit: bool = False) -> RecordStore:
    """A store from a spec: ``"memory"`` (:class:`MemoryStore`) or
    ``"sqlite:PATH"`` (:class:`SqliteStore` at PATH, with ``group_commit``)."""
    if not isinstance(spec, str):
        raise ValueError(f"store spec must be a string, not {type(spec).__name__}")
    if spec == "memory":
        return MemoryStore(local_peer_id, config)
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:"):]
        if not path:
            raise ValueError("store spec 'sqlite:' needs a path, as in 'sqlite:/var/lib/kadfast/store.db'")
        return SqliteStore(path, local_peer_id, config, group_commit=group_commit)
    raise ValueError(f"unknown store spec {spec!r}: expected 'memory' or 'sqlite:PATH'")
