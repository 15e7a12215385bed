"""Real peers (rust, go, js) join a ``kadfast server --workers 2`` and find
each other through it: each peer's connection lands on one worker (the
kernel's SO_REUSEPORT hash), the workers' routing tables agree through the
supervisor's hub, so whichever worker a peer asks knows the others."""

from __future__ import annotations

import asyncio

import pytest
from _procs import KadfastProc

from kadfast.loop import run as run_loop

from .kadnodes import call, until

pytestmark = pytest.mark.interop

NEEDED = ("rust", "go", "js")


def test_peers_join_a_two_worker_server_and_find_each_other(spawn_peer, interop_impls, tmp_path):
    for needed in NEEDED:
        if needed not in interop_impls:
            pytest.fail(f"this test needs the {needed} peer; run it with all implementations")
    server = KadfastProc("server", "--workers", "2", "--json", "--listen", "/ip4/127.0.0.1/tcp/0",
                         "--store", f"sqlite:{tmp_path / 'store.db'}")
    try:
        ev = server.wait_event("listening", timeout=60)
        assert ev["workers"] == 2
        addr = ev["addrs"][0]
        peers = {impl: spawn_peer(impl) for impl in NEEDED}

        async def main():
            for peer in peers.values():
                await call(peer, "dial", addr=addr)
            for impl, peer in peers.items():
                await until(lambda p=peer: ev["peer_id"] in p.call("routing_table")["peers"],
                            what=f"{impl} to have the server in its table")
            for impl, peer in peers.items():
                for other_impl, other in peers.items():
                    if other is peer:
                        continue

                    async def found(peer=peer, other=other):
                        try:
                            res = await call(peer, "find_peer", peer_id=other.peer_id)
                        except Exception:  # not found (yet)
                            return False
                        return other.addrs[0] in res.get("addrs", [])

                    deadline = asyncio.get_running_loop().time() + 30
                    while not await found():
                        assert asyncio.get_running_loop().time() < deadline, f"{impl} did not find {other_impl}"
                        await asyncio.sleep(0.2)

        run_loop(lambda: asyncio.wait_for(main(), 180))
    finally:
        assert server.stop() == 0, "".join(server.stderr[-20:])
