"""pytest-benchmark: the kad message codec on a server's hot path (no sockets).

    python -m pytest bench/test_kad_pb_bench.py --benchmark-only

A FIND_NODE answer costs: MessageReader.feed + decode_message of the request,
the walk over the routing table with cached Peer encodings,
then encode_find_node_reply of 20 cached Peer encodings + frame.
"""

from kadfast import Ed25519KeyPair, Multiaddr
from kadfast.kad.pb import (
    KadMessage,
    KadPeer,
    MessageReader,
    MessageType,
    decode_message,
    encode_find_node_reply,
    encode_message,
    encode_peer,
    frame,
)

K = 20
PEERS = [Ed25519KeyPair.from_seed(bytes([i + 1]) * 32).peer_id for i in range(K)]
ADDRS = [
    [Multiaddr(f"/ip4/10.0.{i}.1/tcp/4001"), Multiaddr(f"/ip4/10.0.{i}.1/udp/4001/quic-v1")] for i in range(K)
]
BODIES = [encode_peer(p, a) for p, a in zip(PEERS, ADDRS)]  # as cached per routing-table entry
REQUEST = encode_message(KadMessage(MessageType.FIND_NODE, Ed25519KeyPair.from_seed(b"\xee" * 32).peer_id.to_bytes()))
REPLY = encode_find_node_reply(b"", BODIES)


def test_decode_find_node_request(benchmark):
    """decode_message of a FIND_NODE request (type + 38-byte PeerId key)."""
    msg = benchmark(decode_message, REQUEST)
    assert msg.type is MessageType.FIND_NODE and len(msg.key) == 38


def test_read_and_decode_find_node_request(benchmark):
    """MessageReader.feed of one framed request, then decode_message."""
    reader = MessageReader()
    framed = frame(REQUEST)
    feed = reader.feed

    def run():
        return [decode_message(body) for body in feed(framed)]

    assert benchmark(run)[0].key == decode_message(REQUEST).key


def test_encode_find_node_reply_20_cached_peers(benchmark):
    """encode_find_node_reply + frame from 20 cached Peer encodings (2 addrs each)."""

    def run():
        return frame(encode_find_node_reply(b"", BODIES))

    assert benchmark(run) == frame(REPLY)


def test_encode_message_20_peers(benchmark):
    """The general encoder on the same reply (no cached Peer encodings)."""
    msg = KadMessage(MessageType.FIND_NODE, closer_peers=[KadPeer(p, a) for p, a in zip(PEERS, ADDRS)])
    assert benchmark(encode_message, msg) == REPLY


def test_decode_find_node_reply_20_peers(benchmark):
    """decode_message of that reply (a client's side of a lookup step)."""
    msg = benchmark(decode_message, REPLY)
    assert len(msg.closer_peers) == K and all(len(p.addrs) == 2 for p in msg.closer_peers)


def test_answer_find_node_from_a_1000_peer_table(benchmark):
    """A KadNode's whole answer (its KadServer's) to a FIND_NODE request (the framed reply
    bytes the server writes): the 20 closest of a table filled from 1,000
    random peers, walked with their cached closerPeers fields by the
    compiled ``kadfast._closer.cached_fields``, and the reply joined."""
    import os

    from _common import fill_table, random_peer_id

    from kadfast.kad.node import KadNode

    node = KadNode()
    fill_table(node, 1000)
    asker = random_peer_id()
    requests = [KadMessage(MessageType.FIND_NODE, key=os.urandom(32)) for _ in range(256)]
    handle = node.server.handle
    clock = node.clock
    state = [0]

    def run():
        i = state[0] = (state[0] + 1) & 255
        return handle(asker, requests[i], clock(), None, True)

    reply = benchmark(run)
    body = reply[2:]  # a 20-peer reply is over 127 and under 16,384 bytes: a two-byte length
    assert frame(body) == reply
    assert len(decode_message(body).closer_peers) == K
