"""The Kademlia node: server handlers with a fake clock, maintenance, and a
loopback network of 50 nodes."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import random
import sqlite3
import time
from dataclasses import replace as dataclass_replace

import pytest

from kadfast import Ed25519KeyPair, Key, Multiaddr, PeerId
from kadfast.errors import StoreError
from kadfast.kad.node import (
    Config,
    InboundRequest,
    KadError,
    KadNode,
    NoKnownPeers,
    NotFound,
    Quorum,
    QuorumFailed,
    RecordExpired,
    RoutingUpdated,
)
from kadfast.kad.pb import KadMessage, KadPeer, KadRecord, MessageType
from kadfast.kad.validation import InvalidRecord, NamespacedValidator, Validator
from kadfast.loop import run as run_loop
from kadfast.net import HostConfig
from kadfast.store import ProviderRecord, Record, StoreConfig


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def peer_ids(n):
    return [Ed25519KeyPair.generate().peer_id for _ in range(n)]


def offline_node(**kw) -> KadNode:
    """A node that is never started: its handlers are driven directly."""
    clock = kw.pop("clock", FakeClock())
    return KadNode(clock=clock, **kw)


# -- quorum ------------------------------------------------------------------
def test_quorum_counts_like_rust():
    assert Quorum.count(Quorum.ONE, 20) == 1
    assert Quorum.count(Quorum.MAJORITY, 20) == 11
    assert Quorum.count(Quorum.ALL, 20) == 20
    assert Quorum.count(5, 20) == 5 and Quorum.count(50, 20) == 20
    with pytest.raises(ValueError):
        Quorum.count(0, 20)


def test_config_defaults_match_rust():
    c = Config()
    assert (c.k, c.parallelism, c.query_timeout, c.request_timeout) == (20, 3, 60.0, 10.0)
    assert (c.record_ttl, c.replication_interval, c.republish_interval) == (48 * 3600, 3600, 22 * 3600)
    assert (c.provider_ttl, c.provider_republish_interval, c.periodic_bootstrap_interval) == (48 * 3600, 12 * 3600, 300)
    assert c.protocol == "/ipfs/kad/1.0.0"


# -- server handlers -----------------------------------------------------------
def test_find_node_for_own_id_includes_self_and_skips_addressless_peers():
    node = offline_node(host_config=HostConfig(external_addrs=["/ip4/127.0.0.1/tcp/4001"]))
    a, b, asker = peer_ids(3)
    node.add_address(a, Multiaddr("/ip4/10.0.0.1/tcp/1"))
    node.update_peer(b, node.clock(), connected=True)  # b: no address known
    reply = node.server.handle(asker, KadMessage(MessageType.FIND_NODE, key=node.peer_id.to_bytes()), node.clock())
    ids = [p.peer_id for p in reply.closer_peers]
    assert ids[0] == node.peer_id
    assert reply.closer_peers[0].addrs == [Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    assert a in ids and b not in ids and asker not in ids


def test_find_node_returns_the_k_closest():
    node = offline_node(config=Config(k=5))
    peers = peer_ids(40)
    for i, p in enumerate(peers):
        node.add_address(p, Multiaddr(f"/ip4/10.0.0.{i + 1}/tcp/1"))
    target = os.urandom(32)
    reply = node.server.handle(peers[0], KadMessage(MessageType.FIND_NODE, key=target), node.clock())
    got = [p.peer_id for p in reply.closer_peers]
    in_table = node.routing_table_peers()
    t = Key(target)
    expected = sorted((p for p in in_table if p != peers[0]), key=lambda p: t.distance(Key(p.to_bytes())))[:5]
    assert got == expected


def test_find_node_serves_a_known_target_first_even_when_not_in_the_table():
    """ipfs/specs kad-dht: a server MUST answer FIND_NODE with the target's
    own entry when it knows its addresses, even if the target is a DHT
    client (so not in the routing table); it comes first. A peer is never
    told about itself, and an unknown target adds nothing."""
    from kadfast.kad.pb import MessageReader, decode_message

    node = offline_node(config=Config(k=5))
    others = peer_ids(10)
    for i, p in enumerate(others):
        node.add_address(p, Multiaddr(f"/ip4/10.0.0.{i + 1}/tcp/1"))
    client, asker, unknown = peer_ids(3)
    # a client-mode peer: its identify addresses are in the address book only
    node.host.addrbook.add(client, [Multiaddr("/ip4/10.9.9.9/tcp/4001")], node.clock(), source="identify")
    assert client not in node.routing_table_peers()

    def ask(who, key, framed):
        reply = node.server.handle(who, KadMessage(MessageType.FIND_NODE, key=key), node.clock(), None, framed)
        if framed:
            (body,) = MessageReader(1 << 20).feed(reply)
            reply = decode_message(body)
        return reply.closer_peers

    for framed in (False, True):
        got = ask(asker, client.to_bytes(), framed)
        assert got[0].peer_id == client and got[0].addrs == [Multiaddr("/ip4/10.9.9.9/tcp/4001")]
        assert len(got) == 6 and client not in [p.peer_id for p in got[1:]]  # the target, then k closest
        assert [p.peer_id for p in ask(client, client.to_bytes(), framed)] == [p.peer_id for p in got[1:]]
        assert len(ask(asker, unknown.to_bytes(), framed)) == 5
        # a table entry is the closest to its own key: first once, not twice
        in_table = others[3]
        ids = [p.peer_id for p in ask(asker, in_table.to_bytes(), framed)]
        assert ids[0] == in_table and ids.count(in_table) == 1 and len(ids) == 5
    # addresses that expired are not known any more
    node.clock.t += 365 * 24 * 3600
    assert client not in [p.peer_id for p in ask(asker, client.to_bytes(), False)]


def test_find_peer_finds_a_client_mode_peer_through_a_server():
    """A DHT client connected to a server is found with find_peer by a
    third node that knows only the server (Kubo's findpeer of a NAT'd node)."""
    async def main():
        loop = ["/ip4/127.0.0.1/tcp/0"]
        server = KadNode(config=Config(mode="server"), host_config=HostConfig(listen_addrs=loop))
        client = KadNode(config=Config(mode="client"), host_config=HostConfig(listen_addrs=loop))
        asker = KadNode(config=Config(mode="client"))
        for n in (server, client, asker):
            await n.start()
        try:
            server_addr = server.listen_addrs[0]
            client.add_address(server.peer_id, server_addr)
            await client.bootstrap()
            await asyncio.wait_for(client.host.identify(server.peer_id), 5)
            async def identified():
                while not server.host.addrbook.addrs(client.peer_id, server.clock()):
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(identified(), 5)
            assert client.peer_id not in server.routing_table_peers()
            asker.add_address(server.peer_id, server_addr)
            addrs = await asker.find_peer(client.peer_id)
            assert client.listen_addrs[0] in addrs
        finally:
            for n in (asker, client, server):
                await n.stop()

    run_loop(lambda: asyncio.wait_for(main(), 30))


def test_record_size_limits_end_to_end():
    """The largest value (and key) that a put sends round-trips; one byte
    more is refused before anything is sent, saying why and what the limit
    is; a server refuses such a PUT_VALUE from a peer (stream reset)."""
    from kadfast.kad.node import ValueTooLarge
    from kadfast.kad.pb import MAX_KEY_SIZE, MAX_VALUE_SIZE

    async def main():
        loop = ["/ip4/127.0.0.1/tcp/0"]
        server = KadNode(config=Config(mode="server"), host_config=HostConfig(listen_addrs=loop))
        client = KadNode(config=Config(mode="client"))
        for n in (server, client):
            await n.start()
        try:
            client.add_address(server.peer_id, server.listen_addrs[0])
            key = b"/big/" + b"k" * (MAX_KEY_SIZE - 5)
            value = os.urandom(MAX_VALUE_SIZE)
            assert await client.put_record((key, value)) == 1
            client.remove_record(key)
            res = await client.get_record(key)
            assert res.best.value == value and res.records[0].peer == server.peer_id
            puts = server.request_counts.get(MessageType.PUT_VALUE, 0)
            with pytest.raises(ValueTooLarge, match=f"{MAX_VALUE_SIZE + 1} bytes is above the limit of {MAX_VALUE_SIZE}"):
                await client.put_record((b"/big/v", value + b"x"))
            with pytest.raises(ValueTooLarge, match=f"limit of {MAX_KEY_SIZE} bytes"):
                await client.put_record((key + b"k", b"v"))
            assert server.request_counts.get(MessageType.PUT_VALUE, 0) == puts  # nothing was sent
            # a peer that sends one anyway (its own limits) has the stream reset
            over = KadRecord(b"/big/v", value + b"x")
            with pytest.raises(KadError):
                await client.request(server.peer_id, KadMessage(MessageType.PUT_VALUE, key=over.key, record=over))
            assert server.store.get(b"/big/v", server.clock()) is None
        finally:
            for n in (client, server):
                await n.stop()

    run_loop(lambda: asyncio.wait_for(main(), 30))


def test_answers_with_a_large_record_fit_in_a_message():
    """A GET_VALUE answer carrying a value at the limit beside 20 closer peers
    with many addresses each would exceed 16 KiB, which rust neither sends
    nor reads: the farthest closer peers are left out until it fits; the
    record always goes. GET_PROVIDERS likewise."""
    from kadfast.kad.pb import MAX_MESSAGE_SIZE, MAX_VALUE_SIZE, MessageReader, decode_message, encode_message

    node = offline_node()
    for i, p in enumerate(peer_ids(40)):
        node.add_address(p, Multiaddr(f"/ip4/10.0.0.{i + 1}/tcp/1"))
        node.host.addrbook.add(p, [Multiaddr(f"/dns4/{'a' * 10}-{i}-{j}.org/tcp/{4000 + j}") for j in range(15)],
                               node.clock(), source="identify")
    key = b"/big/" + b"k" * 200
    node.store.put(Record(key, os.urandom(MAX_VALUE_SIZE), publisher=node.peer_id, expires=node.clock() + 60), node.clock())
    asker = peer_ids(1)[0]
    for framed in (False, True):
        reply = node.server.handle(asker, KadMessage(MessageType.GET_VALUE, key=key), node.clock(), None, framed)
        if framed:
            assert len(reply) <= MAX_MESSAGE_SIZE
            (body,) = MessageReader(MAX_MESSAGE_SIZE).feed(reply)
            reply = decode_message(body)
        assert len(encode_message(reply)) <= MAX_MESSAGE_SIZE
        assert reply.record.value == node.store.get(key, node.clock()).value
        assert 0 < len(reply.closer_peers) < 20
    # a small record: all 20 closer peers; FIND_NODE too
    node.store.put(Record(b"/small/k", b"v", publisher=node.peer_id, expires=node.clock() + 60), node.clock())
    reply = node.server.handle(asker, KadMessage(MessageType.GET_VALUE, key=b"/small/k"), node.clock())
    assert len(reply.closer_peers) == 20
    # peers with very many long addresses: even a FIND_NODE answer is cut to fit
    node = offline_node()
    for i, p in enumerate(peer_ids(40)):
        node.add_address(p, Multiaddr(f"/dns4/{'b' * 60}-{i}-0.org/tcp/5000"))
        node.host.addrbook.add(p, [Multiaddr(f"/dns4/{'b' * 60}-{i}-{j}.org/tcp/{5000 + j}") for j in range(1, 16)],
                               node.clock(), source="identify")
    for framed in (False, True):
        reply = node.server.handle(asker, KadMessage(MessageType.FIND_NODE, key=os.urandom(32)), node.clock(), None, framed)
        if framed:
            assert len(reply) <= MAX_MESSAGE_SIZE
            (body,) = MessageReader(MAX_MESSAGE_SIZE).feed(reply)
            reply = decode_message(body)
        assert len(encode_message(reply)) <= MAX_MESSAGE_SIZE and 0 < len(reply.closer_peers) < 20


def test_routing_table_admits_few_peers_per_ip_group():
    """Identities from one IPv4 /16 (or IPv6 /32) fill at most
    max_peers_per_ip_group_per_bucket of a bucket and max_peers_per_ip_group
    of the table (240 identities from one address used to take it whole);
    loopback and private addresses are exempt unless asked."""
    from kadfast.addrbook import ip_prefix

    assert ip_prefix("1.2.3.4", 16, 32) == ip_prefix("1.2.200.9", 16, 32) == "1.2.0.0/16"
    assert ip_prefix("2a00:1450:4001::1", 16, 32) == "2a00:1450::/32"
    assert ip_prefix("::ffff:1.2.3.4", 24, 48) == "1.2.3.0/24" and ip_prefix("nonsense", 16, 32) is None

    node = offline_node()
    sybils = peer_ids(60)
    for i, p in enumerate(sybils):
        node.add_address(p, Multiaddr(f"/ip4/1.2.{i // 250}.{i % 250 + 1}/tcp/4001"))
    admitted = [p for p in sybils if p in node.routing_table_peers()]
    assert 0 < len(admitted) <= 10
    per_bucket: dict[int, int] = {}
    for p in admitted:
        b = node.local_key.bucket_index(Key(p.to_bytes()))
        per_bucket[b] = per_bucket.get(b, 0) + 1
    assert max(per_bucket.values()) <= 2
    honest = peer_ids(8)
    for i, p in enumerate(honest):
        node.add_address(p, Multiaddr(f"/ip4/{20 + i}.9.9.9/tcp/4001"))
    assert all(p in node.routing_table_peers() for p in honest)
    # an admitted peer is still updated; one that left frees its place
    assert node.add_address(admitted[0], Multiaddr("/ip4/1.2.0.1/tcp/4001")) != 4
    node.table.remove(Key(admitted[0].to_bytes()))
    late = peer_ids(200)
    for p in late:  # one of these lands in the freed bucket... or another with room
        node.add_address(p, Multiaddr("/ip4/1.2.7.7/tcp/4001"))
    assert len([p for p in node.routing_table_peers() if p in sybils or p in late]) <= 10
    # private addresses: exempt by default, limited when asked
    for everywhere in (False, True):
        n = offline_node(config=Config(ip_group_limits_everywhere=everywhere))
        local = peer_ids(40)
        for i, p in enumerate(local):
            n.add_address(p, Multiaddr(f"/ip4/10.0.0.{i + 1}/tcp/1"))
        assert (len(n.routing_table_peers()) <= 10) is everywhere


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_peer_whose_request_failed_stays_in_the_table_but_is_not_served():
    from kadfast.kad.pb import MessageReader

    def ids(node, asker, key, framed):
        reply = node.server.handle(asker, KadMessage(MessageType.FIND_NODE, key=key), node.clock(), None, framed)
        if framed:
            from kadfast.kad.pb import decode_message

            (body,) = MessageReader(1 << 20).feed(reply)
            reply = decode_message(body)
        return [p.peer_id for p in reply.closer_peers]

    async def main():
        node = KadNode(config=Config(k=5, request_timeout=5.0),
                       host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        await node.start()
        try:
            gone, asker, *others = peer_ids(12)
            node.add_address(gone, Multiaddr(f"/ip4/127.0.0.1/tcp/{_closed_port()}"))
            for i, p in enumerate(others):
                node.add_address(p, Multiaddr(f"/ip4/10.0.0.{i + 1}/tcp/1"))
            key = gone.to_bytes()  # gone is the closest entry to its own key
            for framed in (False, True):
                got = ids(node, asker, key, framed)
                assert got[0] == gone and len(got) == 5
            with pytest.raises(KadError):
                await node.request(gone, KadMessage(MessageType.FIND_NODE, key=key))
            assert gone in node.routing_table_peers()  # kept: a pending entry may replace it
            for framed in (False, True):
                got = ids(node, asker, key, framed)
                assert gone not in got and len(got) == 5  # still k answers, from the others
            # heard from again (an inbound connection, a reply): served again
            node.update_peer(gone, node.clock(), connected=True)
            for framed in (False, True):
                assert ids(node, asker, key, framed)[0] == gone
        finally:
            await node.stop()

    run_loop(lambda: asyncio.wait_for(main(), 30))


def test_a_lookup_that_met_departed_peers_repairs_its_result():
    """k = 2, over a scripted network that stands in for ``request``. Q knows A
    and B; asked about the target, A and B both name two departed peers G1,
    G2 (closer than anyone live) and so never H, the closest live peer.
    Without the repair round the lookup ends with [A, B]. With it, Q asks A
    and B once for the peers closest to *their own* keys, A names H there,
    Q asks H about the target, and the result is [H, A]."""
    key = lambda p: Key(p.to_bytes())  # noqa: E731
    target = random.Random(5).randbytes(32)
    # the roles by distance to the target: G1 < G2 < H < A < B
    g1, g2, h, a, b = sorted(peer_ids(5), key=lambda p: key(p).distance(Key(target)))
    addr = {p: Multiaddr(f"/ip4/10.9.0.{i + 1}/tcp/4001") for i, p in enumerate((g1, g2, h, a, b))}
    answers = {  # (asked peer, FIND_NODE key) -> peers named
        (a, target): [g1, g2], (b, target): [g1, g2], (h, target): [],
        (a, a.to_bytes()): [a, h], (b, b.to_bytes()): [b],
    }

    def run(repair: bool):
        node = offline_node(config=Config(k=2, repair_lookups=repair))
        asked = []

        async def rpc(peer, msg):
            asked.append((peer, msg.key))
            if peer in (g1, g2):
                raise KadError("gone")
            named = answers[(peer, msg.key)]
            return KadMessage(MessageType.FIND_NODE, key=msg.key,
                              closer_peers=[KadPeer(p, [addr[p]]) for p in named])

        node.request = rpc
        node.add_address(a, addr[a])
        node.add_address(b, addr[b])
        got = run_loop(lambda: asyncio.wait_for(node.get_closest_peers(target), 10))
        return got, asked

    got, asked = run(False)
    assert got == [a, b]                      # H was named by no one
    assert all(k == target for _, k in asked)
    got, asked = run(True)
    assert got == [h, a]
    own = [(p, k) for p, k in asked if k != target]
    assert len(own) == 2 and set(own) == {(a, a.to_bytes()), (b, b.to_bytes())}   # once each
    assert (h, target) in asked


def _scripted_node(n_peers: int, rpc, **config) -> tuple[KadNode, list[PeerId]]:
    """An offline node on the real clock whose request is ``rpc``, knowing ``n_peers`` peers."""
    node = offline_node(config=Config(**config), clock=time.monotonic)
    node.request = rpc
    peers = peer_ids(n_peers)
    for i, p in enumerate(peers):
        node.add_address(p, Multiaddr(f"/ip4/10.8.{i // 200}.{i % 200 + 1}/tcp/4001"))
    return node, peers


def test_lookups_of_a_node_run_side_by_side_in_its_query_pool():
    """Five lookups at once share node.queries; each starts with parallelism
    requests in flight, and each ends with its own result."""
    in_flight: dict[bytes, int] = {}
    most: dict[bytes, int] = {}
    universe: list[PeerId] = []

    async def rpc(peer, msg):
        in_flight[msg.key] = in_flight.get(msg.key, 0) + 1
        most[msg.key] = max(most.get(msg.key, 0), in_flight[msg.key])
        try:
            await asyncio.sleep(0.005 * (1 + peer.to_bytes()[-1] % 7))
        finally:
            in_flight[msg.key] -= 1
        t = Key(msg.key)
        named = sorted(universe, key=lambda p: Key(p.to_bytes()).distance(t))[:4]
        return KadMessage(MessageType.FIND_NODE, key=msg.key,
                          closer_peers=[KadPeer(p, [Multiaddr("/ip4/10.7.0.1/tcp/1")]) for p in named])

    node, peers = _scripted_node(30, rpc, k=4, parallelism=2, max_queries=5)
    universe.extend(peers)
    targets = [random.Random(i).randbytes(32) for i in range(5)]

    async def main():
        tasks = [asyncio.ensure_future(node.get_closest_peers(t)) for t in targets]
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(node.queries) == 5
        assert [in_flight[t] for t in targets] == [2] * 5   # parallelism, per lookup
        with pytest.raises(KadError, match="5 queries"):   # TooManyQueries
            await node.get_closest_peers(targets[0])
        got = await asyncio.gather(*tasks)
        assert len(node.queries) == 0 and not node.tasks
        return got

    got = run_loop(lambda: asyncio.wait_for(main(), 10))
    for t, result in zip(targets, got):
        tk = Key(t)
        assert result == sorted(peers, key=lambda p: Key(p.to_bytes()).distance(tk))[:4]
        assert 2 <= most[t] <= 4   # a stalled lookup may wait on max(k, parallelism)


def test_cancelling_a_lookup_cancels_its_query_and_its_requests(caplog):
    started: list[PeerId] = []
    cancelled: list[PeerId] = []

    async def rpc(peer, msg):
        started.append(peer)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(peer)
            raise

    node, _ = _scripted_node(10, rpc, k=5, parallelism=3)

    async def main():
        lookup = asyncio.ensure_future(node.get_closest_peers(b"x" * 32))
        other = asyncio.ensure_future(node.get_closest_peers(b"y" * 32))
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(node.queries) == 2 and len(started) == 6
        lookup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lookup
        assert len(node.queries) == 1 and len(cancelled) == 3 and len(node.tasks) == 3
        spawned = node.spawn(node.get_closest_peers(b"w" * 32))
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(node.queries) == 2 and len(started) == 9
        await node.stop()   # the other lookup, waited for outside the node's tasks, fails
        with pytest.raises(KadError, match="stopped"):
            await other
        assert spawned.cancelled()
        assert len(node.queries) == 0 and len(cancelled) == 9 and not node.tasks

    run_loop(lambda: asyncio.wait_for(main(), 10))
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_request_and_query_timeouts_come_from_the_pool_timer():
    """Peers that never answer: the lookup moves on after request_timeout
    (parallelism 1: one peer after another) and ends at query_timeout."""
    asked: list[tuple[float, PeerId]] = []

    async def rpc(peer, msg):
        asked.append((time.monotonic(), peer))
        await asyncio.Event().wait()

    node, _ = _scripted_node(10, rpc, k=10, parallelism=1, request_timeout=0.05, query_timeout=0.3)

    async def main():
        t0 = time.monotonic()
        assert await node.get_closest_peers(b"z" * 32) == []
        took = time.monotonic() - t0
        assert 0.29 <= took < 3.0
        assert 3 <= len(asked) <= 6          # one every 50 ms (or a little more)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(asked)]
        assert min(gaps) >= 0.045
        assert len(node.queries) == 0 and not node.tasks

    run_loop(lambda: asyncio.wait_for(main(), 10))


class _FakeStream:
    """What KadNode.serve_stream touches of an inbound stream, recording what the
    server does with it."""

    class _Conn:
        remote_addr = None

        def count_inbound(self, stream, limit):
            return True

        def queued_output(self):
            return 0

        def when_output_drains(self, callback):
            raise AssertionError("nothing waits for output here")

    queued = 0

    def __init__(self, peer):
        self.peer_id = peer
        self.conn = self._Conn()
        self.events: list = []
        self.sink = None

    class _Done:
        def add_done_callback(self, cb):
            pass

    def consume_with(self, sink):
        self.sink = sink
        return self._Done()

    def sink_finished(self):
        self.events.append("sink finished")

    def write(self, data):
        self.events.append(("write", data))

    def close(self):
        self.events.append("close")

    def reset(self):
        self.events.append("reset")


def test_requests_are_counted_and_request_events_are_opt_out():
    from kadfast.kad.node import InboundRequest, RecordStored
    from kadfast.kad.pb import encode_message, frame

    node = offline_node()
    q_all = node.subscribe()
    q_quiet = node.subscribe(inbound_requests=False)
    stream = _FakeStream(peer_ids(1)[0])
    node.serve_stream(stream)
    find = frame(encode_message(KadMessage(MessageType.FIND_NODE, key=b"x" * 32)))
    rec = KadRecord(b"/k", b"v")
    put = frame(encode_message(KadMessage(MessageType.PUT_VALUE, key=rec.key, record=rec)))
    stream.sink(find + find + put)
    assert node.request_counts == {MessageType.FIND_NODE: 2, MessageType.PUT_VALUE: 1}

    def drain(q):
        out = []
        while not q.empty():
            out.append(q.get_nowait())
        return out

    got_all, got_quiet = drain(q_all), drain(q_quiet)
    assert [e.type for e in got_all if isinstance(e, InboundRequest)] == [
        MessageType.FIND_NODE, MessageType.FIND_NODE, MessageType.PUT_VALUE]
    assert not any(isinstance(e, InboundRequest) for e in got_quiet)
    assert any(isinstance(e, RecordStored) for e in got_quiet)   # other events still come
    node.unsubscribe(q_all)
    stream.sink(find)
    assert q_all.empty() and node.request_counts[MessageType.FIND_NODE] == 3


def test_group_commit_holds_replies_until_the_store_committed(tmp_path):
    from kadfast.kad.pb import MessageReader, decode_message, encode_message, frame
    from kadfast.sqlite_store import SqliteStore

    me, asker = Ed25519KeyPair.generate(), peer_ids(1)[0]
    store = SqliteStore(tmp_path / "s.db", me.peer_id, group_commit=True)
    node = offline_node(keypair=me, store=store)
    stream = _FakeStream(asker)
    node.serve_stream(stream)

    def put(i):
        rec = KadRecord(b"/k%d" % i, b"v%d" % i)
        return frame(encode_message(KadMessage(MessageType.PUT_VALUE, key=rec.key, record=rec)))

    def replies():
        out = []
        for e in stream.events:
            if e[0] == "write":
                out += [decode_message(b).type for b in MessageReader(1 << 20).feed(e[1])]
            else:
                out.append(e)
        return out

    find = frame(encode_message(KadMessage(MessageType.FIND_NODE, key=b"x" * 32)))
    stream.sink(find)                                 # nothing pending: answered at once
    assert replies() == [MessageType.FIND_NODE]
    stream.events.clear()
    stream.sink(put(1) + find + put(2))               # a PUT changes the store: replies wait
    stream.sink(b"")                                  # and so does the close
    assert replies() == ["sink finished"]
    assert store.dirty and node.replies_waiting_for_commit == 1

    def on_disk():
        with sqlite3.connect(tmp_path / "s.db") as other:
            return other.execute("SELECT count(*) FROM records").fetchone()[0]

    assert on_disk() == 0
    # meanwhile a FIND_NODE on another stream neither waits nor is held
    other = _FakeStream(asker)
    node.serve_stream(other)
    other.sink(find)
    assert len(other.events) == 1 and other.events[0][0] == "write"
    assert node.replies_waiting_for_commit == 1
    node.commit()
    assert on_disk() == 2 and not store.dirty
    # in order, the close last
    assert replies() == ["sink finished", MessageType.PUT_VALUE, MessageType.FIND_NODE, MessageType.PUT_VALUE, "close"]

    # a commit that fails acknowledges nothing: the waiting stream is reset
    stream2 = _FakeStream(asker)
    node.serve_stream(stream2)
    stream2.sink(put(3))
    assert stream2.events == []

    def failing_commit():
        raise StoreError("disk full")

    store.commit = failing_commit
    node.commit()
    assert stream2.events == ["reset"]


def test_group_commit_store_changed_before_start_is_committed_by_start(tmp_path):
    from kadfast.sqlite_store import SqliteStore

    me = Ed25519KeyPair.generate()
    store = SqliteStore(tmp_path / "s.db", me.peer_id, group_commit=True)
    node = KadNode(me, store=store, host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
    store.put(Record(b"/early", b"v", publisher=me.peer_id), 0.0)   # no loop yet: no commit scheduled
    assert store.dirty

    async def main():
        await node.start()
        try:
            assert not store.dirty
            with sqlite3.connect(tmp_path / "s.db") as other:
                assert other.execute("SELECT count(*) FROM records").fetchone()[0] == 1
            node.store.put(Record(b"/later", b"v", publisher=me.peer_id), node.clock())
            assert store.dirty
            await asyncio.sleep(0)   # the loop's next pass commits
            assert not store.dirty
        finally:
            await node.stop()

    run_loop(lambda: asyncio.wait_for(main(), 20))
    store.close()


def test_put_value_echoes_and_stores_and_validates():
    v = NamespacedValidator()

    class OnlyGood(Validator):
        def validate(self, key, value):
            if value != b"good":
                raise InvalidRecord("not good")

    v.register("strict", OnlyGood())
    node = offline_node(validator=v)
    sender = peer_ids(1)[0]
    events = node.subscribe()
    msg = KadMessage(MessageType.PUT_VALUE, key=b"/any/x", record=KadRecord(b"/any/x", b"v"))
    reply = node.server.handle(sender, msg, node.clock())
    assert reply.type == MessageType.PUT_VALUE and reply.record.key == b"/any/x" and reply.record.value == b"v"
    rec = node.store.get(b"/any/x", node.clock())
    assert rec.value == b"v" and rec.publisher == sender
    assert rec.expires == node.clock() + node.config.record_ttl
    assert isinstance(events.get_nowait(), InboundRequest)
    # a record whose key differs from the message key
    with pytest.raises(KadError, match="differs from the message key"):
        node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=b"/any/y",
                                              record=KadRecord(b"/any/x", b"v")), node.clock())
    # a namespace validator refuses
    with pytest.raises(InvalidRecord):
        node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=b"/strict/a",
                                              record=KadRecord(b"/strict/a", b"bad")), node.clock())
    node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=b"/strict/a", record=KadRecord(b"/strict/a", b"good")), node.clock())
    reply = node.server.handle(sender, KadMessage(MessageType.GET_VALUE, key=b"/strict/a"), node.clock())
    assert reply.record.value == b"good"


def test_put_value_publisher_is_the_sender_not_the_claim():
    """A PUT_VALUE naming another peer (or this node) as publisher is stored
    with the sender as publisher; a replica of our own record coming back
    stays ours (republished by us), a different value under our key does
    not: with unvalidated_records='accept' (last writer wins) it is taken in
    the sender's name, by default ('owner') it is refused."""
    node = offline_node(config=Config(unvalidated_records="accept"))
    sender, victim = peer_ids(2)
    claim = KadRecord(b"/any/p", b"v", publisher=victim)
    node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=claim.key, record=claim), node.clock())
    assert node.store.get(b"/any/p", node.clock()).publisher == sender
    claim = KadRecord(b"/any/q", b"v", publisher=node.peer_id)
    node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=claim.key, record=claim), node.clock())
    assert node.store.get(b"/any/q", node.clock()).publisher == sender
    assert node.store.published_by(node.peer_id) == []
    ours = Record(b"/any/mine", b"v", publisher=node.peer_id, expires=node.clock() + 60)
    node.store.put(ours, node.clock())
    back = KadRecord(b"/any/mine", b"v", publisher=node.peer_id)
    node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=back.key, record=back), node.clock())
    assert node.store.get(b"/any/mine", node.clock()) == ours
    other = KadRecord(b"/any/mine", b"w", publisher=node.peer_id)
    owner = offline_node()
    owner.store.put(Record(b"/any/mine", b"v", publisher=owner.peer_id, expires=owner.clock() + 60), owner.clock())
    with pytest.raises(InvalidRecord, match="owner"):
        owner.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=other.key, record=other), owner.clock())
    assert owner.store.get(b"/any/mine", owner.clock()).publisher == owner.peer_id
    node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=other.key, record=other), node.clock())
    assert node.store.get(b"/any/mine", node.clock()).publisher == sender


def test_records_per_network_are_bounded():
    """Many identities of one network (IPv4 /24) cannot fill the store: past
    max_records_per_ip_group new keys from it are refused, while another
    network still gets room; expiry and removal give the room back;
    overwriting a key it stored, or sending a replica of a record held,
    costs nothing; loopback is exempt."""
    from kadfast.kad.ratelimit import RateLimited

    # every put comes from a new identity of the network: its overwrites
    # need last-writer-wins ('accept'; the default lets only the first change it)
    node = offline_node(config=Config(max_records_per_ip_group=5, max_puts_per_peer_per_second=0,
                                      unvalidated_records="accept"))
    here = Multiaddr("/ip4/1.2.3.4/tcp/4001")

    def put(key, addr, value=b"v", ttl=None):
        rec = KadRecord(key, value, ttl=ttl)
        return node.server.handle(peer_ids(1)[0], KadMessage(MessageType.PUT_VALUE, key=key, record=rec), node.clock(), addr)

    for i in range(5):
        put(b"/a/%d" % i, here, ttl=10 if i == 0 else None)
    with pytest.raises(RateLimited, match=r"1\.2\.3\.0/24"):
        put(b"/a/5", Multiaddr("/ip4/1.2.3.99/tcp/1"))
    assert node.store.get(b"/a/5", node.clock()) is None
    put(b"/a/1", here, value=b"w")  # a key it stored: overwritten, not counted twice
    put(b"/a/1", Multiaddr("/ip4/1.2.3.7/tcp/1"), value=b"w")  # a replica: free
    put(b"/b/0", Multiaddr("/ip4/1.2.4.4/tcp/4001"))  # another /24
    put(b"/c/0", Multiaddr("/ip4/127.0.0.1/tcp/4001"))  # loopback: exempt
    node.remove_record(b"/a/2")
    put(b"/a/6", here)
    node.clock.t += 11
    run_loop(lambda: node.maintenance(node.clock()))  # the sweep drops /a/0
    put(b"/a/7", here)
    with pytest.raises(RateLimited):
        put(b"/a/8", here)


def test_provider_keys_per_network_are_bounded():
    """The same for provider keys: past max_provider_keys_per_ip_group new
    keys from one /24 are ignored (ADD_PROVIDER has no answer); more
    providers of a key it counts already, other networks and the sweep of
    expired providers are as for records."""
    node = offline_node(config=Config(max_provider_keys_per_ip_group=3))
    here = Multiaddr("/ip4/1.2.3.4/tcp/4001")

    def provide(key, addr):
        p = peer_ids(1)[0]
        msg = KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=[KadPeer(p, [addr], 0)])
        assert node.server.handle(p, msg, node.clock(), addr) is None
        return p

    for i in range(3):
        provide(b"k%d" % i, here)
    provide(b"k3", here)
    assert node.store.providers(b"k3", node.clock()) == []
    provide(b"k0", Multiaddr("/ip4/1.2.3.5/tcp/1"))  # a second provider of a counted key
    assert len(node.store.providers(b"k0", node.clock())) == 2
    provide(b"k3", Multiaddr("/ip4/5.6.7.8/tcp/1"))  # another network
    assert len(node.store.providers(b"k3", node.clock())) == 1
    node.clock.t += node.config.provider_ttl + 1
    run_loop(lambda: node.maintenance(node.clock()))  # every provider expired
    provide(b"k4", here)
    assert len(node.store.providers(b"k4", node.clock())) == 1


def test_namespace_records_name_their_sender_and_unvalidated_keys_follow_the_policy():
    """The reference program's record (key = namespace, value = a PeerId)
    must name its sender: no one points a namespace at another peer, while
    each listener may still announce itself (last writer wins) and replicas
    of the value held are taken. Other unvalidated keys: stored by default
    (rust), refused with unvalidated_records='refuse' (go)."""
    node = offline_node()
    alice, bob, mallory = peer_ids(3)

    def put(sender, key, value):
        rec = KadRecord(key, value)
        return node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=key, record=rec), node.clock())

    put(alice, b"chat", alice.to_bytes())
    with pytest.raises(InvalidRecord, match="names another peer"):
        put(mallory, b"chat", bob.to_bytes())
    put(bob, b"chat", alice.to_bytes())  # a replica of the value held
    put(bob, b"chat", bob.to_bytes())  # bob announces himself: last writer wins
    assert node.store.get(b"chat", node.clock()).value == bob.to_bytes()
    put(mallory, b"/app/x", b"anything")  # no validator: stored (rust semantics)
    strict = offline_node(config=Config(unvalidated_records="refuse"))
    with pytest.raises(InvalidRecord, match="no validator"):
        strict.server.handle(alice, KadMessage(MessageType.PUT_VALUE, key=b"/app/x", record=KadRecord(b"/app/x", b"v")), strict.clock())
    strict.server.handle(alice, KadMessage(MessageType.PUT_VALUE, key=b"chat", record=KadRecord(b"chat", alice.to_bytes())), strict.clock())


def test_add_provider_keeps_only_plausible_addresses():
    """A provider that reached us from a public IP and names a victim's
    address beside its own: only its own is stored and handed out."""
    node = offline_node()
    p = peer_ids(1)[0]
    own, victim = Multiaddr("/ip4/5.6.7.8/tcp/4001"), Multiaddr("/ip4/9.9.9.9/tcp/80")
    msg = KadMessage(MessageType.ADD_PROVIDER, key=b"k", provider_peers=[KadPeer(p, [victim, own], 0)])
    node.server.handle(p, msg, node.clock(), Multiaddr("/ip4/5.6.7.8/tcp/50123"))
    [rec] = node.store.providers(b"k", node.clock())
    assert list(rec.addrs) == [own] and node.host.addrbook.addrs(p, node.clock()) == [own]
    reply = node.server.handle(peer_ids(1)[0], KadMessage(MessageType.GET_PROVIDERS, key=b"k"), node.clock())
    assert [pp.addrs for pp in reply.provider_peers] == [[own]]


def test_add_provider_accepts_only_the_sender():
    node = offline_node()
    sender, other = peer_ids(2)
    addr = Multiaddr("/ip4/10.1.1.1/tcp/5")
    msg = KadMessage(MessageType.ADD_PROVIDER, key=b"k", provider_peers=[KadPeer(other, [addr]), KadPeer(sender, [addr])])
    assert node.server.handle(sender, msg, node.clock()) is None
    providers = node.store.providers(b"k", node.clock())
    assert [p.provider for p in providers] == [sender]
    reply = node.server.handle(other, KadMessage(MessageType.GET_PROVIDERS, key=b"k"), node.clock())
    assert [(p.peer_id, p.addrs) for p in reply.provider_peers] == [(sender, [addr])]


def test_maintenance_expires_records_and_applies_pending():
    clock = FakeClock()
    node = offline_node(clock=clock, config=Config(k=1, pending_timeout=5.0))
    events = node.subscribe()
    node.store.put(Record(b"k", b"v", expires=clock() + 10), clock())

    async def main():
        clock.t += 11
        await node.maintenance(clock())
        assert node.store.get(b"k", clock()) is None
        evs = [events.get_nowait() for _ in range(events.qsize())]
        assert RecordExpired(b"k") in evs

    run_loop(main, "asyncio")


def test_operations_without_peers_fail_clearly():
    async def main():
        node = KadNode(host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        await node.start()
        try:
            with pytest.raises(NoKnownPeers):
                await node.bootstrap()
            with pytest.raises(NoKnownPeers):
                await node.get_closest_peers(b"x")
            # a put stores locally even without peers, then misses its quorum
            with pytest.raises(QuorumFailed) as exc:
                await node.put_record(Record(b"/a/b", b"c"), Quorum.ONE)
            assert exc.value.stored == 0
        finally:
            await node.stop()

    run_loop(main)


def _answer(node, asker, t, key, framed):
    from kadfast.kad.pb import MessageReader, decode_message
    reply = node.server.handle(asker, KadMessage(t, key=key), node.clock(), None, framed)
    if framed:
        (body,) = MessageReader(1 << 20).feed(reply)
        reply = decode_message(body)
    return [p.peer_id for p in reply.closer_peers]


def _by_distance(target: bytes, peers):
    t = Key(target)
    return sorted(peers, key=lambda p: t.distance(Key(p.to_bytes())))


def test_answers_draw_from_diverse_ip_groups():
    """Many peers of one IPv4 /16 closest to a key: an answer (FIND_NODE,
    GET_VALUE, GET_PROVIDERS, framed or not) holds the closest
    max_answer_peers_per_ip_group (2) of them and the closest of the
    others, in distance order; they fill it when too few others are known.
    Private addresses are exempt unless ip_group_limits_everywhere; 0 turns
    it off; with no group over its share the answer is by distance alone."""
    table_off = {"max_peers_per_ip_group": 0, "max_peers_per_ip_group_per_bucket": 0}  # the table takes them all

    def build(n_others, sybil_addr=lambda i: f"/ip4/1.2.{i}.1/tcp/4001", **cfg):
        node = offline_node(config=Config(**table_off, **cfg))
        sybils, others = peer_ids(40), peer_ids(n_others)
        for i in range(40):  # in turns, so that both get into the far buckets
            node.add_address(sybils[i], Multiaddr(sybil_addr(i)))
            if i < n_others:
                node.add_address(others[i], Multiaddr(f"/ip4/{20 + i}.7.0.1/tcp/4001"))
        # the far buckets hold k each: some did not get in
        return node, [p for p in sybils if Key(p.to_bytes()) in node.table], \
            [p for p in others if Key(p.to_bytes()) in node.table]

    asker = peer_ids(1)[0]
    node, sybils, others = build(40)
    assert len(sybils) >= 20 and len(others) >= 18 and node.server.crowded_groups == {"1.2.0.0/16"}
    for _ in range(5):
        key = os.urandom(32)
        want = _by_distance(key, _by_distance(key, sybils)[:2] + _by_distance(key, others)[:18])
        for t in (MessageType.FIND_NODE, MessageType.GET_VALUE, MessageType.GET_PROVIDERS):
            for framed in (False, True):
                assert _answer(node, asker, t, key, framed) == want
    # the requester is never in its own answer, and its place goes to the next
    key = os.urandom(32)
    first = _by_distance(key, sybils)[0]
    got = _answer(node, first, MessageType.FIND_NODE, key, True)
    assert first not in got and len(got) == 20 and len(set(got) & set(sybils)) == 2
    # a group that becomes crowded after its members' answers were cached
    node = offline_node(config=Config(**table_off))
    early, late, others = peer_ids(2), peer_ids(38), peer_ids(40)
    for i, p in enumerate(early + others):
        node.add_address(p, Multiaddr(f"/ip4/1.2.{i}.1/tcp/4001" if p in early else f"/ip4/{20 + i}.7.0.1/tcp/4001"))
    for _ in range(20):
        _answer(node, asker, MessageType.FIND_NODE, os.urandom(32), True)
    assert not node.server.crowded_groups
    for i, p in enumerate(late):
        node.add_address(p, Multiaddr(f"/ip4/1.2.{100 + i}.1/tcp/4001"))
    assert node.server.crowded_groups == {"1.2.0.0/16"}
    for _ in range(5):
        got = _answer(node, asker, MessageType.FIND_NODE, os.urandom(32), True)
        assert len(got) == 20 and len(set(got) & set(early + late)) <= 2
    # too few others: the group's other peers fill the answer up to k, by distance
    node, sybils, others = build(5)
    assert len(others) == 5
    key = os.urandom(32)
    for framed in (False, True):
        got = _answer(node, asker, MessageType.FIND_NODE, key, framed)
        assert got == _by_distance(key, others + _by_distance(key, sybils)[:15])
    # off: by distance alone
    node, sybils, others = build(40, max_answer_peers_per_ip_group=0)
    assert not node.server.crowded_groups
    key = os.urandom(32)
    assert _answer(node, asker, MessageType.FIND_NODE, key, True) == _by_distance(key, sybils + others)[:20]
    # private addresses: exempt by default, limited when asked
    def private(i):
        return f"/ip4/10.1.{i}.1/tcp/4001"
    node, sybils, others = build(40, sybil_addr=private)
    assert not node.server.crowded_groups
    key = os.urandom(32)
    assert _answer(node, asker, MessageType.FIND_NODE, key, True) == _by_distance(key, sybils + others)[:20]
    node, sybils, others = build(40, sybil_addr=private, ip_group_limits_everywhere=True)
    got = _answer(node, asker, MessageType.FIND_NODE, key, True)
    assert len(got) == 20 and len(set(got) & set(sybils)) == 2
    # the crowded groups are recomputed by the sweep from the table's members
    for p in sybils:
        node.table.remove(Key(p.to_bytes()))
    node.schedule.last_bootstrap = node.clock()  # no bootstrap lookups towards the made-up peers
    run_loop(lambda: node.maintenance(node.clock()))
    assert not node.server.crowded_groups and set(node.server.key_group) <= {e.key for e in node.table}
    assert not set(node.server.key_group) & {Key(p.to_bytes()) for p in sybils}


def test_unvalidated_records_are_changed_by_their_owner_only():
    """unvalidated_records='owner' (the default): a key no validator checks
    is stored when new; then only its publisher changes the value, others'
    values are refused (and their replicas taken, the publisher kept);
    once it expired, anyone may store it anew. 'accept': last writer wins;
    'refuse': none stored. Another mode is refused on start."""
    assert Config().unvalidated_records == "owner"
    node = offline_node()
    alice, bob = peer_ids(2)

    def put(n, sender, value, key=b"/app/x"):
        return n.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, value)), n.clock())

    put(node, alice, b"v1")
    with pytest.raises(InvalidRecord, match="owner"):
        put(node, bob, b"v2")
    assert put(node, bob, b"v1").record.value == b"v1"  # a replica: taken, still alice's
    assert node.store.get(b"/app/x", node.clock()).publisher == alice
    put(node, alice, b"v2")
    assert node.store.get(b"/app/x", node.clock()).value == b"v2"
    node.clock.t += node.config.record_ttl + 1  # expired: a new key again
    put(node, bob, b"v3")
    assert node.store.get(b"/app/x", node.clock()).publisher == bob
    with pytest.raises(InvalidRecord):
        put(node, alice, b"v4")
    # namespace records (key = namespace, value = the sender's PeerId): each peer announces itself
    put(node, alice, alice.to_bytes(), key=b"chat")
    put(node, bob, bob.to_bytes(), key=b"chat")
    assert node.store.get(b"chat", node.clock()).value == bob.to_bytes()
    lax = offline_node(config=Config(unvalidated_records="accept"))
    put(lax, alice, b"v1")
    put(lax, bob, b"v2")
    assert lax.store.get(b"/app/x", lax.clock()).value == b"v2"
    strict = offline_node(config=Config(unvalidated_records="refuse"))
    with pytest.raises(InvalidRecord, match="no validator"):
        put(strict, alice, b"v1")

    async def bad_mode():
        n = KadNode(config=Config(unvalidated_records="sometimes"))
        try:
            with pytest.raises(ValueError, match="owner, accept or refuse"):
                await n.start()
        finally:
            await n.stop()
    run_loop(bad_mode)


def test_records_per_publisher_are_bounded():
    """One identity, even from a private or loopback address (exempt from the
    network quota), stores at most max_records_per_peer records; changing
    its own values and replicating others' cost nothing; removal and
    expiry give the room back; other identities are not affected."""
    from kadfast.kad.ratelimit import RateLimited

    node = offline_node(config=Config(max_records_per_peer=3, max_puts_per_peer_per_second=0))
    lan = Multiaddr("/ip4/192.168.1.5/tcp/4001")
    mallory, alice = peer_ids(2)

    def put(sender, key, value=b"v", ttl=None):
        rec = KadRecord(key, value, ttl=ttl)
        return node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=key, record=rec), node.clock(), lan)

    put(alice, b"/a/0")
    for i in range(3):
        put(mallory, b"/m/%d" % i, ttl=10 if i == 0 else None)
    with pytest.raises(RateLimited, match="max_records_per_peer"):
        put(mallory, b"/m/3")
    with pytest.raises(RateLimited):
        put(mallory, b"/m/3", value=b"other")
    assert node.store.get(b"/m/3", node.clock()) is None
    put(mallory, b"/m/1", value=b"w")  # its own key: changed, not counted twice
    put(mallory, b"/a/0")  # a replica of alice's record: free, and still hers
    assert node.store.get(b"/a/0", node.clock()).publisher == alice
    put(alice, b"/a/1")
    node.remove_record(b"/m/2")
    put(mallory, b"/m/4")
    with pytest.raises(RateLimited):
        put(mallory, b"/m/5")
    node.clock.t += 11
    run_loop(lambda: node.maintenance(node.clock()))  # the sweep drops /m/0
    put(mallory, b"/m/5")


def test_store_quotas_are_rebuilt_from_a_sqlite_store_on_start(tmp_path):
    """The quotas count what the store holds when the node starts: after a
    restart on the same file, a network (or publisher) that had its share
    still has it, replicas still cost nothing, others still have room."""
    from kadfast.kad.ratelimit import RateLimited
    from kadfast.sqlite_store import SqliteStore

    me = Ed25519KeyPair.generate()
    cfg = Config(max_records_per_ip_group=3, max_records_per_peer=2, max_provider_keys_per_ip_group=2,
                 max_puts_per_peer_per_second=0, max_provider_adds_per_peer_per_second=0)
    here, lan = Multiaddr("/ip4/1.2.3.4/tcp/4001"), Multiaddr("/ip4/192.168.1.5/tcp/4001")
    publisher = peer_ids(1)[0]

    def put(node, key, addr, sender=None, value=b"v"):
        rec = KadRecord(key, value)
        return node.server.handle(sender or peer_ids(1)[0], KadMessage(MessageType.PUT_VALUE, key=key, record=rec), node.clock(), addr)

    def provide(node, key, addr):
        p = peer_ids(1)[0]
        node.server.handle(p, KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=[KadPeer(p, [addr], 0)]), node.clock(), addr)
        return node.store.providers(key, node.clock())

    def new_node():
        store = SqliteStore(tmp_path / "q.db", me.peer_id, clock_offset=0.0)
        return KadNode(me, config=cfg, store=store, clock=FakeClock())

    async def first():
        node = new_node()
        await node.start()
        try:
            for i in range(3):
                put(node, b"/n/%d" % i, here)
            with pytest.raises(RateLimited):
                put(node, b"/n/3", here)
            for i in range(2):
                put(node, b"/p/%d" % i, lan, sender=publisher)
            assert provide(node, b"k0", here) and provide(node, b"k1", here)
        finally:
            await node.stop()
            node.store.close()

    async def second():
        node = new_node()
        assert node.server.record_quota.held_by("1.2.3.0/24") == 0  # not counted before start
        await node.start()
        try:
            with pytest.raises(RateLimited, match="max_records_per_ip_group"):
                put(node, b"/n/3", Multiaddr("/ip4/1.2.3.99/tcp/1"))
            with pytest.raises(RateLimited, match="max_records_per_peer"):
                put(node, b"/p/2", lan, sender=publisher)
            put(node, b"/n/0", here)  # a replica: free
            put(node, b"/p/0", lan, sender=publisher, value=b"w")  # its own record changed
            put(node, b"/n/9", Multiaddr("/ip4/1.2.4.4/tcp/1"))  # another network
            assert provide(node, b"k2", here) == []  # its provider keys are counted too
            assert provide(node, b"k0", Multiaddr("/ip4/1.2.3.5/tcp/1"))
            assert len(node.store) == 6
        finally:
            await node.stop()
            node.store.close()

    run_loop(first)
    run_loop(second)


def test_read_requests_are_rate_limited_per_peer(caplog):
    """FIND_NODE, GET_VALUE and GET_PROVIDERS share one bucket per peer
    (max_reads_per_peer_per_second, rate_limit_burst_seconds deep); over
    it they raise RateLimited (the stream is reset), logged at INFO once a
    minute per peer however many; PUT_VALUE and PING have buckets (or
    none) of their own; 0 turns it off; the default takes 1,000 at once."""
    import logging

    from kadfast.kad.ratelimit import RateLimited

    clock = FakeClock()
    node = offline_node(clock=clock, config=Config(max_reads_per_peer_per_second=2.0, rate_limit_burst_seconds=2.0))
    flood, other = peer_ids(2)
    kinds = [MessageType.FIND_NODE, MessageType.GET_VALUE, MessageType.GET_PROVIDERS]
    for t in kinds + [MessageType.FIND_NODE]:
        node.server.handle(flood, KadMessage(t, key=b"k"), node.clock())
    with caplog.at_level(logging.DEBUG, logger="kadfast.kad"):
        for t in kinds * 5:
            with pytest.raises(RateLimited, match="max_reads_per_peer_per_second"):
                node.server.handle(flood, KadMessage(t, key=b"k"), node.clock(), None, True)
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
    node.server.handle(flood, KadMessage(MessageType.PING), node.clock())
    node.server.handle(flood, KadMessage(MessageType.PUT_VALUE, key=b"/r", record=KadRecord(b"/r", b"v")), node.clock())
    node.server.handle(other, KadMessage(MessageType.FIND_NODE, key=b"k"), node.clock())
    clock.t += 0.5  # one token back
    node.server.handle(flood, KadMessage(MessageType.GET_VALUE, key=b"k"), node.clock())
    with pytest.raises(RateLimited):
        node.server.handle(flood, KadMessage(MessageType.GET_VALUE, key=b"k"), node.clock())
    default = offline_node()
    assert default.config.max_reads_per_peer_per_second == 200.0
    for _ in range(1000):
        default.server.handle(flood, KadMessage(MessageType.FIND_NODE, key=b"k"), default.clock(), None, True)
    with pytest.raises(RateLimited):
        default.server.handle(flood, KadMessage(MessageType.FIND_NODE, key=b"k"), default.clock(), None, True)
    off = offline_node(config=Config(max_reads_per_peer_per_second=0))
    for _ in range(2000):
        off.server.handle(flood, KadMessage(MessageType.FIND_NODE, key=b"k"), off.clock(), None, True)


# -- a loopback network ---------------------------------------------------------
N_NODES = 50


async def start_network(n: int, **config_kw) -> list[KadNode]:
    nodes = []
    for _ in range(n):
        node = KadNode(
            config=Config(**config_kw),
            host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], idle_timeout=600),
        )
        await node.start()
        nodes.append(node)
    boot = nodes[0]
    boot_addr = boot.listen_addrs[0]
    for node in nodes[1:]:
        node.add_address(boot.peer_id, boot_addr)
    await asyncio.gather(*[n.bootstrap() for n in nodes[1:]])
    return nodes


async def gather_limited(coros, limit=25):
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*[one(c) for c in coros])


def test_network_of_50_nodes():
    async def main():
        nodes = await start_network(N_NODES)
        rnd = random.Random(7)
        try:
            # every node knows a good part of the network
            assert min(len(n.table) for n in nodes) >= 10

            # every node finds every other node
            async def find(a, b):
                addrs = await a.find_peer(b.peer_id)
                return b.listen_addrs[0] in addrs

            pairs = [(a, b) for a in nodes for b in nodes if a is not b]
            found = await gather_limited([find(a, b) for a, b in pairs], limit=40)
            assert all(found), f"{found.count(False)} of {len(found)} lookups failed"

            # records put from random nodes are got from others
            keys = []
            for i in range(10):
                src = rnd.choice(nodes)
                key = f"/test/rec-{i}".encode()
                stored = await src.put_record(Record(key, b"value-%d" % i), Quorum.MAJORITY)
                assert stored >= 11
                keys.append(key)
            for i, key in enumerate(keys):
                getter = rnd.choice(nodes)
                res = await getter.get_record(key)
                assert res.best.value == b"value-%d" % i

            # providers announced by several nodes are all found
            providers = rnd.sample(nodes, 5)
            for p in providers:
                assert await p.provide(b"the-key") > 0
            for asker in rnd.sample(nodes, 5):
                got = await asker.get_providers(b"the-key")
                assert {p.peer_id for p in providers} <= set(got)

            # a node that leaves disappears from lookups and routing tables
            leaver = nodes.pop(rnd.randrange(1, len(nodes)))
            await leaver.stop()
            lk = Key(leaver.peer_id.to_bytes())
            for n in nodes:
                await n.get_closest_peers(leaver.peer_id)
            holders = [n for n in nodes if n.table.get(lk) is not None and n.table.get(lk).connected]
            assert not holders
            closest = await nodes[1].get_closest_peers(leaver.peer_id)
            assert leaver.peer_id not in closest
            # a newcomer takes part as usual
            newcomer = KadNode(host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
            await newcomer.start()
            nodes.append(newcomer)
            newcomer.add_address(nodes[0].peer_id, nodes[0].listen_addrs[0])
            await newcomer.bootstrap()
            assert await nodes[5].find_peer(newcomer.peer_id)
        finally:
            await asyncio.gather(*[n.stop() for n in nodes], return_exceptions=True)

    run_loop(lambda: asyncio.wait_for(main(), 240))


def test_routing_events_and_get_record_details():
    async def main():
        nodes = await start_network(6)
        try:
            q = nodes[3].subscribe()
            newcomer = KadNode(host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
            await newcomer.start()
            nodes.append(newcomer)
            newcomer.add_address(nodes[3].peer_id, nodes[3].listen_addrs[0])
            await newcomer.bootstrap()

            async def routed():
                while True:
                    ev = await q.get()
                    if isinstance(ev, RoutingUpdated) and ev.peer == newcomer.peer_id:
                        return ev
            ev = await asyncio.wait_for(routed(), 10)
            assert ev.is_new_peer and newcomer.listen_addrs[0] in ev.addrs

            await nodes[1].put_record(Record(b"/t/k", b"one"), Quorum.ALL if False else 3)
            res = await nodes[4].get_record(b"/t/k", quorum=3)
            assert len(res.records) == 3 and all(r.record.value == b"one" for r in res.records)
            assert all(r.peer is None or isinstance(r.peer, PeerId) for r in res.records)
            with pytest.raises(NotFound):
                await nodes[2].get_record(b"/t/missing")
            with pytest.raises(QuorumFailed):
                await nodes[2].put_record(Record(b"/t/k2", b"x"), Quorum.ALL)  # 20 > network size
        finally:
            await asyncio.gather(*[n.stop() for n in nodes], return_exceptions=True)

    run_loop(lambda: asyncio.wait_for(main(), 120))


def test_modes_decide_whether_kad_is_served():
    async def main():
        server = KadNode(host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        client = KadNode()  # auto: no listen address -> client
        forced = KadNode(config=Config(mode="client"), host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        for n in (server, client, forced):
            await n.start()
        try:
            assert server.server_mode and not client.server_mode and not forced.server_mode
            assert "/ipfs/kad/1.0.0" in server.host.protocols
            assert "/ipfs/kad/1.0.0" not in client.host.protocols
            # a client queries servers but never enters their routing tables
            client.add_address(server.peer_id, server.listen_addrs[0])
            assert await client.get_closest_peers(b"k") == [server.peer_id]
            info = await server.host.identify(client.peer_id)
            assert "/ipfs/kad/1.0.0" not in info.protocols
            assert client.peer_id not in server.routing_table_peers()
            # a private DHT: another protocol name does not mix with the default one
            private = KadNode(config=Config(protocol="/private/kad/1.0.0"),
                              host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
            await private.start()
            try:
                private.add_address(server.peer_id, server.listen_addrs[0])
                assert await private.get_closest_peers(b"k") == []
                assert server.peer_id not in private.routing_table_peers()
            finally:
                await private.stop()
        finally:
            for n in (server, client, forced):
                await n.stop()

    run_loop(lambda: asyncio.wait_for(main(), 60))


def test_republish_and_replication_with_a_fake_clock():
    async def main():
        nodes = await start_network(4)
        clock = FakeClock(0.0)
        writer = nodes[1]
        writer.clock = clock
        try:
            await writer.put_record(Record(b"/t/r", b"v"), 3)
            first = writer.store.get(b"/t/r", clock()).expires
            # another node forgets the record; replication brings it back
            victim = next(n for n in nodes if n is not writer and n.store.get(b"/t/r", n.clock()))
            victim.store.remove(b"/t/r")
            await writer.maintenance(clock())          # starts the timers
            clock.t += writer.config.replication_interval
            await writer.maintenance(clock())
            await until_true(lambda: victim.store.get(b"/t/r", victim.clock()) is not None)
            # the round may still be putting to the others; one still running
            # when the next is due makes that one skipped (no republish)
            await asyncio.wait_for(writer.replication_round, 30)
            # after the republish interval the publisher refreshes the expiry
            clock.t += writer.config.republish_interval
            await writer.maintenance(clock())
            assert writer.store.get(b"/t/r", clock()).expires > first
        finally:
            await asyncio.gather(*[n.stop() for n in nodes], return_exceptions=True)

    run_loop(lambda: asyncio.wait_for(main(), 60))


def test_a_replication_round_works_through_the_store_a_few_records_at_a_time():
    """Hourly replication puts every record held to its k closest peers; with
    a big store that is one lookup per record, so a round runs at most
    max_concurrent_replications of them at once, skips records gone since it
    began, and a round still running when the next is due is not doubled."""
    clock = FakeClock(0.0)
    me = Ed25519KeyPair.generate()
    node = offline_node(keypair=me, clock=clock,
                        config=Config(max_concurrent_replications=3, store=StoreConfig(max_records=100)))
    for i in range(40):
        node.store.put(Record(b"/r/%02d" % i, b"v", publisher=me.peer_id, expires=1e9), 0.0)
    running, most, seen = 0, 0, []
    gate = asyncio.Event()

    async def fake_replicate(rec):
        nonlocal running, most
        running += 1
        most = max(most, running)
        seen.append(rec.key)
        if rec.key == b"/r/05":
            node.store.remove(b"/r/39")          # gone before its turn: skipped
        await gate.wait()
        running -= 1
        return 20

    node.replicate = fake_replicate
    announced = []

    async def fake_announce(key):
        announced.append(key)
        return 20

    node.announce_provider = fake_announce

    async def main():
        await node.maintenance(clock())           # starts the timers
        clock.t += node.config.replication_interval
        await node.maintenance(clock())           # a round starts
        round_ = node.replication_round
        for _ in range(20):                       # a few loop passes: the round's workers start
            await asyncio.sleep(0)
        assert running == 3 and len(seen) == 3
        clock.t += node.config.replication_interval
        await node.maintenance(clock())           # due again while it runs: not doubled
        assert node.replication_round is round_
        gate.set()
        assert await asyncio.wait_for(round_, 10) == 39
        assert most == 3 and sorted(seen) == [b"/r/%02d" % i for i in range(39)]
        # provided keys are republished the same way
        for i in range(5):
            node.store.add_provider(ProviderRecord(b"/p/%d" % i, me.peer_id, (), expires=1e9), clock())
        clock.t += node.config.provider_republish_interval
        await node.maintenance(clock())
        assert await asyncio.wait_for(node.provider_round, 10) == 5
        assert sorted(announced) == [b"/p/%d" % i for i in range(5)]

    run_loop(lambda: main())


async def until_true(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


# -- /ipns/ records: validation and selection on PUT_VALUE and in get_record ----------
class WallClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


T0 = 1_900_000_000.0  # the nodes' wall clock (2030)
IPNS_VALUE = "/ipfs/bafkqaddwgevxmmraojswg33smq"


def forged_from(raw: bytes) -> bytes:
    """``raw`` with its value changed and its sequence raised, in the signed
    data and the V1 fields alike, its signatures kept."""
    import cbor2

    from kadfast.ipns import decode_entry

    e = decode_entry(raw)
    doc = cbor2.loads(e.data)
    doc["Value"], doc["Sequence"] = b"/ipfs/bafkqaaa", doc["Sequence"] + 1
    return dataclass_replace(e, value=doc["Value"], sequence=doc["Sequence"],
                             data=cbor2.dumps(doc, canonical=True)).encode()


def oversized_from(pair, seq: int, eol: float) -> bytes:
    """A correctly signed record over the 10 KiB limit (a padding field in its data)."""
    import cbor2

    from kadfast.ipns import IpnsEntry, create_record, decode_entry

    doc = cbor2.loads(decode_entry(create_record(pair, IPNS_VALUE, seq, eol, v1=False)).data)
    doc["_pad"] = b"p" * 10240
    data = cbor2.dumps(doc, canonical=True)
    return IpnsEntry(data=data, signature_v2=pair.sign(b"ipns-signature:" + data)).encode()


def test_ipns_put_value_keeps_the_better_held_record():
    from kadfast.ipns import create_record, routing_key

    wall = WallClock(T0)
    node = offline_node(wall_clock=wall)
    pair = Ed25519KeyPair.generate()
    key = routing_key(pair.peer_id)
    sender = peer_ids(1)[0]

    def put(value):
        return node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, value)), node.clock())

    s1 = create_record(pair, IPNS_VALUE, 1, T0 + 3600)
    assert put(s1).record.value == s1
    for worse in (create_record(pair, IPNS_VALUE, 0, T0 + 7200),     # lower sequence
                  create_record(pair, IPNS_VALUE, 1, T0 + 1800)):    # same sequence, earlier end of life
        with pytest.raises(InvalidRecord, match="better"):
            put(worse)
        assert node.store.get(key, node.clock()).value == s1
    put(s1)  # the same record again: accepted (replication re-puts it)
    later = create_record(pair, IPNS_VALUE, 1, T0 + 5400)
    put(later)
    assert node.store.get(key, node.clock()).value == later
    # a held record that has expired since loses against any valid one
    wall.t = T0 + 6000
    s0 = create_record(pair, IPNS_VALUE, 0, T0 + 7200)
    put(s0)
    assert node.store.get(key, node.clock()).value == s0
    # unregistered namespaces keep the last put
    for v in (b"b", b"a"):
        node.server.handle(sender, KadMessage(MessageType.PUT_VALUE, key=b"/any/k", record=KadRecord(b"/any/k", v)), node.clock())
    assert node.store.get(b"/any/k", node.clock()).value == b"a"


def test_ipns_put_record_refuses_to_replace_a_better_local_record():
    from kadfast.ipns import create_record, routing_key

    node = offline_node(wall_clock=WallClock(T0))
    pair = Ed25519KeyPair.generate()
    key = routing_key(pair.peer_id)
    s2 = create_record(pair, IPNS_VALUE, 2, T0 + 3600)

    async def main():
        with pytest.raises(QuorumFailed):  # stored locally, no peers to send it to
            await node.put_record(Record(key, s2))
        with pytest.raises(InvalidRecord, match="better"):
            await node.put_record(Record(key, create_record(pair, IPNS_VALUE, 1, T0 + 3600)))
        assert node.store.get(key, node.clock()).value == s2

    run_loop(main, "asyncio")


def test_ipns_forged_stale_expired_and_oversized_puts_reset_the_stream():
    """Two kadfast nodes over loopback: the server refuses, by resetting the
    stream, a forged record (value changed, sequence raised, signatures
    kept), a stale one (lower sequence than held), an expired one and one
    over 10 KiB; the record held stays as it was."""
    from kadfast.ipns import create_record, routing_key
    from kadfast.net import StreamReset

    wall = WallClock(T0)
    pair = Ed25519KeyPair.generate()
    key = routing_key(pair.peer_id)

    async def main():
        server = KadNode(host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]), wall_clock=wall)
        client = KadNode(wall_clock=wall)
        await server.start()
        await client.start()
        try:
            client.add_address(server.peer_id, server.listen_addrs[0])

            async def put(value):
                msg = KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, value))
                return await client.request(server.peer_id, msg)

            def held():
                return server.store.get(key, server.clock()).value

            s1 = create_record(pair, IPNS_VALUE, 1, T0 + 3600)
            assert (await put(s1)).record.value == s1 and held() == s1
            refused = {
                "forged": forged_from(s1),
                "stale": create_record(pair, IPNS_VALUE, 0, T0 + 7200),
                "expired": create_record(pair, IPNS_VALUE, 5, T0 - 1),
                "oversized": oversized_from(pair, 6, T0 + 3600),
                "another key": create_record(Ed25519KeyPair.generate(), IPNS_VALUE, 7, T0 + 3600),
            }
            assert len(refused["oversized"]) > 10240
            for what, value in refused.items():
                with pytest.raises(KadError) as exc:
                    await put(value)
                assert isinstance(exc.value.__cause__, StreamReset), (what, exc.value)
                assert held() == s1, what
            s2 = create_record(pair, IPNS_VALUE, 2, T0 + 3600, v1=False)
            assert (await put(s2)).record.value == s2 and held() == s2
            reply = await client.request(server.peer_id, KadMessage(MessageType.GET_VALUE, key=key))
            assert reply.record.value == s2
        finally:
            await client.stop()
            await server.stop()

    run_loop(lambda: asyncio.wait_for(main(), 30))


def test_ipns_get_record_picks_the_best_and_corrects_a_peer_that_held_a_worse_one():
    from kadfast.ipns import create_record, routing_key
    from kadfast.kad.node import RecordStored

    wall = WallClock(T0)
    pair = Ed25519KeyPair.generate()
    key = routing_key(pair.peer_id)

    async def main():
        a, b = (KadNode(host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]), wall_clock=wall)
                for _ in range(2))
        getter = KadNode(wall_clock=wall)
        nodes = [a, b, getter]
        for n in nodes:
            await n.start()
        try:
            s1 = create_record(pair, IPNS_VALUE, 1, T0 + 3600)
            s2 = create_record(pair, IPNS_VALUE, 2, T0 + 3600)
            for server, value in ((a, s1), (b, s2)):
                getter.add_address(server.peer_id, server.listen_addrs[0])
                msg = KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, value))
                await getter.request(server.peer_id, msg)
            # the getter's own record (a higher sequence) has expired: it is left out
            getter.store.put(Record(key, create_record(pair, IPNS_VALUE, 9, T0 + 10)), getter.clock())
            wall.t = T0 + 20
            stored_on_a = a.subscribe(inbound_requests=False)
            res = await getter.get_record(key, quorum=2)
            assert res.best.value == s2
            assert {pr.peer: pr.record.value for pr in res.records} == {a.peer_id: s1, b.peer_id: s2}

            async def correction():
                while True:
                    ev = await stored_on_a.get()
                    if isinstance(ev, RecordStored) and ev.from_peer == getter.peer_id:
                        return ev
            await asyncio.wait_for(correction(), 10)
            assert a.store.get(key, a.clock()).value == s2
            assert b.request_counts[MessageType.PUT_VALUE] == 1  # b held the best: not sent again
        finally:
            await asyncio.gather(*[n.stop() for n in nodes], return_exceptions=True)

    run_loop(lambda: asyncio.wait_for(main(), 30))
