"""The host's connection manager and its inbound limits, on loopback: pruning
over the high mark and at the hard limit, what is protected from it, the cap
on handshakes in progress and the per-subnet connection limits.

Attackers are :class:`RawClient` connections (upgraded by hand, holding a
silent stream, or plain TCP sockets that never speak); honest peers are
:class:`Host` instances. Every wait polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from _loops import loop_runner
from _rawclient import RawClient, read_to_eof

from kadfast.addrbook import ip_group, ip_prefix, ip_subnets
from kadfast.net import ConnectionClosed, DialError, Host, HostConfig
from kadfast.net.connection import Connection
from kadfast.net.connmgr import PRUNED_REASON, choose_prunable

LISTEN = ["/ip4/127.0.0.1/tcp/0"]
ECHO = "/test/echo/1.0.0"


run = loop_runner(60.0)


# -- the choice, as a pure function ------------------------------------------------------
@dataclass
class FakeConn:
    name: str
    opened_at: float = 0.0
    last_activity: float = 0.0
    stream_activity: float = 0.0
    streams: dict = field(default_factory=dict)


def names(conns) -> list[str]:
    return [c.name for c in conns]


def test_choose_prunable_order_and_exclusions():
    now = 1000.0
    conns = [
        FakeConn("young", opened_at=990.0, last_activity=990.0),                 # in its grace period
        FakeConn("in-use", last_activity=500.0, stream_activity=995.0, streams={1: 0}),
        FakeConn("streams-idle-old", last_activity=100.0, stream_activity=100.0, streams={1: 0}),
        FakeConn("streams-idle-new", last_activity=600.0, stream_activity=600.0, streams={1: 0, 3: 0}),
        FakeConn("bare-new", last_activity=900.0),
        FakeConn("bare-old", last_activity=200.0),
        FakeConn("bare-protected", last_activity=50.0),
    ]
    asked = []

    def protected(c):
        asked.append(c.name)
        return c.name == "bare-protected"

    kw = dict(grace_period=20.0, in_use_window=10.0, is_protected=protected)
    # streamless first (oldest activity first), then with streams (idle longest first)
    assert names(choose_prunable(conns, now, 10, **kw)) == [
        "bare-old", "bare-new", "streams-idle-old", "streams-idle-new"]
    assert "young" not in asked and "in-use" not in asked
    # the protection callback is asked lazily, in the order of the choice
    asked.clear()
    assert names(choose_prunable(conns, now, 1, **kw)) == ["bare-old"]
    assert asked == ["bare-protected", "bare-old"]
    assert names(choose_prunable(conns, now, 3, **kw)) == ["bare-old", "bare-new", "streams-idle-old"]
    assert choose_prunable(conns, now, 0, **kw) == []
    # a stream whose data is older than the window is not in use; grace 0 takes the young one too
    assert names(choose_prunable(conns, now, 10, grace_period=0.0, in_use_window=1.0)) == [
        "bare-protected", "bare-old", "bare-new", "young", "streams-idle-old", "in-use", "streams-idle-new"]
    # equal activity: no comparison of the connections themselves (they do not order)
    ties = [FakeConn(str(i)) for i in range(5)]
    assert sorted(names(choose_prunable(ties, now, 5, grace_period=0.0, in_use_window=0.0))) == list("01234")


def test_watermarks_and_defaults():
    c = HostConfig()
    assert (c.max_connections, c.conn_high_water, c.conn_low_water) == (4096, 3584, 3072)
    assert c.conn_grace_period == 20.0 and c.conn_in_use_window == 10.0 and c.conn_trim_interval == 1.0
    assert c.max_pending_handshakes == 256
    assert (c.max_connections_per_small_subnet, c.max_connections_per_large_subnet) == (256, 1024)
    assert Host().watermarks() == (3584, 3072)
    # marks at or above the hard limit keep the default proportions
    assert Host(config=HostConfig(max_connections=960)).watermarks() == (840, 720)
    assert Host(config=HostConfig(max_connections=2)).watermarks() == (1, 0)
    assert Host(config=HostConfig(conn_high_water=10, conn_low_water=6)).watermarks() == (10, 6)
    assert Host(config=HostConfig(conn_high_water=10, conn_low_water=12)).watermarks() == (10, 8)
    assert Host(config=HostConfig(conn_high_water=0)).watermarks() == (0, 0)


def test_subnet_keys():
    for ip in ("10.1.2.3", "::ffff:10.1.2.3", "2001:db8:1:2:aaaa::1", "fe80::1%eth0", "127.0.1.1"):
        group, _ = ip_group(ip)
        assert ip_subnets(ip, group) == (ip_prefix(ip, 24, 48), ip_prefix(ip, 16, 32)), ip
    assert ip_subnets("10.1.2.3", "10.1.2.3") == ("10.1.2.0/24", "10.1.0.0/16")
    assert ip_subnets("2001:db8:1:2::1", "2001:db8:1:2::/64") == ("2001:db8:1::/48", "2001:db8::/32")


def test_protect_tags():
    h = Host()
    peer = Host().peer_id
    assert not h.is_protected(peer)
    h.protect(peer, "a")
    h.protect(peer, "b")
    assert h.is_protected(peer) and h.is_protected(peer, "a") and not h.is_protected(peer, "c")
    assert h.unprotect(peer, "a") is True  # still protected by "b"
    assert h.unprotect(peer, "b") is False
    assert not h.is_protected(peer) and h.usage().protected_peers == 0
    assert h.unprotect(peer, "b") is False


def test_kad_node_keeps_its_routing_table_peers():
    from kadfast.kad.node import KadNode
    node = KadNode()
    member, stranger = Host().peer_id, Host().peer_id
    node.add_address(member, "/ip4/10.0.0.1/tcp/4001")
    assert node.host.keep is not None
    assert node.host.keep(member) and not node.host.keep(stranger)


# -- helpers for the loopback tests ------------------------------------------------------
async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached"
        await asyncio.sleep(0.01)


async def start_server(**kw) -> Host:
    h = Host(config=HostConfig(listen_addrs=LISTEN, **kw))
    await h.start()
    h.set_stream_handler(ECHO, echo_handler)
    return h


async def echo_handler(stream):
    while True:
        data = await stream.read()
        if not data:
            return
        stream.write(data)


def maddr(h: Host):
    return h.listen_addrs[0].with_peer_id(h.peer_id)


def open_conns(h: Host) -> list[Connection]:
    return list(h.open_connections())


def assert_no_leaks(h: Host) -> bool:
    return h.connection_count() == 0 and h.usage().empty


async def honest_peer(server: Host) -> Host:
    h = Host()
    await h.start()
    await h.dial(maddr(server))
    return h


def server_side(server: Host, client: Host) -> Connection:
    c = server.connection(client.peer_id)
    assert c is not None
    return c


def local_port(c: RawClient) -> str:
    return str(c.writer.get_extra_info("sockname")[1])


def by_port(server: Host, port: str) -> Connection | None:
    for c in open_conns(server) + server.pending_connections():
        if c.remote_addr is not None and c.remote_addr.value_for("tcp") == port:
            return c
    return None


async def attacker(server: Host) -> tuple[RawClient, Connection]:
    """An upgraded connection holding one stream that sent half a protocol
    proposal and then nothing; and the server's side of it."""
    c = await RawClient.connect(server)
    await c.upgrade()
    sid = c.session.open_stream()
    c.session.send(sid, b"\x13/multi")
    c.flush()
    port = local_port(c)
    await until(lambda: (s := by_port(server, port)) is not None and s.is_open and s.stream_activity > 0,
                what="the attacker's stream")
    conn = by_port(server, port)
    assert conn is not None
    return c, conn


async def yamux_ping(client: Host, server: Host) -> None:
    """Something on the client's connection that reaches the server (its
    last_activity) without a stream."""
    conn = client.connection(server.peer_id)
    assert conn is not None
    await conn.ping(timeout=10)


async def close_all(server: Host, hosts=(), raws=()) -> None:
    for r in raws:
        r.close()
    for h in hosts:
        await h.close()
    await until(lambda: assert_no_leaks(server), what="all connections gone and uncounted")
    await server.close()


# -- pruning over the high mark ------------------------------------------------------
def test_over_the_high_mark_prunes_down_to_the_low_mark_idle_first(run):
    """Eleven open with marks 10/6: five closed, those idle longest; a
    protected peer, a connection with a stream in use and the connections in
    their grace period stay."""
    async def main():
        server = await start_server(conn_high_water=10, conn_low_water=6, conn_grace_period=0.5,
                                    conn_in_use_window=60.0, conn_trim_interval=0.0)
        events = server.subscribe()
        old = [await honest_peer(server) for _ in range(9)]
        new: list[Host] = []
        try:
            await until(lambda: server.usage().open == 9 and all(not c.streams for c in open_conns(server)),
                        what="identify done")
            await until(lambda: all(time.monotonic() - c.opened_at > 0.5 for c in open_conns(server)),
                        what="the grace period over")
            # last activity in this order (not the order of connecting): the first five go
            order = [3, 0, 6, 1, 5, 2, 4]
            for i in order:
                await yamux_ping(old[i], server)
            server.protect(old[7].peer_id, "test")  # idle longest of all, but protected
            stream = await old[8].new_stream(server.peer_id, ECHO)  # a stream in use
            stream.write(b"hello")
            assert await stream.read_exactly(5) == b"hello"
            assert server.pruned_connections == 0 and server.usage().open == 9
            new = [await honest_peer(server) for _ in range(2)]  # the 11th opens: a trim
            await until(lambda: server.usage().open == 6, what="the low mark")
            pruned = [old[i] for i in order[:5]]
            for h in pruned:
                await until(lambda: h.connection(server.peer_id) is None, what="the client sees the close")
            survivors = [old[i] for i in order[5:]] + [old[7], old[8]] + new
            assert sorted(map(str, server.connected_peers())) == sorted(str(h.peer_id) for h in survivors)
            assert server.pruned_connections == 5
            closed = []
            while not events.empty():
                ev = events.get_nowait()
                if isinstance(ev, ConnectionClosed):
                    closed.append(ev)
            assert {str(e.peer_id) for e in closed} == {str(h.peer_id) for h in pruned}
            assert all(e.reason == PRUNED_REASON for e in closed)
            # the stream in use still works
            stream.write(b"again")
            assert await stream.read_exactly(5) == b"again"
            stream.close()
        finally:
            await close_all(server, hosts=old + new)
    run(main)


def test_streamless_connections_go_before_idle_streams_and_streams_in_use_stay(run):
    async def main():
        window = 1.0
        server = await start_server(conn_high_water=10, conn_low_water=2, conn_grace_period=0.0,
                                    conn_in_use_window=window, negotiation_timeout=60.0)
        raws: list[RawClient] = []
        hosts: list[Host] = []
        try:
            s0, c_s0 = await attacker(server)
            s1, c_s1 = await attacker(server)
            raws += [s0, s1]
            await until(lambda: all(time.monotonic() - c.stream_activity > window for c in (c_s0, c_s1)),
                        what="the silent streams out of use")
            # refreshed after the silent streams: s1 idle less long than s0
            s1.session.ping(time.monotonic())
            s1.flush()
            await until(lambda: c_s1.last_activity > c_s0.stream_activity + window, what="s1's ping")
            b0, b1, u0 = [await honest_peer(server) for _ in range(3)]
            hosts += [b0, b1, u0]
            await until(lambda: server.usage().open == 5 and all(
                not server_side(server, h).streams for h in (b0, b1, u0)), what="identify done")
            # the streamless ones were active last, yet go first
            assert server_side(server, b0).last_activity > c_s1.last_activity
            stream = await u0.new_stream(server.peer_id, ECHO)
            stream.write(b"x")
            assert await stream.read_exactly(1) == b"x"
            c_u0 = server_side(server, u0)
            assert c_u0.streams and time.monotonic() - c_u0.stream_activity < window
            c_b0, c_b1 = server_side(server, b0), server_side(server, b1)
            assert server.trim() == 3  # five open, low mark two: three go
            assert [c.close_reason for c in (c_b0, c_b1, c_s0)] == [PRUNED_REASON] * 3
            assert c_s1.is_open and c_u0.is_open and server.usage().open == 2
        finally:
            await close_all(server, hosts=hosts, raws=raws)
    run(main)


def test_connections_in_their_grace_period_are_not_pruned(run):
    async def main():
        server = await start_server(conn_high_water=4, conn_low_water=2, conn_grace_period=600.0,
                                    conn_trim_interval=0.0)
        hosts = [await honest_peer(server) for _ in range(6)]
        try:
            assert server.usage().open == 6 and server.pruned_connections == 0  # over the mark, all young
            await until(lambda: all(not c.streams for c in open_conns(server)), what="identify done")
            server.config.conn_grace_period = 0.0
            assert server.trim() == 4 and server.usage().open == 2
        finally:
            await close_all(server, hosts=hosts)
    run(main)


def test_trims_wait_for_the_trim_interval(run):
    async def main():
        server = await start_server(conn_high_water=4, conn_low_water=2, conn_grace_period=0.0,
                                    conn_trim_interval=600.0)
        hosts: list[Host] = []
        try:
            hosts += [await honest_peer(server) for _ in range(4)]
            await until(lambda: all(not c.streams for c in open_conns(server)), what="identify done")
            hosts.append(await honest_peer(server))  # the fifth: a trim down to two
            assert server.usage().open == 2 and server.pruned_connections == 3
            hosts += [await honest_peer(server) for _ in range(3)]  # five again: the trim waits
            assert server.usage().open == 5 and server.usage().trim_scheduled
            await until(lambda: all(not c.streams for c in open_conns(server)), what="identify done")
            assert server.trim_if_over_high_water() == 3  # what the waiting trim does when its time comes
            assert server.usage().open == 2 and server.pruned_connections == 6
        finally:
            await close_all(server, hosts=hosts)
    run(main)


# -- at the hard limit ----------------------------------------------------------------
async def _full_server(n: int) -> tuple[Host, list[tuple[RawClient, Connection]]]:
    """A server with max_connections n, filled by attackers, each with a silent
    stream; grace periods end once it is full (and no trim at the marks comes
    in between)."""
    server = await start_server(max_connections=n, conn_high_water=n - 1, conn_low_water=n - 2,
                                conn_grace_period=600.0, conn_in_use_window=0.5, conn_trim_interval=600.0,
                                negotiation_timeout=60.0)
    attackers = [await attacker(server) for _ in range(n)]
    assert server.connection_count() == n and server.pruned_connections == 0
    await until(lambda: all(time.monotonic() - c.stream_activity > 0.5 for _, c in attackers),
                what="the attackers' streams out of use")
    server.config.conn_grace_period = 0.0
    return server, attackers


def test_at_the_hard_limit_a_newcomer_gets_in_by_pruning(run):
    async def main():
        server, attackers = await _full_server(8)
        hosts: list[Host] = []
        try:
            hosts.append(await honest_peer(server))  # not refused: the two idle longest go
            assert server.connection(hosts[0].peer_id) is not None
            assert [c.close_reason for _, c in attackers[:2]] == [PRUNED_REASON] * 2
            assert all(c.is_open for _, c in attackers[2:])
            assert server.connection_count() == 7 and server.pruned_connections == 2
            # the client side of a pruned attacker sees the end
            assert await read_to_eof(attackers[0][0].reader, timeout=10) is not None
        finally:
            await close_all(server, hosts=hosts, raws=[r for r, _ in attackers])
    run(main)


def test_at_the_hard_limit_with_everything_protected_the_newcomer_is_refused(run):
    async def main():
        server, attackers = await _full_server(6)
        server.keep = lambda peer: True
        newcomer = Host()
        await newcomer.start()
        try:
            with pytest.raises(DialError):
                await newcomer.dial(maddr(server))
            assert all(c.is_open for _, c in attackers) and server.pruned_connections == 0
            await until(lambda: server.connection_count() == 6, what="the refused connection gone")
            # nothing was prunable: the next arrivals are refused without another search
            assert server.usage().hard_trim_after > time.monotonic()
        finally:
            await newcomer.close()
            await close_all(server, raws=[r for r, _ in attackers])
    run(main)


def test_at_the_hard_limit_a_crowded_subnet_makes_room_for_another(run):
    """Every connection young (in its grace period, which would protect it)
    and all from one /16 that keeps them busy: a newcomer from another /16
    still gets in, in place of the crowded subnet's least useful connection;
    one more from the crowded /16 is refused."""
    async def main():
        server = await start_server(max_connections=6, conn_grace_period=600.0, conn_trim_interval=600.0,
                                    limit_loopback=True, max_handshakes_per_ip_per_second=1000.0,
                                    max_handshakes_per_subnet_per_second=1000.0)
        raws = []
        hosts: list[Host] = []
        try:
            for i in range(6):
                c = await RawClient.connect(server, local_ip=f"127.3.0.{1 + i}")
                await c.upgrade()
                raws.append(c)
            await until(lambda: server.usage().open == 6, what="six attackers open")
            assert server.usage().per_large_subnet == {"127.3.0.0/16": 6}
            hosts.append(await honest_peer(server))  # from 127.0.0.1, another /16
            assert server.connection(hosts[0].peer_id) is not None
            assert server.pruned_connections == 1
            assert server.usage().per_large_subnet == {"127.3.0.0/16": 5, "127.0.0.0/16": 1}
            late = await RawClient.connect(server, local_ip="127.3.0.200")
            raws.append(late)
            assert await read_to_eof(late.reader, timeout=10) == b""  # refused at once
            assert server.pruned_connections == 1
        finally:
            await close_all(server, hosts=hosts, raws=raws)
        assert not server.usage().tracked_large_subnets
    run(main)


# -- handshakes in progress ---------------------------------------------------------------
def test_pending_handshake_cap_closes_the_next_connection_before_noise(run):
    async def main():
        server = await start_server(max_pending_handshakes=3, handshake_timeout=60.0)
        held: list[RawClient] = []
        try:
            held += [await RawClient.connect(server) for _ in range(3)]  # TCP only, never a byte
            await until(lambda: server.usage().pending_inbound == 3, what="three handshakes pending")
            c4 = await RawClient.connect(server)
            c4.writer.write(b"\x13/multistream/1.0.0\n")
            t0 = time.monotonic()
            assert await read_to_eof(c4.reader, timeout=10) == b""  # not even a multistream answer
            assert time.monotonic() - t0 < 5.0  # refused, not timed out
            c4.close()
            assert server.usage().pending_inbound == 3 and server.usage().pending == 3
            # a slot freed: the next one is served
            held.pop().close()
            await until(lambda: server.usage().pending_inbound == 2, what="a slot freed")
            c5 = await RawClient.connect(server)
            await c5.upgrade()
            held.append(c5)
            await until(lambda: server.usage().open == 1 and server.usage().pending_inbound == 2, what="c5 open")
        finally:
            await close_all(server, raws=held)
    run(main)


def test_pending_handshakes_per_ip_leave_slots_for_other_addresses(run):
    """One address holding handshakes it never finishes gets
    max_pending_handshakes_per_ip of them; the next is refused at once, while
    another address still gets in; the counts go back to zero."""
    async def main():
        server = await start_server(limit_loopback=True, max_pending_handshakes_per_ip=2, handshake_timeout=60.0,
                                    max_handshakes_per_ip_per_second=1000.0,
                                    max_handshakes_per_subnet_per_second=1000.0)
        held: list[RawClient] = []
        try:
            held += [await RawClient.connect(server, local_ip="127.0.5.1") for _ in range(2)]
            await until(lambda: server.usage().pending_per_ip.get("127.0.5.1") == 2, what="two handshakes pending")
            c3 = await RawClient.connect(server, local_ip="127.0.5.1")
            t0 = time.monotonic()
            assert await read_to_eof(c3.reader, timeout=10) == b""
            assert time.monotonic() - t0 < 5.0  # refused, not timed out
            c3.close()
            other = await RawClient.connect(server, local_ip="127.0.6.1")
            await other.upgrade()
            held.append(other)
            await until(lambda: server.usage().open == 1, what="the other address's connection open")
            assert server.usage().pending_per_ip == {"127.0.5.1": 2}
        finally:
            await close_all(server, raws=held)
        await until(lambda: not server.usage().pending_per_ip, what="pending counts back to zero")
    run(main)


# -- per-subnet limits ----------------------------------------------------------------
def test_per_subnet_connection_limits(run):
    async def main():
        server = await start_server(limit_loopback=True, max_connections_per_small_subnet=3,
                                    max_connections_per_large_subnet=5, max_handshakes_per_ip_per_second=1000.0,
                                    max_handshakes_per_subnet_per_second=1000.0, handshake_timeout=60.0)
        held: list[RawClient] = []

        async def refused(ip: str) -> bool:
            c = await RawClient.connect(server, local_ip=ip)
            try:
                await asyncio.wait_for(c.select_noise(), 10)
            except (ConnectionError, asyncio.IncompleteReadError):
                return True
            finally:
                c.close()
            return False

        try:
            for ip in ("127.0.1.1", "127.0.1.2", "127.0.1.3"):
                held.append(await RawClient.connect(server, local_ip=ip))
            await until(lambda: server.usage().per_small_subnet.get("127.0.1.0/24") == 3, what="three in the /24")
            assert await refused("127.0.1.4")  # the /24 is full
            for ip in ("127.0.2.1", "127.0.2.2"):
                held.append(await RawClient.connect(server, local_ip=ip))
            await until(lambda: server.usage().per_large_subnet.get("127.0.0.0/16") == 5, what="five in the /16")
            assert await refused("127.0.3.1")  # the /16 is full
            assert server.usage().per_small_subnet == {"127.0.1.0/24": 3, "127.0.2.0/24": 2}
            # another /16 is not affected, and is served to the end
            other = await RawClient.connect(server, local_ip="127.1.0.1")
            await other.upgrade()
            held.append(other)
            await until(lambda: server.usage().open == 1, what="the other /16 open")
            assert server.usage().per_large_subnet == {"127.0.0.0/16": 5, "127.1.0.0/16": 1}
            # closed connections give their slots back
            held.pop(0).close()
            await until(lambda: server.usage().per_small_subnet.get("127.0.1.0/24") == 2, what="a slot back")
            assert not await refused("127.0.1.4")
        finally:
            await close_all(server, raws=held)
    run(main)


def test_per_subnet_limits_exempt_loopback_by_default(run):
    async def main():
        server = await start_server(max_connections_per_small_subnet=1, max_connections_per_large_subnet=1)
        hosts = [await honest_peer(server) for _ in range(3)]
        try:
            assert server.usage().open == 3 and not server.usage().per_small_subnet and not server.usage().per_large_subnet
        finally:
            await close_all(server, hosts=hosts)
    run(main)
