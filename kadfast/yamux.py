"""A sans-IO Yamux session (``/yamux/1.0.0``, the libp2p stream multiplexer).

:class:`YamuxSession` takes the bytes that arrive on a secured connection
(:meth:`~YamuxSession.receive_data`) and returns events; the frames that it
wants to send pile up until :meth:`~YamuxSession.data_to_send` hands them out
as one ``bytes`` object. It does no I/O and reads no clock: time is an
argument.

Wire format (hashicorp/yamux ``spec.md``, libp2p/specs ``yamux/README.md``):
a 12-byte big-endian header ``version u8 | type u8 | flags u16 | stream id
u32 | length u32``; for Data frames ``length`` bytes of payload follow, for
the other types ``length`` is a value (window delta, ping opaque, GoAway
code).

Choices this implementation makes where the spec leaves room:

- **Lazy SYN and ACK.** :meth:`open_stream` sends nothing; the SYN rides on
  the first frame sent on the stream (data, FIN or window update). An inbound
  stream is acknowledged by the first frame we send on it, as the libp2p spec
  recommends ("SHOULD NOT implicitly acknowledge streams but wait for the
  application to send the first DATA frame"). With a ``window`` larger than
  the default, the extra credit must be announced at once, so a window
  update carrying SYN (outbound) or ACK (inbound) goes out as soon as the
  stream exists.
- **FIN** is always an empty WindowUpdate frame of its own (as go-yamux
  sends it), never a flag on a Data frame: js-libp2p's yamux handles a Data
  frame's FIN before its payload and would drop the payload.
- **Whole frames.** A Data frame's payload is delivered once the whole frame
  has arrived; a frame longer than the receive window is refused as soon as
  its header is seen, so the input buffer never holds more than one window
  plus a header.
- **GoAway** stops new streams in the direction of its sender; existing
  streams go on. The session is closed (:class:`SessionClosed`) when GoAway
  went both ways, when either GoAway carries an error code, or on a protocol
  error. After that, input is ignored and every sending call raises.
- **Pings** from the remote are answered at most ``max_pings_per_second``
  (10) per second with a burst of 20 (a token bucket on the ``now`` given to
  :meth:`~YamuxSession.receive_data`); the rest go unanswered and are counted
  in ``pings_ignored``, so a ping flood queues no pongs without bound; more
  than ``MAX_IGNORED_PINGS_IN_A_ROW`` (1,000) unanswered in a row is a
  protocol error.
- Frames for a stream we do not know (one we reset, a race) are ignored, as
  is a RST for an unknown stream. Unknown flag bits are ignored. Ping and
  GoAway frames are accepted on any stream id (the spec says they "should"
  use 0).

Events are returned by :meth:`receive_data`. A few local calls can produce
events too (:meth:`close_stream` after the remote half-closed frees the
stream: :class:`StreamFreed`; :meth:`go_away` can close the session:
:class:`SessionClosed`); those are returned by the next
:meth:`receive_data` call, or at once by :meth:`events`.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import YamuxError

__all__ = [
    "DEFAULT_WINDOW",
    "DEFAULT_MAX_PINGS_PER_SECOND",
    "DEFAULT_PING_BURST",
    "MAX_ACK_BACKLOG",
    "MAX_FRAME_PAYLOAD",
    "MAX_IGNORED_PINGS_IN_A_ROW",
    "MAX_PENDING_PINGS",
    "MAX_WINDOW",
    "MAX_STREAM_ID",
    "HEADER_SIZE",
    "VERSION",
    "TYPE_DATA",
    "TYPE_WINDOW_UPDATE",
    "TYPE_PING",
    "TYPE_GO_AWAY",
    "FLAG_SYN",
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "GO_AWAY_NORMAL",
    "GO_AWAY_PROTOCOL_ERROR",
    "GO_AWAY_INTERNAL_ERROR",
    "StreamOpened",
    "StreamData",
    "StreamEnded",
    "StreamResetByPeer",
    "StreamFreed",
    "StreamWritable",
    "PingReceived",
    "PongReceived",
    "GoAwayReceived",
    "SessionClosed",
    "YamuxEvent",
    "YamuxSession",
    "encode_header",
]

# --- wire constants (hashicorp/yamux spec.md, "Framing") -------------------

#: header size: version u8, type u8, flags u16, stream id u32, length u32
HEADER_SIZE = 12
#: the only version the spec defines ("always set to 0")
VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 1
FLAG_ACK = 2
FLAG_FIN = 4
FLAG_RST = 8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

# --- limits -----------------------------------------------------------------

#: initial receive window of every stream, both sides ("Flow Control": "each
#: stream with a 256KB window size"); it can only grow, by window updates
DEFAULT_WINDOW = 256 * 1024
#: unacknowledged outbound streams we allow ourselves (libp2p/specs
#: yamux/README.md, "ACK backlog": "SHOULD at most allow an ACK backlog of
#: 256 streams")
MAX_ACK_BACKLOG = 256
#: payload bytes per Data frame we send: rust-yamux's default split send size
#: (16 KiB), so that one stream cannot hold the connection for long and
#: every libp2p implementation accepts our frames
MAX_FRAME_PAYLOAD = 16 * 1024
#: the length field is a u32, so no window, delta or id can exceed this
MAX_WINDOW = 0xFFFFFFFF
#: stream ids are u32 (spec: "StreamID (32 bits)")
MAX_STREAM_ID = 0xFFFFFFFF
#: our pings awaiting a pong; older ones are forgotten (a local bound, so
#: that a peer that never answers cannot grow the table)
MAX_PENDING_PINGS = 64
#: rust-yamux's default for the number of streams per connection (512)
DEFAULT_MAX_STREAMS = 512
#: default bound on bytes queued by send() beyond the send window, per stream
DEFAULT_MAX_BUFFER_PER_STREAM = 1 << 20

_HEADER = struct.Struct(">BBHII")
_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from
# the same 12 bytes as three words: (version, type, flags) | stream id | length,
# so that the common case (version 0, Data, no flags) is one test against 0
_unpack_words = struct.Struct(">III").unpack_from


#: pings from the remote answered per second (a token bucket; further ones
#: are left unanswered and counted in ``pings_ignored``), and the burst
#: answered at once. A peer measuring RTT or keeping a connection alive
#: pings once every few seconds (go-yamux: every 30 s).
DEFAULT_MAX_PINGS_PER_SECOND = 10.0
DEFAULT_PING_BURST = 20
#: pings left unanswered in a row (none answered between them) past which
#: the remote is flooding: a protocol error that closes the session (no peer
#: pings a thousand times between two answers of a 10-per-second rate)
MAX_IGNORED_PINGS_IN_A_ROW = 1000


def encode_header(type_: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12 header bytes of a frame (version 0)."""
    return _pack(VERSION, type_, flags, stream_id, length)


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The remote opened a stream (SYN). It is acknowledged by the first
    frame we send on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamData:
    """Payload received on a stream. Call :meth:`YamuxSession.consumed` once
    the application has taken it, or the remote runs out of window."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The remote half-closed the stream (FIN): no more data will come."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamResetByPeer:
    """The remote reset the stream (RST); it is gone."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamFreed:
    """Both sides half-closed the stream; its state is freed."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """The send window of a stream that was blocked (data buffered, or the
    window at 0) grew; :meth:`YamuxSession.buffered` may have dropped."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The remote pinged us; the pong has been queued already."""

    opaque: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The answer to one of our :meth:`YamuxSession.ping` calls."""

    opaque: int
    rtt: float


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The remote will accept no new streams (code: 0 normal, 1 protocol
    error, 2 internal error)."""

    code: int


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session is over (GoAway both ways, an error GoAway, or a protocol
    error); every stream is gone."""

    reason: str


# slot setters of StreamData, for the receive loop (frozen dataclasses
# assign through object.__setattr__, which costs ~200 ns per event)
_new = object.__new__
_set_stream_id = StreamData.stream_id.__set__  # type: ignore[attr-defined,misc]
_set_data = StreamData.data.__set__  # type: ignore[attr-defined,misc]

YamuxEvent = (
    StreamOpened
    | StreamData
    | StreamEnded
    | StreamResetByPeer
    | StreamFreed
    | StreamWritable
    | PingReceived
    | PongReceived
    | GoAwayReceived
    | SessionClosed
)


# --- stream state -----------------------------------------------------------


class _Stream:
    __slots__ = (
        "sid",
        "flags",
        "acked",
        "send_window",
        "recv_window",
        "credit",
        "sendbuf",
        "buffered",
        "blocked",
        "fin_requested",
        "fin_sent",
        "remote_closed",
    )

    def __init__(self, sid: int, outbound: bool, window: int) -> None:
        self.sid = sid
        # SYN or ACK still owed: it goes on the next frame we send
        self.flags = FLAG_SYN if outbound else FLAG_ACK
        self.acked = not outbound
        # what we may send; the remote starts from the spec's default
        self.send_window = DEFAULT_WINDOW
        # what the remote may still send us
        self.recv_window = window
        # bytes consumed by the application, not yet given back
        self.credit = 0
        self.sendbuf: deque[bytes | memoryview] | None = None
        self.buffered = 0
        self.blocked = False
        self.fin_requested = False
        self.fin_sent = False
        self.remote_closed = False


def _local_error(message: str) -> YamuxError:
    return YamuxError(message, remote=False)


# --- the session ------------------------------------------------------------


class YamuxSession:
    """One side of a Yamux session. ``is_client`` is True for the dialer (odd
    stream ids) and False for the listener (even ids)."""

    __slots__ = (
        "_is_client",
        "_window",
        "_update_threshold",
        "_max_streams",
        "_max_buffer",
        "_max_ack_backlog",
        "_streams",
        "_next_id",
        "_local_parity",
        "_backlog",
        "_rbuf",
        "_out",
        "_out_bytes",
        "_events",
        "_pings",
        "_next_ping",
        "_local_go_away",
        "_remote_go_away",
        "_closed",
        "_ping_rate",
        "_ping_burst",
        "_ping_tokens",
        "_ping_refilled",
        "pings_ignored",
        "_ignored_in_a_row",
    )

    def __init__(
        self,
        is_client: bool,
        *,
        window: int = DEFAULT_WINDOW,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_buffer_per_stream: int = DEFAULT_MAX_BUFFER_PER_STREAM,
        max_ack_backlog: int = MAX_ACK_BACKLOG,
        max_pings_per_second: float = DEFAULT_MAX_PINGS_PER_SECOND,
        ping_burst: int = DEFAULT_PING_BURST,
    ) -> None:
        if not DEFAULT_WINDOW <= window <= MAX_WINDOW:
            raise _local_error(f"window must be between {DEFAULT_WINDOW} and {MAX_WINDOW}, not {window}")
        if max_streams < 1 or max_buffer_per_stream < 0 or max_ack_backlog < 1:
            raise _local_error("max_streams and max_ack_backlog must be >= 1, max_buffer_per_stream >= 0")
        self._is_client = bool(is_client)
        self._window = window
        # give credit back once half the window was consumed (as go-yamux)
        self._update_threshold = window // 2
        self._max_streams = max_streams
        self._max_buffer = max_buffer_per_stream
        self._max_ack_backlog = max_ack_backlog
        self._streams: dict[int, _Stream] = {}
        self._local_parity = 1 if is_client else 0
        self._next_id = 1 if is_client else 2
        self._backlog = 0
        self._rbuf = bytearray()
        # pending output: header and payload pieces, joined by data_to_send()
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0  # Data payload bytes in _out (headers not counted)
        # stream id when the last two items of _out are one of its Data frames
        self._events: list[YamuxEvent] = []
        self._pings: dict[int, float] = {}
        self._next_ping = 1
        self._local_go_away = False
        self._remote_go_away = False
        self._closed = False
        # pings answered: a token bucket on the ``now`` of receive_data (0: no limit)
        self._ping_rate = float(max_pings_per_second)
        self._ping_burst = float(max(1, ping_burst))
        self._ping_tokens = self._ping_burst
        self._ping_refilled: float | None = None
        #: pings from the remote left unanswered because they came too fast
        self.pings_ignored = 0
        self._ignored_in_a_row = 0

    # -- introspection ---------------------------------------------------

    @property
    def is_client(self) -> bool:
        return self._is_client

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def pending_pings(self) -> int:
        """Pings sent whose pong has not come (at most MAX_PENDING_PINGS)."""
        return len(self._pings)

    @property
    def buffered_input(self) -> int:
        """Bytes received and held until their frame is whole."""
        return len(self._rbuf)

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        """Whether the stream is still open in the session (not reset and not
        closed both ways). Events are handed out a whole read at a time, so a
        stream the application still holds may already be gone: a RST later
        in the same read removed it."""
        return stream_id in self._streams

    def buffered(self, stream_id: int) -> int:
        """Bytes queued by :meth:`send` and not yet sent; 0 for an unknown stream."""
        st = self._streams.get(stream_id)
        return st.buffered if st is not None else 0

    def send_window(self, stream_id: int) -> int:
        """Bytes we may still send on the stream now; 0 for an unknown stream."""
        st = self._streams.get(stream_id)
        return st.send_window if st is not None else 0

    def events(self) -> list[YamuxEvent]:
        """Drain the events not handed out yet (those raised by local calls,
        or produced before a protocol error)."""
        ev = self._events
        self._events = []
        return ev

    def data_to_send(self) -> bytes:
        """Every frame queued since the last call, as one bytes object."""
        out = self._out
        if not out:
            return b""
        self._out = []
        self._out_bytes = 0
        return b"".join(out)

    @property
    def pending_output(self) -> int:
        """Payload bytes queued for :meth:`data_to_send` (what the
        application wrote since the last call and the window let out)."""
        return self._out_bytes

    def get_timer(self) -> float | None:
        """No timers: keep-alive and ping timeouts are left to the caller."""
        return None

    def handle_timer(self, now: float) -> None:
        """Nothing to do (see :meth:`get_timer`)."""

    # -- receiving -------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> list[YamuxEvent]:
        """Feed bytes from the connection; returns the events they produce
        (plus any not yet handed out). Raises :class:`YamuxError` on a
        protocol violation, after queueing a GoAway(protocol error) and
        closing the session. Input to a closed session is ignored."""
        events = self._events
        if self._closed or not data:
            self._events = []
            return events
        rbuf = self._rbuf
        own = bool(rbuf)
        src: Any  # bytes, or a memoryview of bytes: is_bytes says which
        if own:
            rbuf += data
            src = memoryview(rbuf)
            is_bytes = False
        elif type(data) is bytes:
            src = data
            is_bytes = True
        else:
            src = memoryview(data).cast("B")
            is_bytes = False
        end = len(src)
        off = 0
        streams = self._streams
        append = events.append
        new = _new
        set_sid = _set_stream_id
        set_data = _set_data
        try:
            while end - off >= 12:
                head, sid, length = _unpack_words(src, off)
                if head == 0:
                    # the hot path: version 0, Data, no flags, on an open stream
                    st = streams.get(sid)
                    if st is not None and length <= st.recv_window and not st.remote_closed:
                        start = off + 12
                        stop = start + length
                        if stop > end:
                            break
                        off = stop
                        if length:
                            st.recv_window -= length
                            # StreamData(sid, payload), built without the
                            # frozen dataclass __init__ (a third of the cost)
                            event = new(StreamData)
                            set_sid(event, sid)
                            set_data(event, src[start:stop] if is_bytes else src[start:stop].tobytes())
                            append(event)
                        continue
                if head >> 24:
                    self._fail(f"unsupported version {head >> 24}")
                typ = head >> 16
                flags = head & 0xFFFF
                if typ == 0:
                    st = streams.get(sid)
                    if st is not None:
                        if length > st.recv_window:
                            self._fail(f"stream {sid}: {length} bytes exceed the receive window {st.recv_window}")
                    elif length > self._window:
                        self._fail(f"stream {sid}: Data frame of {length} bytes exceeds the window")
                    start = off + 12
                    stop = start + length
                    if stop > end:
                        break
                    off = stop
                    payload = src[start:stop] if is_bytes else src[start:stop].tobytes()
                    self._on_stream_frame(0, flags, sid, length, payload, st)
                elif typ == 1:
                    off += 12
                    self._on_stream_frame(1, flags, sid, length, b"", streams.get(sid))
                elif typ == 2:
                    off += 12
                    self._on_ping(flags, length, now)
                elif typ == 3:
                    off += 12
                    self._on_go_away(length)
                    if self._closed:
                        break
                else:
                    self._fail(f"unknown frame type {typ}")
            # keep the unparsed tail (at most one frame) for the next call
            if self._closed:
                pass
            elif own:
                if off:
                    src.release()
                    del rbuf[:off]
            elif off < end:
                rbuf += src[off:]
        finally:
            if not is_bytes:
                src.release()
            if self._closed:
                rbuf.clear()
        self._events = []
        return events

    def _on_stream_frame(self, typ: int, flags: int, sid: int, length: int, payload: bytes, st: _Stream | None) -> None:
        events = self._events
        if sid == 0:
            self._fail("Data or WindowUpdate frame on stream 0")
        if flags & FLAG_SYN:
            if st is not None:
                self._fail(f"SYN for stream {sid}, which is open already")
            if sid & 1 == self._local_parity:
                self._fail(f"SYN for stream {sid}, an id of our parity")
            if flags & FLAG_RST:
                return
            if self._local_go_away or len(self._streams) >= self._max_streams:
                # refuse the stream, not the session
                self._out.append(_pack(0, 1, FLAG_RST, sid, 0))
                return
            st = _Stream(sid, False, self._window)
            self._streams[sid] = st
            events.append(StreamOpened(sid))
            if self._window > DEFAULT_WINDOW:
                self._send_window_update(st, self._window - DEFAULT_WINDOW)
        elif st is None:
            return  # a stream we reset or refused: frames may still be in flight
        if flags & FLAG_ACK and not st.acked:
            st.acked = True
            self._backlog -= 1
        if typ == 0:
            # (the length was checked against the window from the header)
            if length and st.remote_closed:
                self._fail(f"stream {sid}: data after FIN")
            st.recv_window -= length
            if length and not flags & FLAG_RST:
                events.append(StreamData(sid, payload))
        elif length and not flags & FLAG_RST:
            window = st.send_window + length
            st.send_window = window if window < MAX_WINDOW else MAX_WINDOW
            if st.blocked:
                events.append(StreamWritable(sid))
                if st.buffered:
                    self._flush(st)
                if not st.buffered:
                    st.blocked = False
        if flags & FLAG_RST:
            self._drop(st)
            events.append(StreamResetByPeer(sid))
            return
        if flags & FLAG_FIN and not st.remote_closed:
            st.remote_closed = True
            events.append(StreamEnded(sid))
            if st.fin_sent:
                self._drop(st)
                events.append(StreamFreed(sid))

    def _on_ping(self, flags: int, opaque: int, now: float) -> None:
        if flags & FLAG_SYN:
            if self._ping_rate:
                last = self._ping_refilled
                tokens = self._ping_tokens if last is None else min(
                    self._ping_burst, self._ping_tokens + max(0.0, now - last) * self._ping_rate)
                self._ping_refilled = now
                if tokens < 1.0:
                    # a flood: answering every ping would queue pongs without
                    # bound for a peer that does not read them
                    self._ping_tokens = tokens
                    self.pings_ignored += 1
                    self._ignored_in_a_row += 1
                    if self._ignored_in_a_row > MAX_IGNORED_PINGS_IN_A_ROW:
                        self._fail(f"ping flood: {self._ignored_in_a_row} pings beyond "
                                   f"{self._ping_rate:g}/s without a pause")
                    return
                self._ping_tokens = tokens - 1.0
                self._ignored_in_a_row = 0
            self._out.append(_pack(0, 2, FLAG_ACK, 0, opaque))
            self._events.append(PingReceived(opaque))
            return
        sent = self._pings.pop(opaque, None)
        if sent is not None:
            self._events.append(PongReceived(opaque, now - sent))

    def _on_go_away(self, code: int) -> None:
        if self._remote_go_away:
            return
        self._remote_go_away = True
        self._events.append(GoAwayReceived(code))
        if code != GO_AWAY_NORMAL:
            self._close(f"remote sent GoAway with error code {code}")
        elif self._local_go_away:
            self._close("GoAway sent and received")

    def _fail(self, message: str) -> NoReturn:
        """A protocol violation by the remote: GoAway(protocol error), close, raise."""
        if not self._local_go_away:
            self._local_go_away = True
            self._out.append(_pack(0, 3, 0, 0, GO_AWAY_PROTOCOL_ERROR))
        self._close(f"protocol error: {message}")
        raise YamuxError(message, remote=True, code=GO_AWAY_PROTOCOL_ERROR)

    def _close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._streams.clear()
        self._backlog = 0
        self._pings.clear()
        self._events.append(SessionClosed(reason))

    def _drop(self, st: _Stream) -> None:
        del self._streams[st.sid]
        if not st.acked:
            self._backlog -= 1

    # -- sending ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise _local_error("the session is closed")

    def _stream(self, stream_id: int) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None:
            self._check_open()
            raise _local_error(f"unknown stream {stream_id} (never opened, reset or closed)")
        return st

    def open_stream(self) -> int:
        """Allocate an outbound stream id. Nothing is sent until the first
        frame on the stream (which carries the SYN)."""
        self._check_open()
        if self._local_go_away or self._remote_go_away:
            raise _local_error("the session is going away: no new streams")
        if self._backlog >= self._max_ack_backlog:
            raise _local_error(f"{self._backlog} outbound streams are not acknowledged yet")
        if len(self._streams) >= self._max_streams:
            raise _local_error(f"{len(self._streams)} streams are open: the limit")
        sid = self._next_id
        if sid > MAX_STREAM_ID:
            raise _local_error("stream ids are exhausted")
        self._next_id = sid + 2
        st = _Stream(sid, True, self._window)
        self._streams[sid] = st
        self._backlog += 1
        if self._window > DEFAULT_WINDOW:
            self._send_window_update(st, self._window - DEFAULT_WINDOW)
        return sid

    def send(self, stream_id: int, data: bytes) -> None:
        """Queue data on a stream. What the send window allows goes out now
        (in frames of at most MAX_FRAME_PAYLOAD bytes); the rest waits for a
        window update. Raises YamuxError(remote=False) when the stream is
        unknown or half-closed by us, or when more than
        ``max_buffer_per_stream`` bytes would wait."""
        st = self._streams.get(stream_id)
        if st is None or st.fin_requested:
            self._stream(stream_id)
            raise _local_error(f"stream {stream_id} is closed for writing")
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        if not n:
            return
        if n <= st.send_window and n <= MAX_FRAME_PAYLOAD and not st.buffered:
            out = self._out
            out.append(_pack(0, 0, st.flags, stream_id, n))
            out.append(data)
            self._out_bytes += n
            st.flags = 0
            st.send_window -= n
            if not st.send_window:
                st.blocked = True
            return
        waiting = st.buffered + n - (0 if st.buffered else min(n, st.send_window))
        if waiting > self._max_buffer:
            raise _local_error(
                f"stream {stream_id}: {waiting} bytes would wait for window, above the limit {self._max_buffer}"
            )
        if st.sendbuf is None:
            st.sendbuf = deque()
        st.sendbuf.append(data)
        st.buffered += n
        self._flush(st)
        if st.buffered or not st.send_window:
            st.blocked = True

    def _flush(self, st: _Stream) -> None:
        """Send buffered data as the window allows; then the FIN if requested."""
        buf = st.sendbuf
        win = st.send_window
        out = self._out
        sid = st.sid
        sent = 0
        while buf and win:
            chunk = buf[0]
            n = len(chunk)
            take = min(n, win, MAX_FRAME_PAYLOAD)
            if take < n:
                if type(chunk) is not memoryview:
                    chunk = memoryview(chunk)
                buf[0] = chunk[take:]
                chunk = chunk[:take]
            else:
                buf.popleft()
            out.append(_pack(0, 0, st.flags, sid, take))
            out.append(chunk)
            st.flags = 0
            win -= take
            sent += take
        st.send_window = win
        st.buffered -= sent
        self._out_bytes += sent
        if not st.buffered and st.fin_requested and not st.fin_sent:
            self._send_fin(st)

    def _send_fin(self, st: _Stream) -> None:
        # Always a frame of its own (an empty WindowUpdate, as go-yamux sends
        # it): js-libp2p's yamux (@chainsafe/libp2p-yamux 8) handles the FIN
        # flag of a Data frame before its payload and drops the payload.
        self._out.append(_pack(0, 1, st.flags | FLAG_FIN, st.sid, 0))
        st.flags = 0
        st.fin_sent = True
        if st.remote_closed:
            self._drop(st)
            self._events.append(StreamFreed(st.sid))

    def _send_window_update(self, st: _Stream, delta: int) -> None:
        self._out.append(_pack(0, 1, st.flags, st.sid, delta))
        st.flags = 0

    def close_stream(self, stream_id: int) -> None:
        """Half-close: FIN after the buffered data. Unknown streams (reset
        meanwhile) and repeated calls are ignored."""
        st = self._streams.get(stream_id)
        if st is None or st.fin_requested:
            return
        st.fin_requested = True
        if not st.buffered:
            self._send_fin(st)

    def reset_stream(self, stream_id: int) -> None:
        """Send RST and forget the stream (buffered data is dropped). A stream
        that never sent its SYN is forgotten silently. Unknown ids are ignored."""
        st = self._streams.get(stream_id)
        if st is None:
            return
        self._drop(st)
        if st.flags & FLAG_SYN:
            return  # the remote never heard of it
        self._out.append(_pack(0, 1, FLAG_RST, stream_id, 0))

    def consumed(self, stream_id: int, n: int) -> None:
        """The application took n received bytes of the stream: their window
        is given back, batched until half the window is due. Unknown streams
        are ignored; consuming more than was received raises."""
        st = self._streams.get(stream_id)
        if st is None or n == 0:
            return
        credit = st.credit + n
        if n < 0 or credit > self._window - st.recv_window:
            raise _local_error(f"stream {stream_id}: consumed {n} bytes, more than were received")
        if credit >= self._update_threshold and not st.remote_closed:
            st.recv_window += credit
            st.credit = 0
            self._send_window_update(st, credit)
        else:
            st.credit = credit

    def ping(self, now: float) -> int:
        """Queue a ping; returns its opaque value, echoed in PongReceived."""
        self._check_open()
        opaque = self._next_ping
        self._next_ping = opaque + 1 if opaque < MAX_WINDOW else 1
        pings = self._pings
        if len(pings) >= MAX_PENDING_PINGS:
            del pings[next(iter(pings))]
        pings[opaque] = now
        self._out.append(_pack(0, 2, FLAG_SYN, 0, opaque))
        return opaque

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Send GoAway: no new streams in either direction from now on.
        Closes the session when the remote sent GoAway too, or when code is
        not 0. Repeated calls, and calls on a closed session, do nothing."""
        if not 0 <= code <= MAX_WINDOW:
            raise _local_error(f"GoAway code {code} does not fit in 32 bits")
        if self._closed or self._local_go_away:
            return
        self._local_go_away = True
        self._out.append(_pack(0, 3, 0, 0, code))
        if code != GO_AWAY_NORMAL:
            self._close(f"GoAway sent with error code {code}")
        elif self._remote_go_away:
            self._close("GoAway sent and received")
