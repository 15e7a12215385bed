"""libp2p QUIC (``/quic-v1``) with real peers: go-libp2p (quic-go) and
rust-libp2p (quinn).

The transport: both ends authenticate each other by libp2p's TLS
certificates (we check that the peer's proves the peer we dialed, the peer
checks ours and lists us as connected only then, and refuses a
certificate without the libp2p extension), in both directions.

Over it, the protocols of the host and of kad, with the peer and kadfast
each listening on QUIC only (so that nothing can go over TCP): the peer
joins kadfast (identify both ways, the addresses announced are QUIC
ones), ping, FIND_NODE both ways, a record put by each side got by the
other, provider records both ways. The go and rust peers' ``--listen``
takes a TCP and a QUIC address.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from tls_helpers import plain_certificate

from kadfast import Ed25519KeyPair, Multiaddr, PeerId
from kadfast.errors import DialError, DialWrongPeer
from kadfast.kad.node import Quorum
from kadfast.loop import run as run_loop
from kadfast.net import Host, HostConfig
from kadfast.net.quicconn import QuicConnection
from kadfast.store import Record

from .harness import PeerError
from .kadnodes import node_maddr, provider_key, start_node, until

pytestmark = pytest.mark.interop

LISTEN = "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/udp/0/quic-v1"
QUIC_ONLY = "/ip4/127.0.0.1/udp/0/quic-v1"


def quic_maddr(peer, peer_id: str | None = None) -> Multiaddr:
    quic = [a for a in peer.addrs if a.endswith("/quic-v1")]
    assert quic, f"the peer announces no QUIC address: {peer.addrs}"
    return Multiaddr(quic[0]).with_peer_id(PeerId.from_string(peer_id or peer.peer_id))


async def call(peer, cmd, **args):
    """The control protocol blocks; keep the loop running meanwhile."""
    return await asyncio.to_thread(peer.call, cmd, **args)


async def connected(peer, ours: PeerId, want: bool, timeout: float = 10.0) -> bool:
    """Whether the peer lists ``ours`` as connected, polled until it is
    ``want`` or the timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        now = str(ours) in (await call(peer, "connected"))["peers"]
        if now == want or asyncio.get_running_loop().time() > deadline:
            return now
        await asyncio.sleep(0.05)


def quic_host(**kw) -> Host:
    return Host(config=HostConfig(listen_addrs=[QUIC_ONLY], **kw))


#: the peers that listen on QUIC (quic-go, rust-libp2p's quinn)
QUIC_PEERS = ["go", "rust"]


@pytest.mark.parametrize("impl", QUIC_PEERS)
def test_kadfast_dials_the_peer_over_quic(spawn_peer, impl):
    peer = spawn_peer(impl, listen=LISTEN)

    async def main():
        async with quic_host() as host:
            conn = await host.dial(quic_maddr(peer))
            assert isinstance(conn, QuicConnection)
            assert str(conn.remote_peer_id) == peer.peer_id  # its certificate proves the peer dialed
            # it verified our certificate: it holds the connection as ours
            assert await connected(peer, host.peer_id, True)
            # identify and ping over the QUIC connection
            info = await host.identify(conn.remote_peer_id, timeout=10)
            assert any(str(a).endswith("/quic-v1") for a in info.listen_addrs)
            assert str(info.observed_addr).endswith("/quic-v1")
            assert await host.ping(conn.remote_peer_id) < 5.0
            conn.close("done")
            assert await asyncio.wait_for(conn.closed, 10)
            assert not await connected(peer, host.peer_id, False)

    run_loop(lambda: asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("impl", QUIC_PEERS)
def test_kadfast_refuses_the_peer_when_it_is_not_the_peer_dialed(spawn_peer, impl):
    peer = spawn_peer(impl, listen=LISTEN)
    other = Ed25519KeyPair.generate().peer_id

    async def main():
        async with quic_host() as host:
            with pytest.raises(DialWrongPeer, match=peer.peer_id):
                await host.dial(quic_maddr(peer, str(other)))
            assert host.usage().pending == 0 and not host.connected_peers()

    run_loop(lambda: asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("impl", QUIC_PEERS)
def test_the_peer_refuses_a_certificate_without_the_libp2p_extension(spawn_peer, impl):
    peer = spawn_peer(impl, listen=LISTEN)

    async def main():
        async with quic_host(dial_timeout=5.0) as host:
            host.tls_certificate = plain_certificate()
            try:
                conn = await host.dial(quic_maddr(peer))
            except DialError:
                pass  # refused inside the handshake
            else:
                # or right after it: the peer closes the connection and never holds it
                assert "connection closed" in await asyncio.wait_for(conn.closed, 10)
            assert not await connected(peer, host.peer_id, True, timeout=1.0)

    run_loop(lambda: asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("impl", QUIC_PEERS)
def test_the_peer_dials_kadfast_over_quic(spawn_peer, impl):
    peer = spawn_peer(impl, listen=LISTEN)

    async def main():
        async with quic_host() as host:
            ours = host.listen_addrs[0].with_peer_id(host.peer_id)
            # "dial" returns once the peer identified us over QUIC
            res = await call(peer, "dial", addr=str(ours))
            assert res.get("peer_id", str(host.peer_id)) == str(host.peer_id)
            pid = PeerId.from_string(peer.peer_id)
            conn = host.connection(pid)
            assert isinstance(conn, QuicConnection) and not conn.initiator
            info = await host.identify_service.wait(pid, 10)  # and we identified the peer
            assert info.agent_version
            assert await host.ping(pid) < 5.0

    run_loop(lambda: asyncio.wait_for(main(), 60))


def test_go_refuses_kadfast_when_it_is_not_the_peer_it_dials(spawn_peer):
    peer = spawn_peer("go", listen=LISTEN)
    other = Ed25519KeyPair.generate().peer_id

    async def main():
        async with quic_host() as host:
            wrong = host.listen_addrs[0].with_peer_id(other)
            with pytest.raises(PeerError):
                await call(peer, "connect_only", addr=str(wrong), timeout=10)

    run_loop(lambda: asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("impl", QUIC_PEERS)
def test_kad_both_ways_over_quic_only(spawn_peer, impl):
    """Both sides listen on QUIC only: every exchange below goes over QUIC."""
    peer = spawn_peer(impl, listen=QUIC_ONLY)
    pid = PeerId.from_string(peer.peer_id)

    async def main():
        node = await start_node(listen=(QUIC_ONLY,))
        try:
            assert all(str(a).endswith("/quic-v1") for a in node.listen_addrs)
            await call(peer, "dial", addr=node_maddr(node))
            node.add_address(pid, quic_maddr(peer).without_peer_id())
            await until(lambda: pid in node.routing_table_peers())
            await until(lambda: str(node.peer_id) in peer.call("routing_table")["peers"])
            assert isinstance(node.host.connection(pid), QuicConnection)

            # FIND_NODE: kadfast asks the peer, the peer asks kadfast
            found = await node.get_closest_peers(PeerId(bytes.fromhex("002408011220") + uuid.uuid4().bytes * 2))
            assert pid in found
            res = await call(peer, "closest", peer_id=str(PeerId(bytes.fromhex("002408011220") + uuid.uuid4().bytes * 2)))
            assert str(node.peer_id) in res["peers"], res

            # records both ways
            key = f"/kadfast/{uuid.uuid4().hex}"
            assert await node.put_record(Record(key.encode(), b"from-kadfast"), Quorum.ONE) == 1
            assert (await call(peer, "get", key=key))["value"] == "from-kadfast"
            key2 = f"/kadfast/{uuid.uuid4().hex}"
            await call(peer, "put", key=key2, value="from-peer", quorum=1)
            assert node.store.get(key2.encode(), node.clock()).value == b"from-peer"
            node.store.remove(key2.encode())  # make get_record ask the network
            got = await node.get_record(key2.encode())
            assert got.best.value == b"from-peer" and any(r.peer == pid for r in got.records)

            # providers both ways
            text = f"prov-{uuid.uuid4().hex}"
            assert await node.provide(provider_key(text)) == 1
            provs = await call(peer, "providers", key=text, count=1)
            assert str(node.peer_id) in provs["providers"], provs
            text2 = f"prov-{uuid.uuid4().hex}"
            await call(peer, "provide", key=text2)
            await until(lambda: node.store.providers(provider_key(text2), node.clock()))
            assert (await node.get_providers(provider_key(text2))).get(pid)
            # still the one QUIC connection
            assert isinstance(node.host.connection(pid), QuicConnection)
        finally:
            await node.stop()

    run_loop(lambda: asyncio.wait_for(main(), 150))


def test_a_mixed_network_meets_through_a_kadfast_server(spawn_peer, interop_impls):
    """js on TCP only, go on QUIC only, rust on both, and a kadfast server on
    both that each joins by the transport it has: records and provider
    records put by one are found by the others, and each finds the others'
    addresses, whichever transports they are on."""
    if "js" not in interop_impls:
        pytest.fail("this test needs the js peer; run it with all implementations")
    js = spawn_peer("js")  # TCP only: the js peer has no QUIC transport
    go = spawn_peer("go", listen=QUIC_ONLY)
    rust = spawn_peer("rust", listen=LISTEN)
    assert all("/tcp/" in a for a in js.addrs) and all(a.endswith("/quic-v1") for a in go.addrs)

    async def main():
        boot = await start_node(listen=("/ip4/127.0.0.1/tcp/0", QUIC_ONLY))
        try:
            tcp_addr = next(str(a.with_peer_id(boot.peer_id)) for a in boot.listen_addrs if "/tcp/" in str(a))
            quic_addr = next(str(a.with_peer_id(boot.peer_id)) for a in boot.listen_addrs if "/quic-v1" in str(a))
            await call(js, "dial", addr=tcp_addr)
            await call(go, "dial", addr=quic_addr)
            await call(rust, "dial", addr=quic_addr)
            await until(lambda: len(boot.routing_table_peers()) == 3)
            by_peer = {str(p): boot.host.connection(p) for p in boot.routing_table_peers()}
            assert isinstance(by_peer[go.peer_id], QuicConnection) and isinstance(by_peer[rust.peer_id], QuicConnection)
            assert not isinstance(by_peer[js.peer_id], QuicConnection)
            for p in (js, go, rust):
                await call(p, "bootstrap")

            # each finds the others' addresses through the server
            found = await call(go, "find_peer", peer_id=js.peer_id)
            assert js.addrs[0] in found["addrs"], found
            found = await call(js, "find_peer", peer_id=go.peer_id)
            assert go.addrs[0] in found["addrs"], found
            found = await call(js, "find_peer", peer_id=rust.peer_id)
            assert {a for a in rust.addrs} <= set(found["addrs"]), found

            # records: every writer's is read by the other two
            peers = {"js": js, "go": go, "rust": rust}
            for writer, p in peers.items():
                key = f"/kadfast/{writer}-{uuid.uuid4().hex}"
                # stored by the closest of the others (kadfast or rust: which one depends on the key)
                await call(p, "put", key=key, value=f"from-{writer}", quorum=1)
                for reader, q in peers.items():
                    if reader != writer:
                        got = await call(q, "get", key=key)
                        assert got["value"] == f"from-{writer}", (writer, reader, got)

            # provider records likewise
            for writer, p in peers.items():
                text = f"prov-{writer}-{uuid.uuid4().hex}"
                await call(p, "provide", key=text)
                for reader, q in peers.items():
                    if reader != writer:
                        provs = await call(q, "providers", key=text, count=1)
                        assert p.peer_id in provs["providers"], (writer, reader, provs)
        finally:
            await boot.stop()

    run_loop(lambda: asyncio.wait_for(main(), 150))
