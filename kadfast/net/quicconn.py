"""The asyncio shells of libp2p QUIC connections, an outbound one on a UDP
socket of its own and a listener for inbound ones: the datagrams of each
:class:`kadfast.quic.QuicCore` moved, its timer kept on the loop's clock,
its events handed on.

:func:`dial_quic` returns once the peer is authenticated (both ways:
the peer verified our certificate, or it would have closed);
:func:`listen_quic` accepts connections on a UDP socket and reports each
connection's events. Only the connections' authentication is used so
far: streams, their protocol negotiation and the host's QUIC transport
come next.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Callable
from typing import Any

from ..errors import DialError
from ..keys import Ed25519KeyPair
from ..multiaddr import Multiaddr
from ..peerid import PeerId
from ..quic import QUIC_HANDSHAKE_TIMEOUT, QuicCore, QuicEvent, QuicFailed, QuicUpgraded, initial_destination_cid
from ..tls import Libp2pCertificate, make_certificate

__all__ = ["QuicClientConnection", "QuicListener", "dial_quic", "listen_quic", "quic_address"]


def _utc_now() -> datetime.datetime:
    """The wall clock that certificates are checked on."""
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


class QuicClientConnection(asyncio.DatagramProtocol):
    """One outbound QUIC connection on its own UDP socket."""

    def __init__(self, keypair: Ed25519KeyPair, peer: PeerId, remote: tuple[str, int],
                 certificate: Libp2pCertificate | None = None,
                 on_event: Callable[[QuicEvent], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self.remote = remote
        self.core = QuicCore(certificate or make_certificate(keypair), now=self._loop.time(), utc_now=_utc_now,
                             remote_addr=remote, expected_peer=peer)
        self.on_event = on_event
        #: resolved with the peer's identity, or failed with why
        self.ready: asyncio.Future[QuicUpgraded] = self._loop.create_future()
        #: resolved with the reason once the connection is over
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.DatagramProtocol ----------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._flush()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[:2] != self.remote[:2]:
            return  # not from the peer (a connected socket drops these already)
        self._handle(self.core.receive_datagram(data, self.remote, self._loop.time()))

    def error_received(self, exc: Exception) -> None:
        self._handle([QuicFailed(f"UDP error: {exc}")])

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if not self.ready.done():
            self.ready.set_exception(DialError(f"QUIC socket closed: {exc or 'closed'}"))
        if not self.closed.done():
            self.closed.set_result(f"socket closed: {exc or 'closed'}")

    # -- driving the core --------------------------------------------------
    def _handle(self, events: list[QuicEvent]) -> None:
        for ev in events:
            if isinstance(ev, QuicUpgraded):
                if not self.ready.done():
                    self.ready.set_result(ev)
            elif isinstance(ev, QuicFailed):
                if not self.ready.done():
                    self.ready.set_exception(DialError(f"QUIC: {ev.reason}"))
                if not self.closed.done():
                    self.closed.set_result(ev.reason)
            if self.on_event is not None:
                self.on_event(ev)
        self._flush()
        if self.closed.done() and self.transport is not None:
            self._cancel_timer()
            self.transport.close()

    def _flush(self) -> None:
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        for data, _addr in self.core.datagrams_to_send(self._loop.time()):
            tr.sendto(data)
        self._arm_timer()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        when = self.core.get_timer()
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._handle(self.core.handle_timer(self._loop.time()))

    def close(self, reason: str = "closed locally") -> None:
        """Close the connection (a CONNECTION_CLOSE is sent; the socket goes
        once the core is done)."""
        self.core.close(reason)
        self._flush()


async def dial_quic(keypair: Ed25519KeyPair, addr: Multiaddr, *, timeout: float = 10.0,
                    certificate: Libp2pCertificate | None = None,
                    on_event: Callable[[QuicEvent], None] | None = None) -> QuicClientConnection:
    """Dial the peer at ``addr`` (``.../udp/<port>/quic-v1/p2p/<id>``) and
    return the connection once the QUIC and libp2p TLS handshakes are done
    and the peer proved to be ``<id>``. :class:`DialError` when it is not,
    or on a timeout (the socket is closed either way)."""
    peer = addr.peer_id()
    if peer is None:
        raise ValueError(f"a QUIC dial needs the peer's /p2p/ id: {addr}")
    remote = quic_address(addr)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: QuicClientConnection(keypair, peer, remote, certificate, on_event), remote_addr=remote)
    try:
        async with asyncio.timeout(timeout):
            await proto.ready
    except TimeoutError:
        proto.close("dial timed out")
        if proto.transport is not None:
            proto.transport.close()
        raise DialError(f"QUIC dial of {addr} timed out after {timeout} s") from None
    except BaseException:
        if proto.transport is not None:
            proto.transport.close()
        raise
    return proto


class _ServerConnection:
    """A listener's connection: its core and its loop timer."""

    __slots__ = ("core", "timer", "addr")

    def __init__(self, core: QuicCore, addr: tuple[str, int]) -> None:
        self.core = core
        self.addr = addr
        self.timer: asyncio.TimerHandle | None = None


class QuicListener(asyncio.DatagramProtocol):
    """A UDP socket accepting libp2p QUIC connections: each datagram goes to
    the connection of its source address, a QUIC v1 Initial from a new one
    makes a connection (at most ``max_connections``, ``max_per_ip`` from one
    IP, each authenticated within ``handshake_timeout`` or dropped);
    anything else from an unknown address is dropped. ``on_event(addr,
    core, event)`` is told every event of every connection.

    Connections are keyed by the peer's address: a peer that migrates to
    another address is not followed (QUIC connection ids, version
    negotiation and retry tokens are not handled yet)."""

    def __init__(self, keypair: Ed25519KeyPair, *, certificate: Libp2pCertificate | None = None,
                 on_event: Callable[[tuple[str, int], QuicCore, QuicEvent], None] | None = None,
                 max_connections: int = 1024, max_per_ip: int = 8,
                 handshake_timeout: float = QUIC_HANDSHAKE_TIMEOUT) -> None:
        self._loop = asyncio.get_running_loop()
        self.keypair = keypair
        self.certificate = certificate or make_certificate(keypair)  # one for every connection
        self.on_event = on_event
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.handshake_timeout = handshake_timeout
        self.transport: asyncio.DatagramTransport | None = None
        self._conns: dict[tuple[str, int], _ServerConnection] = {}
        self._per_ip: dict[str, int] = {}
        #: Initials dropped because a limit was reached
        self.refused = 0

    @property
    def local_addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def connections(self) -> list[QuicCore]:
        return [c.core for c in self._conns.values()]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        addr = addr[:2]
        conn = self._conns.get(addr)
        now = self._loop.time()
        if conn is None:
            cid = initial_destination_cid(data)
            if cid is None:
                return
            if len(self._conns) >= self.max_connections or self._per_ip.get(addr[0], 0) >= self.max_per_ip:
                self.refused += 1
                return
            core = QuicCore(self.certificate, now=now, utc_now=_utc_now, remote_addr=addr,
                            original_destination_cid=cid, handshake_timeout=self.handshake_timeout)
            conn = self._conns[addr] = _ServerConnection(core, addr)
            self._per_ip[addr[0]] = self._per_ip.get(addr[0], 0) + 1
        self._handle(conn, conn.core.receive_datagram(data, addr, now))

    def _handle(self, conn: _ServerConnection, events: list[QuicEvent]) -> None:
        for ev in events:
            if self.on_event is not None:
                self.on_event(conn.addr, conn.core, ev)
        self._flush(conn)
        if any(isinstance(ev, QuicFailed) for ev in events):
            self._drop(conn)

    def _flush(self, conn: _ServerConnection) -> None:
        tr = self.transport
        if tr is not None and not tr.is_closing():
            for data, addr in conn.core.datagrams_to_send(self._loop.time()):
                tr.sendto(data, addr)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        when = conn.core.get_timer()
        if when is not None and self._conns.get(conn.addr) is conn:
            conn.timer = self._loop.call_at(when, self._on_timer, conn)

    def _on_timer(self, conn: _ServerConnection) -> None:
        conn.timer = None
        self._handle(conn, conn.core.handle_timer(self._loop.time()))

    def _drop(self, conn: _ServerConnection) -> None:
        if self._conns.get(conn.addr) is not conn:
            return
        del self._conns[conn.addr]
        n = self._per_ip[conn.addr[0]] - 1
        if n:
            self._per_ip[conn.addr[0]] = n
        else:
            del self._per_ip[conn.addr[0]]
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE sent) and the socket."""
        for conn in list(self._conns.values()):
            conn.core.close("listener closed")
            self._flush(conn)
            self._drop(conn)
        if self.transport is not None:
            self.transport.close()


async def listen_quic(keypair: Ed25519KeyPair, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> QuicListener:
    """A :class:`QuicListener` bound to ``host``:``port`` (UDP)."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: QuicListener(keypair, **kw), local_addr=(host, port))
    return proto
