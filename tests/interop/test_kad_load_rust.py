"""The rust peer's ``kad_load`` (peers/PROTOCOL.md) against a kadfast server
whose routing table is full: both modes (``new``: libp2p-kad's own client,
a query per request; ``reused``: one libp2p-stream stream per worker), one
and four requests in flight. Every request is answered with 20 closer
peers, the server served exactly as many FIND_NODEs as the client counted
(one query is one request, and no bootstrap ran meanwhile), and the client
dialed none of the peers the replies carried (their address, a listener
of the test's, saw no connection; afterwards the client is connected to the
server only)."""

from __future__ import annotations

import asyncio
import os

import pytest

from kadfast import PeerId
from kadfast.kad.node import Config, KadNode
from kadfast.kad.pb import MessageType
from kadfast.loop import run as run_loop

from .kadnodes import call, node_maddr

pytestmark = pytest.mark.interop

CASES = [("new", 1), ("new", 4), ("reused", 1), ("reused", 4)]


def random_peer_id() -> PeerId:
    return PeerId(bytes.fromhex("002408011220") + os.urandom(32))


class Trap:
    """A loopback TCP listener that counts the connections it accepts and
    never answers them (a dial to it would hang in its handshake)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader, writer) -> None:
        self.accepted += 1
        self.writers.append(writer)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()


async def filled_node(trap_port: int, n: int = 1000) -> KadNode:
    """A kadfast server on loopback that has met ``n`` made-up peers, all at
    the trap's address. All the load comes from one peer: the per-peer read
    limit is off; and no bootstrap towards the made-up peers."""
    from kadfast.net import HostConfig

    cfg = Config(periodic_bootstrap_interval=1e12, max_reads_per_peer_per_second=0)
    node = KadNode(config=cfg, host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
    now = node.clock()
    for _ in range(n):
        pid = random_peer_id()
        node.add_address(pid, f"/ip4/127.0.0.1/tcp/{trap_port}")
        node.update_peer(pid, now, connected=True)
    node.schedule.last_bootstrap = node.clock()
    await node.start()
    return node


def test_rust_kad_load_against_kadfast(spawn_peer, interop_impls):
    if "rust" not in interop_impls:
        pytest.skip("rust not among the selected interop implementations")
    client = spawn_peer("rust", client=True)

    async def main():
        trap = Trap()
        node = await filled_node(await trap.start())
        try:
            assert len(node.table) >= 100
            addr = node_maddr(node)
            for mode, inflight in CASES:
                before = node.request_counts.get(MessageType.FIND_NODE, 0)
                res = await call(client, "kad_load", addr=addr, mode=mode, inflight=inflight,
                                 duration=0.5, seed=3, timeout=30)
                served = node.request_counts.get(MessageType.FIND_NODE, 0) - before
                case = f"{mode}/{inflight}: {res}"
                assert res["requests"] > 0, case
                assert res["errors"] == 0, case
                assert res["closer_peers"] == 20, case
                assert served == res["requests"], (served, case)
                assert 0 < res["p50_ms"] <= res["p99_ms"], case
                # 0.5 s of requests; the ones still in flight then are finished
                assert 0.4 <= res["elapsed"] < 5, case
            connected = (await call(client, "connected"))["peers"]
            assert connected == [str(node.peer_id)], connected
            table = (await call(client, "routing_table"))["peers"]
            assert table == [str(node.peer_id)], table
            assert trap.accepted == 0, f"the client dialed made-up peers {trap.accepted} time(s)"
        finally:
            await node.stop()
            trap.close()

    run_loop(lambda: asyncio.wait_for(main(), 120))
