"""KadServer on its own: built from a routing table, an address book, a store
and validators (no node, no host, no event loop), time given per request."""

from __future__ import annotations

import ast
import inspect
import os

import pytest

from kadfast import Key, Multiaddr, PeerId, RoutingTable
from kadfast.addrbook import AddressBook
from kadfast.errors import ValueTooLarge
from kadfast.kad import server as server_module
from kadfast.kad.events import InboundRequest, RecordStored
from kadfast.kad.node import Config
from kadfast.kad.pb import KadMessage, KadPeer, KadRecord, MessageType, encode_message, frame
from kadfast.kad.ratelimit import RateLimited
from kadfast.kad.server import KadServer
from kadfast.kad.validation import InvalidRecord, NamespacedValidator
from kadfast.store import MemoryStore

NOW = 1000.0
WALL = 1_700_000_000.0


def pid() -> PeerId:
    return PeerId(bytes.fromhex("002408011220") + os.urandom(32))


def make_server(n: int = 60, config: Config | None = None, **kw):
    me = pid()
    cfg = config or Config()
    table = RoutingTable(Key(me.to_bytes()), k=cfg.k)
    book = AddressBook()
    peers = [pid() for _ in range(n)]
    for i, p in enumerate(peers):
        book.add(p, [Multiaddr(f"/ip4/10.0.{i >> 8}.{i & 255}/tcp/4001")], NOW, ttl=3600)
        table.update(Key(p.to_bytes()), p, NOW, True)
    connected = set(peers[::2])
    own = [Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    srv = KadServer(cfg, me, table, book, MemoryStore(me), NamespacedValidator(wall_clock=lambda: WALL),
                    connection=lambda p: p if p in connected else None, own_addrs=lambda: own,
                    wall_clock=lambda: WALL, **kw)
    return srv, peers


def closest_truth(srv: KadServer, target: Key, exclude: PeerId) -> list[PeerId]:
    return [e.value for e in srv.table.closest(target, srv.config.k + 1) if e.value != exclude][:srv.config.k]


def test_find_node_answers_the_k_closest_without_the_requester_framed_or_not():
    srv, peers = make_server()
    asker = peers[3]
    for key in [os.urandom(32) for _ in range(5)] + [p.to_bytes() for p in peers[:5]]:
        msg = KadMessage(MessageType.FIND_NODE, key=key)
        plain = srv.handle(asker, msg, NOW)
        assert [p.peer_id for p in plain.closer_peers] == closest_truth(srv, Key(key), asker)
        assert all(p.connection == (1 if i % 2 == 0 else 0)
                   for p in plain.closer_peers for i in [peers.index(p.peer_id)])
        assert srv.handle(asker, msg, NOW, None, True) == frame(encode_message(plain))
    # our own id: ourselves first, with our addresses
    reply = srv.handle(asker, KadMessage(MessageType.FIND_NODE, key=srv.peer_id.to_bytes()), NOW)
    assert reply.closer_peers[0] == KadPeer(srv.peer_id, [Multiaddr("/ip4/127.0.0.1/tcp/4001")], 1)
    assert srv.request_counts == {MessageType.FIND_NODE: 21}


def test_withheld_entries_are_left_out_until_heard_from():
    srv, peers = make_server()
    target = os.urandom(32)
    first = srv.closer_peers(Key(target), None, NOW)[0].peer_id
    srv.withhold(Key(first.to_bytes()))
    for framed in (False, True):
        reply = srv.handle(peers[0], KadMessage(MessageType.FIND_NODE, key=target), NOW, None, framed)
        assert first.to_bytes() not in (reply if framed else encode_message(reply))
    srv.heard_from(Key(first.to_bytes()))
    assert srv.closer_peers(Key(target), None, NOW)[0].peer_id == first


def test_records_events_and_acceptance_rules():
    events, requests = [], []
    srv, peers = make_server(config=Config(unvalidated_records="owner", max_value_size=100),
                             on_event=events.append, on_request=requests.append)
    alice, bob = peers[0], peers[1]
    put = KadMessage(MessageType.PUT_VALUE, key=b"/app/k", record=KadRecord(b"/app/k", b"v1"))
    assert srv.handle(alice, put, NOW).record.value == b"v1"  # the record echoed
    assert events == [RecordStored(b"/app/k", alice, alice)]
    assert srv.store.get(b"/app/k", NOW).publisher == alice
    # only its owner changes a record no validator checks
    with pytest.raises(InvalidRecord):
        srv.handle(bob, KadMessage(MessageType.PUT_VALUE, key=b"/app/k", record=KadRecord(b"/app/k", b"v2")), NOW)
    with pytest.raises(ValueTooLarge):
        srv.handle(bob, KadMessage(MessageType.PUT_VALUE, key=b"/app/x", record=KadRecord(b"/app/x", b"x" * 101)), NOW)
    got = srv.handle(bob, KadMessage(MessageType.GET_VALUE, key=b"/app/k"), NOW)
    assert got.record.value == b"v1" and got.record.time_received == "2023-11-14T22:13:20Z"
    assert [r.type for r in requests] == [MessageType.PUT_VALUE] * 3 + [MessageType.GET_VALUE]
    assert all(isinstance(r, InboundRequest) for r in requests)
    srv.on_request = None
    srv.handle(bob, KadMessage(MessageType.PING), NOW)
    assert len(requests) == 4 and srv.request_counts[MessageType.PING] == 1


def test_quotas_count_per_network_and_rate_limits_run_on_the_given_time():
    cfg = Config(max_records_per_ip_group=2, max_puts_per_peer_per_second=1, rate_limit_burst_seconds=1)
    srv, peers = make_server(config=cfg)
    here = Multiaddr("/ip4/1.2.3.4/tcp/4001")

    def put(sender, key, now):
        msg = KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, b"v"))
        return srv.handle(sender, msg, now, here)

    put(peers[0], b"/n/0", NOW)
    with pytest.raises(RateLimited):
        put(peers[0], b"/n/1", NOW)   # one a second, and no time passed
    put(peers[0], b"/n/1", NOW + 1)
    assert srv.record_quota.held_by("1.2.3.0/24") == 2
    with pytest.raises(RateLimited, match="max_records_per_ip_group"):
        put(peers[1], b"/n/2", NOW + 2)
    srv.forget_record(b"/n/0")
    put(peers[1], b"/n/2", NOW + 3)


def test_the_server_module_does_no_io():
    tree = ast.parse(inspect.getsource(server_module))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
    assert not imported & {"asyncio", "socket", "selectors", "..net", "kadfast.net"}, imported
