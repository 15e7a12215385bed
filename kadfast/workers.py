"""``kadfast server --workers N``: N processes that serve as one node.

The supervisor (the process started as ``kadfast server``) resolves the
listen addresses (a port 0 becomes one port for all), then starts N worker
processes (``python -m kadfast.workers``), each with one end of a Unix
socket pair and nothing else on its command line. Every worker listens on
the same addresses with ``SO_REUSEPORT`` (the kernel spreads the inbound
connections and QUIC's UDP flows among them by a hash of their addresses),
has the same PeerId and opens the same store (a SQLite file in WAL mode;
with ``--store memory`` one in a private temporary directory that goes with
the supervisor).

Routing tables. A worker never changes its routing table on its own: every
change (a peer seen, answered, gone unreachable, left) goes to the
supervisor's hub, which hands it back to every worker, the one that made it
too, in one order. So all the tables go through the same changes in the same
order, as a single process that had met all the peers would (a full
bucket keeps the same peers everywhere), and a FIND_NODE gets the same answer
from every worker. A change is a few hundred bytes; they are sent in
batches, one frame per loop pass and worker. A worker that starts (or is
restarted after it died) gets a snapshot of a live worker's table first and
the changes made meanwhile after it.

Why a local socket and not a shared-memory table: the table is a few
thousand entries that change at the rate peers connect (a few thousand per
second at the most), and each worker's compiled table answers its FIND_NODEs
without a lock; a shared-memory table would need a lock or a lock-free
structure in every lookup for a saving that only shows at rates far above
what the handshakes (the per-connection cost) allow.

Frames on the socket pair: a 4-byte big-endian length and a JSON object,
at most :data:`MAX_FRAME` bytes. From a worker: ``ready`` (its listen
addresses), ``changes``, ``snapshot``, ``stats`` (once a second). From the
supervisor: ``hello`` (the worker's index, its seed, the resolved listen
addresses, the store and the command's arguments), ``changes`` (each with
the index of the worker it came from), ``snapshot_request``, ``snapshot``.

A worker that dies is restarted (backoff from 0.5 s to 10 s); the others go
on serving. SIGTERM or SIGINT to the supervisor stops every worker (SIGTERM,
then SIGKILL after :data:`STOP_GRACE` seconds). A worker whose hub link
closes (the supervisor died) stops too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from typing import Any

from .multiaddr import Multiaddr
from .peerid import PeerId

log = logging.getLogger("kadfast.workers")

__all__ = ["run_supervisor", "worker_main", "MAX_FRAME"]

#: largest frame on a worker's link (a snapshot of a large table is the largest)
MAX_FRAME = 16 << 20
#: bytes queued to one worker before it counts as stuck (and is restarted)
MAX_QUEUED_TO_WORKER = 32 << 20
#: seconds a worker has to stop after SIGTERM before it is killed
STOP_GRACE = 10.0
#: restart backoff after a worker died: first delay, and the longest
RESTART_DELAY = (0.5, 10.0)
#: a worker that lived this long resets the backoff
STABLE_AFTER = 60.0
_LEN = struct.Struct(">I")


# -- frames ----------------------------------------------------------------------
def _frame(obj: dict) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"a worker frame of {len(data)} bytes is over the limit of {MAX_FRAME}")
    return _LEN.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> dict | None:
    """The next frame, or None at the end of the link."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"a worker frame of {n} bytes is over the limit of {MAX_FRAME}")
    try:
        obj = json.loads(await reader.readexactly(n))
    except asyncio.IncompleteReadError:
        return None
    if not isinstance(obj, dict):
        raise ValueError("a worker frame is not a JSON object")
    return obj


def encode_change(change: tuple) -> list:
    """A routing change (see :meth:`KadNode.apply_routing_change`) as JSON."""
    kind, peer = change[0], change[1]
    if kind == "up":
        _, _, connected, addrs, group = change
        return [kind, str(peer), bool(connected), [str(a) for a in addrs], group]
    return [kind, str(peer)]


def decode_change(item: list) -> tuple:
    kind, peer = item[0], PeerId.from_string(item[1])
    if kind == "up":
        return (kind, peer, bool(item[2]), tuple(Multiaddr(a) for a in item[3]), item[4])
    return (kind, peer)


# -- the supervisor ----------------------------------------------------------------
def resolve_listen(addrs: list[str]) -> list[str]:
    """The listen addresses with each port 0 replaced by a free port (the
    same for every worker). TCP's is found by binding a socket with
    SO_REUSEPORT; UDP's the same way, the socket closed at once (a UDP
    socket in the group would take a share of the datagrams)."""
    out = []
    for text in addrs:
        addr = Multiaddr(text)
        parts = list(addr)
        proto = parts[0][0] if parts else None
        if proto not in ("ip4", "ip6") or len(parts) < 2 or parts[1][0] not in ("tcp", "udp") or parts[1][1] != "0":
            out.append(text)
            continue
        fam = socket.AF_INET6 if proto == "ip6" else socket.AF_INET
        kind = socket.SOCK_STREAM if parts[1][0] == "tcp" else socket.SOCK_DGRAM
        with socket.socket(fam, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((parts[0][1], 0))
            port = s.getsockname()[1]
        out.append(text.replace(f"/{parts[1][0]}/0", f"/{parts[1][0]}/{port}", 1))
    return out


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready = False
        self.started = 0.0
        self.restarts = 0
        self.stats: dict[str, Any] = {}
        self.addrs: list[str] = []
        #: changes held for it until the snapshot it waits for is sent
        self.held: list | None = None

    def send(self, obj: dict) -> None:
        w = self.writer
        if w is None or w.is_closing():
            return
        w.write(_frame(obj))
        if w.transport.get_write_buffer_size() > MAX_QUEUED_TO_WORKER and self.proc is not None:
            log.error("worker %d does not read its link (%d bytes queued); restarting it", self.index,
                      w.transport.get_write_buffer_size())
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


class Supervisor:
    """The hub and the keeper of the workers."""

    def __init__(self, args, n: int, seed: bytes, listen: list[str], store: str) -> None:
        self.args = args
        self.n = n
        self.seed = seed
        self.listen = listen
        self.store = store
        self.workers = [_Worker(i) for i in range(n)]
        self.stopping = False
        self.all_ready = asyncio.Event()
        self._batch: list = []
        self._flush_scheduled = False
        self.changes_relayed = 0
        self._tasks: set[asyncio.Task] = set()

    def _cmd_args(self) -> dict:
        out = {}
        for k, v in vars(self.args).items():
            try:
                json.dumps(v)
            except TypeError:
                continue
            out[k] = v
        return out

    async def start_worker(self, w: _Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kadfast.workers", str(child.fileno()),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL)
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=MAX_FRAME + 4)
        w.writer, w.ready, w.started, w.stats = writer, False, time.monotonic(), {}
        donor = next((o for o in self.workers if o is not w and o.ready), None)
        w.send({"t": "hello", "index": w.index, "seed": self.seed.hex(), "listen": self.listen,
                "store": self.store, "args": self._cmd_args()})
        if donor is not None:
            # the changes from now on wait until the donor's table is sent
            w.held = []
            donor.send({"t": "snapshot_request", "for": w.index})
        task = asyncio.ensure_future(self._serve(w, reader))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        proc = w.proc
        assert proc is not None
        try:
            while True:
                msg = await _read_frame(reader)
                if msg is None:
                    break
                self._on_message(w, msg)
        except (ValueError, ConnectionError) as exc:
            log.error("worker %d: bad link: %s; restarting it", w.index, exc)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        code = await proc.wait()
        if w.writer is not None:
            w.writer.close()
        w.ready, w.writer, w.held = False, None, None
        if self.stopping:
            return
        lived = time.monotonic() - w.started
        w.restarts = 0 if lived >= STABLE_AFTER else w.restarts + 1
        delay = min(RESTART_DELAY[1], RESTART_DELAY[0] * 2 ** max(0, w.restarts - 1)) if w.restarts else 0.0
        log.error("worker %d (pid %d) exited with %s after %.1f s; restarting it in %.1f s",
                  w.index, proc.pid, code, lived, delay)
        await asyncio.sleep(delay)
        if not self.stopping:
            await self.start_worker(w)

    def _on_message(self, w: _Worker, msg: dict) -> None:
        t = msg.get("t")
        if t == "changes":
            items = msg.get("c")
            if isinstance(items, list):
                self._batch.extend([w.index, c] for c in items)
                self.changes_relayed += len(items)
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    asyncio.get_running_loop().call_soon(self._flush)
        elif t == "stats":
            w.stats = msg
        elif t == "ready":
            w.ready = True
            w.addrs = [a for a in msg.get("addrs", []) if isinstance(a, str)]
            if all(o.ready for o in self.workers):
                self.all_ready.set()
        elif t == "snapshot":
            to = msg.get("for")
            target = self.workers[to] if isinstance(to, int) and 0 <= to < self.n else None
            if target is not None and target.held is not None:
                held, target.held = target.held, None
                target.send({"t": "snapshot", "c": msg.get("c", [])})
                if held:
                    target.send({"t": "changes", "c": held})
        else:
            log.warning("worker %d sent an unknown frame %r", w.index, t)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._batch = self._batch, []
        if not batch:
            return
        frame = {"t": "changes", "c": batch}
        for w in self.workers:
            if w.held is not None:
                w.held.extend(batch)
                if len(w.held) > 1_000_000:  # the snapshot never came: start over
                    log.error("worker %d waited too long for its table; restarting it", w.index)
                    w.held = None
                    if w.proc is not None:
                        with contextlib.suppress(ProcessLookupError):
                            w.proc.kill()
            else:
                w.send(frame)

    async def stop(self) -> None:
        self.stopping = True
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=STOP_GRACE)
            for p in procs:
                if p.returncode is None:
                    log.error("worker pid %d did not stop in %.0f s; killing it", p.pid, STOP_GRACE)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            for p in procs:
                await p.wait()
        for t in list(self._tasks):
            t.cancel()

    def totals(self) -> dict[str, int]:
        keys = ("requests", "connections", "peers", "records")
        out = {k: 0 for k in keys}
        for w in self.workers:
            for k in ("requests", "connections"):
                out[k] += int(w.stats.get(k, 0))
        # one table and one store, seen by every worker: the largest count
        for k in ("peers", "records"):
            out[k] = max((int(w.stats.get(k, 0)) for w in self.workers), default=0)
        return out


async def _serve_metrics(sup: Supervisor, port: int):
    from .metrics import Metrics, serve_metrics

    m = Metrics()

    def per_worker(key: str):
        return lambda: [({"worker": str(w.index)}, int(w.stats.get(key, 0))) for w in sup.workers]

    m.gauge("kadfast_workers", "worker processes serving", lambda: sum(1 for w in sup.workers if w.ready))
    m.gauge("kadfast_worker_restarts", "restarts of each worker since the last stable run",
            lambda: [({"worker": str(w.index)}, w.restarts) for w in sup.workers])
    m.gauge("kadfast_routing_table_peers", "peers in the routing table (the same in every worker)",
            lambda: sup.totals()["peers"])
    m.gauge("kadfast_store_records", "records held (one store for all workers)", lambda: sup.totals()["records"])
    m.gauge("kadfast_connections", "open connections, all workers", lambda: sup.totals()["connections"])
    m.gauge("kadfast_worker_connections", "open connections per worker", per_worker("connections"))
    m.gauge("kadfast_inbound_requests", "inbound kad requests since start, all workers",
            lambda: sup.totals()["requests"])
    m.gauge("kadfast_worker_inbound_requests", "inbound kad requests since start per worker", per_worker("requests"))
    m.counter("kadfast_worker_routing_changes_total", "routing-table changes relayed among the workers",
              lambda: sup.changes_relayed)
    return await serve_metrics(m, "127.0.0.1", port)


async def run_supervisor(args, out) -> int:
    """``kadfast server --workers N`` (N > 1): start, watch and stop the workers."""
    from .cli import EXIT_FAIL, EXIT_OK, UsageError, server_listen_default
    from .keys import Ed25519KeyPair, load_or_create_keypair

    n = args.workers
    keypair = load_or_create_keypair(args.key_file) if args.key_file else Ed25519KeyPair.generate()
    tmpdir = None
    store = args.store
    if store == "memory":
        # one store for all: a SQLite file that goes with this process
        tmpdir = tempfile.mkdtemp(prefix="kadfast-workers-")
        store = f"sqlite:{os.path.join(tmpdir, 'store.db')}"
    elif not store.startswith(("sqlite:", "postgresql:", "postgres:")):
        raise UsageError(f"unknown store spec {store!r}: expected 'memory', 'sqlite:PATH' or 'postgresql://...'")
    try:
        listen = resolve_listen(args.listen or server_listen_default())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot listen: {exc}") from None
    sup = Supervisor(args, n, keypair.seed, listen, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics_server = None
    try:
        for w in sup.workers:
            await sup.start_worker(w)
        ready = asyncio.ensure_future(sup.all_ready.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([ready, stopped], timeout=60.0, return_when=asyncio.FIRST_COMPLETED)
        for f in (ready, stopped):
            f.cancel()
        if stop.is_set():
            return EXIT_OK
        if not sup.all_ready.is_set():
            log.error("the workers did not start within 60 s")
            return EXIT_FAIL
        addrs = [f"{a}/p2p/{keypair.peer_id}" for a in sup.workers[0].addrs]
        if args.json:
            out.emit("listening", "", peer_id=str(keypair.peer_id), addrs=addrs, workers=n,
                     worker_pids=[w.proc.pid for w in sup.workers if w.proc is not None])
        else:
            for a in addrs:
                print(a, flush=True)
            log.warning("%d workers serving as %s", n, keypair.peer_id)
        if args.metrics_port is not None:
            metrics_server = await _serve_metrics(sup, args.metrics_port)
        last_logged = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            t = sup.totals()
            status = (f"workers {sum(1 for w in sup.workers if w.ready)}/{n} | peers {t['peers']} | "
                      f"connections {t['connections']} | records {t['records']}")
            if out.tty:
                out.progress(status)
            elif not args.quiet and time.monotonic() - last_logged >= 30.0:
                last_logged = time.monotonic()
                print(f"{time.strftime('%H:%M:%S')} {status}", file=sys.stderr, flush=True)
        return EXIT_OK
    finally:
        out.clear_progress()
        if metrics_server is not None:
            metrics_server.close()
        await sup.stop()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


# -- a worker ----------------------------------------------------------------------
class HubLink:
    """A worker's end of the link: its routing changes go out in one frame
    per loop pass (:class:`kadfast.kad.node.RoutingSync`)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._out: list = []
        self._scheduled = False
        self.published = 0

    def publish(self, change: tuple) -> None:
        self._out.append(encode_change(change))
        self.published += 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        items, self._out = self._out, []
        if items and not self.writer.is_closing():
            self.writer.write(_frame({"t": "changes", "c": items}))

    def send(self, obj: dict) -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(obj))


async def run_worker(fd: int) -> int:
    from .cli import make_server_node, open_server_store, raise_nofile_limit
    from .keys import Ed25519KeyPair
    from .loop import tune_gc_for_server

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME + 4)
    hello = await _read_frame(reader)
    if hello is None or hello.get("t") != "hello":
        log.error("no hello from the supervisor")
        return 1
    index = hello["index"]
    args = argparse.Namespace(**hello["args"])
    logging.getLogger().setLevel(logging.ERROR if args.quiet else
                                 (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)])
    keypair = Ed25519KeyPair.from_seed(bytes.fromhex(hello["seed"]))
    soft, _ = raise_nofile_limit()
    store = open_server_store(args, keypair, hello["store"])
    node = make_server_node(args, keypair, store, soft, listen=hello["listen"], reuse_port=True)
    link = HubLink(writer)
    node.routing_sync = link
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def from_hub() -> None:
        try:
            while True:
                msg = await _read_frame(reader)
                if msg is None:
                    break
                t = msg.get("t")
                if t in ("changes", "snapshot"):
                    for item in msg["c"]:
                        if t == "snapshot":
                            origin, enc = index, item  # a snapshot is applied as this worker's own
                        else:
                            origin, enc = item
                        try:
                            node.apply_routing_change(decode_change(enc), origin == index and t == "changes")
                        except (ValueError, KeyError, IndexError, TypeError) as exc:
                            log.warning("worker %d: a bad routing change %r: %s", index, enc, exc)
                elif t == "snapshot_request":
                    link.send({"t": "snapshot", "for": msg.get("for"), "c": [encode_change(c) for c in node.routing_snapshot()]})
        finally:
            stop.set()  # the supervisor is gone (or sent garbage): stop

    await node.start()
    tune_gc_for_server(args.gc_young_threshold)
    if args.bootstrap:
        from .client import parse_bootstrap
        for pid, addr in parse_bootstrap(args.bootstrap):
            node.add_address(pid, addr)
        node.spawn(node.bootstrap(), quiet=True)
    hub = asyncio.ensure_future(from_hub())
    link.send({"t": "ready", "addrs": [str(a) for a in node.listen_addrs], "pid": os.getpid()})
    try:
        while not stop.is_set():
            link.send({"t": "stats", "requests": sum(node.request_counts.values()),
                       "connections": node.host.connection_count(), "peers": len(node.table),
                       "records": len(node.store)})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        hub.cancel()
        await node.stop()
        if store is not None and hasattr(store, "close"):
            store.close()
        writer.close()
    return 0


def worker_main(argv: list[str] | None = None) -> int:
    from .loop import run as run_loop

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m kadfast.workers FD (started by kadfast server --workers N)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker[{os.getpid()}] %(name)s: %(message)s")
    # the args' loop choice is in the hello; uvloop when available
    return run_loop(lambda: run_worker(int(argv[0])), "auto")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(worker_main())
