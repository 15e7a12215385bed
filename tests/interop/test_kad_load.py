"""The ``kad_load`` command of the go and js peers (peers/PROTOCOL.md), the
load generator of the real-client benchmark, against a kadfast server that
has met 1,000 peers: both modes, 1, 4 and 16 requests in flight, every
request answered with k = 20 peers, all loads over one connection."""

from __future__ import annotations

import asyncio
import os

import pytest

from kadfast import Multiaddr, PeerId
from kadfast.kad.node import Config, KadNode
from kadfast.loop import run as run_loop

from .conftest import selected_impls
from .kadnodes import call, node_maddr

pytestmark = pytest.mark.interop

#: the rust peer's kad_load has a file of its own (test_kad_load_rust.py)
LOAD_IMPLS = ("go", "js")
DURATION_S = 0.5


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", [i for i in selected_impls(metafunc.config) if i in LOAD_IMPLS])


async def start_server(peers: int) -> KadNode:
    """A kadfast server on loopback that has met ``peers`` made-up peers (the
    addresses of ``kad_fill``: loopback, port 1, where nothing listens)."""
    from kadfast.net import HostConfig

    # all the load comes from one peer, far above the per-peer read limit; no
    # bootstrap lookups towards the made-up peers
    cfg = Config(periodic_bootstrap_interval=1e12, max_reads_per_peer_per_second=0)
    node = KadNode(config=cfg, host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
    now = node.clock()
    for i in range(peers):
        pid = PeerId(bytes.fromhex("002408011220") + os.urandom(32))
        node.add_address(pid, Multiaddr(f"/ip4/127.{1 + (i >> 16) % 254}.{(i >> 8) & 255}.{i & 255}/tcp/1"))
        node.update_peer(pid, now, connected=True)
    node.schedule.last_bootstrap = node.clock()
    await node.start()
    return node


def test_kad_load_against_kadfast(spawn_peer, impl):
    client = spawn_peer(impl, client=True)
    client_id = PeerId.from_string(client.peer_id)
    # 16 new streams in flight: go closes its side after reading the answer,
    # so its streams overlap the limit of 32 kad streams per connection unless
    # a stream we closed counts no more
    cases = [(mode, inflight) for mode in ("new", "reused") for inflight in (1, 4, 16)]

    async def main():
        node = await start_server(1000)
        try:
            assert len(node.table) >= 20
            results = {}
            for mode, inflight in cases:
                results[mode, inflight] = await call(
                    client, "kad_load", addr=node_maddr(node), mode=mode, inflight=inflight,
                    duration=DURATION_S, seed=5, timeout=60,
                )
            return results, len(node.host.connections(client_id))
        finally:
            await node.stop()

    results, conns = run_loop(lambda: asyncio.wait_for(main(), 120))
    for case, r in results.items():
        assert r["errors"] == 0 and "error" not in r, (case, r)
        assert r["requests"] > 0, (case, r)
        assert r["closer_peers"] == 20, (case, r)
        assert 0 < r["p50_ms"] <= r["p99_ms"] < 10_000, (case, r)
        assert 0 < r["mean_ms"] < 10_000, (case, r)
        # requests start until the duration has passed; the last one is finished
        assert DURATION_S * 0.9 <= r["elapsed"] < DURATION_S + 10, (case, r)
    assert conns == 1, f"{conns} connections from the client: every load should use the first one"
