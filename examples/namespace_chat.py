"""A runnable example of kadfast.Client: peers of a namespace find each other
through the DHT and talk with JSON request/response.

    python examples/namespace_chat.py

It starts its own bootstrap node on loopback; to join a real network, pass the
address that `kadfast server` printed instead:

    python examples/namespace_chat.py /ip4/203.0.113.7/tcp/4001/p2p/12D3KooW...
"""

import asyncio
import sys

import kadfast

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


async def main(bootstrap: list[str]) -> None:
    boot = None
    if not bootstrap:
        boot = kadfast.KadNode(config=kadfast.Config(mode="server"),
                               host_config=kadfast.HostConfig(listen_addrs=LOOPBACK))
        await boot.start()
        bootstrap = [str(boot.listen_addrs[0].with_peer_id(boot.peer_id))]
    try:
        # Alice joins the namespace "chat" and answers requests her own way.
        async def alice_answers(peer, request):
            return {"from": "alice", "you said": request}

        async with kadfast.Client(bootstrap, namespace="chat", listen=LOOPBACK, handler=alice_answers):
            # Bob looks into the namespace without announcing himself.
            async with kadfast.Client(bootstrap, namespace="chat", listen=LOOPBACK, announce=False) as bob:
                peer = await bob.connect_to_peer()
                print("bob found", peer, "among", await bob.peers())
                print("alice replied:", await bob.request(peer, {"text": "hello alice"}))
    finally:
        if boot is not None:
            await boot.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
