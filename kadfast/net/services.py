"""The host's own protocols as services over their sans-IO cores: ping
(``/ipfs/ping/1.0.0``, :mod:`kadfast.ping`'s :class:`PingResponder` and
:class:`PingInitiator`). Each service moves a stream's bytes to its core and
the core's bytes back; the rules (payload size, echo, what a wrong echo is)
are the core's, the limits (streams per connection, pings per second) the
host's configuration."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from ..errors import ProtocolError
from ..ping import PING_SIZE, PROTOCOL_ID, PingInitiator, PingResponder, new_payload
from ..ratelimit import PeerRateLimiter
from .stream import Stream

if TYPE_CHECKING:
    from .host import HostConfig

log = logging.getLogger("kadfast.net")

__all__ = ["PingService"]


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
