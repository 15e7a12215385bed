"""The kad-dht wire messages (``/ipfs/kad/1.0.0``): a hand-written protobuf
codec and sans-IO framing (libp2p/specs kad-dht/README.md).

Every message on a kad stream is ``uvarint(len) | Message``::

    Message { type = 1 (enum), clusterLevelRaw = 10 (int32), key = 2 (bytes),
              record = 3 (Record), closerPeers = 8, providerPeers = 9 (Peer) }
    Peer    { id = 1 (bytes), addrs = 2 (repeated bytes), connection = 3 (enum) }
    Record  { key = 1, value = 2 (bytes), timeReceived = 5 (string, RFC 3339),
              publisher = 666 (bytes), ttl = 777 (uint32) }

``publisher`` and ``ttl`` are rust-libp2p's own additions. All the schemas
are proto3: a field holding its default value is not written, and a missing
field decodes as its default (a missing ``type`` is ``PUT_VALUE``). One
exception: we always write ``type``, even ``PUT_VALUE`` (0), which rust, go,
js and py-libp2p leave out; every decoder accepts the explicit zero. Fields
are written in field-number order, so apart from that ``type`` our bytes are
those of Google's protobuf serializer.

Decoding is lenient where the other implementations are, and strict about
the protobuf itself:

* unknown fields are skipped and never re-emitted (py-libp2p adds
  ``senderRecord`` = 11 to messages and ``signedRecord`` = 4 to peers, and
  ``author`` = 3 / ``signature`` = 4 to records);
* a peer whose id is not a PeerId is dropped, not the message; an address
  that does not parse is dropped alone; an address ending in ``/p2p/<id>``
  of that same peer (rust sends them so) is stripped of the suffix, and one
  whose ``/p2p`` names another peer is dropped, as rust does;
* a ``connection`` outside the enum reads as ``NOT_CONNECTED`` (rust maps
  unknown enum values to the default); a publisher that is not a PeerId
  reads as None; ``ttl`` 0 reads as None (rust: no expiry given);
* a repeated singular field follows protobuf: the last one wins (an
  embedded ``record`` given twice is replaced, not merged, as rust does);
* malformed protobuf (truncation, bad varint, field number 0, groups), a
  known field with the wrong wire type, a ``type`` outside the enum and a
  ``timeReceived`` that is not UTF-8 raise :class:`KadCodecError`.

Speed: a DHT server answers a FIND_NODE in tens of microseconds, so the
common paths are written out by hand: :func:`encode_peer` produces a Peer
encoding meant to be cached per routing-table entry, and
:func:`encode_find_node_reply` joins such cached encodings. Decoding keeps
small bounded caches keyed by encoding (PeerIds, multiaddrs, whole Peer
messages; all immutable values), as the same peers recur in every reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterable

from ..errors import KadCodecError, MultiaddrError, PeerIdError
from ..multiaddr import Multiaddr
from ..peerid import PeerId

__all__ = [
    "PROTOCOL_ID",
    "MAX_MESSAGE_SIZE",
    "MessageType",
    "ConnectionType",
    "KadCodecError",
    "KadPeer",
    "KadRecord",
    "KadMessage",
    "encode_message",
    "decode_message",
    "encode_peer",
    "encode_find_node_reply",
    "closer_field",
    "frame",
    "MAX_KEY_SIZE",
    "MAX_VALUE_SIZE",
    "MessageReader",
]

PROTOCOL_ID = "/ipfs/kad/1.0.0"

#: Largest message body we accept: rust-libp2p's default maximum packet size
#: (``protocol::DEFAULT_MAX_PACKET_SIZE``, 16 KiB), which rust applies to what
#: it sends and receives. go-libp2p-kad-dht accepts up to 4 MiB (its msgio
#: reader limit), js-libp2p 4 MiB as well. A reply of 20 peers with a few
#: addresses each is 1-3 KiB.
MAX_MESSAGE_SIZE = 16 * 1024

#: Largest record value and key that a put sends, and that the store takes
#: by default: a GET_VALUE answer carries the record (its key twice) and up to
#: 20 closer peers, and must fit in a 16 KiB message for rust-libp2p to send
#: it and for kadfast and rust to read it. 12 KiB + 2 x 512 bytes leaves about
#: 3 KiB for the closer peers. (A larger value "stores" on go and js servers
#: and then cannot be read back through rust or kadfast.)
MAX_VALUE_SIZE = 12 * 1024
MAX_KEY_SIZE = 512

#: A protobuf varint is at most 10 bytes (64 bits of value).
_MAX_VARINT_BYTES = 10
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
#: Bounded caches of decoded PeerIds, multiaddrs and whole Peer messages
#: (keyed by their encodings, so a hit decodes exactly as a miss would);
#: each is cleared when full. Only short encodings are cached.
CACHE_SIZE = 4096
_MAX_CACHED_ID = 64
_MAX_CACHED_ADDR = 128
_MAX_CACHED_PEER = 512


class MessageType(IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


_MESSAGE_TYPES = tuple(MessageType)
_CONNECTION_TYPES = tuple(ConnectionType)


@dataclass(slots=True)
class KadPeer:
    peer_id: PeerId
    addrs: list[Multiaddr]
    connection: ConnectionType = ConnectionType.NOT_CONNECTED


@dataclass(slots=True)
class KadRecord:
    key: bytes
    value: bytes
    #: RFC 3339 text, set by the receiver; "" when absent.
    time_received: str = ""
    #: rust-libp2p only (field 666): the peer that first published the record.
    publisher: PeerId | None = None
    #: rust-libp2p only (field 777): remaining lifetime in seconds; None when absent.
    ttl: int | None = None


@dataclass(slots=True)
class KadMessage:
    type: MessageType
    key: bytes = b""
    record: KadRecord | None = None
    closer_peers: list[KadPeer] = field(default_factory=list)
    provider_peers: list[KadPeer] = field(default_factory=list)
    cluster_level_raw: int = 0


# ---------------------------------------------------------------- encoding

def _varint(value: int) -> bytes:
    """Protobuf varint of a value in [0, 2**64)."""
    if value < 0x80:
        return _BYTE[value]
    if value < 0x4000:  # two bytes: every reply's frame length
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_BYTE = [bytes((i,)) for i in range(256)]
#: ``tag | uvarint(n)`` for the length-delimited fields we write most, by n.
_PREFIX_TABLE_SIZE = 2048
_CLOSER_PREFIX = [b"\x42" + _varint(n) for n in range(_PREFIX_TABLE_SIZE)]
_PROVIDER_PREFIX = [b"\x4a" + _varint(n) for n in range(_PREFIX_TABLE_SIZE)]
_TYPE_FIELD = [b"\x08" + _BYTE[t] for t in range(len(_MESSAGE_TYPES))]
_CONNECTION_FIELD = [b"", b"\x18\x01", b"\x18\x02", b"\x18\x03"]


def _len_field(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + value


def _local_error(message: str) -> KadCodecError:
    return KadCodecError(message, remote=False)


def encode_peer(peer_id: PeerId, addrs: Iterable[Multiaddr], connection: int = 0) -> bytes:
    """The encoded ``Peer`` message body (without its field tag and length).

    Addresses are written without a trailing ``/p2p/<peer_id>`` (go and js
    send none); an address whose ``/p2p`` names another peer is left out.
    Meant to be cached per routing-table entry and handed to
    :func:`encode_find_node_reply`.
    """
    pid = peer_id.to_bytes()
    n = len(pid)
    parts = [b"\x0a", _BYTE[n] if n < 0x80 else _varint(n), pid]
    for addr in addrs:
        tail = addr.peer_id()
        if tail is not None:
            if tail != peer_id:
                continue
            addr = addr.without_peer_id()
        raw = addr.to_bytes()
        if not raw:
            continue
        n = len(raw)
        parts.append(b"\x12")
        parts.append(_BYTE[n] if n < 0x80 else _varint(n))
        parts.append(raw)
    if connection:
        if connection.__class__ is not ConnectionType and not (
            isinstance(connection, int) and 0 <= connection <= 3
        ):
            raise _local_error(f"invalid connection type {connection!r}")
        parts.append(_CONNECTION_FIELD[connection])
    return b"".join(parts)


def _encode_record(record: KadRecord) -> bytes:
    parts = []
    if record.key:
        parts.append(_len_field(b"\x0a", record.key))
    if record.value:
        parts.append(_len_field(b"\x12", record.value))
    if record.time_received:
        parts.append(_len_field(b"\x2a", record.time_received.encode()))
    if record.publisher is not None:
        parts.append(_len_field(b"\xd2\x29", record.publisher.to_bytes()))
    ttl = record.ttl
    if ttl:
        if not 0 < ttl <= _U32:
            raise _local_error(f"record ttl {ttl} is not a uint32")
        parts.append(b"\xc8\x30" + _varint(ttl))
    return b"".join(parts)


def _type_field(msg_type: int) -> bytes:
    try:
        if msg_type >= 0:
            return _TYPE_FIELD[msg_type]
    except (IndexError, TypeError):
        pass
    raise _local_error(f"invalid message type {msg_type!r}")


def encode_message(msg: KadMessage) -> bytes:
    """The protobuf body of ``msg`` (no length prefix; see :func:`frame`)."""
    parts = [_type_field(msg.type)]
    if msg.key:
        parts.append(_len_field(b"\x12", msg.key))
    if msg.record is not None:
        parts.append(_len_field(b"\x1a", _encode_record(msg.record)))
    for tag, peers in ((b"\x42", msg.closer_peers), (b"\x4a", msg.provider_peers)):
        for peer in peers:
            parts.append(_len_field(tag, encode_peer(peer.peer_id, peer.addrs, peer.connection)))
    level = msg.cluster_level_raw
    if level:
        if not -(1 << 31) <= level < (1 << 31):
            raise _local_error(f"clusterLevelRaw {level} is not an int32")
        parts.append(b"\x50" + _varint(level & _U64))
    return b"".join(parts)


def closer_field(peer_body: bytes) -> bytes:
    """A whole ``closerPeers`` field (tag, length, Peer encoding), for
    :func:`encode_find_node_reply` with ``closer_fields=True``."""
    return _len_field(b"\x42", peer_body)


def encode_find_node_reply(
    key: bytes,
    closer_peer_bodies: list[bytes],
    msg_type: int = MessageType.FIND_NODE,
    provider_peer_bodies: Iterable[bytes] = (),
    record: KadRecord | None = None,
    framed: bool = False,
    closer_fields: bool = False,
) -> bytes:
    """Fast path for replies: a message of type ``msg_type`` built from Peer
    encodings made by :func:`encode_peer`. The result is identical to
    :func:`encode_message` of the equivalent :class:`KadMessage` (with
    ``cluster_level_raw`` 0). ``key`` b"" leaves the key out (rust and go
    send none in a FIND_NODE reply; go echoes it for GET_PROVIDERS).
    ``framed`` puts the length prefix in front, as :func:`frame` does.
    With ``closer_fields`` the closer peers come as whole fields
    (:func:`closer_field`, e.g. cached), joined as they are."""
    parts = [_type_field(msg_type)]
    if key:
        parts.append(_len_field(b"\x12", key))
    if record is not None:
        parts.append(_len_field(b"\x1a", _encode_record(record)))
    if closer_peer_bodies.__class__ is not list:
        closer_peer_bodies = list(closer_peer_bodies)
    head = len(parts)
    append = parts.append
    prefix = _CLOSER_PREFIX
    try:
        # The prefix table covers every ordinary Peer; a body too long for it
        # raises IndexError and the slow loop below starts over.
        if closer_fields:
            parts += closer_peer_bodies
        else:
            for body in closer_peer_bodies:
                append(prefix[len(body)])
                append(body)
        if provider_peer_bodies:
            provider_peer_bodies = list(provider_peer_bodies)
            prefix = _PROVIDER_PREFIX
            for body in provider_peer_bodies:
                append(prefix[len(body)])
                append(body)
    except IndexError:
        del parts[head:]
        if closer_fields:
            parts += closer_peer_bodies
        else:
            for body in closer_peer_bodies:
                append(_len_field(b"\x42", body))
        for body in provider_peer_bodies:
            append(_len_field(b"\x4a", body))
    body = b"".join(parts)
    if framed:  # one more copy of the body is cheaper than summing the parts' lengths
        n = len(body)
        return (_BYTE[n] if n < 0x80 else _varint(n)) + body
    return body


def frame(body: bytes) -> bytes:
    """``uvarint(len(body)) | body``, one message as it goes on the stream."""
    n = len(body)
    return (_BYTE[n] if n < 0x80 else _varint(n)) + body


# ---------------------------------------------------------------- decoding

class _Truncated(Exception):
    """Internal: a varint or field ran past the end of its message."""


def _varint_rest(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """Finish a varint whose first byte ``first`` (>= 0x80) was read; ``pos``
    is just after it. Raises IndexError when the data ends inside it."""
    value = first & 0x7F
    shift = 7
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & _U64, pos
        shift += 7
        if shift >= 7 * _MAX_VARINT_BYTES:
            raise KadCodecError("varint longer than 10 bytes")


def _skip(data: bytes, pos: int, end: int, tag: int, known: frozenset[int], where: str) -> int:
    """Step over an unknown field; refuse a known field of the wrong wire type."""
    number = tag >> 3
    wt = tag & 7
    if number == 0 or tag > _U32:
        raise KadCodecError(f"invalid field number in {where}")
    if number in known:
        raise KadCodecError(f"{where} field {number} has wrong wire type {wt}")
    if wt == 0:
        b = data[pos]
        pos += 1
        if b >= 0x80:
            _, pos = _varint_rest(data, pos, b)
        return pos
    if wt == 2:
        n = data[pos]
        pos += 1
        if n >= 0x80:
            n, pos = _varint_rest(data, pos, n)
        pos += n
    elif wt == 1:
        pos += 8
    elif wt == 5:
        pos += 4
    else:
        raise KadCodecError(f"unsupported wire type {wt} in {where}")
    if pos > end:
        raise _Truncated
    return pos


_MESSAGE_FIELDS = frozenset((1, 2, 3, 8, 9, 10))
_PEER_FIELDS = frozenset((1, 2, 3))
_RECORD_FIELDS = frozenset((1, 2, 5, 666, 777))

_PID_CACHE: dict[bytes, PeerId] = {}
#: raw address -> (address without a trailing /p2p or None if nothing is
#: left, PeerId bytes of the trailing /p2p or None)
_ADDR_CACHE: dict[bytes, tuple[Multiaddr | None, bytes | None]] = {}
#: raw Peer body -> its decoded fields (a fresh KadPeer is built from them)
_PEER_CACHE: dict[bytes, tuple[PeerId, tuple[Multiaddr, ...], ConnectionType]] = {}


def decode_cache_sizes() -> tuple[int, int, int]:
    """Entries in the decode caches of PeerIds, addresses and Peer
    messages now (each at most ``CACHE_SIZE``)."""
    return len(_PID_CACHE), len(_ADDR_CACHE), len(_PEER_CACHE)


def clear_decode_caches() -> None:
    """Empty the decode caches (they fill again as messages are decoded)."""
    _PID_CACHE.clear()
    _ADDR_CACHE.clear()
    _PEER_CACHE.clear()


def _peer_id(raw: bytes) -> PeerId | None:
    pid = _PID_CACHE.get(raw)
    if pid is None:
        try:
            pid = PeerId(raw)
        except PeerIdError:
            return None
        if len(raw) <= _MAX_CACHED_ID:
            if len(_PID_CACHE) >= CACHE_SIZE:
                _PID_CACHE.clear()
            _PID_CACHE[raw] = pid
    return pid


def _parse_addr(raw: bytes) -> tuple[Multiaddr | None, bytes | None] | None:
    try:
        addr = Multiaddr.from_bytes(raw)
        tail = addr.peer_id()
    except (MultiaddrError, PeerIdError):
        return None
    entry: tuple[Multiaddr | None, bytes | None]
    if tail is None:
        entry = (addr, None)
    else:
        base = addr.without_peer_id()
        entry = (base if len(base) else None, tail.to_bytes())
    if len(raw) <= _MAX_CACHED_ADDR:
        if len(_ADDR_CACHE) >= CACHE_SIZE:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[raw] = entry
    return entry


def _decode_peer(data: bytes) -> KadPeer | None:
    entry = _PEER_CACHE.get(data)
    if entry is None:
        entry = _parse_peer(data)
        if entry is None:
            return None
        if len(data) <= _MAX_CACHED_PEER:
            if len(_PEER_CACHE) >= CACHE_SIZE:
                _PEER_CACHE.clear()
            _PEER_CACHE[data] = entry
    return KadPeer(entry[0], list(entry[1]), entry[2])


def _parse_peer(data: bytes) -> tuple[PeerId, tuple[Multiaddr, ...], ConnectionType] | None:
    pos = 0
    end = len(data)
    pid_raw = b""
    raw_addrs = []
    connection = 0
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint_rest(data, pos, tag)
        if tag == 0x12 or tag == 0x0A:
            n = data[pos]
            pos += 1
            if n >= 0x80:
                n, pos = _varint_rest(data, pos, n)
            stop = pos + n
            if stop > end:
                raise _Truncated
            if tag == 0x12:
                raw_addrs.append(data[pos:stop])
            else:
                pid_raw = data[pos:stop]
            pos = stop
        elif tag == 0x18:
            b = data[pos]
            pos += 1
            if b >= 0x80:
                b, pos = _varint_rest(data, pos, b)
            connection = b
        else:
            pos = _skip(data, pos, end, tag, _PEER_FIELDS, "Peer")
    peer_id = _peer_id(pid_raw)
    if peer_id is None:
        return None
    addrs = []
    cache = _ADDR_CACHE
    for raw in raw_addrs:
        entry = cache.get(raw)
        if entry is None:
            entry = _parse_addr(raw)
            if entry is None:
                continue
        addr, tail = entry
        if addr is not None and (tail is None or tail == pid_raw):  # (no tail: addr is set)
            addrs.append(addr)
    return (
        peer_id,
        tuple(addrs),
        _CONNECTION_TYPES[connection] if connection <= 3 else ConnectionType.NOT_CONNECTED,
    )


def _decode_record(data: bytes) -> KadRecord:
    pos = 0
    end = len(data)
    key = value = b""
    time_received = ""
    publisher = None
    ttl = None
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint_rest(data, pos, tag)
        if tag == 6216:  # ttl = 777, varint
            b = data[pos]
            pos += 1
            if b >= 0x80:
                b, pos = _varint_rest(data, pos, b)
            ttl = (b & _U32) or None
            continue
        if tag in (0x0A, 0x12, 0x2A, 5330):
            n = data[pos]
            pos += 1
            if n >= 0x80:
                n, pos = _varint_rest(data, pos, n)
            stop = pos + n
            if stop > end:
                raise _Truncated
            chunk = data[pos:stop]
            pos = stop
            if tag == 0x0A:
                key = chunk
            elif tag == 0x12:
                value = chunk
            elif tag == 0x2A:
                try:
                    time_received = chunk.decode()
                except UnicodeDecodeError:
                    raise KadCodecError("Record.timeReceived is not UTF-8") from None
            else:
                publisher = _peer_id(chunk) if chunk else None
            continue
        pos = _skip(data, pos, end, tag, _RECORD_FIELDS, "Record")
    return KadRecord(key, value, time_received, publisher, ttl)


def decode_message(data: bytes | bytearray | memoryview) -> KadMessage:
    """Decode one message body (without its length prefix)."""
    if data.__class__ is not bytes:
        data = bytes(data)
    try:
        return _decode_message(data)
    except (IndexError, _Truncated):
        raise KadCodecError("truncated kad message") from None


def _decode_message(data: bytes) -> KadMessage:
    pos = 0
    end = len(data)
    msg_type = 0
    key = b""
    record = None
    closer = []
    providers = []
    level = 0
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint_rest(data, pos, tag)
        if tag == 0x42 or tag == 0x4A or tag == 0x12 or tag == 0x1A:
            n = data[pos]
            pos += 1
            if n >= 0x80:
                n, pos = _varint_rest(data, pos, n)
            stop = pos + n
            if stop > end:
                raise _Truncated
            if tag == 0x42:
                peer = _decode_peer(data[pos:stop])
                if peer is not None:
                    closer.append(peer)
            elif tag == 0x12:
                key = data[pos:stop]
            elif tag == 0x4A:
                peer = _decode_peer(data[pos:stop])
                if peer is not None:
                    providers.append(peer)
            else:
                record = _decode_record(data[pos:stop])
            pos = stop
        elif tag == 0x08 or tag == 0x50:
            b = data[pos]
            pos += 1
            if b >= 0x80:
                b, pos = _varint_rest(data, pos, b)
            if tag == 0x08:
                msg_type = b
            else:
                b &= _U32
                level = b - (1 << 32) if b >= 1 << 31 else b
        else:
            pos = _skip(data, pos, end, tag, _MESSAGE_FIELDS, "Message")
    if msg_type > 5:
        raise KadCodecError(f"unknown kad message type {msg_type}")
    return KadMessage(_MESSAGE_TYPES[msg_type], key, record, closer, providers, level)


# ---------------------------------------------------------------- framing

class MessageReader:
    """Sans-IO framing of the messages on one kad stream.

    ``feed(data)`` returns the bodies of the messages completed by ``data``
    (possibly none). A declared length above ``max_size`` raises
    :class:`KadCodecError` as soon as the length prefix is read, before its
    body is buffered, so the buffer never holds more than one partial
    message (at most ``max_size`` plus its prefix). After an error or
    ``eof()`` the reader is closed.
    """

    __slots__ = ("_buf", "_max_size", "_closed")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max_size = max_size
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held of a message not yet complete."""
        return len(self._buf)

    def _fail(self, message: str) -> KadCodecError:
        self._closed = True
        self._buf = bytearray()
        return KadCodecError(message)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._closed:
            raise KadCodecError("kad message reader is closed", remote=False)
        buf = self._buf
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        elif data.__class__ is bytes:
            src = data
        else:
            src = bytes(data)
        end = len(src)
        max_size = self._max_size
        out = []
        pos = 0
        while pos < end:
            # Length prefix: minimal unsigned varint (multiformats), checked
            # against max_size as it is read.
            length = src[pos]
            i = pos + 1
            if length >= 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if i >= end:
                        length = -1  # prefix incomplete
                        break
                    b = src[i]
                    i += 1
                    length |= (b & 0x7F) << shift
                    if length > max_size:
                        raise self._fail(f"kad message length exceeds {max_size} bytes")
                    if b < 0x80:
                        if b == 0:
                            raise self._fail("non-minimal varint length prefix")
                        break
                    shift += 7
                    if shift > 63:
                        raise self._fail("varint length prefix too long")
                if length < 0:
                    break
            elif length > max_size:
                raise self._fail(f"kad message length exceeds {max_size} bytes")
            stop = i + length
            if stop > end:
                break
            out.append(bytes(src[i:stop]))
            pos = stop
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += src[pos:]
        return out

    def eof(self) -> None:
        """The remote closed its side; raises if it did so inside a message."""
        if self._closed:
            raise KadCodecError("kad message reader is closed", remote=False)
        self._closed = True
        if self._buf:
            self._buf = bytearray()
            raise KadCodecError("kad stream ended inside a message")
