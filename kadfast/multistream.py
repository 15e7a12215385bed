"""multistream-select 1.0 as a sans-IO core.

Wire format (multiformats/multistream-select): every message is
``uvarint(len) | utf8 text | "\\n"``, the length counting the newline. Both
sides send the header ``/multistream/1.0.0``; the dialer proposes protocols one
at a time, the listener echoes a supported proposal or answers ``na``.

The two classes here take bytes in (:meth:`receive_data`) and hand bytes out
(:meth:`data_to_send`); they never touch a socket. Once negotiation is over,
every byte that followed the last negotiation message is kept in ``unused``:
it belongs to the protocol that was selected.

A dialer with one protocol may run *lazily* (rust-libp2p's ``V1Lazy``): it
writes the header and its proposal and starts sending protocol data at once,
without waiting for the echo; the header and echo are consumed when they
arrive. A listener therefore always keeps whatever follows an accepted
proposal in ``unused``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import lru_cache

from .errors import MultistreamError

__all__ = [
    "PROTOCOL_ID",
    "MAX_MESSAGE_LEN",
    "MAX_PROPOSALS",
    "MultistreamDialer",
    "MultistreamListener",
    "encode_message",
]

#: The multistream-select 1.0 header line (without its newline).
PROTOCOL_ID = "/multistream/1.0.0"
#: Largest message (the length prefix's value, newline included) we accept.
#: go-multistream refuses anything above 1024 bytes on read, so no peer that
#: interoperates with go sends more; rust-libp2p allows up to 16383. Protocol
#: names are a few dozen bytes.
MAX_MESSAGE_LEN = 1024
#: A listener answers at most this many proposals (``na`` rounds and ``ls``
#: included) before giving up on the dialer: a peer cycling through names is
#: either broken or probing.
MAX_PROPOSALS = 32

_NA = "na"
_LS = "ls"

_STATE_HEADER = 0  # waiting for the remote's header
_STATE_NEGOTIATING = 1  # header seen, waiting for a proposal / an answer
_STATE_DONE = 2
_STATE_FAILED = 3


@lru_cache(maxsize=512)
def encode_message(text: str) -> bytes:
    """``uvarint(len) | text | "\\n"``, cached: the hot path negotiates the
    same handful of protocol names on every stream.

    Raises :class:`MultistreamError` (``remote=False``) for text containing a
    newline or too long to be a message.
    """
    body = text.encode("utf-8") + b"\n"
    n = len(body)
    if b"\n" in body[:-1]:
        raise MultistreamError(f"multistream message contains a newline: {text[:80]!r}", remote=False)
    if n > MAX_MESSAGE_LEN:
        raise MultistreamError(f"multistream message too long ({n} bytes)", remote=False)
    # MAX_MESSAGE_LEN < 2**14, so the length takes one or two varint bytes.
    if n < 0x80:
        return bytes((n,)) + body
    return bytes((n & 0x7F | 0x80, n >> 7)) + body


_HEADER_MSG = encode_message(PROTOCOL_ID)
_NA_MSG = encode_message(_NA)


def _encode_ls_response(protocols: list[str]) -> bytes:
    """The answer to ``ls`` as go and rust write it: one message whose body is
    the list of length-prefixed protocol lines, then a closing newline."""
    inner = b"".join(encode_message(p) for p in protocols) + b"\n"
    n = len(inner)
    prefix = bytearray()
    while n >= 0x80:
        prefix.append(n & 0x7F | 0x80)
        n >>= 7
    prefix.append(n)
    return bytes(prefix) + inner


class _MessageReader:
    """Splits a byte stream into multistream message texts.

    Parsing is O(bytes received): the buffer is compacted only when at least
    half of it has been consumed.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> str | None:
        """The next complete message's text (newline stripped), or None when
        more bytes are needed. Raises :class:`MultistreamError` when malformed."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 1:
            return None
        b0 = buf[pos]
        if b0 < 0x80:
            length, hdr = b0, 1
        else:
            if avail < 2:
                return None
            b1 = buf[pos + 1]
            if b1 & 0x80 or b1 == 0:
                # a third varint byte means > 16383, and a zero high byte is a
                # non-minimal encoding: both malformed for us.
                raise MultistreamError("malformed or oversized multistream length prefix")
            length, hdr = (b0 & 0x7F) | (b1 << 7), 2
        if length > MAX_MESSAGE_LEN:
            raise MultistreamError(f"multistream message too long ({length} > {MAX_MESSAGE_LEN} bytes)")
        if length == 0:
            raise MultistreamError("empty multistream message")
        end = pos + hdr + length
        if end > len(buf):
            return None
        if buf[end - 1] != 0x0A:
            raise MultistreamError("multistream message does not end with a newline")
        body = bytes(buf[pos + hdr : end - 1])
        self._pos = end
        if b"\n" in body:
            raise MultistreamError("multistream message contains an inner newline")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise MultistreamError("multistream message is not valid UTF-8") from None

    def rest(self) -> bytes:
        out = bytes(self._buf[self._pos :])
        self._buf = bytearray()
        self._pos = 0
        return out


class _Negotiator:
    __slots__ = ("_reader", "_out", "_state", "selected", "unused")

    def __init__(self) -> None:
        self._reader = _MessageReader()
        self._out: list[bytes] = []
        self._state = _STATE_HEADER
        #: the negotiated protocol, once known
        self.selected: str | None = None
        #: bytes received after the last negotiation message (next layer's data)
        self.unused = b""

    @property
    def done(self) -> bool:
        """True once every negotiation message from the remote was consumed;
        from then on, received bytes are in ``unused``."""
        return self._state == _STATE_DONE

    def data_to_send(self) -> bytes:
        """Bytes to write to the remote (empty when there is nothing)."""
        if not self._out:
            return b""
        out = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the remote, any split. After ``done``, more bytes
        are appended to ``unused``."""
        state = self._state
        if state == _STATE_DONE:
            self.unused += data
            return
        if state == _STATE_FAILED:
            raise MultistreamError("multistream negotiation already failed", remote=False)
        self._reader.feed(data)
        try:
            while self._state != _STATE_DONE:
                text = self._reader.next_message()
                if text is None:
                    return
                self._handle(text)
            self.unused += self._reader.rest()
        except MultistreamError:
            self._state = _STATE_FAILED
            raise

    def _handle(self, text: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class MultistreamDialer(_Negotiator):
    """The dialer's side: proposes ``protocols`` in order until one is echoed.

    The header and the first proposal are queued at construction, to be sent
    in one write (as go and rust do); read them with :meth:`data_to_send`
    (or :meth:`initial_data`). When every proposal is refused,
    :meth:`receive_data` raises :class:`MultistreamError`.

    ``lazy=True`` (one protocol only) sets ``selected`` at once, so the caller
    may write protocol data right behind the proposal; ``done`` turns True
    when the remote's header and echo have been consumed, and a refusal
    (``na``) then raises :class:`MultistreamError`.
    """

    __slots__ = ("_protocols", "_index", "lazy")

    def __init__(self, protocols: list[str], *, lazy: bool = False) -> None:
        super().__init__()
        protocols = list(protocols)
        if not protocols:
            raise MultistreamError("a dialer needs at least one protocol to propose", remote=False)
        if lazy and len(protocols) != 1:
            raise MultistreamError("lazy negotiation needs exactly one protocol", remote=False)
        for p in protocols:
            if p in (PROTOCOL_ID, _NA, _LS):
                raise MultistreamError(f"{p!r} cannot be proposed as a protocol", remote=False)
            encode_message(p)  # validates
        self._protocols = protocols
        self._index = 0
        self.lazy = lazy
        self._out.append(_HEADER_MSG + encode_message(protocols[0]))
        if lazy:
            self.selected = protocols[0]

    def initial_data(self) -> bytes:
        """The header and first proposal (same as the first :meth:`data_to_send`)."""
        return self.data_to_send()

    def _handle(self, text: str) -> None:
        if self._state == _STATE_HEADER:
            if text != PROTOCOL_ID:
                raise MultistreamError(f"remote does not speak {PROTOCOL_ID}: {text[:80]!r}")
            self._state = _STATE_NEGOTIATING
            return
        proposal = self._protocols[self._index]
        if text == proposal:
            self.selected = proposal
            self._state = _STATE_DONE
        elif text == _NA:
            if self.lazy:
                raise MultistreamError(f"remote refused {proposal!r} after lazy negotiation")
            self._index += 1
            if self._index >= len(self._protocols):
                raise MultistreamError(f"remote supports none of {self._protocols!r}")
            self._out.append(encode_message(self._protocols[self._index]))
        else:
            raise MultistreamError(f"unexpected multistream answer {text[:80]!r} to {proposal!r}")


class MultistreamListener(_Negotiator):
    """The listener's side: echoes the first supported proposal, answers
    ``na`` to others.

    ``supported`` is a predicate on the protocol name or a collection of
    names (a lone ``str`` counts as one name); with a collection, ``ls`` is answered with its contents (with a
    predicate, ``ls`` gets ``na``). Our header is queued at construction, as
    go does, so it travels while the dialer's proposal is in flight.
    After more than :data:`MAX_PROPOSALS` refused proposals,
    :meth:`receive_data` raises :class:`MultistreamError`.
    """

    __slots__ = ("_accepts", "_listing", "_rounds")

    def __init__(self, supported: Callable[[str], bool] | Collection[str]) -> None:
        super().__init__()
        if isinstance(supported, str):  # one name, not a collection of characters
            supported = (supported,)
        if callable(supported):
            self._accepts = supported
            self._listing: list[str] | None = None
        else:
            names = frozenset(supported)
            self._accepts = names.__contains__
            self._listing = sorted(names)
        self._rounds = 0
        self._out.append(_HEADER_MSG)

    def _handle(self, text: str) -> None:
        if self._state == _STATE_HEADER:
            if text != PROTOCOL_ID:
                raise MultistreamError(f"remote does not speak {PROTOCOL_ID}: {text[:80]!r}")
            self._state = _STATE_NEGOTIATING
            return
        if text != PROTOCOL_ID and text != _NA and text != _LS and self._accepts(text):
            self.selected = text
            self._state = _STATE_DONE
            self._out.append(encode_message(text))
            return
        self._rounds += 1
        if self._rounds > MAX_PROPOSALS:
            raise MultistreamError(f"dialer made more than {MAX_PROPOSALS} proposals")
        if text == _LS and self._listing is not None:
            self._out.append(_encode_ls_response(self._listing))
        else:
            self._out.append(_NA_MSG)
