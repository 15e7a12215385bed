"""Ping (``/ipfs/ping/1.0.0``), sans-IO (libp2p/specs ping/ping.md).

The dialer writes 32 random bytes; the listener echoes every 32-byte payload
back until the dialer closes its side; the dialer measures the round trip
from writing the payload to reading it back. The dialer may send further
payloads on the same stream, one at a time.

Neither object does I/O or reads a clock: bytes and ``now`` come in as
arguments, bytes to write come out.
"""

from __future__ import annotations

import os

from .errors import ProtocolError

__all__ = [
    "PROTOCOL_ID",
    "PING_SIZE",
    "PING_TIMEOUT",
    "PingResponder",
    "PingInitiator",
    "new_payload",
]

PROTOCOL_ID = "/ipfs/ping/1.0.0"
#: Payload size fixed by the spec.
PING_SIZE = 32
#: rust-libp2p's default ping timeout (``Config::with_timeout``), in seconds.
PING_TIMEOUT = 20.0


def new_payload() -> bytes:
    """32 random bytes for a ping."""
    return os.urandom(PING_SIZE)


class PingResponder:
    """The listener: echoes whole 32-byte payloads, buffering fewer than 32 bytes."""

    __slots__ = ("_buf", "_closed", "echoed")

    def __init__(self) -> None:
        self._buf = b""
        self._closed = False
        #: number of payloads echoed so far
        self.echoed = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete payload held (fewer than 32)."""
        return len(self._buf)

    def feed(self, data: bytes) -> bytes:
        """Take bytes read from the stream; return the bytes to write back
        (a whole number of payloads, possibly none)."""
        if self._closed:
            raise ProtocolError("ping responder is closed", remote=False)
        data = self._buf + bytes(data)
        whole = len(data) - len(data) % PING_SIZE
        self._buf = data[whole:]
        self.echoed += whole // PING_SIZE
        return data[:whole]

    def eof(self) -> None:
        """The dialer closed its side. Raises :class:`ProtocolError` if it
        stopped inside a payload (nothing is owed for a partial payload)."""
        self._closed = True
        if self._buf:
            pending, self._buf = len(self._buf), b""
            raise ProtocolError(f"ping stream closed after {pending} of {PING_SIZE} payload bytes")


class PingInitiator:
    """The dialer. Write :attr:`payload` when constructing (at ``now``), feed
    what the listener sends back; ``feed`` returns the round-trip time once
    the echo is complete. :meth:`again` starts another ping on the same stream."""

    __slots__ = ("payload", "sent_at", "timeout", "_buf", "_done", "_closed")

    def __init__(self, payload: bytes, now: float, *, timeout: float = PING_TIMEOUT) -> None:
        self.timeout = timeout
        self._closed = False
        self._start(payload, now)

    def _start(self, payload: bytes, now: float) -> None:
        payload = bytes(payload)
        if len(payload) != PING_SIZE:
            raise ProtocolError(f"a ping payload is {PING_SIZE} bytes, got {len(payload)}", remote=False)
        self.payload = payload
        self.sent_at = now
        self._buf = b""
        self._done = False

    @property
    def done(self) -> bool:
        """True once the current ping's echo has arrived."""
        return self._done

    def again(self, payload: bytes, now: float) -> bytes:
        """Start the next ping on this stream; returns the bytes to write."""
        if self._closed or not self._done:
            raise ProtocolError("the previous ping has not completed", remote=False)
        self._start(payload, now)
        return self.payload

    def deadline(self) -> float | None:
        """When the pending ping times out (None when no ping is pending)."""
        return None if self._done or self._closed else self.sent_at + self.timeout

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def feed(self, data: bytes, now: float) -> float | None:
        """Take bytes read from the stream; return the round-trip time (>= 0)
        when the echo is complete, else None. Raises :class:`ProtocolError` on
        a wrong echo or on bytes that nobody asked for."""
        if self._closed:
            raise ProtocolError("ping initiator is closed", remote=False)
        if not data:
            return None
        if self._done:
            self._closed = True
            raise ProtocolError("ping listener sent bytes that were not asked for")
        buf = self._buf + bytes(data)
        if len(buf) > PING_SIZE or buf != self.payload[: len(buf)]:
            self._closed = True
            raise ProtocolError("ping echo does not match the payload")
        if len(buf) < PING_SIZE:
            self._buf = buf
            return None
        self._buf = b""
        self._done = True
        return max(0.0, now - self.sent_at)

    def eof(self) -> None:
        """The listener closed its side; an error if a ping was pending."""
        pending = not self._done and not self._closed
        self._closed = True
        if pending:
            raise ProtocolError("ping stream closed before the echo")
