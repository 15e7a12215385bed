"""The kad server, sans-IO: the answer to one inbound ``/ipfs/kad/1.0.0``
request, as :meth:`KadServer.handle` gives it.

No sockets, no event loop, no host: a :class:`KadServer` is built from the
parts it reads and writes (the node's settings, its own PeerId, the routing
table, the address book, the record store, the validators, and a few
callables for what only the network knows: a peer's open connection, the
connection epoch, our own addresses) and is given the time of every request
(``now``). It owns what only answers need: the closerPeers reply cache, the
set of table entries withheld from answers (their last request failed), the
IP groups that answers spread over, the per-peer rate limits, the store
quotas and the record-acceptance rules (validation, the policy for keys no
validator checks, size limits). What a shell needs to hear of goes through
two callbacks: ``on_event`` (a :class:`RecordStored` per record taken) and
``on_request`` (an :class:`InboundRequest` per request, while set). The
store's own ``on_dirty`` asks for the group commit.

``KadNode`` runs one for its inline server (``KadNode.serve_stream`` reads the
streams and writes the replies); ``bench/sim.py`` runs one per simulated node.
"""

from __future__ import annotations

import logging
import operator
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .._closer import cached_fields
from .._xor import Key
from ..addrbook import AddressBook, ip_prefix, is_public, plausible_addrs
from ..errors import KadError, PeerIdError, StoreFull, ValueTooLarge
from ..multiaddr import Multiaddr
from ..peerid import PeerId
from ..store import ProviderRecord, Record, RecordStore
from .config import Config
from .events import InboundRequest, RecordStored
from .pb import (
    ConnectionType,
    KadMessage,
    KadPeer,
    KadRecord,
    MessageType,
    closer_field,
    encode_find_node_reply,
    encode_message,
    encode_peer,
)
from .ratelimit import PeerRateLimiter, RateLimited
from .validation import InvalidRecord, NamespacedValidator

if TYPE_CHECKING:
    from .._routing import Entry, RoutingTable

log = logging.getLogger("kadfast.kad")
_T = TypeVar("_T")
_A = TypeVar("_A", bytes, KadMessage, "KadMessage | bytes")
#: a closerPeers cache entry: (address-book view, its version, connection
#: type, connection epoch, the encoded field)
_CacheEntry = tuple[Any, int, int, int, bytes]

__all__ = ["KadServer"]

#: closerPeers fields cached for replies (a routing table holds at most 256 * k)
_CLOSER_CACHE_SIZE = 8192
#: first bytes of the PeerId multihashes (identity 0x00, sha2-256 0x12)
_MULTIHASH_STARTS = frozenset((0x00, 0x12))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _no_connection(peer: PeerId) -> None:
    return None


def _no_addrs() -> list[Multiaddr]:
    return []


def _epoch_zero() -> int:
    return 0


class _NetworkQuota:
    """Keys counted per owner (a network, an IP prefix; or a publisher), at
    most ``limit`` each. ``exclusive``: a key counts for one owner at a
    time (a record: the last network, or publisher, that stored a value);
    else for each owner that asked (a provider key)."""

    __slots__ = ("limit", "exclusive", "_keys_of", "_networks_of")

    def __init__(self, limit: int, exclusive: bool) -> None:
        self.limit = limit
        self.exclusive = exclusive
        self._keys_of: dict[Any, set[bytes]] = {}
        self._networks_of: dict[bytes, set[Any]] = {}

    def allows(self, network: Any, key: bytes) -> bool:
        """Whether :meth:`admit` would count ``key`` for ``network`` (no change)."""
        if not self.limit:
            return True
        networks = self._networks_of.get(key)
        if networks is not None and network in networks:
            return True
        keys = self._keys_of.get(network)
        return keys is None or len(keys) < self.limit

    def admit(self, network: Any, key: bytes) -> bool:
        """Count ``key`` for ``network``; False (nothing counted) when the
        network has its limit already. 0 admits everything."""
        if not self.limit:
            return True
        if not self.allows(network, key):
            return False
        self.count(network, key)
        return True

    def count(self, network: Any, key: bytes) -> None:
        """Count ``key`` for ``network`` even over the limit (rebuilding the
        counts from a store)."""
        if not self.limit:
            return
        networks = self._networks_of.get(key)
        if networks is not None and network in networks:
            return
        if self.exclusive and networks is not None:
            self.forget(key)
            networks = None
        if networks is None:
            networks = self._networks_of[key] = set()
        networks.add(network)
        self._keys_of.setdefault(network, set()).add(key)

    def clear(self) -> None:
        self._keys_of.clear()
        self._networks_of.clear()

    def held_by(self, network: Any) -> int:
        return len(self._keys_of.get(network, ()))

    def forget(self, key: bytes) -> None:
        for network in self._networks_of.pop(key, ()):
            keys = self._keys_of[network]
            keys.discard(key)
            if not keys:
                del self._keys_of[network]

    def keys(self) -> list[bytes]:
        return list(self._networks_of)


class KadServer:
    """The kad server of one node: :meth:`handle` answers a request.

    ``config`` is the node's :class:`~kadfast.kad.node.Config` (its server
    settings: k, the message and record limits, the rate limits, quotas and
    diversity limits, TTLs, ``unvalidated_records``). ``table`` is the
    routing table (values: PeerIds), ``addrbook`` the address book, ``store``
    the record store, ``validator`` the record validators. The callables
    stand for the network: ``connection(peer)`` the peer's open connection
    or None (an answer tells whether each peer is connected),
    ``conn_epoch()`` a number that changes whenever a connection opens or
    closes (the reply cache holds while it does not), ``own_addrs()`` our
    addresses for answers naming us. ``wall_clock()`` is read only for the
    ``timeReceived`` of a record sent in a GET_VALUE answer; every other
    use of time is the ``now`` of the call. ``key_of(peer)`` gives a
    PeerId's Kademlia key (the node's memo; by default one of the server's
    own).
    """

    def __init__(
        self,
        config: Config,
        peer_id: PeerId,
        table: RoutingTable,
        addrbook: AddressBook,
        store: RecordStore,
        validator: NamespacedValidator,
        *,
        connection: Callable[[PeerId], Any] = _no_connection,
        conn_epoch: Callable[[], int] = _epoch_zero,
        own_addrs: Callable[[], list[Multiaddr]] = _no_addrs,
        wall_clock: Callable[[], float] = time.time,
        key_of: Callable[[PeerId], Key] | None = None,
        on_event: Callable[[Any], None] | None = None,
        on_request: Callable[[InboundRequest], None] | None = None,
    ) -> None:
        self.config = cfg = config
        self.peer_id = peer_id
        self._own_id_bytes = peer_id.to_bytes()
        self.table = table
        self.addrbook = addrbook
        self.store = store
        self.validator = validator
        self._connection = connection
        self._conn_epoch = conn_epoch
        self._own_addrs = own_addrs
        self._wall_clock = wall_clock
        if key_of is None:
            keys: dict[PeerId, Key] = {}

            def key_of(peer: PeerId) -> Key:
                key = keys.get(peer)
                if key is None:
                    if len(keys) >= 16384:
                        keys.clear()
                    key = keys[peer] = Key(peer.to_bytes())
                return key
        self._key = key_of
        #: called with a RecordStored event for every record a PUT_VALUE stored
        self.on_event = on_event
        #: called with an InboundRequest for every request, while not None
        self.on_request = on_request
        #: inbound kad requests served, by message type (at most six keys:
        #: the codec refuses other types)
        self.request_counts: dict[MessageType, int] = {}
        #: routing key -> (address-book view, its version, connection type,
        #: connection epoch, closerPeers field of the encoded Peer); see _closer_fields
        self.closer_cache: dict[Key, _CacheEntry] = {}
        #: routing-table keys of peers whose last request failed (unreachable,
        #: timed out): kept in the table, but left out of our answers until
        #: they are heard from again; see :meth:`withhold`
        self.withheld: set[Key] = set()
        # routing key -> its IP group, for the table keys that have one (not
        # exempt), and the groups with more members in the table than an
        # answer may hold (over-counted until the sweep prunes them): while
        # there is none, answers cost nothing more (max_answer_peers_per_ip_group)
        self.key_group: dict[Key, str] = {}
        self.crowded_groups: set[str] = set()
        # the cached closerPeers fields (see _closer_fields) of the members of
        # those groups -> their group: one C-level set operation tells
        # whether an answer holds more than its share of any of them
        self._crowded_fields: dict[bytes, str] = {}
        # keys stored from each network (max_records_per_ip_group,
        # max_provider_keys_per_ip_group)
        self.record_quota = _NetworkQuota(cfg.max_records_per_ip_group, exclusive=True)
        self.provider_quota = _NetworkQuota(cfg.max_provider_keys_per_ip_group, exclusive=False)
        # keys stored by each publisher (max_records_per_peer)
        self.publisher_quota = _NetworkQuota(cfg.max_records_per_peer, exclusive=True)
        # peer -> when a refusal of its requests (rate limits, full store)
        # was last logged at INFO: one line a minute per peer, not per request
        self._refusals_logged: dict[PeerId, float] = {}
        self._put_limiter = PeerRateLimiter.per_second(
            cfg.max_puts_per_peer_per_second, cfg.rate_limit_burst_seconds, cfg.max_rate_limited_peers)
        self._provider_limiter = PeerRateLimiter.per_second(
            cfg.max_provider_adds_per_peer_per_second, cfg.rate_limit_burst_seconds, cfg.max_rate_limited_peers)
        self._read_limiter = PeerRateLimiter.per_second(
            cfg.max_reads_per_peer_per_second, cfg.rate_limit_burst_seconds, cfg.max_rate_limited_peers)

    # -- what the node tells the server --------------------------------------------
    def withhold(self, key: Key) -> None:
        """A request to this table entry failed: it stays in the table (a
        pending entry may replace it, or it comes back when heard from) but
        is no longer handed out in FIND_NODE / GET_* answers, so that peers
        which left stop being advertised by the nodes that noticed. (rust
        keeps serving such entries; go removes them from its table.) The set
        holds table keys only: it is pruned when it outgrows the table."""
        u = self.withheld
        u.add(key)
        if len(u) > len(self.table) + self.config.k:
            self.withheld = {x for x in u if x in self.table}

    def heard_from(self, key: Key) -> None:
        """The peer of ``key`` was heard from: answers name it again."""
        if self.withheld:
            self.withheld.discard(key)

    def note_group(self, key: Key, group: str, members: int) -> None:
        """The table admitted ``key`` under IP ``group``, which has
        ``members`` table keys now: answers spread over the groups that
        have more than ``max_answer_peers_per_ip_group``."""
        self.key_group[key] = group
        share = self.config.max_answer_peers_per_ip_group
        if share and members > share and group not in self.crowded_groups:
            self.crowded_groups.add(group)
            self._index_crowded_fields()

    def regroup(self, group_members: dict[str, set[Key]]) -> None:
        """The sweep counted each IP group's table keys anew
        (``group_members``): the keys that left the table are forgotten and
        the crowded groups recounted."""
        if self.key_group:
            self.key_group = {k: g for k, g in self.key_group.items() if k in self.table}
        share = self.config.max_answer_peers_per_ip_group
        self.crowded_groups = {g for g, m in group_members.items() if len(m) > share} if share else set()
        self._index_crowded_fields()

    def rebuild_quotas(self, now: float) -> None:
        """Count what the store holds in the store quotas (per network, per
        publisher, provider keys per network): a persistent store's records
        count after a restart as they did before it."""
        records, publishers, providers = self.record_quota, self.publisher_quota, self.provider_quota
        for q in (records, publishers, providers):
            q.clear()
        for key, publisher, network in self.store.record_origins(now):
            if network is not None:
                records.count(network, key)
            if publisher is not None and publisher != self.peer_id:
                publishers.count(publisher, key)
        for key, network in self.store.provider_origins(now):
            providers.count(network, key)

    def forget_record(self, key: bytes) -> None:
        """The record of ``key`` expired, was removed or is our own now: no
        peer's or network's quota counts it."""
        self.record_quota.forget(key)
        self.publisher_quota.forget(key)

    def sweep_providers(self, now: float) -> None:
        """Forget the provider keys that have no provider left."""
        quota = self.provider_quota
        for k in quota.keys():  # a few hundred keys at most per network
            if not self.store.providers(k, now):
                quota.forget(k)

    # -- answers -------------------------------------------------------------------
    def _answer_limit(self) -> int:
        """How many of the closest table entries an answer looks at: k and
        one for the requester, and enough for the unreachable ones."""
        k = self.config.k
        u = self.withheld
        return k + 1 + min(len(u), 4 * k) if u else k + 1

    def _kad_peer(self, peer: PeerId, now: float) -> KadPeer | None:
        addrs = self.addrbook.addrs(peer, now)
        if not addrs:
            return None
        connected = self._connection(peer) is not None
        return KadPeer(peer, addrs, ConnectionType.CONNECTED if connected else ConnectionType.NOT_CONNECTED)

    def closer_peers(self, target: Key, exclude: PeerId | None, now: float) -> list[KadPeer]:
        """The closer peers of an answer about ``target`` at ``now``: the k
        closest table entries with addresses, ``exclude`` (the requester)
        and withheld entries left out, spread over IP groups when some
        group has more than its share among them."""
        if self.crowded_groups:
            diverse = self._diverse_answer(target, None if exclude is None else self._key(exclude),
                                           lambda e: self._kad_peer(e.value, now))
            if diverse is not None:
                return diverse
        # the walk of the framed path's, with nothing cached: the requester
        # and withheld entries passed over, peers without addresses left out
        return cached_fields(
            self.table.closest(target, self._answer_limit()), self.config.k, {},
            None if exclude is None else self._key(exclude), self.withheld, None, now,
            lambda key, peer, hit: self._kad_peer(peer, now))

    def _find_node_target(self, key: bytes, tkey: Key, requester: PeerId, now: float) -> KadPeer | None:
        """The entry a FIND_NODE answer puts first: the target peer itself
        when the key is a PeerId whose addresses we know (connected, or not
        expired in the address book), even if it is a DHT client and not in
        the routing table, as the spec requires of a server; ourselves when
        the key is our own id. None when it is in the routing table (the
        answer's closest entries start with it, or withhold it as
        unreachable), for the requester's own id (a peer is never told about
        itself), and when the key is not a PeerId or nothing is known."""
        if key == self._own_id_bytes:
            return KadPeer(self.peer_id, self._own_addrs(), ConnectionType.CONNECTED)
        # ``tkey`` is the answer's own Key of ``key``: no second hash, and the
        # node's PeerId -> Key cache is not filled with lookup targets
        if not key or key[0] not in _MULTIHASH_STARTS or tkey in self.table:
            # not a PeerId (random keys, record keys), or the closest entry of
            # the answer already, or withheld as unreachable (stale addresses)
            return None
        try:
            target = PeerId(key)
        except PeerIdError:
            return None
        if target == requester:
            return None
        return self._kad_peer(target, now)

    def _closer_fields(self, target: Key, exclude: PeerId | None, now: float) -> list[bytes]:
        """The closerPeers fields (:func:`closer_field` of :func:`encode_peer`)
        of :meth:`closer_peers`, byte for byte. Each is cached per routing-table key with what it was
        made of: the peer's address-book view (valid while its version
        holds and until its first expiry) and the connection epoch
        (while no connection opened or closed, every peer's connection type
        holds); only what changed is looked up again, and re-encoded only
        when its addresses or connection type did change. The walk over the
        closest entries and the cache checks run compiled
        (``kadfast._closer.cached_fields`` over ``RoutingTable.closest``)."""
        epoch = self._conn_epoch()
        out = cached_fields(
            self.table.closest(target, self._answer_limit()), self.config.k, self.closer_cache,
            None if exclude is None else self._key(exclude), self.withheld, epoch, now,
            lambda key, peer, hit: self._peer_field(key, peer, now, epoch, hit))
        if self.crowded_groups:
            # some IP group has more table entries than an answer may hold:
            # does this answer hold more than its share of one? (the fields
            # of their members are indexed; mostly none or a few are here)
            share = self.config.max_answer_peers_per_ip_group
            hits = list(filter(None, map(self._crowded_fields.get, out)))  # their groups, C loops only
            if len(hits) > share:
                hits.sort()  # then a group over its share is share + 1 equal neighbours
                if any(map(operator.eq, hits, hits[share:])):
                    diverse = self._diverse_answer(target, None if exclude is None else self._key(exclude),
                                                   lambda e: self._cached_field(e, now, epoch))
                    if diverse is not None:
                        return diverse
        return out

    def _index_crowded_fields(self) -> None:
        """Index anew the cached closerPeers fields of the members of the
        crowded groups (their group changed, or the index outgrew them)."""
        cache, crowded = self.closer_cache, self.crowded_groups
        index = self._crowded_fields = {}
        for key, g in self.key_group.items():
            if g in crowded:
                hit = cache.get(key)
                if hit is not None:
                    index[hit[4]] = g

    def _cached_field(self, e: Entry, now: float, epoch: int) -> bytes | None:
        """The closerPeers field of table entry ``e`` as ``cached_fields``
        gives it: the cached one while valid, else :meth:`_peer_field`."""
        hit = self.closer_cache.get(e.key)
        if hit is not None:
            book = hit[0]
            if hit[3] == epoch and book.version == hit[1] and now < book.min_expires:
                return hit[4]
        return self._peer_field(e.key, e.value, now, epoch, hit)

    def _diverse_answer(self, target: Key, exclude: Key | None,
                        value_of: Callable[[Entry], _T | None]) -> list[_T] | None:
        """The closer peers of an answer when an IP group has more than
        ``max_answer_peers_per_ip_group`` entries among the closest to
        ``target``: from the 4k + 1 closest (the requester and unreachable
        entries left out, and entries for which ``value_of(entry)`` is None),
        at most that many per group in distance order first, then the
        others of the over-represented groups fill the answer up to k; in
        distance order. None when no group is over its share among the
        closest (the caller answers as usual, by distance alone)."""
        crowded = self.crowded_groups
        groups = self.key_group
        share = self.config.max_answer_peers_per_ip_group
        limit = self._answer_limit()
        seen: dict[str, int] = {}
        over = False
        for e in self.table.closest(target, limit):
            g = groups.get(e.key)
            if g is not None and g in crowded:
                n = seen[g] = seen.get(g, 0) + 1
                if n > share:
                    over = True
                    break
        if not over:
            return None
        k = self.config.k
        u = self.withheld
        picked: list[tuple[int, Any]] = []
        deferred = []
        seen.clear()
        for i, e in enumerate(self.table.closest(target, limit + 3 * k)):
            key = e.key
            if key == exclude or key in u:
                continue
            g = groups.get(key)
            if g is not None and seen.get(g, 0) >= share:
                deferred.append((i, e))
                continue
            v = value_of(e)
            if v is None:  # no address known
                continue
            if g is not None:
                seen[g] = seen.get(g, 0) + 1
            picked.append((i, v))
            if len(picked) >= k:
                return [v for _, v in picked]
        for i, e in deferred:
            v = value_of(e)
            if v is not None:
                picked.append((i, v))
                if len(picked) >= k:
                    break
        picked.sort(key=lambda iv: iv[0])
        return [v for _, v in picked]

    def _peer_field(self, key: Key, peer: PeerId, now: float, epoch: int,
                    hit: _CacheEntry | None) -> bytes | None:
        """Look up ``peer``'s addresses and connection type again; its cached
        closerPeers field (re-made only if they changed), or None without
        addresses."""
        cache = self.closer_cache
        book = self.addrbook.book(peer, now)
        if book is None:
            if hit is not None:
                del cache[key]
            return None
        conn = 0 if self._connection(peer) is None else 1
        if hit is not None and hit[0] is book and hit[1] == book.version and hit[2] == conn:
            field = hit[4]
        else:
            field = closer_field(encode_peer(peer, self.addrbook.addrs(peer, now), conn))
            if hit is None and len(cache) >= _CLOSER_CACHE_SIZE:
                cache.clear()
            if self.crowded_groups:
                g = self.key_group.get(key)
                if g is not None and g in self.crowded_groups:
                    if len(self._crowded_fields) >= _CLOSER_CACHE_SIZE:  # old encodings pile up
                        self._index_crowded_fields()
                    self._crowded_fields[field] = g
        cache[key] = (book, book.version, conn, epoch, field)
        return field

    def handle(self, peer: PeerId, msg: KadMessage, now: float, remote_addr: Multiaddr | None = None,
               framed: bool = False) -> KadMessage | bytes | None:
        """The answer to request ``msg`` of ``peer`` at time ``now`` (None:
        the request has no answer, ADD_PROVIDER); raises on a request that
        must reset the stream (bad input, a refusal: over a rate limit or a
        quota, an invalid or losing record, the store full). ``remote_addr``
        is the address of the request's connection (the store quotas count
        per network; provider addresses are checked against it). With
        ``framed``, the replies that carry closer peers come encoded and
        framed (bytes, from cached Peer encodings), the others as a
        KadMessage still."""
        t = msg.type
        counts = self.request_counts
        counts[t] = counts.get(t, 0) + 1
        if self.on_request is not None:
            self.on_request(InboundRequest(peer, t))
        if t == MessageType.FIND_NODE:
            if not self._read_limiter.allow(peer, now):
                self._refuse_read(peer, t, now)
            tkey = Key(msg.key)
            target = self._find_node_target(msg.key, tkey, peer, now)
            if framed:
                fields = self._closer_fields(tkey, peer, now)
                if target is not None:
                    fields.insert(0, closer_field(encode_peer(target.peer_id, target.addrs, target.connection)))
                out = encode_find_node_reply(msg.key, fields, MessageType.FIND_NODE, framed=True, closer_fields=True)
                if len(out) <= self.config.max_message_size:  # the hot path: no closure
                    return out
                return self._fitted(len(fields) - 1, lambda n: encode_find_node_reply(
                    msg.key, fields[:n], MessageType.FIND_NODE, framed=True, closer_fields=True))
            closer = self.closer_peers(tkey, peer, now)
            if target is not None:
                closer.insert(0, target)
            return self._fitted(len(closer), lambda n: KadMessage(
                MessageType.FIND_NODE, key=msg.key, closer_peers=closer[:n]))
        if t == MessageType.GET_VALUE:
            if not self._read_limiter.allow(peer, now):
                self._refuse_read(peer, t, now)
            held = self.store.get(msg.key, now)
            kr = None
            if held is not None:
                kr = KadRecord(held.key, held.value, time_received=_rfc3339(self._wall_clock()), publisher=held.publisher)
            if framed:
                fields = self._closer_fields(Key(msg.key), peer, now)
                return self._fitted(len(fields), lambda n: encode_find_node_reply(
                    msg.key, fields[:n], MessageType.GET_VALUE, record=kr, framed=True, closer_fields=True))
            closer = self.closer_peers(Key(msg.key), peer, now)
            return self._fitted(len(closer), lambda n: KadMessage(
                MessageType.GET_VALUE, key=msg.key, record=kr, closer_peers=closer[:n]))
        if t == MessageType.PUT_VALUE:
            if not self._put_limiter.allow(peer, now):  # raising resets the stream
                raise self._refused(peer, now, RateLimited(
                    f"PUT_VALUE from {peer} over {self.config.max_puts_per_peer_per_second}/s"))
            rec = msg.record
            if rec is None or rec.key != msg.key:
                raise KadError("PUT_VALUE whose record key differs from the message key")
            self.check_size(rec.key, rec.value)  # as are records too large to be read back
            self.validator.validate(rec.key, rec.value)  # InvalidRecord resets the stream
            held = self.store.get(rec.key, now)
            self._check_unvalidated(peer, rec.key, rec.value, held)
            if self.held_wins(rec.key, rec.value, held):
                # as go: the held record is kept, and the put fails (resets the stream)
                raise InvalidRecord(f"PUT_VALUE from {peer}: the record held for {rec.key!r} is better")
            ttl = self.config.record_ttl if rec.ttl is None else min(float(rec.ttl), self.config.record_ttl)
            if held is not None and held.value == rec.value:
                # a replica of what we hold costs nothing, and changes
                # neither its publisher (the peer that stored the value) nor
                # the network it counts under; one of our own records
                # coming back stays ours untouched (we go on republishing it)
                if held.publisher != self.peer_id:
                    self.store.put(Record(rec.key, rec.value, publisher=held.publisher, expires=now + ttl,
                                          network=held.network), now)
            else:
                # a new key or value. The publisher is the authenticated
                # sender, never the message's claim (which would let any
                # peer store records in another's name, or in ours)
                network = self._network_of(remote_addr)
                records, publishers = self.record_quota, self.publisher_quota
                if network is not None and not records.allows(network, rec.key):
                    raise self._refused(peer, now, RateLimited(
                        f"peers of {network} have stored {records.limit} records here, "
                        "the limit (max_records_per_ip_group)"))
                if not publishers.allows(peer, rec.key):
                    raise self._refused(peer, now, RateLimited(
                        f"{peer} has stored {publishers.limit} records here, the limit (max_records_per_peer)"))
                try:
                    self.store.put(Record(rec.key, rec.value, publisher=peer, expires=now + ttl, network=network), now)
                except StoreFull as exc:
                    # an explicit refusal: the stream is reset, the putter counts this peer as failed
                    raise self._refused(peer, now, exc) from None
                if network is not None:
                    records.count(network, rec.key)
                else:
                    records.forget(rec.key)
                publishers.count(peer, rec.key)
            if self.on_event is not None:
                self.on_event(RecordStored(rec.key, peer, peer))
            # echo the record (js counts any other reply as a failure), without unknown fields
            return KadMessage(MessageType.PUT_VALUE, key=msg.key,
                              record=KadRecord(rec.key, rec.value, publisher=rec.publisher, ttl=rec.ttl))
        if t == MessageType.ADD_PROVIDER:
            if not self._provider_limiter.allow(peer, now):
                raise self._refused(peer, now, RateLimited(
                    f"ADD_PROVIDER from {peer} over {self.config.max_provider_adds_per_peer_per_second}/s"))
            for p in msg.provider_peers:
                if p.peer_id != peer:
                    log.info("ADD_PROVIDER from %s names %s as provider; ignored", peer, p.peer_id)
                    continue
                network = self._network_of(remote_addr)
                quota = self.provider_quota
                if network is not None and not quota.allows(network, msg.key):
                    # ignored: the protocol has no answer to refuse it with
                    self._refused(peer, now, RateLimited(
                        f"ADD_PROVIDER from {peer} ignored: peers of {network} provide {quota.limit} keys here, "
                        "the limit (max_provider_keys_per_ip_group)"))
                    continue
                addrs = plausible_addrs(p.addrs, remote_addr)  # never a victim's address
                try:
                    self.store.add_provider(
                        ProviderRecord(msg.key, peer, tuple(addrs), now + self.config.provider_ttl, network), now)
                except StoreFull as exc:
                    raise self._refused(peer, now, exc) from None
                if addrs:
                    self.addrbook.add(peer, addrs, now, ttl=self.config.provider_ttl, source="provider")
                if network is not None:
                    quota.count(network, msg.key)
            return None
        if t == MessageType.GET_PROVIDERS:
            if not self._read_limiter.allow(peer, now):
                self._refuse_read(peer, t, now)
            providers = []
            for prov in self.store.providers(msg.key, now):
                if prov.provider == self.peer_id:
                    providers.append(KadPeer(self.peer_id, self._own_addrs(), ConnectionType.CONNECTED))
                    continue
                addrs = self.addrbook.addrs(prov.provider, now) or list(prov.addrs)
                if addrs:
                    providers.append(KadPeer(prov.provider, addrs, ConnectionType.NOT_CONNECTED))
            if framed:
                fields = self._closer_fields(Key(msg.key), peer, now)
                bodies = [encode_peer(p.peer_id, p.addrs, p.connection) for p in providers]
                return self._fitted(len(fields), lambda n: encode_find_node_reply(
                    msg.key, fields[:n], MessageType.GET_PROVIDERS, bodies, framed=True, closer_fields=True))
            closer = self.closer_peers(Key(msg.key), peer, now)
            return self._fitted(len(closer), lambda n: KadMessage(
                MessageType.GET_PROVIDERS, key=msg.key, closer_peers=closer[:n], provider_peers=providers))
        if t == MessageType.PING:
            return KadMessage(MessageType.PING)
        raise KadError(f"unsupported message type {t}")

    def _refused(self, peer: PeerId, now: float, exc: Exception) -> Exception:
        """Log a refused request of ``peer`` (over a rate limit or a quota,
        or the store full) and return ``exc`` to raise (which resets the
        stream): at INFO once a minute per peer, else at DEBUG, so that a
        flood of refused requests is not a flood of log lines."""
        exc.kad_logged = True  # type: ignore[attr-defined]  # a mark: logged already
        logged = self._refusals_logged
        last = logged.get(peer)
        if last is None or now - last >= 60.0:
            if len(logged) >= 1024:
                logged.clear()
            logged[peer] = now
            log.info("refusing kad requests from %s (further refusals within a minute logged at debug): %s", peer, exc)
        else:
            log.debug("refused: %s", exc)
        return exc

    def _refuse_read(self, peer: PeerId, t: MessageType, now: float) -> None:
        raise self._refused(peer, now, RateLimited(
            f"{t.name} from {peer}: reads over {self.config.max_reads_per_peer_per_second}/s "
            "(max_reads_per_peer_per_second)"))

    def _fitted(self, closer: int, build: Callable[[int], _A]) -> _A:
        """``build(n)``, the answer with its first ``n`` closer peers, for the
        largest ``n <= closer`` whose encoding fits in ``max_message_size``
        (rust reads and sends nothing larger): 20 closer peers with many long
        addresses each, or a record near the value limit or many providers
        beside them, would not. The farthest closer peers are left out first;
        the record and the providers always go. The common case costs one
        length check (and, unframed, one encoding)."""
        out = build(closer)
        limit = self.config.max_message_size
        size = len(out) if out.__class__ is bytes else len(encode_message(out))  # type: ignore[arg-type]
        while size > limit and closer:
            closer -= 1
            out = build(closer)
            size = len(out) if out.__class__ is bytes else len(encode_message(out))  # type: ignore[arg-type]
        return out

    def _check_unvalidated(self, sender: PeerId, key: bytes, value: bytes, held: Record | None) -> None:
        """The server's policy for a PUT_VALUE of a key that no registered
        validator checks (``Config.unvalidated_records``); raises
        :class:`InvalidRecord` (the stream is reset) when it is refused."""
        v = self.validator
        if not isinstance(v, NamespacedValidator) or v.validator_for(key) is not None:
            return  # validated (or a validator of the application's own)
        if held is not None and held.value == value:
            return  # a replica of what is held
        if v.namespace_of(key) is None:
            try:
                named = PeerId(value)
            except PeerIdError:
                named = None
            if named is not None:
                # the reference program's namespace record: key = the
                # namespace, value = the announcing peer's own PeerId
                if named != sender:
                    raise InvalidRecord(f"PUT_VALUE from {sender}: the record for {key!r} names another peer ({named})")
                return
        mode = self.config.unvalidated_records
        if mode == "refuse":
            raise InvalidRecord(f"PUT_VALUE from {sender}: no validator for {key!r} (unvalidated_records='refuse')")
        if mode == "owner" and held is not None and held.publisher != sender:
            raise InvalidRecord(f"PUT_VALUE from {sender}: the record held for {key!r} was stored by another peer, "
                                "the only one that may change it (unvalidated_records='owner')")

    def _network_of(self, remote_addr: Multiaddr | None) -> str | None:
        """The network a request's connection comes from, for the store's
        quotas: IPv4 /24, IPv6 /48; None when exempt (not public, unless
        ``ip_group_limits_everywhere``) or unknown."""
        if remote_addr is None:
            return None
        ip = remote_addr.value_for("ip4") or remote_addr.value_for("ip6")
        if not ip or not (self.config.ip_group_limits_everywhere or is_public(remote_addr)):
            return None
        return ip_prefix(ip, 24, 48)

    def held_wins(self, key: bytes, new: bytes, held: Record | None) -> bool:
        """Whether the record held for ``key`` beats the (valid) ``new`` one:
        go's select over [new, held]; ``held`` is what the store holds for
        ``key`` (None: nothing). A held record that is no longer valid (an
        expired IPNS record, or one stored before its namespace had a
        validator) loses; so does any under a namespace without a validator."""
        v = self.validator
        if isinstance(v, NamespacedValidator) and v.validator_for(key) is None:
            return False
        if held is None or held.value == new:
            return False
        try:
            v.validate(key, held.value)
        except InvalidRecord:
            return False
        return v.select(key, [new, held.value]) != 0

    def check_size(self, key: bytes, value: bytes) -> None:
        cfg = self.config
        if len(value) > cfg.max_value_size:
            raise ValueTooLarge(
                f"record value of {len(value)} bytes is above the limit of {cfg.max_value_size} bytes: "
                f"a GET_VALUE answer carrying it must fit in a {cfg.max_message_size}-byte kad message "
                f"(rust-libp2p's limit)")
        if len(key) > cfg.max_key_size:
            raise ValueTooLarge(f"record key of {len(key)} bytes is above the limit of {cfg.max_key_size} bytes")
