"""libp2p Noise XX: a known-answer vector, handshakes between two cores piped
together, authentication failures, the framed transport, and fuzzing."""

import os
import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from kadfast import Ed25519KeyPair, noise
from kadfast._noise import NoiseTransport as CompiledTransport
from kadfast.errors import NoiseError, ProtocolError
from kadfast.noise import (
    _NONCE_LIMIT,
    MAX_FRAME_LEN,
    MAX_PLAINTEXT_LEN,
    STATIC_KEY_SIGNATURE_PREFIX,
    NoiseHandshake,
    NoisePeerIdMismatch,
    NoiseStaticKey,
    NoiseTransport,
    _hkdf2,
    _XXHandshakeState,
)
from kadfast.protobuf import field_bytes

ALICE = Ed25519KeyPair.from_seed(bytes(range(32)))
BOB = Ed25519KeyPair.from_seed(bytes(range(32, 64)))
MALLORY = Ed25519KeyPair.from_seed(bytes(range(64, 96)))


def feed(side, data, chunk=None):
    if chunk is None:
        side.receive_data(data)
    else:
        for i in range(0, len(data), chunk):
            side.receive_data(data[i : i + chunk])


def handshake(init_kp=ALICE, resp_kp=BOB, *, chunk=None, expected=None, **kw):
    init = NoiseHandshake(init_kp, initiator=True, expected_peer=expected, **kw)
    resp = NoiseHandshake(resp_kp, initiator=False)
    for _ in range(4):
        d = init.data_to_send()
        if d:
            feed(resp, d, chunk)
        r = resp.data_to_send()
        if r:
            feed(init, r, chunk)
        if not d and not r:
            break
    return init, resp


# -- the Noise crypto against a known-answer vector

# From the cacophony test vectors (haskell-cryptography/cacophony, as shipped
# in plizonczyk/noiseprotocol tests/vectors/cacophony.txt):
# Noise_XX_25519_ChaChaPoly_SHA256 with fixed keys, prologue "John Galt".
VECTOR = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
    "messages": [
        ("4c756477696720766f6e204d69736573",
         "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573"),
        ("4d757272617920526f746862617264",
         "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884381cbad1f276e038c48378ffce2b65285"
         "e08d6b68aaa3629a5a8639392490e5b9bd5269c2f1e4f488ed8831161f19b7815528f8982ffe09be9b5c412f8a0db50f"
         "8814c7194e83f23dbd8d162c9326ad"),
        ("462e20412e20486179656b",
         "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a80ae475b9df0f169ae80a89be0865b57f"
         "58c9fea0d4ec82a286427402f113e4b6ae769a1d95941d49b25030"),
        ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
        ("4a65616e2d426170746973746520536179", "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5"),
        ("457567656e2042f6686d20766f6e2042617765726b",
         "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f"),
    ],
}


def test_cacophony_vector():
    h = bytes.fromhex
    key = lambda name: X25519PrivateKey.from_private_bytes(h(VECTOR[name]))  # noqa: E731
    init = _XXHandshakeState(
        initiator=True, static=key("init_static"), prologue=h(VECTOR["prologue"]), ephemeral=key("init_ephemeral")
    )
    resp = _XXHandshakeState(
        initiator=False, static=key("resp_static"), prologue=h(VECTOR["prologue"]), ephemeral=key("resp_ephemeral")
    )
    msgs = VECTOR["messages"]
    for i, (payload, ciphertext) in enumerate(msgs[:3]):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        assert sender.write_message(h(payload)).hex() == ciphertext
        assert receiver.read_message(h(ciphertext)) == h(payload)
    assert init.finished and resp.finished
    assert init.handshake_hash.hex() == resp.handshake_hash.hex() == VECTOR["handshake_hash"]
    k1, k2 = init.split()
    assert resp.split() == (k1, k2)
    # transport messages keep alternating: responder, initiator, responder
    t_init, t_resp = NoiseTransport(k1, k2), NoiseTransport(k2, k1)
    for i, (payload, ciphertext) in enumerate(msgs[3:], start=3):
        sender, receiver = (t_init, t_resp) if i % 2 == 0 else (t_resp, t_init)
        framed = sender.encrypt(h(payload))
        assert framed[2:].hex() == ciphertext
        assert int.from_bytes(framed[:2], "big") == len(h(ciphertext))
        assert receiver.decrypt(framed) == h(payload)


def test_hkdf_matches_rfc5869():
    # noise.md's HKDF(ck, ikm, 2) is RFC 5869 extract-and-expand with salt=ck,
    # empty info, 64 bytes of output.
    for ck, ikm in [(os.urandom(32), os.urandom(32)), (os.urandom(32), b""), (b"\x00" * 32, b"x" * 100)]:
        expected = HKDF(algorithm=hashes.SHA256(), length=64, salt=ck, info=b"").derive(ikm)
        out1, out2 = _hkdf2(ck, ikm)
        assert out1 + out2 == expected


# -- handshakes between two cores


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_handshake_pair(chunk):
    init, resp = handshake(chunk=chunk, expected=BOB.peer_id)
    assert init.complete and resp.complete
    assert init.remote_peer_id == BOB.peer_id
    assert resp.remote_peer_id == ALICE.peer_id
    assert init.remote_public_key == BOB.public_key
    assert resp.remote_public_key == ALICE.public_key
    assert init.handshake_hash == resp.handshake_hash
    assert init.unused == resp.unused == b""
    ti, tr = init.transport(), resp.transport()
    assert ti is init.transport()  # one transport per handshake: nonces are never reused
    assert tr.decrypt(ti.encrypt(b"ping")) == b"ping"
    assert ti.decrypt(tr.encrypt(b"pong")) == b"pong"


def test_wire_message_sizes():
    init = NoiseHandshake(ALICE, initiator=True)
    msg1 = init.data_to_send()
    assert msg1 == b"\x00\x20" + msg1[2:] and len(msg1) == 34  # e, empty payload
    assert init.data_to_send() == b""
    resp = NoiseHandshake(BOB, initiator=False)
    assert resp.data_to_send() == b""
    resp.receive_data(msg1)
    msg2 = resp.data_to_send()
    payload_len = len(NoiseStaticKey(BOB).payload)
    assert len(msg2) == 2 + 32 + 48 + payload_len + 16
    init.receive_data(msg2)
    assert init.complete and not resp.complete
    msg3 = init.data_to_send()
    assert len(msg3) == 2 + 48 + payload_len + 16
    resp.receive_data(msg3)
    assert resp.complete


def test_static_key_reuse():
    sk = NoiseStaticKey.generate(ALICE)
    for _ in range(2):
        init, resp = handshake(static_key=sk)
        assert resp.remote_peer_id == ALICE.peer_id


def test_responder_may_expect_a_peer():
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False, expected_peer=MALLORY.peer_id)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    with pytest.raises(NoisePeerIdMismatch):
        resp.receive_data(init.data_to_send())


def test_wrong_expected_peer():
    init = NoiseHandshake(ALICE, initiator=True, expected_peer=MALLORY.peer_id)
    resp = NoiseHandshake(BOB, initiator=False)
    resp.receive_data(init.data_to_send())
    with pytest.raises(NoisePeerIdMismatch, match="peer id mismatch") as e:
        init.receive_data(resp.data_to_send())
    assert isinstance(e.value, NoiseError) and e.value.remote is True
    assert e.value.expected == MALLORY.peer_id and e.value.actual == BOB.peer_id
    assert init.remote_peer_id == BOB.peer_id and not init.complete


def test_failed_handshake_stays_failed():
    init = NoiseHandshake(ALICE, initiator=True, expected_peer=MALLORY.peer_id)
    resp = NoiseHandshake(BOB, initiator=False)
    resp.receive_data(init.data_to_send())
    with pytest.raises(NoiseError):
        init.receive_data(resp.data_to_send())
    assert not init.complete and init.data_to_send() == b""
    with pytest.raises(NoiseError):
        init.receive_data(b"")
    with pytest.raises(NoiseError) as e:
        init.transport()
    assert e.value.remote is False


def test_data_right_after_final_message_is_not_lost():
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    early = init.transport().encrypt(b"/multistream/1.0.0 etc") + init.transport().encrypt(b"x" * 70000)
    wire = init.data_to_send() + early
    resp.receive_data(wire[:-5])
    assert resp.complete and resp.unused == early[:-5]
    resp.receive_data(wire[-5:])  # after completion: appended
    assert resp.unused == early
    assert resp.transport().decrypt(resp.unused) == b"/multistream/1.0.0 etc" + b"x" * 70000


# -- authentication failures


def _responder_with_payload(payload, kp=BOB):
    sk = NoiseStaticKey(kp)
    sk.payload = payload
    return sk


def _run_with_bad_responder(static_key):
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False, static_key=static_key)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())


def _signed(kp, static_pub):
    return field_bytes(1, kp.public_key.encode()) + field_bytes(2, kp.sign(STATIC_KEY_SIGNATURE_PREFIX + static_pub))


def test_tampered_signature():
    sk = NoiseStaticKey(BOB)
    payload = bytearray(sk.payload)
    payload[-1] ^= 1
    sk.payload = bytes(payload)
    with pytest.raises(NoiseError, match="signature"):
        _run_with_bad_responder(sk)


def test_signature_over_another_static_key():
    sk = NoiseStaticKey(BOB)
    other = NoiseStaticKey(BOB)
    sk.payload = other.payload  # valid signature, but of a different X25519 key
    with pytest.raises(NoiseError, match="signature"):
        _run_with_bad_responder(sk)


def test_identity_key_swapped():
    sk = NoiseStaticKey(BOB)
    # Mallory's key with Bob's signature
    sig = _signed(BOB, sk.public_bytes)[len(field_bytes(1, BOB.public_key.encode())) :]
    sk.payload = field_bytes(1, MALLORY.public_key.encode()) + sig
    with pytest.raises(NoiseError, match="signature"):
        _run_with_bad_responder(sk)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x0a\x03abc",  # key only, and not a key
        b"\xff\xff",  # malformed protobuf
        field_bytes(1, BOB.public_key.encode()),  # no signature
        field_bytes(2, b"s" * 64),  # no key
        field_bytes(1, b"\x08\x01\x12\x03abc") + field_bytes(2, b"s" * 64),  # bad Ed25519 key
    ],
)
def test_bad_payloads(payload):
    with pytest.raises(NoiseError):
        _run_with_bad_responder(_responder_with_payload(payload))


def test_extensions_and_unknown_fields_are_ignored():
    sk = NoiseStaticKey(BOB)
    extensions = field_bytes(2, b"/yamux/1.0.0")
    sk.payload = sk.payload + field_bytes(4, extensions) + field_bytes(9, b"future")
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False, static_key=sk)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    assert init.complete and init.remote_peer_id == BOB.peer_id


@pytest.mark.parametrize("index", [2, 20, 40, 80, -1])
def test_tampered_handshake_ciphertext(index):
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False)
    resp.receive_data(init.data_to_send())
    msg2 = bytearray(resp.data_to_send())
    msg2[index] ^= 0x40
    with pytest.raises(NoiseError):
        init.receive_data(bytes(msg2))


def test_tampered_message3():
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    msg3 = bytearray(init.data_to_send())
    msg3[-3] ^= 1
    with pytest.raises(NoiseError):
        resp.receive_data(bytes(msg3))


@pytest.mark.parametrize("cut", [0, 31, 32 + 47, 32 + 48 + 15])
def test_truncated_message2(cut):
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False)
    resp.receive_data(init.data_to_send())
    body = resp.data_to_send()[2:][:cut]
    with pytest.raises(NoiseError):
        init.receive_data(len(body).to_bytes(2, "big") + body)


def test_truncated_message1():
    resp = NoiseHandshake(BOB, initiator=False)
    with pytest.raises(NoiseError):
        resp.receive_data(b"\x00\x1f" + b"e" * 31)


def test_low_order_ephemeral_key():
    resp = NoiseHandshake(BOB, initiator=False)
    with pytest.raises(NoiseError, match="X25519"):
        resp.receive_data(b"\x00\x20" + bytes(32))


def test_partial_frame_waits():
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False)
    msg1 = init.data_to_send()
    resp.receive_data(msg1[:1])
    resp.receive_data(msg1[1:20])
    assert resp.data_to_send() == b""
    resp.receive_data(msg1[20:])
    assert resp.data_to_send() != b""


# -- transport


@pytest.fixture(scope="module")
def keys():
    return os.urandom(32), os.urandom(32)


#: the plain-Python transport (the oracle) and the compiled one that
#: handshakes hand out; every transport test runs on both
IMPLS = [pytest.param(NoiseTransport, id="python"), pytest.param(CompiledTransport, id="compiled")]


def pair(keys, cls):
    k1, k2 = keys
    return cls(k1, k2), cls(k2, k1)


@pytest.mark.parametrize("cls", IMPLS)
@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=20),
)
def test_transport_random_splits(cls, keys, messages, cuts):
    a, b = pair(keys, cls)
    wire = b"".join(a.encrypt(m) for m in messages)
    got = []
    pos = 0
    i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got.append(b.decrypt(wire[pos : pos + step]))
        pos += step
        i += 1
    assert b"".join(got) == b"".join(messages)
    assert b.decrypt(b"") == b""


@pytest.mark.parametrize("cls", IMPLS)
def test_transport_large_message_spans_frames(cls, keys):
    a, b = pair(keys, cls)
    data = os.urandom(3 * MAX_PLAINTEXT_LEN + 1234)
    wire = a.encrypt(data)
    # four frames, each at most 65535 bytes
    pos, sizes = 0, []
    while pos < len(wire):
        n = int.from_bytes(wire[pos : pos + 2], "big")
        assert n <= MAX_FRAME_LEN
        sizes.append(n)
        pos += 2 + n
    assert sizes == [MAX_FRAME_LEN] * 3 + [1234 + 16]
    assert b.decrypt(wire) == data
    # in random-sized pieces too
    a2, b2 = pair(keys, cls)
    wire = a2.encrypt(memoryview(data))
    rng = random.Random(5)
    out, pos = [], 0
    while pos < len(wire):
        step = rng.randint(1, 40000)
        out.append(b2.decrypt(wire[pos : pos + step]))
        pos += step
    assert b"".join(out) == data


@pytest.mark.parametrize("cls", IMPLS)
def test_transport_empty_and_exact_frame(cls, keys):
    a, b = pair(keys, cls)
    assert a.encrypt(b"") == b""
    exact = b"z" * MAX_PLAINTEXT_LEN
    wire = a.encrypt(exact)
    assert len(wire) == 2 + MAX_FRAME_LEN
    assert b.decrypt(wire) == exact


@pytest.mark.parametrize("cls", IMPLS)
def test_transport_tampered_frame(cls, keys):
    a, b = pair(keys, cls)
    wire = bytearray(a.encrypt(b"hello world"))
    wire[5] ^= 1
    with pytest.raises(NoiseError, match="authenticate"):
        b.decrypt(bytes(wire))
    with pytest.raises(NoiseError):  # stays failed
        b.decrypt(b"")


@pytest.mark.parametrize("cls", IMPLS)
def test_transport_replayed_or_reordered_frame(cls, keys):
    a, b = pair(keys, cls)
    f1, f2 = a.encrypt(b"one"), a.encrypt(b"two")
    with pytest.raises(NoiseError):
        b.decrypt(f2 + f1)
    a, b = pair(keys, cls)
    f1 = a.encrypt(b"one")
    assert b.decrypt(f1) == b"one"
    with pytest.raises(NoiseError):
        b.decrypt(f1)


@pytest.mark.parametrize("cls", IMPLS)
def test_transport_frame_shorter_than_tag(cls, keys):
    _, b = pair(keys, cls)
    with pytest.raises(NoiseError, match="tag"):
        b.decrypt(b"\x00\x05abcde")
    _, b = pair(keys, cls)
    with pytest.raises(NoiseError):
        b.decrypt(b"\x00\x00")


@pytest.mark.parametrize("cls", IMPLS)
def test_transport_good_frames_before_a_bad_one_still_fail_the_call(cls, keys):
    a, b = pair(keys, cls)
    wire = a.encrypt(b"good") + b"\x00\x20" + b"\x00" * 32
    with pytest.raises(NoiseError):
        b.decrypt(wire)


@pytest.mark.parametrize("cls", IMPLS)
def test_transport_nonce_exhaustion(cls, keys):
    a, b = pair(keys, cls)
    a._send_n = _NONCE_LIMIT
    with pytest.raises(NoiseError, match="nonce") as e:
        a.encrypt(b"x")
    assert e.value.remote is False
    b._recv_n = _NONCE_LIMIT
    with pytest.raises(NoiseError, match="nonce"):
        b.decrypt(b"\x00\x11" + b"\x00" * 17)


@pytest.mark.parametrize("cls", IMPLS)
def test_partial_buffer_bounded(cls, keys):
    a, b = pair(keys, cls)
    wire = a.encrypt(b"q" * MAX_PLAINTEXT_LEN)
    for i in range(0, len(wire) - 1, 1000):
        assert b.decrypt(wire[i : min(i + 1000, len(wire) - 1)]) == b""
        assert len(b._buf) <= 2 + MAX_FRAME_LEN
    assert b.decrypt(wire[-1:]) == b"q" * MAX_PLAINTEXT_LEN
    assert len(b._buf) == 0


# -- fuzzing: only NoiseError escapes


def _feed_fuzz(obj, data, bytewise):
    try:
        if bytewise:
            for i in range(len(data)):
                obj.receive_data(data[i : i + 1])
        else:
            obj.receive_data(data)
    except NoiseError:
        pass


@given(st.binary(max_size=400), st.booleans(), st.booleans())
def test_fuzz_handshake_random_bytes(data, bytewise, initiator):
    obj = NoiseHandshake(ALICE, initiator=initiator)
    _feed_fuzz(obj, data, bytewise)


def _decrypt_outcome(b, data, bytewise):
    out = []
    try:
        if bytewise:
            for i in range(len(data)):
                out.append(b.decrypt(data[i : i + 1]))
        else:
            out.append(b.decrypt(data))
    except NoiseError as exc:
        return "error", str(exc), exc.remote, b._recv_n, b"".join(out)
    return "ok", b"".join(out), bytes(b._buf)


@given(st.binary(max_size=400), st.booleans())
def test_fuzz_transport_random_bytes(keys, data, bytewise):
    """Random bytes: the same outcome, error and state from both transports."""
    (_, py), (_, c) = pair(keys, NoiseTransport), pair(keys, CompiledTransport)
    assert _decrypt_outcome(py, data, bytewise) == _decrypt_outcome(c, data, bytewise)


def _mutate(rng, wire):
    wire = bytearray(wire)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        if op == 0 and wire:
            wire[rng.randrange(len(wire))] ^= 1 << rng.randrange(8)
        elif op == 1 and wire:
            del wire[rng.randrange(len(wire))]
        elif op == 2:
            wire.insert(rng.randrange(len(wire) + 1), rng.randrange(256))
        else:
            cut = rng.randrange(len(wire) + 1)
            wire = wire[:cut]
    return bytes(wire)


def test_fuzz_mutated_handshake_messages():
    rng = random.Random(99)
    sk_a, sk_b = NoiseStaticKey(ALICE), NoiseStaticKey(BOB)
    for i in range(150):
        bytewise = i % 5 == 0
        init = NoiseHandshake(ALICE, initiator=True, static_key=sk_a)
        resp = NoiseHandshake(BOB, initiator=False, static_key=sk_b)
        msg1 = init.data_to_send()
        resp.receive_data(msg1)
        msg2 = resp.data_to_send()
        # a mutated message 2 to the initiator
        _feed_fuzz(init, _mutate(rng, msg2), bytewise)
        # a mutated message 1 to a fresh responder
        _feed_fuzz(NoiseHandshake(BOB, initiator=False, static_key=sk_b), _mutate(rng, msg1), bytewise)
        # a mutated message 3 to the responder
        init2 = NoiseHandshake(ALICE, initiator=True, static_key=sk_a)
        resp2 = NoiseHandshake(BOB, initiator=False, static_key=sk_b)
        resp2.receive_data(init2.data_to_send())
        init2.receive_data(resp2.data_to_send())
        _feed_fuzz(resp2, _mutate(rng, init2.data_to_send() + init2.transport().encrypt(b"after")), bytewise)


def test_errors_are_protocol_errors():
    assert issubclass(NoiseError, ProtocolError)


# -- the compiled transport against its twin


def test_handshakes_hand_out_the_compiled_transport():
    assert noise.TRANSPORT_IMPL == "compiled"
    init = NoiseHandshake(ALICE, initiator=True)
    resp = NoiseHandshake(BOB, initiator=False)
    for _ in range(3):
        resp.receive_data(init.data_to_send())
        init.receive_data(resp.data_to_send())
    assert init.complete and resp.complete
    assert type(init.transport()) is CompiledTransport
    assert resp.transport().decrypt(init.transport().encrypt(b"hi")) == b"hi"


@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20),
)
def test_compiled_transport_writes_and_reads_the_twins_bytes(keys, messages, cuts):
    (pa, pb), (ca, cb) = pair(keys, NoiseTransport), pair(keys, CompiledTransport)
    wire = b""
    for m in messages:
        framed = ca.encrypt(m)
        assert framed == pa.encrypt(m)
        assert pb.decrypt(framed) == m  # the twin reads the compiled one's frames
        wire += framed
    got, pos, i = [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        piece = wire[pos : pos + step]
        got.append(cb.decrypt(bytearray(piece) if i % 3 == 1 else memoryview(piece) if i % 3 == 2 else piece))
        pos += step
        i += 1
    assert b"".join(got) == b"".join(messages)
    assert cb._recv_n == sum(1 for m in messages if m)


@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=6), st.data())
def test_compiled_transport_fails_like_the_twin(keys, messages, data):
    """One flipped bit, a short frame or a cut anywhere: the same result,
    error message and state from both."""
    (pa, _), (_ca, _) = pair(keys, NoiseTransport), pair(keys, CompiledTransport)
    wire = bytearray(b"".join(pa.encrypt(m) for m in messages))
    i = data.draw(st.integers(0, len(wire) - 1))
    kind = data.draw(st.sampled_from(["flip", "short", "cut"]))
    if kind == "flip":
        wire[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "short":
        wire[i:i] = b"\x00" + bytes([data.draw(st.integers(0, 15))]) + b"\x00" * 15
    else:
        del wire[i:]
    (_, pb), (_, cb) = pair(keys, NoiseTransport), pair(keys, CompiledTransport)
    bytewise = data.draw(st.booleans())
    assert _decrypt_outcome(pb, bytes(wire), bytewise) == _decrypt_outcome(cb, bytes(wire), bytewise)


@pytest.mark.parametrize("cls", IMPLS)
def test_transport_nonce_limit_over_several_frames(cls, keys):
    a, b = pair(keys, cls)
    big = b"x" * (2 * MAX_PLAINTEXT_LEN + 1)  # three frames
    a._send_n = _NONCE_LIMIT - 2
    with pytest.raises(NoiseError, match="nonce") as e:
        a.encrypt(big)
    assert e.value.remote is False and a._send_n == _NONCE_LIMIT - 2  # nothing used up
    a._send_n = _NONCE_LIMIT - 3
    assert len(a.encrypt(big)) == len(big) + 3 * 18
    assert a._send_n == _NONCE_LIMIT


def test_compiled_transport_refuses_bad_keys():
    for k in (b"\x00" * 31, b"\x00" * 33, bytearray(32), "k" * 32):
        with pytest.raises(ValueError):
            CompiledTransport(k, b"\x00" * 32)
        with pytest.raises(ValueError):
            CompiledTransport(b"\x00" * 32, k)
