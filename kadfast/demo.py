"""``kadfast demo``: a whole network on loopback in one process — a bootstrap
node, three listeners in one namespace and a dialer that finds them through
the DHT and talks to each."""

from __future__ import annotations

import time

from .client import Client
from .kad.node import Config, KadNode
from .net import HostConfig

NAMESPACE = "kadfast-demo"
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


async def run_demo(out) -> int:
    t0 = time.monotonic()
    boot = KadNode(config=Config(mode="server"), host_config=HostConfig(listen_addrs=LOOPBACK))
    clients: list[Client] = []
    try:
        await boot.start()
        baddr = boot.listen_addrs[0].with_peer_id(boot.peer_id)
        out.emit("bootstrap", f"[bootstrap] {baddr}", addr=str(baddr))
        for i in range(3):
            listener = Client([baddr], NAMESPACE, listen=LOOPBACK)
            name = f"listener-{i + 1}"

            async def handler(peer, request, name=name, listener=listener):
                out.emit("request", f"[{name}] request from {peer}: {request}", listener=name, peer=str(peer), request=request)
                return {"peer": str(listener.peer_id), "name": name, "echo": request}

            listener.handler = handler
            clients.append(listener)
            await listener.start()
            out.emit("announced", f"[{name}] {listener.peer_id} announced in {NAMESPACE!r}",
                     listener=name, peer_id=str(listener.peer_id))
        dialer = Client([baddr], NAMESPACE, listen=LOOPBACK, announce=False)
        clients.append(dialer)
        await dialer.start()
        out.emit("dialer", f"[dialer] {dialer.peer_id} joined; looking up {NAMESPACE!r}", peer_id=str(dialer.peer_id))
        peers = await dialer.peers()
        out.emit("found", f"[dialer] found {len(peers)} peers: {', '.join(map(str, peers))}", peers=[str(p) for p in peers])
        replies = 0
        for i, peer in enumerate(peers):
            reply = await dialer.request(peer, {"hello": f"message {i + 1} from the dialer"})
            replies += 1
            out.emit("reply", f"[dialer] reply from {reply.get('name')}: {reply}", peer=str(peer), response=reply)
        ok = replies == 3
        out.emit(
            "summary",
            f"summary: {len(peers)} listeners found, {replies} replies, routing table of the bootstrap node: "
            f"{len(boot.table)} peers, {time.monotonic() - t0:.1f}s — {'OK' if ok else 'FAILED'}",
            found=len(peers), replies=replies, seconds=round(time.monotonic() - t0, 2), ok=ok,
        )
        return 0 if ok else 1
    finally:
        for c in clients:
            await c.close()
        await boot.stop()
