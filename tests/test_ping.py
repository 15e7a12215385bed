"""Ping: the responder echoes whole payloads, the initiator measures the round
trip on a fake clock; the two piped together; fuzzing."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast.errors import ProtocolError
from kadfast.ping import PING_SIZE, PING_TIMEOUT, PROTOCOL_ID, PingInitiator, PingResponder, new_payload

P1 = bytes(range(32))
P2 = bytes(range(32, 64))


def test_constants_and_payload():
    assert PROTOCOL_ID == "/ipfs/ping/1.0.0" and PING_SIZE == 32
    a, b = new_payload(), new_payload()
    assert len(a) == len(b) == 32 and a != b


def test_responder_echoes_whole_payloads_only():
    r = PingResponder()
    assert r.feed(P1[:10]) == b""
    assert r.feed(P1[10:] + P2[:5]) == P1
    assert r.feed(P2[5:]) == P2
    assert r.feed(P1 + P2) == P1 + P2
    assert r.echoed == 4
    r.eof()
    with pytest.raises(ProtocolError):
        r.feed(P1)


@given(st.binary(max_size=200), st.lists(st.integers(1, 40), max_size=20))
def test_responder_output_is_input_prefix(data, cuts):
    r = PingResponder()
    out = b""
    pos = 0
    for n in cuts + [len(data)]:
        out += r.feed(data[pos:pos + n])
        pos += n
        assert r.buffered < PING_SIZE  # bounded buffer
    whole = len(data) - len(data) % PING_SIZE
    assert out == data[:whole]
    if whole == len(data):
        r.eof()
    else:
        with pytest.raises(ProtocolError):
            r.eof()


def test_initiator_rtt_with_fake_clock():
    p = PingInitiator(P1, now=100.0)
    assert p.payload == P1 and p.deadline() == 100.0 + PING_TIMEOUT
    assert p.feed(P1[:16], now=100.01) is None
    assert p.feed(b"", now=100.02) is None
    assert p.feed(P1[16:], now=100.25) == pytest.approx(0.25)
    assert p.done and p.deadline() is None
    assert p.again(P2, now=200.0) == P2
    assert not p.done and p.feed(P2, now=200.5) == pytest.approx(0.5)
    p.eof()


def test_initiator_rtt_never_negative():
    p = PingInitiator(P1, now=10.0)
    assert p.feed(P1, now=9.0) == 0.0


def test_initiator_timeout():
    p = PingInitiator(P1, now=0.0, timeout=5.0)
    assert not p.expired(4.999)
    assert p.expired(5.0)
    p.feed(P1, now=1.0)
    assert not p.expired(100.0)


@pytest.mark.parametrize(
    "chunks",
    [
        [bytes(32)],  # wrong bytes
        [P1[:5], b"\x00"],  # diverges mid-way
        [P1 + b"x"],  # extra bytes beyond the echo
        [P1, b"x"],  # bytes after the echo
    ],
)
def test_initiator_mismatch_is_a_protocol_error(chunks):
    p = PingInitiator(P1, now=0.0)
    with pytest.raises(ProtocolError) as err:
        for c in chunks:
            p.feed(c, now=1.0)
    assert err.value.remote
    with pytest.raises(ProtocolError):  # closed after the error
        p.feed(P1, now=2.0)


def test_initiator_local_misuse():
    with pytest.raises(ProtocolError) as err:
        PingInitiator(b"short", now=0.0)
    assert not err.value.remote
    p = PingInitiator(P1, now=0.0)
    with pytest.raises(ProtocolError):
        p.again(P2, now=1.0)  # previous ping still pending


def test_initiator_eof_before_echo():
    p = PingInitiator(P1, now=0.0)
    p.feed(P1[:3], now=0.1)
    with pytest.raises(ProtocolError):
        p.eof()


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5), st.integers(1, 33))
def test_piped_together(payloads, chunk):
    responder = PingResponder()
    now = 0.0
    pinger = PingInitiator(payloads[0], now)
    wire = payloads[0]
    for i, payload in enumerate(payloads):
        if i:
            wire = pinger.again(payload, now)
        echoed = b""
        for j in range(0, len(wire), chunk):
            echoed += responder.feed(wire[j:j + chunk])
        now += 0.125
        rtts = [pinger.feed(echoed[j:j + chunk], now) for j in range(0, len(echoed), chunk)]
        assert rtts[-1] == 0.125 and all(r is None for r in rtts[:-1])
    responder.eof()
    pinger.eof()


@given(st.binary(max_size=80), st.integers(1, 9))
def test_fuzz_initiator_only_protocol_error(data, chunk):
    p = PingInitiator(P1, now=0.0)
    try:
        for i in range(0, len(data), chunk):
            p.feed(data[i:i + chunk], now=1.0)
        p.eof()
    except ProtocolError:
        pass
