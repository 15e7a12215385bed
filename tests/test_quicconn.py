"""QUIC in the host (kadfast.net.quicconn) on loopback UDP: hosts dial and
listen on ``/udp/N/quic-v1``, identify, ping and protocol streams over it,
QUIC preferred over TCP with TCP as the fallback, the host's limits on
inbound QUIC connections, and what the endpoint drops."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kadfast import Multiaddr
from kadfast.errors import DialError, DialWrongPeer
from kadfast.keys import Ed25519KeyPair
from kadfast.loop import run as run_loop
from kadfast.net import ConnectionClosed, Host, HostConfig
from kadfast.net.connection import Connection
from kadfast.net.quicconn import QuicConnection, quic_address, quic_multiaddr

QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
TCP = "/ip4/127.0.0.1/tcp/0"
ECHO = "/kadfast-test/echo/1.0.0"


def run(main, timeout=60):
    run_loop(lambda: asyncio.wait_for(main(), timeout))


def host(*listen, **kw) -> Host:
    return Host(config=HostConfig(listen_addrs=list(listen), **kw))


def quic_of(h: Host) -> Multiaddr:
    [a] = [a for a in h.listen_addrs if str(a).endswith("/quic-v1")]
    return a.with_peer_id(h.peer_id)


async def echo(stream) -> None:
    stream.write(await stream.read_to_end(1 << 20))


async def until(predicate, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_quic_address_and_multiaddr():
    assert quic_address(Multiaddr("/ip4/127.0.0.1/udp/4001/quic-v1")) == ("127.0.0.1", 4001)
    kp = Ed25519KeyPair.generate()
    assert quic_address(Multiaddr("/ip6/::1/udp/4001/quic-v1").with_peer_id(kp.peer_id)) == ("::1", 4001)
    for bad in ("/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic", "/ip4/127.0.0.1/udp/4001"):
        with pytest.raises(ValueError):
            quic_address(Multiaddr(bad))
    assert str(quic_multiaddr("::ffff:10.0.0.1", 5)) == "/ip4/10.0.0.1/udp/5/quic-v1"
    assert str(quic_multiaddr("::1", 5)) == "/ip6/::1/udp/5/quic-v1"


def test_two_hosts_over_quic_identify_ping_and_streams():
    async def main():
        async with host(QUIC) as a, host(TCP, QUIC) as b:
            b.set_stream_handler(ECHO, echo)
            events = b.subscribe()
            conn = await a.dial(quic_of(b))
            assert isinstance(conn, QuicConnection) and conn.remote_peer_id == b.peer_id
            assert str(conn.remote_addr) == str(quic_of(b).without_peer_id())
            info = await a.identify(b.peer_id, timeout=10)
            # identify announces both transports, and sees us at our QUIC listen port
            assert {str(x).split("/")[3] for x in info.listen_addrs} == {"tcp", "udp"}
            assert str(info.observed_addr) == str(a.listen_addrs[0])
            assert await a.ping(b.peer_id) < 5.0
            assert await conn.ping() < 5.0  # a QUIC PING, acknowledged
            for size in (0, 5, 300_000):  # beyond one packet and one flow-control window
                s = await a.new_stream(b.peer_id, ECHO)
                payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
                await s.write_all(payload)
                s.close()
                assert await s.read_to_end(1 << 20) == payload
            await until(lambda: not conn.streams)  # every stream left both sides
            # b identified a too, over the same connection
            assert (await b.identify_service.wait(a.peer_id, 10)).agent_version
            conn.close("done")
            while True:
                ev = await asyncio.wait_for(events.get(), 10)
                if isinstance(ev, ConnectionClosed):
                    break
            assert ev.peer_id == a.peer_id
            await until(lambda: a.usage().empty and b.usage().empty)

    run(main)


def test_quic_is_preferred_and_tcp_is_the_fallback():
    async def main():
        async with host(TCP) as a, host(TCP, QUIC) as b:
            tcp = [x for x in b.listen_addrs if "/tcp/" in str(x)]
            conn = await a.dial(b.peer_id, [*tcp, quic_of(b).without_peer_id()])
            assert isinstance(conn, QuicConnection)  # dials from a socket of its own: a listens on TCP only
            conn.close()
            await until(lambda: a.connection(b.peer_id) is None)
            # QUIC gone: the dial falls back to TCP
            dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            dead.bind(("127.0.0.1", 0))
            port = dead.getsockname()[1]
            dead.close()
            async with host(TCP, dial_timeout=30.0, dial_fallback_delay=0.2) as c:
                quic_dead = Multiaddr(f"/ip4/127.0.0.1/udp/{port}/quic-v1")
                t0 = c.clock()
                conn = await c.dial(b.peer_id, [quic_dead, *tcp])
                assert type(conn) is Connection
                # after the fallback delay, not after the QUIC dial's timeout
                assert c.clock() - t0 < 10.0
                assert c.usage().pending == 0 and c.connections(b.peer_id) == [conn]

    run(main)


def test_a_dial_to_the_wrong_peer_fails():
    async def main():
        async with host(QUIC) as a, host(QUIC) as b:
            other = Ed25519KeyPair.generate().peer_id
            with pytest.raises(DialWrongPeer, match=str(b.peer_id)):
                await a.dial(quic_of(b).without_peer_id().with_peer_id(other))
            await until(lambda: a.usage().empty and b.usage().empty)

    run(main)


def test_inbound_quic_connections_count_against_the_per_ip_limit():
    async def main():
        async with host(QUIC, max_connections_per_ip=1, limit_loopback=True) as b, \
                host(QUIC) as a1, host(QUIC, dial_timeout=1.0) as a2:
            await a1.dial(quic_of(b))
            with pytest.raises(DialError):
                await a2.dial(quic_of(b))  # dropped unanswered: the dial times out
            [ep] = b.quic_endpoints()
            assert ep.refused >= 1 and b.connected_peers() == [a1.peer_id]
            assert b.usage().per_ip == {"127.0.0.1": 1}

    run(main)


def test_the_endpoint_drops_what_opens_no_connection():
    async def main():
        async with host(QUIC) as b, host(QUIC) as a:
            ip, port = quic_address(quic_of(b))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x00" * 1300, (ip, port))  # not a QUIC Initial
                s.sendto(b"\xc0" + b"\x00" * 50, (ip, port))  # a long header, too short for an Initial
            # a dial after them still works, and they made no connection
            await a.dial(quic_of(b))
            [ep] = b.quic_endpoints()
            assert len(ep.connections()) == 1 and ep.refused == 0 and b.usage().pending == 0

    run(main)


def test_a_host_that_only_dials_accepts_no_quic_connection():
    async def main():
        async with host(QUIC) as b, host() as a:
            await a.dial(quic_of(b))  # from a dial-only socket
            [ep] = a.quic_endpoints()
            assert not ep.listening
            # b dialing a's dial socket gets nothing
            back = quic_multiaddr("127.0.0.1", ep.local_addr[1]).with_peer_id(a.peer_id)
            async with host(QUIC, dial_timeout=1.0) as c:
                with pytest.raises(DialError, match="timed out"):
                    await c.dial(back)
            assert ep.refused >= 1

    run(main)
