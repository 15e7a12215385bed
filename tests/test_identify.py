"""Identify: encoding and decoding against Google's protobuf as the oracle,
lenient decoding (unknown fields, one bad address), limits, the incremental
reader (whole, byte by byte, go's split messages), push merging, fuzzing."""

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given
from hypothesis import strategies as st

from kadfast import Ed25519KeyPair, Multiaddr
from kadfast.errors import IdentifyError, ProtocolError
from kadfast.identify import (
    MAX_ADDRS,
    MAX_IDENTIFY_BYTES,
    MAX_IDENTIFY_PARTS,
    MAX_PROTOCOLS,
    MAX_SEND_IDENTIFY_BYTES,
    PROTOCOL_ID,
    PUSH_PROTOCOL_ID,
    IdentifyInfo,
    IdentifyReader,
    decode_identify,
    encode_identify,
    merge_push,
)
from kadfast.keys import KeyType, PublicKey
from kadfast.protobuf import field_bytes, field_varint
from kadfast.varint import decode_uvarint, encode_uvarint


def _identify_class():
    """The spec's Identify message, built at run time (no generated code)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="kadfast_test_identify.proto", package="kadfast_test", syntax="proto2"
    )
    msg = fdp.message_type.add(name="Identify")
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, ftype, label in [
        ("publicKey", 1, F.TYPE_BYTES, F.LABEL_OPTIONAL),
        ("listenAddrs", 2, F.TYPE_BYTES, F.LABEL_REPEATED),
        ("protocols", 3, F.TYPE_STRING, F.LABEL_REPEATED),
        ("observedAddr", 4, F.TYPE_BYTES, F.LABEL_OPTIONAL),
        ("protocolVersion", 5, F.TYPE_STRING, F.LABEL_OPTIONAL),
        ("agentVersion", 6, F.TYPE_STRING, F.LABEL_OPTIONAL),
        ("signedPeerRecord", 8, F.TYPE_BYTES, F.LABEL_OPTIONAL),
    ]:
        msg.field.add(name=name, number=number, type=ftype, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kadfast_test.Identify"))


Identify = _identify_class()
KEYS = [Ed25519KeyPair.from_seed(bytes([i]) * 32) for i in range(3)]
ADDRS = [
    Multiaddr(t)
    for t in [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip6/::1/tcp/4001",
        "/ip4/1.2.3.4/udp/4001/quic-v1",
        "/dns4/example.com/tcp/443/wss",
        "/ip4/1.2.3.4/udp/4001/quic-v1/webtransport/certhash/uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_1aluKR_tpevQ",
        "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWGFc89crWEs66KcMHUcKcqnzkbxzHdB7QtYTE7qEuNgDH/p2p-circuit",
        "/ip4/8.8.8.8/udp/443/webrtc-direct/certhash/uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_1aluKR_tpevQ",
    ]
]
BAD_ADDR = bytes([0xFF] * 8)  # unknown protocol code
PROTOS = ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/ipfs/kad/1.0.0", "/ipfs/id/push/1.0.0", "/meshsub/1.1.0"]

addrs_st = st.lists(st.sampled_from(ADDRS), unique=True, max_size=len(ADDRS))
protos_st = st.lists(
    st.sampled_from(PROTOS) | st.text(min_size=1, max_size=20).map(lambda s: "/" + s), unique=True, max_size=8
)
text_st = st.text(max_size=30)
key_st = st.none() | st.sampled_from(KEYS).map(lambda k: k.public_key)
spr_st = st.none() | st.binary(min_size=1, max_size=50)


def unprefix(frame: bytes) -> bytes:
    length, pos = decode_uvarint(frame)
    assert len(frame) - pos == length
    return frame[pos:]


def test_constants():
    assert PROTOCOL_ID == "/ipfs/id/1.0.0"
    assert PUSH_PROTOCOL_ID == "/ipfs/id/push/1.0.0"
    assert MAX_SEND_IDENTIFY_BYTES == 4096 <= 8192 <= MAX_IDENTIFY_BYTES


@given(key_st, addrs_st, protos_st, st.none() | st.sampled_from(ADDRS), text_st, text_st, spr_st)
def test_roundtrip_and_oracle(key, addrs, protos, observed, pv, av, spr):
    frame = encode_identify(
        public_key=key, listen_addrs=addrs, protocols=protos, observed_addr=observed,
        protocol_version=pv, agent_version=av, signed_peer_record=spr,
    )
    payload = unprefix(frame)
    info = decode_identify(payload)
    assert info.public_key == key
    assert info.peer_id == (None if key is None else KEYS[[k.public_key for k in KEYS].index(key)].peer_id)
    assert list(info.listen_addrs) == addrs
    assert list(info.protocols) == protos
    assert info.observed_addr == observed
    assert (info.protocol_version, info.agent_version) == (pv, av)
    assert info.signed_peer_record == spr
    assert info.bad_addrs == 0
    # Google's parser reads what we wrote.
    m = Identify.FromString(payload)
    assert (m.publicKey if m.HasField("publicKey") else None) == (None if key is None else key.encode())
    assert [Multiaddr.from_bytes(b) for b in m.listenAddrs] == addrs
    assert list(m.protocols) == protos
    assert (m.protocolVersion, m.agentVersion) == (pv, av)
    # and the frame is the same when re-encoded from the decoded info
    assert info.encode() == frame


@given(key_st, addrs_st, protos_st, st.none() | st.sampled_from(ADDRS), text_st, text_st, spr_st)
def test_decode_what_google_encodes(key, addrs, protos, observed, pv, av, spr):
    m = Identify(listenAddrs=[a.to_bytes() for a in addrs], protocols=protos, protocolVersion=pv, agentVersion=av)
    if key is not None:
        m.publicKey = key.encode()
    if observed is not None:
        m.observedAddr = observed.to_bytes()
    if spr is not None:
        m.signedPeerRecord = spr
    info = decode_identify(m.SerializeToString())
    assert info.public_key == key
    assert list(info.listen_addrs) == addrs
    assert list(info.protocols) == protos
    assert info.observed_addr == observed
    assert (info.protocol_version, info.agent_version, info.signed_peer_record) == (pv, av, spr)


def test_unknown_fields_are_skipped():
    key = KEYS[0].public_key
    payload = (
        field_varint(7, 12345)
        + field_bytes(1, key.encode())
        + field_bytes(11, b"py-libp2p senderRecord")
        + bytes([0x9D, 0x01]) + b"\x00\x01\x02\x03"  # field 19, fixed32
        + bytes([0xA1, 0x01]) + b"\x00" * 8  # field 20, fixed64
        + field_bytes(2, ADDRS[0].to_bytes())
        + field_varint(666, 1)
    )
    info = decode_identify(payload)
    assert info.public_key == key and info.listen_addrs == (ADDRS[0],)


def test_one_bad_address_is_dropped_alone():
    m = Identify(listenAddrs=[ADDRS[0].to_bytes(), BAD_ADDR, b"", ADDRS[2].to_bytes()], observedAddr=BAD_ADDR)
    m.publicKey = KEYS[0].public_key.encode()
    info = decode_identify(m.SerializeToString())
    assert info.listen_addrs == (ADDRS[0], ADDRS[2])
    assert info.observed_addr is None
    assert info.bad_addrs == 3


def test_empty_observed_addr_is_absent_not_bad():
    # rust sends observedAddr = empty bytes when it has none
    info = decode_identify(field_bytes(4, b""))
    assert info.observed_addr is None and info.bad_addrs == 0


def test_duplicates_and_bad_protocols_are_dropped():
    payload = b"".join(
        field_bytes(3, p) for p in [b"/a", b"/a", b"no-slash", b"\xff\xfe", b"", b"/" + b"x" * 2000, b"/b"]
    ) + field_bytes(2, ADDRS[1].to_bytes()) * 2
    info = decode_identify(payload)
    assert info.protocols == ("/a", "/b")
    assert info.listen_addrs == (ADDRS[1],)


def test_version_strings_tolerate_bad_utf8():
    info = decode_identify(field_bytes(6, b"agent\xff") + field_bytes(5, b"/ipfs/0.1.0"))
    assert info.agent_version == "agent\ufffd" and info.protocol_version == "/ipfs/0.1.0"


def test_limits_on_counts_keep_the_first():
    many = [Multiaddr(f"/ip4/10.0.{i // 256}.{i % 256}/tcp/1") for i in range(MAX_ADDRS + 5)]
    payload = b"".join(field_bytes(2, a.to_bytes()) for a in many)
    payload += b"".join(field_bytes(3, f"/p/{i}".encode()) for i in range(MAX_PROTOCOLS + 5))
    info = decode_identify(payload)
    assert list(info.listen_addrs) == many[:MAX_ADDRS]
    assert len(info.protocols) == MAX_PROTOCOLS and info.protocols[0] == "/p/0"


def test_last_scalar_wins_repeated_fields_append():
    a = encode_identify(agent_version="a", listen_addrs=[ADDRS[0]], protocols=["/x"])
    b = encode_identify(agent_version="b", listen_addrs=[ADDRS[1]], protocols=["/y"])
    info = decode_identify(unprefix(a) + unprefix(b))
    assert info.agent_version == "b"
    assert info.listen_addrs == (ADDRS[0], ADDRS[1]) and info.protocols == ("/x", "/y")


@pytest.mark.parametrize(
    "payload",
    [
        field_bytes(1, b"\x08\x01\x12\x03abc"),  # Ed25519 key of 3 bytes
        field_bytes(1, b"garbage"),
        field_bytes(1, b"\x08\x09\x12\x20" + bytes(32)),  # unknown key type
        field_varint(2, 5),  # known field, wrong wire type
        field_varint(5, 5),
        b"\x12\x10abc",  # runs past the end
        b"\x12",  # truncated length
        b"\x03",  # group wire type
        b"\x00\x00",  # field number 0
        b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # varint too long
    ],
)
def test_malformed_raises_identify_error(payload):
    with pytest.raises(IdentifyError) as info:
        decode_identify(payload)
    assert info.value.remote


def test_rsa_and_other_keys_give_peer_ids():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    der = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = PublicKey(KeyType.RSA, der)
    info = decode_identify(unprefix(encode_identify(public_key=key, max_bytes=MAX_IDENTIFY_BYTES)))
    assert info.public_key == key and info.peer_id.to_base58().startswith("Qm")


def test_oversize_decode_raises():
    payload = field_bytes(6, b"x" * MAX_IDENTIFY_BYTES)
    with pytest.raises(IdentifyError):
        decode_identify(payload)
    with pytest.raises(IdentifyError):
        IdentifyReader().feed(encode_uvarint(MAX_IDENTIFY_BYTES + 1))


def test_encode_fits_what_rust_accepts():
    addrs = [Multiaddr(f"/ip4/1.2.{i // 256}.{i % 256}/tcp/4001") for i in range(600)]
    frame = encode_identify(
        public_key=KEYS[0].public_key, listen_addrs=addrs, protocols=PROTOS,
        agent_version="kadfast/0.1.0", signed_peer_record=b"r" * 3000,
    )
    payload = unprefix(frame)
    assert len(payload) <= MAX_SEND_IDENTIFY_BYTES
    info = decode_identify(payload)
    assert info.signed_peer_record is None  # shed first
    n = len(info.listen_addrs)
    assert 0 < n < 600 and list(info.listen_addrs) == addrs[:n]  # trailing ones shed
    # one more address would not have fitted
    bigger = encode_identify(public_key=KEYS[0].public_key, listen_addrs=addrs[: n + 1], protocols=PROTOS,
                             agent_version="kadfast/0.1.0", max_bytes=10**6)
    assert len(unprefix(bigger)) > MAX_SEND_IDENTIFY_BYTES
    # a small record is kept
    small = decode_identify(unprefix(encode_identify(listen_addrs=addrs[:3], signed_peer_record=b"r" * 100)))
    assert small.signed_peer_record == b"r" * 100 and len(small.listen_addrs) == 3
    with pytest.raises(IdentifyError) as err:
        encode_identify(protocols=["/" + "p" * 100] * 60)
    assert not err.value.remote


def test_merge_push_replaces_present_fields_only():
    old = IdentifyInfo(
        public_key=KEYS[0].public_key, listen_addrs=[ADDRS[0]], protocols=["/a"],
        observed_addr=ADDRS[1], protocol_version="/ipfs/0.1.0", agent_version="old", bad_addrs=2,
    )
    push = decode_identify(unprefix(encode_identify(listen_addrs=[ADDRS[2], ADDRS[3]], agent_version="new")))
    merged = merge_push(old, push)
    assert merged.listen_addrs == (ADDRS[2], ADDRS[3])
    assert merged.agent_version == "new"
    assert merged.protocols == ("/a",) and merged.protocol_version == "/ipfs/0.1.0"
    assert merged.public_key == old.public_key and merged.peer_id == KEYS[0].peer_id
    assert merged.observed_addr == ADDRS[1] and merged.bad_addrs == 0
    assert merge_push(old, IdentifyInfo()) == IdentifyInfo(**{**_fields(old), "bad_addrs": 0})
    again = merge_push(merged, IdentifyInfo(protocols=["/b"], observed_addr=ADDRS[4]))
    assert again.protocols == ("/b",) and again.observed_addr == ADDRS[4] and again.listen_addrs == merged.listen_addrs


def _fields(info):
    return {
        k: getattr(info, k)
        for k in ("public_key", "listen_addrs", "protocols", "observed_addr", "protocol_version",
                  "agent_version", "signed_peer_record", "bad_addrs")
    }


def test_info_normalizes_lists_and_derives_peer_id():
    info = IdentifyInfo(public_key=KEYS[1].public_key, listen_addrs=[ADDRS[0]], protocols=["/a"])
    assert info.listen_addrs == (ADDRS[0],) and info.protocols == ("/a",)
    assert info.peer_id == KEYS[1].peer_id
    assert IdentifyInfo().peer_id is None
    hash(info)


# -- the incremental reader -----------------------------------------------

FULL = encode_identify(
    public_key=KEYS[2].public_key, listen_addrs=ADDRS, protocols=PROTOS, observed_addr=ADDRS[0],
    protocol_version="ipfs/0.1.0", agent_version="go-libp2p/0.36",
)


def test_reader_whole_and_byte_by_byte():
    r = IdentifyReader()
    info = r.feed(FULL)
    assert info is not None and info.peer_id == KEYS[2].peer_id and r.parts == 1
    assert r.eof() == info
    r = IdentifyReader()
    results = [r.feed(FULL[i:i + 1]) for i in range(len(FULL))]
    assert all(x is None for x in results[:-1]) and results[-1] == info
    assert r.eof() == info


def test_reader_merges_go_split_message():
    first = encode_identify(public_key=KEYS[2].public_key, listen_addrs=ADDRS[:2], agent_version="go")
    second = encode_identify(signed_peer_record=b"envelope")
    r = IdentifyReader()
    got = r.feed(first + second[:3])
    assert got.signed_peer_record is None and got.listen_addrs == tuple(ADDRS[:2])
    assert r.feed(second[3:]).signed_peer_record == b"envelope"
    final = r.eof()
    assert final.signed_peer_record == b"envelope" and final.agent_version == "go" and r.parts == 2


def test_reader_empty_part_and_limits():
    r = IdentifyReader()
    assert r.feed(b"\x00") == IdentifyInfo()
    r = IdentifyReader()
    with pytest.raises(IdentifyError):
        r.feed(b"\x00" * (MAX_IDENTIFY_PARTS + 1))
    with pytest.raises(IdentifyError) as err:
        r.feed(b"")  # closed after an error
    assert not err.value.remote
    # the size limit covers all parts together
    r = IdentifyReader(max_bytes=100)
    part = field_bytes(6, b"x" * 58)
    assert len(part) == 60
    assert r.feed(encode_uvarint(60) + part).agent_version == "x" * 58
    with pytest.raises(IdentifyError):
        r.feed(encode_uvarint(41))


def test_reader_eof_errors():
    for data in [b"", FULL[:1], FULL[:-1], b"\x80"]:
        r = IdentifyReader()
        r.feed(data)
        with pytest.raises(IdentifyError):
            r.eof()
    r = IdentifyReader()
    r.feed(FULL)
    r.eof()
    with pytest.raises(IdentifyError):
        r.feed(b"x")
    with pytest.raises(IdentifyError):
        r.eof()


def test_reader_bad_prefix():
    with pytest.raises(IdentifyError):
        IdentifyReader().feed(b"\x80\x00")  # non-minimal varint
    with pytest.raises(IdentifyError):
        IdentifyReader().feed(b"\xff" * 10)


# -- fuzzing: only IdentifyError may escape -------------------------------


def _run(data: bytes, chunk: int) -> None:
    try:
        decode_identify(data)
    except IdentifyError:
        pass
    r = IdentifyReader()
    try:
        for i in range(0, len(data), chunk):
            r.feed(data[i:i + chunk])
        r.eof()
    except IdentifyError:
        pass


@given(st.binary(max_size=300), st.integers(1, 7))
def test_fuzz_random_bytes(data, chunk):
    _run(data, chunk)


@given(st.lists(st.tuples(st.integers(0, len(FULL) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(1, 64), st.integers(0, len(FULL)))
def test_fuzz_mutated_messages(edits, chunk, cut):
    data = bytearray(FULL)
    for pos, byte in edits:
        data[pos] = byte
    _run(bytes(data[:cut] if cut else data), chunk)
    _run(bytes(data[1:]), chunk)  # the payload without its prefix, shifted by one


@given(st.lists(st.tuples(st.integers(1, 12), st.sampled_from([0, 1, 2, 5]), st.binary(max_size=40)), max_size=8))
def test_fuzz_structured_fields(fields):
    # well-formed protobuf with arbitrary contents in the identify field numbers
    out = b""
    for number, wt, value in fields:
        if wt == 0:
            out += field_varint(number, int.from_bytes(value[:8] or b"\x00", "big") >> 1)
        elif wt == 2:
            out += field_bytes(number, value)
        elif wt == 1:
            out += encode_uvarint(number << 3 | 1) + value[:8].ljust(8, b"\x00")
        else:
            out += encode_uvarint(number << 3 | 5) + value[:4].ljust(4, b"\x00")
    _run(encode_uvarint(len(out)) + out, 5)
    try:
        info = decode_identify(out)
    except IdentifyError:
        return
    assert isinstance(info, IdentifyInfo)


def test_identify_error_is_a_protocol_error():
    assert issubclass(IdentifyError, ProtocolError)


@given(st.integers(0, 5), st.binary(max_size=100))
def test_fuzz_public_keys(key_type, data):
    payload = field_bytes(1, field_varint(1, key_type) + field_bytes(2, data))
    try:
        info = decode_identify(payload)
    except IdentifyError:
        return
    assert info.peer_id is not None


def test_outcome_does_not_depend_on_how_bytes_are_split():
    # found by fuzzing: parts that are only valid once joined must be refused
    # whether they arrive in one read or several
    from kadfast.identify import IdentifyReader
    data = bytes.fromhex("032a0212000178021200")
    outcomes = []
    for split in range(len(data) + 1):
        r = IdentifyReader()
        try:
            r.feed(data[:split])
            r.feed(data[split:])
            r.eof()
            outcomes.append("ok")
        except IdentifyError:
            outcomes.append("err")
    assert set(outcomes) == {"err"}


# -- the cached encoder a host uses for every accepted connection -------------
def test_identify_encoder_matches_encode_identify_byte_for_byte():
    from kadfast.identify import IdentifyEncoder, encode_identify
    from kadfast.keys import Ed25519KeyPair
    from kadfast.multiaddr import Multiaddr

    pk = Ed25519KeyPair.generate().public_key
    enc = IdentifyEncoder(pk, "ipfs/0.1.0", "kadfast/test", cache_size=2)
    addrs = [Multiaddr("/ip4/10.0.0.1/tcp/4001"), Multiaddr("/ip6/::1/tcp/4001")]
    protos = ["/ipfs/id/1.0.0", "/ipfs/kad/1.0.0"]
    for listen in (addrs, addrs[:1], []):
        for observed in (None, Multiaddr("/ip4/127.0.0.1/tcp/5555"), Multiaddr("/ip6/::1/tcp/1")):
            for _ in range(2):  # a miss, then a hit
                assert enc.encode(listen, protos, observed) == encode_identify(
                    public_key=pk, listen_addrs=listen, protocols=protos, observed_addr=observed,
                    protocol_version="ipfs/0.1.0", agent_version="kadfast/test")
    assert enc.cached <= 2
    # over the size limit it trims as encode_identify does (addresses from the end)
    many = [Multiaddr(f"/ip4/10.0.{i // 250}.{i % 250 + 1}/tcp/4001") for i in range(600)]
    small = IdentifyEncoder(pk, "", "", max_bytes=2048)
    got = small.encode(many, protos, None)
    assert got == encode_identify(public_key=pk, listen_addrs=many, protocols=protos, max_bytes=2048)
    assert len(got) <= 2048 + 3


def test_reader_decodes_a_single_part_once():
    from kadfast.identify import IdentifyReader, encode_identify
    from kadfast.keys import Ed25519KeyPair

    msg = encode_identify(public_key=Ed25519KeyPair.generate().public_key, protocols=["/a"], agent_version="x")
    r = IdentifyReader()
    first = r.feed(msg)
    assert first is not None and first.agent_version == "x"
    assert r.eof() is first  # the same decoded message, not decoded again
