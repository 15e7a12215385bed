"""``kadfast server --workers N``: the routing tables of the workers, kept in
one order by the hub, answer as a single process's; the server end to end
(one port and PeerId, answers from every worker alike, a worker killed with
SIGKILL mid-load loses no acknowledged put and is restarted, SIGTERM stops
all)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
import urllib.request

import pytest
from _procs import KadfastProc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kadfast import Multiaddr, PeerId
from kadfast.kad.node import QUEUED, Config, KadNode
from kadfast.kad.pb import KadMessage, KadRecord, MessageType, decode_message
from kadfast.keys import Ed25519KeyPair
from kadfast.loop import run as run_loop
from kadfast.net import HostConfig
from kadfast.varint import decode_uvarint
from kadfast.workers import decode_change, encode_change

SEED = bytes(range(32))


def peer_id(n: int) -> PeerId:
    return PeerId(bytes.fromhex("002408011220") + n.to_bytes(32, "big"))


def addr_of(n: int) -> Multiaddr:
    return Multiaddr(f"/ip4/10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/tcp/4001")


class Hub:
    """The supervisor's relay in memory: changes handed back to every
    worker in the order they came, and the same peers met in that order by
    ``reference``, a node without workers."""

    def __init__(self, workers: list[KadNode], reference: KadNode) -> None:
        self.workers = workers
        self.reference = reference
        self.queue: list[tuple[int, tuple]] = []
        for i, w in enumerate(workers):
            w.routing_sync = self._link(i)

    def _link(self, i: int):
        hub = self

        class Link:
            def publish(self, change: tuple) -> None:
                hub.queue.append((i, decode_change(encode_change(change))))  # as on the socket
        return Link()

    def deliver(self, n: int | None = None) -> None:
        count = len(self.queue) if n is None else min(n, len(self.queue))
        for _ in range(count):
            origin, change = self.queue.pop(0)
            for i, w in enumerate(self.workers):
                w.apply_routing_change(change, i == origin)
            ref = self.reference
            kind, peer = change[0], change[1]
            if kind == "up":
                if change[3]:
                    ref.host.addrbook.add(peer, change[3], ref.clock())
                ref.update_peer(peer, ref.clock(), change[2])
            elif kind == "remove":
                ref.remove_peer(peer)
            else:
                ref.mark_unreachable(peer)


def answer(node: KadNode, target: bytes) -> list[tuple[str, frozenset[str]]]:
    reply = node.server.handle(peer_id(10**9), KadMessage(MessageType.FIND_NODE, key=target), node.clock())
    if isinstance(reply, bytes):
        n, pos = decode_uvarint(reply, 0)
        reply = decode_message(reply[pos:pos + n])
    assert reply is not None
    return [(str(p.peer_id), frozenset(str(a) for a in p.addrs)) for p in reply.closer_peers]


events = st.lists(
    st.tuples(st.sampled_from(["seen", "seen", "seen", "failed", "left"]), st.integers(0, 299),
              st.integers(0, 1), st.booleans(), st.integers(0, 3)),
    min_size=1, max_size=400)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events, targets=st.lists(st.integers(0, 2**256 - 1), min_size=1, max_size=5))
def test_two_workers_answer_as_one_process(events, targets):
    """Random peers met by random workers in random order (full buckets,
    failures and departures among them): once the hub has handed every
    change back, both workers' FIND_NODE answers equal those of a single
    node that met the same peers in the hub's order."""
    t = [1000.0]
    clock = lambda: t[0]  # noqa: E731
    cfg = Config(mode="server")
    workers = [KadNode(Ed25519KeyPair.from_seed(SEED), cfg, clock=clock) for _ in range(2)]
    reference = KadNode(Ed25519KeyPair.from_seed(SEED), cfg, clock=clock)
    hub = Hub(workers, reference)
    for kind, n, worker, connected, deliver in events:
        w = workers[worker]
        peer = peer_id(n * 7919 + 1)
        t[0] += 0.5
        if kind == "seen":
            w.host.addrbook.add(peer, [addr_of(n)], clock())  # as identify would
            assert w.update_peer(peer, clock(), bool(connected)) in (QUEUED, 5)
        elif kind == "failed":
            if peer in w.routing_table_peers():
                w.mark_unreachable(peer)
        elif peer in w.routing_table_peers():
            w.remove_peer(peer)
        if deliver == 0:
            hub.deliver(random.randint(0, len(hub.queue)))
    hub.deliver()
    assert len(workers[0].table) == len(workers[1].table) == len(reference.table)
    for target in targets:
        key = target.to_bytes(32, "big")
        want = answer(reference, key)
        assert answer(workers[0], key) == want
        assert answer(workers[1], key) == want


def test_a_snapshot_rebuilds_a_table():
    t = [1000.0]
    clock = lambda: t[0]  # noqa: E731
    cfg = Config(mode="server")
    old = KadNode(Ed25519KeyPair.from_seed(SEED), cfg, clock=clock)
    for n in range(200):
        old.host.addrbook.add(peer_id(n), [addr_of(n)], clock())
        old.update_peer(peer_id(n), clock(), n % 3 != 0)
    new = KadNode(Ed25519KeyPair.from_seed(SEED), cfg, clock=clock)
    for change in old.routing_snapshot():
        new.apply_routing_change(decode_change(encode_change(change)), False)
    assert [e.value for e in new.table] == [e.value for e in old.table]
    assert [e.connected for e in new.table] == [e.connected for e in old.table]
    for n in range(0, 2**256, 2**250):
        assert answer(new, n.to_bytes(32, "big")) == answer(old, n.to_bytes(32, "big"))


# -- the server end to end -----------------------------------------------------------
def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out |= {int(x) for x in f.read().split()}
    return out


def metric(port: int, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = await pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def ask(server: PeerId, addr: Multiaddr, msg: KadMessage) -> KadMessage:
    """One request on a connection of its own (a new source port: the
    kernel may hand it to either worker)."""
    node = KadNode(config=Config(mode="client"))
    await node.start()
    try:
        node.host.addrbook.add(server, [addr], node.clock(), source="config")
        return await node.request(server, msg)
    finally:
        await node.stop()


@pytest.fixture
def two_workers(tmp_path):
    port = free_port()
    proc = KadfastProc("server", "--workers", "2", "--json", "--listen", "/ip4/127.0.0.1/tcp/0",
                       "--store", f"sqlite:{tmp_path / 'store.db'}", "--metrics-port", str(port))
    try:
        ev = proc.wait_event("listening", timeout=60)
        yield proc, ev, port
    finally:
        code = proc.stop()
        assert code == 0, "".join(proc.stderr[-20:])


def test_two_workers_share_port_peer_id_and_table(two_workers):
    proc, ev, mport = two_workers
    assert ev["workers"] == 2 and len(ev["worker_pids"]) == 2
    assert children(proc.p.pid) == set(ev["worker_pids"])
    server = PeerId.from_string(ev["peer_id"])
    addr = Multiaddr(ev["addrs"][0]).without_peer_id()

    async def main():
        peers = []
        for _ in range(6):  # kad servers that join: each lands on one worker
            n = KadNode(config=Config(mode="server"), host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
            await n.start()
            n.add_address(server, addr)
            await n.request(server, KadMessage(MessageType.FIND_NODE, key=n.peer_id.to_bytes()))
            peers.append(n)
        want = {str(n.peer_id) for n in peers}
        try:
            target = os.urandom(32)
            msg = KadMessage(MessageType.FIND_NODE, key=target)

            async def all_known():
                reply = await ask(server, addr, msg)
                return {str(p.peer_id) for p in reply.closer_peers} == want
            await wait_for(all_known, 30, "the server to know all six peers")
            # answers from fresh connections, spread over both workers, agree
            answers = set()
            for _ in range(16):
                reply = await ask(server, addr, msg)
                answers.add(tuple(str(p.peer_id) for p in reply.closer_peers))
            assert len(answers) == 1 and set(next(iter(answers))) == want
        finally:
            for n in peers:
                await n.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))
    served = metric(mport, "kadfast_worker_inbound_requests")
    deadline = time.monotonic() + 5
    while sum(served.values()) < 22 and time.monotonic() < deadline:  # stats come once a second
        time.sleep(0.2)
        served = metric(mport, "kadfast_worker_inbound_requests")
    assert len(served) == 2 and all(v > 0 for v in served.values()), served
    assert metric(mport, "kadfast_workers")[""] == 2


def test_a_killed_worker_loses_no_acknowledged_put(two_workers):
    proc, ev, _ = two_workers
    server = PeerId.from_string(ev["peer_id"])
    addr = Multiaddr(ev["addrs"][0]).without_peer_id()
    pids = set(ev["worker_pids"])
    acked: list[bytes] = []
    failed = 0

    async def put_loop(stop: asyncio.Event):
        nonlocal failed
        i = 0
        while not stop.is_set():
            key = b"/v/" + str(i).encode()
            i += 1
            rec = KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, b"value-" + key))
            try:
                await ask(server, addr, rec)
                acked.append(key)
            except Exception:
                failed += 1

    async def main():
        stop = asyncio.Event()
        loads = [asyncio.ensure_future(put_loop(stop)) for _ in range(4)]
        await wait_for(lambda: asyncio.sleep(0, len(acked) >= 20), 60, "20 acknowledged puts")
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        before = len(acked)
        await wait_for(lambda: asyncio.sleep(0, len(acked) >= before + 20), 60, "puts after the kill")

        async def restarted():
            now = children(proc.p.pid)
            return len(now) == 2 and victim not in now
        await wait_for(restarted, 30, "the killed worker to be restarted")
        stop.set()
        await asyncio.gather(*loads)
        # every acknowledged put is there, whichever worker answers
        for key in acked:
            reply = await ask(server, addr, KadMessage(MessageType.GET_VALUE, key=key))
            assert reply.record is not None and reply.record.value == b"value-" + key, key

    run_loop(lambda: asyncio.wait_for(main(), 180))
    assert len(acked) >= 40


def test_sigterm_stops_every_worker(tmp_path):
    proc = KadfastProc("server", "--workers", "2", "--json", "--listen", "/ip4/127.0.0.1/tcp/0")
    ev = proc.wait_event("listening", timeout=60)
    pids = ev["worker_pids"]
    assert proc.stop() == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} still runs"
