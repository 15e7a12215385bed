"""libp2p connections over QUIC in the host: the asyncio shells.

A :class:`QuicEndpoint` is one UDP socket of the host (a listening one, or
the one the host dials from when it listens on no QUIC address of that
family). It hands each datagram to the connection of its source address;
a QUIC v1 Initial from a new address makes an inbound connection if the
host admits it (the limits and handshake rates that TCP connections have,
checked before any TLS work); anything else is dropped.

A :class:`QuicConnection` is the host's :class:`~kadfast.net.connection.Connection`
over a :class:`~kadfast.net.quicstreams.QuicConnectionCore`: the same
streams, events, limits and bookkeeping, with datagrams instead of a byte
stream under them. The core's timer is kept on the loop; what a read or
the application's writes produce leaves in one batch of datagrams.

A datagram goes to the connection whose connection id it carries (the
ids each connection issued, and a server connection's original one), so a
peer whose address changes (a NAT rebinding) keeps its connection, and a
peer that restarts on the same address and port gets a new one. A
datagram that opens a connection in another QUIC version is answered with
a Version Negotiation packet (QUIC v1 only). Retry tokens (address
validation before the handshake) are not handled.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any

from ..errors import KadfastError
from ..multiaddr import Multiaddr
from ..peerid import PeerId
from ..quic import QuicCore, destination_cid, initial_destination_cid, version_negotiation
from .connection import Connection
from .quicstreams import QuicConnectionCore
from .upgrade import ConnectionEvent

if TYPE_CHECKING:  # pragma: no cover
    from .host import Host

log = logging.getLogger("kadfast.net")

__all__ = ["QuicConnection", "QuicEndpoint", "quic_address", "quic_multiaddr", "utc_now"]


def utc_now() -> datetime.datetime:
    """The wall clock that the peers' certificates are checked on."""
    return datetime.datetime.now(datetime.timezone.utc)


def quic_address(addr: Multiaddr) -> tuple[str, int]:
    """(IP, UDP port) of an ``/ip4|ip6/.../udp/<port>/quic-v1`` multiaddr
    (a ``/p2p`` suffix is allowed); ValueError for anything else."""
    parts = list(addr.without_peer_id())
    if len(parts) != 3 or parts[0][0] not in ("ip4", "ip6") or parts[1][0] != "udp" or parts[2][0] != "quic-v1":
        raise ValueError(f"not a QUIC v1 address: {addr}")
    ip, port = parts[0][1], parts[1][1]
    assert ip is not None and port is not None  # ip4/ip6 and udp carry values
    return str(ipaddress.ip_address(ip)), int(port)


def quic_multiaddr(ip: str, port: int) -> Multiaddr:
    """``/ip4|ip6/<ip>/udp/<port>/quic-v1``."""
    ip = ip.split("%")[0]
    mapped = ipaddress.ip_address(ip)
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        mapped = mapped.ipv4_mapped
    proto = "ip6" if mapped.version == 6 else "ip4"
    return Multiaddr(f"/{proto}/{mapped}/udp/{port}/quic-v1")


class QuicConnection(Connection):
    """A host connection over QUIC (see the module). Made by the host;
    :meth:`QuicEndpoint.connect` and the endpoint's accept start it."""

    __slots__ = ("endpoint", "peer_addr")
    transport_name = "quic"

    def __init__(self, host: "Host", *, initiator: bool, expected_peer: PeerId | None = None) -> None:
        super().__init__(host, initiator=initiator, expected_peer=expected_peer)
        self.endpoint: QuicEndpoint | None = None
        #: the (IP, port) its datagrams go to (where the peer's came from last)
        self.peer_addr: tuple[str, int] | None = None

    def __repr__(self) -> str:
        d = "out" if self.initiator else "in"
        return f"<QuicConnection {d} {self.remote_peer_id} {self.remote_addr}>"

    def start(self, endpoint: "QuicEndpoint", peer_addr: tuple[str, int], quic: QuicCore) -> None:
        """Begin: the client's first flight leaves at once; a server's
        connection is handed its first datagram by the endpoint."""
        host = self.host
        cfg = host.config
        self.endpoint = endpoint
        self.peer_addr = peer_addr
        self.remote_addr = quic_multiaddr(*peer_addr)
        self.local_addr = endpoint.multiaddr
        self.core = QuicConnectionCore(  # type: ignore[assignment]  # the same calls as ConnectionCore's
            quic,
            supports_protocol=host.supports_protocol,
            negotiation_timeout=cfg.negotiation_timeout,
            max_inbound_streams=cfg.max_inbound_streams,
            keepalive=cfg.quic_keepalive if self.initiator else 0.0,
            now=self._clock(),
        )
        self.mark_upgrading()
        if self.initiator:
            self._flush()  # the client's Initial

    # -- input ---------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        core: Any = self.core
        if core is None or self.is_closed:
            return
        self.last_activity = now = self._clock()
        self.bytes_in += len(data)
        self._receiving = True
        try:
            events: list[ConnectionEvent] = core.receive_datagram(data, addr, now)
            if events:
                self._handle(events)
        except KadfastError as exc:
            self.error = exc
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._receiving = False
        self.stream_activity = core.stream_activity
        # once the loop has handed over every datagram at hand: a burst of
        # the peer's packets is answered (and acknowledged) together, not a
        # datagram each (with quic-go's client 7 sent per connection, not 11)
        self._schedule_flush()

    # -- output --------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        core: Any = self.core
        ep = self.endpoint
        if core is None or ep is None:
            return
        if self._local_events:
            self._local_events = False
            local = core.events()
            if local:
                self._handle(local)
        out = core.datagrams_to_send(self._clock())
        if out:
            # to the address of the path aioquic is on (the peer may have moved)
            addr = out[-1][1]
            self.peer_addr = (addr[0], addr[1])
            ep.send(out)
            # streams this sent below their writable mark (their writers
            # write again, which schedules another flush)
            sent = core.events()
            if sent:
                self._handle(sent)
        if self.is_closed:
            return
        changes = core.quic.connection_id_changes()
        if changes:
            ep.route(self, changes)
        if self._drain_waiters:
            self._drained()
        self._arm_timer()

    def _arm_timer(self) -> None:
        # QUIC's timers (loss detection, acknowledgements, pacing) move on
        # every flush: the loop timer follows the core's earliest deadline
        core = self.core
        if core is None or self.is_closed:
            return
        when = core.get_timer()
        if when is None:
            self._cancel_timer()
            return
        if self._timer is not None:
            if self._timer_at == when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_later(max(0.0, when - self._clock()), self._on_timer)

    def queued_output(self) -> int:
        core: Any = self.core
        if core is None:
            return 0
        return sum(core.buffered(sid) for sid in self.streams)

    def stream_consumed(self, stream_id: int, n: int) -> None:
        core: Any = self.core
        if core is not None:
            core.consumed(stream_id, n)

    def stream_buffered(self, stream_id: int) -> int:
        core: Any = self.core
        return core.buffered(stream_id) if core is not None else 0

    # -- closing ---------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        self._authenticated()
        log.info("%r: closing: %s", self, reason)
        try:
            self._flush()  # the CONNECTION_CLOSE
        except Exception:  # pragma: no cover - best effort on a failing connection
            pass
        self._teardown(reason)

    def close(self, reason: str = "closed locally") -> None:
        if self.is_closed or self._closing:
            return
        self._closing = True
        core: Any = self.core
        if core is not None:
            core.close(reason)
            self._flush()
        self._teardown(reason)

    def _teardown(self, reason: str) -> None:
        if self.is_closed:
            return
        ep = self.endpoint
        if ep is not None:
            ep.forget(self)
        super()._teardown(reason)


_warned_buffers = False


def _grow_buffers(sock: Any, want: int, where: object) -> tuple[int, int]:
    """Ask for ``want`` bytes of receive and send buffer on ``sock``; what
    the kernel granted (Linux reports twice what it keeps for itself)."""
    global _warned_buffers
    got = []
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, want)
            got.append(sock.getsockopt(socket.SOL_SOCKET, opt))
        except OSError:
            got.append(0)
    if sys.platform.startswith("linux") and got[0] < want and not _warned_buffers:
        _warned_buffers = True
        log.warning("QUIC socket %s: receive buffer %d bytes, %d asked for (raise net.core.rmem_max and "
                    "net.core.wmem_max, or bursts of datagrams are dropped)", where, got[0] // 2, want)
    return got[0], got[1]


class QuicEndpoint(asyncio.DatagramProtocol):
    """One UDP socket of the host, its QUIC connections by peer address."""

    def __init__(self, host: "Host", *, listening: bool) -> None:
        self.host = host
        self.listening = listening
        self.transport: asyncio.DatagramTransport | None = None
        self.multiaddr: Multiaddr | None = None
        self._conns: dict[bytes, QuicConnection] = {}  # by connection id
        self._all: set[QuicConnection] = set()
        #: Initials dropped: the host refused the connection, or this
        #: endpoint does not accept (a dial-only one)
        self.refused = 0
        #: datagrams received and sent on the socket
        self.datagrams_in = 0
        self.datagrams_out = 0
        #: (receive, send) buffer sizes the kernel granted the socket, in
        #: bytes (``quic_socket_buffer``; (0, 0) when left to the system)
        self.socket_buffers: tuple[int, int] = (0, 0)

    @property
    def local_addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        h, p = self.local_addr
        self.multiaddr = quic_multiaddr(h, p)
        want = self.host.config.quic_socket_buffer
        if want > 0:
            self.socket_buffers = _grow_buffers(transport.get_extra_info("socket"), want, self.multiaddr)

    def connection_lost(self, exc: Exception | None) -> None:
        for conn in list(self._all):
            conn.close(f"UDP socket closed: {exc or 'closed'}")

    def error_received(self, exc: Exception) -> None:
        # an ICMP error for one of the peers (port unreachable): the
        # connection's own timers notice a peer that is gone
        log.debug("QUIC endpoint %s: %s", self.multiaddr, exc)

    def connections(self) -> list[QuicConnection]:
        return list(self._all)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams_in += 1
        cid = destination_cid(data)
        if cid is None:
            return
        conn = self._conns.get(cid)
        if conn is None:
            conn = self._accept(data, (addr[0], addr[1]))
            if conn is None:
                return
        conn.datagram_received(data, (addr[0], addr[1]))

    def route(self, conn: QuicConnection, changes: list[tuple[bool, bytes]]) -> None:
        """Apply a connection's (added, id) changes to the routing table."""
        if conn not in self._all:
            return
        conns = self._conns
        for added, cid in changes:
            if added:
                conns.setdefault(cid, conn)
            elif conns.get(cid) is conn:
                del conns[cid]

    def _accept(self, data: bytes, addr: tuple[str, int]) -> QuicConnection | None:
        cid = initial_destination_cid(data)
        if cid is None:
            vn = version_negotiation(data) if self.listening else None
            if vn is not None and self.transport is not None:
                self.transport.sendto(vn, addr)  # "I speak QUIC v1 only"
            return None  # not the start of a QUIC v1 connection: dropped
        host = self.host
        if not self.listening:
            self.refused += 1
            return None
        conn = host.new_quic_connection(initiator=False)
        if conn.refusal:
            log.debug("refusing QUIC connection from %s: %s", addr[0], conn.refusal)
            self.refused += 1
            conn.drop(conn.refusal)
            return None
        if not host.admit_inbound(conn, addr[0]):
            self.refused += 1
            conn.drop("refused")
            return None
        quic = QuicCore(host.tls_certificate, now=host.clock(), utc_now=utc_now, remote_addr=addr,
                        original_destination_cid=cid, handshake_timeout=host.config.handshake_timeout,
                        idle_timeout=host.config.quic_idle_timeout)
        self._add(conn, quic)
        conn.start(self, addr, quic)
        return conn

    def _add(self, conn: QuicConnection, quic: QuicCore) -> None:
        self._all.add(conn)
        self.route(conn, quic.connection_id_changes())

    def connect(self, conn: QuicConnection, addr: tuple[str, int], peer: PeerId) -> None:
        """Start an outbound connection to ``peer`` at ``addr``."""
        host = self.host
        quic = QuicCore(host.tls_certificate, now=host.clock(), utc_now=utc_now, remote_addr=addr,
                        expected_peer=peer, handshake_timeout=host.config.handshake_timeout,
                        idle_timeout=host.config.quic_idle_timeout)
        self._add(conn, quic)
        conn.start(self, addr, quic)

    def send(self, datagrams: list[tuple[bytes, Any]]) -> None:
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        self.datagrams_out += len(datagrams)
        for data, addr in datagrams:
            tr.sendto(data, addr)

    def forget(self, conn: QuicConnection) -> None:
        if conn not in self._all:
            return
        core: Any = conn.core
        if core is not None:
            self.route(conn, core.quic.connection_id_changes())
        self._all.discard(conn)
        if core is not None:
            for cid in core.quic.connection_ids:
                if self._conns.get(cid) is conn:
                    del self._conns[cid]

    def close(self) -> None:
        for conn in list(self._all):
            conn.close("host closing")
        if self.transport is not None:
            self.transport.close()
