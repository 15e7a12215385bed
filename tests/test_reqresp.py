"""JsonRequestResponse without a network: a fake host and stream."""

from __future__ import annotations

import asyncio

from kadfast.reqresp import JsonRequestResponse


class _Host:
    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}

    def set_stream_handler(self, protocol, fn) -> None:
        self.handlers[protocol] = fn

    def remove_stream_handler(self, protocol) -> None:
        self.handlers.pop(protocol, None)


class _Stream:
    """A request that arrives only once ``release`` is set."""

    peer_id = None

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.was_reset = False
        self.written = b""

    async def read_to_end(self, limit: int) -> bytes:
        await self.release.wait()
        return b'{"q": 1}'

    def reset(self) -> None:
        self.was_reset = True

    async def write_all(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        pass


def test_a_request_read_after_serving_stopped_is_reset():
    async def main() -> None:
        async def echo(peer, request):
            return request

        host = _Host()
        rr = JsonRequestResponse(host, echo)
        served = _Stream()
        stopped = _Stream()
        answered = asyncio.ensure_future(rr.serve_stream(served))
        refused = asyncio.ensure_future(rr.serve_stream(stopped))
        served.release.set()
        await answered
        assert served.written == b'{"q": 1}' and not served.was_reset
        rr.set_handler(None)  # while the second request is still being read
        assert rr.protocol not in host.handlers
        stopped.release.set()
        await refused  # used to fail: 'NoneType' object is not callable
        assert stopped.was_reset and stopped.written == b""

    asyncio.run(main())
