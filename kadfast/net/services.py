"""The host's own protocols as services over their sans-IO cores: ping
(``/ipfs/ping/1.0.0``, :mod:`kadfast.ping`'s :class:`PingResponder` and
:class:`PingInitiator`) and identify (``/ipfs/id/1.0.0`` and its push,
:mod:`kadfast.identify`'s encoder, reader and merge). Each service moves a
stream's bytes to its core and the core's bytes back; the rules (payload
size, echo, message fields and limits) are the core's, the limits of the
host (streams per connection, pings per second, timeouts) its
configuration."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from ..addrbook import AddressBook, addrs_for_remote, plausible_addrs
from ..errors import KadfastError, ProtocolError
from ..identify import (
    MAX_IDENTIFY_BYTES,
    IdentifyEncoder,
    IdentifyInfo,
    IdentifyReader,
    merge_push,
)
from ..identify import (
    PROTOCOL_ID as IDENTIFY_PROTOCOL,
)
from ..keys import PublicKey
from ..multiaddr import Multiaddr
from ..peerid import PeerId
from ..ping import PING_SIZE, PROTOCOL_ID, PingInitiator, PingResponder, new_payload
from ..ratelimit import PeerRateLimiter
from .connection import Connection
from .stream import Stream

if TYPE_CHECKING:
    from .host import HostConfig

log = logging.getLogger("kadfast.net")

__all__ = ["PingService", "IdentifyService", "read_identify"]


class PingService:
    """Answers the inbound ping streams of a host and pings its peers.

    ``serve`` is the host's handler of ``/ipfs/ping/1.0.0``: at most
    ``config.max_ping_streams`` ping streams per connection, and per peer
    ``config.max_pings_per_second`` payloads echoed (burst
    ``config.ping_burst``); a stream over either limit is reset. An echo
    is written once the peer read the previous ones (a peer that does not
    read its pongs gets no more). ``ping`` measures one round trip on a
    fresh stream."""

    protocol = PROTOCOL_ID

    def __init__(self, config: HostConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.limiter = PeerRateLimiter(config.max_pings_per_second, config.ping_burst)

    async def serve(self, stream: Stream) -> None:
        limit = self.config.max_ping_streams
        if limit and not stream.conn.count_inbound(stream, limit):
            log.debug("%s opened more than %d ping streams on one connection; resetting one", stream.peer_id, limit)
            stream.reset()
            return
        responder = PingResponder()
        peer = stream.peer_id
        while True:
            data = await stream.read(PING_SIZE - responder.buffered)  # at most the rest of one payload
            if not data:
                if responder.buffered:
                    log.debug("ping stream of %s ended inside a payload", peer)
                return
            echo = responder.feed(data)
            if not echo:
                continue
            if not self.limiter.allow(peer, self.clock()):
                log.debug("pings from %s over %s/s; resetting the stream", peer, self.config.max_pings_per_second)
                stream.reset()
                return
            stream.write(echo)
            await stream.drain()

    async def ping(self, stream: Stream, timeout: float) -> float:
        """The round-trip time of one ping on ``stream`` (a fresh
        ``/ipfs/ping/1.0.0`` stream, closed or reset here). Raises
        :class:`ProtocolError` when the echo is not the payload, and
        :class:`TimeoutError` after ``timeout`` seconds."""
        initiator = PingInitiator(new_payload(), self.clock(), timeout=timeout)
        try:
            stream.write(initiator.payload)
            async with asyncio.timeout(timeout):
                while True:
                    data = await stream.read()
                    if not data:
                        raise ProtocolError("the peer closed its ping stream before the echo")
                    rtt = initiator.feed(data, self.clock())
                    if rtt is not None:
                        break
        except BaseException:
            stream.reset()
            raise
        stream.close()
        return rtt


async def read_identify(stream: Stream) -> IdentifyInfo:
    """Every length-prefixed part until the end of the stream (go splits a
    large identify message in two), merged."""
    reader = IdentifyReader(max_bytes=MAX_IDENTIFY_BYTES)
    while True:
        data = await stream.read()
        if not data:
            return reader.eof()
        reader.feed(data)


class IdentifyService:
    """Identify of a host's connections: answers ``/ipfs/id/1.0.0`` (the
    host's announced addresses as the remote can reach them, its
    protocols, the address it sees the remote at), takes pushes, and asks
    every new connection's peer once. What a peer tells is kept while it
    has a connection (``peer_info``); of its listen addresses only those
    plausible for the address it came from reach the address book, and
    its observation of us counts towards our observed addresses.
    ``on_identified(peer, info)`` is told of each peer identified."""

    def __init__(self, public_key: PublicKey, config: HostConfig, clock: Callable[[], float],
                 addrbook: AddressBook, announce_addrs: Callable[[], list[Multiaddr]],
                 protocols: Callable[[], list[str]],
                 on_identified: Callable[[PeerId, IdentifyInfo], None]) -> None:
        self.public_key = public_key
        self.config = config
        self.clock = clock
        self.addrbook = addrbook
        self.announce_addrs = announce_addrs
        self.protocols = protocols
        self.on_identified = on_identified
        #: what each connected peer told by identify
        self.peer_info: dict[PeerId, IdentifyInfo] = {}
        self._identified: dict[PeerId, asyncio.Future[IdentifyInfo]] = {}
        self._encoder = IdentifyEncoder(public_key, config.protocol_version, config.agent_version)

    def payload(self, conn: Connection) -> bytes:
        """The identify message for the peer of ``conn``."""
        remote = conn.remote_addr
        addrs = self.announce_addrs()
        if remote is not None:
            addrs = addrs_for_remote(addrs, remote)
        enc = self._encoder
        cfg = self.config
        if enc.protocol_version != cfg.protocol_version or enc.agent_version != cfg.agent_version:
            enc = self._encoder = IdentifyEncoder(self.public_key, cfg.protocol_version, cfg.agent_version)
        return enc.encode(addrs, self.protocols(), remote)

    def serve(self, stream: Stream) -> None:
        """The inline handler of ``/ipfs/id/1.0.0``."""
        stream.write(self.payload(stream.conn))
        stream.close()

    async def serve_push(self, stream: Stream) -> None:
        """The handler of ``/ipfs/id/push/1.0.0``: a push updates what the
        peer told before."""
        async with asyncio.timeout(self.config.identify_timeout):  # no extra task, unlike wait_for
            info = await read_identify(stream)
        peer = stream.peer_id
        old = self.peer_info.get(peer)
        self._learn(stream.conn, merge_push(old, info) if old is not None else info)

    def _future(self, peer: PeerId) -> asyncio.Future[IdentifyInfo]:
        fut = self._identified.get(peer)
        if fut is None or fut.done():
            fut = self._identified[peer] = asyncio.get_running_loop().create_future()
        return fut

    def identify_connection(self, conn: Connection) -> Coroutine[Any, Any, None] | None:
        """Ask the peer of a new connection who it is: the identify stream is
        opened now (called while a read is handled, its proposal leaves with
        that read's output) and half-closed once agreed; the returned
        coroutine reads the answer within the identify timeout. A failure is
        logged and fails the peer's waiters (None: it failed at once)."""
        peer = conn.remote_peer_id
        assert peer is not None  # an open connection's peer is known
        fut = self._future(peer)
        try:
            stream = conn.start_stream([IDENTIFY_PROTOCOL], close_when_negotiated=True)
        except (KadfastError, ConnectionError) as exc:
            self._identify_failed(peer, fut, exc)
            return None
        return self._read_identify(conn, stream, fut)

    async def _read_identify(self, conn: Connection, stream: Stream, fut: asyncio.Future[IdentifyInfo]) -> None:
        peer = conn.remote_peer_id
        assert peer is not None and stream.negotiated is not None
        try:
            async with asyncio.timeout(self.config.identify_timeout):  # no extra task, unlike wait_for
                await stream.negotiated
                info = await read_identify(stream)
            if info.public_key is None:
                raise ProtocolError("identify message without a public key")
        except (KadfastError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            self._identify_failed(peer, fut, exc)
            return
        except BaseException:
            stream.reset()  # cancelled (the host stopping): the stream goes too
            raise
        self._learn(conn, info)

    @staticmethod
    def _identify_failed(peer: PeerId, fut: asyncio.Future[IdentifyInfo], exc: BaseException) -> None:
        log.info("identify of %s failed: %s", peer, exc)
        if not fut.done():
            fut.set_exception(ConnectionError(f"identify failed: {exc}"))
            fut.exception()

    def _learn(self, conn: Connection, info: IdentifyInfo) -> None:
        if not conn.is_open:
            return  # the connection closed while its identify was read: keep no state for it
        peer = conn.remote_peer_id
        assert peer is not None
        if info.peer_id is not None and info.peer_id != peer:
            log.warning("identify from %s carries the key of %s; ignored", peer, info.peer_id)
            return
        now = self.clock()
        self.peer_info[peer] = info
        listen = plausible_addrs(info.listen_addrs, conn.remote_addr)
        if len(listen) < len(info.listen_addrs):
            log.debug("identify of %s: %d of its listen addresses are not on the IP it came from; not kept",
                      peer, len(info.listen_addrs) - len(listen))
        if listen:
            self.addrbook.add(peer, listen, now, source="identify")
        if info.observed_addr is not None:
            self.addrbook.set_observed(info.observed_addr, peer, now)
        self._future(peer).set_result(info)
        self.on_identified(peer, info)

    async def wait(self, peer: PeerId, timeout: float | None = None) -> IdentifyInfo:
        """What ``peer`` (connected) told, once it has."""
        fut = self._identified.get(peer)
        if fut is None:
            fut = self._identified[peer] = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(asyncio.shield(fut), timeout or self.config.identify_timeout)

    def waited_for(self) -> list[PeerId]:
        """The peers whose identify is (or was) waited for: one entry each,
        dropped with the peer's last connection."""
        return list(self._identified)

    def waits_pending(self) -> int:
        """Of those, the identifies not yet answered."""
        return sum(1 for f in self._identified.values() if not f.done())

    def forget(self, peer: PeerId, reason: str) -> None:
        """``peer``'s last connection closed: drop what it told (bounded by
        the live connections) and fail its waiters with ``reason``."""
        self.peer_info.pop(peer, None)
        fut = self._identified.pop(peer, None)
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError(reason))
            fut.exception()
