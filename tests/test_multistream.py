"""multistream-select 1.0 cores: dialer/listener pairs piped together, exact
wire bytes, lazy negotiation, limits, and fuzzing."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast.errors import MultistreamError, ProtocolError
from kadfast.multistream import (
    MAX_MESSAGE_LEN,
    MAX_PROPOSALS,
    PROTOCOL_ID,
    MultistreamDialer,
    MultistreamListener,
    encode_message,
)

HEADER = b"\x13/multistream/1.0.0\n"
NOISE = b"\x07/noise\n"
NA = b"\x03na\n"


def pump(dialer, listener, *, chunk=None, max_rounds=50):
    """Move bytes both ways until neither side has anything to send."""
    for _ in range(max_rounds):
        d = dialer.data_to_send()
        if d:
            feed(listener, d, chunk)
        ld = listener.data_to_send()
        if ld:
            feed(dialer, ld, chunk)
        if not d and not ld:
            return
    raise AssertionError("negotiation did not settle")


def feed(side, data, chunk):
    if chunk is None:
        side.receive_data(data)
    else:
        for i in range(0, len(data), chunk):
            side.receive_data(data[i : i + chunk])


# -- encoding


def test_encode_message_wire_bytes():
    assert encode_message(PROTOCOL_ID) == HEADER
    assert encode_message("/noise") == NOISE
    assert encode_message("na") == NA
    assert encode_message("ls") == bytes.fromhex("036c730a")
    long = "/" + "x" * 200
    enc = encode_message(long)
    assert enc[:2] == bytes([(202 & 0x7F) | 0x80, 202 >> 7]) and enc[2:] == long.encode() + b"\n"
    assert encode_message("/noise") is encode_message("/noise")  # cached


def test_encode_message_rejects_bad_text():
    with pytest.raises(MultistreamError) as e:
        encode_message("/a\nb")
    assert e.value.remote is False
    with pytest.raises(MultistreamError):
        encode_message("/" + "x" * MAX_MESSAGE_LEN)
    encode_message("/" + "x" * (MAX_MESSAGE_LEN - 2))  # exactly at the limit


# -- pairs


def test_dialer_sends_header_and_proposal_in_one_write():
    d = MultistreamDialer(["/noise"])
    assert d.initial_data() == HEADER + NOISE
    assert d.data_to_send() == b""
    assert d.selected is None and not d.done


def test_listener_sends_header_at_once():
    assert MultistreamListener(["/noise"]).data_to_send() == HEADER


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_pair_selects_first_protocol(chunk):
    d = MultistreamDialer(["/noise", "/tls/1.0.0"])
    l = MultistreamListener({"/noise"})
    pump(d, l, chunk=chunk)
    assert d.done and l.done
    assert d.selected == l.selected == "/noise"
    assert d.unused == l.unused == b""


@pytest.mark.parametrize("chunk", [None, 1])
def test_na_falls_back_to_second_protocol(chunk):
    d = MultistreamDialer(["/mplex/6.7.0", "/yamux/1.0.0"])
    l = MultistreamListener(lambda p: p == "/yamux/1.0.0")
    d_out = d.data_to_send()
    feed(l, d_out, chunk)
    assert l.data_to_send() == HEADER + NA
    assert not l.done
    feed(d, HEADER + NA, chunk)
    second = d.data_to_send()
    assert second == encode_message("/yamux/1.0.0")
    feed(l, second, chunk)
    pump(d, l, chunk=chunk)
    assert d.selected == l.selected == "/yamux/1.0.0"
    assert d.done and l.done


def test_all_refused_raises():
    d = MultistreamDialer(["/a", "/b"])
    l = MultistreamListener(set())
    with pytest.raises(MultistreamError, match="none of"):
        pump(d, l)
    # the dialer is dead afterwards
    with pytest.raises(MultistreamError):
        d.receive_data(b"\x00")


def test_data_after_echo_is_unused_on_both_sides():
    d = MultistreamDialer(["/ipfs/kad/1.0.0"])
    l = MultistreamListener(["/ipfs/kad/1.0.0"])
    l.receive_data(d.data_to_send())
    assert l.done
    d.receive_data(l.data_to_send() + b"response bytes")
    assert d.done and d.unused == b"response bytes"
    d.receive_data(b" and more")  # after done: appended, never lost
    assert d.unused == b"response bytes and more"


def test_lazy_dialer_data_lands_in_listener_unused():
    d = MultistreamDialer(["/ipfs/kad/1.0.0"], lazy=True)
    assert d.selected == "/ipfs/kad/1.0.0" and not d.done
    wire = d.data_to_send() + b"\x05hello" + b"tail"
    l = MultistreamListener(["/ipfs/kad/1.0.0", "/ipfs/id/1.0.0"])
    l.receive_data(wire)
    assert l.done and l.selected == "/ipfs/kad/1.0.0"
    assert l.unused == b"\x05hellotail"
    # the listener's header + echo + reply, byte by byte, reach the dialer
    reply = l.data_to_send() + b"reply"
    for i in range(len(reply)):
        d.receive_data(reply[i : i + 1])
    assert d.done and d.unused == b"reply"


def test_lazy_dialer_data_byte_by_byte():
    d = MultistreamDialer(["/x"], lazy=True)
    wire = d.data_to_send() + b"payload"
    l = MultistreamListener(["/x"])
    for i in range(len(wire)):
        l.receive_data(wire[i : i + 1])
    assert l.done and l.unused == b"payload"


def test_lazy_dialer_refused_raises():
    d = MultistreamDialer(["/x"], lazy=True)
    d.data_to_send()
    with pytest.raises(MultistreamError, match="lazy"):
        d.receive_data(HEADER + NA)


def test_lazy_needs_one_protocol():
    with pytest.raises(MultistreamError):
        MultistreamDialer(["/a", "/b"], lazy=True)
    with pytest.raises(MultistreamError):
        MultistreamDialer([])
    with pytest.raises(MultistreamError):
        MultistreamDialer(["/a\n"])
    with pytest.raises(MultistreamError):
        MultistreamDialer(["na"])


def test_ls_with_collection():
    l = MultistreamListener(["/b", "/a"])
    l.data_to_send()
    l.receive_data(HEADER + encode_message("ls"))
    inner = encode_message("/a") + encode_message("/b") + b"\n"
    assert l.data_to_send() == bytes([len(inner)]) + inner
    assert not l.done
    l.receive_data(encode_message("/a"))
    assert l.done and l.selected == "/a"


def test_listener_accepts_a_single_name():
    l = MultistreamListener("/noise")
    l.receive_data(HEADER + NOISE)
    assert l.done and l.selected == "/noise"


def test_ls_with_predicate_answers_na():
    l = MultistreamListener(lambda p: True)
    l.data_to_send()
    l.receive_data(HEADER + encode_message("ls"))
    assert l.data_to_send() == NA
    assert not l.done


def test_too_many_proposals():
    l = MultistreamListener(set())
    l.receive_data(HEADER)
    for i in range(MAX_PROPOSALS):
        l.receive_data(encode_message(f"/p/{i}"))
    with pytest.raises(MultistreamError, match="proposals"):
        l.receive_data(encode_message("/one-more"))


# -- malformed input


@pytest.mark.parametrize(
    "wire",
    [
        encode_message("/multistream/2.0.0"),  # wrong header
        b"\x04abcd",  # no trailing newline
        b"\x00",  # empty message
        b"\x80\x00",  # non-minimal varint
        b"\xff\xff\x01",  # three-byte varint
        bytes([(1025 & 0x7F) | 0x80, 1025 >> 7]),  # oversized: refused before the body arrives
        b"\x04a\nb\n",  # inner newline
        b"\x03\xff\xfe\n",  # invalid UTF-8
    ],
)
@pytest.mark.parametrize("side", ["dialer", "listener"])
def test_malformed_raises(wire, side):
    obj = MultistreamDialer(["/a"]) if side == "dialer" else MultistreamListener(["/a"])
    with pytest.raises(MultistreamError) as e:
        obj.receive_data(wire)
    assert e.value.remote is True
    with pytest.raises(MultistreamError):  # stays failed
        obj.receive_data(HEADER)


def test_malformed_after_header():
    l = MultistreamListener(["/a"])
    l.receive_data(HEADER + b"\x02a")  # incomplete so far
    with pytest.raises(MultistreamError, match="newline"):
        l.receive_data(b"x")  # completes "ax" without a newline
    d = MultistreamDialer(["/a"])
    with pytest.raises(MultistreamError, match="unexpected"):
        d.receive_data(HEADER + encode_message("/b"))


def test_max_length_message_accepted():
    name = "/" + "x" * (MAX_MESSAGE_LEN - 2)
    l = MultistreamListener([name])
    d = MultistreamDialer([name])
    pump(d, l, chunk=7)
    assert l.selected == d.selected == name


def test_partial_input_waits():
    l = MultistreamListener(["/a"])
    l.receive_data(HEADER[:5])
    l.receive_data(HEADER[5:] + b"\x03/a")
    assert not l.done
    l.receive_data(b"\n")
    assert l.done


# -- fuzzing: only MultistreamError escapes


def _run_fuzz(obj, data, bytewise):
    try:
        if bytewise:
            for i in range(len(data)):
                obj.receive_data(data[i : i + 1])
        else:
            obj.receive_data(data)
    except MultistreamError:
        pass


@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_fuzz_random_bytes(data, bytewise, dialer):
    obj = MultistreamDialer(["/a", "/b"]) if dialer else MultistreamListener(["/a"])
    _run_fuzz(obj, data, bytewise)


def _mutate(rng, wire):
    wire = bytearray(wire)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(3)
        if op == 0 and wire:
            wire[rng.randrange(len(wire))] = rng.randrange(256)
        elif op == 1 and wire:
            del wire[rng.randrange(len(wire))]
        else:
            wire.insert(rng.randrange(len(wire) + 1), rng.randrange(256))
    return bytes(wire)


def test_fuzz_mutated_transcripts():
    rng = random.Random(1234)
    to_listener = HEADER + encode_message("/x") + encode_message("/a") + b"data"
    to_dialer = HEADER + NA + encode_message("/a") + b"data"
    for i in range(1500):
        bytewise = i % 3 == 0
        _run_fuzz(MultistreamListener(["/a"]), _mutate(rng, to_listener), bytewise)
        _run_fuzz(MultistreamDialer(["/x", "/a"]), _mutate(rng, to_dialer), bytewise)


def test_errors_are_protocol_errors():
    assert issubclass(MultistreamError, ProtocolError)
