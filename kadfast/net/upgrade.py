"""The upgrade of one libp2p connection and the negotiation of its streams,
sans-IO.

A :class:`ConnectionCore` takes the bytes read from a TCP connection and
produces the bytes to write to it, driving the cores under it in turn:
multistream-select for ``/noise``, the Noise XX handshake, multistream-select
for ``/yamux/1.0.0`` over the encrypted channel, then the Yamux session and a
multistream-select negotiation on every stream. It keeps the connection's
deadlines (the handshake, each stream's negotiation) as times the caller
asks for with :meth:`~ConnectionCore.get_timer` and hands back with
:meth:`~ConnectionCore.handle_timer`; it never reads a clock.

Once the connection is open, :meth:`~ConnectionCore.receive_data` decrypts
and hands the plaintext straight to the Yamux session; the session's events
for negotiated streams come out as they are (:class:`StreamData`,
:class:`StreamEnded`, :class:`StreamResetByPeer`, :class:`StreamFreed`,
:class:`StreamWritable`, from :mod:`kadfast.yamux`), and a stream's
negotiation produces one of :class:`InboundStreamNegotiated`,
:class:`OutboundStreamNegotiated` or :class:`OutboundStreamFailed`. Plaintext
queued between two :meth:`~ConnectionCore.data_to_send` calls is encrypted
at once, in one Noise frame sequence.

The Yamux session is public (``session``, once open): flow-control calls
that leave this core's state alone (``consumed``, ``buffered``) may go to it
directly, as :meth:`~ConnectionCore.consumed` and
:meth:`~ConnectionCore.buffered` do.

The inbound stream limits are kept here too: at most ``max_inbound_streams``
inbound streams at once (negotiating or negotiated; a stream beyond it is
reset), and the per-protocol counts of :meth:`~ConnectionCore.count_inbound`.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..errors import KadfastError, MultistreamError, StreamReset, YamuxError
from ..keys import Ed25519KeyPair, PublicKey
from ..multistream import MultistreamDialer, MultistreamListener
from ..noise import NoiseHandshake, NoiseStaticKey
from ..peerid import PeerId
from ..yamux import (
    GoAwayReceived,
    PingReceived,
    PongReceived,
    SessionClosed,
    StreamData,
    StreamEnded,
    StreamFreed,
    StreamOpened,
    StreamResetByPeer,
    StreamWritable,
    YamuxEvent,
    YamuxSession,
)

log = logging.getLogger("kadfast.net")

__all__ = [
    "NOISE_PROTOCOL",
    "YAMUX_PROTOCOL",
    "ConnectionCore",
    "ConnectionEvent",
    "Upgraded",
    "InboundStreamNegotiated",
    "OutboundStreamNegotiated",
    "OutboundStreamFailed",
    "ConnectionFailed",
    "StreamData",
    "StreamEnded",
    "StreamResetByPeer",
    "StreamFreed",
    "StreamWritable",
    "PongReceived",
    "GoAwayReceived",
    "SessionClosed",
]

NOISE_PROTOCOL = "/noise"
YAMUX_PROTOCOL = "/yamux/1.0.0"
_EARLY_MUXERS = (YAMUX_PROTOCOL,)


# --- events -----------------------------------------------------------------
# Not frozen: one of them is made per stream, and a frozen dataclass pays an
# object.__setattr__ per field. They are not to be modified.


@dataclass(slots=True)
class Upgraded:
    """The upgrade is done (Noise authenticated the remote, Yamux was
    agreed): streams may be opened from now on."""

    remote_peer_id: PeerId
    remote_public_key: PublicKey


@dataclass(slots=True)
class InboundStreamNegotiated:
    """The remote opened a stream and a protocol we support was agreed on.
    ``data``: what the remote sent behind the negotiation (protocol data,
    already counted as received: acknowledge it with
    :meth:`ConnectionCore.consumed` once taken)."""

    stream_id: int
    protocol: str
    data: bytes


@dataclass(slots=True)
class OutboundStreamNegotiated:
    """A stream of :meth:`ConnectionCore.open_stream` agreed on ``protocol``;
    ``data`` as for :class:`InboundStreamNegotiated`."""

    stream_id: int
    protocol: str
    data: bytes


@dataclass(slots=True)
class OutboundStreamFailed:
    """A stream of :meth:`ConnectionCore.open_stream` did not get a protocol:
    the remote refused every proposal (``error`` is the negotiation's
    :class:`MultistreamError`), or the stream was reset, ended or timed out
    first (``error`` is None). The stream is gone (reset if need be)."""

    stream_id: int
    reason: str
    error: MultistreamError | None = None


@dataclass(slots=True)
class ConnectionFailed:
    """The connection cannot go on: the handshake timed out (``error`` is
    None), or a layer raised ``error``. ``remote`` says whether the remote
    broke a protocol. Nothing more is received; what :meth:`data_to_send`
    still returns (a Yamux GoAway) may be sent before closing."""

    reason: str
    error: KadfastError | None = None

    @property
    def remote(self) -> bool:
        return bool(getattr(self.error, "remote", False))


ConnectionEvent = (
    Upgraded
    | InboundStreamNegotiated
    | OutboundStreamNegotiated
    | OutboundStreamFailed
    | ConnectionFailed
    | StreamData
    | StreamEnded
    | StreamResetByPeer
    | StreamFreed
    | StreamWritable
    | PongReceived
    | GoAwayReceived
    | SessionClosed
)


_new = object.__new__


class _Cipher(Protocol):
    def encrypt(self, plaintext: bytes) -> bytes: ...
    def decrypt(self, data: bytes) -> bytes: ...


_SEC, _NOISE, _MUX, _OPEN, _CLOSED = range(5)

_Negotiator = MultistreamDialer | MultistreamListener


class ConnectionCore:
    """One side of a libp2p connection over TCP, from its first byte.

    ``keypair``/``static_key``: our identity and its Noise static key;
    ``initiator``: whether we dialed; ``expected_peer``: whom the dialer
    expects (the handshake fails on another identity); ``handshake_timeout``:
    seconds from ``now`` for the whole upgrade; ``negotiation_timeout``:
    seconds a stream may take to agree on a protocol; ``supports_protocol``:
    whether an inbound stream may have a protocol; ``max_streams`` and
    ``max_pings_per_second``: the Yamux session's limits;
    ``max_inbound_streams``: inbound streams open at once;
    ``early_muxer``: offer Yamux in the Noise handshake (the inlined muxer
    negotiation), which saves the multistream-select round trip for
    ``/yamux/1.0.0`` with peers that offer it too (go-libp2p does).

    The dialer's first bytes are ready in :meth:`data_to_send` at once.
    """

    __slots__ = (
        "initiator",
        "_keypair",
        "_static_key",
        "_expected",
        "_supports",
        "_negotiation_timeout",
        "_max_streams",
        "_max_pings",
        "_max_inbound",
        "_state",
        "_ms",
        "_noise",
        "_crypto",
        "session",
        "_raw",
        "_plain",
        "_handshake_deadline",
        "negotiations",
        "_close_on_select",
        "_closed_on_select",
        "_deadlines",
        "_local_parity",
        "_inbound",
        "_counted",
        "_by_protocol",
        "_events",
        "remote_peer_id",
        "remote_public_key",
        "stream_activity",
        "_early_muxer",
        "early_muxer",
    )

    def __init__(
        self,
        keypair: Ed25519KeyPair,
        *,
        initiator: bool,
        now: float,
        expected_peer: PeerId | None = None,
        static_key: NoiseStaticKey | None = None,
        supports_protocol: Callable[[str], bool],
        handshake_timeout: float = 10.0,
        negotiation_timeout: float = 10.0,
        max_streams: int = 512,
        max_pings_per_second: float = 10.0,
        max_inbound_streams: int = 256,
        early_muxer: bool = True,
    ) -> None:
        self.initiator = initiator
        self._early_muxer = early_muxer
        #: whether Yamux was agreed in the Noise handshake (no multistream-select for it)
        self.early_muxer = False
        self._keypair = keypair
        self._static_key = static_key
        self._expected = expected_peer
        self._supports = supports_protocol
        self._negotiation_timeout = negotiation_timeout
        self._max_streams = max_streams
        self._max_pings = max_pings_per_second
        self._max_inbound = max_inbound_streams
        self._state = _SEC
        self._noise: NoiseHandshake | None = None
        self._crypto: _Cipher | None = None
        #: the Yamux session, once the upgrade is done
        self.session: YamuxSession | None = None
        self._raw: list[bytes] = []  # handshake bytes, sent as they are
        self._plain: list[bytes] = []  # plaintext waiting for encryption
        self._handshake_deadline: float | None = now + handshake_timeout
        #: the streams still agreeing on a protocol, by id (not to be
        #: modified): each has a deadline, so the timer is due iff it is not
        #: empty once the connection is open
        self.negotiations: dict[int, _Negotiator] = {}
        # outbound streams to half-close as soon as their protocol is agreed
        self._close_on_select: set[int] = set()
        self._closed_on_select = False  # one was, in the read being handled
        # when each negotiation must be done
        self._deadlines: list[tuple[float, int]] = []
        # the parity of the stream ids we open (the dialer's are odd)
        self._local_parity = 1 if initiator else 0
        # inbound streams open (negotiating: ""), counted per protocol
        self._inbound: dict[int, str] = {}
        self._counted: dict[int, str] = {}
        self._by_protocol: dict[str, int] = {}
        self._events: list[ConnectionEvent] = []
        self.remote_peer_id: PeerId | None = None
        self.remote_public_key: PublicKey | None = None
        #: the ``now`` of the last read that carried data of a stream (0.0: never)
        self.stream_activity = 0.0
        self._ms: _Negotiator | None
        if initiator:
            self._ms = MultistreamDialer([NOISE_PROTOCOL])
            self._raw.append(self._ms.data_to_send())
        else:
            self._ms = MultistreamListener([NOISE_PROTOCOL])

    # -- state -------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Upgraded, and neither failed nor closed."""
        return self._state == _OPEN

    @property
    def is_closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def pending_output(self) -> int:
        """Stream payload bytes queued for :meth:`data_to_send`."""
        session = self.session
        return session.pending_output if session is not None else 0

    @property
    def inbound_streams(self) -> int:
        """Inbound streams open (negotiating or negotiated)."""
        return len(self._inbound)

    def negotiating(self, stream_id: int) -> bool:
        """Whether the stream is still agreeing on its protocol."""
        return stream_id in self.negotiations

    def buffered(self, stream_id: int) -> int:
        """Bytes written on the stream that wait for the remote's window."""
        session = self.session
        return session.buffered(stream_id) if session is not None else 0

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[ConnectionEvent]:
        """Feed bytes read from the connection, any split; returns the events
        they produce (and any produced by local calls not handed out yet).
        A protocol error gives :class:`ConnectionFailed` as the last event;
        input after it, or after :meth:`close`, is ignored."""
        crypto = self._crypto
        session = self.session
        if self._state == _OPEN and crypto is not None and session is not None:
            try:
                plain = crypto.decrypt(data)
                if not plain:
                    return self.events()
                events = session.receive_data(plain, now)
            except KadfastError as exc:
                return self._failed(exc, now)
            out = self._events
            if out:
                self._events = []
            else:
                out = []
            self._translate(events, now, out)
            if self._closed_on_select:
                # a stream the remote had closed too is freed by our FIN:
                # after the read's events (its StreamEnded comes first)
                self._closed_on_select = False
                local = session.events()
                if local:
                    self._translate(local, now, out)
            return out
        if self._state == _CLOSED:
            return self.events()
        try:
            return self._upgrade(data, now)
        except KadfastError as exc:
            return self._failed(exc, now)

    def _upgrade(self, data: bytes, now: float) -> list[ConnectionEvent]:
        while data:
            state = self._state
            if state == _SEC:
                ms = self._ms
                assert ms is not None
                ms.receive_data(data)
                self._raw.append(ms.data_to_send())
                if not ms.done:
                    break
                if ms.selected != NOISE_PROTOCOL:
                    raise MultistreamError("peer does not speak /noise", remote=True)
                data = ms.unused
                self._ms = None
                self._state = _NOISE
                noise = self._noise = NoiseHandshake(
                    self._keypair,
                    initiator=self.initiator,
                    expected_peer=self._expected,
                    static_key=self._static_key,
                    muxers=_EARLY_MUXERS if self._early_muxer else (),
                )
                self._raw.append(noise.data_to_send())
            elif state == _NOISE:
                hs = self._noise
                assert hs is not None
                hs.receive_data(data)
                self._raw.append(hs.data_to_send())
                if not hs.complete:
                    break
                self.remote_peer_id = hs.remote_peer_id
                self.remote_public_key = hs.remote_public_key
                self._crypto = hs.transport()
                data = hs.unused
                self._noise = None
                self._state = _MUX
                if hs.muxer is not None:  # agreed in the handshake: Yamux at once
                    self.early_muxer = True
                    plain = self._crypto.decrypt(data) if data else b""
                    return self._open(plain, now)
                if self.initiator:
                    self._ms = MultistreamDialer([YAMUX_PROTOCOL])
                    self._plain.append(self._ms.data_to_send())
                else:
                    self._ms = MultistreamListener([YAMUX_PROTOCOL])
            elif state == _MUX:
                assert self._crypto is not None and self._ms is not None
                plain = self._crypto.decrypt(data)
                if not plain:
                    break
                ms = self._ms
                ms.receive_data(plain)
                self._plain.append(ms.data_to_send())
                if not ms.done:
                    break
                if ms.selected != YAMUX_PROTOCOL:
                    raise MultistreamError("peer does not speak /yamux/1.0.0", remote=True)
                self._ms = None
                return self._open(ms.unused, now)
            else:  # pragma: no cover - the callers handle the other states
                break
        return self.events()

    def _open(self, rest: bytes, now: float) -> list[ConnectionEvent]:
        """Yamux agreed: the session starts, ``rest`` (plaintext that came
        behind the agreement) is its first input."""
        session = self.session = YamuxSession(
            self.initiator, max_streams=self._max_streams, max_pings_per_second=self._max_pings
        )
        self._state = _OPEN
        self._handshake_deadline = None
        assert self.remote_peer_id is not None and self.remote_public_key is not None
        events = self.events()
        events.append(Upgraded(self.remote_peer_id, self.remote_public_key))
        if rest:
            try:
                self._translate(session.receive_data(rest, now), now, events)
            except KadfastError as exc:
                events += self._failed(exc, now)
        return events

    def _translate(self, events: list[YamuxEvent], now: float, out: list[ConnectionEvent]) -> None:
        """Append the session's ``events`` to ``out`` as the connection's:
        negotiations run here, the events of negotiated streams pass as they
        are."""
        neg = self.negotiations
        data_seen = False
        ev: Any  # one of the YamuxEvent types, told apart by the exact type
        for ev in events:
            t = type(ev)
            if t is StreamData:
                data_seen = True
                if ev.stream_id in neg:
                    self._negotiate(ev.stream_id, ev.data, out)
                    continue
            elif t is StreamOpened:
                self._on_inbound_stream(ev.stream_id, now)
                continue
            elif t is StreamResetByPeer or t is StreamFreed:
                sid = ev.stream_id
                if sid in self._inbound:
                    self._forget_inbound(sid)
                if neg.pop(sid, None) is not None:
                    if (sid & 1) == self._local_parity:
                        self._close_on_select.discard(sid)
                        out.append(OutboundStreamFailed(sid, "reset by peer"))
                    continue
            elif t is StreamEnded:
                sid = ev.stream_id
                if sid in neg:
                    self._end_negotiation(sid, "stream ended during protocol negotiation", out)
                    continue
            elif t is PingReceived:
                continue  # answered by the session already
            elif t is SessionClosed:
                self._session_closed()
            out.append(ev)
        if data_seen:
            self.stream_activity = now

    def _session_closed(self) -> None:
        self.negotiations.clear()
        self._close_on_select.clear()
        self._deadlines.clear()
        self._inbound.clear()
        self._counted.clear()
        self._by_protocol.clear()

    # -- stream negotiation --------------------------------------------------

    def _on_inbound_stream(self, stream_id: int, now: float) -> None:
        session = self.session
        assert session is not None
        if len(self._inbound) >= self._max_inbound:
            log.info("inbound stream limit (%d) reached; resetting stream %d", self._max_inbound, stream_id)
            session.reset_stream(stream_id)
            return
        self._inbound[stream_id] = ""
        self.negotiations[stream_id] = MultistreamListener(self._supports)
        heapq.heappush(self._deadlines, (now + self._negotiation_timeout, stream_id))

    def _negotiate(self, sid: int, data: bytes, out: list[ConnectionEvent]) -> None:
        ms = self.negotiations[sid]
        session = self.session
        assert session is not None
        # The peer may have reset the stream later in the same read (a
        # cancelled request): the session then no longer has it, and what
        # negotiation would answer is dropped; the reset event follows.
        try:
            ms.receive_data(data)
        except MultistreamError as exc:
            reply = ms.data_to_send()
            if reply and session.has_stream(sid):
                session.send(sid, reply)
            log.debug("stream %d negotiation failed: %s", sid, exc)
            del self.negotiations[sid]
            self._close_on_select.discard(sid)
            session.reset_stream(sid)
            if sid in self._inbound:
                self._forget_inbound(sid)
            elif (sid & 1) == self._local_parity:
                out.append(OutboundStreamFailed(sid, f"protocol negotiation failed: {exc}", exc))
            return
        reply = ms.data_to_send()
        if reply and session.has_stream(sid):
            session.send(sid, reply)
        if not ms.done:
            session.consumed(sid, len(data))
            return
        del self.negotiations[sid]
        protocol = ms.selected
        assert protocol is not None
        rest = ms.unused
        # negotiation bytes are consumed now; the rest when the application takes it
        session.consumed(sid, len(data) - len(rest))
        # one event per stream: made without the dataclass __init__ (a call)
        if (sid & 1) == self._local_parity:
            ev: OutboundStreamNegotiated | InboundStreamNegotiated = _new(OutboundStreamNegotiated)
            if sid in self._close_on_select:
                # its FIN goes with whatever this read answers
                self._close_on_select.discard(sid)
                session.close_stream(sid)
                self._closed_on_select = True
        else:
            if sid in self._inbound:
                self._inbound[sid] = protocol
            ev = _new(InboundStreamNegotiated)
        ev.stream_id = sid
        ev.protocol = protocol
        ev.data = rest
        out.append(ev)

    def _end_negotiation(self, sid: int, reason: str, out: list[ConnectionEvent]) -> None:
        """A stream that can no longer agree on a protocol: reset it."""
        del self.negotiations[sid]
        self._close_on_select.discard(sid)
        session = self.session
        if session is not None:
            session.reset_stream(sid)
        if sid in self._inbound:
            self._forget_inbound(sid)
        else:
            out.append(OutboundStreamFailed(sid, reason))

    def _forget_inbound(self, sid: int) -> None:
        del self._inbound[sid]
        self._uncount(sid)

    def _uncount(self, sid: int) -> None:
        p = self._counted.pop(sid, None)
        if p is not None:
            n = self._by_protocol[p] - 1
            if n > 0:
                self._by_protocol[p] = n
            else:
                del self._by_protocol[p]

    def count_inbound(self, stream_id: int, limit: int) -> bool:
        """Count a negotiated inbound stream against a limit on the streams
        of its protocol open at once. False, and nothing counted, when
        ``limit`` are counted already; True for a stream already gone (or
        counted, or closed by us). A counted stream is uncounted when we
        half-close it (the handler is done with it: a client that closes its
        side only after reading the answer, as go-libp2p-kad-dht's does,
        would otherwise hold its count for a round trip more) or when it is
        reset. It still counts against ``max_inbound_streams`` until it
        leaves the session."""
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
        """Inbound streams of ``protocol`` counted by :meth:`count_inbound` and still open."""
        return self._by_protocol.get(protocol, 0)

    # -- timers ------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (None: no deadline): the
        handshake's, then the earliest negotiation deadline. (The Yamux
        session keeps no timers of its own.)"""
        if self._state != _OPEN:
            return self._handshake_deadline
        heap = self._deadlines
        neg = self.negotiations
        while heap:
            when, sid = heap[0]
            if sid in neg:
                return when
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> list[ConnectionEvent]:
        """Act on the deadlines passed at ``now``: a handshake not done fails
        the connection; a stream still negotiating is reset (an outbound one
        gives :class:`OutboundStreamFailed`)."""
        state = self._state
        if state != _OPEN:
            deadline = self._handshake_deadline
            if state != _CLOSED and deadline is not None and now >= deadline:
                self._handshake_deadline = None
                self._state = _CLOSED
                self._events.append(ConnectionFailed("handshake timed out"))
            return self.events()
        session = self.session
        assert session is not None
        session.handle_timer(now)
        heap = self._deadlines
        neg = self.negotiations
        out = self._events
        self._events = []
        while heap and heap[0][0] <= now:
            _, sid = heapq.heappop(heap)
            if sid in neg:
                log.info("stream %d did not negotiate a protocol in time; resetting", sid)
                self._end_negotiation(sid, "protocol negotiation timed out", out)
        return out

    # -- local operations ------------------------------------------------------

    def events(self) -> list[ConnectionEvent]:
        """The events produced by local calls (:meth:`close_stream` freeing a
        stream the remote had closed, :meth:`close`) not handed out yet."""
        session = self.session
        out = self._events
        self._events = []
        if session is not None:
            local = session.events()
            if local:
                neg = self.negotiations
                for ev in local:
                    # the usual one: a negotiated stream freed by our half-close
                    if type(ev) is StreamFreed and ev.stream_id not in neg:
                        if ev.stream_id in self._inbound:
                            self._forget_inbound(ev.stream_id)
                        out.append(ev)
                    else:
                        self._translate([ev], self.stream_activity, out)
        return out

    def _open_session(self) -> YamuxSession:
        session = self.session
        if self._state != _OPEN or session is None:
            raise StreamReset("connection is not open")
        return session

    def open_stream(self, protocols: list[str], now: float, *, close_when_negotiated: bool = False) -> int:
        """Open a stream and propose ``protocols`` (in order of preference) on
        it; its outcome is an :class:`OutboundStreamNegotiated` or
        :class:`OutboundStreamFailed` event. ``close_when_negotiated``
        half-closes it the moment a protocol is agreed (a stream we only
        read, as identify's: the FIN leaves with the output of the read that
        agreed it). Raises :class:`StreamReset` when the connection is not
        open, :class:`YamuxError` when no stream can be opened now (the
        session's limits, GoAway)."""
        session = self._open_session()
        ms = MultistreamDialer(list(protocols))
        sid = session.open_stream()
        self.negotiations[sid] = ms
        if close_when_negotiated:
            self._close_on_select.add(sid)
        heapq.heappush(self._deadlines, (now + self._negotiation_timeout, sid))
        session.send(sid, ms.data_to_send())
        return sid

    def send(self, stream_id: int, data: bytes) -> None:
        """Queue data on a negotiated stream. Raises :class:`StreamReset` when
        the session no longer has the stream (the remote reset it in events
        not handed out yet): the stream is forgotten, the connection goes on."""
        session = self.session
        if session is None:
            raise StreamReset("connection is not open")
        try:
            session.send(stream_id, data)
        except YamuxError:
            if session.has_stream(stream_id):
                raise  # half-closed by us, or over the buffer limit
            if stream_id in self._inbound:
                self._forget_inbound(stream_id)
            raise StreamReset("reset by peer") from None

    def consumed(self, stream_id: int, n: int) -> None:
        """The application took ``n`` received bytes of the stream."""
        session = self.session
        if session is not None:
            session.consumed(stream_id, n)

    def close_stream(self, stream_id: int) -> None:
        """Half-close the stream (FIN after what is buffered). Freeing a
        stream the remote closed already gives :class:`StreamFreed` in
        :meth:`events`."""
        session = self.session
        if session is not None and self._state == _OPEN:
            session.close_stream(stream_id)
        if stream_id in self._inbound:
            self._uncount(stream_id)
            self._inbound[stream_id] = ""  # done: count_inbound counts it no more

    def reset_stream(self, stream_id: int) -> None:
        """Reset the stream (RST; buffered data dropped), negotiated or not."""
        if self.negotiations.pop(stream_id, None) is not None:
            self._close_on_select.discard(stream_id)
        if stream_id in self._inbound:
            self._forget_inbound(stream_id)
        session = self.session
        if session is not None and self._state == _OPEN:
            session.reset_stream(stream_id)

    def ping(self, now: float) -> int:
        """Queue a Yamux ping; returns its opaque value, found again in the
        :class:`PongReceived` event. Raises :class:`StreamReset` when the
        connection is not open."""
        return self._open_session().ping(now)

    def close(self) -> None:
        """Say goodbye (a Yamux GoAway, once open) and stop: what
        :meth:`data_to_send` returns next is the last output; further input
        is ignored."""
        if self._state == _CLOSED:
            return
        session = self.session
        if session is not None and self._state == _OPEN:
            session.go_away(0)
            local = session.events()
            if local:
                self._translate(local, self.stream_activity, self._events)
        self._state = _CLOSED
        self._handshake_deadline = None

    def _failed(self, exc: KadfastError, now: float) -> list[ConnectionEvent]:
        events = self._events
        self._events = []
        session = self.session
        if session is not None:
            # what the session produced before the error; its own account of
            # the error (SessionClosed) gives way to the failure
            local = [e for e in session.events() if type(e) is not SessionClosed]
            self._translate(local, now, events)
        self._state = _CLOSED
        self._handshake_deadline = None
        self._session_closed()
        events.append(ConnectionFailed(f"{type(exc).__name__}: {exc}", exc))
        return events

    # -- output --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes to write: the handshake's as they are, then everything
        queued since the last call encrypted at once."""
        plain = self._plain
        session = self.session
        if session is not None:
            out = session.data_to_send()
            if plain:
                if out:
                    plain.append(out)
                out = b"".join(plain)
                plain.clear()
        elif plain:
            out = b"".join(plain)
            plain.clear()
        else:
            out = b""
        if out:
            crypto = self._crypto
            assert crypto is not None  # plaintext is queued only once keyed
            out = crypto.encrypt(out)
        raw = self._raw
        if raw:
            raw.append(out)
            out = b"".join(raw)
            raw.clear()
        return out
