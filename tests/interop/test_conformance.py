"""kadfast's server against rules of the DHT spec that real clients rely on.

* FIND_NODE for a peer that the server's address book knows (here: one that
  is connected) carries that peer's own entry first, even when the peer is a
  DHT client and so not in the routing table (ipfs/specs kad-dht: a server
  MUST answer with the peer's info when it is in its peer store;
  go-libp2p-kad-dht puts it first). A client-mode peer of each implementation
  joins a kadfast server; a server-mode peer of another implementation finds
  it with ``find_peer``.
* GET_PROVIDERS answers carry the providers' addresses: a client-mode peer
  provides through the kadfast server, a peer of another implementation gets
  the provider with its listen address.
* go-libp2p-kad-dht resets a kad stream right after writing a request it no
  longer wants, so the stream's SYN, protocol proposal, request and RST can
  arrive in one read: the go peer's ``cancel_requests`` does that 40 times,
  and only those streams may end, never the connection.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from kadfast import Multiaddr, PeerId
from kadfast.kad.node import KadNode
from kadfast.kad.pb import KadMessage, MessageType, decode_message, encode_message, frame
from kadfast.loop import run as run_loop
from kadfast.net import Host, HostConfig

from .conftest import selected_impls
from .harness import IMPLS, PeerError
from .kadnodes import call, node_maddr, provider_key, start_node, until

pytestmark = pytest.mark.interop

KAD = "/ipfs/kad/1.0.0"
# implementations whose `providers` result carries the providers' addresses
# (rust-libp2p reports provider PeerIds only)
PROVIDER_ADDRS = ("go", "js", "py")


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", selected_impls(metafunc.config))


def other_impl(impl: str, selected: list[str], among=IMPLS) -> str:
    """The next selected implementation after ``impl`` (in IMPLS order,
    wrapping around) that is in ``among``; ``impl`` itself only if no other
    is selected. So with all four, each is the other party once."""
    order = [i for i in IMPLS if i in selected and i in among]
    if not order:
        pytest.fail(f"this test needs one of {', '.join(among)}; run it with all implementations")
    start = IMPLS.index(impl)
    for step in range(1, len(IMPLS) + 1):
        cand = IMPLS[(start + step) % len(IMPLS)]
        if cand in order and cand != impl:
            return cand
    return order[0]




def random_peer_id() -> PeerId:
    return PeerId(bytes.fromhex("002408011220") + os.urandom(32))










async def ask(server: KadNode, msg: KadMessage) -> KadMessage:
    """One kad request to ``server`` from a bare host (no kad protocol of its
    own, so the server does not put it into its routing table)."""
    async with Host(config=HostConfig(listen_addrs=[])) as asker:
        await asyncio.wait_for(asker.dial(Multiaddr(node_maddr(server))), 20)
        stream = await asker.new_stream(server.peer_id, KAD)
        stream.write(frame(encode_message(msg)))
        body = await asyncio.wait_for(stream.read_message(1 << 20), 20)
        stream.close()
    assert body is not None, "the kadfast server closed the stream without a reply"
    return decode_message(body)


async def join_as_client(node: KadNode, client) -> PeerId:
    """``client`` (a peer started with --client) dials ``node``; returns its
    PeerId once kadfast has its identify, which must not list kad."""
    cid = PeerId.from_string(client.peer_id)
    await call(client, "dial", addr=node_maddr(node))
    await until(lambda: cid in node.host.peer_info, what="kadfast has the client's identify")
    protocols = node.host.peer_info[cid].protocols
    assert KAD not in protocols, f"{client.name} runs with --client but lists {KAD}: {protocols}"
    assert "/ipfs/id/1.0.0" in protocols, protocols
    return cid


def test_find_peer_finds_a_dht_client(spawn_peer, impl, interop_impls):
    """A client-mode peer of ``impl`` is connected to a kadfast server, which
    keeps it out of its routing table; a server-mode peer of another
    implementation asks the server and finds it with its listen address."""
    finder_impl = other_impl(impl, interop_impls)
    client = spawn_peer(impl, client=True)
    finder = spawn_peer(finder_impl)
    fid = PeerId.from_string(finder.peer_id)

    async def main():
        node = await start_node()
        try:
            cid = await join_as_client(node, client)
            await call(finder, "dial", addr=node_maddr(node))
            await until(lambda: fid in node.routing_table_peers(), what="the finder in kadfast's table")
            assert cid not in node.routing_table_peers(), "a DHT client went into the routing table"
            assert node.host.connection(cid) is not None

            # the server's own answer: the target's entry first, with its address
            reply = await ask(node, KadMessage(MessageType.FIND_NODE, key=cid.to_bytes()))
            entries = [(str(p.peer_id), [str(a) for a in p.addrs]) for p in reply.closer_peers]
            assert entries and entries[0][0] == client.peer_id, (
                f"kadfast's FIND_NODE answer for the connected DHT client {client.peer_id} "
                f"does not start with the client's entry: {entries}")
            assert client.addrs[0] in entries[0][1], entries[0]

            try:
                found = await call(finder, "find_peer", peer_id=client.peer_id, timeout=30)
            except PeerError as exc:
                raise AssertionError(f"{finder.name} did not find the DHT client {client.name} "
                                     f"through kadfast: {exc}") from None
            assert found["peer_id"] == client.peer_id, found
            assert client.addrs[0] in found["addrs"], found
            assert cid not in node.routing_table_peers()
        finally:
            await node.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))


def test_get_providers_carry_addresses(spawn_peer, impl, interop_impls):
    """A client-mode peer of ``impl`` provides a key through a kadfast server;
    the server's GET_PROVIDERS answer names it with its listen address, and a
    peer of another implementation gets it so."""
    getter_impl = other_impl(impl, interop_impls, among=PROVIDER_ADDRS)
    provider = spawn_peer(impl, client=True)
    getter = spawn_peer(getter_impl)
    gid = PeerId.from_string(getter.peer_id)
    text = f"prov-{uuid.uuid4().hex}"
    key = provider_key(text)

    async def main():
        node = await start_node()
        try:
            pid = await join_as_client(node, provider)
            await call(getter, "dial", addr=node_maddr(node))
            await until(lambda: gid in node.routing_table_peers(), what="the getter in kadfast's table")
            await call(provider, "provide", key=text)
            await until(lambda: node.store.providers(key, node.clock()), what="kadfast stores the provider record")

            reply = await ask(node, KadMessage(MessageType.GET_PROVIDERS, key=key))
            provs = {str(p.peer_id): [str(a) for a in p.addrs] for p in reply.provider_peers}
            assert provider.peer_id in provs, f"kadfast's GET_PROVIDERS answer lacks the provider: {provs}"
            assert provider.addrs[0] in provs[provider.peer_id], provs

            res = await call(getter, "providers", key=text, count=1)
            assert res["providers"] == [provider.peer_id], res
            assert provider.addrs[0] in res["addrs"][provider.peer_id], res
            assert pid not in node.routing_table_peers()
        finally:
            await node.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))


def _need_go(interop_impls):
    if "go" not in interop_impls:
        pytest.fail("this test needs the go peer (its cancel_requests command)")


def test_cancelled_requests_keep_the_connection(spawn_peer, interop_impls):
    """go's ``cancel_requests``: 40 kad streams, each opened, written and reset
    at once; kadfast ends each stream alone and keeps the connection, over
    which a lookup then works."""
    _need_go(interop_impls)
    go = spawn_peer("go")
    gid = PeerId.from_string(go.peer_id)

    async def main():
        node = await start_node()
        try:
            await call(go, "dial", addr=node_maddr(node))
            await until(lambda: node.host.connection(gid) is not None)
            conn = node.host.connection(gid)
            res = await call(go, "cancel_requests", peer_id=str(node.peer_id), count=40, timeout=60)
            assert res["kept"] == 40 and res["conns"] == 1, (
                f"kadfast closed the connection on a stream reset right after its request: {res}")
            assert node.host.connections(gid) == [conn] and conn.is_open

            found = await call(go, "closest", peer_id=str(random_peer_id()))
            assert str(node.peer_id) in found["peers"], found
            await call(go, "ping", peer_id=str(node.peer_id))
            assert node.host.connections(gid) == [conn] and conn.is_open
            assert (await call(go, "connected"))["peers"] == [str(node.peer_id)]
        finally:
            await node.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))


def test_cancelled_requests_go_baseline(spawn_peer, interop_impls):
    """The same against a go-libp2p-kad-dht server: the check itself holds."""
    _need_go(interop_impls)
    server = spawn_peer("go")
    go = spawn_peer("go")
    go.call("dial", addr=server.maddr)
    res = go.call("cancel_requests", peer_id=server.peer_id, count=40, timeout=60)
    assert res["kept"] == 40 and res["conns"] == 1, res
    found = go.call("closest", peer_id=str(random_peer_id()))
    assert server.peer_id in found["peers"], found
