"""JSON request/response, wire-compatible with rust-libp2p's
``request_response::json`` codec: one stream per request; the requester
writes the JSON request and half-closes; the responder reads to the end,
writes the JSON response and closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from .errors import KadfastError, RequestError
from .peerid import PeerId

log = logging.getLogger("kadfast.reqresp")

__all__ = ["JsonRequestResponse", "RequestError", "DEFAULT_PROTOCOL", "MAX_REQUEST_BYTES", "MAX_RESPONSE_BYTES"]

DEFAULT_PROTOCOL = "/kadfast/json/1.0.0"
#: rust-libp2p's json codec limits: 1 MiB per request, 10 MiB per response
MAX_REQUEST_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 10 * 1024 * 1024

Handler = Callable[[PeerId, Any], Awaitable[Any]]


class JsonRequestResponse:
    """Serves and sends JSON requests on ``protocol`` over a :class:`~kadfast.net.Host`."""

    def __init__(
        self,
        host,
        handler: Handler | None = None,
        *,
        protocol: str = DEFAULT_PROTOCOL,
        timeout: float = 10.0,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.host = host
        self.protocol = protocol
        self.timeout = timeout
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self._handler: Handler | None = None
        if handler is not None:
            self.set_handler(handler)

    def set_handler(self, handler: Handler | None) -> None:
        """Serve requests with ``handler(peer_id, request) -> response``
        (None stops serving: the protocol is then not announced)."""
        self._handler = handler
        if handler is None:
            self.host.remove_stream_handler(self.protocol)
        else:
            self.host.set_stream_handler(self.protocol, self.serve_stream)

    async def serve_stream(self, stream) -> None:
        raw = await asyncio.wait_for(stream.read_to_end(self.max_request_bytes), self.timeout)
        try:
            request = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            log.info("request from %s is not JSON; resetting", stream.peer_id)
            stream.reset()
            return
        handler = self._handler
        if handler is None:  # serving stopped while the request was read
            stream.reset()
            return
        response = await handler(stream.peer_id, request)
        await stream.write_all(json.dumps(response).encode())
        stream.close()

    async def request(self, peer: PeerId, body: Any, *, addrs=None, timeout: float | None = None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        data = json.dumps(body).encode()
        if len(data) > self.max_request_bytes:
            raise RequestError(f"request of {len(data)} bytes exceeds {self.max_request_bytes}")

        async def exchange():
            stream = await self.host.new_stream(peer, self.protocol, addrs)
            try:
                await stream.write_all(data)
                stream.close()
                return await stream.read_to_end(self.max_response_bytes)
            except BaseException:
                stream.reset()
                raise

        try:
            raw = await asyncio.wait_for(exchange(), timeout)
        except asyncio.TimeoutError:
            raise RequestError(f"request to {peer} timed out after {timeout}s") from None
        except (KadfastError, ConnectionError, asyncio.IncompleteReadError) as exc:
            if isinstance(exc, RequestError):
                raise
            raise RequestError(f"request to {peer} failed: {exc}") from exc
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise RequestError(f"response from {peer} is not JSON") from None
