"""kadfast's Kademlia against real peers (rust, go, js, py): FIND_NODE both
ways, records and provider records in both directions, the FIND_NODE replies
of a peer that has met a thousand peers, a kadfast bootstrap node through
which a js and a rust peer find each other, and JSON request/response with
the rust peer both ways."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

import pytest

from kadfast import Multiaddr, PeerId
from kadfast.kad.node import Config, KadNode, Quorum
from kadfast.kad.pb import KadMessage, MessageType, decode_message, encode_message, frame
from kadfast.loop import run as run_loop
from kadfast.reqresp import JsonRequestResponse
from kadfast.store import Record

from .conftest import selected_impls
from .kadnodes import call, node_maddr, provider_key, start_node, until

pytestmark = pytest.mark.interop


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", selected_impls(metafunc.config))












def test_kad_both_ways(spawn_peer, impl):
    peer = spawn_peer(impl)
    pid = PeerId.from_string(peer.peer_id)

    async def main():
        node = await start_node()
        try:
            # the peer joins through kadfast; kadfast knows the peer
            await call(peer, "dial", addr=node_maddr(node))
            node.add_address(pid, Multiaddr(peer.addrs[0]))
            await until(lambda: pid in node.routing_table_peers())
            await until(lambda: str(node.peer_id) in peer.call("routing_table")["peers"])

            # FIND_NODE: kadfast asks the peer, the peer asks kadfast
            found = await node.get_closest_peers(PeerId(bytes.fromhex("002408011220") + uuid.uuid4().bytes * 2))
            assert pid in found
            res = await call(peer, "closest", peer_id=str(PeerId(bytes.fromhex("002408011220") + uuid.uuid4().bytes * 2)))
            assert str(node.peer_id) in res["peers"], res

            # a record put by kadfast is got by the peer
            key = f"/kadfast/{uuid.uuid4().hex}"
            stored = await node.put_record(Record(key.encode(), b"from-kadfast"), Quorum.ONE)
            assert stored == 1
            got = await call(peer, "get", key=key)
            assert got["value"] == "from-kadfast"

            # a record put by the peer is stored by kadfast and got back
            key2 = f"/kadfast/{uuid.uuid4().hex}"
            await call(peer, "put", key=key2, value="from-peer", quorum=1)
            assert node.store.get(key2.encode(), node.clock()).value == b"from-peer"
            node.store.remove(key2.encode())  # make get_record ask the network
            res = await node.get_record(key2.encode())
            assert res.best.value == b"from-peer" and any(r.peer == pid for r in res.records)

            # providers: kadfast provides, the peer finds it; and the other way
            text = f"prov-{uuid.uuid4().hex}"
            assert await node.provide(provider_key(text)) == 1
            provs = await call(peer, "providers", key=text, count=1)
            assert str(node.peer_id) in provs["providers"], provs
            text2 = f"prov-{uuid.uuid4().hex}"
            await call(peer, "provide", key=text2)
            await until(lambda: node.store.providers(provider_key(text2), node.clock()))
            got = await node.get_providers(provider_key(text2))
            assert got.get(pid), got
        finally:
            await node.stop()

    run_loop(lambda: asyncio.wait_for(main(), 150))


def test_largest_record_value_round_trips(spawn_peer, impl):
    """The largest value a put sends (``MAX_VALUE_SIZE``, with a key of
    ``MAX_KEY_SIZE``) is stored by the peer's server and read back both by
    kadfast and by the peer, even though the peer has met many peers (its
    GET_VALUE answer carries 20 closer peers beside the record); one byte
    more is refused before anything is sent, and so never stored."""
    from kadfast.kad.node import ValueTooLarge
    from kadfast.kad.pb import MAX_KEY_SIZE, MAX_VALUE_SIZE

    peer = spawn_peer(impl)
    # 20 made-up peers: the answer carries 20 closer peers; no more, since
    # rust shortens the TTL of a record it is not among the k closest to
    # (by half per table entry between it and the key beyond k)
    assert peer.call("kad_fill", count=20, seed=11, timeout=120)["routing_table"] >= 20
    pid = PeerId.from_string(peer.peer_id)
    key = "/kadfast/" + uuid.uuid4().hex
    if impl != "py":  # py-libp2p 0.8 drops FIND_NODE for long keys that are not PeerIds
        key += "k" * (MAX_KEY_SIZE - len(key))
    value = os.urandom(MAX_VALUE_SIZE // 2).hex()  # the control protocol carries text

    async def main():
        writer = KadNode(config=Config(mode="client"))
        reader = KadNode(config=Config(mode="client"))
        for n in (writer, reader):
            await n.start()
        try:
            writer.add_address(pid, Multiaddr(peer.addrs[0]))
            reader.add_address(pid, Multiaddr(peer.addrs[0]))
            assert await writer.put_record(Record(key.encode(), value.encode())) >= 1
            # the peer reads it back (rust stores a put after it answered: a
            # get right behind the put could still miss it)
            assert (await call(peer, "get", key=key))["value"] == value
            res = await reader.get_record(key.encode())
            assert res.best.value == value.encode() and any(r.peer == pid for r in res.records)
            with pytest.raises(ValueTooLarge, match=f"limit of {MAX_VALUE_SIZE} bytes"):
                await writer.put_record(Record(key[:-1].encode(), value.encode() + b"x"))
        finally:
            for n in (writer, reader):
                await n.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))
    with pytest.raises(Exception):  # noqa: B017 - however the peer reports the miss
        peer.call("get", key=key[:-1], timeout=10)


def xor_distance(a: bytes, b: bytes) -> int:
    """Kademlia distance of two keys (sha256 of their bytes)."""
    return int.from_bytes(hashlib.sha256(a).digest(), "big") ^ int.from_bytes(hashlib.sha256(b).digest(), "big")


def test_find_node_from_a_full_routing_table(spawn_peer, impl):
    """The peer has met 1,000 random peers (``kad_fill``); a FIND_NODE from
    kadfast for a random key gets k = 20 of them back, each with its address,
    and they are the closest ones in the peer's table."""
    peer = spawn_peer(impl)
    filled = peer.call("kad_fill", count=1000, seed=7, timeout=120)["routing_table"]
    assert filled >= 100, f"routing table of {filled} entries after meeting 1,000 peers"
    pid = PeerId.from_string(peer.peer_id)
    before = set(peer.call("routing_table")["peers"])

    async def main():
        node = await start_node()
        try:
            await asyncio.wait_for(node.host.dial(Multiaddr(peer.maddr)), 20)
            replies = []
            for _ in range(3):
                key = PeerId(bytes.fromhex("002408011220") + os.urandom(32)).to_bytes()
                stream = await node.host.new_stream(pid, "/ipfs/kad/1.0.0")
                stream.write(frame(encode_message(KadMessage(MessageType.FIND_NODE, key=key))))
                body = await asyncio.wait_for(stream.read_message(1 << 20), 20)
                stream.close()
                assert body is not None, "the peer closed the stream without a reply"
                replies.append((key, decode_message(body)))
            return str(node.peer_id), replies
        finally:
            await node.stop()

    requester, replies = run_loop(lambda: asyncio.wait_for(main(), 90))
    after = set(peer.call("routing_table")["peers"])
    assert len(after) >= filled, (len(after), filled)
    # a peer may still change its table meanwhile (js pings the oldest entry of
    # a full bucket and drops it when the made-up peer does not answer), so the
    # reply is checked against the entries it held before and after the requests
    stable = before & after
    assert len(stable) >= filled * 0.9, (len(stable), filled)
    for key, msg in replies:
        assert msg.type == MessageType.FIND_NODE
        got = [str(p.peer_id) for p in msg.closer_peers]
        assert requester not in got, "the reply names the requester itself"

        def dist(t, key=key):
            return xor_distance(PeerId.from_string(t).to_bytes(), key)
        # the peer may have put kadfast (the requester) into its table. A peer
        # that leaves the requester out before it takes the 20 closest answers
        # with 20; py-libp2p takes the 20 closest and then leaves the requester
        # out, so when the requester is among them its reply has 19
        expected = {20}
        if requester in after and requester in sorted(after, key=dist)[:20]:
            expected = {19, 20}
        assert len(got) in expected and len(set(got)) == len(got), got
        assert all(p.addrs for p in msg.closer_peers), [(str(p.peer_id), p.addrs) for p in msg.closer_peers]
        assert set(got) <= before | after, set(got) - (before | after)
        for p in msg.closer_peers:
            assert all(str(a).startswith("/ip4/127.") and str(a).endswith("/tcp/1") for a in p.addrs), p.addrs
        # the 20 closest entries of the table, by kadfast's XOR metric: no entry
        # the table held throughout is left out for a farther one
        farthest = max(dist(t) for t in got)
        passed_over = sorted(t for t in stable - set(got) if dist(t) < farthest)
        assert not passed_over, f"{len(passed_over)} closer entries left out: {passed_over}"
        if before == after:
            nearest = sorted(after, key=dist)[:20]
            assert set(got) == set(nearest), f"{len(set(got) - set(nearest))} of the 20 are not among the closest"


def test_kadfast_bootstrap_node_joins_js_and_rust(spawn_peer, interop_impls):
    for needed in ("js", "rust"):
        if needed not in interop_impls:
            pytest.fail(f"this test needs the {needed} peer; run it with all implementations")
    js = spawn_peer("js")
    rust = spawn_peer("rust")

    async def main():
        boot = await start_node()
        try:
            await call(js, "dial", addr=node_maddr(boot))
            await call(rust, "dial", addr=node_maddr(boot))
            await until(lambda: len(boot.routing_table_peers()) == 2)
            found = await call(js, "find_peer", peer_id=rust.peer_id)
            assert rust.addrs[0] in found["addrs"], found
            found = await call(rust, "find_peer", peer_id=js.peer_id)
            assert js.addrs[0] in found["addrs"], found
        finally:
            await boot.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))


def test_json_request_response_with_rust(spawn_peer, interop_impls):
    if "rust" not in interop_impls:
        pytest.fail("this test needs the rust peer")
    rust = spawn_peer("rust")
    rid = PeerId.from_string(rust.peer_id)

    async def main():
        node = await start_node()
        rr = JsonRequestResponse(node.host)

        async def handler(peer, body):
            return {"echo": body, "from": str(node.peer_id)}

        rr.set_handler(handler)
        try:
            reply = await rr.request(rid, {"hello": [1, 2, 3]}, addrs=[Multiaddr(rust.addrs[0])])
            assert reply["echo"] == {"hello": [1, 2, 3]} and reply["peer_id"] == rust.peer_id
            res = await call(rust, "request", peer_id=str(node.peer_id), body={"n": 42})
            assert res["response"] == {"echo": {"n": 42}, "from": str(node.peer_id)}
        finally:
            await node.stop()

    run_loop(lambda: asyncio.wait_for(main(), 60))
