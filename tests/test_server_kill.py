"""The sqlite store: a server killed with SIGKILL during a stream of puts keeps
every record whose put it had acknowledged, and starts again cleanly.

The server is the real command line, ``kadfast server --store sqlite:DB --key
K``. Kadfast client nodes in the test process (client mode: they never serve
kad, so they stay out of routing tables; 8 of them, as the server limits
PUT_VALUE per peer) send puts with quorum 1, 16 in flight. A put returns
success only when the server echoed the PUT_VALUE, which it does only after
the group commit that covers it (WAL with synchronous=FULL; the server holds
the replies of the requests at hand until their one commit is done). The
server is SIGKILLed while puts are
in flight; after a restart with the same key and database, every acknowledged
key must be served by the restarted server, under the same PeerId.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

from _procs import KadfastProc

from kadfast import Multiaddr, PeerId
from kadfast.kad.node import Config, KadError, KadNode, NotFound
from kadfast.loop import run as run_loop
from kadfast.store import Record

LOOP = "/ip4/127.0.0.1/tcp/0"
ACKS_BEFORE_KILL = 150
IN_FLIGHT = 16
N_CLIENTS = 8


class Server(KadfastProc):
    """``kadfast server`` on loopback with a key file and a sqlite store."""

    def __init__(self, key: str, db: str) -> None:
        super().__init__("server", "--listen", LOOP, "--json", "--key", key, "--store", f"sqlite:{db}")

    def listening(self, timeout: float = 30.0) -> dict:
        return self.wait_event("listening", timeout)


def client_for(addr: str) -> KadNode:
    node = KadNode(config=Config(mode="client", request_timeout=5.0))
    m = Multiaddr(addr)
    node.add_address(m.peer_id(), m.without_peer_id())
    return node


def test_sigkill_during_puts_keeps_acknowledged_records(tmp_path):
    key_file, db = str(tmp_path / "server.key"), str(tmp_path / "records.db")
    servers: list[Server] = []
    timings: list[str] = []
    t0 = time.monotonic()
    try:
        first = Server(key_file, db)
        servers.append(first)
        ev = first.listening()
        peer_id, addr = ev["peer_id"], ev["addrs"][0]

        acked: dict[bytes, bytes] = {}
        failed = []

        async def put_stream():
            # several clients (the server limits PUT_VALUE per peer: 20/s, bursts of 100)
            clients = [client_for(addr) for _ in range(N_CLIENTS)]
            for c in clients:
                await c.start()
            killed = asyncio.Event()
            counter = iter(range(10**9))
            try:
                async def putter(client):
                    while True:
                        i = next(counter)
                        key, value = f"/kill/{i:06d}".encode(), os.urandom(16).hex().encode()
                        try:
                            await client.put_record(Record(key, value), 1)
                        except KadError as exc:  # QuorumFailed: the server did not echo
                            failed.append((key, exc))
                            if killed.is_set():
                                return
                            assert len(failed) < 20, f"puts fail before the kill: {failed[:3]}"
                            continue
                        acked[key] = value
                        if len(acked) >= ACKS_BEFORE_KILL and not killed.is_set():
                            killed.set()
                            first.p.send_signal(signal.SIGKILL)  # mid-stream: other puts are in flight
                await asyncio.wait_for(asyncio.gather(*[putter(clients[i % N_CLIENTS]) for i in range(IN_FLIGHT)]), 60)
            finally:
                await asyncio.gather(*[c.stop() for c in clients])

        run_loop(put_stream)
        first.kill()
        assert first.p.returncode == -signal.SIGKILL
        timings.append(f"{time.monotonic() - t0:.1f}s: {len(acked)} puts acknowledged, {len(failed)} failed, then SIGKILL")
        assert len(acked) >= ACKS_BEFORE_KILL
        assert failed, "no put was in flight at the kill"

        # the database left behind is consistent (WAL recovery happens on open)
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

        second = Server(key_file, db)
        servers.append(second)
        ev2 = second.listening()
        assert ev2["peer_id"] == peer_id, "the restarted server has another identity"
        addr2 = ev2["addrs"][0]
        timings.append(f"{time.monotonic() - t0:.1f}s: restarted")

        async def check():
            client = client_for(addr2)  # a fresh client: nothing in its own store
            await client.start()
            sem = asyncio.Semaphore(IN_FLIGHT)
            server_id = PeerId.from_string(peer_id)

            async def get(key):
                async with sem:
                    try:
                        res = await client.get_record(key)
                    except NotFound:
                        return None
                    assert all(pr.peer == server_id for pr in res.records)
                    return res.best.value
            try:
                got = await asyncio.wait_for(asyncio.gather(*[get(k) for k in acked]), 60)
            finally:
                await client.stop()
            return dict(zip(acked, got))

        got = run_loop(check)
        lost = [k for k, v in got.items() if v != acked[k]]
        assert not lost, f"{len(lost)} acknowledged records lost or changed, e.g. {lost[:5]}"
        timings.append(f"{time.monotonic() - t0:.1f}s: all {len(acked)} acknowledged records served after the restart")

        # and it stops cleanly: SIGTERM, exit 0, nothing alarming on stderr
        assert second.stop() == 0, "".join(second.stderr)
        assert "Traceback" not in "".join(second.stderr), "".join(second.stderr)
    finally:
        for s in servers:
            s.kill()
        print("\n".join(timings))
