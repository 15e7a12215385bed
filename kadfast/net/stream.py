"""Streams: one Yamux stream of a connection, seen from asyncio code.

Reading is bounded by the Yamux receive window: bytes are acknowledged to the
peer (``consumed``) only as the application reads them, so a peer can never
have more than one window of unread data buffered per stream. Writing is
bounded by the session's per-stream send buffer; :meth:`Stream.drain` waits
while it is above the high-water mark or the TCP transport is paused.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

from ..errors import StreamClosed, StreamReset, VarintError
from ..varint import decode_uvarint

if TYPE_CHECKING:  # pragma: no cover
    from ..peerid import PeerId
    from .connection import Connection

__all__ = ["Stream", "StreamReset", "StreamClosed", "WRITE_HIGH_WATER"]

#: drain() waits while more than this many bytes are queued in the session for
#: the stream (a quarter of the default 256 KiB window).
WRITE_HIGH_WATER = 64 * 1024


class Stream:
    """A bidirectional byte stream with a negotiated protocol."""

    __slots__ = (
        "conn", "stream_id", "protocol", "inbound", "_buf", "_eof", "_reset",
        "_reset_reason", "_waiter", "_write_closed", "_writable",
        "negotiated", "_sink", "_sink_done", "__weakref__",
    )

    def __init__(self, conn: "Connection", stream_id: int, inbound: bool) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.protocol: str | None = None
        self.inbound = inbound
        self._buf = bytearray()
        self._eof = False
        self._reset = False
        self._reset_reason = ""
        self._waiter: asyncio.Future | None = None
        self._write_closed = False
        self._writable: asyncio.Future | None = None
        # an outbound stream's: done once its protocol is agreed on
        self.negotiated: asyncio.Future | None = None
        self._sink: Callable[[bytes], object] | None = None  # see consume_with()
        self._sink_done: asyncio.Future | None = None

    # -- who ------------------------------------------------------------
    @property
    def peer_id(self) -> "PeerId":
        return self.conn.remote_peer_id  # type: ignore[return-value]  # known before any stream opens

    @property
    def at_eof(self) -> bool:
        """The peer half-closed and everything it sent was read."""
        return self._eof and not self._buf

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self.protocol} peer={self.conn.remote_peer_id}>"

    # -- fed by the connection -----------------------------------------
    def feed_data(self, data: bytes) -> None:
        if self._sink is not None:
            self.conn.stream_consumed(self.stream_id, len(data))
            self._run_sink(data)
            return
        self._buf += data
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        if self._sink is not None:
            self._run_sink(b"")
            return
        self._wake()

    # -- synchronous consumers (the hot path of request/response servers) --
    def consume_with(self, sink) -> "asyncio.Future":
        """Hand every chunk received from now on to ``sink(data)`` right in
        the connection's read callback (``b""`` once the peer half-closed):
        no task switch per message, and what the sink writes leaves in the
        same batch. The sink calls :meth:`sink_finished` when it is done; an
        exception from it resets the stream. The returned future completes
        then (or fails with the error, or :class:`StreamReset`)."""
        fut = self.conn.loop.create_future()
        self._sink_done = fut
        self._sink = sink
        if self._buf:
            self._run_sink(self._take(len(self._buf)))
        if self._eof and not fut.done():
            self._run_sink(b"")
        if self._reset and not fut.done():
            fut.set_exception(StreamReset(self._reset_reason or "stream reset"))
        return fut

    def sink_finished(self) -> None:
        self._sink = None
        if self._sink_done is not None and not self._sink_done.done():
            self._sink_done.set_result(None)

    def _run_sink(self, data: bytes) -> None:
        try:
            self._sink(data)  # type: ignore[misc]  # (set: the callers checked)
        except Exception as exc:
            self._sink = None
            fut = self._sink_done
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            self.reset()

    def feed_reset(self, reason: str) -> None:
        # ``_eof`` stays as it is: data and a FIN that arrived before the reset
        # (or before the connection closed) are still read normally.
        if not self._reset:
            self._reset = True
            self._reset_reason = reason
            self._write_closed = True
            self._wake()
            self.wake_writer()
            if self._sink_done is not None and not self._sink_done.done():
                self._sink = None
                self._sink_done.set_exception(StreamReset(reason))
            if self.negotiated is not None and not self.negotiated.done():
                self.negotiated.set_exception(StreamReset(reason))

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def wake_writer(self) -> None:
        w = self._writable
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait_data(self) -> None:
        self._waiter = self.conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n]) if n < len(self._buf) else bytes(self._buf)
        del self._buf[: len(data)]
        if data:
            self.conn.stream_consumed(self.stream_id, len(data))
        return data

    # -- reading --------------------------------------------------------
    def _check_reset(self) -> None:
        if self._reset:
            raise StreamReset(self._reset_reason or "stream reset")

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is buffered when n < 0), waiting for at
        least one; ``b""`` once the peer half-closed and all was read. Raises
        :class:`StreamReset` when the stream was reset before its end."""
        while not self._buf:
            if self._eof:
                return b""
            self._check_reset()
            await self._wait_data()
        return self._take(len(self._buf) if n < 0 else n)

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(self._buf), n)
            self._check_reset()
            await self._wait_data()
        return self._take(n)

    async def read_to_end(self, limit: int) -> bytes:
        """Everything until the peer half-closes. Data is acknowledged as it
        arrives (so a message larger than the Yamux window flows); a stream
        longer than ``limit`` bytes is reset and raises :class:`StreamReset`,
        and so does a stream reset before its end."""
        out = bytearray()
        while True:
            chunk = await self.read()
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > limit:
                self.reset()
                raise StreamReset(f"more than {limit} bytes")

    async def read_message(self, limit: int) -> bytes | None:
        """One uvarint-length-prefixed message (None at a clean end of stream).
        A length above ``limit`` resets the stream."""
        while True:
            if self._buf:
                try:
                    length, pos = decode_uvarint(self._buf, 0)
                except VarintError as exc:
                    if len(self._buf) < 10 and "truncated" in str(exc):
                        length = None
                    else:
                        self.reset()
                        raise StreamReset(f"bad message length: {exc}") from None
                if length is not None:
                    if length > limit:
                        self.reset()
                        raise StreamReset(f"message of {length} bytes exceeds the limit of {limit}")
                    if len(self._buf) >= pos + length:
                        self._take(pos)
                        return self._take(length)
            if self._eof:
                if self._buf:
                    raise asyncio.IncompleteReadError(bytes(self._buf), None)
                return None
            self._check_reset()
            await self._wait_data()

    @property
    def queued(self) -> int:
        """Bytes written on this stream that wait for the peer's window."""
        return self.conn.stream_buffered(self.stream_id)

    # -- writing --------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._reset:
            raise StreamReset(self._reset_reason or "stream reset")
        if self._write_closed:
            raise StreamClosed("write side closed")
        if data:
            self.conn.stream_send(self.stream_id, data)

    async def drain(self) -> None:
        while True:
            if self._reset:
                raise StreamReset(self._reset_reason or "stream reset")
            if self.conn.stream_buffered(self.stream_id) <= WRITE_HIGH_WATER and not self.conn.write_paused:
                return
            self._writable = self.conn.loop.create_future()
            try:
                await self._writable
            finally:
                self._writable = None

    async def write_all(self, data: bytes) -> None:
        """Write any amount, waiting for the peer's window between chunks (a
        single :meth:`write` may queue at most the session's per-stream buffer)."""
        view = memoryview(data)
        for i in range(0, len(view), WRITE_HIGH_WATER):
            self.write(bytes(view[i:i + WRITE_HIGH_WATER]))
            await self.drain()

    def close(self) -> None:
        """Half-close: no more writes; reading goes on until the peer closes."""
        if not self._write_closed and not self._reset:
            self._write_closed = True
            self.conn.stream_close(self.stream_id)

    def reset(self) -> None:
        if not self._reset:
            self.conn.stream_reset(self.stream_id)
            self.feed_reset("reset locally")

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.reset()
