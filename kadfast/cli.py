"""The ``kadfast`` command line: bootstrap server, listener, dialer, DHT
operations, identities and a self-contained demo.

Exit codes (also in ``kadfast --help``):
  0  success
  1  the operation failed (e.g. a request or a lookup error)
  2  bad arguments
  3  no bootstrap node reachable
  4  nothing found (empty namespace, no record, no provider, unknown peer)
  5  a put missed its quorum
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from typing import Any

from . import __version__
from .client import BootstrapError, Client, NoPeersInNamespace
from .errors import (
    KadfastError,
    KeyFileError,
    MultiaddrError,
    NoKnownPeers,
    NotFound,
    PeerIdError,
    QuorumFailed,
    ValueTooLarge,
)
from .kad.node import Config, KadNode
from .keys import Ed25519KeyPair, load_or_create_keypair
from .loop import LOOP_KINDS, MemoryTrimmer, tune_gc_for_server
from .loop import run as run_loop
from .net import HostConfig
from .net.host import quic_unavailable
from .peerid import PeerId
from .reqresp import DEFAULT_PROTOCOL, RequestError
from .store import Record, StoreConfig

log = logging.getLogger("kadfast.cli")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_BOOTSTRAP, EXIT_NOT_FOUND, EXIT_QUORUM, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130

EPILOG = """exit codes: 0 success; 1 operation failed; 2 bad arguments; 3 no bootstrap
node reachable; 4 nothing found (empty namespace, no record/provider/peer);
5 quorum missed; 130 interrupted"""


class UsageError(Exception):
    pass


# -- output ------------------------------------------------------------------
class Out:
    """Human lines on stdout, or one JSON object per line with --json; a
    progress line on stderr when it is a terminal."""

    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not as_json and not quiet
        self._progress = False

    def emit(self, event: str, text: str, **fields) -> None:
        self.clear_progress()
        if self.as_json:
            print(json.dumps({"event": event, **fields}, default=str), flush=True)
        else:
            print(text, flush=True)

    def progress(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text)
            sys.stderr.flush()
            self._progress = True
        else:
            log.info("%s", text)

    def clear_progress(self) -> None:
        if self._progress:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._progress = False


# -- argument parsing ---------------------------------------------------------------
def version_text() -> str:
    """What ``kadfast --version`` prints: the version, the Python, the
    Noise transport this install runs on (compiled or the slow fallback),
    and whether QUIC can run."""
    from .noise import TRANSPORT_DESCRIPTION

    why = quic_unavailable()
    quic = "available" if why is None else f"unavailable: {why}"
    return (f"kadfast {__version__} (Python {sys.version.split()[0]}; Noise transport: {TRANSPORT_DESCRIPTION}; "
            f"QUIC: {quic})")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output: one JSON object per line")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    common.add_argument("--loop", choices=LOOP_KINDS, default="auto", help="event loop (default: uvloop when installed)")

    net = argparse.ArgumentParser(add_help=False)
    net.add_argument("--bootstrap", action="append", default=[], metavar="MADDR",
                     help="bootstrap node address ending in /p2p/<id> (repeatable)")
    net.add_argument("--key", dest="key_file", metavar="FILE", help="identity key file (created if missing)")
    net.add_argument("--listen", action="append", default=[], metavar="MADDR",
                     help="listen address, TCP or QUIC (repeatable). server: default /ip4/0.0.0.0/tcp/4001 and "
                          "/ip4/0.0.0.0/udp/4001/quic-v1; "
                          "listen: default /ip4/0.0.0.0/tcp/0; the one-shot commands (get, put, provide, "
                          "providers, closest, find-peer, dial) listen nowhere unless given one, and "
                          "never serve the kad protocol")
    net.add_argument("--external-addr", action="append", default=[], metavar="MADDR", help="address to announce")
    net.add_argument("--kad-protocol", default="/ipfs/kad/1.0.0", help="Kademlia protocol name (private DHTs change it)")
    net.add_argument("--timeout", type=float, default=60.0, help="overall timeout of the operation in seconds")

    p = argparse.ArgumentParser(prog="kadfast", description="A fast Kademlia DHT node speaking libp2p's wire protocol.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_text())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help, parents=(common, net)):
        return sub.add_parser(name, help=help, description=help, parents=list(parents), epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    s = add("server", "run a bootstrap node (Kademlia server mode)")
    s.add_argument("--store", default="memory", help="record store: memory or sqlite:PATH")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (127.0.0.1)")
    s.add_argument("--workers", type=workers_arg, default=1, metavar="N",
                   help="processes serving as one node on the same ports, PeerId and store (SO_REUSEPORT; "
                        "'auto': one per core; default 1; see docs/workers.md)")
    s.add_argument("--gc-young-threshold", type=int, default=10_000,
                   help="cyclic GC: allocations between young-generation collections, start-up objects frozen "
                        "(default 10000; 0 = Python's defaults)")
    lim = s.add_argument_group("limits (all on by default; see docs/reliability.md)")
    lim.add_argument("--max-connections", type=int, help="connections in total (default: what the open-file limit allows)")
    lim.add_argument("--max-connections-per-ip", type=int, default=64, help="inbound connections per remote IP (loopback exempt; 0 = off)")
    lim.add_argument("--max-connections-per-small-subnet", type=int, default=256,
                     help="inbound connections per IPv4 /24 or IPv6 /48 (loopback exempt; 0 = off)")
    lim.add_argument("--max-connections-per-large-subnet", type=int, default=1024,
                     help="inbound connections per IPv4 /16 or IPv6 /32 (loopback exempt; 0 = off)")
    lim.add_argument("--max-pending-handshakes", type=int, default=256,
                     help="inbound connections being upgraded at once (0 = off)")
    lim.add_argument("--max-pending-handshakes-per-ip", type=int, default=8,
                     help="of those, from one IP address (loopback exempt; 0 = off)")
    lim.add_argument("--limit-loopback", action="store_true",
                     help="apply the per-IP and per-subnet limits to loopback addresses too "
                          "(for trying the limits on one machine)")
    lim.add_argument("--conn-high-water", type=int, default=3584,
                     help="open connections above which the least useful are pruned, down to --conn-low-water "
                          "(at or above --max-connections: 7/8 of it; 0 = never prune)")
    lim.add_argument("--conn-low-water", type=int, default=3072,
                     help="open connections a prune leaves (at most 3/4 of --max-connections when "
                          "--conn-high-water is scaled to it)")
    lim.add_argument("--conn-grace-period", type=float, default=20.0,
                     help="seconds a new connection is never pruned")
    lim.add_argument("--max-inbound-streams", type=int, default=256, help="inbound streams per connection")
    lim.add_argument("--max-records", type=int, default=1024, help="records (and provider keys) stored")
    lim.add_argument("--max-value-bytes", type=int, default=12 * 1024,
                     help="largest record value stored (default 12 KiB: what fits in a 16 KiB GET_VALUE answer)")
    lim.add_argument("--max-message-size", type=int, default=16 * 1024, help="largest kad message")
    lim.add_argument("--unvalidated-records", choices=("owner", "accept", "refuse"), default="owner",
                     help="records under a key no validator checks: owner (stored when new; then only the peer "
                          "that stored one may change it; default), accept (rust, last writer wins) or refuse (go)")
    lim.add_argument("--max-puts-per-second", type=float, default=20.0, help="PUT_VALUE per peer per second (0 = off)")
    lim.add_argument("--max-provider-adds-per-second", type=float, default=20.0,
                     help="ADD_PROVIDER per peer per second (0 = off)")
    lim.add_argument("--max-reads-per-second", type=float, default=200.0,
                     help="FIND_NODE, GET_VALUE and GET_PROVIDERS together per peer per second (0 = off)")
    lim.add_argument("--max-records-per-peer", type=int, default=256,
                     help="records one publisher may have stored (loopback and private addresses too; 0 = off)")

    s = add("listen", "join, announce yourself in a namespace and answer JSON requests")
    s.add_argument("--namespace", required=True)
    s.add_argument("--protocol", default=DEFAULT_PROTOCOL, help="JSON request/response protocol name")

    s = add("dial", "find the peers of a namespace and send each a JSON request")
    s.add_argument("--namespace", required=True)
    s.add_argument("--protocol", default=DEFAULT_PROTOCOL, help="JSON request/response protocol name")
    s.add_argument("--message", default='{"hello": "from kadfast"}', help="the JSON request")
    s.add_argument("--count", type=int, help="talk to at most N peers")

    for name, help in (("get", "get a record"), ("provide", "announce yourself as a provider of a key"),
                       ("providers", "find the providers of a key"), ("closest", "find the peers closest to a key or PeerId")):
        s = add(name, help)
        s.add_argument("key")
        s.add_argument("--hex", action="store_true", help="the key is hex-encoded bytes")
        if name == "get":
            s.add_argument("--all", action="store_true", help="print every distinct value found")
    s = add("put", "put a record")
    s.add_argument("key")
    s.add_argument("value")
    s.add_argument("--hex", action="store_true", help="key and value are hex-encoded bytes")
    s.add_argument("--quorum", default="one", help="one, majority, all or a number (default one)")
    s = add("find-peer", "find the addresses of a peer")
    s.add_argument("peer_id")
    s = add("id", "create or show an identity", parents=(common,))
    s.add_argument("--key", dest="key_file", metavar="FILE",
                   help="key file (created if missing); without it, a new identity is shown")
    add("demo", "run a local network on loopback: a bootstrap node, three listeners and a dialer", parents=(common,))
    return p


def parse_key(text: str, is_hex: bool) -> bytes:
    if is_hex:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise UsageError(f"not hex: {text!r}") from None
    return text.encode()


def parse_quorum(text: str):
    t = text.lower()
    if t in ("one", "majority", "all"):
        return t
    if t.isdigit() and int(t) >= 1:
        return int(t)
    raise UsageError(f"bad quorum {text!r}: one, majority, all or a positive number")


def setup_logging(args) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the open-file limit to the hard limit; returns (soft, hard)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError):
        pass
    return soft, hard


# -- commands -----------------------------------------------------------------------
def make_client(args, namespace=None, announce=False, protocol=DEFAULT_PROTOCOL, serve=False) -> Client:
    """The node of a command. ``serve`` (``listen``): it listens (on
    ``/ip4/0.0.0.0/tcp/0`` unless ``--listen`` says where) and serves the kad
    protocol. Otherwise (the one-shot commands) it is a DHT client: kad is
    not announced, so that a short-lived command never enters other peers'
    routing tables, and it listens only where ``--listen`` asks."""
    if not args.bootstrap:
        raise UsageError("--bootstrap MADDR is required (the address printed by `kadfast server`)")
    if serve:
        listen, mode = args.listen or ["/ip4/0.0.0.0/tcp/0"], "auto"
    else:
        listen, mode = args.listen, "client"
    return Client(
        args.bootstrap,
        namespace,
        key_file=args.key_file,
        listen=listen,
        external_addrs=args.external_addr,
        announce=announce,
        protocol=protocol,
        kad_config=Config(protocol=args.kad_protocol, mode=mode),
    )


#: where ``kadfast server`` listens unless ``--listen`` says: TCP and QUIC on port 4001
SERVER_LISTEN = ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1")


def workers_arg(text: str) -> int:
    """``--workers``: a count >= 1, or ``auto`` (one per core)."""
    if text == "auto":
        import os
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', not {text!r}") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError("the number of workers is 1 to 256")
    return n


def server_listen_default() -> list[str]:
    """:data:`SERVER_LISTEN`, without QUIC where this Python cannot run it
    (a warning says why)."""
    why = quic_unavailable()
    if why is None:
        return list(SERVER_LISTEN)
    log.warning("listening on TCP only: %s", why)
    return [a for a in SERVER_LISTEN if "/quic" not in a]


def server_store_config(args) -> StoreConfig:
    return StoreConfig(max_records=args.max_records, max_value_bytes=args.max_value_bytes)


def open_server_store(args, keypair: Ed25519KeyPair, spec: str):
    """The store of ``kadfast server`` (None: the node's MemoryStore)."""
    if spec == "memory":
        return None
    from .sqlite_store import open_store
    try:
        return open_store(spec, keypair.peer_id, server_store_config(args), group_commit=True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def make_server_node(args, keypair: Ed25519KeyPair, store, soft: int, listen: list[str] | None = None,
                     reuse_port: bool = False) -> KadNode:
    """The node of ``kadfast server`` (and of each of its workers)."""
    store_config = server_store_config(args)
    return KadNode(
        keypair,
        Config(mode="server", protocol=args.kad_protocol, store=store_config, max_message_size=args.max_message_size,
               max_value_size=args.max_value_bytes, unvalidated_records=args.unvalidated_records,
               max_puts_per_peer_per_second=args.max_puts_per_second,
               max_provider_adds_per_peer_per_second=args.max_provider_adds_per_second,
               max_reads_per_peer_per_second=args.max_reads_per_second,
               max_records_per_peer=args.max_records_per_peer),
        host_config=HostConfig(listen_addrs=listen or args.listen or server_listen_default(),
                               external_addrs=args.external_addr, reuse_port=reuse_port,
                               max_connections=args.max_connections or (max(64, soft - 64) if soft else 4096),
                               max_connections_per_ip=args.max_connections_per_ip,
                               max_connections_per_small_subnet=args.max_connections_per_small_subnet,
                               max_connections_per_large_subnet=args.max_connections_per_large_subnet,
                               max_pending_handshakes=args.max_pending_handshakes,
                               max_pending_handshakes_per_ip=args.max_pending_handshakes_per_ip,
                               limit_loopback=args.limit_loopback,
                               conn_high_water=args.conn_high_water, conn_low_water=args.conn_low_water,
                               conn_grace_period=args.conn_grace_period,
                               max_inbound_streams=args.max_inbound_streams),
        store=store,
    )


async def cmd_server(args, out: Out) -> int:
    if args.workers != 1:
        from .workers import run_supervisor
        return await run_supervisor(args, out)
    soft, _ = raise_nofile_limit()
    keypair = load_or_create_keypair(args.key_file) if args.key_file else Ed25519KeyPair.generate()
    store = open_server_store(args, keypair, args.store)
    node = make_server_node(args, keypair, store, soft)
    await node.start()
    tune_gc_for_server(args.gc_young_threshold)
    if args.bootstrap:
        # other bootstrap nodes to join: add them, bootstrap in the background
        from .client import parse_bootstrap
        for pid, addr in parse_bootstrap(args.bootstrap):
            node.add_address(pid, addr)
        node.spawn(node.bootstrap(), quiet=True)
    addrs = [str(a.with_peer_id(node.peer_id)) for a in node.listen_addrs]
    stop = asyncio.Event()
    metrics_server = None
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        if args.json:
            out.emit("listening", "", peer_id=str(node.peer_id), addrs=addrs, open_files=soft)
        else:
            for a in addrs:
                print(a, flush=True)
            log.warning("open-file limit %d: room for about %d connections", soft, max(0, soft - 64))
        if args.metrics_port is not None:
            metrics_server = await start_metrics(node, args.metrics_port)
        last, last_count = time.monotonic(), 0
        last_logged = 0.0
        # after many connections closed, hand the memory they used back to the OS
        trimmer = MemoryTrimmer()
        # once a second; the requests are counted by the node (a subscriber
        # woken per request would cost the server a third more CPU per request)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            now = time.monotonic()
            served = sum(node.request_counts.values())
            rate = (served - last_count) / max(now - last, 1e-9)
            last, last_count = now, served
            conns = node.host.connection_count()
            trimmer.observe(conns, now)
            status = (f"peers {len(node.table)} | connections {conns} | "
                      f"records {len(node.store)} | requests/s {rate:.0f}")
            if out.tty:
                out.progress(status)
            elif not args.quiet and now - last_logged >= 30.0:
                last_logged = now
                print(f"{time.strftime('%H:%M:%S')} {status}", file=sys.stderr, flush=True)
        return EXIT_OK
    finally:
        out.clear_progress()
        if metrics_server is not None:
            metrics_server.close()
        await node.stop()
        if store is not None and hasattr(store, "close"):
            store.close()


async def start_metrics(node: KadNode, port: int):
    from .metrics import Metrics, serve_metrics

    m = Metrics()
    m.gauge("kadfast_routing_table_peers", "peers in the routing table", lambda: len(node.table))
    m.gauge("kadfast_connections", "open connections", lambda: node.host.connection_count())
    m.gauge("kadfast_open_connections", "open connections by transport",
            lambda: [({"transport": t}, n) for t, n in node.host.transport_counts().items()])
    m.gauge("kadfast_store_records", "records held", lambda: len(node.store))
    m.gauge("kadfast_buffered_bytes", "bytes the kad server holds for its peers (Config.max_buffered_bytes): "
            "requests unfinished or held, answers queued", lambda: [({"kind": k}, v) for k, v in node.buffered_bytes().items()])
    m.gauge("kadfast_inbound_requests", "inbound kad requests since start",
            lambda: sum(node.request_counts.values()))
    m.counter("kadfast_requests_total", "inbound kad requests by type",
              lambda: [({"type": t.name}, n) for t, n in list(node.request_counts.items())])

    async def count():
        q = node.subscribe(inbound_requests=False)
        while True:
            ev = await q.get()
            if type(ev).__name__ == "QueryProgressed" and ev.finished:
                m.observe("kadfast_query_duration_seconds", ev.stats.duration or 0.0)
    node.spawn(count())
    return await serve_metrics(m, "127.0.0.1", port)


async def cmd_listen(args, out: Out) -> int:
    client = make_client(args, args.namespace, announce=True, protocol=args.protocol, serve=True)

    async def handler(peer, request):
        out.emit("request", f"request from {peer}: {json.dumps(request)}", peer=str(peer), request=request)
        return {"peer": str(client.peer_id), "echo": request}

    client.handler = handler
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    out.progress("joining the DHT and announcing…")
    async with client:
        addrs = [str(a.with_peer_id(client.peer_id)) for a in client.listen_addrs]
        out.emit("announced", f"listening in namespace {args.namespace!r} as {client.peer_id}",
                 peer_id=str(client.peer_id), namespace=args.namespace, addrs=addrs)
        await stop.wait()
    return EXIT_OK


async def cmd_dial(args, out: Out) -> int:
    try:
        message = json.loads(args.message)
    except ValueError:
        raise UsageError(f"--message is not JSON: {args.message!r}") from None
    client = make_client(args, args.namespace, announce=False, protocol=args.protocol)
    out.progress("joining the DHT…")
    async with client:
        out.progress(f"looking up namespace {args.namespace!r}…")
        peers = await client.peers(limit=args.count)
        if not peers:
            out.emit("empty", f"no peer of namespace {args.namespace!r} answered", namespace=args.namespace)
            return EXIT_NOT_FOUND
        ok = 0

        async def talk(pid):
            nonlocal ok
            try:
                reply = await client.request(pid, message)
            except RequestError as exc:
                out.emit("error", f"{pid}: {exc}", peer=str(pid), error=str(exc))
                return
            ok += 1
            out.emit("reply", f"{pid}: {json.dumps(reply)}", peer=str(pid), response=reply)

        await asyncio.gather(*[talk(p) for p in peers])
        if not args.json:
            log.info("%d of %d peers answered", ok, len(peers))
        return EXIT_OK if ok else EXIT_FAIL


async def cmd_dht(args, out: Out) -> int:
    client = make_client(args)
    out.progress("joining the DHT…")
    async with client:
        node = client.node
        c = args.command
        if c == "put":
            key, value = parse_key(args.key, args.hex), parse_key(args.value, args.hex)
            out.progress("storing…")
            stored = await node.put_record(Record(key, value), parse_quorum(args.quorum))
            out.emit("stored", f"stored on {stored} peers", key=args.key, peers=stored)
        elif c == "get":
            key = parse_key(args.key, args.hex)
            # a namespace with a validator (/ipns/, /pk/) has a best record to
            # pick: ask the whole lookup, as go does, not the first answer
            selects = node.validator.validator_for(key) is not None
            res = await node.get_record(key, quorum=node.config.k if args.all or selects else 1)
            values = []
            for pr in res.records:
                if pr.record.value not in values:
                    values.append(pr.record.value)
            shown = values if args.all else [res.best.value]
            for v in shown:
                text = v.hex() if args.hex else v.decode(errors="replace")
                out.emit("value", text, key=args.key, value=text)
        elif c == "provide":
            if not node.host.announce_addrs():
                log.warning("this node listens nowhere (no --listen): its provider record carries no address, "
                            "and peers drop provider records without one")
            sent = await node.provide(parse_key(args.key, args.hex))
            out.emit("provided", f"provider record sent to {sent} peers", key=args.key, peers=sent)
        elif c == "providers":
            found = await node.get_providers(parse_key(args.key, args.hex))
            found.pop(client.peer_id, None)
            if not found:
                out.emit("empty", "no providers found", key=args.key)
                return EXIT_NOT_FOUND
            for pid, addrs in found.items():
                out.emit("provider", f"{pid} {' '.join(map(str, addrs))}", peer=str(pid), addrs=[str(a) for a in addrs])
        elif c == "closest":
            try:
                target: Any = PeerId.from_string(args.key)
            except PeerIdError:
                target = parse_key(args.key, args.hex)
            for pid in await node.get_closest_peers(target):
                out.emit("peer", str(pid), peer=str(pid))
        elif c == "find-peer":
            pid = PeerId.from_string(args.peer_id)
            addrs = await node.find_peer(pid)
            for a in addrs:
                out.emit("addr", str(a.with_peer_id(pid)), peer=str(pid), addr=str(a))
    return EXIT_OK


def cmd_id(args, out: Out) -> int:
    pair = load_or_create_keypair(args.key_file) if args.key_file else Ed25519KeyPair.generate()
    out.emit("identity", str(pair.peer_id), peer_id=str(pair.peer_id), key_file=args.key_file)
    return EXIT_OK


async def cmd_demo(args, out: Out) -> int:
    from .demo import run_demo
    return await run_demo(out)


ASYNC_COMMANDS = {
    "server": cmd_server,
    "listen": cmd_listen,
    "dial": cmd_dial,
    "put": cmd_dht,
    "get": cmd_dht,
    "provide": cmd_dht,
    "providers": cmd_dht,
    "closest": cmd_dht,
    "find-peer": cmd_dht,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args)
    out = Out(args.json, args.quiet)
    try:
        if args.command == "id":
            return cmd_id(args, out)
        fn = ASYNC_COMMANDS[args.command]
        timeout = getattr(args, "timeout", None)
        long_running = args.command in ("server", "listen", "demo")

        async def go():
            # SIGTERM ends a short command like Ctrl-C does (long-running ones
            # install their own handlers for a graceful stop)
            task = asyncio.current_task()
            assert task is not None  # (this coroutine's)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            if long_running or timeout is None:
                return await fn(args, out)
            return await asyncio.wait_for(fn(args, out), timeout)

        return run_loop(go, args.loop)
    except (KeyboardInterrupt, asyncio.CancelledError):
        out.clear_progress()
        return EXIT_INTERRUPTED
    except UsageError as exc:
        return fail(out, EXIT_USAGE, str(exc))
    except (MultiaddrError, PeerIdError, KeyFileError, ValueTooLarge) as exc:
        return fail(out, EXIT_USAGE, str(exc))
    except BootstrapError as exc:
        return fail(out, EXIT_BOOTSTRAP, str(exc))
    except (NotFound, NoPeersInNamespace) as exc:
        return fail(out, EXIT_NOT_FOUND, str(exc))
    except QuorumFailed as exc:
        return fail(out, EXIT_QUORUM, str(exc))
    except NoKnownPeers as exc:
        return fail(out, EXIT_BOOTSTRAP, str(exc))
    except asyncio.TimeoutError:
        return fail(out, EXIT_FAIL, "timed out")
    except (KadfastError, OSError) as exc:
        return fail(out, EXIT_FAIL, f"{type(exc).__name__}: {exc}")


def fail(out: Out, code: int, message: str) -> int:
    out.clear_progress()
    if out.as_json:
        print(json.dumps({"event": "error", "error": message, "exit_code": code}), flush=True)
    print(f"kadfast: error: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
