"""Helpers shared by the interop tests that run a kadfast node against the
peers: the node on loopback, its address, provider keys, and polling."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor

from kadfast.kad.node import Config, KadNode


def provider_key(text: str) -> bytes:
    """The wire key of a provider record per PROTOCOL.md: a sha2-256 multihash."""
    return b"\x12\x20" + hashlib.sha256(text.encode()).digest()


async def call(peer, cmd, **args):
    """A control command of ``peer``, off the event loop."""
    return await asyncio.to_thread(peer.call, cmd, **args)


async def start_node(listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)) -> KadNode:
    """A started kadfast node in the default mode, listening on loopback
    (TCP unless ``listen`` says otherwise)."""
    from kadfast.net import HostConfig

    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(16))
    node = KadNode(config=Config(), host_config=HostConfig(listen_addrs=list(listen)))
    await node.start()
    return node


def node_maddr(node: KadNode) -> str:
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


async def until(predicate, timeout=20.0, interval=0.1, what="condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s")
        await asyncio.sleep(interval)
