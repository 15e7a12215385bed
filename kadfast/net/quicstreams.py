"""The streams of one libp2p QUIC connection and their protocol
negotiation, sans-IO.

A :class:`QuicConnectionCore` drives a :class:`kadfast.quic.QuicCore` (the
QUIC connection and its libp2p TLS authentication) and runs
multistream-select on every QUIC stream, as the TCP stack's
:class:`~kadfast.net.upgrade.ConnectionCore` does on every Yamux stream.
It speaks the same events (:class:`~kadfast.net.upgrade.Upgraded`,
:class:`~kadfast.net.upgrade.InboundStreamNegotiated`,
:class:`~kadfast.net.upgrade.OutboundStreamNegotiated`,
:class:`~kadfast.net.upgrade.OutboundStreamFailed`,
:class:`~kadfast.net.upgrade.ConnectionFailed` and the stream events
:class:`StreamData`, :class:`StreamEnded`, :class:`StreamResetByPeer`,
:class:`StreamFreed`, :class:`StreamWritable`, :class:`PongReceived`) and
offers the same stream calls, so that the shell above it, and everything
above the shell (identify, ping, kad), does not know which transport
carries a stream. Datagrams and the time in, datagrams, events and one
timer out; it reads no clock.

libp2p over QUIC (libp2p/specs quic/README.md): QUIC streams are the
libp2p streams (bidirectional ones; unidirectional streams are not used,
and one the peer opens is stopped); a FIN is libp2p's half-close and
RESET_STREAM / STOP_SENDING its reset, both directions at once.

Bounds: inbound streams at once (``max_inbound_streams``, and QUIC's own
MAX_STREAMS of 128), a deadline for each stream's negotiation, and bytes
received but not yet taken by the application: per stream
(``max_stream_buffer``; a stream over it is reset) and per connection
(``max_connection_buffer``; the stream that would go over it is reset).
aioquic grants the peer more flow-control credit as data arrives, not as
it is read, so these bounds stand in for the receive window that Yamux
keeps per stream.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import Any

from ..errors import MultistreamError, StreamReset
from ..keys import PublicKey
from ..multistream import MultistreamDialer, MultistreamListener
from ..peerid import PeerId
from ..quic import QuicCore, QuicFailed, QuicStreamData, QuicStreamReset, QuicUpgraded
from ..yamux import PongReceived, StreamData, StreamEnded, StreamFreed, StreamResetByPeer, StreamWritable
from .upgrade import (
    ConnectionEvent,
    ConnectionFailed,
    InboundStreamNegotiated,
    OutboundStreamFailed,
    OutboundStreamNegotiated,
    Upgraded,
)

log = logging.getLogger("kadfast.net")

__all__ = ["QuicConnectionCore", "RESET_CODE"]

#: the application error code of our RESET_STREAM and STOP_SENDING (go-libp2p
#: and rust-libp2p send 0 for a plain reset)
RESET_CODE = 0
#: a stream whose unsent and unacknowledged bytes are at most this is
#: writable again (``StreamWritable``); the shell's high-water mark
WRITABLE_BELOW = 64 * 1024

_Negotiator = MultistreamDialer | MultistreamListener


class _QStream:
    """What the core keeps of one open stream."""

    __slots__ = ("sent_fin", "got_fin", "unread", "inbound", "protocol")

    def __init__(self, inbound: bool) -> None:
        self.sent_fin = False
        self.got_fin = False
        self.unread = 0  # received, handed out, not yet consumed
        self.inbound = inbound
        self.protocol = ""  # an inbound stream's, once agreed ("" while negotiating or done)


class QuicConnectionCore:
    """One side of a libp2p connection over QUIC, from its first datagram.

    ``quic``: the connection (:class:`~kadfast.quic.QuicCore`, client or
    server); ``supports_protocol``: whether an inbound stream may have a
    protocol; ``negotiation_timeout``: seconds a stream may take to agree
    on one; ``max_inbound_streams``: inbound streams open at once;
    ``max_stream_buffer`` / ``max_connection_buffer``: see the module;
    ``keepalive``: seconds without a datagram from the peer after which a
    PING is sent (0: never), so that a quiet connection outlives QUIC's idle
    timeout for as long as the host keeps it (the dialing side sends them,
    as go-libp2p's and rust-libp2p's do).
    """

    __slots__ = (
        "quic", "_supports", "_negotiation_timeout", "_max_inbound", "_max_stream_buffer",
        "_max_connection_buffer", "_unread_total", "_streams", "negotiations", "_close_on_select",
        "_deadlines", "_local_parity", "_inbound", "_counted", "_by_protocol", "_events", "_watch",
        "_pings", "_next_ping", "_gone", "stream_activity", "_state", "_keepalive", "_last_received",
    )

    #: no Yamux session under a QUIC connection (the shell asks)
    session = None

    def __init__(self, quic: QuicCore, *, supports_protocol: Callable[[str], bool],
                 negotiation_timeout: float = 10.0, max_inbound_streams: int = 256,
                 max_stream_buffer: int = 1 << 20, max_connection_buffer: int = 8 << 20,
                 keepalive: float = 0.0, now: float = 0.0) -> None:
        self.quic = quic
        self._keepalive = keepalive
        self._last_received = now
        self._supports = supports_protocol
        self._negotiation_timeout = negotiation_timeout
        self._max_inbound = max_inbound_streams
        self._max_stream_buffer = max_stream_buffer
        self._max_connection_buffer = max_connection_buffer
        self._unread_total = 0
        self._streams: dict[int, _QStream] = {}
        #: the streams still agreeing on a protocol, by id (not to be modified)
        self.negotiations: dict[int, _Negotiator] = {}
        self._close_on_select: set[int] = set()
        self._deadlines: list[tuple[float, int]] = []
        # a client opens the even bidirectional ids (0, 4, ...), a server the odd ones
        self._local_parity = 0 if quic.initiator else 1
        self._inbound: dict[int, str] = {}
        self._counted: dict[int, str] = {}
        self._by_protocol: dict[str, int] = {}
        self._events: list[ConnectionEvent] = []
        self._watch: set[int] = set()  # streams written above the writable mark
        self._pings: dict[int, float] = {}
        self._next_ping = 0
        # the peer's streams that left lately (QUIC never reuses an id): data
        # still in flight for one of them opens no new stream. Bounded: the
        # oldest are forgotten first
        self._gone: dict[int, None] = {}
        #: the ``now`` of the last datagram that carried stream data (0.0: never)
        self.stream_activity = 0.0
        self._state = 0  # 0 handshaking, 1 open, 2 closed

    @property
    def remote_peer_id(self) -> PeerId | None:
        """Who the peer proved to be (known also when it was not the peer dialed)."""
        return self.quic.remote_peer_id

    @property
    def remote_public_key(self) -> PublicKey | None:
        return self.quic.remote_public_key

    @property
    def is_open(self) -> bool:
        return self._state == 1

    @property
    def is_closed(self) -> bool:
        return self._state == 2

    @property
    def inbound_streams(self) -> int:
        return len(self._inbound)

    def negotiating(self, stream_id: int) -> bool:
        return stream_id in self.negotiations

    # -- input -------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> list[ConnectionEvent]:
        """Feed one datagram from the peer; the events it produced."""
        if self._state == 2:
            return self.events()
        self._last_received = now
        self._translate(self.quic.receive_datagram(data, addr, now), now)
        self._check_writable()
        return self.events()

    def handle_timer(self, now: float) -> list[ConnectionEvent]:
        """Act on the deadlines passed at ``now``: QUIC's (loss detection,
        idle timeout, the handshake's) and each stream's negotiation."""
        if self._state != 2:
            if self._state == 1 and self._keepalive and now >= self._last_received + self._keepalive:
                self._last_received = now  # the next one a keepalive later, unless the peer answers
                self.quic.ping(-1)  # not one of ping()'s: its acknowledgement makes no event
            self._translate(self.quic.handle_timer(now), now)
        heap = self._deadlines
        neg = self.negotiations
        while heap and heap[0][0] <= now:
            _, sid = heapq.heappop(heap)
            if sid in neg:
                log.info("QUIC stream %d did not negotiate a protocol in time; resetting", sid)
                self._end_negotiation(sid, "protocol negotiation timed out")
        return self.events()

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (None: never)."""
        when = self.quic.get_timer()
        heap = self._deadlines
        neg = self.negotiations
        while heap and heap[0][1] not in neg:
            heapq.heappop(heap)
        if heap and (when is None or heap[0][0] < when):
            when = heap[0][0]
        if self._keepalive and self._state == 1:
            due = self._last_received + self._keepalive
            if when is None or due < when:
                when = due
        return when

    def events(self) -> list[ConnectionEvent]:
        out, self._events = self._events, []
        return out

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """What to send now; a stream whose queued bytes this sent below the
        writable mark gets its :class:`StreamWritable` (in :meth:`events`)."""
        out = self.quic.datagrams_to_send(now)
        if self._watch:
            self._check_writable()
        return out

    # -- QUIC's events -----------------------------------------------------------

    def _translate(self, events: list[Any], now: float) -> None:
        out = self._events
        for ev in events:
            t = type(ev)
            if t is QuicStreamData:
                self._stream_data(ev.stream_id, ev.data, ev.end, now)
            elif t is QuicStreamReset:
                self._peer_reset(ev.stream_id)
            elif t is QuicUpgraded:
                self._state = 1
                out.append(Upgraded(ev.peer_id, ev.public_key))
            elif t is QuicFailed:
                if self._state != 2:
                    self._state = 2
                    self._forget_all()
                    out.append(ConnectionFailed(ev.reason))
        acks = self.quic.pings_acknowledged()
        for uid in acks:
            sent = self._pings.pop(uid, None)
            if sent is not None:
                out.append(PongReceived(uid, now - sent))

    def _stream_data(self, sid: int, data: bytes, end: bool, now: float) -> None:
        if sid & 2:  # unidirectional: libp2p does not use them
            self.quic.stop_stream(sid, RESET_CODE)
            return
        st = self._streams.get(sid)
        if st is None:
            if (sid & 1) == self._local_parity:
                return  # one of ours already gone (reset): late data
            if sid in self._gone:
                return  # a stream of the peer's that we reset or that ended: late data
            if len(self._inbound) >= self._max_inbound:
                log.info("inbound stream limit (%d) reached; resetting QUIC stream %d", self._max_inbound, sid)
                self._reset_both(sid)
                return
            st = self._streams[sid] = _QStream(inbound=True)
            self._inbound[sid] = ""
            self.negotiations[sid] = MultistreamListener(self._supports)
            heapq.heappush(self._deadlines, (now + self._negotiation_timeout, sid))
        if data:
            self.stream_activity = now
            if sid in self.negotiations:
                if not self._negotiate(sid, st, data):
                    return
            else:
                if not self._count_unread(sid, st, len(data)):
                    return
                self._events.append(StreamData(sid, data))
        if end and not st.got_fin:
            st.got_fin = True
            if sid in self.negotiations:
                self._end_negotiation(sid, "stream ended during protocol negotiation")
                return
            self._events.append(StreamEnded(sid))
            if st.sent_fin:
                self._free(sid)

    def _count_unread(self, sid: int, st: _QStream, n: int) -> bool:
        if st.unread + n > self._max_stream_buffer or self._unread_total + n > self._max_connection_buffer:
            log.info("QUIC stream %d: over %d unread bytes; resetting", sid,
                     self._max_stream_buffer if st.unread + n > self._max_stream_buffer
                     else self._max_connection_buffer)
            self._forget(sid)
            self._reset_both(sid)
            self._events.append(StreamResetByPeer(sid))  # the shell's stream ends as reset
            return False
        st.unread += n
        self._unread_total += n
        return True

    def _peer_reset(self, sid: int) -> None:
        st = self._streams.get(sid)
        if st is None:
            return
        neg = self.negotiations.pop(sid, None)
        self._forget(sid)
        self.quic.reset_stream(sid, RESET_CODE)  # a libp2p reset ends both directions
        if neg is not None and (sid & 1) == self._local_parity:
            self._close_on_select.discard(sid)
            self._events.append(OutboundStreamFailed(sid, "reset by peer"))
        elif neg is None:
            self._events.append(StreamResetByPeer(sid))

    # -- negotiation -------------------------------------------------------------

    def _negotiate(self, sid: int, st: _QStream, data: bytes) -> bool:
        ms = self.negotiations[sid]
        try:
            ms.receive_data(data)
        except MultistreamError as exc:
            reply = ms.data_to_send()
            if reply:
                self._send_quietly(sid, reply)
            log.debug("QUIC stream %d negotiation failed: %s", sid, exc)
            del self.negotiations[sid]
            self._close_on_select.discard(sid)
            self._forget(sid)
            self._reset_both(sid)
            if not st.inbound:
                self._events.append(OutboundStreamFailed(sid, f"protocol negotiation failed: {exc}", exc))
            return False
        reply = ms.data_to_send()
        if reply:
            self._send_quietly(sid, reply)
        if not ms.done:
            return True
        del self.negotiations[sid]
        protocol = ms.selected
        assert protocol is not None
        rest = ms.unused
        if rest and not self._count_unread(sid, st, len(rest)):
            return False
        if st.inbound:
            self._inbound[sid] = protocol
            self._events.append(InboundStreamNegotiated(sid, protocol, rest))
        else:
            if sid in self._close_on_select:
                self._close_on_select.discard(sid)
                self.close_stream(sid)
            self._events.append(OutboundStreamNegotiated(sid, protocol, rest))
        return True

    def _end_negotiation(self, sid: int, reason: str) -> None:
        del self.negotiations[sid]
        self._close_on_select.discard(sid)
        st = self._streams.get(sid)
        self._forget(sid)
        self._reset_both(sid)
        if st is not None and not st.inbound:
            self._events.append(OutboundStreamFailed(sid, reason))

    # -- bookkeeping -------------------------------------------------------------

    def _send_quietly(self, sid: int, data: bytes, end: bool = False) -> None:
        """Send what the core itself sends (a negotiation's answer, a FIN).
        The peer may have stopped the stream's sending side already
        (STOP_SENDING: go-libp2p sends one with every close): then there is
        no one to send to, and the reading side goes on."""
        try:
            self.quic.send(sid, data, end)
        except StreamReset:
            pass

    def _reset_both(self, sid: int) -> None:
        if self._state == 2:
            return
        quic = self.quic
        quic.reset_stream(sid, RESET_CODE)
        quic.stop_stream(sid, RESET_CODE)

    def _forget(self, sid: int) -> None:
        st = self._streams.pop(sid, None)
        if st is not None and st.inbound:
            gone = self._gone
            gone[sid] = None
            if len(gone) > 4096:
                del gone[next(iter(gone))]
        if st is not None and st.unread:
            self._unread_total -= st.unread
        self._watch.discard(sid)
        if sid in self._inbound:
            del self._inbound[sid]
            self._uncount(sid)

    def _free(self, sid: int) -> None:
        self._forget(sid)
        self._events.append(StreamFreed(sid))

    def _forget_all(self) -> None:
        self._streams.clear()
        self.negotiations.clear()
        self._close_on_select.clear()
        self._deadlines.clear()
        self._inbound.clear()
        self._counted.clear()
        self._by_protocol.clear()
        self._watch.clear()
        self._unread_total = 0

    def _uncount(self, sid: int) -> None:
        p = self._counted.pop(sid, None)
        if p is not None:
            n = self._by_protocol[p] - 1
            if n > 0:
                self._by_protocol[p] = n
            else:
                del self._by_protocol[p]

    def _check_writable(self) -> None:
        if not self._watch:
            return
        for sid in list(self._watch):
            if self.quic.buffered(sid) <= WRITABLE_BELOW:
                self._watch.discard(sid)
                self._events.append(StreamWritable(sid))

    def count_inbound(self, stream_id: int, limit: int) -> bool:
        """As :meth:`kadfast.net.upgrade.ConnectionCore.count_inbound`."""
        p = self._inbound.get(stream_id)
        if not p or stream_id in self._counted:
            return True
        n = self._by_protocol.get(p, 0)
        if n >= limit:
            return False
        self._by_protocol[p] = n + 1
        self._counted[stream_id] = p
        return True

    def inbound_streams_for(self, protocol: str) -> int:
        return self._by_protocol.get(protocol, 0)

    # -- local operations ------------------------------------------------------------

    def open_stream(self, protocols: list[str], now: float, *, close_when_negotiated: bool = False) -> int:
        """Open a stream and propose ``protocols`` on it (outcome: an
        :class:`OutboundStreamNegotiated` or :class:`OutboundStreamFailed`
        event). :class:`StreamReset` when the connection is not open."""
        if self._state != 1:
            raise StreamReset("connection is not open")
        ms = MultistreamDialer(list(protocols))
        try:
            sid = self.quic.open_stream()
        except ConnectionError as exc:
            raise StreamReset(str(exc)) from None
        self._streams[sid] = _QStream(inbound=False)
        self.negotiations[sid] = ms
        if close_when_negotiated:
            self._close_on_select.add(sid)
        heapq.heappush(self._deadlines, (now + self._negotiation_timeout, sid))
        self.quic.send(sid, ms.data_to_send())
        return sid

    def send(self, stream_id: int, data: bytes) -> None:
        """Queue data on a negotiated stream; :class:`StreamReset` when it is
        gone (reset by the peer in events not handed out yet)."""
        st = self._streams.get(stream_id)
        if st is None or self._state != 1:
            if stream_id in self._inbound:
                self._forget(stream_id)
            raise StreamReset("reset by peer")
        if st.sent_fin:
            raise StreamReset("write side closed")
        self.quic.send(stream_id, data)
        if self.quic.buffered(stream_id) > WRITABLE_BELOW:
            self._watch.add(stream_id)

    def buffered(self, stream_id: int) -> int:
        """Bytes written on the stream and not sent yet (see :meth:`QuicCore.buffered`)."""
        return self.quic.buffered(stream_id) if stream_id in self._streams else 0

    def consumed(self, stream_id: int, n: int) -> None:
        """The application took ``n`` received bytes of the stream."""
        st = self._streams.get(stream_id)
        if st is not None:
            n = min(n, st.unread)
            st.unread -= n
            self._unread_total -= n

    def close_stream(self, stream_id: int) -> None:
        """Half-close (a FIN after what is queued). A stream the peer closed
        already is freed (:class:`StreamFreed` in :meth:`events`)."""
        st = self._streams.get(stream_id)
        if st is None or st.sent_fin or self._state != 1:
            return
        st.sent_fin = True
        self._send_quietly(stream_id, b"", end=True)
        if stream_id in self._inbound:
            self._uncount(stream_id)
            self._inbound[stream_id] = ""
        if st.got_fin:
            self._free(stream_id)

    def reset_stream(self, stream_id: int) -> None:
        """Reset the stream both ways, negotiated or not."""
        if self.negotiations.pop(stream_id, None) is not None:
            self._close_on_select.discard(stream_id)
        known = stream_id in self._streams
        self._forget(stream_id)
        if known:
            self._reset_both(stream_id)

    def ping(self, now: float) -> int:
        """Send a QUIC PING; its acknowledgement gives :class:`PongReceived`
        with the returned opaque value."""
        if self._state != 1:
            raise StreamReset("connection is not open")
        self._next_ping += 1
        uid = self._next_ping
        self._pings[uid] = now
        if len(self._pings) > 64:  # unanswered ones are dropped, oldest first
            del self._pings[next(iter(self._pings))]
        self.quic.ping(uid)
        return uid

    def close(self, reason: str = "closed locally") -> None:
        """CONNECTION_CLOSE; what :meth:`datagrams_to_send` returns next is
        the last output."""
        if self._state == 2:
            return
        self._state = 2
        self._forget_all()
        self.quic.close(reason)
