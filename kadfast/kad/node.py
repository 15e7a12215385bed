"""The Kademlia node: ``/ipfs/kad/1.0.0`` server and client, iterative
queries, records, providers, bootstrap, maintenance and events.

The network is a :class:`kadfast.net.Host`; the routing table, the store, the
codec, the validators, the lookup state machine and the server's answers
(:class:`kadfast.kad.server.KadServer`) are the sans-IO parts: the node's
``serve_stream`` reads the inbound kad streams and writes what the server answers.
Maintenance is one step function, :meth:`KadNode.maintenance`, driven by a
periodic task in production and by a fake clock in tests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, Protocol

from .. import _routing
from .._xor import Key
from ..addrbook import ip_prefix, is_public
from ..errors import (
    KadError,
    KadfastError,
    NoKnownPeers,
    NotFound,
    QuorumFailed,
    StoreError,
    ValueTooLarge,
)
from ..keys import Ed25519KeyPair
from ..multiaddr import Multiaddr
from ..net import ConnectionClosed, Host, HostConfig, PeerIdentified, ProtocolNotSupported, StreamReset
from ..peerid import PeerId
from ..store import MemoryStore, ProviderRecord, Record, RecordStore
from .config import HOUR, PROTOCOL, Config, Quorum  # noqa: F401 - HOUR, PROTOCOL: their old home
from .events import InboundRequest, QueryProgressed, RecordExpired, RecordStored, RoutingUpdated, UnroutablePeer
from .maintenance import MaintenanceSchedule
from .pb import (
    ConnectionType,
    KadMessage,
    KadPeer,
    KadRecord,
    MessageReader,
    MessageType,
    decode_message,
    encode_message,
    frame,
)
from .query import QueryFinished, QueryPool, QueryStats, SendRequest
from .ratelimit import RateLimited
from .server import KadServer
from .validation import InvalidRecord, NamespacedValidator

log = logging.getLogger("kadfast.kad")
FIND_NODE = MessageType.FIND_NODE
#: :meth:`KadNode.update_peer`'s outcome when the change went to
#: :attr:`KadNode.routing_sync` (applied once the workers' hub hands it back)
QUEUED = 0


class RoutingSync(Protocol):
    """Where a worker's routing-table changes go (:mod:`kadfast.workers`)."""

    def publish(self, change: tuple) -> None: ...

__all__ = [
    "Config",
    "Quorum",
    "KadNode",
    "KadError",
    "NoKnownPeers",
    "QuorumFailed",
    "NotFound",
    "ValueTooLarge",
    "PeerRecord",
    "GetRecordResult",
    "RoutingUpdated",
    "UnroutablePeer",
    "InboundRequest",
    "QueryProgressed",
    "RecordStored",
    "RecordExpired",
]

#: PeerId -> Key entries kept before the memo starts over
MAX_KEY_CACHE = 16384


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A record and the peer that held it (None: our own store)."""

    peer: PeerId | None
    record: Record


@dataclass(frozen=True, slots=True)
class GetRecordResult:
    records: list[PeerRecord]
    #: the validator's pick among the values found (the first when no selector applies)
    best: Record
    stats: QueryStats


def random_peer_id_in_bucket(local: Key, bucket: int, tries: int = 64) -> PeerId | None:
    """A random (key-less) Ed25519-shaped PeerId whose key falls in ``bucket``
    of ``local``; None when ``tries`` attempts miss (low buckets are tiny)."""
    for _ in range(tries):
        pid = PeerId(bytes.fromhex("002408011220") + os.urandom(32))
        if local.bucket_index(Key(pid.to_bytes())) == bucket:
            return pid
    return None


class _HeldBytes:
    """Request bytes held by the kad server: per connection and in total."""

    __slots__ = ("total", "by_conn")

    def __init__(self) -> None:
        self.total = 0
        self.by_conn: dict[Any, int] = {}

    def add(self, conn, n: int) -> int:
        """Count ``n`` more (or fewer) bytes for ``conn``; its new count."""
        self.total += n
        v = self.by_conn.get(conn, 0) + n
        if v > 0:
            self.by_conn[conn] = v
        else:
            self.by_conn.pop(conn, None)
        return v


def _still_running(round_: asyncio.Task | None, what: str) -> bool:
    """Whether the previous round of ``what`` still runs (the new one is then skipped)."""
    if round_ is None or round_.done():
        return False
    log.info("the previous %s round is still running; this one is skipped", what)
    return True


def _log_serve_end(peer: PeerId, fut: asyncio.Future) -> None:
    """How an inline kad stream from ``peer`` ended: logged (and the future's
    exception retrieved) when bad input or a reset ended it. A reset is the
    peer's right (a cancelled request) and logged at DEBUG only."""
    if fut.cancelled():
        return
    exc = fut.exception()
    # a refusal (rate limit, quota, full store) was logged when it was made (KadServer._refused)
    if isinstance(exc, StreamReset) or getattr(exc, "kad_logged", False):
        log.debug("kad stream from %s reset: %s", peer, exc)
    elif exc is not None:  # the stream was reset because of it
        log.info("kad stream from %s: bad input: %s: %s", peer, type(exc).__name__, exc)


class _Lookup:
    """The node's side of one query of its pool: what to send, the hook,
    the future the waiting _iterate awaits, the requests in flight."""

    __slots__ = ("kind", "key", "msg", "on_reply", "future", "requests")

    def __init__(self, kind: str, key: bytes, msg: KadMessage, on_reply, future: asyncio.Future) -> None:
        self.kind = kind
        self.key = key
        self.msg = msg
        self.on_reply = on_reply
        self.future = future
        self.requests: dict[asyncio.Task, PeerId] = {}


class KadNode:
    """A Kademlia DHT node over a libp2p host.

    The node builds its :class:`Host` from ``keypair`` and ``host_config`` on
    ``clock`` (default :func:`time.monotonic`), or is handed one (``host=``)
    and runs on that host's clock. That one clock reaches the address book,
    the connections, the rate limits and the node's own timers.
    """

    def __init__(
        self,
        keypair: Ed25519KeyPair | None = None,
        config: Config | None = None,
        *,
        host_config: HostConfig | None = None,
        store: RecordStore | None = None,
        validator: NamespacedValidator | None = None,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        host: Host | None = None,
    ) -> None:
        self.config = config or Config()
        if host is None:
            clock = clock or time.monotonic
            host = Host(keypair, host_config or HostConfig(), clock=clock)
        else:
            # a node handed its host runs on the host's clock: one clock from
            # the top reaches the address book, the connections and the node
            if keypair is not None or host_config is not None:
                raise ValueError("a node handed a host takes its keypair and config from the host")
            if clock is not None and clock is not host.clock:
                raise ValueError("the node and its host must run on one clock (pass it to the Host)")
            clock = host.clock
        self.host = host
        self.peer_id = self.host.peer_id
        self.local_key = Key(self.peer_id.to_bytes())
        self.table = _routing.RoutingTable(self.local_key, k=self.config.k, pending_timeout=self.config.pending_timeout)
        # a full address book never evicts the addresses of routing-table
        # peers (floods of lookup-learned addresses must not push them out)
        self.host.addrbook.keep = lambda peer: self._key(peer) in self.table
        self.host.keep = self.host.addrbook.keep  # nor does the connection manager prune their connections
        # PeerId -> its Kademlia key: every request, reply and routing event
        # needs it, and a SHA-256 per use adds up on the server's hot path
        self._keys: dict[PeerId, Key] = {}
        #: where this node's routing-table changes go (a worker of ``kadfast
        #: server --workers N``: the workers' hub, which hands them back to
        #: every worker, this one too, in one order; see :mod:`kadfast.workers`);
        #: None: applied here at once
        self.routing_sync: RoutingSync | None = None
        self.store = store if store is not None else MemoryStore(self.peer_id, self.config.store)
        # a store with group commit (SqliteStore(group_commit=True)): changes
        # are committed once the loop has handled the requests at hand, and
        # replies that could depend on them (all but FIND_NODE's) wait for it
        self._group_commit = self.store.group_commit
        self._commit_scheduled = False
        self._commit_waiters: list = []   # flush(ok) of streams whose replies wait
        if self._group_commit:
            self.store.on_dirty = self._commit_soon
        self.validator = validator or NamespacedValidator(wall_clock=wall_clock)
        self.clock = clock
        self.wall_clock = wall_clock
        self._subscribers: list[asyncio.Queue] = []
        # the subscribers that want an InboundRequest per request served
        self._request_subscribers: list[asyncio.Queue] = []
        self._tasks: set[asyncio.Task] = set()
        self._maint_task: asyncio.Task | None = None
        #: every lookup of the node: one pool, driven by _drive_queries (after
        #: each answer, and by one timer at the pool's next deadline)
        self.queries = QueryPool(self.config.max_queries)
        self._query_timer: asyncio.TimerHandle | None = None
        self._query_timer_at: float | None = None
        self._started = False
        #: when each periodic maintenance job last ran; see maintenance()
        self.schedule = MaintenanceSchedule(self.config)
        self._replication_round: asyncio.Task | None = None
        self._provider_round: asyncio.Task | None = None
        self._published: dict[bytes, float] = {}  # key -> last (re)publish time
        # inbound kad streams open now -> when their last whole request came
        # (their start at first), for kad_stream_idle_timeout
        self._kad_streams: dict[Any, float] = {}
        # request bytes held (unfinished and held messages), per connection
        # and in total; the inbound kad streams holding an unfinished message
        # and since when (kad_message_timeout); answers queued on all
        # connections at the last maintenance step
        self._held = _HeldBytes()
        self._partial: dict[Any, float] = {}
        self.queued_output_bytes = 0
        self._output_over_budget = False
        # table keys admitted per IP group (pruned of keys that left the
        # table when counted), for the diversity limits
        self._group_members: dict[str, set[Key]] = {}
        self.server_mode = False
        self.dropped_events = 0
        host = self.host
        #: the kad server (sans-IO): answers the requests that serve_stream reads,
        #: owns the reply cache, the withheld peers, the rate limits, the
        #: store quotas and the record-acceptance rules
        self.server = KadServer(
            self.config, self.peer_id, self.table, host.addrbook, self.store, self.validator,
            connection=host.connection, conn_epoch=lambda: host.conn_epoch, own_addrs=host.announce_addrs,
            wall_clock=wall_clock, key_of=self._key, on_event=self._emit)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        if self._group_commit:
            self.store.commit()   # changes made before the loop ran (none scheduled their commit)
        await self.host.start()
        mode = self.config.mode
        if mode not in ("auto", "server", "client"):
            raise ValueError("mode must be auto, server or client")
        if self.config.unvalidated_records not in ("owner", "accept", "refuse"):
            raise ValueError("unvalidated_records must be owner, accept or refuse")
        self.server.rebuild_quotas(self.clock())
        self.server_mode = mode == "server" or (
            mode == "auto" and bool(self.host.listen_addrs or self.host.config.external_addrs)
        )
        if self.server_mode:
            self.host.set_stream_handler(self.config.protocol, self.serve_stream, inline=True)
        self.host.add_listener(self._on_host_event)
        self._started = True
        loop = asyncio.get_running_loop()
        self._maint_task = loop.create_task(self._maintain())

    async def stop(self) -> None:
        self.host.remove_listener(self._on_host_event)
        for t in (self._maint_task, *self._tasks):
            if t is not None:
                t.cancel()
        # the lookups still waited for (by callers outside the node's tasks)
        # end with an error; their requests were among the tasks cancelled
        for qid in self.queries.ids():
            q = self.queries.get(qid)
            self.queries.cancel(qid)
            if q is not None and not q.info.future.done():
                q.info.future.set_exception(KadError("the node stopped"))
                q.info.future.exception()   # read: a waiter cancelled meanwhile never will
        self._cancel_query_timer()
        await asyncio.gather(*[t for t in (self._maint_task, *self._tasks) if t], return_exceptions=True)
        if self._group_commit:
            self.commit()
        await self.host.close()

    async def __aenter__(self) -> "KadNode":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def tasks(self) -> frozenset[asyncio.Task]:
        """The node's tasks still running (lookup requests, rounds, what
        :meth:`spawn` started): :meth:`stop` cancels them."""
        return frozenset(self._tasks)

    @property
    def replication_round(self) -> asyncio.Task | None:
        """The task of the last replication round (running or done), if any."""
        return self._replication_round

    @property
    def provider_round(self) -> asyncio.Task | None:
        """The task of the last provider republication round, if any."""
        return self._provider_round

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        return self.host.listen_addrs

    def spawn(self, coro, *, quiet: bool = False) -> asyncio.Task:
        """Run ``coro`` as a task of the node: :meth:`stop` cancels it. With
        ``quiet``, a Kademlia or store error it ends with is logged at DEBUG
        (a background bootstrap that found nobody, say) instead of raised."""
        return self._spawn(self._quietly(coro) if quiet else coro)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- events --------------------------------------------------------------
    def subscribe(self, inbound_requests: bool = True) -> asyncio.Queue:
        """A bounded queue of this node's events. ``inbound_requests=False``
        leaves out the InboundRequest event of every request served: a
        subscriber that wakes per request costs a busy server a good part of
        its CPU (counts by type are in :attr:`request_counts`)."""
        q: asyncio.Queue = asyncio.Queue(self.config.event_queue_size)
        self._subscribers.append(q)
        if inbound_requests:
            self._request_subscribers.append(q)
            self.server.on_request = self._emit_request
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        for subs in (self._subscribers, self._request_subscribers):
            if q in subs:
                subs.remove(q)
        if not self._request_subscribers:
            self.server.on_request = None

    async def events(self, inbound_requests: bool = True) -> AsyncIterator[Any]:
        """An async iterator over this node's events (from the moment it is called)."""
        q = self.subscribe(inbound_requests)
        try:
            while True:
                yield await q.get()
        finally:
            self.unsubscribe(q)

    def _emit_request(self, event: InboundRequest) -> None:
        self._emit(event, self._request_subscribers)

    @property
    def request_counts(self) -> dict[MessageType, int]:
        """Inbound kad requests served since start, by message type (at most
        six keys: the codec refuses other types); what `kadfast server`
        reports; an event per request costs far more."""
        return self.server.request_counts

    def _emit(self, event, subscribers: list | None = None) -> None:
        for q in self._subscribers if subscribers is None else subscribers:
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped_events += 1

    # -- routing table -----------------------------------------------------------
    def _key(self, peer: PeerId) -> Key:
        key = self._keys.get(peer)
        if key is None:
            if len(self._keys) >= MAX_KEY_CACHE:
                self._keys.clear()
            key = self._keys[peer] = Key(peer.to_bytes())
        return key

    def add_address(self, peer: PeerId, addr: Multiaddr | str) -> int:
        """Add a known peer (a bootstrap node) with its address to the routing
        table, as rust's ``Behaviour::add_address`` does."""
        addr = Multiaddr(addr) if isinstance(addr, str) else addr
        now = self.clock()
        self.host.addrbook.add(peer, [addr], now, source="config")
        self.server.heard_from(self._key(peer))
        return self.update_peer(peer, now, connected=False)

    def update_peer(self, peer: PeerId, now: float, connected: bool) -> int:
        """Tell the routing table that ``peer`` was seen at ``now``: it
        answered or called (``connected``), or a request to it failed (not
        connected). A new peer enters only if its bucket and its IP group
        have room; the table's outcome (``kadfast._routing`` INSERTED,
        UPDATED, PENDING, FULL, SELF ...)."""
        if peer == self.peer_id:
            return _routing.SELF
        key = self._key(peer)
        # the IP group is known where the connection is: here
        group = None if key in self.table else self._ip_group_of(peer, now)
        sync = self.routing_sync
        if sync is not None:
            sync.publish(("up", peer, connected, tuple(self.host.addrbook.addrs(peer, now)), group))
            return QUEUED
        return self._apply_update(peer, key, now, connected, group, True)

    def _apply_update(self, peer: PeerId, key: Key, now: float, connected: bool, group: str | None,
                      origin: bool) -> int:
        """:meth:`update_peer`'s change to the routing table, here or (with
        :attr:`routing_sync`) in every worker in the same order; ``origin``:
        this process saw the peer (it alone probes a full bucket's head)."""
        if connected:
            self.server.heard_from(key)
        known = key in self.table
        if known:
            group = None
        else:
            if group is not None and self._group_is_full(group, key):
                log.debug("%s not added to the routing table: its IP group %s has its share", peer, group)
                return _routing.FULL
        res = self.table.update(key, peer, now, connected)
        if group is not None and res in (_routing.INSERTED, _routing.PENDING):
            members = self._group_members.setdefault(group, set())
            members.add(key)
            self.server.note_group(key, group, len(members))
        for applied in self.table.pop_applied():
            self._emit_routing(applied.inserted.value, True, applied.evicted.value if applied.evicted else None)
        if res == _routing.INSERTED or (res == _routing.UPDATED and not known):
            self._emit_routing(peer, True, None)
        elif res == _routing.PENDING and not known:
            # the bucket is full: check whether its least recently seen entry is alive
            bucket = self.local_key.bucket_index(key)
            head = self.table.bucket(bucket)
            if origin and head and not head[0].connected and self._started:
                self._spawn(self._probe(head[0].value))
        elif res == _routing.FULL:
            self._emit(UnroutablePeer(peer))
        return res

    def _ip_group_of(self, peer: PeerId, now: float) -> str | None:
        """The IP group a newcomer counts under for the diversity limits (see
        ``Config.max_peers_per_ip_group``), or None when exempt or unknown."""
        cfg = self.config
        if not (cfg.max_peers_per_ip_group or cfg.max_peers_per_ip_group_per_bucket
                or cfg.max_answer_peers_per_ip_group):
            return None
        conn = self.host.connection(peer)
        addrs = [conn.remote_addr] if conn is not None and conn.remote_addr is not None else []
        for addr in (*addrs, *self.host.addrbook.addrs(peer, now)):
            ip = addr.value_for("ip4") or addr.value_for("ip6")
            if ip:
                if not (cfg.ip_group_limits_everywhere or is_public(addr)):
                    return None  # loopback, private and special ranges: exempt
                return ip_prefix(ip, 16, 32)
        return None

    def _group_is_full(self, group: str, key: Key) -> bool:
        cfg = self.config
        members = self._group_members.get(group)
        if not members:
            return False
        live = {k for k in members if k in self.table}
        if live:
            self._group_members[group] = live
        else:
            del self._group_members[group]
        if cfg.max_peers_per_ip_group and len(live) >= cfg.max_peers_per_ip_group:
            return True
        per_bucket = cfg.max_peers_per_ip_group_per_bucket
        if per_bucket:
            bucket = self.local_key.bucket_index(key)
            return sum(1 for k in live if self.local_key.bucket_index(k) == bucket) >= per_bucket
        return False

    def _emit_routing(self, peer: PeerId, is_new: bool, evicted: PeerId | None) -> None:
        addrs = tuple(self.host.addrbook.addrs(peer, self.clock()))
        self._emit(RoutingUpdated(peer, addrs, is_new, self.local_key.bucket_index(self._key(peer)), evicted))

    async def _probe(self, peer: PeerId) -> None:
        try:
            await self.request(peer, KadMessage(MessageType.FIND_NODE, key=self.peer_id.to_bytes()))
        except Exception:
            pass

    def _on_host_event(self, ev) -> None:
        """Host events, synchronously (a queue could drop them in bursts):
        identify feeds the routing table, closed connections mark entries."""
        if isinstance(ev, PeerIdentified):
            if self.config.protocol in ev.info.protocols:
                self.update_peer(ev.peer_id, self.clock(), connected=True)
            elif self._key(ev.peer_id) in self.table:
                # it stopped serving kad (e.g. became a client)
                self.remove_peer(ev.peer_id)
        elif isinstance(ev, ConnectionClosed):
            if self.host.connection(ev.peer_id) is None:
                self._mark_disconnected(ev.peer_id)

    def _mark_disconnected(self, peer: PeerId) -> None:
        """Mark a known entry disconnected; never inserts. Due pending entries
        are applied first, so that update() cannot evict this very entry and
        then bring it back as a new one."""
        now = self.clock()
        self.table.apply_pending(now)
        for applied in self.table.pop_applied():
            self._emit_routing(applied.inserted.value, True, applied.evicted.value if applied.evicted else None)
        if self._key(peer) in self.table:
            self.update_peer(peer, now, connected=False)

    def _mark_unreachable(self, key: Key) -> None:
        """A request to this table entry failed: it stays in the table but
        answers leave it out until it is heard from again (KadServer.withhold)."""
        sync = self.routing_sync
        if sync is not None:
            entry = self.table.get(key)
            if entry is not None:
                sync.publish(("withhold", entry.value))
            return
        self.server.withhold(key)

    def remove_peer(self, peer: PeerId) -> None:
        """Take ``peer`` out of the routing table (it stopped serving kad)."""
        sync = self.routing_sync
        if sync is not None:
            sync.publish(("remove", peer))
        else:
            self.table.remove(self._key(peer))

    def mark_unreachable(self, peer: PeerId) -> None:
        """A request to ``peer`` failed: its entry stays, left out of answers
        until the peer is heard from again."""
        self._mark_unreachable(self._key(peer))

    def routing_snapshot(self) -> list[tuple]:
        """The routing table as ``("up", ...)`` changes that rebuild it in
        another worker (:meth:`apply_routing_change`), oldest seen first in
        each bucket, as the table keeps them."""
        groups = {k: g for g, members in self._group_members.items() for k in members}
        now = self.clock()
        addrs = self.host.addrbook.addrs
        return [("up", e.value, e.connected, tuple(addrs(e.value, now)), groups.get(self._key(e.value)))
                for e in self.table]

    def apply_routing_change(self, change: tuple, origin: bool) -> None:
        """Apply a routing-table change published through
        :attr:`routing_sync` (by this process or another worker), in the
        order the workers' hub gave it: ``("up", peer, connected, addrs,
        group)``, ``("remove", peer)`` or ``("withhold", peer)``."""
        kind, peer = change[0], change[1]
        if peer == self.peer_id:
            return
        key = self._key(peer)
        if kind == "up":
            _, _, connected, addrs, group = change
            now = self.clock()
            if addrs and not origin:
                self.host.addrbook.add(peer, addrs, now, source="worker")
            self._apply_update(peer, key, now, connected, group, origin)
        elif kind == "remove":
            self.table.remove(key)
        elif kind == "withhold":
            if key in self.table:
                self.server.withhold(key)
        else:
            raise ValueError(f"unknown routing change {kind!r}")

    def routing_table_peers(self) -> list[PeerId]:
        return [e.value for e in self.table]

    # -- group commit ----------------------------------------------------------------
    def _commit_soon(self) -> None:
        """The store has uncommitted changes: commit them once the loop has
        handled the I/O at hand (``call_soon`` runs after this iteration's
        read callbacks, so one commit covers every request they carried)."""
        if self._commit_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a store changed before start): the next commit takes it
            return
        self._commit_scheduled = True
        loop.call_soon(self.commit)

    @property
    def replies_waiting_for_commit(self) -> int:
        """Streams whose replies wait for the group commit of the store."""
        return len(self._commit_waiters)

    def commit(self) -> None:
        """Commit the store now (the node does so once per loop pass after
        a change), then release the replies that waited for it (or
        reset their streams if the commit failed: nothing is acknowledged
        that is not on disk)."""
        self._commit_scheduled = False
        waiters, self._commit_waiters = self._commit_waiters, []
        ok = True
        try:
            self.store.commit()
        except StoreError:
            log.exception("the record store failed to commit; resetting the %d streams waiting on it", len(waiters))
            ok = False
        for flush in waiters:
            flush(ok)

    # -- server side ---------------------------------------------------------------
    def serve_stream(self, stream) -> None:
        """The kad server of one inbound stream, inline (no task): called in
        the connection's read callback once the protocol is negotiated."""
        # per-connection count of open kad streams, uncounted when a stream ends
        limit = self.config.max_inbound_kad_streams_per_connection
        if limit and not stream.conn.count_inbound(stream, limit):
            log.info("%s opened more than %d kad streams on one connection; resetting one", stream.peer_id, limit)
            stream.reset()
            return
        reader = MessageReader(self.config.max_message_size)
        peer = stream.peer_id
        handle = self.server.handle
        clock = self.clock
        active = self._kad_streams
        active[stream] = clock()
        remote_addr = stream.conn.remote_addr
        store = self.store
        group = self._group_commit
        # with group commit: this stream's replies (and its close) that wait
        # for the store's commit, in order; None when nothing waits
        held: list | None = None

        def flush(ok: bool) -> None:
            nonlocal held
            items, held = held, None
            try:
                if not ok:
                    stream.reset()
                    return
                assert items is not None  # flush runs once per hold
                for item in items:
                    if item is None:
                        stream.close()
                    else:
                        stream.write(item)
            except Exception as exc:  # the stream or its connection ended meanwhile
                log.debug("held kad replies to %s not sent: %r", peer, exc)

        conn = stream.conn
        cap = self.config.max_queued_reply_bytes
        held_cap = self.config.max_held_request_bytes
        # requests held back while answers pile up (see max_queued_reply_bytes);
        # None in the list stands for the peer's end of stream
        backlog: deque = deque()
        backlog_bytes = 0

        def answer(body: bytes) -> None:
            nonlocal held
            msg = decode_message(body)
            reply = handle(peer, msg, clock(), remote_addr, True)
            if reply is not None:
                out = reply if reply.__class__ is bytes else frame(encode_message(reply))  # type: ignore[arg-type]
                # FIND_NODE neither reads nor changes the store: while
                # other requests' changes wait for the commit it is still
                # answered at once, unless this stream already waits
                if held is None and not (group and store.dirty and msg.type != FIND_NODE):
                    stream.write(out)
                else:  # acknowledged only once the change is on disk
                    if held is None:
                        held = []
                        self._commit_waiters.append(flush)
                        self._commit_soon()
                    held.append(out)

        def end() -> None:
            stream.sink_finished()
            if held is None:
                stream.close()
            else:
                held.append(None)

        def pressed() -> bool:
            if self._output_over_budget:  # the process's queued answers are over budget
                return conn.queued_output() > 0 or stream.queued > 0
            return (cap and conn.queued_output() > cap) or stream.queued > 0

        budget = self._held
        partial = self._partial
        per_conn = self.config.max_request_bytes_per_connection
        total_cap = self.config.max_buffered_bytes
        counted = 0  # this stream's bytes counted in budget

        def account() -> None:
            # the request bytes this stream holds now, against the budgets
            nonlocal counted
            holding = reader.buffered + backlog_bytes
            delta = holding - counted
            if not delta:
                return
            counted = holding
            mine = budget.add(conn, delta)
            if reader.buffered:
                if stream not in partial:
                    partial[stream] = clock()
            elif partial:
                partial.pop(stream, None)
            if delta > 0:
                if per_conn and mine > per_conn:
                    raise RateLimited(f"{peer}'s kad streams hold {mine} bytes of requests on one connection "
                                      f"(max_request_bytes_per_connection {per_conn})")
                if total_cap and budget.total + self.queued_output_bytes > total_cap:
                    raise RateLimited(f"the kad server holds {budget.total + self.queued_output_bytes} bytes "
                                      f"(max_buffered_bytes {total_cap}); a request of {peer} is refused")

        def release(_) -> None:
            active.pop(stream, None)
            partial.pop(stream, None)
            if counted:
                budget.add(conn, -counted)

        def work() -> None:
            # answer held requests while the output allows; wait again if not
            nonlocal backlog_bytes
            while backlog:
                if pressed():
                    conn.when_output_drains(resume)
                    return
                body = backlog.popleft()
                if body is None:
                    end()
                    return
                backlog_bytes -= len(body)
                answer(body)
                account()

        def resume() -> None:
            # outside the read callback: an error resets the stream here
            try:
                work()
            except Exception as exc:
                if not isinstance(exc, StreamReset):
                    log.info("kad stream from %s: bad input: %s: %s", peer, type(exc).__name__, exc)
                stream.reset()

        def on_data(data: bytes) -> None:
            # runs inside the connection's read callback: every request of the
            # batch is answered and the replies leave in the same write, unless
            # answers pile up (then they wait, see work); an exception (bad
            # input) resets the stream
            nonlocal backlog_bytes
            if not data:
                reader.eof()
                if backlog:
                    backlog.append(None)
                else:
                    end()
                return
            bodies = reader.feed(data)
            if not bodies:
                account()
                return
            active[stream] = clock()
            waiting = bool(backlog)
            if not waiting and not pressed():
                i = 0
                for body in bodies:
                    answer(body)
                    i += 1
                    if i < len(bodies) and pressed():
                        break
                if i == len(bodies):
                    if counted or reader.buffered:
                        account()
                    return
                bodies = bodies[i:]
            backlog.extend(bodies)
            backlog_bytes += sum(len(b) for b in bodies)
            if backlog_bytes > held_cap:
                raise RateLimited(f"{peer} sent {backlog_bytes} bytes of kad requests without reading the answers")
            account()
            if not waiting:  # the first held request: wait for the output to drain
                conn.when_output_drains(resume)

        done = stream.consume_with(on_data)
        done.add_done_callback(functools.partial(_log_serve_end, peer))
        done.add_done_callback(release)

    # -- client side -----------------------------------------------------------------
    async def request(self, peer: PeerId, msg: KadMessage) -> KadMessage:
        """Send one kad request to ``peer`` and return its reply, on a fresh
        stream within the request timeout; the routing table learns the
        outcome. Raises :class:`KadError` on failure."""
        async def exchange():
            stream = await self.host.new_stream(peer, self.config.protocol)
            try:
                stream.write(frame(encode_message(msg)))
                body = await stream.read_message(self.config.max_message_size)
                stream.close()
            except BaseException:
                stream.reset()
                raise
            if body is None:
                raise KadError(f"{peer} closed the stream without a reply")
            return decode_message(body)

        try:
            # asyncio.timeout, not wait_for: no inner task whose late failure
            # would go unretrieved when a lookup cancels this request
            async with asyncio.timeout(self.config.request_timeout):
                reply = await exchange()
        except (KadfastError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            key = self._key(peer)
            if key in self.table:
                if isinstance(exc, ProtocolNotSupported):
                    self.remove_peer(peer)
                else:
                    self._mark_disconnected(peer)
                    if key in self.table:
                        self._mark_unreachable(key)
            raise KadError(f"request to {peer} failed: {type(exc).__name__}: {exc}") from exc
        self.update_peer(peer, self.clock(), connected=True)
        return reply

    async def _send_only(self, peer: PeerId, msg: KadMessage) -> None:
        """A request that gets no reply (ADD_PROVIDER): a fresh stream, closed after writing."""
        async def send():
            stream = await self.host.new_stream(peer, self.config.protocol)
            stream.write(frame(encode_message(msg)))
            await stream.drain()
            stream.close()
        async with asyncio.timeout(self.config.request_timeout):
            await send()

    def _learn_peers(self, peers: Iterable[KadPeer], now: float) -> list[tuple[Key, PeerId]]:
        out = []
        for p in peers:
            if p.peer_id == self.peer_id:
                continue
            if p.addrs:
                self.host.addrbook.add(p.peer_id, p.addrs, now, source="lookup")
            out.append((self._key(p.peer_id), p.peer_id))
        return out

    async def _iterate(self, kind: str, key: bytes, msg: KadMessage, on_reply=None, num_results=None,
                       repair: bool = False):
        """Run one iterative lookup in the node's query pool and wait for its
        end; ``on_reply(peer, reply, it)`` may call ``it.finish()``;
        ``repair`` allows the iterator's repair round (its requests are
        FIND_NODEs for the asked peer's own key, not ``msg``). Cancelling it
        cancels the query and its requests. Returns (closest succeeded
        peers, stats)."""
        cfg = self.config
        target = Key(key)
        now = self.clock()
        known = [(e.key, e.value) for e in self.table.closest(target, cfg.k)]
        if not known:
            raise NoKnownPeers("the routing table is empty; add a bootstrap address first")
        lookup = _Lookup(kind, key, msg, on_reply, asyncio.get_running_loop().create_future())
        qid = self.queries.add(
            target, known, now, k=cfg.k, parallelism=cfg.parallelism, num_results=num_results,
            request_timeout=cfg.request_timeout, query_timeout=cfg.query_timeout, repair=repair, info=lookup,
        )
        self._drive_queries()
        try:
            result, stats = await lookup.future
        finally:
            if self.queries.cancel(qid):   # still there only if this was cancelled
                self._arm_query_timer()
            pending = list(lookup.requests)
            for task in pending:
                task.cancel()
            if pending:  # collect them, so that no failure goes unretrieved
                await asyncio.gather(*pending, return_exceptions=True)
        self._emit(QueryProgressed(kind, key, stats, True, result))
        return result, stats

    def _drive_queries(self) -> None:
        """Carry out what the query pool says now: send its requests (each
        a request task of the node), resolve the lookups that ended; then set
        the one timer at the pool's next deadline."""
        queries = self.queries
        for action in queries.poll(self.clock()):
            if isinstance(action, SendRequest):
                q = queries.get(action.query_id)
                if q is None:
                    continue
                lookup: _Lookup = q.info
                peer = action.peer
                m = KadMessage(MessageType.FIND_NODE, key=peer.to_bytes()) if action.repair else lookup.msg
                task = self._spawn(self.request(peer, m))
                lookup.requests[task] = peer
                task.add_done_callback(functools.partial(self._on_request_done, action.query_id, lookup))
            elif isinstance(action, QueryFinished):
                lookup = action.info
                for task in lookup.requests:
                    task.cancel()
                if not lookup.future.done():
                    lookup.future.set_result((action.result, action.stats))
        self._arm_query_timer()

    def _on_request_done(self, qid: int, lookup: _Lookup, task: asyncio.Task) -> None:
        """A request of query ``qid`` ended: feed its outcome to the pool,
        call the lookup's on_reply, and drive the pool."""
        peer = lookup.requests.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()   # retrieved, whatever becomes of the query
        q = self.queries.get(qid)
        if q is None or peer is None or q.iter.finished:
            return   # the query ended: a late answer is ignored
        now = self.clock()
        try:
            if exc is None:
                reply = task.result()
                self.queries.on_success(qid, peer, self._learn_peers(reply.closer_peers, now), now)
                if lookup.on_reply is not None:
                    lookup.on_reply(peer, reply, q.iter)
            elif isinstance(exc, KadError):
                self.queries.on_failure(qid, peer, now)
            else:
                raise exc
        except Exception as err:  # not a failed request: the lookup fails with it
            self.queries.cancel(qid)
            for t in lookup.requests:
                t.cancel()
            if not lookup.future.done():
                lookup.future.set_exception(err)
        else:
            if self._subscribers:
                self._emit(QueryProgressed(lookup.kind, lookup.key, q.stats, False))
        self._drive_queries()

    def _arm_query_timer(self) -> None:
        deadline = self.queries.next_deadline()
        if deadline == self._query_timer_at:
            return
        self._cancel_query_timer()
        if deadline is not None:
            delay = max(0.001, deadline - self.clock())
            self._query_timer = asyncio.get_running_loop().call_later(delay, self._on_query_timer)
            self._query_timer_at = deadline

    def _cancel_query_timer(self) -> None:
        if self._query_timer is not None:
            self._query_timer.cancel()
        self._query_timer = None
        self._query_timer_at = None

    def _on_query_timer(self) -> None:
        self._query_timer = None
        self._query_timer_at = None
        self._drive_queries()

    # -- public operations ---------------------------------------------------------------
    async def get_closest_peers(self, key: bytes | PeerId) -> list[PeerId]:
        """The k peers closest to ``key`` (bytes, or a PeerId's bytes) that answered."""
        raw = key.to_bytes() if isinstance(key, PeerId) else bytes(key)
        peers, _ = await self._iterate("get_closest_peers", raw, KadMessage(MessageType.FIND_NODE, key=raw),
                                       repair=self.config.repair_lookups)
        return peers

    async def bootstrap(self) -> int:
        """Self-lookup, then a lookup of a random PeerId in every bucket
        farther than the closest non-empty one. Returns the routing-table size."""
        if len(self.table) == 0:
            raise NoKnownPeers("no known peers to bootstrap from; add a bootstrap address first")
        self.schedule.last_bootstrap = self.clock()
        await self.get_closest_peers(self.peer_id)
        buckets = self.table.nonempty_buckets()
        if buckets:
            targets = [random_peer_id_in_bucket(self.local_key, i) for i in range(buckets[0] + 1, 256)]
            # the bucket refreshes run side by side: one slow or dead peer
            # delays them all by one request timeout, not one per bucket
            await asyncio.gather(
                *[self.get_closest_peers(t) for t in targets if t is not None], return_exceptions=True
            )
        return len(self.table)

    async def find_peer(self, peer: PeerId) -> list[Multiaddr]:
        """Addresses of ``peer`` found through the DHT (or from a live connection)."""
        now = self.clock()
        if self.host.connection(peer) is not None:
            addrs = self.host.addrbook.addrs(peer, now)
            if addrs:
                return addrs
        found: list[Multiaddr] = []

        def on_reply(src, reply, it):
            for p in reply.closer_peers:
                if p.peer_id == peer and p.addrs:
                    found.extend(a for a in p.addrs if a not in found)
                    it.finish()

        raw = peer.to_bytes()
        await self._iterate("find_peer", raw, KadMessage(MessageType.FIND_NODE, key=raw), on_reply)
        if not found:
            raise NotFound(f"{peer} was not found")
        return found

    async def put_record(self, record: Record | tuple[bytes, bytes], quorum=Quorum.ONE) -> int:
        """Store ``record`` locally and on the k closest peers. Returns how
        many peers stored it; raises :class:`QuorumFailed` below the quorum,
        and :class:`InvalidRecord` for a record that its namespace refuses or
        that loses against the one held here (by the namespace's select)."""
        if isinstance(record, tuple):
            record = Record(record[0], record[1])
        need = Quorum.count(quorum, self.config.k)
        self.server.check_size(record.key, record.value)
        self.validator.validate(record.key, record.value)
        now = self.clock()
        if self.server.held_wins(record.key, record.value, self.store.get(record.key, now)):
            raise InvalidRecord(f"the record held for {record.key!r} is better than the one put (as go, it is kept)")
        record = Record(record.key, record.value, publisher=record.publisher or self.peer_id,
                        expires=record.expires or now + self.config.record_ttl)
        self.store.put(record, now)
        # the key is this node's own now: no peer's or network's quota counts it
        self.server.forget_record(record.key)
        if record.publisher == self.peer_id:
            self._published[record.key] = now
        stored = await self.replicate(record)
        if stored < need:
            raise QuorumFailed(record.key, stored, need)
        return stored

    async def _a_few_at_a_time(self, keys: list[bytes], work) -> int:
        """A replication or provider republication round: ``work(key)`` for
        each key, ``max_concurrent_replications`` at a time (not one task per
        key: a store of 100,000 records would start 100,000 lookups at once).
        Returns how many keys were worked on without an error."""
        pending = iter(keys)
        done = 0

        async def worker() -> None:
            nonlocal done
            for key in pending:
                try:
                    if await work(key) is not None:
                        done += 1
                except (KadError, StoreError) as exc:
                    log.debug("%s %r: %s", getattr(work, "__name__", work), key, exc)

        await asyncio.gather(*[worker() for _ in range(max(1, min(len(keys), self.config.max_concurrent_replications)))])
        return done

    async def _replicate_held(self, key: bytes) -> int | None:
        """Replicate the record held for ``key``; None if it is gone (expired
        or removed since the round began)."""
        rec = self.store.get(key, self.clock())
        return None if rec is None else await self.replicate(rec)

    async def replicate(self, record: Record) -> int:
        """Put ``record`` to the k peers closest to its key (what the
        replication rounds do for each record held); how many took it."""
        try:
            peers = await self.get_closest_peers(record.key)
        except NoKnownPeers:
            return 0
        kr = KadRecord(record.key, record.value, publisher=record.publisher)
        msg = KadMessage(MessageType.PUT_VALUE, key=record.key, record=kr)

        async def put_one(peer):
            reply = await self.request(peer, msg)
            return reply.record is not None and reply.record.key == record.key and reply.record.value == record.value

        results = await asyncio.gather(*[put_one(p) for p in peers], return_exceptions=True)
        return sum(1 for r in results if r is True)

    async def get_record(self, key: bytes, quorum: int = 1) -> GetRecordResult:
        """Records for ``key``: the local one (if any) and those held by peers,
        each with the peer that held it; stops once ``quorum`` were found."""
        now = self.clock()
        found: list[PeerRecord] = []
        local = self.store.get(key, now)
        if local is not None:
            try:  # it was valid when stored; an IPNS record may have expired since
                self.validator.validate(key, local.value)
                found.append(PeerRecord(None, local))
            except InvalidRecord as exc:
                log.debug("the record held for %r is no longer valid: %s", key, exc)

        def on_reply(peer, reply, it):
            rec = reply.record
            if rec is None or rec.key != key or len(found) >= quorum:
                return
            try:
                self.validator.validate(rec.key, rec.value)
            except InvalidRecord as exc:
                log.info("invalid record for %r from %s: %s", key, peer, exc)
                return
            found.append(PeerRecord(peer, Record(rec.key, rec.value, publisher=rec.publisher)))
            if len(found) >= quorum:
                it.finish()

        stats = QueryStats()
        if len(found) < quorum:
            try:
                _, stats = await self._iterate("get_record", key, KadMessage(MessageType.GET_VALUE, key=key), on_reply)
            except NoKnownPeers:
                if not found:
                    raise
        if not found:
            raise NotFound(f"no record found for {key!r}")
        values = [pr.record.value for pr in found]
        best = found[self.validator.select(key, values)].record
        # as go: the peers that answered with a worse record get the best one
        outdated = [pr.peer for pr in found if pr.peer is not None and pr.record.value != best.value]
        if outdated:
            self._spawn(self._correct_peers(best, outdated[: self.config.k]))
        return GetRecordResult(found, best, stats)

    async def _correct_peers(self, best: Record, peers: list[PeerId]) -> None:
        """PUT_VALUE ``best`` to ``peers`` (at most k, each within the
        request timeout); failures are logged at debug."""
        kr = KadRecord(best.key, best.value, publisher=best.publisher)
        msg = KadMessage(MessageType.PUT_VALUE, key=best.key, record=kr)
        results = await asyncio.gather(*[self.request(p, msg) for p in peers], return_exceptions=True)
        for peer, res in zip(peers, results):
            if isinstance(res, BaseException):
                log.debug("correcting the record %r held by %s failed: %s", best.key, peer, res)

    def remove_record(self, key: bytes) -> Record | None:
        self._published.pop(key, None)
        self.server.forget_record(key)
        return self.store.remove(key)

    async def provide(self, key: bytes) -> int:
        """Announce this node as a provider of ``key`` to the k closest peers.
        Returns to how many peers the announcement was sent: ADD_PROVIDER
        has no answer, so a peer that ignored it (over a quota of its own,
        or with its store full) counts as well; only peers that could not
        be reached, or did not take the request within the request timeout,
        do not. Check with :meth:`get_providers`."""
        now = self.clock()
        self.store.add_provider(ProviderRecord(key, self.peer_id, (), now + self.config.provider_ttl), now)
        return await self.announce_provider(key)

    async def announce_provider(self, key: bytes) -> int:
        """Send ADD_PROVIDER for ``key`` (this node) to its k closest peers,
        as :meth:`provide` and the provider republication rounds do; to how
        many it was sent."""
        peers = await self.get_closest_peers(key)
        me = KadPeer(self.peer_id, self.host.announce_addrs(), ConnectionType.CONNECTED)
        msg = KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=[me])
        results = await asyncio.gather(*[self._send_only(p, msg) for p in peers], return_exceptions=True)
        return sum(1 for r in results if not isinstance(r, BaseException))

    async def get_providers(self, key: bytes, count: int | None = None) -> dict[PeerId, list[Multiaddr]]:
        """Providers of ``key`` with their addresses (this node included when
        it provides it); stops early once ``count`` are known."""
        now = self.clock()
        found: dict[PeerId, list[Multiaddr]] = {}
        for rec in self.store.providers(key, now):
            found[rec.provider] = list(self.host.announce_addrs() if rec.provider == self.peer_id else
                                       self.host.addrbook.addrs(rec.provider, now) or rec.addrs)

        def on_reply(peer, reply, it):
            t = self.clock()
            for p in reply.provider_peers:
                if p.addrs and p.peer_id != self.peer_id:
                    self.host.addrbook.add(p.peer_id, p.addrs, t, source="provider")
                found.setdefault(p.peer_id, list(p.addrs))
            if count is not None and len(found) >= count:
                it.finish()

        if count is None or len(found) < count:
            try:
                await self._iterate("get_providers", key, KadMessage(MessageType.GET_PROVIDERS, key=key), on_reply)
            except NoKnownPeers:
                if not found:
                    raise
        return found

    # -- maintenance -------------------------------------------------------------------
    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.maintenance_period)
            try:
                await self.maintenance(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance step failed")

    async def maintenance(self, now: float) -> None:
        """One maintenance step at time ``now``: apply due pending routing
        entries, expire records and providers, and start the periodic
        bootstrap, replication and republication when they are due (what is
        due: :attr:`schedule`, a :class:`~kadfast.kad.maintenance.MaintenanceSchedule`)."""
        cfg = self.config
        due = self.schedule.due(now, unfinished_messages=bool(self._partial), table_peers=len(self.table))
        if due.idle_streams_before is not None:
            self._reset_idle_kad_streams(due.idle_streams_before)
        if due.unfinished_before is not None:
            self._reset_unfinished_kad_messages(due.unfinished_before)
        self._measure_output()
        self.table.apply_pending(now)
        for applied in self.table.pop_applied():
            self._emit_routing(applied.inserted.value, True, applied.evicted.value if applied.evicted else None)
        if due.sweep:
            # the diversity counts forget the keys that left the table
            self._group_members = {
                g: live for g, members in self._group_members.items() if (live := {k for k in members if k in self.table})}
            self.server.regroup(self._group_members)
            expired_keys, _ = self.store.sweep_keys(now)
            for k in expired_keys:
                self._published.pop(k, None)
                self.server.forget_record(k)
                self._emit(RecordExpired(k))
            self.server.sweep_providers(now)
        if due.bootstrap:
            self._spawn(self._quietly(self.bootstrap()))
        if due.replication and not _still_running(self._replication_round, "replication"):
            for rec in self.store.published_by(self.peer_id):
                if now - self._published.get(rec.key, now) >= cfg.republish_interval:
                    self._published[rec.key] = now
                    rec.expires = now + cfg.record_ttl
                    self.store.put(rec, now)  # stores may hand out copies
            keys = self.store.record_keys()
            self._replication_round = self._spawn(self._a_few_at_a_time(keys, self._replicate_held))
        if due.provider_republish and not _still_running(self._provider_round, "provider republication"):
            keys = []
            for prov in self.store.provided():
                prov.expires = now + cfg.provider_ttl
                self.store.add_provider(prov, now)
                keys.append(prov.key)
            self._provider_round = self._spawn(self._a_few_at_a_time(keys, self.announce_provider))

    def _reset_idle_kad_streams(self, before: float) -> None:
        """Reset the inbound kad streams whose last whole request (or start)
        was before ``before``: a stream that idles or trickles holds memory
        and keeps its connection from ever being idle."""
        idle = [st for st, last in self._kad_streams.items() if last < before]
        for st in idle:
            log.debug("kad stream from %s idle for over %.0f s; resetting", st.peer_id, self.config.kad_stream_idle_timeout)
            self._kad_streams.pop(st, None)
            st.reset()  # sends the RST (the connection flushes it)

    def _reset_unfinished_kad_messages(self, before: float) -> None:
        """Reset the inbound kad streams holding a message begun before
        ``before`` and still unfinished (kad_message_timeout)."""
        late = [st for st, since in self._partial.items() if since < before]
        for st in late:
            log.debug("kad stream from %s holds a message unfinished for over %.0f s; resetting",
                      st.peer_id, self.config.kad_message_timeout)
            self._partial.pop(st, None)
            st.reset()

    def _measure_output(self) -> None:
        """Count the answers queued on every connection (for max_buffered_bytes)."""
        total = 0
        for c in self.host.open_connections():
            total += c.queued_output()
        self.queued_output_bytes = total
        cap = self.config.max_buffered_bytes
        over = bool(cap) and total + self._held.total > cap
        if over and not self._output_over_budget:
            log.warning("the kad server holds %d bytes of queued answers and %d of requests, over "
                        "max_buffered_bytes (%d): only connections whose output drained are answered",
                        total, self._held.total, cap)
        self._output_over_budget = over

    def buffered_bytes(self) -> dict[str, int]:
        """What the kad server holds for its peers: request bytes (unfinished
        and held messages) and answers queued on connections (as of the last
        maintenance step)."""
        return {"requests": self._held.total, "output": self.queued_output_bytes}

    async def _quietly(self, coro) -> None:
        try:
            await coro
        except (KadError, StoreError) as exc:
            log.debug("background task: %s", exc)
