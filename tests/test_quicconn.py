"""The asyncio shells of QUIC (kadfast.net.quicconn) on loopback UDP: a
dial to a listener, the listener's limits, and what it drops."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kadfast import Ed25519KeyPair, Multiaddr
from kadfast.errors import DialError
from kadfast.loop import run as run_loop
from kadfast.net.quicconn import dial_quic, listen_quic, quic_address
from kadfast.quic import QuicUpgraded

KA, KB = Ed25519KeyPair.from_seed(b"\x21" * 32), Ed25519KeyPair.from_seed(b"\x22" * 32)


def addr_of(listener, key=KB) -> Multiaddr:
    host, port = listener.local_addr
    return Multiaddr(f"/ip4/{host}/udp/{port}/quic-v1").with_peer_id(key.peer_id)


def test_quic_address():
    assert quic_address(Multiaddr("/ip4/127.0.0.1/udp/4001/quic-v1")) == ("127.0.0.1", 4001)
    assert quic_address(Multiaddr("/ip6/::1/udp/4001/quic-v1").with_peer_id(KA.peer_id)) == ("::1", 4001)
    for bad in ("/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic", "/ip4/127.0.0.1/udp/4001"):
        with pytest.raises(ValueError):
            quic_address(Multiaddr(bad))


def test_a_dial_and_its_listener_authenticate_each_other():
    async def main():
        seen: asyncio.Queue = asyncio.Queue()
        listener = await listen_quic(KB, on_event=lambda a, c, ev: seen.put_nowait(ev))
        try:
            conn = await dial_quic(KA, addr_of(listener), timeout=10)
            assert (await conn.ready).peer_id == KB.peer_id
            ev = await asyncio.wait_for(seen.get(), 10)
            assert ev == QuicUpgraded(KA.peer_id, KA.public_key)
            assert [c.remote_peer_id for c in listener.connections()] == [KA.peer_id]
            conn.close()
            assert await asyncio.wait_for(conn.closed, 10)
            # the listener lets the connection go once the peer closed it
            while listener.connections():
                await asyncio.wait_for(seen.get(), 10)
        finally:
            listener.close()

    run_loop(lambda: asyncio.wait_for(main(), 60))


def test_the_listener_bounds_connections_per_ip():
    async def main():
        listener = await listen_quic(KB, max_per_ip=1)
        try:
            first = await dial_quic(KA, addr_of(listener), timeout=10)
            with pytest.raises(DialError, match="timed out"):
                await dial_quic(KA, addr_of(listener), timeout=1.0)
            assert listener.refused >= 1 and len(listener.connections()) == 1
            first.close()
        finally:
            listener.close()

    run_loop(lambda: asyncio.wait_for(main(), 60))


def test_the_listener_drops_what_opens_no_connection():
    async def main():
        listener = await listen_quic(KB)
        try:
            host, port = listener.local_addr
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x00" * 1300, (host, port))  # not a QUIC Initial
                s.sendto(b"\xc0" + b"\x00" * 50, (host, port))  # a long header, too short for an Initial
            # a dial after them still works, and they made no connection
            conn = await dial_quic(KA, addr_of(listener), timeout=10)
            assert len(listener.connections()) == 1 and listener.refused == 0
            conn.close()
        finally:
            listener.close()

    run_loop(lambda: asyncio.wait_for(main(), 60))


def test_a_dial_to_the_wrong_peer_fails():
    async def main():
        listener = await listen_quic(KB)
        try:
            with pytest.raises(DialError, match="not the peer dialed"):
                await dial_quic(KA, addr_of(listener, key=KA), timeout=10)
        finally:
            listener.close()

    run_loop(lambda: asyncio.wait_for(main(), 60))
