"""The server's reply fast path: replies built of cached Peer encodings
(``KadServer.handle(..., framed=True)``) are byte for byte the frame of the
plain path's KadMessage, also after the address book or the connection state
of a peer changed; and the address book's versions that key the cache."""

from __future__ import annotations

import os

from kadfast import Ed25519KeyPair, Multiaddr, PeerId
from kadfast.addrbook import AddressBook
from kadfast.kad.node import Config, KadNode
from kadfast.kad.pb import KadMessage, KadPeer, MessageType, encode_find_node_reply, encode_message, frame
from kadfast.net import HostConfig
from kadfast.store import Record


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def random_pid() -> PeerId:
    return PeerId(bytes.fromhex("002408011220") + os.urandom(32))


def make_node(n: int = 300, k: int = 20) -> tuple[KadNode, list[PeerId]]:
    node = KadNode(config=Config(k=k), clock=FakeClock(), wall_clock=lambda: 1_700_000_000.0,
                   host_config=HostConfig(external_addrs=["/ip4/127.0.0.1/tcp/4001"]))
    peers = [random_pid() for _ in range(n)]
    for i, p in enumerate(peers):
        node.add_address(p, f"/ip4/10.0.{i >> 8}.{i & 255}/tcp/4001")
        if i % 3 == 0:
            node.host.addrbook.add(p, [Multiaddr(f"/ip6/::{i + 1}/tcp/5")], node.clock(), ttl=100)
        node.update_peer(p, node.clock(), connected=i % 2 == 0)
    return node, peers


def requests(node: KadNode, peers: list[PeerId]) -> list[KadMessage]:
    out = [KadMessage(MessageType.FIND_NODE, key=os.urandom(32)) for _ in range(10)]
    out += [KadMessage(MessageType.FIND_NODE, key=p.to_bytes()) for p in peers[:5]]
    out.append(KadMessage(MessageType.FIND_NODE, key=node.peer_id.to_bytes()))  # ourselves first
    out.append(KadMessage(MessageType.GET_VALUE, key=b"/v/missing"))
    out.append(KadMessage(MessageType.GET_VALUE, key=b"/v/here"))
    out.append(KadMessage(MessageType.GET_PROVIDERS, key=b"prov"))
    out.append(KadMessage(MessageType.GET_PROVIDERS, key=b"none"))
    return out


def assert_same_as_plain(node: KadNode, peers: list[PeerId], asker: PeerId) -> None:
    for msg in requests(node, peers):
        fast = node.server.handle(asker, msg, node.clock(), None, True)
        plain = node.server.handle(asker, msg, node.clock())
        assert fast.__class__ is bytes
        assert fast == frame(encode_message(plain)), msg


def test_framed_replies_equal_the_plain_path():
    node, peers = make_node()
    now = node.clock()
    node.store.put(Record(b"/v/here", b"value", publisher=peers[1], expires=now + 100), now)
    node.server.handle(peers[7], KadMessage(MessageType.ADD_PROVIDER, key=b"prov", provider_peers=[
        KadPeer(peers[7], [Multiaddr("/ip4/10.9.9.9/tcp/1")])]), node.clock())
    assert_same_as_plain(node, peers, peers[0])  # the asker is left out
    assert_same_as_plain(node, peers, random_pid())
    assert len(node.server.closer_cache) > 20


def test_cached_encodings_follow_address_and_connection_changes():
    node, peers = make_node()
    asker = random_pid()
    assert_same_as_plain(node, peers, asker)
    clock = node.clock
    book = node.host.addrbook
    # new addresses, a refresh that re-ranks, a removal, a working address
    for i, p in enumerate(peers):
        if i % 4 == 0:
            book.add(p, [Multiaddr(f"/ip4/192.168.{i >> 8}.{i & 255}/tcp/9")], clock())
        elif i % 4 == 1:
            book.remove(p)
        elif i % 4 == 2:
            book.mark_connected(p, Multiaddr(f"/ip4/172.16.0.{i & 255}/tcp/7"), clock())
    assert_same_as_plain(node, peers, asker)
    # the ip6 addresses (ttl 100) expire; later all the rest
    clock.t += 150
    assert_same_as_plain(node, peers, asker)
    # connection state changes
    connected = set(peers[::5])
    node.host.connection = lambda p: object() if p in connected else None
    node.host.conn_epoch += 1  # as the host does when a connection opens or closes
    assert_same_as_plain(node, peers, asker)
    connected.clear()
    node.host.conn_epoch += 1
    assert_same_as_plain(node, peers, asker)
    clock.t += 10 * 3600
    assert_same_as_plain(node, peers, asker)
    key = os.urandom(32)  # every address expired: no peer is left to name
    assert node.server.handle(asker, KadMessage(MessageType.FIND_NODE, key=key), node.clock(), None, True) == \
        frame(encode_find_node_reply(key, []))


def test_find_node_reply_framed_equals_frame():
    pid = Ed25519KeyPair.generate().peer_id
    from kadfast.kad.pb import encode_peer

    bodies = [encode_peer(pid, [Multiaddr(f"/ip4/10.0.0.{i}/tcp/{i}")] * (i % 5 + 1), i % 2) for i in range(40)]
    for n in (0, 1, 3, 20, 40):
        for key in (b"", os.urandom(32)):
            plain = encode_find_node_reply(key, bodies[:n])
            assert encode_find_node_reply(key, bodies[:n], framed=True) == frame(plain)
    big = encode_peer(pid, [Multiaddr("/dns4/" + "a" * 200 + "/tcp/1")] * 12)
    assert len(big) > 2048  # past the prefix table: the slow loop
    assert encode_find_node_reply(b"k", [big, bodies[0]], MessageType.GET_PROVIDERS, [big], framed=True) == \
        frame(encode_find_node_reply(b"k", [big, bodies[0]], MessageType.GET_PROVIDERS, [big]))


def test_address_book_versions():
    book = AddressBook(max_addrs_per_peer=2)
    p = random_pid()
    a1, a2, a3 = (Multiaddr(f"/ip4/10.0.0.{i}/tcp/1") for i in (1, 2, 3))
    assert book.version(p, 0.0) == 0
    book.add(p, [a1], 0.0, ttl=10)
    seen = {book.version(p, 1.0)}
    assert 0 not in seen
    assert book.version(p, 1.0) in seen  # unchanged: the same version

    def changed() -> None:
        v = book.version(p, t)
        assert v not in seen, "version did not change"
        seen.add(v)

    t = 1.0
    book.add(p, [a2], t, ttl=20)
    changed()
    assert book.addrs(p, t) == [a2, a1]  # the most recently confirmed first
    t = 2.0
    book.add(p, [a1], t, ttl=5)  # a refresh re-ranks
    changed()
    assert book.addrs(p, t) == [a1, a2]
    got = book.addrs(p, t)
    got.append(a3)  # a copy: the cached order is not touched
    assert book.addrs(p, t) == [a1, a2]
    book.mark_connected(p, a3, t)  # evicts one
    changed()
    assert book.addrs(p, t)[0] == a3
    book.remove_addr(p, a3)
    changed()
    assert book.addrs(p, t) == [a2]  # a1 was the one evicted (expiring first)
    book.add(p, [a1], t, ttl=3)
    changed()
    t = 6.0  # a1 expired
    assert book.addrs(p, t) == [a2]
    changed()
    t = 100.0
    assert book.version(p, t) == 0 and book.addrs(p, t) == []
    book.add(p, [a1], t)
    changed()
    book.remove(p)
    assert book.version(p, t) == 0
    book.add(p, [a1], t)
    changed()  # a new book never reuses a version
    book.add(p, [a2], t, ttl=1)
    changed()
    assert book.sweep(t + 5) == 1
    changed()
