#!/usr/bin/env python3
"""Connection churn: new connections (TCP, Noise, Yamux, identify) a kadfast
server accepts per second, and its memory per idle connection, with 10,000
idle connections held.

    python bench/churn_bench.py [--quick] [--json] [--dialer go|raw] [--hold 10000]
                                [--duration S] [--concurrency N] [--identities N]
                                [--workers 2] [--loop uvloop|asyncio] [--transport tcp|quic]
    python bench/churn_bench.py --compare kadfast,rust[,go] [--runs 5] [--duration S]
                                [--transport tcp|quic] [--json]

Targets (TCP): at least 1,000 connections per second per server core
(server CPU per connection <= 1 ms) and at most 32 KiB of server memory per
idle connection. ``--transport quic`` runs the same phases over QUIC-v1
(go dialer only; every server listens on TCP and QUIC): TLS 1.3 with the
libp2p certificate instead of Noise, QUIC streams instead of Yamux, and a
libp2p ping stream in place of the Yamux ping; its figures are reported
beside TCP's, with no target yet.

The server is a kadfast ``KadNode`` (its ``Host``) in a child process of its
own (``python bench/churn_bench.py --serve``), driven through the interop
harness's ``Peer`` (ready line, ``stats``, ``gc``, ``stop``; killed in a
``finally``), with ``HostConfig(max_connections=20000, idle_timeout=1e9)`` so
that nothing it holds is closed as idle during the run, and its open-file
limit raised.

The dialing side (``--dialer``):

``go`` (the default): ``bench/dialers/go-churn``, a go-libp2p program (built
like the interop peers, into the interop cache outside the clone, rebuilt
when its sources change; needs Go) in one process using every CPU, driven
by JSON lines like an interop peer. A go-libp2p host keeps one connection
per peer, so every connection comes from a host of its own: ``--identities``
hosts (1,000) take turns while churning and one more host per held
connection; all are made before the clock runs. Each host: Ed25519
identity, no listen address, TCP only, Noise, Yamux (go-libp2p's defaults,
so held connections send a keep-alive ping every 30 s), go-libp2p's
identify, a resource manager without limits and no connection trimming.
Per connection: ``DialPeer`` (TCP connect, multistream ``/noise``, Noise XX,
multistream ``/yamux/1.0.0``), then both identify exchanges by go-libp2p's
identify service (it asks for the server's, and answers the server's
request); the connection is complete when go's identify of the server has
finished, our answer has been sent and a Yamux ping sent after it came back
(so the server has read our identify); when churning, it is then closed.
Every TCP connection comes from the next source address of 127.0.1.1 ...
127.0.250.254 (``IP_BIND_ADDRESS_NO_PORT``), so TIME_WAIT is spread over
63,500 addresses of 127.0.0.0/8 and never exhausts the ports of one.
``--concurrency`` (64) connections are in flight at once.

``raw``: a RAW kadfast client, not a kadfast ``Host``: ``--workers``
processes (uvloop) drive kadfast's sans-IO cores directly
(``MultistreamDialer``, ``NoiseHandshake``, ``NoiseTransport``,
``YamuxSession``, ``MultistreamListener``) from one ``asyncio.Protocol`` per
connection and do nothing but the wire work:

* identities (Ed25519 key, Noise static key with its signed payload, and the
  identify message the server will ask for) are made before the clock runs;
* the server's Noise payload signature is verified once per worker and the
  result cached (the server's static key and payload never change);
* per connection: TCP connect from a source address in 127.0.0.2-250
  (``IP_BIND_ADDRESS_NO_PORT``, so TIME_WAIT is spread over 249 addresses),
  multistream ``/noise``, Noise XX, multistream ``/yamux/1.0.0``, then both
  identify exchanges: we open ``/ipfs/id/1.0.0`` and read the server's
  answer to its end, and answer the server's identify stream with a
  pre-encoded message (public key, protocols, observed address); then a
  Yamux ping, whose pong proves the server has processed our identify answer
  (its identify completes), and -- when churning -- GoAway and close.

``--concurrency`` (32) connections per worker are in flight at once.

Phases, on one fresh server:

1. warm-up: a few hundred connections opened and closed;
2. hold: ``--hold`` connections (10,000; 2,000 with ``--quick``) opened and
   left idle; server RSS (``VmRSS`` of ``/proc/<pid>/status``, after a
   ``gc.collect()`` in the server) before and after, divided by the count:
   KiB per idle connection; also the open rate and the server's idle CPU;
3. churn with them held: connections opened, upgraded, identified and closed
   as fast as the dialer goes, for ``--duration`` seconds;
4. the held connections are checked (all still open on both sides) and
   closed; churn again with none held;
5. server RSS once everything is closed, and its per-peer state; then RSS
   after one ``malloc_trim`` (what ``kadfast server``'s ``MemoryTrimmer`` does
   once the connection count fell by 1,000).

``--compare IMPLS`` runs only churn phases with nothing held, against
several servers in the same run: ``kadfast`` (the server above) and the
interop peers ``rust`` (rust-libp2p: kad, identify, ping on a
current-thread tokio runtime, one core) and ``go`` (go-libp2p with
go-libp2p-kad-dht), each started once and measured in turn, ``--runs``
times (default 5), with the go dialer. Per server: the medians of server
CPU per connection and of accepted connections per server-CPU-second
(client-counted completions over the server process's CPU, all its
threads), and each kadfast figure over rust-libp2p's. Target: kadfast at
least 1.5x rust-libp2p's connections per server-CPU-second.

Per churn phase: connections per second (client-counted, and the server's
``ConnectionEstablished``/``PeerIdentified`` events in the same window),
server CPU (``/proc/<pid>/stat`` utime+stime) per connection, connections
per server-CPU-second, the CPU utilisation of server and dialer, and the
dialer's CPU per connection (same reading for the dialer's processes). The
dialer shares the machine with the server: when the server is below ~0.9 of
a core the dialer, not the server, limits the rate, and the
per-CPU-second figure is the one to compare with the target.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import multiprocessing as mp
import os
import resource
import signal
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HERE,
    ROOT,
    count_loop_errors,
    gc_rss,
    install_log_counter,
    kadfast_server_peer,
    load_harness,
    log_progress,
    machine_busy,
    make_emitter,
    proc_cpu,
    proc_rss_kib,
    ready_line,
    run_server,
    short_error,
    start_control,
)

sys.path.insert(0, str(ROOT))

TARGET_CONN_PER_CORE_S = 1000.0
TARGET_KIB_PER_CONN = 32.0
NOFILE = 65536
IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SOURCE_IPS = [f"127.0.0.{i}" for i in range(2, 251)]


def raise_nofile(want: int = NOFILE) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in ((want, max(want, hard)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------
# the server (child process): python bench/churn_bench.py --serve
# --------------------------------------------------------------------------


def serve(loop_kind: str) -> int:
    from kadfast.kad.node import Config, KadNode
    from kadfast.loop import tune_gc_for_server
    from kadfast.net import ConnectionClosed, ConnectionEstablished, HostConfig, PeerIdentified

    nofile = raise_nofile()
    counter = install_log_counter()
    emit = make_emitter()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_errors = count_loop_errors(loop)
        hcfg = HostConfig(
            listen_addrs=["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"],
            max_connections=20000,
            idle_timeout=1e9,
        )
        node = KadNode(config=Config(periodic_bootstrap_interval=1e12), host_config=hcfg)
        host = node.host
        await node.start()
        tune_gc_for_server()  # as `kadfast server` does
        counts = collections.Counter()
        close_reasons: collections.Counter[str] = collections.Counter()
        events = host.subscribe()

        async def count_events() -> None:
            while True:
                ev = await events.get()
                t = type(ev)
                if t is ConnectionEstablished:
                    counts["established"] += 1
                elif t is PeerIdentified:
                    counts["identified"] += 1
                elif t is ConnectionClosed:
                    counts["closed"] += 1
                    close_reasons[ev.reason.split(":")[0][:60]] += 1

        counter_task = loop.create_task(count_events())
        # time spent in the cyclic garbage collector, per generation
        gc_time = {"start": 0.0, "seconds": [0.0, 0.0, 0.0], "runs": [0, 0, 0]}

        def on_gc(phase, info):
            if phase == "start":
                gc_time["start"] = time.perf_counter()
            else:
                g = info["generation"]
                gc_time["seconds"][g] += time.perf_counter() - gc_time["start"]
                gc_time["runs"][g] += 1

        gc.callbacks.append(on_gc)
        done = asyncio.Event()

        def stats() -> dict:
            usage = host.usage()
            waited = host.identify_service.waited_for()
            return {
                "connections": host.connection_count(),
                "open": usage.open,
                "pending": usage.pending,
                "established": counts["established"],
                "identified": counts["identified"],
                "closed": counts["closed"],
                "close_reasons": dict(close_reasons.most_common(8)),
                "dropped_events": host.dropped_events,
                "peer_info": len(host.peer_info),
                "identified_futures": len(waited),
                "identified_futures_pending": host.identify_service.waits_pending(),
                "identified_futures_without_conn": sum(1 for p in waited if not host.connections(p)),
                "addrbook_peers": len(host.addrbook),
                "backoff": usage.backoff_entries,
                "tasks": usage.tasks,
                "routing_table": len(node.table),
                "quic_datagrams_in": sum(ep.datagrams_in for ep in host.quic_endpoints()),
                "quic_datagrams_out": sum(ep.datagrams_out for ep in host.quic_endpoints()),
                "rss_kib": proc_rss_kib(),
                "gc_objects": len(gc.get_objects()),
                "gc_seconds": [round(x, 3) for x in gc_time["seconds"]],
                "gc_runs": list(gc_time["runs"]),
                "loop_errors": dict(loop_errors.most_common(10)),
                "log": counter.summary(),
            }

        def collect(req) -> dict:
            t0 = time.perf_counter()
            n = gc.collect()
            return {"collected": n, "seconds": round(time.perf_counter() - t0, 3), "rss_kib": proc_rss_kib()}

        def trim(req) -> dict:
            # what `kadfast server`'s MemoryTrimmer does once many connections closed
            from kadfast.loop import malloc_trim

            t0 = time.perf_counter()
            ran = malloc_trim()
            return {"trimmed": ran, "seconds": round(time.perf_counter() - t0, 4), "rss_kib": proc_rss_kib()}

        start_control(loop, emit, done, {"stats": lambda req: stats(), "gc": collect, "trim": trim})
        emit(ready_line(loop_kind, loop, node.peer_id, node.listen_addrs, nofile=nofile))
        try:
            await done.wait()
        finally:
            counter_task.cancel()
            await node.stop()

    return run_server(main, loop_kind, emit)


# --------------------------------------------------------------------------
# the raw dialer (worker processes)
# --------------------------------------------------------------------------


class Identity:
    __slots__ = ("keypair", "static", "identify_msg")

    def __init__(self, observed) -> None:
        from kadfast.identify import encode_identify
        from kadfast.keys import Ed25519KeyPair
        from kadfast.noise import NoiseStaticKey

        self.keypair = Ed25519KeyPair.generate()
        self.static = NoiseStaticKey(self.keypair)
        # what a client-mode libp2p peer tells the server: no listen addresses,
        # no kad protocol (so the server does not add it to its routing table)
        self.identify_msg = encode_identify(
            public_key=self.keypair.public_key,
            protocols=[IDENTIFY_PROTOCOL, "/ipfs/ping/1.0.0", "/ipfs/id/push/1.0.0"],
            observed_addr=observed,
            protocol_version="ipfs/0.1.0",
            agent_version="kadfast-churn-bench/raw",
        )


class RawConn(asyncio.Protocol):
    """One dialed connection, driven through the sans-IO connection core
    (kadfast.net.upgrade): the upgrade, identify both ways, one ping."""

    def __init__(self, w: "Worker", ident: Identity, hold: bool) -> None:
        self.w = w
        self.ident = ident
        self.hold = hold
        self.loop = w.loop
        self.done: asyncio.Future = self.loop.create_future()
        self.tr = None
        self.core = None
        self.closed = False
        self.id_sid = None
        self.id_data = bytearray()  # the server's identify message
        self.got_identify = False
        self.answered = False
        self.ping_opaque = None
        self.finished = False

    # asyncio.Protocol
    def connection_made(self, tr) -> None:
        from kadfast.net.upgrade import ConnectionCore

        self.tr = tr
        # the deadlines are the worker's (connect's timeout): no timer here
        self.core = ConnectionCore(
            self.ident.keypair,
            initiator=True,
            now=0.0,
            expected_peer=self.w.server_pid,
            static_key=self.ident.static,
            supports_protocol=IDENTIFY_PROTOCOL.__eq__,
        )
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._events(self.core.receive_data(data, 0.0))
            if self.closed:
                return
            self._progress()
            self._flush()
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")

    def eof_received(self):
        self._fail("server closed the connection")
        return False

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self._fail(f"connection lost: {exc}" if exc else "connection closed")

    def _fail(self, reason: str) -> None:
        was_open = self.finished
        self.closed = True
        if not self.done.done():
            self.done.set_exception(ConnectionError(reason[:160]))
        if was_open and self.hold:
            self.w.held_lost += 1
            self.w.held_lost_reasons[reason[:80]] += 1
        if self.tr is not None:
            self.tr.abort()

    def _flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            self.tr.write(out)

    def _events(self, events) -> None:
        from kadfast.net import upgrade as u

        core = self.core
        for ev in events:
            t = type(ev)
            if t is u.StreamData:
                if ev.stream_id == self.id_sid:
                    self.id_data += ev.data
            elif t is u.Upgraded:
                # our identify of the server: proposal and FIN at once
                sid = self.id_sid = core.open_stream([IDENTIFY_PROTOCOL], 0.0)
                core.close_stream(sid)
            elif t is u.OutboundStreamNegotiated:
                self.id_data += ev.data
            elif t is u.InboundStreamNegotiated:  # the server's identify of us
                core.send(ev.stream_id, self.ident.identify_msg)
                core.close_stream(ev.stream_id)
                self.answered = True
            elif t is u.StreamEnded:
                if ev.stream_id == self.id_sid:
                    if not self.id_data:
                        raise RuntimeError("server's identify stream ended without an identify message")
                    if not self.w.checked_identify:
                        self.w.check_identify(bytes(self.id_data))
                    self.got_identify = True
            elif t is u.OutboundStreamFailed:
                raise RuntimeError(f"identify stream {ev.stream_id}: {ev.reason}")
            elif t is u.StreamResetByPeer:
                raise RuntimeError(f"server reset stream {ev.stream_id}")
            elif t is u.PongReceived:
                if ev.opaque == self.ping_opaque:
                    self._finish()
            elif t is u.SessionClosed:
                raise RuntimeError(f"yamux session closed: {ev.reason}")
            elif t is u.ConnectionFailed:
                raise RuntimeError(ev.reason)

    def _progress(self) -> None:
        if self.got_identify and self.answered and self.ping_opaque is None:
            self.ping_opaque = self.core.ping(0.0)

    def _finish(self) -> None:
        self.finished = True
        if not self.done.done():
            self.done.set_result(None)
        if not self.hold:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.core.close()
            self._flush()
        self.tr.close()


class Worker:
    def __init__(self, index: int, n_workers: int) -> None:
        self.index = index
        self.srcs = SOURCE_IPS[index::n_workers]
        self.src_i = 0
        self.loop = asyncio.get_event_loop()
        self.server_pid = None
        self.server_addr = None
        self.churn_ids: list[Identity] = []
        self.hold_ids: list[Identity] = []
        self.held: list[RawConn] = []
        self.held_lost = 0
        self.held_lost_reasons: collections.Counter[str] = collections.Counter()
        self.checked_identify = False
        self.errors: collections.Counter[str] = collections.Counter()

    def check_identify(self, data: bytes) -> None:
        from kadfast.identify import IdentifyReader

        r = IdentifyReader()
        r.feed(data)
        info = r.eof()
        if info.peer_id != self.server_pid:
            raise RuntimeError(f"identify from the server carries {info.peer_id}")
        self.checked_identify = True

    def init(self, maddr: str, peer_id: str, n_churn: int, n_hold: int) -> dict:
        import kadfast.noise as kn
        from kadfast import Multiaddr, PeerId

        # the server's payload never changes: verify its signature once
        orig = kn._verify_payload
        cache: dict = {}

        def verify_cached(payload, remote_static):
            key = (payload, remote_static)
            v = cache.get(key)
            if v is None:
                v = orig(payload, remote_static)
                if len(cache) < 8:
                    cache[key] = v
            return v

        kn._verify_payload = verify_cached
        ma = Multiaddr(maddr)
        self.server_pid = PeerId.from_string(peer_id)
        self.server_addr = (ma.value_for("ip4"), int(ma.value_for("tcp")))
        observed = ma.without_peer_id()
        t0 = time.perf_counter()
        self.churn_ids = [Identity(observed) for _ in range(n_churn)]
        self.hold_ids = [Identity(observed) for _ in range(n_hold)]
        return {"identities": n_churn + n_hold, "seconds": round(time.perf_counter() - t0, 2)}

    async def connect(self, ident: Identity, hold: bool, timeout: float = 20.0) -> RawConn:
        loop = self.loop
        src = self.srcs[self.src_i % len(self.srcs)]
        self.src_i += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            sock.bind((src, 0))
            await asyncio.wait_for(loop.sock_connect(sock, self.server_addr), timeout)
            _, conn = await loop.create_connection(lambda: RawConn(self, ident, hold), sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            await asyncio.wait_for(asyncio.shield(conn.done), timeout)
        except BaseException:
            conn._fail("timed out" if not conn.done.done() else "failed")
            raise
        return conn

    async def churn(self, start_at: float, stop_at: float, concurrency: int) -> dict:
        counted = [0, 0]  # in the window, all
        errors: collections.Counter[str] = collections.Counter()
        ids = self.churn_ids
        k = [self.index * 7919]
        cpu0 = proc_cpu()

        async def one_loop() -> None:
            streak = 0
            while time.time() < stop_at:
                ident = ids[k[0] % len(ids)]
                k[0] += 1
                try:
                    await self.connect(ident, hold=False)
                except (Exception, asyncio.TimeoutError) as exc:
                    errors[short_error(exc) if not isinstance(exc, asyncio.TimeoutError) else "timed out"] += 1
                    streak += 1
                    if streak > 200:
                        return
                    await asyncio.sleep(0.01)
                    continue
                streak = 0
                now = time.time()
                counted[1] += 1
                if start_at <= now < stop_at:
                    counted[0] += 1

        await asyncio.gather(*[one_loop() for _ in range(concurrency)])
        await asyncio.sleep(0.05)  # let the last closes go out
        return {"in_window": counted[0], "total": counted[1], "errors": dict(errors.most_common(5)),
                "error_count": sum(errors.values()), "cpu": proc_cpu() - cpu0}

    async def open_held(self, n: int, concurrency: int) -> dict:
        errors: collections.Counter[str] = collections.Counter()
        ids = self.hold_ids[len(self.held):len(self.held) + n]
        it = iter(ids)
        t0 = time.perf_counter()
        cpu0 = proc_cpu()

        async def one_loop() -> None:
            for ident in it:
                try:
                    self.held.append(await self.connect(ident, hold=True))
                except (Exception, asyncio.TimeoutError) as exc:
                    errors[short_error(exc) if not isinstance(exc, asyncio.TimeoutError) else "timed out"] += 1

        await asyncio.gather(*[one_loop() for _ in range(concurrency)])
        return {"opened": len(self.held), "seconds": time.perf_counter() - t0, "cpu": proc_cpu() - cpu0,
                "errors": dict(errors.most_common(5)), "error_count": sum(errors.values())}

    def held_status(self) -> dict:
        alive = sum(1 for c in self.held if not c.closed and c.core.is_open)
        return {"held": len(self.held), "alive": alive, "lost": self.held_lost,
                "lost_reasons": dict(self.held_lost_reasons.most_common(3)), "rss_kib": proc_rss_kib()}

    async def close_held(self) -> dict:
        for c in self.held:
            c.close()
        n = len(self.held)
        self.held.clear()
        await asyncio.sleep(0.5)
        return {"closed": n}


def worker_main(index: int, n_workers: int, loop_kind: str, pipe) -> None:
    """A dialer process: commands from the parent over ``pipe``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile()
    install_log_counter()
    from kadfast.loop import new_event_loop

    loop = new_event_loop(loop_kind)
    asyncio.set_event_loop(loop)
    w = Worker(index, n_workers)
    while True:
        try:
            cmd, args = pipe.recv()
        except (EOFError, OSError):
            break
        try:
            if cmd == "init":
                res = w.init(*args)
            elif cmd == "churn":
                res = loop.run_until_complete(w.churn(*args))
            elif cmd == "open":
                res = loop.run_until_complete(w.open_held(*args))
            elif cmd == "status":
                loop.run_until_complete(asyncio.sleep(0.2))  # take in whatever arrived
                res = w.held_status()
            elif cmd == "close_held":
                res = loop.run_until_complete(w.close_held())
            elif cmd == "stop":
                pipe.send({"ok": True})
                break
            else:
                res = {"error": f"unknown command {cmd}"}
        except Exception as exc:
            res = {"error": short_error(exc)}
        pipe.send(res)
    with contextlib.suppress(Exception):
        loop.close()


class Workers:
    def __init__(self, n: int, loop_kind: str) -> None:
        ctx = mp.get_context("spawn")
        self.procs = []
        self.pipes = []
        for i in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(i, n, loop_kind, b), daemon=True, name=f"churn-dialer-{i}")
            p.start()
            b.close()
            self.procs.append(p)
            self.pipes.append(a)

    def call(self, cmd: str, per_worker_args, timeout: float = 600.0) -> list[dict]:
        for pipe, args in zip(self.pipes, per_worker_args):
            pipe.send((cmd, args))
        out = []
        deadline = time.monotonic() + timeout
        for pipe, p in zip(self.pipes, self.procs):
            while not pipe.poll(0.5):
                if not p.is_alive():
                    raise RuntimeError(f"dialer worker {p.name} died (exit {p.exitcode})")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dialer worker {p.name}: {cmd} timed out")
            out.append(pipe.recv())
        for r in out:
            if isinstance(r, dict) and "error" in r and len(r) == 1:
                raise RuntimeError(f"dialer worker: {cmd}: {r['error']}")
        return out

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) or 0.0 for p in self.procs if p.pid)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("stop", ()))
        for p in self.procs:
            p.join(timeout=3)
            if p.is_alive():
                p.kill()
                p.join(timeout=3)


class RawDialer:
    """``--dialer raw``: the worker processes above."""

    kind = "raw"

    def __init__(self, opts) -> None:
        self.n = opts.workers
        self.concurrency = opts.concurrency  # per worker
        self.identities = opts.identities  # per worker
        self.workers = Workers(opts.workers, "uvloop")
        self.per_hold: list[int] = []

    def describe(self) -> str:
        return (f"RAW kadfast client in {self.n} worker process(es) on uvloop: kadfast's sans-IO cores "
                "(multistream, Noise XX, Yamux) driven directly, identities and identify answers made in advance, "
                "the server's Noise signature verified once; sources spread over 127.0.0.2-250")

    def total_concurrency(self) -> int:
        return self.concurrency * self.n

    def pids(self) -> list[int]:
        return [p.pid for p in self.workers.procs if p.pid]

    def cpu(self) -> float:
        return self.workers.cpu()

    def prepare(self, maddr: str, peer_id: str, hold: int) -> dict:
        n = self.n
        self.per_hold = [hold // n + (1 if i < hold % n else 0) for i in range(n)]
        init = self.workers.call("init", [(maddr, peer_id, self.identities, self.per_hold[i]) for i in range(n)])
        return {"seconds": max(r["seconds"] for r in init), "identities": sum(r["identities"] for r in init)}

    def warm_up(self, seconds: float) -> None:
        self.workers.call("churn", [(time.time(), time.time() + seconds, 8)] * self.n)

    def open_held(self) -> dict:
        res = self.workers.call("open", [(self.per_hold[i], self.concurrency) for i in range(self.n)])
        errors: collections.Counter[str] = collections.Counter()
        for r in res:
            errors.update(r.get("errors", {}))
        return {"opened": sum(r["opened"] for r in res), "errors": errors}

    def churn_start(self, start_at: float, stop_at: float) -> None:
        for pipe in self.workers.pipes:
            pipe.send(("churn", (start_at, stop_at, self.concurrency)))

    def churn_finish(self) -> dict:
        res = []
        for pipe, p in zip(self.workers.pipes, self.workers.procs):
            while not pipe.poll(0.5):
                if not p.is_alive():
                    raise RuntimeError(f"dialer worker {p.name} died")
            res.append(pipe.recv())
        for r in res:
            if "error" in r and len(r) == 1:
                raise RuntimeError(f"dialer worker: churn: {r['error']}")
        errors: collections.Counter[str] = collections.Counter()
        for r in res:
            errors.update(r.get("errors", {}))
        return {"in_window": sum(r.get("in_window", 0) for r in res), "total": sum(r.get("total", 0) for r in res),
                "errors": errors}

    def held_status(self) -> dict:
        status = self.workers.call("status", [()] * self.n)
        return {"alive": sum(s["alive"] for s in status), "lost": sum(s["lost"] for s in status),
                "lost_reasons": [s["lost_reasons"] for s in status if s["lost_reasons"]],
                "rss_kib": [s["rss_kib"] for s in status]}

    def close_held(self) -> None:
        self.workers.call("close_held", [()] * self.n)

    def stop(self) -> None:
        self.workers.stop()


def go_dialer_build(harness):
    """The build of bench/dialers/go-churn, cached like the interop peers."""

    class GoChurnDialerBuild(harness.GoBuild):
        impl = "go-churn"
        binary_name = "kadfast-go-churn"

    return GoChurnDialerBuild(peers_dir=HERE / "dialers")


class GoDialer:
    """``--dialer go``: bench/dialers/go-churn (go-libp2p), one process,
    driven like an interop peer."""

    kind = "go"

    def __init__(self, opts, harness) -> None:
        self.concurrency = opts.concurrency  # in all
        self.identities = opts.identities  # churn hosts
        build = go_dialer_build(harness)
        t0 = time.monotonic()
        try:
            res = build.ensure()
        except harness.BuildError as exc:
            raise RuntimeError(f"cannot build the go dialer (use --dialer raw without Go): {exc}") from None
        self.build_seconds = round(time.monotonic() - t0, 1)
        self.build_cached = res.cached
        env = dict(os.environ)
        env.pop("GOMAXPROCS", None)  # all CPUs
        self.peer = harness.Peer("go-churn", res.argv, cwd=res.cwd, env=env, name="churn-dialer-go")
        self.peer.start(timeout=60)
        self.ready = self.peer.ready
        self.maddr = ""
        self.hold = 0
        self._churn = None
        self.transport = opts.transport

    def describe(self) -> str:
        return (f"go-libp2p {self.ready.get('go_libp2p')} (bench/dialers/go-churn, GOMAXPROCS "
                f"{self.ready.get('gomaxprocs')}): one host per connection in flight or held (Ed25519, TCP, Noise, "
                "Yamux, go-libp2p's identify; rcmgr without limits, no connection trimming); a connection is "
                "complete when go's identify of the server finished, we answered the server's identify and a Yamux "
                f"ping after that came back; sources round robin over {self.ready.get('sources')} addresses of "
                "127.0.0.0/8 (IP_BIND_ADDRESS_NO_PORT)"
                if self.transport == "tcp" else
                f"go-libp2p {self.ready.get('go_libp2p')} (bench/dialers/go-churn, GOMAXPROCS "
                f"{self.ready.get('gomaxprocs')}): one host per connection in flight or held (Ed25519, QUIC-v1 "
                "(quic-go), go-libp2p's identify; rcmgr without limits, no connection trimming); a connection is "
                "complete when go's identify of the server finished, we answered the server's identify and a libp2p "
                "ping stream opened after that came back; each host's UDP socket on its own address of "
                "127.0.0.0/8")

    def total_concurrency(self) -> int:
        return self.concurrency

    def pids(self) -> list[int]:
        return [self.peer.proc.pid]

    def cpu(self) -> float:
        return proc_cpu(self.peer.proc.pid) or 0.0

    def prepare(self, maddr: str, peer_id: str, hold: int) -> dict:
        self.maddr = maddr
        self.hold = hold
        r = self.peer.call("prepare", addr=maddr, churn_hosts=max(self.identities, self.concurrency),
                           hold_hosts=hold, transport=self.transport, timeout=600)
        return {"seconds": round(r["seconds"], 2), "identities": r["churn_hosts"] + r["hold_hosts"],
                "goroutines": r["goroutines"]}

    def warm_up(self, seconds: float) -> None:
        t = time.time()
        self.peer.call("churn", addr=self.maddr, start_at=t, stop_at=t + seconds,
                       concurrency=min(16, self.concurrency), timeout=seconds + 60)

    def open_held(self) -> dict:
        r = self.peer.call("hold", addr=self.maddr, count=self.hold, concurrency=self.concurrency, timeout=900)
        return {"opened": r["opened"], "errors": collections.Counter(r.get("errors", {}))}

    def churn_start(self, start_at: float, stop_at: float) -> None:
        pool = ThreadPoolExecutor(1)
        fut = pool.submit(self.peer.call, "churn", addr=self.maddr, start_at=start_at, stop_at=stop_at,
                          concurrency=self.concurrency, timeout=stop_at - time.time() + 60)
        pool.shutdown(wait=False)
        self._churn = fut

    def churn_finish(self) -> dict:
        r = self._churn.result()
        self._churn = None
        return {"in_window": r["in_window"], "total": r["total"], "errors": collections.Counter(r.get("errors", {}))}

    def held_status(self) -> dict:
        r = self.peer.call("check_held", timeout=30)
        st = self.peer.call("stats", timeout=30)
        return {"alive": r["alive"], "lost": r["lost"], "lost_reasons": [], "rss_kib": [st["rss_kib"]],
                "goroutines": st["goroutines"]}

    def close_held(self) -> None:
        self.peer.call("close_held", timeout=60)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.peer.stop(timeout=10)


# --------------------------------------------------------------------------
# the parent: phases
# --------------------------------------------------------------------------


def dial_addr(peer, transport: str) -> str:
    """The server's address to dial over ``transport`` (with ``/p2p/``)."""
    if transport == "tcp":
        return peer.maddr
    for a in peer.addrs:
        if a.endswith("/quic-v1"):
            return f"{a}/p2p/{peer.peer_id}"
    raise RuntimeError(f"the server announces no QUIC address: {peer.addrs}")


#: what the rust and go servers listen on in --compare
COMPARE_LISTEN = "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/udp/0/quic-v1"


def sleep_until(t: float) -> None:
    d = t - time.time()
    if d > 0:
        time.sleep(d)


def churn_phase(peer, dialer, duration: float, label: str) -> dict:
    pid = peer.proc.pid
    lead = 1.0  # the dialer starts at once; the window opens a second later
    t_cmd = time.time()
    start_at = t_cmd + lead
    stop_at = start_at + duration
    dialer.churn_start(start_at, stop_at)
    sleep_until(start_at)
    s0 = peer.call("stats", timeout=10)
    cs0, cw0, busy0, t0 = proc_cpu(pid), dialer.cpu(), machine_busy(), time.time()
    sleep_until(stop_at)
    s1 = peer.call("stats", timeout=10)
    cs1, cw1, busy1, t1 = proc_cpu(pid), dialer.cpu(), machine_busy(), time.time()
    res = dialer.churn_finish()
    dt = t1 - t0
    client_n = res["in_window"]
    est = s1["established"] - s0["established"]
    ident = s1["identified"] - s0["identified"]
    s_cpu = cs1 - cs0 if cs0 is not None and cs1 is not None else None
    w_cpu = cw1 - cw0
    errors = res["errors"]
    out = {
        "phase": label,
        "seconds": round(dt, 2),
        "concurrency": dialer.total_concurrency(),
        "client_completed": client_n,
        "client_per_s": round(client_n / dt, 1),
        "server_established": est,
        "server_identified": ident,
        "server_per_s": round(est / dt, 1),
        "server_cpu_s": round(s_cpu, 2) if s_cpu is not None else None,
        "server_cpu_ms_per_conn": round(s_cpu / est * 1e3, 3) if s_cpu and est else None,
        "conn_per_server_cpu_s": round(est / s_cpu, 1) if s_cpu else None,
        "server_util": round(s_cpu / dt, 2) if s_cpu is not None else None,
        "dialer_util": round(w_cpu / dt, 2),
        "dialer_cpu_ms_per_conn": round(w_cpu / client_n * 1e3, 3) if client_n else None,
        "other_util": round((busy1 - busy0 - (s_cpu or 0) - w_cpu) / dt, 2) if busy0 is not None and busy1 is not None else None,
        "server_open_connections_after": s1["open"],
        "server_gc_ms_per_conn": round(sum(b - a for a, b in zip(s0["gc_seconds"], s1["gc_seconds"])) / est * 1e3, 3) if est else None,
        "server_gc_runs": [b - a for a, b in zip(s0["gc_runs"], s1["gc_runs"])],
        "errors": dict(errors.most_common(5)),
        "error_count": sum(errors.values()),
    }
    if est and s1.get("quic_datagrams_in"):
        out["server_quic_datagrams_per_conn"] = [round((s1["quic_datagrams_in"] - s0["quic_datagrams_in"]) / est, 1),
                                                 round((s1["quic_datagrams_out"] - s0["quic_datagrams_out"]) / est, 1)]
    log_progress(f"  {label}: {out['server_per_s']:.0f} conn/s (client {out['client_per_s']:.0f}), "
                 f"server {out['server_cpu_ms_per_conn']} ms CPU/conn, util server {out['server_util']} "
                 f"dialer {out['dialer_util']} ({out['dialer_cpu_ms_per_conn']} ms CPU/conn), errors {out['error_count']}")
    return out


def compare_phase(pid: int, maddr: str, dialer: "GoDialer", duration: float) -> dict:
    """One churn phase against the server process ``pid`` at ``maddr``,
    counted by the dialer (the same figure for every implementation)."""
    lead = 0.5
    start_at = time.time() + lead
    stop_at = start_at + duration
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(dialer.peer.call, "churn", addr=maddr, start_at=start_at, stop_at=stop_at,
                      concurrency=dialer.concurrency, timeout=duration + lead + 60)
    pool.shutdown(wait=False)
    sleep_until(start_at)
    cs0, cw0, t0 = proc_cpu(pid), dialer.cpu(), time.time()
    sleep_until(stop_at)
    cs1, cw1, t1 = proc_cpu(pid), dialer.cpu(), time.time()
    r = fut.result()
    n = r["in_window"]
    dt = t1 - t0
    s_cpu = (cs1 or 0.0) - (cs0 or 0.0)
    errors = collections.Counter(r.get("errors", {}))
    return {
        "conn_per_s": round(n / dt, 1),
        "server_cpu_ms_per_conn": round(s_cpu / n * 1e3, 3) if n else None,
        "conn_per_server_cpu_s": round(n / s_cpu, 1) if s_cpu > 0 else None,
        "server_util": round(s_cpu / dt, 2),
        "dialer_util": round((cw1 - cw0) / dt, 2),
        "errors": sum(errors.values()),
    }


def run_compare(opts) -> dict:
    """Churn (nothing held) against each server of ``opts.compare``, in turn,
    ``opts.runs`` times; medians and ratios over rust-libp2p."""
    harness = load_harness()
    raise_nofile()
    impls = [i.strip() for i in opts.compare.split(",") if i.strip()]
    report: dict[str, Any] = {"config": {"cpus": os.cpu_count(), "runs": opts.runs, "churn_seconds": opts.duration,
                                         "concurrency": opts.concurrency, "impls": impls,
                                         "transport": opts.transport}, "servers": {}}
    servers: dict[str, tuple[Any, int]] = {}
    dialers: dict[str, GoDialer] = {}  # one each: a go-churn dialer serves one server
    t_start = time.monotonic()
    try:
        for impl in impls:
            if impl == "kadfast":
                peer = kadfast_server_peer(harness, __file__, "churn-server", "--loop", opts.loop)
                peer.start(timeout=60)
                desc = f"kadfast KadNode/{opts.loop}"
            else:
                build = harness.build_for(impl).ensure()
                peer = harness.Peer(impl, build.argv, cwd=build.cwd, listen=COMPARE_LISTEN,
                                    name=f"churn-server-{impl}")
                peer.start(timeout=120)
                desc = {"rust": "rust-libp2p", "go": "go-libp2p"}.get(impl, impl)
            servers[impl] = (peer, peer.proc.pid, dial_addr(peer, opts.transport))
            report["servers"][impl] = {"description": desc, "runs": []}
            dialer = GoDialer(opts, harness)
            dialers[impl] = dialer
            report["config"]["dialer"] = dialer.describe()
            dialer.prepare(servers[impl][2], peer.peer_id, 0)
            dialer.warm_up(1.0)
        for run in range(opts.runs):
            for impl, (_peer, pid, addr) in servers.items():
                res = compare_phase(pid, addr, dialers[impl], opts.duration)
                report["servers"][impl]["runs"].append(res)
                log_progress(f"  run {run + 1}/{opts.runs} {impl}: {res['conn_per_s']:.0f} conn/s, server "
                             f"{res['server_cpu_ms_per_conn']} ms CPU/conn = {res['conn_per_server_cpu_s']} "
                             f"conn/server-CPU-s (util {res['server_util']}), errors {res['errors']}")
                time.sleep(0.5)
    except Exception as exc:
        report["error"] = short_error(exc)
    finally:
        for d in dialers.values():
            d.stop()
        for peer, _, _ in servers.values():
            with contextlib.suppress(Exception):
                peer.stop(timeout=10)
    for entry in report["servers"].values():
        runs = [r for r in entry["runs"] if r.get("conn_per_server_cpu_s")]
        for f in ("conn_per_s", "server_cpu_ms_per_conn", "conn_per_server_cpu_s", "server_util"):
            vals = [r[f] for r in runs if r.get(f) is not None]
            if vals:
                entry[f] = round(statistics.median(vals), 3)
    base = report["servers"].get("rust", {}).get("conn_per_server_cpu_s")
    kf = report["servers"].get("kadfast", {}).get("conn_per_server_cpu_s")
    if base and kf:
        report["kadfast_over_rust"] = round(kf / base, 2)
        if opts.transport == "tcp":
            report["target_met"] = {"kadfast >= 1.5x rust-libp2p's connections per server-CPU-second": kf / base >= 1.5}
    gbase = report["servers"].get("go", {}).get("conn_per_server_cpu_s")
    if gbase and kf:
        report["kadfast_over_go"] = round(kf / gbase, 2)
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return report


def print_compare(r: dict) -> None:
    cfg = r["config"]
    print(f"\nchurn_bench --compare: {cfg['cpus']} CPUs, {cfg['runs']} runs of {cfg['churn_seconds']} s per server, "
          f"nothing held, {cfg['concurrency']} connections in flight, over {cfg.get('transport', 'tcp').upper()}")
    print(f"dialer: {cfg.get('dialer', '-')}")
    if r.get("error"):
        print(f"\nERROR: {r['error']}")
    head = f"\n{'server':<24}{'conn/s':>9}{'srv ms/conn':>13}{'conn/srv-CPU-s':>16}{'srv util':>10}"
    print(head)
    print("-" * (len(head) - 2))
    for e in r["servers"].values():
        def f(k, fmt):
            v = e.get(k)
            return fmt.format(v) if isinstance(v, (int, float)) else "-"
        print(f"{e['description']:<24}{f('conn_per_s', '{:.0f}'):>9}{f('server_cpu_ms_per_conn', '{:.3f}'):>13}"
              f"{f('conn_per_server_cpu_s', '{:.0f}'):>16}{f('server_util', '{:.2f}'):>10}")
    if "kadfast_over_rust" in r:
        met = r.get("target_met")
        verdict = f" (target >= 1.5x: {'met' if all(met.values()) else 'MISSED'})" if met else " (no target)"
        print(f"\nkadfast / rust-libp2p connections per server-CPU-second: {r['kadfast_over_rust']}x{verdict}")
    if "kadfast_over_go" in r:
        print(f"kadfast / go-libp2p connections per server-CPU-second: {r['kadfast_over_go']}x")
    print(f"(run took {r.get('elapsed_s')} s)\n")


def run_bench(opts) -> dict:
    harness = load_harness()
    install_log_counter()
    raise_nofile()
    peer = kadfast_server_peer(harness, __file__, "churn-server", "--loop", opts.loop)
    dialer = None
    report: dict[str, Any] = {
        "config": {
            "quick": opts.quick,
            "cpus": os.cpu_count(),
            "server": f"kadfast KadNode/{opts.loop} in a child process; HostConfig(max_connections=20000, idle_timeout=1e9)",
            "dialer_kind": opts.dialer,
            "transport": opts.transport,
            "concurrency": opts.concurrency * (opts.workers if opts.dialer == "raw" else 1),
            "hold": opts.hold,
            "churn_seconds": opts.duration,
            "targets": {"conn_per_server_cpu_s": TARGET_CONN_PER_CORE_S, "kib_per_idle_conn": TARGET_KIB_PER_CONN},
        },
    }
    if opts.dialer == "raw":
        report["config"].update(workers=opts.workers, concurrency_per_worker=opts.concurrency,
                                churn_identities_per_worker=opts.identities)
    else:
        report["config"].update(churn_hosts=max(opts.identities, opts.concurrency), hold_hosts=opts.hold)
    t_start = time.monotonic()
    try:
        if opts.dialer == "go":
            log_progress("churn_bench: building/starting the go dialer (bench/dialers/go-churn)")
            dialer = GoDialer(opts, harness)
            report["config"]["dialer_build"] = {"seconds": dialer.build_seconds, "cached": dialer.build_cached}
        peer.start(timeout=60)
        report["server"] = {k: peer.ready.get(k) for k in ("impl", "loop", "nofile")}
        pid = peer.proc.pid
        maddr = dial_addr(peer, opts.transport)
        if dialer is None:
            log_progress(f"churn_bench: server {maddr} (pid {pid}); starting {opts.workers} raw dialer worker(s)")
            dialer = RawDialer(opts)
        else:
            log_progress(f"churn_bench: server {maddr} (pid {pid}); go dialer pid {dialer.pids()[0]}")
        report["config"]["dialer"] = dialer.describe()
        prep = dialer.prepare(maddr, peer.peer_id, opts.hold)
        report["identities_seconds"] = prep["seconds"]
        report["dialer_identities"] = prep["identities"]
        # 1. warm-up
        dialer.warm_up(1.0 if opts.quick else 2.0)
        st = peer.call("stats", timeout=10)
        if st["identified"] == 0:
            raise RuntimeError(f"warm-up: the server identified nobody: {st}")
        # 2. hold
        rss0 = gc_rss(peer, 2.0, 60)
        cs0, cw0, t0 = proc_cpu(pid), dialer.cpu(), time.time()
        opened = dialer.open_held()
        open_s, open_cpu, open_wcpu = time.time() - t0, proc_cpu(pid) - cs0, dialer.cpu() - cw0
        n_open = opened["opened"]
        hold_errors = opened["errors"]
        rss1 = gc_rss(peer, 2.0, 60)
        st1 = peer.call("stats", timeout=10)
        c0 = proc_cpu(pid)
        time.sleep(3.0)
        idle_cpu = (proc_cpu(pid) - c0) / 3.0
        hold = {
            "requested": opts.hold,
            "opened": n_open,
            "open_seconds": round(open_s, 2),
            "open_per_s": round(n_open / open_s, 1),
            "open_server_cpu_ms_per_conn": round(open_cpu / n_open * 1e3, 3) if n_open else None,
            "open_dialer_cpu_ms_per_conn": round(open_wcpu / n_open * 1e3, 3) if n_open else None,
            "open_errors": dict(hold_errors.most_common(5)),
            "server_open_connections": st1["open"],
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "kib_per_idle_conn": round((rss1 - rss0) / n_open, 2) if n_open else None,
            "server_idle_cpu_util_while_holding": round(idle_cpu, 3),
            "server_gc_objects_with_held": st1["gc_objects"],
        }
        report["hold"] = hold
        log_progress(f"  hold: {n_open} idle connections opened at {hold['open_per_s']:.0f}/s; server RSS "
                     f"{rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB = {hold['kib_per_idle_conn']} KiB/conn")
        # 3. churn with them held
        report["churn_held"] = churn_phase(peer, dialer, opts.duration, f"churn with {n_open} held")
        # 4. held connections still there? then close them and churn again
        status = dialer.held_status()
        st2 = peer.call("stats", timeout=10)
        hold["after_churn"] = {
            "client_alive": status["alive"],
            "client_lost": status["lost"],
            "lost_reasons": status["lost_reasons"],
            "server_open_connections": st2["open"],
            "server_close_reasons": st2["close_reasons"],
        }
        hold["dialer_rss_kib"] = status["rss_kib"]
        dialer.close_held()
        time.sleep(1.0)
        report["churn_empty"] = churn_phase(peer, dialer, opts.duration, "churn with 0 held")
        # 5. everything closed
        time.sleep(1.0)
        rss_end = gc_rss(peer, 1.0, 60)
        st3 = peer.call("stats", timeout=10)
        tr = peer.call("trim", timeout=60)
        time.sleep(0.2)
        rss_trimmed = proc_rss_kib(peer.proc.pid) or tr["rss_kib"]
        report["end"] = {
            "rss_kib": rss_end,
            "rss_growth_over_start_kib": rss_end - rss0,
            "rss_after_trim_kib": rss_trimmed,
            "rss_growth_after_trim_kib": rss_trimmed - rss0,
            "trim_seconds": tr["seconds"],
            **{k: st3[k] for k in ("open", "pending", "established", "identified", "closed", "peer_info",
                                   "identified_futures", "identified_futures_pending", "identified_futures_without_conn",
                                   "gc_seconds", "gc_runs", "addrbook_peers", "tasks", "dropped_events",
                                   "gc_objects", "close_reasons", "loop_errors", "log")},
        }
    except Exception as exc:
        report["error"] = short_error(exc)
        if peer.proc is not None:
            report["server_stderr"] = peer.stderr_tail(10)
        if isinstance(dialer, GoDialer) and dialer.peer.proc is not None:
            report["dialer_stderr"] = dialer.peer.stderr_tail(10)
    finally:
        if dialer is not None:
            dialer.stop()
        with contextlib.suppress(Exception):
            peer.stop(timeout=10)
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    verdict = {}
    for ph in ("churn_held", "churn_empty") if opts.transport == "tcp" else ():
        v = report.get(ph, {}).get("conn_per_server_cpu_s")
        if v is not None:
            verdict[f"{ph}: conn per server CPU-second >= {TARGET_CONN_PER_CORE_S:g}"] = v >= TARGET_CONN_PER_CORE_S
    v = report.get("hold", {}).get("kib_per_idle_conn")
    if v is not None and opts.transport == "tcp":
        verdict[f"hold: KiB per idle connection <= {TARGET_KIB_PER_CONN:g}"] = v <= TARGET_KIB_PER_CONN
    report["target_met"] = verdict
    return report


def print_table(r: dict) -> None:
    cfg = r["config"]
    print(f"\nchurn_bench: kadfast connection churn on loopback over {cfg.get('transport', 'tcp').upper()}, "
          f"{cfg['cpus']} CPUs; {cfg['server']}")
    print(f"dialer ({cfg['dialer_kind']}): {cfg.get('dialer', '-')}")
    if r.get("error"):
        print(f"\nERROR: {r['error']}\n{r.get('server_stderr', '')}")
        if r.get("dialer_stderr"):
            print(f"dialer stderr:\n{r['dialer_stderr']}")
    h = r.get("hold")
    if h:
        print(f"\nidle connections held: {h['opened']} of {h['requested']} (server counts {h['server_open_connections']} open)")
        print(f"  opened at {h['open_per_s']:.0f}/s, server {h['open_server_cpu_ms_per_conn']} ms CPU per connection, "
              f"dialer {h['open_dialer_cpu_ms_per_conn']} ms"
              + (f", errors {h['open_errors']}" if h["open_errors"] else ""))
        print(f"  server RSS {h['rss_before_kib'] / 1024:.1f} MiB -> {h['rss_after_kib'] / 1024:.1f} MiB: "
              f"{h['kib_per_idle_conn']} KiB per idle connection (target <= {TARGET_KIB_PER_CONN:g})")
        print(f"  server CPU while idle with them: {h['server_idle_cpu_util_while_holding']:.3f} of a core")
        ac = h.get("after_churn")
        if ac:
            print(f"  after the churn phase: {ac['client_alive']} still open at the dialer, {ac['client_lost']} lost, "
                  f"server holds {ac['server_open_connections']}")
    rows = [r[k] for k in ("churn_held", "churn_empty") if k in r]
    if rows:
        head = (f"\n{'phase':<22}{'conn/s':>8}{'(client)':>9}{'srv ms/conn':>12}{'conn/srv-CPU-s':>15}"
                f"{'srv util':>9}{'dialer util':>12}{'dialer ms/conn':>15}{'other':>7}{'errors':>8}")
        print(head)
        print("-" * (len(head) - 1))
        for row in rows:
            def f(k, fmt):
                v = row.get(k)
                return fmt.format(v) if isinstance(v, (int, float)) else "-"
            print(f"{row['phase']:<22}{f('server_per_s', '{:.0f}'):>8}{f('client_per_s', '{:.0f}'):>9}"
                  f"{f('server_cpu_ms_per_conn', '{:.3f}'):>12}{f('conn_per_server_cpu_s', '{:.0f}'):>15}"
                  f"{f('server_util', '{:.2f}'):>9}{f('dialer_util', '{:.2f}'):>12}"
                  f"{f('dialer_cpu_ms_per_conn', '{:.3f}'):>15}{f('other_util', '{:.2f}'):>7}{row['error_count']:>8}")
            print(f"   of which the server's cyclic GC: {row.get('server_gc_ms_per_conn')} ms/conn "
                  f"(collections per generation {row.get('server_gc_runs')})")
            if row["errors"]:
                print(f"   errors: {row['errors']}")
        if any((row.get("server_util") or 0) < 0.85 for row in rows):
            print("  (server below ~0.85 of a core: the dialer, sharing the machine, limits the rate; "
                  "conn/srv-CPU-s is the figure to compare with the target)")
    e = r.get("end")
    if e:
        print(f"\nat the end (all closed): server RSS {e['rss_kib'] / 1024:.1f} MiB "
              f"({e['rss_growth_over_start_kib'] / 1024:+.1f} MiB over the start of the hold phase); "
              f"{e['established']} connections established, {e['identified']} identified, {e['closed']} closed")
        print(f"  after malloc_trim ({e['trim_seconds'] * 1e3:.1f} ms, as kadfast server's MemoryTrimmer does): "
              f"RSS {e['rss_after_trim_kib'] / 1024:.1f} MiB ({e['rss_growth_after_trim_kib'] / 1024:+.1f} MiB)")
        print(f"  per-peer state left: peer_info {e['peer_info']}, identify futures {e['identified_futures']}, "
              f"address book {e['addrbook_peers']} peers, host tasks {e['tasks']}, open {e['open']}, pending {e['pending']}")
        print(f"  close reasons: {e['close_reasons']}; host events dropped (queue full): {e['dropped_events']}")
        if e.get("loop_errors"):
            print(f"  server loop errors: {e['loop_errors']}")
        for item in e.get("log", []):
            print(f"  server log x{item['count']}: {item['example'][:160]}")
    if r.get("target_met"):
        print("\ntargets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["target_met"].items()))
    print(f"(run took {r.get('elapsed_s')} s)\n")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 held connections, 3 s churn phases")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--dialer", choices=["go", "raw"], default="go",
                    help="go: the go-libp2p dialer of bench/dialers/go-churn (default); raw: kadfast's sans-IO cores "
                         "in --workers Python processes")
    ap.add_argument("--workers", type=int, default=2, help="dialer processes (raw dialer)")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="connections in flight: per worker process for the raw dialer (default 32), "
                         "in all for the go dialer (default 64)")
    ap.add_argument("--hold", type=int, default=None, help="idle connections to hold (default 10,000; quick 2,000)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per churn phase (default 10; quick 3)")
    ap.add_argument("--identities", type=int, default=1000,
                    help="identities the dialer rotates through while churning (distinct peers to the server): "
                         "per worker process for the raw dialer, go-libp2p hosts in all for the go dialer")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the server's event loop")
    ap.add_argument("--compare", default=None,
                    help="comma list of servers (kadfast, rust, go): churn phases only, each server in turn")
    ap.add_argument("--runs", type=int, default=5, help="runs per server with --compare (medians reported)")
    ap.add_argument("--transport", choices=["tcp", "quic"], default="tcp",
                    help="what the dialer connects over (quic: the go dialer only; no targets)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.compare and opts.dialer != "go":
        ap.error("--compare uses the go dialer")
    if opts.transport == "quic" and opts.dialer != "go":
        ap.error("--transport quic needs the go dialer")
    if opts.hold is None:
        opts.hold = 2000 if opts.quick else 10000
    if opts.duration is None:
        opts.duration = 3.0 if opts.quick else 10.0
    if opts.concurrency is None:
        opts.concurrency = 64 if opts.dialer == "go" else 32
    if opts.hold > 16000:
        ap.error("--hold above 16,000 exceeds the server's max_connections headroom")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.serve:
        return serve(opts.loop)
    if opts.compare:
        rep = run_compare(opts)
        if opts.json:
            print(json.dumps(rep, indent=1))
        else:
            print_compare(rep)
        return 0 if "error" not in rep else 1
    report = run_bench(opts)
    if opts.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0 if "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
