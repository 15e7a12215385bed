"""Tests of the sans-IO Yamux session (kadfast.yamux)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast.errors import ProtocolError, YamuxError
from kadfast.yamux import (
    DEFAULT_WINDOW,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    MAX_ACK_BACKLOG,
    MAX_FRAME_PAYLOAD,
    MAX_PENDING_PINGS,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
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
    YamuxSession,
    encode_header,
)

# --- helpers ----------------------------------------------------------------


def frame(typ: int, flags: int, sid: int, length: int, payload: bytes = b"", version: int = 0) -> bytes:
    """A frame built by hand with struct, independently of the module."""
    return struct.pack(">BBHII", version, typ, flags, sid, length) + payload


def parse_frames(wire: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """Split bytes into (type, flags, stream id, length, payload) tuples."""
    frames = []
    off = 0
    while off < len(wire):
        ver, typ, flags, sid, length = struct.unpack_from(">BBHII", wire, off)
        assert ver == 0
        off += 12
        payload = b""
        if typ == TYPE_DATA:
            payload = wire[off : off + length]
            assert len(payload) == length
            off += length
        frames.append((typ, flags, sid, length, payload))
    return frames


def pump(a: YamuxSession, b: YamuxSession, now: float = 0.0) -> tuple[list, list]:
    """Shuttle data_to_send() between a and b until both are quiet; return
    the events of a and of b (including those of local calls)."""
    ea, eb = a.events(), b.events()
    while True:
        x = a.data_to_send()
        if x:
            eb += b.receive_data(x, now)
        y = b.data_to_send()
        if y:
            ea += a.receive_data(y, now)
        if not x and not y:
            break
    ea += a.events()
    eb += b.events()
    return ea, eb


def pair(**kw) -> tuple[YamuxSession, YamuxSession]:
    return YamuxSession(True, **kw), YamuxSession(False, **kw)


def data_of(events, sid) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, StreamData) and e.stream_id == sid)


def consume_all(session: YamuxSession, events) -> None:
    for e in events:
        if isinstance(e, StreamData):
            session.consumed(e.stream_id, len(e.data))


# --- byte layout ------------------------------------------------------------


def test_header_vectors():
    # version | type | flags | stream id | length, all big-endian
    assert encode_header(TYPE_DATA, FLAG_SYN, 1, 5) == bytes.fromhex("00 00 0001 00000001 00000005")
    assert encode_header(TYPE_WINDOW_UPDATE, FLAG_ACK, 2, 0x40000) == bytes.fromhex("00 01 0002 00000002 00040000")
    assert encode_header(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF) == bytes.fromhex("00 02 0001 00000000 deadbeef")
    assert encode_header(TYPE_GO_AWAY, 0, 0, 1) == bytes.fromhex("00 03 0000 00000000 00000001")
    assert encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, 0xFFFFFFFF, 0) == bytes.fromhex("00 01 0008 ffffffff 00000000")
    assert (FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST) == (1, 2, 4, 8)


def test_outbound_frames_byte_exact():
    c, s = pair()
    sid = c.open_stream()
    assert sid == 1 and c.data_to_send() == b""  # lazy SYN
    c.send(sid, b"hello")
    assert c.data_to_send() == bytes.fromhex("00 00 0001 00000001 00000005") + b"hello"
    c.send(sid, b"!")
    c.close_stream(sid)  # FIN is a frame of its own, after the data (js-libp2p needs that)
    assert c.data_to_send() == (
        bytes.fromhex("00 00 0000 00000001 00000001") + b"!" + bytes.fromhex("00 01 0004 00000001 00000000")
    )
    sid3 = c.open_stream()
    assert sid3 == 3
    c.close_stream(sid3)  # no data: SYN|FIN on an empty window update
    assert c.data_to_send() == bytes.fromhex("00 01 0005 00000003 00000000")
    assert s.open_stream() == 2 and s.open_stream() == 4


def test_inbound_hand_built_frames():
    s = YamuxSession(False)
    ev = s.receive_data(bytes.fromhex("00 00 0001 00000001 00000003") + b"abc")
    assert ev == [StreamOpened(1), StreamData(1, b"abc")]
    assert s.data_to_send() == b""  # the ACK waits for our first frame
    s.send(1, b"xy")
    assert s.data_to_send() == bytes.fromhex("00 00 0002 00000001 00000002") + b"xy"
    s.send(1, b"z")
    assert s.data_to_send() == bytes.fromhex("00 00 0000 00000001 00000001") + b"z"
    # FIN on a window update; then ping, answered with the same opaque and ACK
    ev = s.receive_data(bytes.fromhex("00 01 0004 00000001 00000000" "00 02 0001 00000000 01020304"))
    assert ev == [StreamEnded(1), PingReceived(0x01020304)]
    assert s.data_to_send() == bytes.fromhex("00 02 0002 00000000 01020304")
    s.close_stream(1)
    assert s.data_to_send() == bytes.fromhex("00 01 0004 00000001 00000000")
    assert s.events() == [StreamFreed(1)]
    assert s.stream_ids() == []


def test_data_with_syn_and_fin_in_one_frame():
    s = YamuxSession(False)
    ev = s.receive_data(frame(TYPE_DATA, FLAG_SYN | FLAG_FIN, 5, 4, b"ping"))
    assert ev == [StreamOpened(5), StreamData(5, b"ping"), StreamEnded(5)]
    s.send(5, b"pong")
    s.close_stream(5)
    assert parse_frames(s.data_to_send()) == [
        (TYPE_DATA, FLAG_ACK, 5, 4, b"pong"),
        (TYPE_WINDOW_UPDATE, FLAG_FIN, 5, 0, b""),
    ]
    assert s.events() == [StreamFreed(5)]


def test_open_data_and_reset_in_one_read():
    """A cancelled request: SYN, data and RST in one read. The events come
    all at once, and by then the session no longer has the stream
    (``has_stream``), which the application checks before it answers."""
    s = YamuxSession(False)
    ev = s.receive_data(frame(TYPE_DATA, FLAG_SYN, 7, 3, b"req") + frame(TYPE_WINDOW_UPDATE, FLAG_RST, 7, 0))
    assert ev == [StreamOpened(7), StreamData(7, b"req"), StreamResetByPeer(7)]
    assert not s.has_stream(7) and s.stream_ids() == []
    with pytest.raises(YamuxError):
        s.send(7, b"late")
    s.close_stream(7)  # ignored, as are
    s.reset_stream(7)  # both of these
    s.consumed(7, 3)
    assert s.data_to_send() == b"" and not s.is_closed
    s.receive_data(frame(TYPE_DATA, FLAG_SYN, 9, 1, b"x"))
    assert s.has_stream(9)


def test_pings_are_answered_at_a_bounded_rate():
    """A ping flood gets the burst answered, then one pong per 1/rate
    seconds of the clock given to receive_data; nothing queues up."""
    s = YamuxSession(False, max_pings_per_second=10, ping_burst=5)
    flood = b"".join(frame(TYPE_PING, FLAG_SYN, 0, i) for i in range(1, 101))
    ev = s.receive_data(flood, now=100.0)
    assert [e.opaque for e in ev] == [1, 2, 3, 4, 5] and s.pings_ignored == 95
    assert [f[3] for f in parse_frames(s.data_to_send())] == [1, 2, 3, 4, 5]
    ev = s.receive_data(frame(TYPE_PING, FLAG_SYN, 0, 200) + frame(TYPE_PING, FLAG_SYN, 0, 201), now=100.15)
    assert [e.opaque for e in ev] == [200] and s.pings_ignored == 96  # 0.15 s: one token and a half
    ev = s.receive_data(b"".join(frame(TYPE_PING, FLAG_SYN, 0, 300 + i) for i in range(9)), now=110.0)
    assert len(ev) == 5  # the bucket holds the burst at most
    # our own pings' pongs are never limited, nor is a session without a limit
    unlimited = YamuxSession(False, max_pings_per_second=0)
    assert len(unlimited.receive_data(flood, now=0.0)) == 100


def test_a_ping_flood_without_a_pause_is_a_protocol_error():
    """Over MAX_IGNORED_PINGS_IN_A_ROW unanswered pings with none answered
    between them: GoAway(protocol error) and the session closes. A flood
    that pauses long enough for the bucket to answer one starts over."""
    from kadfast.yamux import GO_AWAY_PROTOCOL_ERROR, MAX_IGNORED_PINGS_IN_A_ROW
    s = YamuxSession(False, max_pings_per_second=10, ping_burst=1)
    burst = b"".join(frame(TYPE_PING, FLAG_SYN, 0, i) for i in range(MAX_IGNORED_PINGS_IN_A_ROW + 1))
    s.receive_data(burst, now=0.0)  # one answered, 1,000 ignored: still fine
    s.data_to_send()
    s.receive_data(burst, now=1.0)  # answered after a pause: the count starts over
    s.data_to_send()
    with pytest.raises(YamuxError) as err:
        s.receive_data(burst + frame(TYPE_PING, FLAG_SYN, 0, 7), now=1.0)
    assert err.value.remote
    assert [(f[0], f[3]) for f in parse_frames(s.data_to_send())] == [(TYPE_GO_AWAY, GO_AWAY_PROTOCOL_ERROR)]


def test_window_update_syn_opens_stream():
    s = YamuxSession(False)
    assert s.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)) == [StreamOpened(1)]
    assert s.receive_data(frame(TYPE_WINDOW_UPDATE, 0, 1, 1000)) == []
    assert s.send_window(1) == DEFAULT_WINDOW + 1000


# --- streams over a pair -----------------------------------------------------


def test_open_data_half_close_both_directions():
    c, s = pair()
    sid = c.open_stream()
    c.send(sid, b"request")
    ec, es = pump(c, s)
    assert es == [StreamOpened(sid), StreamData(sid, b"request")]
    assert ec == []
    c.close_stream(sid)
    ec, es = pump(c, s)
    assert es == [StreamEnded(sid)]
    # half-closed by the client: the server can still send
    s.send(sid, b"response")
    s.close_stream(sid)
    ec, es = pump(c, s)
    assert ec == [StreamData(sid, b"response"), StreamEnded(sid), StreamFreed(sid)]
    assert es == [StreamFreed(sid)]
    assert c.stream_ids() == s.stream_ids() == []
    with pytest.raises(YamuxError) as ei:
        c.send(sid, b"late")
    assert ei.value.remote is False


def test_server_closes_first():
    c, s = pair()
    sid = s.open_stream()
    assert sid == 2
    s.send(sid, b"a")
    s.close_stream(sid)
    ec, es = pump(c, s)
    assert ec == [StreamOpened(2), StreamData(2, b"a"), StreamEnded(2)]
    c.close_stream(sid)
    ec, es = pump(c, s)
    assert ec == [StreamFreed(2)] and es == [StreamEnded(2), StreamFreed(2)]


def test_send_after_close_is_a_local_error():
    c, s = pair()
    sid = c.open_stream()
    c.close_stream(sid)
    c.close_stream(sid)  # repeated: ignored
    with pytest.raises(YamuxError) as ei:
        c.send(sid, b"x")
    assert ei.value.remote is False and isinstance(ei.value, ProtocolError)
    with pytest.raises(YamuxError):
        c.send(99, b"x")


def test_reset():
    c, s = pair()
    sid = c.open_stream()
    c.send(sid, b"x")
    pump(c, s)
    s.send(sid, b"in flight")
    c.reset_stream(sid)
    assert c.stream_ids() == []
    # the server's data crosses our RST: ignored quietly
    assert c.receive_data(s.data_to_send()) == []
    ec, es = pump(c, s)
    assert es == [StreamResetByPeer(sid)] and s.stream_ids() == []
    # RST for a stream nobody knows: ignored
    assert s.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_RST, 77, 0)) == []
    assert s.receive_data(frame(TYPE_DATA, 0, 77, 3, b"abc")) == []
    assert s.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_RST, 79, 0)) == []  # opened and reset at once
    assert 79 not in s.stream_ids() and s.data_to_send() == b""
    c.reset_stream(sid)  # unknown now: no-op
    assert c.data_to_send() == b""


def test_reset_before_syn_sends_nothing():
    c, _ = pair()
    sid = c.open_stream()
    c.reset_stream(sid)
    assert c.data_to_send() == b""
    assert c.stream_ids() == []


def test_remote_reset_drops_buffered_data():
    c, s = pair()
    sid = c.open_stream()
    c.send(sid, b"x" * (DEFAULT_WINDOW + 10))
    assert c.buffered(sid) == 10
    pump(c, s)
    s.reset_stream(sid)
    ec, _ = pump(c, s)
    assert ec == [StreamResetByPeer(sid)]
    assert c.buffered(sid) == 0 and c.stream_ids() == []


def test_ping_pong_with_fake_clock():
    c, s = pair()
    opaque = c.ping(now=10.0)
    es = s.receive_data(c.data_to_send(), now=99.0)
    assert es == [PingReceived(opaque)]
    ec = c.receive_data(s.data_to_send(), now=10.25)
    assert len(ec) == 1 and isinstance(ec[0], PongReceived)
    assert ec[0].opaque == opaque and ec[0].rtt == pytest.approx(0.25)
    # an unsolicited pong is ignored
    assert c.receive_data(frame(TYPE_PING, FLAG_ACK, 0, 12345), now=11.0) == []
    assert c.get_timer() is None
    c.handle_timer(1.0)


def test_pending_pings_are_bounded():
    c, s = pair()
    first = c.ping(0.0)
    for i in range(MAX_PENDING_PINGS + 5):
        c.ping(float(i))
    assert c.pending_pings == MAX_PENDING_PINGS
    # the oldest was forgotten: its pong is ignored
    assert c.receive_data(frame(TYPE_PING, FLAG_ACK, 0, first)) == []


def test_go_away_normal_both_ways():
    c, s = pair()
    sid = c.open_stream()
    c.send(sid, b"x")
    pump(c, s)
    c.go_away()
    c.go_away()  # idempotent
    with pytest.raises(YamuxError):
        c.open_stream()
    ec, es = pump(c, s)
    assert es == [GoAwayReceived(0)]
    assert not s.is_closed and not c.is_closed
    with pytest.raises(YamuxError):
        s.open_stream()
    # existing streams go on
    s.send(sid, b"still here")
    ec, es = pump(c, s)
    assert ec == [StreamData(sid, b"still here")]
    s.go_away()
    ec, es = pump(c, s)
    assert s.is_closed and c.is_closed
    assert ec[0] == GoAwayReceived(0) and isinstance(ec[1], SessionClosed)
    assert len(es) == 1 and isinstance(es[0], SessionClosed)
    with pytest.raises(YamuxError):
        c.send(sid, b"x")
    with pytest.raises(YamuxError):
        c.ping(0.0)
    assert c.receive_data(frame(TYPE_DATA, 0, sid, 1, b"x")) == []  # ignored once closed


def test_go_away_with_error_closes_at_once():
    c, s = pair()
    s.go_away(2)
    assert s.is_closed and isinstance(s.events()[0], SessionClosed)
    wire = s.data_to_send()
    assert wire == bytes.fromhex("00 03 0000 00000000 00000002")
    ec = c.receive_data(wire)
    assert ec[0] == GoAwayReceived(2) and isinstance(ec[1], SessionClosed) and c.is_closed


def test_inbound_syn_after_our_go_away_is_refused():
    c, s = pair()
    s.go_away()
    s.data_to_send()
    sid = c.open_stream()  # the client has not seen the GoAway yet
    c.send(sid, b"x")
    assert s.receive_data(c.data_to_send()) == []
    assert parse_frames(s.data_to_send()) == [(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0, b"")]


# --- flow control -------------------------------------------------------------


def test_one_mebibyte_through_the_window():
    c, s = pair()
    sid = c.open_stream()
    payload = random.Random(1).randbytes(1 << 20)
    c.send(sid, payload)
    assert c.send_window(sid) == 0
    assert c.buffered(sid) == (1 << 20) - DEFAULT_WINDOW
    ec, es = pump(c, s)
    received = data_of(es, sid)
    assert len(received) == DEFAULT_WINDOW
    assert all(len(e.data) <= MAX_FRAME_PAYLOAD for e in es if isinstance(e, StreamData))
    # nothing moves until the server consumes
    assert pump(c, s) == ([], [])
    s.consumed(sid, DEFAULT_WINDOW // 2 - 1)  # below half: no update yet
    assert pump(c, s) == ([], [])
    s.consumed(sid, 1)
    ec, es = pump(c, s)
    assert ec == [StreamWritable(sid)]
    received += data_of(es, sid)
    assert len(received) == DEFAULT_WINDOW + DEFAULT_WINDOW // 2
    writable = 0
    while len(received) < len(payload):
        s.consumed(sid, DEFAULT_WINDOW // 2)
        ec, es = pump(c, s)
        writable += ec.count(StreamWritable(sid))
        received += data_of(es, sid)
    assert received == payload
    assert writable >= 1 and c.buffered(sid) == 0


def test_window_exactly_used_up_then_writable():
    c, s = pair()
    sid = c.open_stream()
    c.send(sid, b"a" * DEFAULT_WINDOW)
    assert c.buffered(sid) == 0 and c.send_window(sid) == 0
    _, es = pump(c, s)
    consume_all(s, es)
    ec, _ = pump(c, s)
    assert ec == [StreamWritable(sid)]
    assert c.send_window(sid) == DEFAULT_WINDOW


def test_buffer_limit():
    c, s = pair(max_buffer_per_stream=100_000)
    sid = c.open_stream()
    c.send(sid, b"a" * (DEFAULT_WINDOW + 100_000))
    with pytest.raises(YamuxError) as ei:
        c.send(sid, b"b")
    assert ei.value.remote is False
    assert c.buffered(sid) == 100_000  # the refused call queued nothing


def test_window_violation_raises_and_queues_go_away():
    s = YamuxSession(False)
    s.receive_data(frame(TYPE_DATA, FLAG_SYN, 1, DEFAULT_WINDOW, bytes(DEFAULT_WINDOW)))
    with pytest.raises(YamuxError) as ei:
        s.receive_data(frame(TYPE_DATA, 0, 1, 1, b"x"))
    assert ei.value.remote is True and ei.value.code == 1
    assert s.is_closed
    assert s.data_to_send() == bytes.fromhex("00 03 0000 00000000 00000001")
    assert isinstance(s.events()[-1], SessionClosed)
    assert s.receive_data(b"anything") == []


def test_oversized_frame_refused_from_its_header():
    s = YamuxSession(False)
    s.receive_data(frame(TYPE_DATA, FLAG_SYN, 1, 0))
    with pytest.raises(YamuxError):
        # the payload has not arrived: the header alone is enough
        s.receive_data(frame(TYPE_DATA, 0, 1, DEFAULT_WINDOW + 1))


def test_data_after_fin_is_a_protocol_error():
    s = YamuxSession(False)
    s.receive_data(frame(TYPE_DATA, FLAG_SYN | FLAG_FIN, 1, 1, b"a"))
    with pytest.raises(YamuxError):
        s.receive_data(frame(TYPE_DATA, 0, 1, 1, b"b"))


def test_consumed_more_than_received_is_a_local_error():
    c, s = pair()
    sid = c.open_stream()
    c.send(sid, b"abc")
    pump(c, s)
    with pytest.raises(YamuxError) as ei:
        s.consumed(sid, 4)
    assert ei.value.remote is False
    s.consumed(12345, 10)  # unknown stream: ignored


def test_larger_window_is_announced():
    big = 4 * DEFAULT_WINDOW
    c, s = YamuxSession(True, window=big), YamuxSession(False, window=big)
    sid = c.open_stream()
    assert parse_frames(c.data_to_send()) == [(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, big - DEFAULT_WINDOW, b"")]
    c2 = YamuxSession(True)
    sid = c2.open_stream()
    c2.send(sid, b"x")
    s.receive_data(c2.data_to_send())
    assert parse_frames(s.data_to_send()) == [(TYPE_WINDOW_UPDATE, FLAG_ACK, sid, big - DEFAULT_WINDOW, b"")]
    c2.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_ACK, sid, big - DEFAULT_WINDOW))
    assert c2.send_window(sid) == big - 1
    with pytest.raises(YamuxError):
        YamuxSession(True, window=DEFAULT_WINDOW - 1)


# --- limits -------------------------------------------------------------------


def test_ack_backlog():
    c, s = pair()
    sids = [c.open_stream() for _ in range(MAX_ACK_BACKLOG)]
    with pytest.raises(YamuxError) as ei:
        c.open_stream()
    assert ei.value.remote is False
    for sid in sids:
        c.send(sid, b"hi")
    pump(c, s)
    with pytest.raises(YamuxError):
        c.open_stream()  # sent, but not acknowledged
    s.send(sids[0], b"ack")  # the ACK rides on the server's first frame
    pump(c, s)
    c.open_stream()
    with pytest.raises(YamuxError):
        c.open_stream()
    s.reset_stream(sids[1])  # a reset stream leaves the backlog too
    pump(c, s)
    c.open_stream()


def test_ack_backlog_custom_limit():
    c = YamuxSession(True, max_ack_backlog=2)
    c.open_stream()
    c.open_stream()
    with pytest.raises(YamuxError):
        c.open_stream()


def test_max_streams_inbound_rst():
    c, s = YamuxSession(True), YamuxSession(False, max_streams=2)
    sids = [c.open_stream() for _ in range(3)]
    for sid in sids:
        c.send(sid, b"x")
    ec, es = pump(c, s)
    assert [e for e in es if isinstance(e, StreamOpened)] == [StreamOpened(1), StreamOpened(3)]
    assert ec == [StreamResetByPeer(5)]
    assert not s.is_closed and sorted(s.stream_ids()) == [1, 3]
    with pytest.raises(YamuxError):
        s.open_stream()  # outbound counts against the same limit


@pytest.mark.parametrize(
    "wire",
    [
        frame(TYPE_DATA, FLAG_SYN, 1, 0, version=1),  # unknown version
        frame(4, 0, 0, 0),  # unknown type
        frame(TYPE_DATA, FLAG_SYN, 2, 0),  # the listener's parity from the dialer
        frame(TYPE_DATA, FLAG_SYN, 1, 0) + frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0),  # reused id
        frame(TYPE_DATA, 0, 0, 1, b"x"),  # Data on stream 0
        frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 0, 0),  # SYN for stream 0
        frame(TYPE_DATA, FLAG_SYN, 1, DEFAULT_WINDOW + 1),  # larger than any window
    ],
)
def test_protocol_errors(wire):
    s = YamuxSession(False)
    with pytest.raises(YamuxError) as ei:
        s.receive_data(wire)
    assert ei.value.remote and ei.value.code == 1
    assert s.is_closed
    assert s.data_to_send() == frame(TYPE_GO_AWAY, 0, 0, 1)
    with pytest.raises(YamuxError):
        s.open_stream()


def test_events_before_an_error_are_kept():
    s = YamuxSession(False)
    with pytest.raises(YamuxError):
        s.receive_data(frame(TYPE_DATA, FLAG_SYN, 1, 1, b"a") + frame(9, 0, 0, 0))
    ev = s.events()
    assert ev[:2] == [StreamOpened(1), StreamData(1, b"a")] and isinstance(ev[2], SessionClosed)


def test_input_types_and_partial_frames():
    wire = frame(TYPE_DATA, FLAG_SYN, 1, 3, b"abc") + frame(TYPE_DATA, 0, 1, 2, b"de")
    expected = [StreamOpened(1), StreamData(1, b"abc"), StreamData(1, b"de")]
    for conv in (bytes, bytearray, memoryview):
        s = YamuxSession(False)
        ev = s.receive_data(conv(wire[:10])) + s.receive_data(conv(wire[10:20])) + s.receive_data(conv(wire[20:]))
        assert ev == expected
        assert all(type(e.data) is bytes for e in ev if isinstance(e, StreamData))
        assert s.buffered_input == 0


# --- traffic feeding: whole vs byte by byte ---------------------------------


def _scripted_traffic() -> bytes:
    """What a client sends in a small but varied session."""
    c = YamuxSession(True)
    a, b = c.open_stream(), c.open_stream()
    c.send(a, b"hello")
    c.ping(0.0)
    c.send(b, bytes(range(256)) * 100)
    c.close_stream(a)
    c.reset_stream(b)
    d = c.open_stream()
    c.send(d, b"x" * 40_000)
    c.close_stream(d)
    wire = c.data_to_send()
    # the server's view also gets a window update and a GoAway
    return wire + frame(TYPE_WINDOW_UPDATE, 0, d, 100) + frame(TYPE_GO_AWAY, 0, 0, 0)


def _merge_data(events):
    """Coalesce consecutive StreamData of a stream (chunking may differ)."""
    merged = []
    for e in events:
        if isinstance(e, StreamData) and merged and isinstance(merged[-1], StreamData) and merged[-1].stream_id == e.stream_id:
            merged[-1] = StreamData(e.stream_id, merged[-1].data + e.data)
        else:
            merged.append(e)
    return merged


def test_byte_by_byte_equals_whole():
    wire = _scripted_traffic()
    whole = YamuxSession(False)
    ev_whole = whole.receive_data(wire)
    out_whole = whole.data_to_send()
    single = YamuxSession(False)
    ev_single = []
    for i in range(len(wire)):
        ev_single += single.receive_data(wire[i : i + 1])
    assert ev_single == ev_whole  # frames are delivered whole: even the chunking matches
    assert single.data_to_send() == out_whole
    assert GoAwayReceived(0) in ev_whole and StreamResetByPeer(3) in ev_whole


@given(st.data())
def test_random_chunking_equals_whole(data):
    wire = _scripted_traffic()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    s = YamuxSession(False)
    ev = []
    prev = 0
    for cut in cuts + [len(wire)]:
        ev += s.receive_data(memoryview(wire)[prev:cut])
        prev = cut
    assert ev == YamuxSession(False).receive_data(wire)


# --- fuzzing --------------------------------------------------------------------

_RBUF_BOUND = DEFAULT_WINDOW + 12


def _feed_checked(session: YamuxSession, chunks) -> None:
    for chunk in chunks:
        try:
            session.receive_data(chunk)
        except YamuxError as exc:
            assert exc.remote and exc.code == 1
            assert session.is_closed
            return
        assert session.buffered_input <= _RBUF_BOUND
        assert len(session.stream_ids()) <= 8
        session.data_to_send()


_valid_wire = _scripted_traffic()


@given(
    blob=st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.tuples(
                st.integers(0, 4),  # type, 4 being invalid
                st.sampled_from([0, 1, 2, 4, 8, 3, 5, 0xFFFF]),
                st.integers(0, 9) | st.just(0xFFFFFFFF),
                st.integers(0, 70) | st.just(0xFFFFFFFF),
                st.binary(max_size=70),
            ),
            max_size=12,
        ).map(lambda fs: b"".join(struct.pack(">BBHII", 0, t, f, s, n) + (p if t == 0 else b"") for t, f, s, n, p in fs)),
    ),
    is_client=st.booleans(),
)
def test_fuzz_random_bytes(blob, is_client):
    _feed_checked(YamuxSession(is_client, max_streams=8), [blob])
    _feed_checked(YamuxSession(is_client, max_streams=8), [blob[i : i + 1] for i in range(len(blob))])


@given(st.lists(st.tuples(st.integers(0, len(_valid_wire) - 1), st.integers(0, 255)), min_size=1, max_size=8), st.integers(0, 2))
def test_fuzz_mutated_traffic(mutations, mode):
    wire = bytearray(_valid_wire)
    for pos, value in mutations:
        wire[pos] = value
    wire = bytes(wire)
    if mode == 0:
        chunks = [wire]
    elif mode == 1:
        chunks = [wire[i : i + 1] for i in range(min(len(wire), 3000))]
    else:
        chunks = [wire[i : i + 997] for i in range(0, len(wire), 997)]
    _feed_checked(YamuxSession(False, max_streams=8), chunks)


# --- random operations on a pair: data integrity --------------------------------

# sizes around the frame and window boundaries are drawn as often as small ones
_send_sizes = (st.sampled_from([1, 100, 5000, MAX_FRAME_PAYLOAD, MAX_FRAME_PAYLOAD + 1, 100_000, DEFAULT_WINDOW, 300_000])
               | st.integers(1, 70_000))

# operation kind (weighted by repetition), stream index, size, side (True: client)
_KINDS = ["send"] * 6 + ["pump"] * 3 + ["consume"] * 2 + ["open", "close", "reset", "ping"]
_ops = st.lists(
    st.tuples(st.sampled_from(_KINDS), st.integers(0, 7), _send_sizes, st.booleans()),
    min_size=10,
    max_size=50,
)


@given(_ops, st.integers(0, 2**32))
def test_random_operations_keep_data_intact(ops, seed):
    rnd = random.Random(seed)  # payload bytes (hypothesis's own randoms would spend its entropy on them)
    sessions = {True: YamuxSession(True), False: YamuxSession(False)}
    sent: dict[tuple[bool, int], bytearray] = {}  # (sender is client, sid) -> bytes sent
    got: dict[tuple[bool, int], bytearray] = {}
    unconsumed: dict[bool, dict[int, int]] = {True: {}, False: {}}
    ended: set[tuple[bool, int]] = set()
    reset: set[int] = set()
    closed_for_write: set[tuple[bool, int]] = set()
    streams: list[int] = [sessions[True].open_stream(), sessions[False].open_stream()]

    def handle(receiver_is_client: bool, events) -> None:
        for e in events:
            if isinstance(e, StreamData):
                key = (not receiver_is_client, e.stream_id)
                assert key not in ended
                received = got.setdefault(key, bytearray())
                # in order and exactly once: what arrives continues the prefix received so far
                assert sent[key][len(received) : len(received) + len(e.data)] == e.data
                received += e.data
                unconsumed[receiver_is_client][e.stream_id] = unconsumed[receiver_is_client].get(e.stream_id, 0) + len(e.data)
            elif isinstance(e, StreamEnded):
                ended.add((not receiver_is_client, e.stream_id))
            elif isinstance(e, StreamResetByPeer):
                reset.add(e.stream_id)

    def deliver(max_chunk: int) -> None:
        # shuttle in random chunks until quiet
        while True:
            moved = False
            for src_is_client in (True, False):
                wire = sessions[src_is_client].data_to_send()
                dst = not src_is_client
                for i in range(0, len(wire), max_chunk):
                    handle(dst, sessions[dst].receive_data(wire[i : i + max_chunk]))
                moved |= bool(wire)
            if not moved:
                break
        for side in (True, False):
            handle(side, sessions[side].events())

    def consume(side: bool) -> None:
        for sid, n in list(unconsumed[side].items()):
            sessions[side].consumed(sid, n)
        unconsumed[side].clear()

    for kind, index, size, side in ops:
        if kind == "open":
            try:
                streams.append(sessions[side].open_stream())
            except YamuxError:
                pass
        elif kind in ("send", "close", "reset"):
            sid = streams[index % len(streams)]
            if sid not in sessions[side].stream_ids():
                side = sid % 2 == 1  # the opener knows its stream before the remote does
            if sid in reset or (side, sid) in closed_for_write or sid not in sessions[side].stream_ids():
                continue
            if kind == "send":
                if sessions[side].buffered(sid) + size > (1 << 20):
                    continue
                chunk = rnd.randbytes(size)
                sessions[side].send(sid, chunk)
                sent.setdefault((side, sid), bytearray()).extend(chunk)
            elif kind == "close":
                sessions[side].close_stream(sid)
                closed_for_write.add((side, sid))
            else:
                sessions[side].reset_stream(sid)
                reset.add(sid)
        elif kind == "consume":
            consume(side)
        elif kind == "pump":
            deliver(size)
        else:
            sessions[side].ping(0.0)

    # drain: consume everything until nothing moves
    for _ in range(200):
        deliver(65536)
        if not unconsumed[True] and not unconsumed[False]:
            break
        consume(True)
        consume(False)
    for key, data in sent.items():
        if key[1] in reset:
            continue
        assert got.get(key, b"") == data, key
    for key in closed_for_write:
        if key[1] not in reset:
            assert key in ended
    assert not sessions[True].is_closed and not sessions[False].is_closed


# --- remaining corners -----------------------------------------------------------


def test_close_while_buffered_sends_fin_after_the_data():
    c, s = pair()
    sid = c.open_stream()
    payload = b"q" * (DEFAULT_WINDOW + 5000)
    c.send(sid, payload)
    c.close_stream(sid)
    _, es = pump(c, s)
    assert StreamEnded(sid) not in es  # the FIN waits behind the buffered data
    consume_all(s, es)
    ec, es2 = pump(c, s)
    assert ec == [StreamWritable(sid)]
    assert data_of(es + es2, sid) == payload
    assert es2[-1] == StreamEnded(sid)
    s.close_stream(sid)
    ec, es = pump(c, s)
    assert ec == [StreamEnded(sid), StreamFreed(sid)] and es == [StreamFreed(sid)]


def test_send_variants():
    c, s = pair()
    sid = c.open_stream()
    c.send(sid, b"")  # nothing at all, not even the SYN
    assert c.data_to_send() == b""
    c.send(sid, bytearray(b"ab"))
    c.send(sid, memoryview(b"cd"))
    c.send(sid, memoryview(b"efgh").cast("I"))  # counted in bytes, not items
    _, es = pump(c, s)
    assert data_of(es, sid) == b"abcdefgh"
    # exactly filling the window through small sends blocks the stream
    c.send(sid, b"z" * (DEFAULT_WINDOW - 8 - MAX_FRAME_PAYLOAD))
    c.send(sid, b"z" * MAX_FRAME_PAYLOAD)
    assert c.send_window(sid) == 0 and c.buffered(sid) == 0
    _, es = pump(c, s)
    consume_all(s, es)
    s.consumed(sid, 8)
    ec, _ = pump(c, s)
    assert ec == [StreamWritable(sid)]
    assert c.send_window(sid) == DEFAULT_WINDOW
    assert c.send_window(99) == 0 and c.buffered(99) == 0
    assert c.is_client and not s.is_client


def test_stream_ids_exhausted():
    c = YamuxSession(True)
    c._next_id = 0xFFFFFFFF
    assert c.open_stream() == 0xFFFFFFFF
    with pytest.raises(YamuxError):
        c.open_stream()


def test_go_away_details():
    c, s = pair()
    with pytest.raises(YamuxError):
        c.go_away(1 << 32)
    s.go_away()
    wire = s.data_to_send()
    assert c.receive_data(wire + wire) == [GoAwayReceived(0)]  # a second GoAway is ignored
    with pytest.raises(YamuxError):
        YamuxSession(True, max_streams=0)


def test_send_window_saturates_at_u32():
    c, s = pair()
    sid = c.open_stream()
    c.send(sid, b"x")
    pump(c, s)
    big = frame(TYPE_WINDOW_UPDATE, 0, sid, 0xFFFFFFFF)
    assert c.receive_data(big + big) == []
    assert c.send_window(sid) == 0xFFFFFFFF
