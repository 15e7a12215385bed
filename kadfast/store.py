"""Record and provider-record storage with libp2p's ``MemoryStore`` semantics.

- One record per key: a later put overwrites (publisher and expiry kept with it).
- Provider records accumulate per key, distinct by provider, at most
  ``max_providers_per_key``; a key full of live providers keeps the ones
  that came first and refuses newcomers (but for the local node's own
  record, which takes the farthest one's place).
- Expiry times are absolute instants on the caller's clock; time is passed in.

The :class:`RecordStore` interface is what the node uses, so that a persistent
store can stand in for :class:`MemoryStore`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Iterator

from ._xor import Key
from .errors import RecordTooLarge, StoreError, StoreFull
from .peerid import PeerId

__all__ = ["Record", "ProviderRecord", "StoreConfig", "RecordStore", "MemoryStore"]


@dataclass(slots=True)
class Record:
    key: bytes
    value: bytes
    publisher: PeerId | None = None
    #: absolute expiry instant (caller's clock), or None for no expiry
    expires: float | None = None
    #: the network (IP prefix, e.g. "1.2.3.0/24") of the peer that stored
    #: the record here, which the server's per-network quota counts it
    #: under; None for records of the local node and from exempt addresses.
    #: Kept by the stores so that the quotas are rebuilt after a restart
    network: str | None = None

    def is_expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(slots=True)
class ProviderRecord:
    key: bytes
    provider: PeerId
    addrs: tuple = ()
    expires: float | None = None
    #: the network of the peer that announced it (as :attr:`Record.network`)
    network: str | None = None

    def is_expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Limits, defaulting to rust-libp2p's ``MemoryStoreConfig`` but for the
    value limit."""

    #: records held (and, separately, keys with provider records)
    max_records: int = 1024
    #: largest record value in bytes: what a GET_VALUE answer can carry
    #: (``kad.pb.MAX_VALUE_SIZE``, 12 KiB; rust's store allows 65 KiB, but its
    #: 16 KiB message limit stops a larger value on the wire)
    max_value_bytes: int = 12 * 1024
    #: providers kept per key (k)
    max_providers_per_key: int = 20
    #: provider records of which this node is the provider
    max_provided_keys: int = 1024


class RecordStore(abc.ABC):
    """What the node needs from a store."""

    #: True for a store whose changes wait for :meth:`commit` (group commit,
    #: see :class:`~kadfast.sqlite_store.SqliteStore`); a store that commits
    #: as it goes (MemoryStore) keeps False and the defaults below
    group_commit: bool = False
    #: called once per batch of pending changes, at its first (group commit)
    on_dirty: Callable[[], None] | None = None

    @property
    def dirty(self) -> bool:
        """True while changes wait for :meth:`commit`."""
        return False

    def commit(self) -> None:  # noqa: B027 - a hook, empty by default
        """Make the pending changes durable (nothing to do by default)."""

    @abc.abstractmethod
    def get(self, key: bytes, now: float) -> Record | None: ...

    @abc.abstractmethod
    def put(self, record: Record, now: float) -> None:
        """Store ``record``; raises :class:`RecordTooLarge` or :class:`StoreFull`."""

    @abc.abstractmethod
    def remove(self, key: bytes) -> Record | None: ...

    @abc.abstractmethod
    def records(self) -> Iterator[Record]: ...

    def record_keys(self) -> list[bytes]:
        """The keys of the records held (a replication round's work list)."""
        return [r.key for r in self.records()]

    def published_by(self, publisher: PeerId) -> list[Record]:
        """The records held whose publisher is ``publisher`` (the node's own,
        which it republishes)."""
        return [r for r in self.records() if r.publisher == publisher]

    def record_origins(self, now: float) -> Iterator[tuple[bytes, PeerId | None, str | None]]:
        """``(key, publisher, network)`` of each live record: what the node
        rebuilds its store quotas from when it starts. This default walks
        :meth:`records`."""
        return ((r.key, r.publisher, r.network) for r in self.records() if not r.is_expired(now))

    def provider_origins(self, now: float) -> Iterator[tuple[bytes, str]]:
        """``(key, network)`` of each live provider record that names the
        network it came from (the per-network quota of provider keys). A
        store without a way to list its provider records yields nothing
        (the default): the quota then starts empty."""
        return iter(())

    @abc.abstractmethod
    def add_provider(self, record: ProviderRecord, now: float) -> bool:
        """Add or refresh a provider; False when the key already has
        ``max_providers_per_key`` live providers (the first ones stay, as
        rust-libp2p does: closer newcomers, e.g. identities ground near the
        key, evict no one). The local node's own record always goes in, in
        the place of the farthest provider."""

    @abc.abstractmethod
    def providers(self, key: bytes, now: float) -> list[ProviderRecord]: ...

    @abc.abstractmethod
    def provided(self) -> Iterator[ProviderRecord]:
        """Provider records whose provider is the local node."""

    @abc.abstractmethod
    def remove_provider(self, key: bytes, provider: PeerId) -> bool: ...

    @abc.abstractmethod
    def sweep(self, now: float) -> tuple[int, int]:
        """Drop expired records and provider records; returns how many of each."""

    def sweep_keys(self, now: float) -> tuple[list[bytes], int]:
        """As :meth:`sweep`, but returns the keys of the records dropped (the
        node emits RecordExpired for each) and how many provider records were.
        This default lists every record; the stores here do without
        (MemoryStore scans its dict in place, SqliteStore asks its expiry
        index)."""
        keys = [r.key for r in self.records() if r.is_expired(now)]
        _, providers = self.sweep(now)
        return keys, providers

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of records held."""


class MemoryStore(RecordStore):
    def __init__(self, local_peer_id: PeerId, config: StoreConfig | None = None) -> None:
        self.local_peer_id = local_peer_id
        self.config = config or StoreConfig()
        self._records: dict[bytes, Record] = {}
        # key -> providers sorted by distance to the key, closest first
        self._providers: dict[bytes, list[ProviderRecord]] = {}
        self._provided: dict[bytes, ProviderRecord] = {}

    # -- records ---------------------------------------------------------
    def get(self, key: bytes, now: float) -> Record | None:
        rec = self._records.get(key)
        if rec is not None and rec.is_expired(now):
            del self._records[key]
            return None
        return rec

    def put(self, record: Record, now: float) -> None:
        if not isinstance(record.key, bytes) or not isinstance(record.value, bytes):
            raise StoreError("record key and value must be bytes")
        if len(record.value) > self.config.max_value_bytes:
            raise RecordTooLarge(
                f"record value of {len(record.value)} bytes exceeds the limit of "
                f"{self.config.max_value_bytes}"
            )
        if record.key not in self._records and len(self._records) >= self.config.max_records:
            raise StoreFull(f"the store holds its limit of {self.config.max_records} records")
        self._records[record.key] = record

    def remove(self, key: bytes) -> Record | None:
        return self._records.pop(key, None)

    def records(self) -> Iterator[Record]:
        return iter(list(self._records.values()))

    def record_keys(self) -> list[bytes]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    # -- providers -------------------------------------------------------
    def add_provider(self, record: ProviderRecord, now: float) -> bool:
        cfg = self.config
        is_local = record.provider == self.local_peer_id
        providers = self._providers.get(record.key)
        if providers is None:
            if len(self._providers) >= cfg.max_records:
                raise StoreFull(f"the store holds providers for its limit of {cfg.max_records} keys")
            providers = []
        for i, p in enumerate(providers):
            if p.provider == record.provider:
                providers[i] = record
                if is_local:
                    self._provided[record.key] = record
                return True
        if is_local and record.key not in self._provided and len(self._provided) >= cfg.max_provided_keys:
            raise StoreFull(f"this node already provides its limit of {cfg.max_provided_keys} keys")
        live = [p for p in providers if not p.is_expired(now)]
        if len(live) >= cfg.max_providers_per_key:
            if not is_local:
                return False  # full: the providers that came first stay (identities ground near a key evict no one)
            live.pop()  # our own record takes the place of the farthest
        target = Key(record.key)
        dist = target.distance(Key(record.provider.to_bytes()))
        pos = len(live)
        for i, p in enumerate(live):
            if dist < target.distance(Key(p.provider.to_bytes())):
                pos = i
                break
        live.insert(pos, record)
        providers = live
        self._providers[record.key] = providers
        if is_local:
            self._provided[record.key] = record
        return True

    def providers(self, key: bytes, now: float) -> list[ProviderRecord]:
        providers = self._providers.get(key)
        if not providers:
            return []
        live = [p for p in providers if not p.is_expired(now)]
        if len(live) != len(providers):
            self._set_providers(key, live)
        return list(live)

    def _set_providers(self, key: bytes, providers: list[ProviderRecord]) -> None:
        if providers:
            self._providers[key] = providers
        else:
            self._providers.pop(key, None)
        mine = self._provided.get(key)
        if mine is not None and not any(p.provider == self.local_peer_id for p in providers):
            del self._provided[key]

    def provided(self) -> Iterator[ProviderRecord]:
        return iter(list(self._provided.values()))

    def remove_provider(self, key: bytes, provider: PeerId) -> bool:
        providers = self._providers.get(key)
        if not providers:
            return False
        kept = [p for p in providers if p.provider != provider]
        if len(kept) == len(providers):
            return False
        self._set_providers(key, kept)
        return True

    def provider_keys(self) -> int:
        return len(self._providers)

    def provider_origins(self, now: float) -> Iterator[tuple[bytes, str]]:
        return iter([(k, p.network) for k, ps in self._providers.items() for p in ps
                     if p.network is not None and not p.is_expired(now)])

    # -- expiry ----------------------------------------------------------
    def sweep(self, now: float) -> tuple[int, int]:
        keys, providers = self.sweep_keys(now)
        return len(keys), providers

    def sweep_keys(self, now: float) -> tuple[list[bytes], int]:
        expired = [k for k, r in self._records.items() if r.is_expired(now)]
        for k in expired:
            del self._records[k]
        removed_providers = 0
        for key in list(self._providers):
            providers = self._providers[key]
            live = [p for p in providers if not p.is_expired(now)]
            if len(live) != len(providers):
                removed_providers += len(providers) - len(live)
                self._set_providers(key, live)
        return expired, removed_providers
