"""Identify (``/ipfs/id/1.0.0``) and identify push (``/ipfs/id/push/1.0.0``),
sans-IO (libp2p/specs identify/README.md).

The identified side writes ``uvarint(len) | Identify`` and closes the stream;
for push, the pushing side opens the stream, writes the same message and
closes. go-libp2p may split one logical message in parts: when the message
with its signed peer record exceeds 2 KiB it writes the message without the
record, then a second message holding only the record, and its reader merges
up to 10 parts until EOF (``proto.Merge``: repeated fields append, scalars are
replaced). rust-libp2p writes and reads exactly one message. :class:`IdentifyReader`
therefore accepts one or more parts and merges them the way protobuf does:
concatenated encodings of a message decode as their merge, so the parts are
kept as one payload and decoded with :func:`decode_identify`.

Decoding is lenient where the other implementations are: unknown fields are
skipped, an address that does not parse is dropped alone (and counted), a
protocol name that is not UTF-8 or not ``/``-prefixed is dropped alone (as
rust does), and the free-form version strings are decoded with replacement
characters. A malformed protobuf, a known field with the wrong wire type, a
malformed public key and an oversized message raise :class:`IdentifyError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .errors import CryptoKeyError, IdentifyError, MultiaddrError, PeerIdError, ProtobufError, VarintError
from .keys import PublicKey
from .multiaddr import Multiaddr
from .peerid import PeerId
from .protobuf import WT_LEN, field_bytes, iter_fields
from .varint import decode_uvarint, encode_uvarint

__all__ = [
    "PROTOCOL_ID",
    "PUSH_PROTOCOL_ID",
    "MAX_IDENTIFY_BYTES",
    "MAX_SEND_IDENTIFY_BYTES",
    "MAX_IDENTIFY_PARTS",
    "MAX_ADDRS",
    "MAX_PROTOCOLS",
    "MAX_PROTOCOL_NAME_BYTES",
    "IdentifyInfo",
    "IdentifyReader",
    "IdentifyEncoder",
    "encode_identify",
    "decode_identify",
    "merge_push",
]

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"

#: Largest identify payload we accept on one stream (all parts together).
#: The others read at most: rust-libp2p 4096 bytes (one message), go-libp2p
#: 8 KiB per part (``signedIDSize``, up to 10 parts), js-libp2p 8 KiB. Real
#: go/js peers listing many addresses, protocols and a signed peer record
#: approach 8 KiB, so we are generous: 64 KiB.
MAX_IDENTIFY_BYTES = 64 * 1024
#: Largest payload we send: rust-libp2p rejects anything above 4096 bytes, and
#: go-libp2p trims its own message to 4 KiB for that reason.
MAX_SEND_IDENTIFY_BYTES = 4096
#: go-libp2p reads at most 10 parts (``maxMessages``) before giving up.
MAX_IDENTIFY_PARTS = 10
#: Listen addresses kept from one message; the rest are ignored (go-libp2p
#: keeps at most 500 for a connected peer, ``connectedPeerMaxAddrs``).
MAX_ADDRS = 500
#: Protocols kept from one message; the rest are ignored (go-libp2p's
#: peerstore refuses more than 128 protocols per peer).
MAX_PROTOCOLS = 128
#: Longest protocol name kept (go-multistream and js cap a protocol at 1024).
MAX_PROTOCOL_NAME_BYTES = 1024

_F_PUBLIC_KEY = 1
_F_LISTEN_ADDRS = 2
_F_PROTOCOLS = 3
_F_OBSERVED_ADDR = 4
_F_PROTOCOL_VERSION = 5
_F_AGENT_VERSION = 6
_F_SIGNED_PEER_RECORD = 8
_KNOWN_FIELDS = frozenset(
    (_F_PUBLIC_KEY, _F_LISTEN_ADDRS, _F_PROTOCOLS, _F_OBSERVED_ADDR, _F_PROTOCOL_VERSION,
     _F_AGENT_VERSION, _F_SIGNED_PEER_RECORD)
)


@dataclass(frozen=True, slots=True)
class IdentifyInfo:
    """One decoded identify message (or the merge of a push into an earlier one).

    ``peer_id`` is derived from ``public_key``. ``bad_addrs`` counts addresses
    that failed to parse and were dropped: listen addresses and the observed
    address. An empty string, an empty tuple and None all mean "absent".
    """

    public_key: PublicKey | None = None
    listen_addrs: tuple[Multiaddr, ...] = ()
    protocols: tuple[str, ...] = ()
    observed_addr: Multiaddr | None = None
    protocol_version: str = ""
    agent_version: str = ""
    signed_peer_record: bytes | None = None
    bad_addrs: int = 0
    peer_id: PeerId | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "listen_addrs", tuple(self.listen_addrs))
        object.__setattr__(self, "protocols", tuple(self.protocols))
        pid = PeerId.from_public_key(self.public_key) if self.public_key is not None else None
        object.__setattr__(self, "peer_id", pid)

    def encode(self, *, max_bytes: int = MAX_SEND_IDENTIFY_BYTES) -> bytes:
        """:func:`encode_identify` of this message's fields (with the length prefix)."""
        return encode_identify(
            public_key=self.public_key,
            listen_addrs=self.listen_addrs,
            protocols=self.protocols,
            observed_addr=self.observed_addr,
            protocol_version=self.protocol_version,
            agent_version=self.agent_version,
            signed_peer_record=self.signed_peer_record,
            max_bytes=max_bytes,
        )


def _payload(public_key, listen_addrs, protocols, observed_addr, protocol_version,
             agent_version, signed_peer_record) -> bytes:
    out = bytearray()
    if protocol_version:
        out += field_bytes(_F_PROTOCOL_VERSION, protocol_version.encode())
    if agent_version:
        out += field_bytes(_F_AGENT_VERSION, agent_version.encode())
    if public_key is not None:
        out += field_bytes(_F_PUBLIC_KEY, public_key.encode())
    for addr in listen_addrs:
        out += field_bytes(_F_LISTEN_ADDRS, addr.to_bytes())
    if observed_addr is not None:
        out += field_bytes(_F_OBSERVED_ADDR, observed_addr.to_bytes())
    for proto in protocols:
        out += field_bytes(_F_PROTOCOLS, proto.encode())
    if signed_peer_record:
        out += field_bytes(_F_SIGNED_PEER_RECORD, signed_peer_record)
    return bytes(out)


def encode_identify(
    *,
    public_key: PublicKey | None = None,
    listen_addrs: Iterable[Multiaddr] = (),
    protocols: Iterable[str] = (),
    observed_addr: Multiaddr | None = None,
    protocol_version: str = "",
    agent_version: str = "",
    signed_peer_record: bytes | None = None,
    max_bytes: int = MAX_SEND_IDENTIFY_BYTES,
) -> bytes:
    """Encode an identify message, WITH its uvarint length prefix.

    Empty strings and None are left out (for a push: "unchanged"). When the
    payload exceeds ``max_bytes`` (default: what rust-libp2p accepts) the
    signed peer record is dropped first, then listen addresses from the end
    (so list them best first); if it still does not fit, raises
    :class:`IdentifyError` with ``remote=False``.
    """
    addrs = list(listen_addrs)
    protocols = list(protocols)
    args = [public_key, addrs, protocols, observed_addr, protocol_version, agent_version, signed_peer_record]
    payload = _payload(*args)
    if len(payload) > max_bytes and signed_peer_record:
        args[6] = None
        payload = _payload(*args)
    if len(payload) > max_bytes and addrs:
        # Drop trailing addresses in one pass: each costs its field's size.
        excess = len(payload) - max_bytes
        while addrs and excess > 0:
            excess -= len(field_bytes(_F_LISTEN_ADDRS, addrs.pop().to_bytes()))
        payload = _payload(*args)
    if len(payload) > max_bytes:
        raise IdentifyError(
            f"identify message of {len(payload)} bytes exceeds {max_bytes} even without addresses",
            remote=False,
        )
    return encode_uvarint(len(payload)) + payload


class IdentifyEncoder:
    """:func:`encode_identify` for a host that tells every peer the same but
    the observed address: the rest is encoded once per (listen addresses,
    protocols) and kept (at most ``cache_size`` variants), so an accepted
    connection costs one field's encoding. Byte for byte what
    :func:`encode_identify` makes (it is used whenever the size limit bites)."""

    __slots__ = ("public_key", "protocol_version", "agent_version", "max_bytes", "cache_size", "_cache")

    def __init__(self, public_key: PublicKey | None, protocol_version: str = "", agent_version: str = "", *,
                 max_bytes: int = MAX_SEND_IDENTIFY_BYTES, cache_size: int = 64) -> None:
        self.public_key = public_key
        self.protocol_version = protocol_version
        self.agent_version = agent_version
        self.max_bytes = max_bytes
        self.cache_size = cache_size
        self._cache: dict[tuple, tuple[bytes, bytes]] = {}

    @property
    def cached(self) -> int:
        """Encodings held (at most ``cache_size``)."""
        return len(self._cache)

    def encode(self, listen_addrs: Iterable[Multiaddr], protocols: Iterable[str],
               observed_addr: Multiaddr | None) -> bytes:
        """The length-prefixed identify message."""
        addrs, protos = tuple(listen_addrs), tuple(protocols)
        key = (addrs, protos)
        hit = self._cache.get(key)
        if hit is None:
            hit = (
                _payload(self.public_key, addrs, (), None, self.protocol_version, self.agent_version, None),
                _payload(None, (), protos, None, "", "", None),
            )
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[key] = hit
        observed = b"" if observed_addr is None else field_bytes(_F_OBSERVED_ADDR, observed_addr.to_bytes())
        size = len(hit[0]) + len(observed) + len(hit[1])
        if size > self.max_bytes:
            return encode_identify(public_key=self.public_key, listen_addrs=addrs, protocols=protos,
                                   observed_addr=observed_addr, protocol_version=self.protocol_version,
                                   agent_version=self.agent_version, max_bytes=self.max_bytes)
        return encode_uvarint(size) + hit[0] + observed + hit[1]


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def decode_identify(payload: bytes, *, max_bytes: int = MAX_IDENTIFY_BYTES) -> IdentifyInfo:
    """Decode an identify payload given WITHOUT its length prefix.

    Repeated scalars follow protobuf: the last occurrence wins, so the
    concatenation of several parts decodes as their merge.
    """
    if len(payload) > max_bytes:
        raise IdentifyError(f"identify message of {len(payload)} bytes exceeds {max_bytes}")
    key_bytes = None
    raw_addrs: list[bytes] = []
    protocols: list[str] = []
    seen_protocols: set[str] = set()
    observed = None
    protocol_version = ""
    agent_version = ""
    spr = None
    try:
        for number, wt, value in iter_fields(payload):
            if number not in _KNOWN_FIELDS:
                continue
            if wt != WT_LEN:
                raise IdentifyError(f"identify field {number} has wire type {wt}, expected 2")
            if number == _F_LISTEN_ADDRS:
                if len(raw_addrs) < MAX_ADDRS:
                    raw_addrs.append(value)
            elif number == _F_PROTOCOLS:
                if len(protocols) < MAX_PROTOCOLS and 0 < len(value) <= MAX_PROTOCOL_NAME_BYTES:
                    try:
                        name = value.decode("utf-8")
                    except UnicodeDecodeError:
                        continue
                    if name.startswith("/") and name not in seen_protocols:
                        seen_protocols.add(name)
                        protocols.append(name)
            elif number == _F_PUBLIC_KEY:
                key_bytes = value
            elif number == _F_OBSERVED_ADDR:
                observed = value
            elif number == _F_PROTOCOL_VERSION:
                protocol_version = _text(value)
            elif number == _F_AGENT_VERSION:
                agent_version = _text(value)
            else:
                spr = value
    except ProtobufError as exc:
        raise IdentifyError(f"malformed identify message: {exc}") from None

    public_key = None
    if key_bytes is not None:
        try:
            public_key = PublicKey.decode(key_bytes)
        except (CryptoKeyError, ValueError) as exc:
            raise IdentifyError(f"identify carries a malformed public key: {exc}") from None

    bad = 0
    addrs: list[Multiaddr] = []
    seen_addrs: set[Multiaddr] = set()
    for raw in raw_addrs:
        try:
            addr = Multiaddr.from_bytes(raw)
        except (MultiaddrError, PeerIdError):
            bad += 1
            continue
        if addr not in seen_addrs:
            seen_addrs.add(addr)
            addrs.append(addr)
    observed_addr = None
    if observed:  # rust sends an empty observedAddr when it has none
        try:
            observed_addr = Multiaddr.from_bytes(observed)
        except (MultiaddrError, PeerIdError):
            bad += 1
    try:
        return IdentifyInfo(
            public_key=public_key,
            listen_addrs=tuple(addrs),
            protocols=tuple(protocols),
            observed_addr=observed_addr,
            protocol_version=protocol_version,
            agent_version=agent_version,
            signed_peer_record=spr or None,
            bad_addrs=bad,
        )
    except PeerIdError as exc:  # pragma: no cover - a decoded key always makes a PeerId
        raise IdentifyError(f"identify public key yields no PeerId: {exc}") from None


def merge_push(old: IdentifyInfo, new: IdentifyInfo) -> IdentifyInfo:
    """Apply a pushed message to what we knew: every field present in ``new``
    replaces the old one; absent fields (None, empty string, empty list) keep
    their old value, as the spec asks (rust-libp2p ``Info::merge`` does the
    same). ``bad_addrs`` is the push's own count."""
    return IdentifyInfo(
        public_key=new.public_key if new.public_key is not None else old.public_key,
        listen_addrs=new.listen_addrs or old.listen_addrs,
        protocols=new.protocols or old.protocols,
        observed_addr=new.observed_addr if new.observed_addr is not None else old.observed_addr,
        protocol_version=new.protocol_version or old.protocol_version,
        agent_version=new.agent_version or old.agent_version,
        signed_peer_record=new.signed_peer_record or old.signed_peer_record,
        bad_addrs=new.bad_addrs,
    )


class IdentifyReader:
    """Incremental reader of the identify (or push) stream's contents.

    ``feed(data)`` returns the merged :class:`IdentifyInfo` of all parts read
    so far each time one or more parts complete, otherwise None. The final
    answer is ``eof()``'s, once the remote closed its side (go may still send
    a part holding only its signed peer record). A caller that acts on the
    first complete message, as rust does, may stop at the first non-None
    ``feed``. Errors raise :class:`IdentifyError`; after an error or
    ``eof()`` the reader is closed.
    """

    __slots__ = ("_buf", "_parts", "_total", "_max_bytes", "_max_parts", "_closed", "_need", "_first")

    def __init__(self, *, max_bytes: int = MAX_IDENTIFY_BYTES, max_parts: int = MAX_IDENTIFY_PARTS) -> None:
        self._buf = bytearray()
        self._parts = bytearray()  # payloads of complete parts, concatenated
        self._total = 0  # number of complete parts
        self._max_bytes = max_bytes
        self._max_parts = max_parts
        self._closed = False
        self._need = -1  # payload length of the part being read, -1 until its prefix is read
        self._first: IdentifyInfo | None = None  # the first part decoded: the whole message while it is alone

    @property
    def parts(self) -> int:
        """Number of complete parts read."""
        return self._total

    def _fail(self, message: str) -> IdentifyError:
        self._closed = True
        self._buf.clear()
        return IdentifyError(message)

    def feed(self, data: bytes) -> IdentifyInfo | None:
        if self._closed:
            raise IdentifyError("identify reader is closed", remote=False)
        buf = self._buf
        buf += data
        completed = False
        while True:
            if self._need < 0:
                if not buf:
                    break
                if len(buf) < 9 and all(b & 0x80 for b in buf):
                    break  # the length prefix is still incomplete
                try:
                    length, pos = decode_uvarint(buf, 0)
                except VarintError as exc:
                    raise self._fail(f"bad identify length prefix: {exc}") from None
                if self._total >= self._max_parts:
                    raise self._fail(f"more than {self._max_parts} identify parts")
                size = len(self._parts) + length
                if size > self._max_bytes:
                    raise self._fail(f"identify message of {size} bytes exceeds {self._max_bytes}")
                del buf[:pos]
                self._need = length
            if len(buf) < self._need:
                break
            part = bytes(buf[: self._need])
            # each part must be a whole message by itself, so that the outcome
            # never depends on how the bytes were split into reads
            try:
                info = decode_identify(part, max_bytes=self._max_bytes)
            except IdentifyError:
                self._closed = True
                raise
            if not self._total:
                self._first = info
            self._parts += part
            del buf[: self._need]
            self._need = -1
            self._total += 1
            completed = True
        if not completed:
            return None
        return self._decode()

    def _decode(self) -> IdentifyInfo:
        if self._total == 1 and self._first is not None:
            return self._first  # one part (the usual case): decoded once
        try:
            return decode_identify(bytes(self._parts), max_bytes=self._max_bytes)
        except IdentifyError:
            self._closed = True
            raise

    def eof(self) -> IdentifyInfo:
        """The remote closed its side: return the merged message."""
        if self._closed:
            raise IdentifyError("identify reader is closed", remote=False)
        self._closed = True
        if self._buf or self._need >= 0:
            raise IdentifyError("identify stream closed inside a message")
        if not self._total:
            raise IdentifyError("identify stream closed before any message")
        return self._decode()
