"""One libp2p connection over TCP: an ``asyncio.Protocol`` over the sans-IO
:class:`~kadfast.net.upgrade.ConnectionCore` (the upgrade, the Yamux session,
the negotiation of streams and their deadlines).

Every ``data_received`` call hands the bytes to the core, which decrypts all
complete Noise frames and parses all complete Yamux frames in one pass;
their events feed the :class:`Stream` objects, and whatever the core
produced leaves in one ``transport.write``. Writes made by application tasks
between two callbacks are batched by one ``call_soon``. The core's deadlines
are kept by one loop timer, armed for the earliest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

from ..errors import KadfastError, ProtocolNotSupported
from ..multiaddr import Multiaddr
from .stream import Stream, StreamReset
from .upgrade import (
    NOISE_PROTOCOL,
    YAMUX_PROTOCOL,
    ConnectionCore,
    ConnectionEvent,
    ConnectionFailed,
    GoAwayReceived,
    InboundStreamNegotiated,
    OutboundStreamFailed,
    OutboundStreamNegotiated,
    PongReceived,
    SessionClosed,
    StreamData,
    StreamEnded,
    StreamFreed,
    StreamResetByPeer,
    StreamWritable,
    Upgraded,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..keys import Ed25519KeyPair, PublicKey
    from ..noise import NoiseStaticKey
    from ..peerid import PeerId
    from ..yamux import YamuxSession
    from .host import HostConfig

log = logging.getLogger("kadfast.net")

__all__ = ["Connection", "ConnectionOwner", "NOISE_PROTOCOL", "YAMUX_PROTOCOL"]


class ConnectionOwner(Protocol):
    """All that a :class:`Connection` asks of its owner (the :class:`Host`):
    its settings and identity, admission, the read-turn budget, stream
    handlers, and being told when the connection opens and closes."""

    config: "HostConfig"
    clock: Callable[[], float]
    keypair: "Ed25519KeyPair"
    noise_static: "NoiseStaticKey"

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    def admit_inbound(self, conn: "Connection", ip: str | None) -> bool: ...
    def current_turn(self) -> int: ...
    def defer_to_next_turn(self, conn: "Connection") -> None: ...
    def supports_protocol(self, protocol: str) -> bool: ...
    def spawn_handler(self, stream: Stream) -> None: ...
    def connection_opened(self, conn: "Connection") -> None: ...
    def connection_closed(self, conn: "Connection") -> None: ...

_NEW, _UPGRADING, _OPEN, _CLOSED = range(4)


_LOCAL_ADDRS: dict[tuple[Any, Any], Multiaddr | None] = {}


def _sock_multiaddr(addr: Any) -> Multiaddr | None:
    if not addr:
        return None
    try:
        return Multiaddr.from_ip_port(addr[0], addr[1])
    except KadfastError:
        return None


def _local_multiaddr(addr: Any) -> Multiaddr | None:
    """The local end of an accepted connection is one of few listen
    addresses: remembered (bounded) instead of rebuilt per connection."""
    if not addr:
        return None
    key = (addr[0], addr[1])
    ma = _LOCAL_ADDRS.get(key)
    if ma is None:
        ma = _sock_multiaddr(addr)
        if len(_LOCAL_ADDRS) >= 256:
            _LOCAL_ADDRS.clear()
        _LOCAL_ADDRS[key] = ma
    return ma


class Connection(asyncio.Protocol):
    """A connection being upgraded, then open. Created by :class:`Host`."""

    # slots, not an instance dict: a server holds tens of thousands of idle
    # connections
    __slots__ = (
        "_clock", "_closing", "_deferred", "_drain_scheduled", "_drain_waiters", "_flush_scheduled",
        "_local_events", "_pings", "_read_budget", "_receiving", "_session", "_state", "_timer", "_timer_at",
        "_turn", "_turn_bytes", "bytes_in", "close_reason", "closed", "core", "error", "expected_peer",
        "host", "initiator", "ip_group", "large_subnet", "last_activity", "local_addr", "loop", "opened_at",
        "pending_group", "ready", "refusal", "remote_addr", "remote_peer_id", "remote_public_key",
        "small_subnet", "stream_activity", "streams", "transport", "write_paused", "__weakref__",
    )
    #: the transport's name, as in the metrics: ``tcp`` or ``quic``
    transport_name = "tcp"

    def __init__(self, host: ConnectionOwner, *, initiator: bool, expected_peer: "PeerId | None" = None) -> None:
        self.host = host
        self._clock = host.clock
        self.loop: asyncio.AbstractEventLoop = host.loop  # a started host's: it makes the connections
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.remote_peer_id: "PeerId | None" = None
        self.remote_public_key: "PublicKey | None" = None
        self.remote_addr: Multiaddr | None = None
        self.local_addr: Multiaddr | None = None
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[Connection] = self.loop.create_future()
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.opened_at = self._clock()
        self.last_activity = self.opened_at
        #: when data last came in on one of its streams (0.0: never); the
        #: connection manager keeps a connection whose streams are in use
        self.stream_activity = 0.0
        self._state = _NEW
        #: the upgrade and the session, from connection_made on
        self.core: ConnectionCore | None = None
        self._session: YamuxSession | None = None  # the core's, once open
        self.streams: dict[int, Stream] = {}
        self._flush_scheduled = False
        self._receiving = False  # inside data_received: its closing flush sends
        # a local call (a half-close, the goodbye) may have left events in the core
        self._local_events = False
        self.write_paused = False
        # callbacks waiting for the output to drain (see when_output_drains)
        self._drain_waiters: list[Callable[[], object]] = []
        self._drain_scheduled = False
        # the loop timer of the core's deadlines, and the deadline it is armed for
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pings: dict[int, asyncio.Future[float]] = {}
        #: the key this inbound connection is counted under by the host's
        #: per-IP limit (None: not counted), and by its per-subnet limits
        self.ip_group: str | None = None
        #: the key its handshake is counted under while it is under way
        self.pending_group: str | None = None
        self.small_subnet: str | None = None
        self.large_subnet: str | None = None
        self.close_reason = ""
        #: the protocol error that failed the connection, if one did
        self.error: Exception | None = None
        #: set by the host when it refuses an inbound connection on accept:
        #: why (the connection is then closed at once in connection_made)
        self.refusal = ""
        self._closing = False
        # fairness (HostConfig.max_read_bytes_per_turn): the loop turn this
        # connection last read in, the bytes it handled in it, and the rest of
        # a read held for the next turn while reading is paused
        self._turn = -1
        self._turn_bytes = 0
        self._deferred: bytes | None = None
        self._read_budget = host.config.max_read_bytes_per_turn
        #: bytes received and handled (what waits for the next turn excluded)
        self.bytes_in = 0

    def __repr__(self) -> str:
        d = "out" if self.initiator else "in"
        return f"<Connection {d} {self.remote_peer_id} {self.remote_addr}>"

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    @property
    def is_closed(self) -> bool:
        return self._state == _CLOSED

    def mark_upgrading(self) -> None:
        """The transport is there and the upgrade begins (a transport
        whose shell is not an ``asyncio.Protocol``: QUIC's)."""
        self._state = _UPGRADING

    def drop(self, reason: str) -> None:
        """Forget a connection refused before its transport began (the
        host's counts of it released)."""
        self._teardown(reason)

    @property
    def session(self) -> "YamuxSession | None":
        """The Yamux session, once the upgrade is done."""
        return self.core.session if self.core is not None else None

    def count_inbound(self, stream: Stream, limit: int) -> bool:
        """Count an inbound ``stream`` against a limit on the streams of its
        protocol open at once on this connection (a handler calls this first
        thing). False, and nothing counted, when ``limit`` are counted already.
        A counted stream is uncounted when it leaves the connection: closed by
        both sides, or reset."""
        if self.streams.get(stream.stream_id) is not stream or self.core is None:
            return True  # already gone (reset before its handler ran): nothing to count
        return self.core.count_inbound(stream.stream_id, limit)

    def inbound_streams_for(self, protocol: str) -> int:
        """Inbound streams of ``protocol`` counted by :meth:`count_inbound` and still open."""
        return self.core.inbound_streams_for(protocol) if self.core is not None else 0

    def refuse(self, reason: str) -> None:
        """Have the connection close at once when its socket arrives (the
        host's limits on pending handshakes)."""
        self.refusal = reason

    # -- asyncio.Protocol ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a TCP transport (uvloop's is not an asyncio.Transport subclass)
        self.transport = transport = cast(asyncio.Transport, transport)
        if self.refusal:
            # a flood of them: logged at debug, a line each would cost more than the refusal
            log.debug("refusing inbound connection from %s: %s", transport.get_extra_info("peername"), self.refusal)
            transport.abort()
            return
        if not self.initiator:
            peer = transport.get_extra_info("peername")
            if not self.host.admit_inbound(self, peer[0] if peer else None):
                transport.abort()
                return
        # TCP_NODELAY: asyncio's and uvloop's TCP transports set it themselves
        self.remote_addr = _sock_multiaddr(transport.get_extra_info("peername"))
        sockname = transport.get_extra_info("sockname")
        self.local_addr = _sock_multiaddr(sockname) if self.initiator else _local_multiaddr(sockname)
        host = self.host
        cfg = host.config
        self.core = ConnectionCore(
            host.keypair,
            initiator=self.initiator,
            now=self._clock(),
            expected_peer=self.expected_peer,
            static_key=host.noise_static,
            supports_protocol=host.supports_protocol,
            handshake_timeout=cfg.handshake_timeout,
            negotiation_timeout=cfg.negotiation_timeout,
            max_streams=cfg.max_streams_per_connection,
            max_pings_per_second=cfg.max_yamux_pings_per_second,
            max_inbound_streams=cfg.max_inbound_streams,
            early_muxer=cfg.early_muxer_negotiation,
        )
        self._state = _UPGRADING
        self._flush()  # the dialer's proposal
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        self.last_activity = now = self._clock()
        budget = self._read_budget
        if budget:
            turn = self.host.current_turn()
            if turn != self._turn:
                self._turn = turn
                self._turn_bytes = 0
            room = budget - self._turn_bytes
            if len(data) > room:
                # over this turn's share: the rest waits for the next turn,
                # and the socket is not read meanwhile
                self._defer(data[room:] if room > 0 else data)
                if room <= 0:
                    return
                data = data[:room]
            self._turn_bytes += len(data)
        self.bytes_in += len(data)
        core = self.core
        if core is None or self._state == _CLOSED:
            return
        # what the handlers write while this runs leaves in the one flush
        # below, not in a call_soon flush (an extra loop pass per read)
        self._receiving = True
        try:
            events = core.receive_data(data, now)
            if events:
                self._handle(events)
        except KadfastError as exc:
            self.error = exc
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._receiving = False
        self.stream_activity = core.stream_activity
        self._flush()
        if self._timer is None and core.negotiations:
            self._arm_timer()  # a stream negotiating beyond this read

    def _defer(self, rest: bytes) -> None:
        if self._deferred is None:
            self._deferred = rest
            if self.transport is not None and not self.transport.is_closing():
                self.transport.pause_reading()
            self.host.defer_to_next_turn(self)
        else:  # pragma: no cover - reading is paused while something is deferred
            self._deferred += rest

    def resume_turn(self) -> None:
        """A new turn of the loop: handle what was held back, then read again
        (or wait for the next turn if it is over the share again)."""
        data, self._deferred = self._deferred, None
        if self._state == _CLOSED or self.transport is None or self.transport.is_closing():
            return
        if data:
            self.data_received(data)
        if self._deferred is None and self._state != _CLOSED and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self._teardown("remote closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown(f"connection lost: {exc}" if exc else "connection closed")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for s in list(self.streams.values()):
            s.wake_writer()
        self._drained()

    # -- output pressure ---------------------------------------------------
    def queued_output(self) -> int:
        """Bytes written on this connection and not yet taken by the kernel:
        what the Yamux session queued since the last flush and what the
        transport holds."""
        session = self._session
        n = session.pending_output if session is not None else 0
        tr = self.transport
        return n if tr is None else n + tr.get_write_buffer_size()

    def when_output_drains(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` (once) the next time output may have drained:
        after a flush that left the transport below its high-water mark,
        when the transport resumes writing, or when a stream's send window
        opened. The callback checks what it waits for and asks again if
        need be (a server holding requests back while its answers pile up)."""
        self._drain_waiters.append(callback)

    def _drained(self) -> None:
        if self._drain_waiters and not self._drain_scheduled and not self._closing:
            self._drain_scheduled = True
            self.loop.call_soon(self._run_drain_waiters)

    def _run_drain_waiters(self) -> None:
        self._drain_scheduled = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for cb in waiters:
            try:
                cb()
            except Exception:  # pragma: no cover - a waiter handles its own errors
                log.exception("%r: output-drain callback failed", self)

    # -- the core's events -------------------------------------------------
    def _handle(self, events: list[ConnectionEvent]) -> None:
        streams = self.streams
        ev: Any  # told apart by the exact type; the frequent ones first
        for ev in events:
            t = type(ev)
            if t is StreamData:
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.feed_data(ev.data)
            elif t is StreamEnded:
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.feed_eof()
            elif t is InboundStreamNegotiated:
                new = Stream(self, ev.stream_id, inbound=True)
                new.protocol = ev.protocol
                streams[ev.stream_id] = new
                if ev.data:
                    new.feed_data(ev.data)
                self.host.spawn_handler(new)
            elif t is StreamFreed:
                streams.pop(ev.stream_id, None)
            elif t is StreamWritable:
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.wake_writer()
                    self._drained()
            elif t is StreamResetByPeer:
                s = streams.pop(ev.stream_id, None)
                if s is not None:
                    s.feed_reset("reset by peer")
            elif t is OutboundStreamNegotiated:
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.protocol = ev.protocol
                    if ev.data:
                        s.feed_data(ev.data)
                    fut = s.negotiated
                    if fut is not None and not fut.done():
                        fut.set_result(s)
            elif t is OutboundStreamFailed:
                s = streams.pop(ev.stream_id, None)
                if s is not None:
                    if ev.error is not None:
                        log.debug("%r: stream %d negotiation failed: %s", self, ev.stream_id, ev.error)
                        fut = s.negotiated
                        if fut is not None and not fut.done():
                            fut.set_exception(ProtocolNotSupported(f"{self.remote_peer_id}: {ev.error}"))
                    s.feed_reset(ev.reason)
            elif t is PongReceived:
                pong = self._pings.pop(ev.opaque, None)
                if pong is not None and not pong.done():
                    pong.set_result(ev.rtt)
            elif t is Upgraded:
                self._upgraded(ev)
            elif t is GoAwayReceived:
                log.debug("%r: peer sent GoAway(%s)", self, ev.code)
            elif t is SessionClosed:
                if not self._closing:
                    self.close(f"yamux session closed: {ev.reason}")
            elif t is ConnectionFailed:
                if ev.error is not None:
                    self.error = ev.error
                self._fail(ev.reason)
                return

    def _upgraded(self, ev: Upgraded) -> None:
        self.remote_peer_id = ev.remote_peer_id
        self.remote_public_key = ev.remote_public_key
        # the stream flow-control calls (consumed, buffered) go to it directly
        self._session = self.core.session if self.core is not None else None
        self._state = _OPEN
        self._cancel_timer()  # the handshake's
        if not self.ready.done():
            self.ready.set_result(self)
        self.host.connection_opened(self)

    # -- the core's deadlines ------------------------------------------------
    def _arm_timer(self) -> None:
        """Have the loop timer fire by the core's next deadline."""
        core = self.core
        if core is None or self._state == _CLOSED:
            return
        when = core.get_timer()
        if when is None:
            return  # an armed timer may fire for nothing; it is not worth cancelling
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_later(max(0.0, when - self._clock()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        core = self.core
        if core is None or self._state == _CLOSED:
            return
        # the loop's timers may run a little early on the clock
        events = core.handle_timer(max(self._clock(), self._timer_at))
        if events:
            self._handle(events)
        if self._state != _CLOSED:
            self._flush()  # the resets
            self._arm_timer()

    # -- streams, from the host and from Stream ----------------------------
    async def open_stream(self, protocols: list[str]) -> Stream:
        s = self.start_stream(protocols)
        fut = s.negotiated
        assert fut is not None
        try:
            return await fut
        except (StreamReset, ProtocolNotSupported):
            raise
        except BaseException:
            s.reset()
            raise

    def start_stream(self, protocols: list[str], *, close_when_negotiated: bool = False) -> Stream:
        """Open a stream and propose ``protocols`` on it, without waiting:
        its ``negotiated`` future gives the outcome (as :meth:`open_stream`
        does). Called while a read is handled, the proposal leaves with that
        read's output. ``close_when_negotiated`` half-closes it once a
        protocol is agreed (a stream only read from)."""
        core = self.core
        if self._state != _OPEN or core is None:
            raise StreamReset("connection is not open")
        sid = core.open_stream(protocols, self._clock(), close_when_negotiated=close_when_negotiated)
        s = Stream(self, sid, inbound=False)
        s.negotiated = self.loop.create_future()
        self.streams[sid] = s
        self._schedule_flush()
        if self._timer is None:
            self._arm_timer()
        return s

    def stream_consumed(self, stream_id: int, n: int) -> None:
        session = self._session
        if session is not None and stream_id in self.streams:
            session.consumed(stream_id, n)
            self._schedule_flush()

    def stream_send(self, stream_id: int, data: bytes) -> None:
        core = self.core
        if core is None:
            raise StreamReset("connection is not open")
        try:
            core.send(stream_id, data)
        except StreamReset:
            # reset by the peer in the read being dispatched (its reset event
            # comes after the data that is being answered): only this stream
            # ends, never the connection
            s = self.streams.pop(stream_id, None)
            if s is not None:
                s.feed_reset("reset by peer")
            raise
        self._schedule_flush()

    def stream_buffered(self, stream_id: int) -> int:
        session = self._session
        if session is None or stream_id not in self.streams:
            return 0
        return session.buffered(stream_id)

    def stream_close(self, stream_id: int) -> None:
        if self.core is not None and self._state == _OPEN:
            self.core.close_stream(stream_id)
            self._local_events = True
            self._schedule_flush()

    def stream_reset(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        if self.core is not None:
            self.core.reset_stream(stream_id)
            if self._state == _OPEN:
                self._schedule_flush()

    async def ping(self, timeout: float = 10.0) -> float:
        """A Yamux-level ping; returns the round-trip time in seconds."""
        core = self.core
        if core is None:
            raise StreamReset("connection is not open")
        opaque = core.ping(self._clock())
        fut: asyncio.Future[float] = self.loop.create_future()
        self._pings[opaque] = fut
        self._schedule_flush()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(opaque, None)

    # -- output ----------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._receiving:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        tr = self.transport
        core = self.core
        if tr is None or core is None:
            return
        if tr.is_closing():
            # closed under us (peer reset, abort) before this flush ran:
            # nothing can be sent any more (uvloop raises on a write)
            return
        if self._local_events:
            self._local_events = False
            local = core.events()  # produced by local calls (a half-close, the goodbye)
            if local:
                self._handle(local)
        out = core.data_to_send()
        if out:
            tr.write(out)
        if self._drain_waiters and not self.write_paused:
            self._drained()

    # -- closing ---------------------------------------------------------
    def _authenticated(self) -> None:
        """A connection closing during the upgrade: the peer Noise
        authenticated, if it got that far."""
        if self.remote_peer_id is None and self.core is not None:
            self.remote_peer_id = self.core.remote_peer_id
            self.remote_public_key = self.core.remote_public_key

    def _fail(self, reason: str) -> None:
        self._authenticated()
        log.info("%r: closing: %s", self, reason)
        try:
            self._flush()  # a GoAway the session queued on the error
        except Exception:  # pragma: no cover - best effort on a failing connection
            pass
        if self.transport is not None:
            self.transport.abort()
        self._teardown(reason)

    def close(self, reason: str = "closed locally") -> None:
        if self._state == _CLOSED or self._closing:
            return
        self._closing = True
        if self.core is not None and self._state == _OPEN:
            self.core.close()  # a GoAway
            self._local_events = True
            self._flush()
        if self.transport is not None:
            self.transport.close()
        self._teardown(reason)

    def _teardown(self, reason: str) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self.close_reason = reason
        self._authenticated()
        self._cancel_timer()
        for s in list(self.streams.values()):
            s.feed_reset(f"connection closed: {reason}")
        self.streams.clear()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError(reason))
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()  # retrieved by the dialer; avoid "never retrieved"
        if not self.closed.done():
            self.closed.set_result(reason)
        self.host.connection_closed(self)
