"""Kad message codec: against Google's protobuf as the oracle (both ways,
byte for byte), lenient decoding (unknown fields, bad peers and addresses,
/p2p suffixes), strict protobuf errors, the reply fast path, framing fed
whole and byte by byte, and fuzzing (only KadCodecError escapes)."""

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given
from hypothesis import strategies as st

from kadfast import Ed25519KeyPair, Multiaddr
from kadfast.errors import KadfastError, ProtocolError
from kadfast.kad import pb
from kadfast.kad.pb import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_ID,
    ConnectionType,
    KadCodecError,
    KadMessage,
    KadPeer,
    KadRecord,
    MessageReader,
    MessageType,
    decode_message,
    encode_find_node_reply,
    encode_message,
    encode_peer,
    frame,
)
from kadfast.peerid import PeerId
from kadfast.protobuf import field_bytes, field_varint
from kadfast.varint import encode_uvarint

# ------------------------------------------------------------------ oracle


def _oracle(extras: bool):
    """dht.proto (rust-libp2p's, with publisher/ttl) built at run time; with
    ``extras`` also py-libp2p's additions (senderRecord 11, Peer.signedRecord
    4, Record.author 3 / signature 4), which our decoder must skip."""
    F = descriptor_pb2.FieldDescriptorProto
    name = "extras" if extras else "plain"
    fdp = descriptor_pb2.FileDescriptorProto(name=f"kadfast_test_dht_{name}.proto", package=f"t{name}", syntax="proto3")

    def add(msg, fname, number, ftype, label=F.LABEL_OPTIONAL, type_name=None):
        f = msg.field.add(name=fname, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name

    rec = fdp.message_type.add(name="Record")
    add(rec, "key", 1, F.TYPE_BYTES)
    add(rec, "value", 2, F.TYPE_BYTES)
    add(rec, "timeReceived", 5, F.TYPE_STRING)
    add(rec, "publisher", 666, F.TYPE_BYTES)
    add(rec, "ttl", 777, F.TYPE_UINT32)
    msg = fdp.message_type.add(name="Message")
    mt = msg.enum_type.add(name="MessageType")
    for i, n in enumerate(["PUT_VALUE", "GET_VALUE", "ADD_PROVIDER", "GET_PROVIDERS", "FIND_NODE", "PING"]):
        mt.value.add(name=n, number=i)
    ct = msg.enum_type.add(name="ConnectionType")
    for i, n in enumerate(["NOT_CONNECTED", "CONNECTED", "CAN_CONNECT", "CANNOT_CONNECT"]):
        ct.value.add(name=n, number=i)
    peer = msg.nested_type.add(name="Peer")
    add(peer, "id", 1, F.TYPE_BYTES)
    add(peer, "addrs", 2, F.TYPE_BYTES, F.LABEL_REPEATED)
    add(peer, "connection", 3, F.TYPE_ENUM, type_name=f".t{name}.Message.ConnectionType")
    add(msg, "type", 1, F.TYPE_ENUM, type_name=f".t{name}.Message.MessageType")
    add(msg, "clusterLevelRaw", 10, F.TYPE_INT32)
    add(msg, "key", 2, F.TYPE_BYTES)
    add(msg, "record", 3, F.TYPE_MESSAGE, type_name=f".t{name}.Record")
    add(msg, "closerPeers", 8, F.TYPE_MESSAGE, F.LABEL_REPEATED, f".t{name}.Message.Peer")
    add(msg, "providerPeers", 9, F.TYPE_MESSAGE, F.LABEL_REPEATED, f".t{name}.Message.Peer")
    if extras:
        add(msg, "senderRecord", 11, F.TYPE_BYTES)
        add(peer, "signedRecord", 4, F.TYPE_BYTES)
        add(rec, "author", 3, F.TYPE_BYTES)
        add(rec, "signature", 4, F.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"t{name}.Message"))


Oracle = _oracle(False)
OracleExtras = _oracle(True)

# ------------------------------------------------------------------ data

ED_IDS = [Ed25519KeyPair.from_seed(bytes([i]) * 32).peer_id for i in range(5)]
SHA_IDS = [PeerId(b"\x12\x20" + bytes([i]) * 32) for i in range(3)]
PEER_IDS = ED_IDS + SHA_IDS
RELAY = ED_IDS[4]
ADDRS = [
    Multiaddr(t)
    for t in [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip6/::1/tcp/4001",
        "/ip4/1.2.3.4/udp/4001/quic-v1",
        "/dns4/example.com/tcp/443/wss",
        "/ip4/1.2.3.4/udp/4001/quic-v1/webtransport/certhash/uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_1aluKR_tpevQ",
        f"/ip4/1.2.3.4/tcp/1/p2p/{RELAY}/p2p-circuit",
    ]
]
BAD_ADDR = bytes([0xFF] * 8)  # unknown protocol code

pid_st = st.sampled_from(PEER_IDS)
peer_st = st.builds(
    KadPeer,
    pid_st,
    st.lists(st.sampled_from(ADDRS), max_size=4),
    st.sampled_from(list(ConnectionType)),
)
record_st = st.builds(
    KadRecord,
    st.binary(max_size=40),
    st.binary(max_size=80),
    st.text(max_size=30),
    st.none() | pid_st,
    st.none() | st.integers(1, 2**32 - 1),
)
message_st = st.builds(
    KadMessage,
    st.sampled_from(list(MessageType)),
    st.binary(max_size=60),
    st.none() | record_st,
    st.lists(peer_st, max_size=5),
    st.lists(peer_st, max_size=3),
    st.integers(-(2**31), 2**31 - 1),
)


def to_oracle(msg: KadMessage, cls=Oracle):
    m = cls(type=int(msg.type), key=msg.key, clusterLevelRaw=msg.cluster_level_raw)
    if msg.record is not None:
        r = msg.record
        m.record.SetInParent()
        m.record.key = r.key
        m.record.value = r.value
        m.record.timeReceived = r.time_received
        if r.publisher is not None:
            m.record.publisher = r.publisher.to_bytes()
        if r.ttl is not None:
            m.record.ttl = r.ttl
    for src, dst in ((msg.closer_peers, m.closerPeers), (msg.provider_peers, m.providerPeers)):
        for p in src:
            dst.add(id=p.peer_id.to_bytes(), addrs=[a.to_bytes() for a in p.addrs], connection=int(p.connection))
    return m


def oracle_bytes(msg: KadMessage) -> bytes:
    """What Google's serializer writes, plus our explicit type 0 (PUT_VALUE)."""
    body = to_oracle(msg).SerializeToString()
    return (b"\x08\x00" if msg.type == MessageType.PUT_VALUE else b"") + body


def test_constants():
    assert PROTOCOL_ID == "/ipfs/kad/1.0.0"
    assert MAX_MESSAGE_SIZE == 16384
    assert issubclass(KadCodecError, ProtocolError) and issubclass(KadCodecError, KadfastError)
    assert [int(t) for t in MessageType] == [0, 1, 2, 3, 4, 5]
    assert [int(t) for t in ConnectionType] == [0, 1, 2, 3]


# ------------------------------------------------------------------ oracle tests


@given(message_st)
def test_encode_matches_google_byte_for_byte(msg):
    data = encode_message(msg)
    assert data == oracle_bytes(msg)
    m = Oracle.FromString(data)
    assert m.type == msg.type and m.key == msg.key and m.clusterLevelRaw == msg.cluster_level_raw
    assert len(m.closerPeers) == len(msg.closer_peers) and len(m.providerPeers) == len(msg.provider_peers)
    assert m.HasField("record") == (msg.record is not None)


@given(message_st)
def test_decode_what_google_encodes(msg):
    assert decode_message(to_oracle(msg).SerializeToString()) == msg
    assert decode_message(encode_message(msg)) == msg


@given(message_st, st.binary(max_size=30), st.binary(max_size=30), st.binary(max_size=20))
def test_unknown_fields_are_skipped_and_not_reemitted(msg, sender_record, signed_record, author):
    m = to_oracle(msg, OracleExtras)
    m.senderRecord = sender_record
    for p in list(m.closerPeers) + list(m.providerPeers):
        p.signedRecord = signed_record
    if msg.record is not None:
        m.record.author = author
        m.record.signature = author[::-1]
    decoded = decode_message(m.SerializeToString())
    assert decoded == msg
    assert encode_message(decoded) == oracle_bytes(msg)


def test_rust_unknown_fields_and_fixed_widths_are_skipped():
    peer = field_bytes(1, ED_IDS[0].to_bytes()) + field_bytes(4, b"signed") + field_varint(99, 7)
    data = (
        field_varint(1, 4)
        + field_bytes(11, b"sender")
        + bytes([0x9D, 0x01]) + b"\x00\x01\x02\x03"  # field 19, fixed32
        + bytes([0xA1, 0x01]) + b"\x00" * 8  # field 20, fixed64
        + field_bytes(8, peer)
        + field_varint(12345, 2**62)
    )
    msg = decode_message(data)
    assert msg == KadMessage(MessageType.FIND_NODE, closer_peers=[KadPeer(ED_IDS[0], [])])
    assert encode_message(msg) == field_varint(1, 4) + field_bytes(8, field_bytes(1, ED_IDS[0].to_bytes()))


def test_find_node_request_as_rust_sends_it():
    # rust: type FIND_NODE, key = PeerId bytes; older rust also clusterLevelRaw 10
    key = ED_IDS[1].to_bytes()
    data = b"\x08\x04" + field_bytes(2, key) + b"\x50\x0a"
    assert decode_message(data) == KadMessage(MessageType.FIND_NODE, key=key, cluster_level_raw=10)
    assert encode_message(decode_message(data)) == data


def test_missing_type_is_put_value_and_we_always_write_it():
    rec = field_bytes(1, b"/v/k") + field_bytes(2, b"v")
    msg = decode_message(field_bytes(3, rec))  # as rust/go write PUT_VALUE
    assert msg.type is MessageType.PUT_VALUE and msg.record == KadRecord(b"/v/k", b"v")
    assert encode_message(msg) == b"\x08\x00" + field_bytes(3, rec)
    assert decode_message(b"") == KadMessage(MessageType.PUT_VALUE)
    assert encode_message(KadMessage(MessageType.PUT_VALUE)) == b"\x08\x00"


def test_record_rust_fields():
    rec = KadRecord(b"k", b"v", "2024-01-02T03:04:05Z", ED_IDS[2], 48 * 3600)
    data = encode_message(KadMessage(MessageType.GET_VALUE, b"k", rec))
    m = Oracle.FromString(data)
    assert m.record.publisher == ED_IDS[2].to_bytes() and m.record.ttl == 172800
    assert decode_message(data).record == rec
    # ttl 0 is "absent"; a uint32 written as a wider varint is truncated as protobuf does
    assert decode_message(field_bytes(3, field_varint(777, 0))).record.ttl is None
    assert decode_message(field_bytes(3, field_varint(777, 2**32 + 5))).record.ttl == 5
    # a publisher that is no PeerId reads as None (the record is kept)
    got = decode_message(field_bytes(3, field_bytes(1, b"k") + field_bytes(666, b"junk"))).record
    assert got == KadRecord(b"k", b"")


def test_long_fields_round_trip():
    addr = Multiaddr(f"/dns4/{'h' * 150}.example/tcp/1")
    rec = KadRecord(b"k" * 200, b"v" * 5000, "t" * 130, None, 2**32 - 1)
    msg = KadMessage(MessageType.PUT_VALUE, b"k" * 200, rec, [KadPeer(ED_IDS[0], [addr] * 3)])
    data = encode_message(msg)
    assert data == oracle_bytes(msg)
    assert decode_message(data) == msg


def test_negative_cluster_level_is_a_ten_byte_varint():
    msg = KadMessage(MessageType.PING, cluster_level_raw=-1)
    data = encode_message(msg)
    assert data == b"\x08\x05\x50" + b"\xff" * 9 + b"\x01"
    assert Oracle.FromString(data).clusterLevelRaw == -1
    assert decode_message(data) == msg


# ------------------------------------------------------------------ lenient decoding


def _peer(pid_bytes: bytes, *addrs: bytes, connection: int = 0) -> bytes:
    body = field_bytes(1, pid_bytes) + b"".join(field_bytes(2, a) for a in addrs)
    return body + (field_varint(3, connection) if connection else b"")


def test_peer_with_invalid_id_is_dropped_not_the_message():
    good = _peer(ED_IDS[0].to_bytes(), ADDRS[0].to_bytes())
    data = (
        field_varint(1, 4)
        + field_bytes(8, _peer(b"not a peer id", ADDRS[0].to_bytes()))
        + field_bytes(8, good)
        + field_bytes(8, _peer(b"", ADDRS[1].to_bytes()))
        + field_bytes(8, field_bytes(2, ADDRS[0].to_bytes()))  # no id at all
        + field_bytes(9, _peer(b"\x12\x20" + b"\x00" * 31))  # short sha256 digest
        + field_bytes(9, good)
    )
    msg = decode_message(data)
    assert msg.closer_peers == [KadPeer(ED_IDS[0], [ADDRS[0]])]
    assert msg.provider_peers == [KadPeer(ED_IDS[0], [ADDRS[0]])]


def test_bad_address_is_dropped_alone():
    body = _peer(ED_IDS[0].to_bytes(), BAD_ADDR, ADDRS[0].to_bytes(), b"", b"\x04\x01", ADDRS[2].to_bytes())
    msg = decode_message(field_bytes(8, body))
    assert msg.closer_peers == [KadPeer(ED_IDS[0], [ADDRS[0], ADDRS[2]])]


def test_p2p_suffixes():
    me, other = ED_IDS[0], ED_IDS[1]
    addrs = [
        ADDRS[0].with_peer_id(me),  # rust style: stripped
        ADDRS[1].with_peer_id(other),  # names another peer: dropped
        Multiaddr(f"/p2p/{me}"),  # nothing left after stripping: dropped
        ADDRS[5],  # circuit address through a relay: kept as is
        ADDRS[5].with_peer_id(me),  # ... with our suffix: stripped
        ADDRS[2],
    ]
    body = _peer(me.to_bytes(), *(a.to_bytes() for a in addrs))
    got = decode_message(field_bytes(8, body)).closer_peers
    assert got == [KadPeer(me, [ADDRS[0], ADDRS[5], ADDRS[5], ADDRS[2]])]
    # the same address bytes under another peer are judged for that peer
    body = _peer(other.to_bytes(), *(a.to_bytes() for a in addrs))
    assert decode_message(field_bytes(8, body)).closer_peers == [KadPeer(other, [ADDRS[1], ADDRS[5], ADDRS[2]])]


def test_encode_peer_strips_suffix_and_drops_mismatched():
    me = ED_IDS[0]
    body = encode_peer(me, [ADDRS[0].with_peer_id(me), ADDRS[1].with_peer_id(ED_IDS[1]), ADDRS[5], Multiaddr(f"/p2p/{me}")])
    assert body == _peer(me.to_bytes(), ADDRS[0].to_bytes(), ADDRS[5].to_bytes())
    assert encode_peer(me, [], ConnectionType.CONNECTED) == _peer(me.to_bytes(), connection=1)
    assert encode_peer(me, [], 3) == _peer(me.to_bytes(), connection=3)


def test_unknown_connection_type_reads_as_not_connected():
    for value in (9, 300, 2**40):
        msg = decode_message(field_bytes(8, _peer(ED_IDS[0].to_bytes(), connection=value)))
        assert msg.closer_peers[0].connection is ConnectionType.NOT_CONNECTED
    msg = decode_message(field_bytes(8, _peer(ED_IDS[0].to_bytes(), connection=2)))
    assert msg.closer_peers[0].connection is ConnectionType.CAN_CONNECT


def test_last_singular_field_wins():
    data = (
        field_bytes(2, b"a") + field_bytes(2, b"b") + field_varint(1, 1) + field_varint(1, 3)
        + field_bytes(3, field_bytes(1, b"k1") + field_bytes(2, b"v1")) + field_bytes(3, field_bytes(1, b"k2"))
    )
    msg = decode_message(data)
    assert (msg.key, msg.type, msg.record) == (b"b", MessageType.GET_PROVIDERS, KadRecord(b"k2", b""))


def test_decode_accepts_bytearray_and_memoryview():
    data = encode_message(KadMessage(MessageType.FIND_NODE, b"k", closer_peers=[KadPeer(ED_IDS[0], [ADDRS[0]])]))
    assert decode_message(bytearray(data)) == decode_message(memoryview(data)) == decode_message(data)


def test_caches_stay_bounded(monkeypatch):
    monkeypatch.setattr(pb, "CACHE_SIZE", 3)
    pb.clear_decode_caches()
    try:
        peers = [KadPeer(PeerId(b"\x12\x20" + bytes([i]) * 32), [Multiaddr(f"/ip4/10.0.0.{i}/tcp/1")]) for i in range(10)]
        msg = KadMessage(MessageType.FIND_NODE, closer_peers=peers)
        for _ in range(2):
            assert decode_message(encode_message(msg)) == msg
        assert all(0 < n <= 3 for n in pb.decode_cache_sizes())
        # a decoded peer's address list is its own, not the cache's
        decode_message(encode_message(msg)).closer_peers[-1].addrs.append(ADDRS[0])
        assert decode_message(encode_message(msg)).closer_peers[-1].addrs == peers[-1].addrs
    finally:
        pb.clear_decode_caches()


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "data",
    [
        b"\x08\x06",  # type out of range
        b"\x08" + b"\xff" * 9 + b"\x01",  # type -1
        b"\x12\x05abc",  # key runs past the end
        b"\x08",  # varint missing
        b"\x08\xff",  # truncated varint
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint of 11 bytes
        b"\x10\x01",  # key as a varint
        b"\x0a\x01\x00",  # type as bytes
        b"\x40\x01",  # closerPeers as a varint
        b"\x4d\x00\x00\x00\x00",  # providerPeers as fixed32
        b"\x1a\x02\x08\x01",  # record.key as a varint
        b"\x1a\x03\xca\x30\x00",  # record.ttl as bytes
        b"\x1a\x03\x2a\x01\xff",  # record.timeReceived not UTF-8
        b"\x1a\x02\x0a\x05",  # record field runs past the record
        b"\x42\x02\x08\x01",  # peer.id as a varint
        b"\x42\x02\x1a\x00",  # peer.connection as bytes
        b"\x42\x03\x0a\x05\x00",  # peer field runs past the peer
        b"\x42\x02\x0a",  # truncated inside a peer
        b"\x00\x00",  # field number 0
        b"\xa3\x01",  # start group (field 20)
        b"\xa4\x01",  # end group
        b"\xa6\x01\x00",  # wire type 6
        b"\xa7\x01\x00",  # wire type 7
        b"\xa1\x01\x00\x00",  # truncated fixed64 of an unknown field
        b"\xa5\x01\x00",  # truncated fixed32 of an unknown field
        b"\xa2\x01\x05ab",  # truncated unknown bytes
        b"\xf8\xff\xff\xff\x7f\x00",  # field number above 2**29 - 1
    ],
)
def test_malformed_messages_raise(data):
    with pytest.raises(KadCodecError) as info:
        decode_message(data)
    assert info.value.remote is True


@pytest.mark.parametrize(
    "msg",
    [
        KadMessage(7),
        KadMessage(-1),
        KadMessage(MessageType.PING, cluster_level_raw=2**31),
        KadMessage(MessageType.PUT_VALUE, record=KadRecord(b"k", b"v", ttl=2**32)),
        KadMessage(MessageType.PUT_VALUE, record=KadRecord(b"k", b"v", ttl=-5)),
        KadMessage(MessageType.FIND_NODE, closer_peers=[KadPeer(ED_IDS[0], [], 4)]),
    ],
)
def test_unencodable_messages_raise_locally(msg):
    with pytest.raises(KadCodecError) as info:
        encode_message(msg)
    assert info.value.remote is False


# ------------------------------------------------------------------ reply fast path


@given(
    st.binary(max_size=50),
    st.lists(peer_st, max_size=25),
    st.sampled_from(list(MessageType)),
    st.lists(peer_st, max_size=3),
    st.none() | record_st,
)
def test_fast_reply_equals_encode_message(key, closer, msg_type, providers, record):
    bodies = [encode_peer(p.peer_id, p.addrs, p.connection) for p in closer]
    pbodies = [encode_peer(p.peer_id, p.addrs, p.connection) for p in providers]
    fast = encode_find_node_reply(key, bodies, msg_type, pbodies, record)
    msg = KadMessage(msg_type, key, record, closer, providers)
    assert fast == encode_message(msg)
    assert decode_message(fast) == msg


def test_fast_reply_large_peer_body():
    # a Peer body above the prefix table (2048 bytes) takes the slow prefix
    addrs = [Multiaddr(f"/dns4/{'h' * 200}{i}.example/tcp/1") for i in range(12)]
    peer = KadPeer(ED_IDS[0], addrs)
    body = encode_peer(peer.peer_id, peer.addrs)
    assert len(body) > 2048
    for t in (MessageType.FIND_NODE, MessageType.GET_PROVIDERS):
        fast = encode_find_node_reply(b"", [body], t, [body])
        assert fast == encode_message(KadMessage(t, closer_peers=[peer], provider_peers=[peer]))
    small = encode_peer(ED_IDS[1], [ADDRS[0]])
    small_peer = KadPeer(ED_IDS[1], [ADDRS[0]])
    # the long body only among the providers, given as iterators
    fast = encode_find_node_reply(b"k", iter([small, small]), MessageType.GET_PROVIDERS, iter([small, body]))
    want = KadMessage(MessageType.GET_PROVIDERS, b"k", closer_peers=[small_peer] * 2, provider_peers=[small_peer, peer])
    assert fast == encode_message(want)
    with pytest.raises(KadCodecError):
        encode_find_node_reply(b"", [body], 9)


def test_find_node_reply_default_type():
    body = encode_peer(ED_IDS[0], [ADDRS[0]])
    assert encode_find_node_reply(b"", [body])[:2] == b"\x08\x04"


# ------------------------------------------------------------------ framing


def test_frame():
    assert frame(b"") == b"\x00"
    assert frame(b"x" * 127) == b"\x7f" + b"x" * 127
    assert frame(b"x" * 300) == encode_uvarint(300) + b"x" * 300


def _feed_chunks(data: bytes, size: int, reader=None) -> list[bytes]:
    reader = reader or MessageReader()
    out = []
    for i in range(0, len(data), size):
        out += reader.feed(data[i:i + size])
    reader.eof()
    return out


@given(st.lists(st.binary(max_size=300), max_size=6), st.integers(1, 50))
def test_reader_whole_chunked_and_byte_by_byte(bodies, size):
    stream = b"".join(frame(b) for b in bodies)
    whole = MessageReader()
    assert whole.feed(stream) == bodies
    assert whole.buffered == 0
    whole.eof()
    assert _feed_chunks(stream, 1) == bodies
    assert _feed_chunks(stream, size) == bodies


def test_reader_accepts_bytearray_and_memoryview():
    stream = frame(b"abc") + frame(b"de")
    assert MessageReader().feed(bytearray(stream)) == [b"abc", b"de"]
    r = MessageReader()
    assert r.feed(memoryview(stream)[:3]) == []
    assert r.feed(memoryview(stream)[3:]) == [b"abc", b"de"]
    assert all(type(b) is bytes for b in MessageReader().feed(bytearray(stream)))


def test_reader_limit_is_checked_at_the_prefix():
    r = MessageReader()
    assert r.feed(frame(b"x" * MAX_MESSAGE_SIZE)) == [b"x" * MAX_MESSAGE_SIZE]
    with pytest.raises(KadCodecError):
        r.feed(encode_uvarint(MAX_MESSAGE_SIZE + 1))  # the body never needs to arrive
    with pytest.raises(KadCodecError) as info:
        r.feed(b"\x00")  # closed after an error
    assert info.value.remote is False
    r = MessageReader(max_size=100)
    assert r.feed(b"\x64") == [] and r.buffered == 1
    with pytest.raises(KadCodecError):
        MessageReader(max_size=100).feed(b"\x65")
    with pytest.raises(KadCodecError):
        MessageReader().feed(b"\xff\xff\xff")  # detected before the prefix ends
    big = MessageReader(max_size=4 * 1024 * 1024)  # go's limit
    assert big.feed(frame(b"y" * 100_000)) == [b"y" * 100_000]


def test_reader_buffer_is_bounded():
    r = MessageReader(max_size=1000)
    stream = frame(bytes(1000)) + frame(b"z")
    out = []
    for i in range(len(stream)):
        out += r.feed(stream[i:i + 1])
        assert r.buffered <= 1002  # one partial message and its prefix
    assert out == [bytes(1000), b"z"] and r.buffered == 0


@pytest.mark.parametrize("data", [b"\x80\x00", b"\x81\x80\x00", b"\x80" * 12])
def test_reader_malformed_prefix(data):
    with pytest.raises(KadCodecError):
        MessageReader(max_size=2**62).feed(data)


def test_reader_eof():
    r = MessageReader()
    assert r.feed(b"\x05abc") == []
    with pytest.raises(KadCodecError) as info:
        r.eof()
    assert info.value.remote is True
    with pytest.raises(KadCodecError):
        r.feed(b"de")
    r = MessageReader()
    assert r.feed(b"\x85") == []  # inside the prefix
    with pytest.raises(KadCodecError):
        r.eof()
    r = MessageReader()
    r.feed(frame(b"ok"))
    r.eof()
    with pytest.raises(KadCodecError):
        r.eof()


# ------------------------------------------------------------------ fuzzing

FULL = encode_message(
    KadMessage(
        MessageType.GET_VALUE,
        b"/v/key",
        KadRecord(b"/v/key", b"value", "2024-01-01T00:00:00Z", ED_IDS[1], 3600),
        [KadPeer(p, [ADDRS[i % len(ADDRS)], ADDRS[(i + 2) % len(ADDRS)].with_peer_id(p)], ConnectionType(i % 4))
         for i, p in enumerate(PEER_IDS)],
        [KadPeer(ED_IDS[0], [ADDRS[0]])],
        -3,
    )
)


def _run(data: bytes, chunk: int) -> None:
    try:
        msg = decode_message(data)
    except KadCodecError:
        pass
    else:
        assert isinstance(msg, KadMessage)
        encode_message(msg)  # whatever decodes re-encodes
    stream = frame(data) + data
    try:
        a = MessageReader().feed(stream)
    except KadCodecError:
        a = None
    try:
        b = []
        r = MessageReader()
        for i in range(0, len(stream), chunk):
            b += r.feed(stream[i:i + chunk])
    except KadCodecError:
        b = None
    if a is not None and b is not None:
        assert a == b


@given(st.binary(max_size=300), st.integers(1, 40))
def test_fuzz_random_bytes(data, chunk):
    _run(data, chunk)


@given(st.lists(st.tuples(st.integers(0, len(FULL) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(1, 64), st.integers(0, len(FULL)))
def test_fuzz_mutated_messages(edits, chunk, cut):
    data = bytearray(FULL)
    for pos, byte in edits:
        data[pos] = byte
    _run(bytes(data[:cut] if cut else data), chunk)
    _run(bytes(data[1:]), chunk)


def _fields(draw_fields) -> bytes:
    out = b""
    for number, wt, value in draw_fields:
        if wt == 0:
            out += field_varint(number, int.from_bytes(value[:8] or b"\x00", "big") >> 1)
        elif wt == 2:
            out += field_bytes(number, value)
        elif wt == 1:
            out += encode_uvarint(number << 3 | 1) + value[:8].ljust(8, b"\x00")
        else:
            out += encode_uvarint(number << 3 | 5) + value[:4].ljust(4, b"\x00")
    return out


field_st = st.tuples(st.sampled_from([1, 2, 3, 4, 5, 8, 9, 10, 11, 666, 777]), st.sampled_from([0, 1, 2, 5]),
                     st.binary(max_size=40))


@given(st.lists(field_st, max_size=6), st.lists(st.lists(field_st, max_size=5), max_size=3))
def test_fuzz_structured_fields(top, nested):
    # well-formed protobuf with arbitrary contents in the kad field numbers,
    # including nested Peer/Record bodies made of such fields
    data = _fields(top) + b"".join(field_bytes(n, _fields(f)) for n, f in zip([8, 9, 3], nested))
    _run(data, 7)
    try:
        msg = decode_message(data)
    except KadCodecError:
        return
    assert decode_message(encode_message(msg)) == msg


def test_fast_reply_from_cached_closer_fields_is_byte_identical():
    from kadfast.kad.pb import closer_field

    peers = [KadPeer(PeerId(b"\x00\x24\x08\x01\x12\x20" + bytes([i]) * 32), [Multiaddr(f"/ip4/10.0.0.{i}/tcp/1")], i % 2)
             for i in range(1, 21)]
    bodies = [encode_peer(p.peer_id, p.addrs, p.connection) for p in peers]
    fields = [closer_field(b) for b in bodies]
    for framed in (False, True):
        a = encode_find_node_reply(b"key", bodies, MessageType.GET_VALUE, framed=framed)
        b = encode_find_node_reply(b"key", fields, MessageType.GET_VALUE, framed=framed, closer_fields=True)
        assert a == b
    big = closer_field(b"\x0a" + bytes(70000))  # past the prefix table: the slow path keeps fields whole
    assert encode_find_node_reply(b"", [big], closer_fields=True) == encode_find_node_reply(b"", [b"\x0a" + bytes(70000)])


def test_pb_varint_matches_the_general_varint_at_every_length_boundary():
    from kadfast.kad.pb import _varint
    from kadfast.varint import encode_uvarint

    for n in [0, 1, 127, 128, 129, 1100, 16383, 16384, 16385, 2**21 - 1, 2**21, 2**63 - 1]:
        assert _varint(n) == encode_uvarint(n), n
    assert _varint(2**64 - 1) == b"\xff" * 9 + b"\x01"  # protobuf's uint64 range, beyond the multiformats varint
