"""One clock from the top: the clock a node is given is the one its host,
its connections and its address book use."""

from __future__ import annotations

import time

import pytest
from _loops import loop_runner

from kadfast import Config, Ed25519KeyPair, Host, HostConfig, KadNode

run = loop_runner(30.0)
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def lagging_clock():
    # far behind time.monotonic(): an address added "now" on this clock has
    # long expired on the host's clock if the host uses another one
    return time.monotonic() - 1e6


def test_a_node_on_its_own_clock_dials_what_it_learned(run):
    async def main():
        server = KadNode(config=Config(mode="server"), host_config=HostConfig(listen_addrs=LOOPBACK))
        client = KadNode(config=Config(mode="client"), clock=lagging_clock)
        assert client.host.clock is lagging_clock
        async with server, client:
            client.add_address(server.peer_id, server.listen_addrs[0])
            assert client.host.addrbook.addrs(server.peer_id, client.clock())  # on the one clock
            closest = await client.get_closest_peers(client.peer_id)
            assert server.peer_id in closest
            conn = client.host.connection(server.peer_id)
            assert conn is not None
            # the connection's times are on the node's clock too
            assert abs(conn.opened_at - lagging_clock()) < 60

    run(main)


def test_a_node_handed_a_host_shares_its_clock():
    host = Host(Ed25519KeyPair.generate(), HostConfig(), clock=lagging_clock)
    node = KadNode(host=host)
    assert node.host is host and node.clock is lagging_clock and node.peer_id == host.peer_id
    same = KadNode(host=Host(clock=lagging_clock), clock=lagging_clock)
    assert same.clock is lagging_clock


def test_a_node_and_a_host_on_two_clocks_are_refused():
    with pytest.raises(ValueError, match="one clock"):
        KadNode(host=Host(clock=lagging_clock), clock=time.monotonic)
    with pytest.raises(ValueError, match="host"):
        KadNode(Ed25519KeyPair.generate(), host=Host())
