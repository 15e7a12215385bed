"""The host: listens and dials TCP and QUIC multiaddrs, upgrades connections,
keeps one connection per peer, routes streams to protocol handlers, and runs
identify and ping.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Iterator

from .. import __version__
from ..addrbook import AddressBook, dialable_quic, dialable_tcp, ip_group, ip_subnets, is_loopback
from ..errors import (
    DialBackoff,
    DialError,
    DialLimitReached,
    DialNegotiationFailed,
    DialNoAddresses,
    DialRefused,
    DialTimeout,
    DialWrongPeer,
    KadfastError,
    MultiaddrError,
    ProtocolError,
    QuicUnavailable,
)
from ..identify import PROTOCOL_ID as IDENTIFY_PROTOCOL
from ..identify import PUSH_PROTOCOL_ID as IDENTIFY_PUSH_PROTOCOL
from ..identify import IdentifyInfo
from ..keys import Ed25519KeyPair
from ..multiaddr import Multiaddr
from ..noise import NoisePeerIdMismatch, NoiseStaticKey, name_fallback_once
from ..peerid import PeerId
from ..ping import PROTOCOL_ID as PING_PROTOCOL
from ..ratelimit import PeerRateLimiter
from ..tls import Libp2pCertificate, make_certificate
from .connection import Connection
from .connmgr import PRUNED_REASON, choose_prunable
from .services import IdentifyService, PingService
from .stream import Stream, StreamReset

if TYPE_CHECKING:
    from .quicconn import QuicConnection, QuicEndpoint

log = logging.getLogger("kadfast.net")

__all__ = ["Host", "HostConfig", "HostUsage", "Dial", "ConnectionEstablished", "ConnectionClosed", "PeerIdentified"]


@functools.cache
def quic_unavailable() -> str | None:
    """Why QUIC cannot be used in this Python, or None when it can. aioquic
    needs Python's ``ssl`` module, which loads the system's OpenSSL; where
    that is missing, kadfast runs on TCP alone (and says so)."""
    try:
        from . import quicconn  # noqa: F401
    except ImportError as exc:
        return f"QUIC needs Python's ssl module, which cannot load here ({exc})"
    return None


def _quicconn():
    """The QUIC connection module, imported on first use (see :func:`quic_unavailable`)."""
    why = quic_unavailable()
    if why is not None:
        raise QuicUnavailable(why)
    from . import quicconn

    return quicconn


Handler = Callable[[Stream], Awaitable[None]]


@dataclass
class HostConfig:
    """Network settings; every limit is on by default."""

    #: addresses to listen on, TCP and QUIC, e.g. ["/ip4/127.0.0.1/tcp/0",
    #: "/ip4/127.0.0.1/udp/0/quic-v1"]
    listen_addrs: list[str] = field(default_factory=list)
    #: listen with ``SO_REUSEPORT``, so that several processes (the workers of
    #: ``kadfast server --workers N``) share each listening port and the kernel
    #: spreads the connections among them; QUIC then dials from a UDP socket
    #: of its own (a reply to the listening port could reach another process)
    reuse_port: bool = False
    #: addresses that identify announces besides the listen addresses
    external_addrs: list[str] = field(default_factory=list)
    agent_version: str = f"kadfast/{__version__}"
    protocol_version: str = "ipfs/0.1.0"
    #: connections in total (inbound and outbound, open or being upgraded).
    #: At the limit, an inbound connection (once past the per-IP checks) or a
    #: dial first has the connection manager prune at once (below); only when
    #: nothing can be pruned is it refused
    max_connections: int = 4096
    #: the connection manager: when more than ``conn_high_water`` connections
    #: are open (checked as one opens, and by the idle reaper), it closes
    #: connections down to ``conn_low_water``, least useful first: those
    #: without streams, then those with streams, each idle longest first
    #: (reason "pruned by the connection manager", one info line per trim).
    #: Never pruned: a connection younger than ``conn_grace_period``, one with
    #: a stream in use (an open stream that received data within
    #: ``conn_in_use_window`` seconds), and a peer that :meth:`Host.protect`
    #: or :attr:`Host.keep` protects (the Kademlia node: its routing-table
    #: peers). A mark at or above ``max_connections`` is taken as 7/8 (high)
    #: and 3/4 (low) of it, so that a host given fewer connections keeps the
    #: proportions. ``conn_high_water`` 0 turns pruning off (the hard limit
    #: then refuses, as before there was a manager)
    conn_high_water: int = 3584
    conn_low_water: int = 3072
    conn_grace_period: float = 20.0
    conn_in_use_window: float = 10.0
    #: least time between two trims at the marks (a trim at the hard limit
    #: does not wait; one that could prune nothing is not retried sooner either)
    conn_trim_interval: float = 1.0
    #: connections to one peer: one, plus one that a simultaneous dial may add
    max_connections_per_peer: int = 2
    #: inbound connections (being upgraded or open) from one IP address; an
    #: IPv6 address counts by its /64 prefix, which one host usually holds
    #: whole. Checked when the TCP connection is accepted: one over the limit
    #: is closed at once (logged at info). 0 turns the limit off.
    max_connections_per_ip: int = 64
    #: inbound connections (being upgraded or open) from one subnet, counted
    #: and checked like ``max_connections_per_ip``: the small subnet is an
    #: IPv4 /24 or an IPv6 /48 (a site), the large one an IPv4 /16 or an IPv6
    #: /32 (an ISP's allocation). 0 turns one off
    max_connections_per_small_subnet: int = 256
    max_connections_per_large_subnet: int = 1024
    #: whether the per-IP and per-subnet limits (connections and handshake
    #: rates) apply to loopback addresses too (off: local tools, tests and a
    #: same-machine proxy are not limited)
    limit_loopback: bool = False
    #: inbound connections accepted and not yet open (their handshake under
    #: way) at once; one over it is closed on accept, before any Noise work
    #: (logged at debug). Loopback is not exempt. 0 turns the limit off
    max_pending_handshakes: int = 256
    #: of those, from one IP address (IPv6: /64): a few addresses that open
    #: connections and never finish the handshake cannot hold every slot
    #: until their handshake timeout. Loopback exempt unless
    #: ``limit_loopback``; 0 turns it off
    max_pending_handshakes_per_ip: int = 8
    #: inbound handshakes begun per second from one IP address (IPv6: /64),
    #: and from one subnet (IPv4 /24, IPv6 /48), each with a bucket of
    #: ``handshake_burst_seconds`` worth; a connection over either is closed
    #: before any Noise work (a handshake flood costs a bounded share of a
    #: core). Loopback exempt unless ``limit_loopback``; 0 turns one off
    max_handshakes_per_ip_per_second: float = 10.0
    max_handshakes_per_subnet_per_second: float = 100.0
    handshake_burst_seconds: float = 5.0
    #: inbound streams open at once on one connection (rust-libp2p kad allows
    #: 32 per protocol; the whole connection gets more)
    max_inbound_streams: int = 256
    #: Yamux streams per session, both directions
    max_streams_per_connection: int = 512
    #: offer Yamux inside the Noise handshake (libp2p's inlined muxer
    #: negotiation): with a peer that offers it too (go-libp2p) a connection
    #: skips the multistream-select round trip for ``/yamux/1.0.0``; with
    #: any other peer nothing changes
    early_muxer_negotiation: bool = True
    #: Yamux pings of the peer answered per second (burst 20); the rest go
    #: unanswered. 0: every ping is answered
    max_yamux_pings_per_second: float = 10.0
    #: bytes of one connection's input handled per turn of the event loop;
    #: past it the rest of the read waits for the next turn and the
    #: connection stops being read from meanwhile, so that one busy peer (a
    #: ping or request flood) cannot hold the loop: uvloop hands a loop turn
    #: up to 32 reads of one socket. 0: no limit
    max_read_bytes_per_turn: int = 128 * 1024
    #: libp2p pings (/ipfs/ping/1.0.0) answered per second to one peer
    #: (all its ping streams together), with a burst of 50 (rust pings
    #: every 15 s, ``ipfs ping`` once a second); a ping over the rate resets
    #: its stream. At most
    #: ``max_ping_streams`` inbound ping streams per connection (rust keeps
    #: one). 0 turns either off
    max_pings_per_second: float = 10.0
    ping_burst: int = 50
    max_ping_streams: int = 2
    #: outbound dials in progress at once
    max_concurrent_dials: int = 64
    #: TCP connect plus upgrade (QUIC: its handshake)
    dial_timeout: float = 10.0
    #: dial a peer's QUIC addresses before its TCP ones (go-libp2p and
    #: rust-libp2p prefer QUIC too); TCP is still tried when QUIC fails
    prefer_quic: bool = True
    #: with ``prefer_quic``, a peer's TCP addresses are dialed too once its
    #: QUIC ones have not connected for this long (go-libp2p waits a
    #: similar moment): the first connection wins
    dial_fallback_delay: float = 0.5
    #: seconds without a packet before a QUIC connection is dropped (the
    #: transport's idle timeout, as go-libp2p's and rust-libp2p's 30 s);
    #: ``idle_timeout`` applies to QUIC connections as to TCP ones
    quic_idle_timeout: float = 30.0
    #: a QUIC connection we dialed sends a PING after this many seconds
    #: without a datagram from the peer (go-libp2p: 15 s), so that QUIC's
    #: idle timeout does not end it while the host keeps it; 0: never
    quic_keepalive: float = 15.0
    #: receive and send buffer asked for each QUIC UDP socket (bytes;
    #: quic-go asks for 7 MiB): a burst of datagrams beyond the receive
    #: buffer is dropped by the kernel, a CONNECTION_CLOSE among them leaves
    #: its connection to the idle timeout. Linux caps it at
    #: ``net.core.rmem_max``/``wmem_max`` (a warning says when); 0: the
    #: system's default
    quic_socket_buffer: int = 4 << 20
    #: upgrade of an inbound or outbound connection (multistream, Noise,
    #: Yamux; QUIC: its handshake and the libp2p TLS authentication)
    handshake_timeout: float = 10.0
    #: protocol negotiation on one stream
    negotiation_timeout: float = 10.0
    #: a connection without streams for this long (Yamux pings included) is
    #: closed, and so is one whose streams received no data for this long (a
    #: peer holding silent streams open); checked every quarter of it, at
    #: most every 30 s
    idle_timeout: float = 120.0
    #: first back-off after a failed dial, doubled per failure up to the maximum
    dial_backoff_base: float = 1.0
    dial_backoff_max: float = 300.0
    #: peers remembered in the back-off table
    max_backoff_entries: int = 10_000
    identify_timeout: float = 10.0
    #: events kept per subscriber before new ones are dropped
    event_queue_size: int = 1024


@dataclass(frozen=True, slots=True)
class HostUsage:
    """What the host's connection limits count at one moment (copies): see
    :meth:`Host.usage`. The per-IP and per-subnet maps hold inbound
    connections (IPv6 grouped by /64), as the limits of the same names."""

    open: int
    pending: int
    pending_inbound: int
    pending_per_ip: dict[str, int]
    per_ip: dict[str, int]
    per_small_subnet: dict[str, int]
    per_large_subnet: dict[str, int]
    #: large subnets whose members are tracked for pruning at the hard limit
    tracked_large_subnets: int
    dialing: int
    backoff_entries: int
    protected_peers: int
    #: the host's own tasks still running (handlers, identify, the reaper)
    tasks: int
    #: a trim waits for the trim interval
    trim_scheduled: bool
    #: no search for prunable connections at the hard limit before this
    #: time (one found nothing to prune); on the host's clock
    hard_trim_after: float

    @property
    def empty(self) -> bool:
        """Nothing is open, under way or counted against any limit."""
        return not (self.open or self.pending or self.pending_inbound or self.pending_per_ip or self.per_ip
                    or self.per_small_subnet or self.per_large_subnet or self.tracked_large_subnets)


@dataclass(frozen=True, slots=True)
class ConnectionEstablished:
    peer_id: PeerId
    remote_addr: Multiaddr | None
    inbound: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    peer_id: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class PeerIdentified:
    peer_id: PeerId
    info: IdentifyInfo


class Host:
    def __init__(self, keypair: Ed25519KeyPair | None = None, config: HostConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        #: the one clock of the host, its connections and its address book
        #: (a KadNode on a host shares it); deadlines and rates are on it
        self.clock = clock
        self.keypair = keypair or Ed25519KeyPair.generate()
        self.peer_id = self.keypair.peer_id
        #: one X25519 static key and signed payload for every Noise handshake
        self.noise_static = NoiseStaticKey.generate(self.keypair)
        self.config = config or HostConfig()
        #: config.external_addrs (text) and their parsed form
        self._external: tuple[tuple, list[Multiaddr]] = ((), [])
        self._loop: asyncio.AbstractEventLoop | None = None
        self.addrbook = AddressBook()
        self._handlers: dict[str, Handler] = {}
        self._inline: set[str] = set()  # protocols whose handler runs inline (set_stream_handler)
        self._servers: list[asyncio.AbstractServer] = []
        #: the UDP sockets of QUIC: the listening ones, and the one per
        #: address family that dials when none listens
        self._quic_endpoints: list[QuicEndpoint] = []
        self._quic_dialers: dict[int, QuicEndpoint] = {}
        self._tls_certificate: Libp2pCertificate | None = None
        self._listen_addrs: list[Multiaddr] = []
        self._conns: dict[PeerId, list[Connection]] = {}
        #: bumped whenever a connection joins or leaves ``_conns`` (so what
        #: :meth:`connection` answers for any peer may have changed); for caches
        self.conn_epoch = 0
        self._pending: set[Connection] = set()
        #: inbound connections of ``_pending``, for max_pending_handshakes
        self._pending_inbound = 0
        #: inbound handshakes under way per IP (IPv6: /64), for max_pending_handshakes_per_ip
        self._pending_per_ip: dict[str, int] = {}
        #: inbound connections per remote IP (IPv6: per /64), for max_connections_per_ip
        self._ip_conns: dict[str, int] = {}
        #: and per subnet, for max_connections_per_small_subnet / _large_subnet
        self._small_subnet_conns: dict[str, int] = {}
        self._large_subnet_conns: dict[str, int] = {}
        #: the inbound connections counted per large subnet, for pruning at the
        #: hard limit (see _make_room)
        self._large_subnet_members: dict[str, set[Connection]] = {}
        #: peers the connection manager never prunes: their protection tags
        self._protected: dict[PeerId, set[str]] = {}
        #: ``keep(peer)`` true: the connection manager never prunes the
        #: peer's connections (the Kademlia node: its routing-table peers)
        self.keep: Callable[[PeerId], bool] | None = None
        self._trimming = False
        self._last_trim = -1e18
        #: no trim at the hard limit before this (one found nothing to prune)
        self._hard_trim_after = -1e18
        self._trim_timer: asyncio.TimerHandle | None = None
        self.pruned_connections = 0
        cfg = self.config
        self._handshakes_per_ip = PeerRateLimiter.per_second(
            cfg.max_handshakes_per_ip_per_second, cfg.handshake_burst_seconds)
        self._handshakes_per_subnet = PeerRateLimiter.per_second(
            cfg.max_handshakes_per_subnet_per_second, cfg.handshake_burst_seconds)
        #: answers the peers' pings and pings them (on kadfast.ping's cores)
        self.ping_service = PingService(cfg, clock)
        self._dialing: dict[PeerId, Dial] = {}
        self._dial_sem: asyncio.Semaphore | None = None
        self._backoff: collections.OrderedDict[PeerId, tuple[float, int]] = collections.OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._subscribers: list[asyncio.Queue] = []
        self._listeners: list[Callable[[object], None]] = []
        self._open_count = 0  # open connections in _conns, kept so that counting is O(1)
        self._reaper: asyncio.Task | None = None
        self._closing = False
        self.dropped_events = 0
        #: turns of the loop that saw a read (see max_read_bytes_per_turn);
        #: connections over their share wait in _paused for the next turn
        self.turn = 0
        self._turn_armed = False
        self._paused: list[Connection] = []
        #: identify of every connection (on kadfast.identify's cores)
        self.identify_service = IdentifyService(
            self.keypair.public_key, self.config, clock, self.addrbook, self.announce_addrs,
            lambda: self.protocols, lambda peer, info: self._emit(PeerIdentified(peer, info)))
        #: what each connected peer told by identify
        self.peer_info = self.identify_service.peer_info
        self.set_stream_handler(IDENTIFY_PROTOCOL, self.identify_service.serve, inline=True)
        self.set_stream_handler(IDENTIFY_PUSH_PROTOCOL, self.identify_service.serve_push)
        self.set_stream_handler(PING_PROTOCOL, self.ping_service.serve)

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        name_fallback_once(log)  # once per process, however many hosts it runs
        self._loop = asyncio.get_running_loop()
        self._dial_sem = asyncio.Semaphore(self.config.max_concurrent_dials)
        for a in self.config.listen_addrs:
            await self.listen(Multiaddr(a))
        self._reaper = self.loop.create_task(self._reap_idle())

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the host was started on."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the host is not started (await host.start() first)")
        return loop

    async def __aenter__(self) -> "Host":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        for srv in self._servers:
            srv.close()
        for ep in [*self._quic_endpoints, *self._quic_dialers.values()]:
            ep.close()
        self._quic_endpoints.clear()
        self._quic_dialers.clear()
        for conns in list(self._conns.values()):
            for c in list(conns):
                c.close("host closing")
        for c in list(self._pending):
            c.close("host closing")
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for srv in self._servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):
                pass
        self._servers.clear()

    # -- listening -------------------------------------------------------
    @property
    def tls_certificate(self) -> Libp2pCertificate:
        """The libp2p TLS certificate of every QUIC connection (made on first use)."""
        cert = self._tls_certificate
        if cert is None:
            cert = self._tls_certificate = make_certificate(self.keypair)
        return cert

    @tls_certificate.setter
    def tls_certificate(self, cert: Libp2pCertificate) -> None:
        self._tls_certificate = cert

    async def listen(self, addr: Multiaddr) -> list[Multiaddr]:
        """Listen on a TCP or a QUIC (``/udp/<port>/quic-v1``) address; the
        addresses listened on (the port chosen for port 0)."""
        if addr.value_for("quic-v1") is not None or addr.value_for("udp") is not None:
            return await self._listen_quic(addr)
        host, port = _tcp_host_port(addr)
        loop = self.loop
        server = await loop.create_server(
            lambda: self._new_connection(initiator=False), host, port, reuse_address=True, backlog=1024,
            reuse_port=self.config.reuse_port or None)
        self._servers.append(server)
        added = []
        for sock in server.sockets:
            h, p = sock.getsockname()[:2]
            proto = "ip6" if sock.family == socket.AF_INET6 else "ip4"
            added.append(Multiaddr(f"/{proto}/{h.split('%')[0]}/tcp/{p}"))
        self._listen_addrs.extend(added)
        return added

    async def _listen_quic(self, addr: Multiaddr) -> list[Multiaddr]:
        qc = _quicconn()
        host, port = qc.quic_address(addr)
        _, ep = await self.loop.create_datagram_endpoint(
            lambda: qc.QuicEndpoint(self, listening=True), local_addr=(host, port),
            reuse_port=self.config.reuse_port or None)
        self._quic_endpoints.append(ep)
        assert ep.multiaddr is not None  # set once the socket is there
        self._listen_addrs.append(ep.multiaddr)
        return [ep.multiaddr]

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        """Addresses we listen on; an unspecified address (0.0.0.0, ::) is
        expanded into the host's own addresses."""
        out = []
        for a in self._listen_addrs:
            ip = a.value_for("ip4") or a.value_for("ip6")
            tcp = a.value_for("tcp")
            udp = a.value_for("udp")
            if ip in ("0.0.0.0", "::") and (tcp is not None or udp is not None):
                out.extend(_local_addrs(ip == "::", f"tcp/{tcp}" if tcp is not None else f"udp/{udp}/quic-v1"))
            else:
                out.append(a)
        return out

    def quic_endpoints(self) -> list[QuicEndpoint]:
        """The UDP sockets of QUIC (listening ones first)."""
        return [*self._quic_endpoints, *self._quic_dialers.values()]

    def announce_addrs(self) -> list[Multiaddr]:
        ext = tuple(self.config.external_addrs)
        if self._external[0] != ext:
            self._external = (ext, [Multiaddr(x) for x in ext])
        seen = []
        for a in self._external[1] + self.listen_addrs:
            if a not in seen:
                seen.append(a)
        return seen

    # -- handlers --------------------------------------------------------
    def set_stream_handler(self, protocol: str, handler, *, inline: bool = False) -> None:
        """Serve ``protocol`` with ``handler(stream)``: a coroutine function
        run as a task of its own (the stream is closed when it returns, reset
        when it raises), or with ``inline`` a plain function called right in
        the connection's read callback once the protocol is negotiated. An
        inline handler must not block: it writes what it can at once and
        owns the stream (closes or resets it, or hands it to
        :meth:`Stream.consume_with`); an exception from it resets the
        stream. No task per stream: what the accept path of a busy server
        wants for identify and kad."""
        self._handlers[protocol] = handler
        if inline:
            self._inline.add(protocol)
        else:
            self._inline.discard(protocol)

    def remove_stream_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)
        self._inline.discard(protocol)

    @property
    def protocols(self) -> list[str]:
        return sorted(self._handlers)

    def supports_protocol(self, protocol: str) -> bool:
        return protocol in self._handlers

    def spawn_handler(self, stream: Stream) -> None:
        handler = None if stream.protocol is None else self._handlers.get(stream.protocol)
        if handler is None:  # removed while negotiating
            stream.reset()
            return
        if stream.protocol in self._inline:
            try:
                handler(stream)
            except Exception as exc:
                self._handler_failed(stream, exc)
            return
        self._spawn(self._run_handler(handler, stream))

    async def _run_handler(self, handler: Handler, stream: Stream) -> None:
        try:
            await handler(stream)
        except asyncio.CancelledError:
            stream.reset()
            raise
        except Exception as exc:
            self._handler_failed(stream, exc)
        else:
            stream.close()

    def _handler_failed(self, stream: Stream, exc: Exception) -> None:
        """A stream handler (a task or inline) raised: the stream is reset
        and the cause logged by its kind."""
        if isinstance(exc, (StreamReset, ConnectionError, asyncio.IncompleteReadError)):
            log.debug("%s handler for %s: %s", stream.protocol, stream.peer_id, exc)
        elif isinstance(exc, KadfastError):  # bad input from the peer: a dropped stream, not a crash
            log.info("%s handler: bad input from %s: %s: %s", stream.protocol, stream.peer_id, type(exc).__name__, exc)
        else:
            log.error("%s handler failed for %s", stream.protocol, stream.peer_id, exc_info=exc)
        stream.reset()

    def _spawn(self, coro) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- events ----------------------------------------------------------
    def subscribe(self) -> asyncio.Queue:
        """A bounded queue receiving ConnectionEstablished, ConnectionClosed
        and PeerIdentified events."""
        q: asyncio.Queue = asyncio.Queue(self.config.event_queue_size)
        self._subscribers.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        if q in self._subscribers:
            self._subscribers.remove(q)

    def add_listener(self, fn: Callable[[object], None]) -> None:
        """Call ``fn(event)`` synchronously for every event: never dropped,
        for components (like the Kademlia node) whose state depends on them."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[object], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _emit(self, event) -> None:
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:
                log.exception("event listener failed on %r", event)
        for q in self._subscribers:
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped_events += 1

    # -- connections -----------------------------------------------------
    def new_quic_connection(self, *, initiator: bool, expected_peer: PeerId | None = None) -> QuicConnection:
        """A QUIC connection counted as the TCP ones are (see
        :meth:`_new_connection`): for the QUIC endpoints."""
        conn = _quicconn().QuicConnection(self, initiator=initiator, expected_peer=expected_peer)
        self._count_new(conn)
        return conn

    def _new_connection(self, *, initiator: bool, expected_peer: PeerId | None = None) -> Connection:
        conn = Connection(self, initiator=initiator, expected_peer=expected_peer)
        self._count_new(conn)
        return conn

    def _count_new(self, conn: Connection) -> None:
        initiator = conn.initiator
        if not initiator:
            # refusals accept the socket and close it at once (connection_made)
            limit = self.config.max_pending_handshakes
            if self._closing:
                conn.refuse("host closing")
                return
            if limit and self._pending_inbound >= limit:
                conn.refuse(f"{self._pending_inbound} handshakes under way already (max_pending_handshakes)")
                return
            self._pending_inbound += 1
        self._pending.add(conn)

    def _unpend(self, conn: Connection) -> None:
        if conn in self._pending:
            self._pending.remove(conn)
            if not conn.initiator:
                self._pending_inbound -= 1
        group = conn.pending_group
        if group is not None:
            conn.pending_group = None
            n = self._pending_per_ip.get(group, 0) - 1
            if n > 0:
                self._pending_per_ip[group] = n
            else:
                self._pending_per_ip.pop(group, None)

    def admit_inbound(self, conn: Connection, ip: str | None) -> bool:
        """Whether an inbound connection from ``ip`` may proceed (the
        per-IP and per-subnet handshake rates and connection limits, then the
        connection limit, which has the connection manager prune if need
        be); counts it when it may."""
        cfg = self.config
        group, loopback = ip_group(ip) if ip else (None, False)
        small = large = None
        if ip and group is not None and (not loopback or cfg.limit_loopback):
            small, large = ip_subnets(ip, group)
            now = self.clock()
            # refusals of a flood are logged at debug: a line each would cost more than the refusal
            if not self._handshakes_per_ip.allow(group, now):
                log.debug("refusing inbound connection from %s: over %s handshakes/s (max_handshakes_per_ip_per_second)",
                          ip, cfg.max_handshakes_per_ip_per_second)
                return False
            if not self._handshakes_per_subnet.allow(small or group, now):  # IPv4 /24, IPv6 /48
                log.debug("refusing inbound connection from %s: over %s handshakes/s from its subnet "
                          "(max_handshakes_per_subnet_per_second)", ip, cfg.max_handshakes_per_subnet_per_second)
                return False
            for limit, key, counts, name in (
                (cfg.max_pending_handshakes_per_ip, group, self._pending_per_ip, "max_pending_handshakes_per_ip"),
                (cfg.max_connections_per_ip, group, self._ip_conns, "max_connections_per_ip"),
                (cfg.max_connections_per_small_subnet, small, self._small_subnet_conns,
                 "max_connections_per_small_subnet"),
                (cfg.max_connections_per_large_subnet, large, self._large_subnet_conns,
                 "max_connections_per_large_subnet"),
            ):
                if limit and key is not None:
                    n = counts.get(key, 0)
                    if n >= limit:
                        log.info("refusing inbound connection from %s: %d connections from %s already (%s)",
                                 ip, n, key, name)
                        return False
        else:
            group = None
        # this connection is in _pending already: over the limit when more than max_connections
        over = self.connection_count() - cfg.max_connections
        if over > 0 and not self._make_room(over, large):
            log.info("refusing inbound connection from %s: connection limit reached, nothing to prune", ip)
            return False
        if group is not None:
            if cfg.max_pending_handshakes_per_ip:
                self._pending_per_ip[group] = self._pending_per_ip.get(group, 0) + 1
                conn.pending_group = group
            if cfg.max_connections_per_ip:
                self._ip_conns[group] = self._ip_conns.get(group, 0) + 1
                conn.ip_group = group
            if cfg.max_connections_per_small_subnet and small is not None:
                self._small_subnet_conns[small] = self._small_subnet_conns.get(small, 0) + 1
                conn.small_subnet = small
            if cfg.max_connections_per_large_subnet and large is not None:
                self._large_subnet_conns[large] = self._large_subnet_conns.get(large, 0) + 1
                self._large_subnet_members.setdefault(large, set()).add(conn)
                conn.large_subnet = large
        return True

    def current_turn(self) -> int:
        """The current loop turn's number; the first read of a turn
        schedules its end (one callback per turn, for all connections)."""
        if not self._turn_armed:
            self._turn_armed = True
            loop = self._loop  # reads come only on a started host
            assert loop is not None
            loop.call_soon(self._next_turn)
        return self.turn

    def defer_to_next_turn(self, conn: Connection) -> None:
        """``conn`` went over its read share of this turn: it is resumed
        (:meth:`Connection.resume_turn`) when the next turn begins."""
        self._paused.append(conn)

    def _next_turn(self) -> None:
        self.turn += 1
        self._turn_armed = False
        if self._paused:
            paused, self._paused = self._paused, []
            for conn in paused:
                conn.resume_turn()

    def connection_count(self) -> int:
        return len(self._pending) + self._open_count

    def usage(self) -> HostUsage:
        """What the connection limits count now: for metrics, and for
        checking that nothing leaks once connections are gone."""
        return HostUsage(
            open=self._open_count,
            pending=len(self._pending),
            pending_inbound=self._pending_inbound,
            pending_per_ip=dict(self._pending_per_ip),
            per_ip=dict(self._ip_conns),
            per_small_subnet=dict(self._small_subnet_conns),
            per_large_subnet=dict(self._large_subnet_conns),
            tracked_large_subnets=len(self._large_subnet_members),
            dialing=len(self._dialing),
            backoff_entries=len(self._backoff),
            protected_peers=len(self._protected),
            tasks=len(self._tasks),
            trim_scheduled=self._trim_timer is not None,
            hard_trim_after=self._hard_trim_after,
        )

    def dial_under_way(self, peer: PeerId) -> "Dial | None":
        """The dial to ``peer`` that callers of :meth:`dial` share now:
        its task, how many callers wait on it, whether it holds a dial slot
        (``max_concurrent_dials``) yet; None when no dial is under way."""
        return self._dialing.get(peer)

    def pending_connections(self) -> list[Connection]:
        """The connections whose upgrade is under way."""
        return list(self._pending)

    def connections(self, peer: PeerId) -> list[Connection]:
        return list(self._conns.get(peer, ()))

    def connection(self, peer: PeerId) -> Connection | None:
        for c in self._conns.get(peer, ()):
            if c.is_open:
                return c
        return None

    def open_connections(self) -> Iterator[Connection]:
        """Every connection in the table of open ones (all peers)."""
        for conns in self._conns.values():
            yield from conns

    def transport_counts(self) -> dict[str, int]:
        """Open connections by transport (``tcp``, ``quic``): O(connections)."""
        quic = sum(1 for c in self.open_connections() if c.transport_name == "quic")
        return {"tcp": self._open_count - quic, "quic": quic}

    def connected_peers(self) -> list[PeerId]:
        return [p for p, cs in self._conns.items() if any(c.is_open for c in cs)]

    def connection_opened(self, conn: Connection) -> None:
        self._unpend(conn)
        peer = conn.remote_peer_id
        assert peer is not None  # an upgraded connection knows its peer
        conns = self._conns.setdefault(peer, [])
        if len(conns) >= self.config.max_connections_per_peer:
            conn.close("too many connections to this peer")
            return
        conns.append(conn)
        self._open_count += 1
        self.conn_epoch += 1
        if conn.initiator and conn.remote_addr is not None:
            self.addrbook.mark_connected(peer, conn.remote_addr, self.clock())
        self._emit(ConnectionEstablished(peer, conn.remote_addr, not conn.initiator))
        job = self.identify_service.identify_connection(conn)
        if job is not None:
            self._spawn(job)
        high, _ = self.watermarks()
        if high and self._open_count > high:
            self._trim_soon()

    def connection_closed(self, conn: Connection) -> None:
        self._unpend(conn)
        group = conn.ip_group
        if group is not None:
            conn.ip_group = None
            _uncount(self._ip_conns, group)
        if conn.small_subnet is not None:
            _uncount(self._small_subnet_conns, conn.small_subnet)
            conn.small_subnet = None
        if conn.large_subnet is not None:
            _uncount(self._large_subnet_conns, conn.large_subnet)
            members = self._large_subnet_members.get(conn.large_subnet)
            if members is not None:
                members.discard(conn)
                if not members:
                    del self._large_subnet_members[conn.large_subnet]
            conn.large_subnet = None
        peer = conn.remote_peer_id
        conns = None if peer is None else self._conns.get(peer)
        if peer is not None and conns and conn in conns:
            conns.remove(conn)
            self._open_count -= 1
            self.conn_epoch += 1
            if not conns:
                del self._conns[peer]
                self.identify_service.forget(peer, conn.close_reason)
            self._emit(ConnectionClosed(peer, conn.close_reason))

    async def _reap_idle(self) -> None:
        period = max(0.05, min(self.config.idle_timeout / 4, 30.0))
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            idle = self.config.idle_timeout
            for conns in list(self._conns.values()):
                for c in list(conns):
                    if not c.streams:
                        if now - c.last_activity > idle:
                            c.close("idle")
                    elif now - max(c.opened_at, c.stream_activity) > idle:
                        # streams open, and none received anything for as
                        # long: held open by a peer that says nothing
                        c.close("streams idle")
            # over the high mark with nothing opening since (a trim found
            # only connections in their grace period): trim again
            high, _ = self.watermarks()
            if high and self._open_count > high:
                self._trim_soon()

    # -- the connection manager ------------------------------------------
    def protect(self, peer: PeerId, tag: str) -> None:
        """Never prune ``peer``'s connections while ``tag`` (one of any
        number of reasons, each removed by :meth:`unprotect`) is on it."""
        self._protected.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Remove ``tag`` from ``peer``; whether other tags still protect it."""
        tags = self._protected.get(peer)
        if tags is None:
            return False
        tags.discard(tag)
        if not tags:
            del self._protected[peer]
            return False
        return True

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        """Whether ``peer`` has protection ``tag`` (any tag when None); the
        :attr:`keep` callback is not asked."""
        tags = self._protected.get(peer)
        return tags is not None and bool(tags) and (tag is None or tag in tags)

    def watermarks(self) -> tuple[int, int]:
        """The connection manager's (high, low) marks in effect; (0, 0) when off."""
        cfg = self.config
        high, low, most = cfg.conn_high_water, cfg.conn_low_water, cfg.max_connections
        if high <= 0:
            return 0, 0
        if high >= most:
            high, low = max(1, most * 7 // 8), min(low, most * 3 // 4)
        if low >= high:
            low = high * 6 // 7
        return high, max(0, low)

    def _keeps(self, conn: Connection) -> bool:
        peer = conn.remote_peer_id
        if peer in self._protected:
            return True
        keep = self.keep
        if keep is None or peer is None:
            return False
        try:
            return bool(keep(peer))
        except Exception:
            log.exception("connection manager: keep(%s) failed; the peer is kept", peer)
            return True

    def _trim_soon(self) -> None:
        """Trim now, or when the trim interval allows (one timer at a time)."""
        wait = self._last_trim + self.config.conn_trim_interval - self.clock()
        if wait <= 0:
            self.trim()
        elif self._trim_timer is None and not self._closing:
            self._trim_timer = self.loop.call_later(wait, self._deferred_trim)

    def _deferred_trim(self) -> None:
        self._trim_timer = None
        self.trim_if_over_high_water()

    def trim_if_over_high_water(self) -> int:
        """Trim (see :meth:`trim`) if more connections are open than the
        high mark allows, as the trim that waited for the trim interval
        does when its time comes; how many were closed."""
        high, _ = self.watermarks()
        if high and self._open_count > high and not self._closing:
            return self.trim()
        return 0

    def _make_room(self, needed: int, subnet: str | None = None) -> bool:
        """At the hard limit: prune at once (no trim interval) so that
        ``needed`` connections fewer are open; whether they are. When
        nothing else can go (every connection young, in use or protected),
        a newcomer from ``subnet`` (its large subnet) still gets in if another
        large subnet holds more connections than its own: that crowded
        subnet's least useful unprotected connection goes, young or in use.
        One network (or a few) flooding the server with connections that it
        keeps renewing cannot lock the rest of the internet out."""
        now = self.clock()
        if now >= self._hard_trim_after:
            if self.trim(needed=needed) >= needed:
                return True
            # nothing (or too little) to prune: every connection is protected,
            # young or in use. Not searched again on every accept of a flood
            self._hard_trim_after = now + self.config.conn_trim_interval
        return self._prune_crowded(needed, subnet, now)

    def _prune_crowded(self, needed: int, subnet: str | None, now: float) -> bool:
        counts = self._large_subnet_conns
        if not counts:
            return False
        crowded = max(counts, key=counts.__getitem__)  # O(subnets): a few hundred at most in a flood
        if counts[crowded] <= (counts.get(subnet, 0) if subnet is not None else 0) + 1:
            return False  # the newcomer's own subnet is (nearly) as crowded: no one is over its share
        members = [c for c in self._large_subnet_members.get(crowded, ()) if c.is_open]
        victims = choose_prunable(members, now, needed, grace_period=0.0, in_use_window=0.0,
                                  is_protected=self._keeps)
        for c in victims:
            log.debug("connection manager: pruning %r for a newcomer: %s holds %d connections",
                      c, crowded, counts[crowded])
            c.close(PRUNED_REASON)
            tr = c.transport
            if tr is not None:
                tr.abort()
        self.pruned_connections += len(victims)
        return len(victims) >= needed

    def trim(self, needed: int = 0) -> int:
        """Close connections down to the low mark, and at least ``needed``
        of them (the hard limit), least useful first (see
        :func:`~kadfast.net.connmgr.choose_prunable`); how many were closed.
        Protected peers, connections in their grace period and connections
        with a stream in use are kept, so fewer may be closed. O(open
        connections); one trim at a time."""
        high, low = self.watermarks()
        if not high or self._trimming:
            return 0
        cfg = self.config
        now = self.clock()
        count = max(self._open_count - low, needed)
        if count <= 0:
            return 0
        self._last_trim = now
        self._trimming = True
        try:
            victims = choose_prunable(
                (c for conns in self._conns.values() for c in conns), now, count,
                grace_period=cfg.conn_grace_period, in_use_window=cfg.conn_in_use_window,
                is_protected=self._keeps,
            )
            for c in victims:
                log.debug("connection manager: pruning %r (idle %.1fs, %d streams)",
                          c, now - c.last_activity, len(c.streams))
                c.close(PRUNED_REASON)
                tr = c.transport
                if tr is not None and tr.get_write_buffer_size():
                    tr.abort()  # a peer not reading must not keep the socket (and its slot) open
        finally:
            self._trimming = False
        self.pruned_connections += len(victims)
        if victims or needed:
            log.info("connection manager: pruned %d of %d connections wanted (%d open, marks %d/%d%s)",
                     len(victims), count, self._open_count, high, low, ", at the hard limit" if needed else "")
        return len(victims)

    # -- dialing ---------------------------------------------------------
    async def dial(self, peer: PeerId | Multiaddr | str, addrs: Iterable[Multiaddr] | None = None) -> Connection:
        """A connection to ``peer``: the open one if there is one, else a new
        one (simultaneous dials to one peer are merged). ``peer`` may be a
        multiaddr ending in ``/p2p/<id>``."""
        if isinstance(peer, str):
            peer = Multiaddr(peer)
        if isinstance(peer, Multiaddr):
            pid = peer.peer_id()
            if pid is None:
                raise DialNoAddresses("a multiaddr to dial must end with /p2p/<peer id>")
            addrs = [peer.without_peer_id()] + list(addrs or [])
            peer = pid
        if peer == self.peer_id:
            raise DialError("refusing to dial ourselves")
        now = self.clock()
        if addrs:
            self.addrbook.add(peer, addrs, now, source="dial")
        conn = self.connection(peer)
        if conn is not None:
            return conn
        dial = self._dialing.get(peer)
        if dial is None:
            until = self._backoff.get(peer)
            if until is not None and now < until[0] and not addrs:
                raise DialBackoff(f"{peer} failed recently; next dial in {until[0] - now:.1f}s")
            # the dial is a task of its own, shared by every caller that wants
            # this peer meanwhile: one caller giving up (a lookup cancelling
            # its requests) neither cancels the others' dial nor hands them
            # its cancellation
            dial = self._dialing[peer] = Dial()
            dial.task = self._spawn(self._dial_shared(peer, dial))
            dial.task.add_done_callback(_retrieve_exception)
        dial.waiters += 1
        try:
            return await asyncio.shield(dial.task)
        finally:
            dial.waiters -= 1
            # nobody waits any more: a dial still queued for a dial slot is
            # dropped; one under way ends within dial_timeout, and its
            # connection is kept
            if not dial.waiters and not dial.started and not dial.task.done():
                dial.task.cancel()
                if self._dialing.get(peer) is dial:
                    del self._dialing[peer]

    async def _dial_shared(self, peer: PeerId, dial: "Dial") -> Connection:
        try:
            conn = await self._dial_new(peer, dial)
        except DialError:
            self._record_failure(peer)
            raise
        else:
            self._backoff.pop(peer, None)
            return conn
        finally:
            if self._dialing.get(peer) is dial:
                del self._dialing[peer]

    def _record_failure(self, peer: PeerId) -> None:
        cfg = self.config
        _, failures = self._backoff.pop(peer, (0.0, 0))
        delay = min(cfg.dial_backoff_max, cfg.dial_backoff_base * (2 ** min(failures, 20)))
        self._backoff[peer] = (self.clock() + delay, failures + 1)
        while len(self._backoff) > cfg.max_backoff_entries:
            self._backoff.popitem(last=False)

    async def _dial_new(self, peer: PeerId, dial: "Dial") -> Connection:
        over = self.connection_count() - self.config.max_connections
        if over >= 0 and not self._make_room(over + 1):
            raise DialLimitReached(f"connection limit of {self.config.max_connections} reached")
        quic_ok = quic_unavailable() is None
        addrs = [a for a in self.addrbook.addrs(peer, self.clock())
                 if dialable_tcp(a) or (quic_ok and dialable_quic(a))]
        if not addrs:
            raise DialNoAddresses(f"no TCP or QUIC address known for {peer}")
        if self.config.prefer_quic:
            addrs.sort(key=lambda a: not dialable_quic(a))  # stable: the book's order within each
        errors: list[DialError] = []
        sem = self._dial_sem
        assert sem is not None  # set by start(); dial() needs a started host
        async with sem:
            dial.started = True
            quic = [a for a in addrs if dialable_quic(a)]
            tcp = [a for a in addrs if not dialable_quic(a)]
            if self.config.prefer_quic and quic and tcp:
                conn = await self._dial_quic_then_tcp(peer, quic, tcp, errors)
            else:
                conn = await self._dial_in_turn(peer, addrs, errors)
            if conn is not None:
                return conn
        for kind in (DialWrongPeer, DialNegotiationFailed, DialTimeout, DialRefused):
            for e in errors:
                if isinstance(e, kind):
                    raise e
        raise errors[0]

    async def _dial_in_turn(self, peer: PeerId, addrs: list[Multiaddr], errors: list[DialError]) -> Connection | None:
        """Each address in turn until one gives a connection (None: none
        did; why, in ``errors``)."""
        for addr in addrs:
            try:
                return await self._dial_addr(peer, addr)
            except DialError as exc:
                log.debug("dial %s at %s failed: %s", peer, addr, exc)
                if isinstance(exc, DialWrongPeer):
                    self.addrbook.remove_addr(peer, addr)
                errors.append(exc)
        return None

    async def _dial_quic_then_tcp(self, peer: PeerId, quic: list[Multiaddr], tcp: list[Multiaddr],
                                  errors: list[DialError]) -> Connection | None:
        """QUIC first; TCP too once QUIC failed or ``dial_fallback_delay``
        passed without a connection (a network that drops UDP costs that
        delay, not a whole dial timeout); the first connection wins and the
        other attempt is called off (its connection, if it made one, closed)."""
        first = self.loop.create_task(self._dial_in_turn(peer, quic, errors))
        tasks = {first}
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.config.dial_fallback_delay)
            if done and first.result() is not None:
                return first.result()
            if done:
                tasks.clear()
            tasks.add(self.loop.create_task(self._dial_in_turn(peer, tcp, errors)))
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    conn = t.result()
                    if conn is not None:
                        return conn
            return None
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _dial_addr(self, peer: PeerId | None, addr: Multiaddr) -> Connection:
        if dialable_quic(addr):
            if peer is None:
                raise DialNoAddresses(f"a QUIC dial needs the peer id: {addr}")
            return await self._dial_quic(peer, addr)
        host, port = _tcp_host_port(addr)
        timeout = self.config.dial_timeout
        deadline = self.clock() + timeout
        created: list[Connection] = []

        def factory() -> Connection:
            c = self._new_connection(initiator=True, expected_peer=peer)
            created.append(c)
            return c

        try:
            if addr.value_for("dns4") or addr.value_for("dns6") or addr.value_for("dns"):
                family = socket.AF_INET6 if addr.value_for("dns6") else (
                    socket.AF_INET if addr.value_for("dns4") else socket.AF_UNSPEC)
                infos = await asyncio.wait_for(
                    self.loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM), timeout
                )
                if not infos:
                    raise DialRefused(f"{host} does not resolve")
                host = str(infos[0][4][0])
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(factory, host, port),
                max(0.01, deadline - self.clock()),
            )
        except BaseException as exc:
            # uvloop makes the protocol before connecting: a connection that
            # never got its transport must not stay counted as pending
            for c in created:
                if c.transport is None:
                    self._pending.discard(c)
                else:
                    c.close("dial failed")
            if isinstance(exc, asyncio.TimeoutError):
                raise DialTimeout(f"connecting to {addr} timed out") from None
            if isinstance(exc, OSError):
                raise DialRefused(f"{addr}: {exc.strerror or exc}") from None
            raise
        try:
            return await asyncio.wait_for(asyncio.shield(conn.ready), max(0.01, deadline - self.clock()))
        except asyncio.CancelledError:
            conn.close("dial called off")
            raise
        except asyncio.TimeoutError:
            conn.close("dial timed out")
            raise DialTimeout(f"upgrading the connection to {addr} timed out") from None
        except DialError:
            raise
        except (ProtocolError, ConnectionError) as exc:
            err = conn.error if getattr(conn, "error", None) is not None else exc
            if peer is not None and conn.remote_peer_id is not None and conn.remote_peer_id != peer:
                raise DialWrongPeer(f"{addr} is {conn.remote_peer_id}, not {peer}") from None
            if isinstance(err, NoisePeerIdMismatch):
                raise DialWrongPeer(f"{addr}: {err}") from None
            raise DialNegotiationFailed(f"{addr}: {err}") from None

    async def _quic_dialer(self, ipv6: bool) -> QuicEndpoint:
        """The UDP socket QUIC dials from: a listening one of the family (the
        peer then sees our listen port), else one of its own."""
        fam = socket.AF_INET6 if ipv6 else socket.AF_INET
        for ep in () if self.config.reuse_port else self._quic_endpoints:
            tr = ep.transport
            if tr is not None and not tr.is_closing() and tr.get_extra_info("socket").family == fam:
                return ep
        dialer = self._quic_dialers.get(fam)
        if dialer is not None and dialer.transport is not None and not dialer.transport.is_closing():
            return dialer
        _, made = await self.loop.create_datagram_endpoint(
            lambda: _quicconn().QuicEndpoint(self, listening=False), local_addr=("::" if ipv6 else "0.0.0.0", 0))
        dialer = self._quic_dialers.get(fam)
        if dialer is not None and dialer.transport is not None and not dialer.transport.is_closing():
            made.close()  # another dial made one meanwhile
            return dialer
        if self._closing:
            made.close()
            raise DialError("host closing")
        self._quic_dialers[fam] = made
        return made

    async def _dial_quic(self, peer: PeerId, addr: Multiaddr) -> Connection:
        host, port = _quicconn().quic_address(addr)
        timeout = self.config.dial_timeout
        ep = await self._quic_dialer(":" in host)
        conn = self.new_quic_connection(initiator=True, expected_peer=peer)
        try:
            ep.connect(conn, (host, port), peer)
        except (ConnectionError, OSError) as exc:
            conn.drop("dial failed")
            raise DialRefused(f"{addr}: {exc}") from None
        try:
            return await asyncio.wait_for(asyncio.shield(conn.ready), timeout)
        except asyncio.CancelledError:
            conn.close("dial called off")
            raise
        except asyncio.TimeoutError:
            conn.close("dial timed out")
            raise DialTimeout(f"the QUIC handshake with {addr} timed out") from None
        except (ProtocolError, ConnectionError) as exc:
            if conn.remote_peer_id is not None and conn.remote_peer_id != peer:
                raise DialWrongPeer(f"{addr} is {conn.remote_peer_id}, not {peer}") from None
            raise DialNegotiationFailed(f"{addr}: {exc}") from None

    # -- streams ---------------------------------------------------------
    async def new_stream(self, peer: PeerId, protocols: str | list[str], addrs=None) -> Stream:
        """Open a stream to ``peer`` negotiating one of ``protocols``.
        Raises :class:`ProtocolNotSupported` when the peer has none of them."""
        if isinstance(protocols, str):
            protocols = [protocols]
        conn = await self.dial(peer, addrs)
        return await conn.open_stream(protocols)

    # -- identify ----------------------------------------------------------
    async def identify(self, peer: PeerId, timeout: float | None = None) -> IdentifyInfo:
        """What ``peer`` told us by identify (dialing it when needed)."""
        await self.dial(peer)
        return await self.identify_service.wait(peer, timeout)

    # -- ping --------------------------------------------------------------
    async def ping(self, peer: PeerId, timeout: float = 10.0) -> float:
        """Round-trip time in seconds over ``/ipfs/ping/1.0.0``."""
        return await self.ping_service.ping(await self.new_stream(peer, PING_PROTOCOL), timeout)


def _uncount(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


class Dial:
    """A dial to one peer shared by the callers that want it meanwhile
    (see :meth:`Host.dial_under_way`)."""
    __slots__ = ("task", "waiters", "started")

    def __init__(self) -> None:
        self.task: asyncio.Task
        self.waiters = 0       #: callers awaiting it
        self.started = False   #: it holds a dial slot (connecting or handshaking)


def _retrieve_exception(task: asyncio.Task) -> None:
    """Marks a shared task's failure as seen: its callers may all have
    stopped waiting, and they get the failure from their own await."""
    if not task.cancelled():
        task.exception()


def _tcp_host_port(addr: Multiaddr) -> tuple[str, int]:
    host = addr.value_for("ip4") or addr.value_for("ip6") or addr.value_for("dns4") or addr.value_for("dns6") or addr.value_for("dns")
    port = addr.value_for("tcp")
    if host is None or port is None:
        raise MultiaddrError(f"not a TCP address: {addr}")
    return host, int(port)


def _local_addrs(ipv6: bool, transport: str) -> list[Multiaddr]:
    """The host's own addresses with ``transport`` (``tcp/4001``,
    ``udp/4001/quic-v1``): what an unspecified listen address stands for."""
    out = [Multiaddr(f"/ip6/::1/{transport}") if ipv6 else Multiaddr(f"/ip4/127.0.0.1/{transport}")]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET6 if ipv6 else socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        ip = str(info[4][0]).split("%")[0]
        a = Multiaddr(f"/{'ip6' if ipv6 else 'ip4'}/{ip}/{transport}")
        if a not in out and not is_loopback(a):
            out.append(a)
    return out
