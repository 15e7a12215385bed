"""Tests of the sans-IO connection core (kadfast.net.upgrade): two cores
driven against each other in memory, on given times."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadfast.errors import MultistreamError, NoiseError, StreamReset, YamuxError
from kadfast.keys import Ed25519KeyPair
from kadfast.multistream import MultistreamDialer, MultistreamListener
from kadfast.net.upgrade import (
    ConnectionCore,
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
    Upgraded,
)
from kadfast.noise import NoiseHandshake, NoiseStaticKey

ECHO = "/echo/1.0.0"
OTHER = "/other/1.0.0"
KA, KB = Ed25519KeyPair.generate(), Ed25519KeyPair.generate()
SA, SB = NoiseStaticKey(KA), NoiseStaticKey(KB)


def core(initiator: bool, now: float = 0.0, **kw) -> ConnectionCore:
    kw.setdefault("supports_protocol", lambda p: p in (ECHO, OTHER))
    if initiator:
        kw.setdefault("expected_peer", KB.peer_id)
        return ConnectionCore(KA, initiator=True, now=now, static_key=SA, **kw)
    return ConnectionCore(KB, initiator=False, now=now, static_key=SB, **kw)


def pump(a, b, now=0.0, chunks=None):
    """Move bytes both ways until neither side has any to send; the events
    each side got. ``chunks``: sizes to cut every write into, cyclically."""
    got = {id(a): a.events(), id(b): b.events()}
    i = 0
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            out = src.data_to_send()
            if not out:
                continue
            moved = True
            if chunks:
                pos = 0
                while pos < len(out):
                    n = chunks[i % len(chunks)]
                    i += 1
                    got[id(dst)] += dst.receive_data(out[pos:pos + n], now)
                    pos += n
            else:
                got[id(dst)] += dst.receive_data(out, now)
            got[id(src)] += src.events()
        if not moved:
            return got[id(a)], got[id(b)]


def upgraded(**kw):
    a, b = core(True, **kw), core(False, **kw)
    ea, eb = pump(a, b)
    assert [type(e) for e in ea] == [Upgraded] and [type(e) for e in eb] == [Upgraded]
    return a, b


def of(events, *types):
    return [e for e in events if isinstance(e, types)]


# -- the upgrade ---------------------------------------------------------------


def test_the_upgrade_both_ways():
    a, b = core(True), core(False)
    assert not a.is_open and a.get_timer() == 10.0 and b.get_timer() == 10.0
    ea, eb = pump(a, b)
    assert ea == [Upgraded(KB.peer_id, KB.public_key)]
    assert eb == [Upgraded(KA.peer_id, KA.public_key)]
    assert a.is_open and b.is_open
    assert a.remote_peer_id == KB.peer_id and b.remote_peer_id == KA.peer_id
    assert a.get_timer() is None and b.get_timer() is None  # the handshake deadline is gone


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 97), min_size=1, max_size=12))
def test_the_byte_stream_split_anywhere(chunks):
    a, b = core(True), core(False)
    ea, eb = pump(a, b, chunks=chunks)
    assert of(ea, Upgraded) and of(eb, Upgraded)
    sid = a.open_stream([OTHER, ECHO], 0.0)
    a.send(sid, b"request")
    a.close_stream(sid)
    ea1, eb = pump(a, b, chunks=chunks)
    neg = of(eb, InboundStreamNegotiated)
    assert [(n.stream_id, n.protocol) for n in neg] == [(sid, OTHER)]
    data = neg[0].data + b"".join(e.data for e in of(eb, StreamData))
    assert data == b"request" and of(eb, StreamEnded)
    b.consumed(sid, len(data))
    b.send(sid, b"reply")
    b.close_stream(sid)
    ea, eb = pump(a, b, chunks=chunks)
    ea = ea1 + ea
    out = of(ea, OutboundStreamNegotiated)
    assert [(n.stream_id, n.protocol) for n in out] == [(sid, OTHER)]
    assert out[0].data + b"".join(e.data for e in of(ea, StreamData)) == b"reply"
    assert of(ea, StreamFreed) and of(eb, StreamFreed)
    assert b.inbound_streams == 0


def test_the_initiator_writes_first_and_the_last_handshake_message_travels_with_the_yamux_proposal():
    # without the inlined muxer negotiation on one side (rust-libp2p, js-libp2p)
    a, b = core(True), core(False, early_muxer=False)
    first = a.data_to_send()
    assert first == MultistreamDialer(["/noise"]).data_to_send()
    assert b.data_to_send() == b""  # the listener waits for the proposal
    b.receive_data(first, 0.0)
    a.receive_data(b.data_to_send(), 0.0)  # the echo
    b.receive_data(a.data_to_send(), 0.0)  # Noise message 1
    a.receive_data(b.data_to_send(), 0.0)  # Noise message 2
    out = a.data_to_send()  # Noise message 3 and the encrypted /yamux proposal: one write
    b.receive_data(out, 0.0)
    assert b.remote_peer_id == KA.peer_id and b.is_open and not a.is_open  # the listener echoed
    a.receive_data(b.data_to_send(), 0.0)  # the /yamux echo
    assert a.is_open
    assert not a.early_muxer and not b.early_muxer


@pytest.mark.parametrize("initiator_offers", [True, False])
def test_a_muxer_offered_by_one_side_only_is_negotiated_with_multistream_select(initiator_offers):
    a, b = core(True, early_muxer=initiator_offers), core(False, early_muxer=not initiator_offers)
    ea, eb = pump(a, b)
    assert a.is_open and b.is_open and of(ea, Upgraded) and of(eb, Upgraded)
    assert not a.early_muxer and not b.early_muxer


def test_yamux_agreed_in_the_handshake_skips_its_negotiation():
    a, b = core(True), core(False)
    b.receive_data(a.data_to_send(), 0.0)  # /noise proposal
    a.receive_data(b.data_to_send(), 0.0)  # the echo
    b.receive_data(a.data_to_send(), 0.0)  # Noise message 1
    ea = a.receive_data(b.data_to_send(), 0.0)  # Noise message 2: the responder's muxers
    assert a.is_open and a.early_muxer and of(ea, Upgraded)  # the initiator at once
    sid = a.open_stream([ECHO], 0.0)
    a.send(sid, b"ping")
    out = a.data_to_send()  # Noise message 3 and the first stream, one write
    eb = b.receive_data(out, 0.0)
    assert b.is_open and b.early_muxer and of(eb, Upgraded)
    neg = of(eb, InboundStreamNegotiated)
    assert [(n.stream_id, n.protocol) for n in neg] == [(sid, ECHO)]
    assert neg[0].data + b"".join(e.data for e in of(eb, StreamData)) == b"ping"


def _noise_pair(initiator_muxers, responder_muxers):
    a = NoiseHandshake(KA, initiator=True, static_key=SA, muxers=initiator_muxers)
    b = NoiseHandshake(KB, initiator=False, static_key=SB, muxers=responder_muxers)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())
    assert a.complete and b.complete
    return a, b


def test_the_initiators_preference_decides_the_muxer():
    # the spec's example: the client prefers yamux, the server mplex
    a, b = _noise_pair(("/yamux/1.0.0", "/mplex/6.7.0"), ("/mplex/6.7.0", "/yamux/1.0.0"))
    assert a.muxer == b.muxer == "/yamux/1.0.0"
    a, b = _noise_pair(("/other/1", "/yamux/1.0.0"), ("/yamux/1.0.0", "/other/1"))
    assert a.muxer == b.muxer == "/other/1"
    a, b = _noise_pair((), ("/yamux/1.0.0",))  # one list only: negotiated afterwards
    assert a.muxer is None and b.muxer is None


def test_no_muxer_in_common_fails_the_handshake():
    # both offer a list, with nothing in common: the spec's MUST fail
    a = NoiseHandshake(KA, initiator=True, static_key=SA, muxers=("/mplex/6.7.0",))
    b = NoiseHandshake(KB, initiator=False, static_key=SB, muxers=("/yamux/1.0.0",))
    b.receive_data(a.data_to_send())
    with pytest.raises(NoiseError, match="multiplexer in common"):
        a.receive_data(b.data_to_send())


def test_handshake_timeout():
    a, b = core(True, now=5.0, handshake_timeout=3.0), core(False, now=5.0)
    b.receive_data(a.data_to_send(), 5.0)
    assert a.get_timer() == 8.0
    assert a.handle_timer(7.9) == []
    [ev] = a.handle_timer(8.0)
    assert ev == ConnectionFailed("handshake timed out") and not ev.remote
    assert a.is_closed and a.get_timer() is None
    assert a.receive_data(b.data_to_send(), 8.1) == []  # ignored once failed
    assert a.handle_timer(20.0) == []


def test_a_peer_that_does_not_speak_noise():
    a = core(True)
    tls = MultistreamListener(["/tls/1.0.0"])
    tls.receive_data(a.data_to_send())
    [ev] = a.receive_data(tls.data_to_send(), 0.0)
    assert type(ev) is ConnectionFailed and isinstance(ev.error, MultistreamError) and ev.remote
    assert a.is_closed
    # the listener's side: a dialer proposing something else gets ``na``, and
    # nothing more happens until the handshake deadline
    b = core(False)
    d = MultistreamDialer(["/tls/1.0.0"])
    assert b.receive_data(d.data_to_send(), 0.0) == []
    with pytest.raises(MultistreamError):
        d.receive_data(b.data_to_send())
    assert type(b.handle_timer(10.0)[0]) is ConnectionFailed


def _noise_peer(initiator: bool, core_side: ConnectionCore):
    """Run the /noise negotiation and the handshake by hand against
    ``core_side``; the peer's transport cipher."""
    kp = KA if initiator else KB  # the identity the core side expects
    if initiator:
        ms = MultistreamDialer(["/noise"])
        core_side.receive_data(ms.data_to_send(), 0.0)
        ms.receive_data(core_side.data_to_send())
        hs = NoiseHandshake(kp, initiator=True)
        core_side.receive_data(hs.data_to_send(), 0.0)
        hs.receive_data(core_side.data_to_send())
        core_side.receive_data(hs.data_to_send(), 0.0)
    else:
        ms = MultistreamListener(["/noise"])
        ms.receive_data(core_side.data_to_send())
        hs = NoiseHandshake(kp, initiator=False)
        core_side.receive_data(ms.data_to_send(), 0.0)
        hs.receive_data(core_side.data_to_send())
        core_side.receive_data(hs.data_to_send(), 0.0)
        hs.receive_data(core_side.data_to_send())
    assert hs.complete
    return hs.transport(), hs.unused


def test_a_peer_that_does_not_speak_yamux():
    # we dial; the peer accepts only mplex
    a = ConnectionCore(KA, initiator=True, now=0.0, static_key=SA, supports_protocol=lambda p: True)
    crypto, rest = _noise_peer(False, a)
    mplex = MultistreamListener(["/mplex/6.7.0"])
    mplex.receive_data(crypto.decrypt(rest))  # the /yamux proposal came with Noise message 3
    [ev] = a.receive_data(crypto.encrypt(mplex.data_to_send()), 0.0)
    assert type(ev) is ConnectionFailed and isinstance(ev.error, MultistreamError) and ev.remote
    # the peer dials and proposes only mplex: refused, and no upgrade
    b = core(False)
    crypto, _ = _noise_peer(True, b)
    d = MultistreamDialer(["/mplex/6.7.0"])
    assert b.receive_data(crypto.encrypt(d.data_to_send()), 0.0) == []
    with pytest.raises(MultistreamError):
        d.receive_data(crypto.decrypt(b.data_to_send()))
    assert not b.is_open


def test_a_noise_failure_fails_the_connection():
    b = core(False)
    b.receive_data(MultistreamDialer(["/noise"]).data_to_send(), 0.0)
    b.data_to_send()
    [ev] = b.receive_data(b"\x00\x05hello", 0.0)  # not a Noise message 1 (32 bytes)
    assert type(ev) is ConnectionFailed and isinstance(ev.error, NoiseError)


def test_the_wrong_peer_fails_the_dialer():
    a = core(True, expected_peer=Ed25519KeyPair.generate().peer_id)
    b = core(False)
    ea, _ = pump(a, b)
    assert type(ea[-1]) is ConnectionFailed and "mismatch" in ea[-1].reason


# -- streams -------------------------------------------------------------------


def test_open_negotiate_data_fin_both_ways():
    a, b = upgraded()
    sid = a.open_stream([ECHO], 1.0)
    ea, eb = pump(a, b, now=1.0)
    assert ea == [OutboundStreamNegotiated(sid, ECHO, b"")]
    assert eb == [InboundStreamNegotiated(sid, ECHO, b"")]
    assert b.stream_activity == 1.0
    a.send(sid, b"ping")
    ea, eb = pump(a, b, now=2.0)
    assert eb == [StreamData(sid, b"ping")] and b.stream_activity == 2.0
    b.consumed(sid, 4)
    b.send(sid, b"pong")
    b.close_stream(sid)
    ea, eb = pump(a, b)
    assert ea == [StreamData(sid, b"pong"), StreamEnded(sid)]
    a.close_stream(sid)
    ea, eb = pump(a, b)
    assert ea == [StreamFreed(sid)] and eb == [StreamEnded(sid), StreamFreed(sid)]


def test_protocol_data_right_behind_the_proposal_is_handed_over():
    a, b = upgraded()
    sid = a.open_stream([ECHO], 0.0)
    a.send(sid, b"request")
    a.close_stream(sid)
    _, eb = pump(a, b)
    assert eb == [InboundStreamNegotiated(sid, ECHO, b""), StreamData(sid, b"request"), StreamEnded(sid)]
    # in one Data frame, the request is what the negotiation left over
    sid = a.session.open_stream()
    a.session.send(sid, MultistreamDialer([ECHO]).data_to_send() + b"request")
    _, eb = pump(a, b)
    assert eb == [InboundStreamNegotiated(sid, ECHO, b"request")]


def test_the_second_proposal_after_a_refusal():
    a, b = upgraded()
    sid = a.open_stream(["/nope/1", ECHO], 0.0)
    ea, eb = pump(a, b)
    assert ea == [OutboundStreamNegotiated(sid, ECHO, b"")]
    assert eb == [InboundStreamNegotiated(sid, ECHO, b"")]


def test_negotiation_failure():
    a, b = upgraded()
    sid = a.open_stream(["/nope/1"], 0.0)
    ea, eb = pump(a, b)
    [ev] = ea
    assert type(ev) is OutboundStreamFailed and ev.stream_id == sid and isinstance(ev.error, MultistreamError)
    assert "negotiation failed" in ev.reason
    assert eb == [] and b.inbound_streams == 0 and a.session.stream_ids() == [] == b.session.stream_ids()
    assert a.is_open and b.is_open


def test_a_stream_reset_in_the_same_read_as_its_negotiation():
    a, b = upgraded()
    sid = a.open_stream([ECHO], 0.0)
    a.send(sid, b"request")
    a.reset_stream(sid)  # SYN, proposal, request and RST leave in one write
    eb = b.receive_data(a.data_to_send(), 0.0)
    assert eb == [InboundStreamNegotiated(sid, ECHO, b""), StreamData(sid, b"request"), StreamResetByPeer(sid)]
    assert b.inbound_streams == 0 and b.count_inbound(sid, 1) and b.inbound_streams_for(ECHO) == 0
    with pytest.raises(StreamReset):
        b.send(sid, b"reply")  # the reply of a handler that had not seen the reset yet
    assert b.data_to_send() == b""  # negotiation's echo is dropped, no RST back
    assert a.is_open and b.is_open


def test_a_cancelled_stream_does_not_close_the_connection():
    a, b = upgraded()
    sid = a.open_stream([ECHO], 0.0)
    b.receive_data(a.data_to_send(), 0.0)
    a.reset_stream(sid)  # cancelled while the answer is in flight
    assert not a.negotiating(sid)
    ea = a.receive_data(b.data_to_send(), 0.0)  # the answer for a stream now gone
    assert ea == [] and a.is_open
    ea, eb = pump(a, b)
    assert eb == [StreamResetByPeer(sid)] and b.inbound_streams == 0
    sid2 = a.open_stream([ECHO], 0.0)
    ea, eb = pump(a, b)
    assert ea == [OutboundStreamNegotiated(sid2, ECHO, b"")]


def _dialer_and_hand_peer():
    """Our dialer, upgraded against a peer driven by hand: its cipher and
    Yamux session."""
    from kadfast.yamux import YamuxSession

    a = core(True)
    crypto, rest = _noise_peer(False, a)
    ms = MultistreamListener(["/yamux/1.0.0"])
    ms.receive_data(crypto.decrypt(rest))
    assert type(a.receive_data(crypto.encrypt(ms.data_to_send()), 0.0)[0]) is Upgraded
    return a, crypto, YamuxSession(False)


def test_a_stream_reset_by_the_peer_while_negotiating():
    a, crypto, peer = _dialer_and_hand_peer()
    sid = a.open_stream([ECHO], 0.0)
    peer.receive_data(crypto.decrypt(a.data_to_send()))
    peer.reset_stream(sid)  # before any answer
    ea = a.receive_data(crypto.encrypt(peer.data_to_send()), 0.0)
    assert ea == [OutboundStreamFailed(sid, "reset by peer")]
    assert a.get_timer() is None and a.is_open


def test_a_stream_ended_while_negotiating_is_reset():
    a, b = upgraded()
    sid = a.session.open_stream()  # by hand: half a proposal, then FIN
    a.session.send(sid, b"\x13/multi")
    a.session.close_stream(sid)
    ea, eb = pump(a, b)
    assert eb == [] and b.inbound_streams == 0 and b.get_timer() is None
    assert ea[-1] == StreamResetByPeer(sid)  # after the listener's header
    # and an outbound one: the peer half-closes before it answers
    a, crypto, peer = _dialer_and_hand_peer()
    sid = a.open_stream([ECHO], 0.0)
    peer.receive_data(crypto.decrypt(a.data_to_send()))
    peer.close_stream(sid)
    ea = a.receive_data(crypto.encrypt(peer.data_to_send()), 0.0)
    assert ea == [OutboundStreamFailed(sid, "stream ended during protocol negotiation")]
    assert a.is_open and not a.session.has_stream(sid)
    assert y_reset(peer.receive_data(crypto.decrypt(a.data_to_send()))) == [sid]  # reset


def y_reset(events):
    return [e.stream_id for e in events if isinstance(e, StreamResetByPeer)]


def test_inbound_negotiation_timeout():
    a, b = upgraded(negotiation_timeout=2.0)
    sid = a.session.open_stream()
    a.session.send(sid, b"\x13")  # a length prefix, then silence
    pump(a, b, now=1.0)
    assert b.negotiating(sid) and b.inbound_streams == 1
    assert b.get_timer() == 3.0
    assert b.handle_timer(2.9) == []
    assert b.handle_timer(3.0) == []  # nothing for the shell: nobody holds the stream
    assert not b.negotiating(sid) and b.inbound_streams == 0 and b.get_timer() is None
    ea, _ = pump(a, b)
    assert ea == [StreamResetByPeer(sid)]


def test_outbound_negotiation_timeout():
    a, b = upgraded(negotiation_timeout=2.0)
    sid = a.open_stream([ECHO], 1.0)
    b.receive_data(a.data_to_send(), 1.0)
    b.data_to_send()  # the answer is lost
    assert a.get_timer() == 3.0
    assert a.handle_timer(3.0) == [OutboundStreamFailed(sid, "protocol negotiation timed out")]
    assert a.get_timer() is None
    _, eb = pump(a, b)
    assert eb == [StreamResetByPeer(sid)]


def test_negotiated_streams_leave_no_deadline_behind():
    a, b = upgraded()
    sids = [a.open_stream([ECHO], float(i)) for i in range(5)]
    pump(a, b)
    assert a.get_timer() is None and b.get_timer() is None
    assert a.handle_timer(100.0) == [] and b.handle_timer(100.0) == []
    assert all(a.session.has_stream(s) for s in sids)


def test_the_inbound_stream_limit():
    a, b = upgraded(max_inbound_streams=2)
    sids = [a.open_stream([ECHO], 0.0) for _ in range(3)]
    ea, eb = pump(a, b)
    assert of(eb, InboundStreamNegotiated) == [InboundStreamNegotiated(s, ECHO, b"") for s in sids[:2]]
    assert OutboundStreamFailed(sids[2], "reset by peer") in ea
    assert b.inbound_streams == 2
    a.reset_stream(sids[0])
    pump(a, b)
    assert b.inbound_streams == 1
    sid = a.open_stream([ECHO], 0.0)
    ea, _ = pump(a, b)
    assert ea == [OutboundStreamNegotiated(sid, ECHO, b"")]


def test_count_inbound_per_protocol():
    a, b = upgraded()
    s1, s2, s3 = (a.open_stream([ECHO], 0.0) for _ in range(3))
    pump(a, b)
    assert b.count_inbound(s1, 2) and b.count_inbound(s1, 2)  # counted once
    assert b.count_inbound(s2, 2) and not b.count_inbound(s3, 2)
    assert b.inbound_streams_for(ECHO) == 2
    a.close_stream(s1)
    b.close_stream(s1)
    ea, eb = pump(a, b)
    assert StreamFreed(s1) in eb and b.inbound_streams_for(ECHO) == 1
    a.reset_stream(s2)
    pump(a, b)
    assert b.inbound_streams_for(ECHO) == 0 and b.count_inbound(s3, 1)
    assert a.count_inbound(s3, 0)  # one of ours: nothing to count
    assert b.count_inbound(999, 0)  # gone: nothing to count


def test_a_stream_we_closed_counts_no_more_against_its_protocol():
    # go-libp2p-kad-dht closes its side only once it has read the answer:
    # the server is done with the stream when it closes its own
    a, b = upgraded()
    s1, s2 = (a.open_stream([ECHO], 0.0) for _ in range(2))
    pump(a, b)
    assert b.count_inbound(s1, 1) and not b.count_inbound(s2, 1)
    b.close_stream(s1)
    pump(a, b)
    assert b.inbound_streams_for(ECHO) == 0 and b.inbound_streams == 2  # still open on the peer's side
    assert b.count_inbound(s1, 1)  # closed by us: not counted again
    assert b.count_inbound(s2, 1) and b.inbound_streams_for(ECHO) == 1
    a.close_stream(s1)
    _, eb = pump(a, b)
    assert StreamFreed(s1) in eb and b.inbound_streams == 1 and b.inbound_streams_for(ECHO) == 1


def test_ping_and_pong():
    a, b = upgraded()
    opaque = a.ping(1.0)
    assert b.receive_data(a.data_to_send(), 1.0) == []
    assert a.receive_data(b.data_to_send(), 1.25) == [PongReceived(opaque, 0.25)]


def test_close_says_goodbye():
    a, b = upgraded()
    a.close()
    assert a.is_closed
    with pytest.raises(StreamReset):
        a.open_stream([ECHO], 0.0)
    eb = b.receive_data(a.data_to_send(), 0.0)
    assert eb == [GoAwayReceived(0)]
    b.close()
    assert b.events() == [SessionClosed("GoAway sent and received")]


def test_a_yamux_protocol_error_from_the_peer():
    from kadfast.yamux import YamuxSession

    b = core(False)
    crypto, _ = _noise_peer(True, b)  # the peer, by hand
    d = MultistreamDialer(["/yamux/1.0.0"])
    assert type(b.receive_data(crypto.encrypt(d.data_to_send()), 0.0)[0]) is Upgraded
    d.receive_data(crypto.decrypt(b.data_to_send()))
    peer = YamuxSession(True)
    sid = peer.open_stream()
    peer.send(sid, MultistreamDialer([ECHO]).data_to_send() + b"x")
    out = peer.data_to_send() + struct.pack(">BBHII", 7, 0, 0, 0, 0)  # version 7
    events = b.receive_data(crypto.encrypt(out), 0.0)
    assert events[0] == InboundStreamNegotiated(sid, ECHO, b"x")  # what came before the error
    ev = events[-1]
    assert type(ev) is ConnectionFailed and isinstance(ev.error, YamuxError) and ev.remote
    assert not of(events, SessionClosed) and b.is_closed and b.inbound_streams == 0
    goaway = peer.receive_data(crypto.decrypt(b.data_to_send()))  # GoAway(protocol error) still leaves
    assert GoAwayReceived(1) in goaway
    assert b.receive_data(crypto.encrypt(b"more"), 0.0) == []  # ignored once failed


def test_a_yamux_protocol_error_right_behind_the_yamux_proposal():
    b = core(False)
    crypto, _ = _noise_peer(True, b)
    bad = struct.pack(">BBHII", 7, 0, 0, 0, 0)
    events = b.receive_data(crypto.encrypt(MultistreamDialer(["/yamux/1.0.0"]).data_to_send() + bad), 0.0)
    assert [type(e) for e in events] == [Upgraded, ConnectionFailed] and events[1].remote
    assert b.is_closed


def test_operations_before_the_upgrade():
    a = core(True)
    with pytest.raises(StreamReset):
        a.open_stream([ECHO], 0.0)
    with pytest.raises(StreamReset):
        a.ping(0.0)
    with pytest.raises(StreamReset):
        a.send(1, b"x")
    a.reset_stream(1)
    a.close_stream(1)
    a.consumed(1, 1)
    assert a.buffered(1) == 0 and a.pending_output == 0


def test_a_stream_closed_when_negotiated_sends_its_fin_with_the_read_that_agreed_it():
    a, b = upgraded()
    sid = a.open_stream([ECHO], 0.0, close_when_negotiated=True)
    eb = b.receive_data(a.data_to_send(), 0.0)
    assert eb == [InboundStreamNegotiated(sid, ECHO, b"")]  # no FIN yet: nothing agreed
    b.send(sid, b"who I am")
    b.close_stream(sid)  # the echo, the answer and b's FIN in one write
    ea = a.receive_data(b.data_to_send(), 0.0)
    # the stream is freed by our FIN after the read's own events
    assert ea == [OutboundStreamNegotiated(sid, ECHO, b""), StreamData(sid, b"who I am"), StreamEnded(sid),
                  StreamFreed(sid)]
    assert a.session.stream_ids() == []
    eb = b.receive_data(a.data_to_send(), 0.0)  # a's FIN left with that read's output
    assert eb == [StreamEnded(sid), StreamFreed(sid)] and b.inbound_streams == 0


def test_a_stream_closed_when_negotiated_stays_open_to_read():
    a, b = upgraded()
    sid = a.open_stream([ECHO], 0.0, close_when_negotiated=True)
    b.receive_data(a.data_to_send(), 0.0)
    ea = a.receive_data(b.data_to_send(), 0.0)  # only the echo
    assert ea == [OutboundStreamNegotiated(sid, ECHO, b"")]
    eb = b.receive_data(a.data_to_send(), 0.0)
    assert eb == [StreamEnded(sid)]  # a half-closed: b may still answer
    b.send(sid, b"late answer")
    b.close_stream(sid)
    ea, eb = pump(a, b)
    assert ea == [StreamData(sid, b"late answer"), StreamEnded(sid), StreamFreed(sid)] and of(eb, StreamFreed)


@pytest.mark.parametrize("how", ["refused", "reset", "timeout"])
def test_a_stream_to_close_when_negotiated_that_fails_leaves_nothing_behind(how):
    if how == "reset":
        a, crypto, peer = _dialer_and_hand_peer()
        sid = a.open_stream([ECHO], 0.0, close_when_negotiated=True)
        peer.receive_data(crypto.decrypt(a.data_to_send()))
        peer.reset_stream(sid)  # before any answer
        ea = a.receive_data(crypto.encrypt(peer.data_to_send()), 0.0)
    else:
        a, b = upgraded()
        protocols = ["/nope/1"] if how == "refused" else [ECHO]
        sid = a.open_stream(protocols, 0.0, close_when_negotiated=True)
        if how == "timeout":
            ea = a.handle_timer(10.0)
        else:
            b.receive_data(a.data_to_send(), 0.0)
            ea = a.receive_data(b.data_to_send(), 0.0)
    assert [type(e) for e in ea] == [OutboundStreamFailed] and ea[0].stream_id == sid
    assert a.session.stream_ids() == [] and a.is_open
