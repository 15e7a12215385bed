"""libp2p QUIC (``/quic-v1``) with real peers: kadfast's QUIC core and its
client shell dial the QUIC listeners of go-libp2p (quic-go) and
rust-libp2p (quinn). Both ends must authenticate each other by libp2p's
TLS certificates: we check the peer's certificate proves the peer we
dialed, the peer checks ours (it lists us as connected only then), and it
refuses a certificate without the libp2p extension.

The other direction too: go's client dials kadfast's QUIC listener
(``connect_only``: the transport's handshake, no identify, which kadfast
does not serve over QUIC yet) and each side proves itself to the other;
go refuses us when we are not the peer it dials (go's peer has the
``connect_only`` command). The go and rust peers' ``--listen`` takes a TCP
and a QUIC address.
"""

from __future__ import annotations

import asyncio

import pytest
from tls_helpers import plain_certificate

from kadfast import Ed25519KeyPair, Multiaddr, PeerId
from kadfast.errors import DialError
from kadfast.loop import run as run_loop
from kadfast.net.quicconn import dial_quic, listen_quic
from kadfast.quic import QuicUpgraded

from .harness import PeerError

pytestmark = pytest.mark.interop

LISTEN = "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/udp/0/quic-v1"


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


#: the peers that listen on QUIC (quic-go, rust-libp2p's quinn)
QUIC_PEERS = ["go", "rust"]


@pytest.mark.parametrize("impl", QUIC_PEERS)
def test_kadfast_dials_the_peer_over_quic(spawn_peer, impl):
    peer = spawn_peer(impl, listen=LISTEN)
    key = Ed25519KeyPair.generate()

    async def main():
        conn = await dial_quic(key, quic_maddr(peer), timeout=10)
        up = await conn.ready
        assert str(up.peer_id) == peer.peer_id  # its certificate proves the peer dialed
        assert up.public_key.encode() and conn.core.is_open
        # it verified our certificate: it holds the connection as ours
        assert await connected(peer, key.peer_id, True)
        conn.close("done")
        assert await asyncio.wait_for(conn.closed, 10)
        assert not await connected(peer, key.peer_id, False)

    run_loop(lambda: asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("impl", QUIC_PEERS)
def test_kadfast_refuses_the_peer_when_it_is_not_the_peer_dialed(spawn_peer, impl):
    peer = spawn_peer(impl, listen=LISTEN)
    other = Ed25519KeyPair.generate().peer_id
    key = Ed25519KeyPair.generate()

    async def main():
        with pytest.raises(DialError, match="not the peer dialed"):
            await dial_quic(key, quic_maddr(peer, str(other)), timeout=10)

    run_loop(lambda: asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("impl", QUIC_PEERS)
def test_the_peer_refuses_a_certificate_without_the_libp2p_extension(spawn_peer, impl):
    peer = spawn_peer(impl, listen=LISTEN)
    key = Ed25519KeyPair.generate()

    async def main():
        try:
            conn = await dial_quic(key, quic_maddr(peer), certificate=plain_certificate(), timeout=10)
        except DialError:
            return  # refused inside the handshake
        # or right after it: the peer closes the connection and never holds it
        reason = await asyncio.wait_for(conn.closed, 10)
        assert "connection closed" in reason
        assert not await connected(peer, key.peer_id, True, timeout=1.0)

    run_loop(lambda: asyncio.wait_for(main(), 60))


def test_go_dials_kadfast_over_quic(spawn_peer):
    peer = spawn_peer("go", listen=LISTEN)
    key = Ed25519KeyPair.generate()

    async def main():
        upgraded: asyncio.Queue = asyncio.Queue()
        listener = await listen_quic(
            key, on_event=lambda addr, core, ev: upgraded.put_nowait(ev) if isinstance(ev, QuicUpgraded) else None)
        try:
            host, port = listener.local_addr
            ours = Multiaddr(f"/ip4/{host}/udp/{port}/quic-v1").with_peer_id(key.peer_id)
            res = await call(peer, "connect_only", addr=str(ours))
            # go's client found our certificate proves the peer it dialed
            assert res["peer_id"] == str(key.peer_id) and res["remote_addr"].endswith("/quic-v1")
            # and our server verified go's
            ev = await asyncio.wait_for(upgraded.get(), 10)
            assert str(ev.peer_id) == peer.peer_id
            assert [c.remote_peer_id for c in listener.connections()] == [ev.peer_id]
        finally:
            listener.close()

    run_loop(lambda: asyncio.wait_for(main(), 60))


def test_go_refuses_kadfast_when_it_is_not_the_peer_it_dials(spawn_peer):
    peer = spawn_peer("go", listen=LISTEN)
    key = Ed25519KeyPair.generate()
    other = Ed25519KeyPair.generate().peer_id

    async def main():
        listener = await listen_quic(key)
        try:
            host, port = listener.local_addr
            wrong = Multiaddr(f"/ip4/{host}/udp/{port}/quic-v1").with_peer_id(other)
            with pytest.raises(PeerError):
                await call(peer, "connect_only", addr=str(wrong), timeout=10)
        finally:
            listener.close()

    run_loop(lambda: asyncio.wait_for(main(), 60))
