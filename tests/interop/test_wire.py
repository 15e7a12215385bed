"""kadfast's wire stack against real peers: TCP, multistream-select, Noise,
Yamux (agreed inside the Noise handshake with a peer that offers it there,
with multistream-select otherwise), identify, ping and many concurrent
streams, in both directions.

For each implementation (rust, go, js, py) a kadfast host and one peer of that
implementation connect (kadfast dials it, or it dials kadfast). Each side
must report the other's identity, protocols, agent and listen addresses; ping
must round-trip both ways; and 50 concurrent JSON request/response streams
must carry data both ways at once (kadfast -> peer and peer -> kadfast).
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from kadfast import Multiaddr, PeerId
from kadfast.loop import run as run_loop
from kadfast.net import Host, HostConfig

from .conftest import selected_impls

pytestmark = pytest.mark.interop

JSON_PROTOCOL = "/kadfast/json/1.0.0"
STREAMS = 50
AGENTS = {
    "rust": "kadfast-interop-rust",
    "go": "kadfast-interop-go",
    "js": "js-libp2p",
    "py": "",  # py-libp2p's agent string varies by version; only non-empty is checked
}


#: which peers offer Yamux inside the Noise handshake (the inlined muxer
#: negotiation): with them the connection skips multistream-select for it
EARLY_MUXER = {"rust": False, "go": True, "js": True, "py": False}


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", selected_impls(metafunc.config))


async def json_echo(stream) -> None:
    body = json.loads(await stream.read_to_end(1 << 20))
    await stream.write_all(json.dumps({"echo": body, "peer_id": str(stream.conn.host.peer_id), "impl": "kadfast"}).encode())
    stream.close()


async def json_request(host: Host, peer: PeerId, body) -> dict:
    stream = await host.new_stream(peer, JSON_PROTOCOL)
    stream.write(json.dumps(body).encode())
    stream.close()
    return json.loads(await asyncio.wait_for(stream.read_to_end(1 << 20), 20))


async def call(peer, cmd, **args):
    """The control protocol blocks; keep the loop (and kadfast) running meanwhile."""
    return await asyncio.to_thread(peer.call, cmd, **args)


@pytest.mark.parametrize("direction", ["kadfast-dials", "peer-dials"])
def test_wire_stack(spawn_peer, impl, direction):
    peer = spawn_peer(impl)
    remote_id = PeerId.from_string(peer.peer_id)
    remote_addr = Multiaddr(peer.addrs[0])

    async def main():
        # 50 concurrent control-protocol calls need 50 threads
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(STREAMS + 8))
        host = Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        host.set_stream_handler(JSON_PROTOCOL, json_echo)
        await host.start()
        ours = host.listen_addrs[0]
        try:
            # -- connect: Noise + Yamux upgrade in the chosen direction
            if direction == "kadfast-dials":
                conn = await host.dial(Multiaddr(peer.maddr))
            else:
                res = await call(peer, "dial", addr=str(ours.with_peer_id(host.peer_id)))
                assert res["peer_id"] == str(host.peer_id)
                conn = await wait_connected(host, remote_id)
            assert conn.remote_peer_id == remote_id
            assert conn.core is not None and conn.core.early_muxer == EARLY_MUXER[impl], impl

            # -- identify, as kadfast saw the peer
            info = await host.identify(remote_id, timeout=20)
            assert info.peer_id == remote_id
            for proto in ("/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", JSON_PROTOCOL):
                assert proto in info.protocols, (proto, info.protocols)
            assert info.agent_version.startswith(AGENTS[impl]) and info.agent_version
            assert remote_addr in info.listen_addrs, (remote_addr, info.listen_addrs)

            # -- identify, as the peer saw kadfast
            seen = await call(peer, "identify", peer_id=str(host.peer_id))
            for proto in ("/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", JSON_PROTOCOL):
                assert proto in seen["protocols"], (proto, seen)
            assert seen["agent_version"] == host.config.agent_version
            their_view = [str(Multiaddr(a).without_peer_id()) for a in seen["listen_addrs"]]
            assert str(ours) in their_view, (ours, seen["listen_addrs"])

            # -- ping both ways
            assert 0 < await host.ping(remote_id) < 5
            pong = await call(peer, "ping", peer_id=str(host.peer_id))
            assert pong["rtt_ms"] >= 0

            # -- 50 concurrent streams each way, at the same time
            pad = os.urandom(600).hex()

            async def ours_to_them(i):
                body = {"i": i, "pad": pad}
                reply = await json_request(host, remote_id, body)
                assert reply["echo"] == body and reply["peer_id"] == str(remote_id)

            async def them_to_us(i):
                body = {"j": i, "pad": pad}
                res = await call(peer, "request", peer_id=str(host.peer_id), body=body, timeout=30)
                reply = res["response"]
                assert reply["echo"] == body and reply["impl"] == "kadfast"

            await asyncio.gather(
                *[ours_to_them(i) for i in range(STREAMS)],
                *[them_to_us(i) for i in range(STREAMS)],
            )
            # everything above went over one connection
            assert len(host.connections(remote_id)) == 1
        finally:
            await host.close()

    run_loop(lambda: asyncio.wait_for(main(), 120))


async def wait_connected(host: Host, peer: PeerId, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    q = host.subscribe()
    try:
        while True:
            conn = host.connection(peer)
            if conn is not None:
                return conn
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{peer} never connected")
            try:
                await asyncio.wait_for(q.get(), remaining)
            except asyncio.TimeoutError:
                pass
    finally:
        host.unsubscribe(q)
