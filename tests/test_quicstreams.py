"""The streams of a libp2p QUIC connection (kadfast.net.quicstreams): two
QuicConnectionCores driven against each other in memory on a given clock.
Protocol negotiation per stream, half-closes and resets, and the bounds:
inbound streams, negotiation deadlines, unread bytes."""

from __future__ import annotations

import datetime

from kadfast.errors import StreamReset
from kadfast.keys import Ed25519KeyPair
from kadfast.multistream import encode_message
from kadfast.net.quicstreams import WRITABLE_BELOW, QuicConnectionCore
from kadfast.net.upgrade import (
    ConnectionFailed,
    InboundStreamNegotiated,
    OutboundStreamFailed,
    OutboundStreamNegotiated,
    StreamData,
    StreamEnded,
    StreamFreed,
    StreamResetByPeer,
    Upgraded,
)
from kadfast.quic import QuicCore, initial_destination_cid
from kadfast.tls import make_certificate
from kadfast.yamux import PongReceived, StreamWritable

KA, KB = (Ed25519KeyPair.from_seed(bytes([i]) * 32) for i in (31, 32))
CERTS = {k.peer_id: make_certificate(k) for k in (KA, KB)}
C_ADDR, S_ADDR = ("127.0.0.1", 40001), ("127.0.0.1", 4001)
PROTO = "/test/1.0.0"


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


class Pair:
    """A client core and the server core its first datagram makes, with the
    datagrams moved between them by :meth:`run`; each side's events."""

    def __init__(self, supports=(PROTO,), **kw):
        self.now = 0.0
        self.kw = kw
        self.supports = set(supports)
        quic = QuicCore(CERTS[KA.peer_id], now=0.0, utc_now=utc_now, remote_addr=S_ADDR, expected_peer=KB.peer_id)
        self.c = QuicConnectionCore(quic, supports_protocol=self.supports.__contains__, **kw)
        self.s: QuicConnectionCore | None = None
        self.ev: dict[str, list] = {"c": [], "s": []}

    def run(self, rounds=60, step=0.002):
        quiet = 0
        for _ in range(rounds):
            self.now += step
            moved = False
            for core, k in ((self.c, "c"), (self.s, "s")):
                if core is not None and (t := core.get_timer()) is not None and t <= self.now:
                    self.ev[k] += core.handle_timer(self.now)
            for data, _ in self.c.datagrams_to_send(self.now):
                moved = True
                if self.s is None:
                    cid = initial_destination_cid(data)
                    quic = QuicCore(CERTS[KB.peer_id], now=self.now, utc_now=utc_now, remote_addr=C_ADDR,
                                    original_destination_cid=cid)
                    self.s = QuicConnectionCore(quic, supports_protocol=self.supports.__contains__, **self.kw)
                self.ev["s"] += self.s.receive_datagram(data, C_ADDR, self.now)
            if self.s is not None:
                for data, _ in self.s.datagrams_to_send(self.now):
                    moved = True
                    self.ev["c"] += self.c.receive_datagram(data, S_ADDR, self.now)
            quiet = 0 if moved else quiet + 1
            if quiet >= 3:
                break
        return self

    def take(self, side):
        out, self.ev[side] = self.ev[side], []
        return out


def opened(**kw) -> Pair:
    p = Pair(**kw).run()
    assert p.take("c") == [Upgraded(KB.peer_id, KB.public_key)]
    assert p.take("s") == [Upgraded(KA.peer_id, KA.public_key)]
    return p


def data_of(events, sid):
    return b"".join(e.data for e in events if type(e) in (StreamData,) and e.stream_id == sid) + b"".join(
        e.data for e in events if type(e) in (InboundStreamNegotiated, OutboundStreamNegotiated) and e.stream_id == sid)


def test_a_stream_negotiates_its_protocol_and_carries_data_both_ways():
    p = opened()
    sid = p.c.open_stream([PROTO], p.now)
    assert sid % 4 == 0  # a client-initiated bidirectional stream
    p.run()
    [neg] = [e for e in p.take("s") if type(e) is InboundStreamNegotiated]
    assert (neg.stream_id, neg.protocol) == (sid, PROTO)
    [out] = p.take("c")
    assert out == OutboundStreamNegotiated(sid, PROTO, b"")
    p.c.send(sid, b"request")
    p.c.close_stream(sid)
    p.run()
    got = p.take("s")
    assert data_of(got, sid) == b"request" and StreamEnded(sid) in got
    p.s.send(sid, b"answer")
    p.s.close_stream(sid)
    assert StreamFreed(sid) in p.s.events()  # both sides closed: the server forgets it
    p.run()
    got = p.take("c")
    assert data_of(got, sid) == b"answer"
    assert got[-2:] == [StreamEnded(sid), StreamFreed(sid)]
    assert p.s.inbound_streams == 0


def test_data_behind_the_proposal_comes_with_the_negotiation():
    p = opened()
    # a lazy dialer (rust's V1Lazy): header, proposal and data in one go
    sid = p.c.quic.open_stream()
    p.c.quic.send(sid, encode_message("/multistream/1.0.0") + encode_message(PROTO) + b"early")
    p.run()
    [neg] = [e for e in p.take("s") if type(e) is InboundStreamNegotiated]
    assert neg.data == b"early"


def test_an_unsupported_protocol_fails_the_stream_not_the_connection():
    p = opened()
    sid = p.c.open_stream(["/nope/1.0.0"], p.now)
    p.run()
    [failed] = p.take("c")
    assert type(failed) is OutboundStreamFailed and failed.stream_id == sid and failed.error is not None
    assert p.c.is_open and p.s.is_open and p.s.inbound_streams == 0
    sid2 = p.c.open_stream(["/nope/1.0.0", PROTO], p.now)
    p.run()
    assert p.take("c") == [OutboundStreamNegotiated(sid2, PROTO, b"")]


def test_a_reset_ends_the_stream_on_both_sides_and_nothing_else():
    p = opened()
    sid = p.c.open_stream([PROTO], p.now)
    p.run()
    p.take("c"), p.take("s")
    p.c.reset_stream(sid)
    p.run()
    assert StreamResetByPeer(sid) in p.take("s")
    assert p.s.inbound_streams == 0 and p.c.is_open and p.s.is_open
    # the peer's late writes on it are refused at once, and open no stream
    try:
        p.s.send(sid, b"late")
    except StreamReset:
        pass
    p.run()
    assert not [e for e in p.take("c") if getattr(e, "stream_id", None) == sid and type(e) is not StreamResetByPeer]
    # a stream opened after it works
    sid2 = p.c.open_stream([PROTO], p.now)
    p.run()
    assert p.take("c") == [OutboundStreamNegotiated(sid2, PROTO, b"")]


def test_the_peer_stopping_our_side_does_not_stop_its_answer():
    # go-libp2p's close of a stream is a FIN and a STOP_SENDING: our FIN
    # after it has no one to go to, and what the peer sent is still read
    p = opened()
    sid = p.c.open_stream([PROTO], p.now)
    p.run()
    p.take("c"), p.take("s")
    p.s.send(sid, b"answer")
    p.s.close_stream(sid)
    p.s.quic.stop_stream(sid, 0)
    p.run()
    got = p.take("c")
    assert data_of(got, sid) == b"answer" and StreamEnded(sid) in got
    p.c.close_stream(sid)  # no error
    assert StreamFreed(sid) in p.c.events()


def test_inbound_streams_beyond_the_limit_are_reset():
    p = opened(max_inbound_streams=2)
    sids = [p.c.open_stream([PROTO], p.now) for _ in range(3)]
    p.run()
    got = p.take("c")
    assert [e.stream_id for e in got if type(e) is OutboundStreamNegotiated] == sids[:2]
    assert [e.stream_id for e in got if type(e) is OutboundStreamFailed] == sids[2:]
    assert p.s.inbound_streams == 2


def test_a_stream_that_does_not_negotiate_in_time_is_reset():
    p = opened(negotiation_timeout=1.0)
    sid = p.c.quic.open_stream()
    p.c.quic.send(sid, encode_message("/multistream/1.0.0"))  # and never a proposal
    p.run()
    assert p.s.negotiating(sid)
    t = p.s.get_timer()
    assert t is not None and t <= p.now + 1.0
    p.now += 1.0
    p.s.handle_timer(p.now)
    assert not p.s.negotiating(sid) and p.s.inbound_streams == 0
    p.run()
    assert p.s.is_open


def test_unread_bytes_are_bounded_per_stream():
    p = opened(max_stream_buffer=10_000)
    sid = p.c.open_stream([PROTO], p.now)
    p.run()
    p.take("c"), p.take("s")
    p.c.send(sid, b"x" * 8_000)
    p.run()
    got = p.take("s")
    assert sum(len(e.data) for e in got if type(e) is StreamData) == 8_000
    p.s.consumed(sid, 4_000)  # taken by the application: room for more
    p.c.send(sid, b"y" * 5_000)
    p.run()
    assert not [e for e in p.take("s") if type(e) is StreamResetByPeer]
    p.c.send(sid, b"z" * 5_000)  # 9,000 unread + 5,000: over the bound
    p.run()
    assert StreamResetByPeer(sid) in p.take("s")
    assert p.s.inbound_streams == 0 and p.s.is_open
    p.run()
    assert p.c.is_open


def test_written_bytes_are_queued_until_sent_not_until_acknowledged():
    """A writer waits while its stream's bytes are queued (the kad server
    holds its next answer back meanwhile): over QUIC until they are sent,
    as over Yamux and TCP, not until the peer acknowledges them, which it
    may do a while later. Bytes beyond the windows stay queued, and the
    stream is writable again once sending took it below the mark."""
    p = opened()
    sid = p.c.open_stream([PROTO], p.now)
    p.run()
    p.take("c"), p.take("s")
    p.c.send(sid, b"a" * 1000)
    assert p.c.buffered(sid) == 1000
    assert p.c.datagrams_to_send(p.now)  # sent; the acknowledgement is lost here
    assert p.c.buffered(sid) == 0
    p.c.send(sid, b"b" * 400_000)  # far beyond the first congestion window
    p.c.datagrams_to_send(p.now)
    assert p.c.buffered(sid) > WRITABLE_BELOW
    writable = False
    for _ in range(300):
        p.run(rounds=2)
        p.s.consumed(sid, sum(len(e.data) for e in p.take("s") if type(e) is StreamData))
        if StreamWritable(sid) in p.take("c"):
            writable = True
            break
    assert writable and p.c.buffered(sid) <= WRITABLE_BELOW


def test_a_unidirectional_stream_is_stopped():
    p = opened()
    uni = p.c.quic._quic.get_next_available_stream_id(is_unidirectional=True)  # libp2p never opens one
    p.c.quic._quic.send_stream_data(uni, b"hello")
    p.run()
    assert not p.take("s") and p.s.inbound_streams == 0


def test_a_ping_is_acknowledged():
    p = opened()
    opaque = p.c.ping(p.now)
    p.run()
    [pong] = p.take("c")
    assert type(pong) is PongReceived and pong.opaque == opaque and pong.rtt >= 0


def test_closing_ends_the_connection_on_both_sides():
    p = opened()
    p.c.open_stream([PROTO], p.now)
    p.c.close("bye")
    assert not p.c.is_open
    try:
        p.c.open_stream([PROTO], p.now)
        raise AssertionError("a closed connection opened a stream")
    except StreamReset:
        pass
    p.run()
    # the peer drains for a few round-trip times (RFC 9000 10.2), then reports the end
    for _ in range(20):
        if p.s.is_closed:
            break
        t = p.s.get_timer()
        assert t is not None
        p.now = max(p.now, t)
        p.ev["s"] += p.s.handle_timer(p.now)
    [failed] = [e for e in p.take("s") if type(e) is ConnectionFailed]
    assert "bye" in failed.reason and p.s.is_closed


def test_a_quiet_connection_is_kept_alive_by_the_dialer():
    p = Pair(keepalive=5.0).run()
    p.take("c"), p.take("s")
    # an hour of silence from the application, 1 s steps: PINGs keep it open
    for _ in range(3600):
        p.now += 1.0
        p.run(rounds=3, step=0.0)
    assert p.c.is_open and p.s.is_open
    assert not [e for e in p.take("c") + p.take("s") if type(e) is ConnectionFailed]


def test_without_keepalive_quic_idle_timeout_ends_a_quiet_connection():
    p = opened()
    for _ in range(60):
        p.now += 1.0
        p.run(rounds=3, step=0.0)
    assert any(type(e) is ConnectionFailed for e in p.take("c"))
