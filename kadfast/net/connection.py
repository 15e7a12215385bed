"""One libp2p connection over TCP: an ``asyncio.Protocol`` that drives the
sans-IO cores (multistream-select, Noise, multistream-select, Yamux).

Every ``data_received`` call decrypts all complete Noise frames and parses
all complete Yamux frames in one pass, dispatches the events, and writes
whatever the cores produced in one ``transport.write``. Writes made by
application tasks between two callbacks are batched by one ``call_soon``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable, Protocol

from ..errors import KadfastError, MultistreamError
from ..multiaddr import Multiaddr
from ..multistream import MultistreamDialer, MultistreamListener
from ..noise import NoiseHandshake
from .. import yamux as y
from ..errors import ProtocolNotSupported
from .stream import Stream, StreamReset

if TYPE_CHECKING:  # pragma: no cover
    from ..keys import Ed25519KeyPair
    from ..noise import NoiseStaticKey
    from ..peerid import PeerId
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

NOISE_PROTOCOL = "/noise"
YAMUX_PROTOCOL = "/yamux/1.0.0"

_SEC, _NOISE, _MUX, _OPEN, _CLOSED = range(5)


_LOCAL_ADDRS: dict[tuple, Multiaddr | None] = {}


def _sock_multiaddr(addr) -> Multiaddr | None:
    if not addr:
        return None
    try:
        return Multiaddr.from_ip_port(addr[0], addr[1])
    except KadfastError:
        return None


def _local_multiaddr(addr) -> Multiaddr | None:
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

    def __init__(self, host: ConnectionOwner, *, initiator: bool, expected_peer: "PeerId | None" = None) -> None:
        self.host = host
        self._clock = host.clock
        self.loop: asyncio.AbstractEventLoop = host.loop  # a started host's: it makes the connections
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.remote_peer_id: "PeerId | None" = None
        self.remote_public_key = None
        self.remote_addr: Multiaddr | None = None
        self.local_addr: Multiaddr | None = None
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future = self.loop.create_future()
        self.closed: asyncio.Future = self.loop.create_future()
        self.opened_at = self._clock()
        self.last_activity = self.opened_at
        #: when data last came in on one of its streams (0.0: never); the
        #: connection manager keeps a connection whose streams are in use
        self.stream_activity = 0.0
        self._state = _SEC
        self._ms = None
        self._noise: NoiseHandshake | None = None
        self._crypto = None
        self.session: y.YamuxSession | None = None
        self.streams: dict[int, Stream] = {}
        self._out_plain: list[bytes] = []  # plaintext waiting for encryption
        self._flush_scheduled = False
        self._receiving = False  # inside data_received: its closing flush sends
        self.write_paused = False
        # callbacks waiting for the output to drain (see when_output_drains)
        self._drain_waiters: list = []
        self._drain_scheduled = False
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._pings: dict[int, asyncio.Future] = {}
        self._inbound_streams = 0
        #: inbound streams counted per protocol by count_inbound, and which
        #: stream ids were counted under which protocol
        self._inbound_by_protocol: dict[str, int] = {}
        self._counted: dict[int, str] = {}
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
        #: why an inbound connection is refused before its handshake (see refuse())
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

    def count_inbound(self, stream: Stream, limit: int) -> bool:
        """Count an inbound ``stream`` against a limit on the streams of its
        protocol open at once on this connection (a handler calls this first
        thing). False, and nothing counted, when ``limit`` are counted already.
        A counted stream is uncounted when it leaves the connection: closed by
        both sides, or reset."""
        if self.streams.get(stream.stream_id) is not stream:
            return True  # already gone (reset before its handler ran): nothing to count
        p = stream.protocol
        n = self._inbound_by_protocol.get(p, 0)
        if n >= limit:
            return False
        self._inbound_by_protocol[p] = n + 1
        self._counted[stream.stream_id] = p
        return True

    def inbound_streams_for(self, protocol: str) -> int:
        """Inbound streams of ``protocol`` counted by :meth:`count_inbound` and still open."""
        return self._inbound_by_protocol.get(protocol, 0)

    def refuse(self, reason: str) -> None:
        """Have the connection close at once when its socket arrives (the
        host's limits on pending handshakes)."""
        self.refusal = reason

    # -- asyncio.Protocol ------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
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
        self._handshake_timer = self.loop.call_later(
            self.host.config.handshake_timeout, self._handshake_timed_out
        )
        if self.initiator:
            self._ms = MultistreamDialer([NOISE_PROTOCOL])
            self._raw_write(self._ms.data_to_send())
        else:
            self._ms = MultistreamListener([NOISE_PROTOCOL])

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
        # what the handlers write while this runs leaves in the one flush
        # below, not in a call_soon flush (an extra loop pass per read)
        self._receiving = True
        try:
            self._on_data(data, now)
        except KadfastError as exc:
            self.error = exc
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._receiving = False
        self._flush()

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

    def eof_received(self):
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
        n = self.session.pending_output if self.session is not None else 0
        tr = self.transport
        return n if tr is None else n + tr.get_write_buffer_size()

    def when_output_drains(self, callback) -> None:
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

    # -- the upgrade -----------------------------------------------------
    def _raw_write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def _on_data(self, data: bytes, now: float) -> None:
        state = self._state
        if state == _OPEN:
            plain = self._crypto.decrypt(data)
            if plain:
                self._dispatch(self.session.receive_data(plain, now))
            return
        if state == _SEC:
            ms = self._ms
            ms.receive_data(data)
            self._raw_write(ms.data_to_send())
            if not ms.done:
                return
            if ms.selected != NOISE_PROTOCOL:
                raise MultistreamError("peer does not speak /noise", remote=True)
            rest = ms.unused
            self._state = _NOISE
            self._noise = NoiseHandshake(
                self.host.keypair,
                initiator=self.initiator,
                expected_peer=self.expected_peer,
                static_key=self.host.noise_static,
            )
            self._raw_write(self._noise.data_to_send())
            if rest:
                self._on_data(rest, now)
            return
        if state == _NOISE:
            hs = self._noise
            hs.receive_data(data)
            self._raw_write(hs.data_to_send())
            if not hs.complete:
                return
            self.remote_peer_id = hs.remote_peer_id
            self.remote_public_key = hs.remote_public_key
            self._crypto = hs.transport()
            rest = hs.unused
            self._noise = None
            self._state = _MUX
            if self.initiator:
                self._ms = MultistreamDialer([YAMUX_PROTOCOL])
                self._write_plain(self._ms.data_to_send())
            else:
                self._ms = MultistreamListener([YAMUX_PROTOCOL])
            if rest:
                self._on_data(rest, now)
            return
        if state == _MUX:
            plain = self._crypto.decrypt(data)
            if not plain:
                return
            ms = self._ms
            ms.receive_data(plain)
            self._write_plain(ms.data_to_send())
            if not ms.done:
                return
            if ms.selected != YAMUX_PROTOCOL:
                raise MultistreamError("peer does not speak /yamux/1.0.0", remote=True)
            rest = ms.unused
            self._ms = None
            cfg = self.host.config
            self.session = y.YamuxSession(
                self.initiator,
                max_streams=cfg.max_streams_per_connection,
                max_pings_per_second=cfg.max_yamux_pings_per_second,
            )
            self._state = _OPEN
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
            if not self.ready.done():
                self.ready.set_result(self)
            self.host.connection_opened(self)
            if rest:
                self._dispatch(self.session.receive_data(rest, now))
            return
        # closed: ignore

    # -- Yamux events ----------------------------------------------------
    def _dispatch(self, events) -> None:
        streams = self.streams
        for ev in events:
            t = type(ev)
            if t is y.StreamData:
                s = streams.get(ev.stream_id)
                if s is None:
                    continue
                self.stream_activity = self.last_activity
                if s.negotiator is not None:
                    self._negotiate_data(s, ev.data)
                else:
                    s.feed_data(ev.data)
            elif t is y.StreamOpened:
                self._on_inbound_stream(ev.stream_id)
            elif t is y.StreamEnded:
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.feed_eof()
                    if s.negotiator is not None:
                        s.feed_reset("stream ended during protocol negotiation")
            elif t is y.StreamWritable:
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.wake_writer()
                    self._drained()
            elif t is y.StreamResetByPeer:
                s = streams.pop(ev.stream_id, None)
                if s is not None:
                    if s.inbound:
                        self._forget_inbound(s)
                    s.feed_reset("reset by peer")
            elif t is y.StreamFreed:
                s = streams.pop(ev.stream_id, None)
                if s is not None and s.inbound:
                    self._forget_inbound(s)
            elif t is y.PongReceived:
                fut = self._pings.pop(ev.opaque, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev.rtt)
            elif t is y.GoAwayReceived:
                log.debug("%r: peer sent GoAway(%s)", self, ev.code)
            elif t is y.SessionClosed:
                if not self._closing:
                    self.close(f"yamux session closed: {ev.reason}")

    def _on_inbound_stream(self, stream_id: int) -> None:
        cfg = self.host.config
        if self._inbound_streams >= cfg.max_inbound_streams:
            log.info("%r: inbound stream limit (%d) reached; resetting stream", self, cfg.max_inbound_streams)
            self.session.reset_stream(stream_id)
            return
        s = Stream(self, stream_id, inbound=True)
        s.negotiator = MultistreamListener(self.host.supports_protocol)
        self.streams[stream_id] = s
        self._inbound_streams += 1
        s.negotiation_deadline = self.loop.call_later(cfg.negotiation_timeout, self._negotiation_deadline, s)

    def _negotiation_deadline(self, s: Stream) -> None:
        """An inbound stream still negotiating its protocol after the timeout
        is reset, so that it holds no slot (and no idle connection) forever."""
        s.negotiation_deadline = None
        if s.negotiator is not None and self.streams.get(s.stream_id) is s:
            log.info("%r: stream %d did not negotiate a protocol in time; resetting", self, s.stream_id)
            s.reset()
            self._schedule_flush()

    def _forget_inbound(self, s: Stream) -> None:
        """An inbound stream left ``streams``: uncount it."""
        self._inbound_streams -= 1
        p = self._counted.pop(s.stream_id, None)
        if p is not None:
            n = self._inbound_by_protocol.get(p, 0) - 1
            if n > 0:
                self._inbound_by_protocol[p] = n
            else:
                self._inbound_by_protocol.pop(p, None)

    def _negotiate_data(self, s: Stream, data: bytes) -> None:
        ms = s.negotiator
        sid = s.stream_id
        # The peer may have reset the stream later in the same read (a
        # cancelled request): the session then no longer has it, and what
        # negotiation would answer is dropped; the data before the reset is
        # still handled, and the reset event that follows ends the stream.
        session = self.session
        try:
            ms.receive_data(data)
        except MultistreamError as exc:
            out = ms.data_to_send()
            if out and session.has_stream(sid):
                session.send(sid, out)
            log.debug("%r: stream %d negotiation failed: %s", self, sid, exc)
            if s.negotiated is not None and not s.negotiated.done():
                s.negotiated.set_exception(ProtocolNotSupported(f"{self.remote_peer_id}: {exc}"))
            self.streams.pop(sid, None)
            if s.inbound:
                self._forget_inbound(s)
            session.reset_stream(sid)
            s.feed_reset(f"protocol negotiation failed: {exc}")
            return
        out = ms.data_to_send()
        if out and session.has_stream(sid):
            session.send(sid, out)
        if not ms.done:
            session.consumed(sid, len(data))
            return
        s.negotiator = None
        s.cancel_negotiation_deadline()
        s.protocol = ms.selected
        rest = ms.unused
        # negotiation bytes are consumed now; the rest when the application reads it
        session.consumed(sid, len(data) - len(rest))
        if rest:
            s.feed_data(rest)
        if s.inbound:
            self.host.spawn_handler(s)
        elif s.negotiated is not None and not s.negotiated.done():
            s.negotiated.set_result(s)

    # -- streams, from the host and from Stream ----------------------------
    async def open_stream(self, protocols: list[str]) -> Stream:
        if self._state != _OPEN:
            raise StreamReset("connection is not open")
        sid = self.session.open_stream()
        s = Stream(self, sid, inbound=False)
        s.negotiator = MultistreamDialer(list(protocols))
        s.negotiated = self.loop.create_future()
        self.streams[sid] = s
        self.session.send(sid, s.negotiator.data_to_send())
        self._schedule_flush()
        try:
            async with asyncio.timeout(self.host.config.negotiation_timeout):
                return await s.negotiated
        except TimeoutError:
            s.reset()
            raise StreamReset("protocol negotiation timed out") from None
        except (StreamReset, ProtocolNotSupported):
            raise
        except BaseException:
            s.reset()
            raise

    def stream_consumed(self, stream_id: int, n: int) -> None:
        if self.session is not None and stream_id in self.streams:
            self.session.consumed(stream_id, n)
            self._schedule_flush()

    def stream_send(self, stream_id: int, data: bytes) -> None:
        session = self.session
        if not session.has_stream(stream_id):
            # reset by the peer in the read being dispatched (its StreamReset
            # event comes after the data that is being answered): only this
            # stream ends, never the connection
            s = self.streams.get(stream_id)
            if s is not None:
                self._gone(s)
            raise StreamReset("reset by peer")
        session.send(stream_id, data)
        self._schedule_flush()

    def _gone(self, s: Stream) -> None:
        """The session no longer has ``s`` (the peer reset it, or both sides
        closed it, in events not yet dispatched): forget it now."""
        if self.streams.get(s.stream_id) is s:
            del self.streams[s.stream_id]
            if s.inbound:
                self._forget_inbound(s)
        s.feed_reset("reset by peer")

    def stream_buffered(self, stream_id: int) -> int:
        if self.session is None or stream_id not in self.streams:
            return 0
        return self.session.buffered(stream_id)

    def stream_close(self, stream_id: int) -> None:
        if self.session is not None and self._state == _OPEN:
            self.session.close_stream(stream_id)
            self._schedule_flush()

    def stream_reset(self, stream_id: int) -> None:
        s = self.streams.pop(stream_id, None)
        if s is not None and s.inbound:
            self._forget_inbound(s)
        if self.session is not None and self._state == _OPEN:
            self.session.reset_stream(stream_id)
            self._schedule_flush()

    async def ping(self, timeout: float = 10.0) -> float:
        """A Yamux-level ping; returns the round-trip time in seconds."""
        opaque = self.session.ping(self._clock())
        fut = self.loop.create_future()
        self._pings[opaque] = fut
        self._schedule_flush()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(opaque, None)

    # -- output ----------------------------------------------------------
    def _write_plain(self, data: bytes) -> None:
        if data:
            self._out_plain.append(data)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._receiving:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is None or self._crypto is None:
            return
        if self.transport.is_closing():
            # closed under us (peer reset, abort) before this flush ran:
            # nothing can be sent any more (uvloop raises on a write)
            self._out_plain.clear()
            return
        if self.session is not None:
            local = self.session.events()  # produced by local calls (close_stream, go_away)
            if local:
                self._dispatch(local)
            out = self.session.data_to_send()
            if out:
                self._out_plain.append(out)
        if self._out_plain:
            plain = b"".join(self._out_plain) if len(self._out_plain) > 1 else self._out_plain[0]
            self._out_plain.clear()
            self.transport.write(self._crypto.encrypt(plain))
        if self._drain_waiters and not self.write_paused:
            self._drained()

    # -- closing ---------------------------------------------------------
    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self._state != _OPEN:
            self._fail("handshake timed out")

    def _fail(self, reason: str) -> None:
        log.info("%r: closing: %s", self, reason)
        if self.session is not None and self._state == _OPEN:
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
        if self.session is not None and self._state == _OPEN:
            self.session.go_away(0)
            self._flush()
        if self.transport is not None:
            self.transport.close()
        self._teardown(reason)

    def _teardown(self, reason: str) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self.close_reason = reason
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
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
