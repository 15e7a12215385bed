"""QUIC in the host (kadfast.net.quicconn) on loopback UDP: hosts dial and
listen on ``/udp/N/quic-v1``, identify, ping and protocol streams over it,
QUIC preferred over TCP with TCP as the fallback, the host's limits on
inbound QUIC connections, what the endpoint drops, and datagrams routed by
connection id (a peer whose port changes, a peer restarted on its port)."""

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
from kadfast.net.quicconn import QuicConnection, quic_address, quic_multiaddr, utc_now

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
            assert a.transport_counts() == {"tcp": 0, "quic": 1}
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


def test_quic_sockets_ask_for_large_buffers():
    """A burst of datagrams beyond a UDP socket's receive buffer is dropped
    by the kernel: the QUIC sockets ask for ``quic_socket_buffer`` (capped
    by the system's maximum), listening and dial-only ones alike; 0 leaves
    the system's default."""
    def rmem_max() -> int:
        try:
            with open("/proc/sys/net/core/rmem_max") as f:
                return int(f.read())
        except OSError:
            return 1 << 30

    async def main():
        want = 1 << 20
        async with host(QUIC, quic_socket_buffer=want) as a, host(quic_socket_buffer=want) as c, \
                host(QUIC, quic_socket_buffer=0) as b:
            [ep] = a.quic_endpoints()
            assert ep.datagrams_in == ep.datagrams_out == 0
            granted = min(want, rmem_max())
            assert ep.socket_buffers[0] >= granted and ep.socket_buffers[1] > 0
            assert b.quic_endpoints()[0].socket_buffers == (0, 0)  # left alone
            await c.dial(quic_of(a))  # a dial-only socket of c's own
            [dialer] = c.quic_endpoints()
            assert not dialer.listening and dialer.socket_buffers[0] >= granted
            # what each socket moved is counted (the benchmarks report it per connection)
            assert ep.datagrams_in > 0 and ep.datagrams_out > 0 and dialer.datagrams_out > 0

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


class RawClient(asyncio.DatagramProtocol):
    """A QUIC client core on a UDP socket the test can swap: what a peer
    behind a NAT that rebinds its port, or a peer restarted on the same
    port, looks like to the endpoint."""

    def __init__(self, server: Host, key: Ed25519KeyPair) -> None:
        from kadfast.net.quicstreams import QuicConnectionCore
        from kadfast.quic import QuicCore
        from kadfast.tls import make_certificate

        self.loop = asyncio.get_running_loop()
        self.remote = quic_address(quic_of(server))
        quic = QuicCore(make_certificate(key), now=self.loop.time(), utc_now=utc_now, remote_addr=self.remote,
                        expected_peer=server.peer_id)
        self.core = QuicConnectionCore(quic, supports_protocol=lambda p: False)
        self.events: list = []
        self.changed = asyncio.Event()
        self.transport = None

    def datagram_received(self, data, addr):
        self.events += self.core.receive_datagram(data, addr, self.loop.time())
        self.flush()
        self.changed.set()

    def flush(self):
        for data, addr in self.core.datagrams_to_send(self.loop.time()):
            self.transport.sendto(data, addr)

    async def bind(self, port=0):
        if self.transport is not None:
            self.transport.close()
        self.transport, _ = await self.loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", port))
        return self.transport.get_extra_info("sockname")[1]

    async def wait(self, predicate, timeout=10.0):
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                t = self.core.get_timer()
                wait = max(0.0, t - self.loop.time()) if t is not None else None
                try:
                    await asyncio.wait_for(self.changed.wait(), wait)
                except TimeoutError:
                    self.events += self.core.handle_timer(self.loop.time())
                    self.flush()


def test_a_peer_whose_port_changes_keeps_its_connection():
    async def main():
        async with host(QUIC) as b:
            key = Ed25519KeyPair.generate()
            c = RawClient(b, key)
            await c.bind()
            c.flush()
            await c.wait(lambda: c.core.is_open)
            await until(lambda: b.connection(key.peer_id) is not None)
            conn = b.connection(key.peer_id)
            await c.bind()  # the NAT rebinds: same connection, another port
            sid = c.core.open_stream(["/ipfs/ping/1.0.0"], c.loop.time())
            c.flush()
            await c.wait(lambda: any(getattr(e, "stream_id", None) == sid and "Negotiated" in type(e).__name__
                                     for e in c.events))
            assert b.connection(key.peer_id) is conn and conn.peer_addr[1] == c.transport.get_extra_info("sockname")[1]
            c.transport.close()

    run(main)


def test_a_peer_restarted_on_the_same_port_gets_a_new_connection():
    async def main():
        async with host(QUIC) as b:
            first, second = Ed25519KeyPair.generate(), Ed25519KeyPair.generate()
            c1 = RawClient(b, first)
            port = await c1.bind()
            c1.flush()
            await c1.wait(lambda: c1.core.is_open)
            c1.transport.close()  # gone without a word
            c2 = RawClient(b, second)
            await c2.bind(port)
            c2.flush()
            await c2.wait(lambda: c2.core.is_open)
            await until(lambda: b.connection(second.peer_id) is not None)
            c2.transport.close()

    run(main)


WITHOUT_SSL = r'''
import asyncio, sys
sys.modules["ssl"] = None  # what a Python whose ssl module cannot load sees: ImportError
from kadfast.cli import server_listen_default, version_text
from kadfast.errors import QuicUnavailable
from kadfast.net import Host, HostConfig
from kadfast.net.host import quic_unavailable
from kadfast import Multiaddr

assert "QUIC: unavailable: QUIC needs Python's ssl module" in version_text(), version_text()
assert server_listen_default() == ["/ip4/0.0.0.0/tcp/4001"]

async def main():
    async with Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"])) as a, \
            Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"])) as b:
        try:
            await b.listen(Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
        except QuicUnavailable:
            pass
        else:
            raise SystemExit("listening on QUIC did not fail")
        # b's QUIC address (unusable here) comes first; the dial takes TCP
        tcp = b.listen_addrs[0]
        quic = f"/ip4/127.0.0.1/udp/{tcp.value_for('tcp')}/quic-v1"
        conn = await a.dial(b.peer_id, [Multiaddr(quic), tcp])
        assert conn.transport_name == "tcp" and a.transport_counts() == {"tcp": 1, "quic": 0}
        assert await a.ping(b.peer_id) < 5.0
    print("OK", quic_unavailable())

asyncio.run(asyncio.wait_for(main(), 30))
'''


def test_without_python_ssl_kadfast_runs_on_tcp_alone():
    """aioquic needs Python's ssl module (the system's OpenSSL): where it
    cannot load, kadfast still imports, says so in --version, the server's
    default listen drops QUIC, listening on QUIC fails clearly, and dials
    use the peer's TCP addresses."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", WITHOUT_SSL], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("OK QUIC needs"), out.stdout + out.stderr
