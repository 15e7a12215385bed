"""Multiaddrs: text and binary forms, for the whole protocol table that real
libp2p peers advertise (multiformats/multiaddr protocols.csv).

A binary multiaddr is a sequence of ``uvarint(code) | value``; the value's size
is fixed per protocol or length-prefixed, so a decoder must know every code to
step over it. One bad address raises :class:`MultiaddrError` alone; callers
holding a list use :func:`decode_many` so that it never fails the whole list.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import quote, unquote

from .errors import DecodeError, MultiaddrError, PeerIdError, VarintError
from .multibase import multibase_decode, multibase_encode
from .peerid import PeerId
from .varint import decode_uvarint, encode_uvarint

__all__ = ["Multiaddr", "Protocol", "PROTOCOLS", "decode_many", "MAX_MULTIADDR_BYTES"]

#: Longest binary multiaddr we accept. go-libp2p's peer records cap a whole
#: address list well below this; a dnsaddr/certhash-heavy address is ~200 bytes.
MAX_MULTIADDR_BYTES = 1024
#: Variable-size values are length-prefixed; none of the table needs more.
MAX_VALUE_BYTES = 1024

VAR = -1  # value is uvarint-length-prefixed


@dataclass(frozen=True, slots=True)
class Protocol:
    code: int
    name: str
    size: int  # bits; 0 = no value, VAR = length-prefixed
    path: bool = False  # value is the rest of the address (unix)


_TABLE = [
    Protocol(4, "ip4", 32),
    Protocol(6, "tcp", 16),
    Protocol(33, "dccp", 16),
    Protocol(41, "ip6", 128),
    Protocol(42, "ip6zone", VAR),
    Protocol(43, "ipcidr", 8),
    Protocol(53, "dns", VAR),
    Protocol(54, "dns4", VAR),
    Protocol(55, "dns6", VAR),
    Protocol(56, "dnsaddr", VAR),
    Protocol(132, "sctp", 16),
    Protocol(273, "udp", 16),
    Protocol(275, "p2p-webrtc-star", 0),
    Protocol(276, "p2p-webrtc-direct", 0),
    Protocol(277, "p2p-stardust", 0),
    Protocol(280, "webrtc-direct", 0),
    Protocol(281, "webrtc", 0),
    Protocol(290, "p2p-circuit", 0),
    Protocol(301, "udt", 0),
    Protocol(302, "utp", 0),
    Protocol(400, "unix", VAR, path=True),
    Protocol(421, "p2p", VAR),
    Protocol(443, "https", 0),
    Protocol(444, "onion", 96),
    Protocol(445, "onion3", 296),
    Protocol(446, "garlic64", VAR),
    Protocol(447, "garlic32", VAR),
    Protocol(448, "tls", 0),
    Protocol(449, "sni", VAR),
    Protocol(454, "noise", 0),
    Protocol(460, "quic", 0),
    Protocol(461, "quic-v1", 0),
    Protocol(465, "webtransport", 0),
    Protocol(466, "certhash", VAR),
    Protocol(477, "ws", 0),
    Protocol(478, "wss", 0),
    Protocol(479, "p2p-websocket-star", 0),
    Protocol(480, "http", 0),
    Protocol(481, "http-path", VAR),
    Protocol(777, "memory", 64),
    Protocol(0x3F42, "silverpine", 0),
    Protocol(0x706C61, "plaintextv2", 0),
]

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in _TABLE}
_BY_CODE: dict[int, Protocol] = {p.code: p for p in _TABLE}
_ALIASES = {"ipfs": "p2p"}

_I2P_B64 = bytes.maketrans(b"-~", b"+/")
_I2P_B64_BACK = bytes.maketrans(b"+/", b"-~")


def _port(text: str) -> bytes:
    if not text.isdigit() or int(text) > 0xFFFF:
        raise MultiaddrError(f"invalid port {text!r}")
    return int(text).to_bytes(2, "big")


def _text_to_value(proto: Protocol, text: str) -> bytes:
    name = proto.name
    try:
        if name == "ip4":
            return ipaddress.IPv4Address(text).packed
        if name == "ip6":
            return ipaddress.IPv6Address(text).packed
        if name in ("tcp", "udp", "dccp", "sctp"):
            return _port(text)
        if name == "ipcidr":
            if not text.isdigit() or int(text) > 255:
                raise MultiaddrError(f"invalid ipcidr {text!r}")
            return bytes([int(text)])
        if name == "p2p":
            return PeerId.from_string(text).to_bytes()
        if name == "memory":
            if not text.isdigit() or int(text) >= 1 << 64:
                raise MultiaddrError(f"invalid memory address {text!r}")
            return int(text).to_bytes(8, "big")
        if name == "certhash":
            return multibase_decode(text)
        if name in ("onion", "onion3"):
            host, sep, port = text.partition(":")
            if not sep:
                raise MultiaddrError(f"{name} address lacks a port")
            raw = base64.b32decode(host.upper())
            want = 10 if name == "onion" else 35
            if len(raw) != want:
                raise MultiaddrError(f"{name} host must decode to {want} bytes")
            if not port.isdigit() or not 1 <= int(port) <= 0xFFFF:
                raise MultiaddrError(f"invalid {name} port {port!r}")
            return raw + int(port).to_bytes(2, "big")
        if name == "garlic64":
            body = text.encode().translate(_I2P_B64)
            return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
        if name == "garlic32":
            b32 = text.upper()
            return base64.b32decode(b32 + "=" * (-len(b32) % 8))
        if name == "http-path":
            return unquote(text, errors="strict").encode()
        # dns, dns4, dns6, dnsaddr, sni, ip6zone, unix: UTF-8 text.
        if not text:
            raise MultiaddrError(f"empty {name} value")
        return text.encode()
    except (ValueError, binascii.Error, DecodeError, UnicodeError) as exc:
        if isinstance(exc, MultiaddrError):
            raise
        raise MultiaddrError(f"invalid {name} value {text[:80]!r}: {exc}") from None


def _value_to_text(proto: Protocol, value: bytes) -> str:
    name = proto.name
    try:
        if name == "ip4":
            return socket.inet_ntop(socket.AF_INET, value)  # as ipaddress writes it, faster
        if name == "ip6":
            return str(ipaddress.IPv6Address(value))
        if name in ("tcp", "udp", "dccp", "sctp", "memory", "ipcidr"):
            return str(int.from_bytes(value, "big"))
        if name == "p2p":
            return PeerId(value).to_base58()
        if name == "certhash":
            return multibase_encode(value, "u")
        if name in ("onion", "onion3"):
            host = base64.b32encode(value[:-2]).decode().lower()
            return f"{host}:{int.from_bytes(value[-2:], 'big')}"
        if name == "garlic64":
            return base64.b64encode(value).translate(_I2P_B64_BACK).decode()
        if name == "garlic32":
            return base64.b32encode(value).decode().lower().rstrip("=")
        if name == "http-path":
            return quote(value.decode(), safe="")
        text = value.decode()
    except (ValueError, UnicodeError, PeerIdError) as exc:
        raise MultiaddrError(f"invalid {name} value: {exc}") from None
    if not text or ("/" in text and not proto.path) or (proto.path and not text.startswith("/")):
        # a path value (unix) is absolute in text form; a binary one that is
        # not could not survive a round trip through text
        raise MultiaddrError(f"invalid {name} value {text[:80]!r}")
    return text


def _validate_value(proto: Protocol, value: bytes) -> None:
    # Binary values must also render as text: this rejects, e.g., a p2p value
    # that is no PeerId, or a dns name with a '/'.
    _value_to_text(proto, value)


class Multiaddr:
    """An immutable multiaddr. Construct from text (``Multiaddr("/ip4/...")``)
    or bytes (:meth:`from_bytes`); equality and hashing use the binary form."""

    __slots__ = ("_bytes", "_parts")
    _bytes: bytes
    _parts: tuple[tuple[Protocol, bytes], ...]

    def __init__(self, text: str) -> None:
        if isinstance(text, Multiaddr):
            self._bytes, self._parts = text._bytes, text._parts
            return
        if not isinstance(text, str):
            raise MultiaddrError("Multiaddr() takes text; use Multiaddr.from_bytes for binary")
        parts = _parse_text(text)
        self._parts = tuple(parts)
        self._bytes = _encode(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Multiaddr":
        self = object.__new__(cls)
        data = bytes(data)
        self._parts = tuple(_parse_binary(data))
        self._bytes = data
        return self

    @classmethod
    def from_ip_port(cls, host: str, port: int, transport: str = "tcp") -> "Multiaddr":
        """``/ip4|ip6/<host>/<transport>/<port>`` from a socket address,
        without going through text (a connection's addresses are made this
        way on every accept). Raises :class:`MultiaddrError` on a bad host or
        port."""
        try:
            if ":" in host:
                ip = PROTOCOLS["ip6"], socket.inet_pton(socket.AF_INET6, host.split("%")[0])
            else:
                ip = PROTOCOLS["ip4"], socket.inet_pton(socket.AF_INET, host)
            port_bytes = port.to_bytes(2, "big")
        except (OSError, OverflowError, ValueError, TypeError):
            raise MultiaddrError(f"invalid socket address {host!r}:{port!r}") from None
        return cls._from_parts((ip, (PROTOCOLS[transport], port_bytes)))

    @classmethod
    def _from_parts(cls, parts: Iterable[tuple[Protocol, bytes]]) -> "Multiaddr":
        self = object.__new__(cls)
        self._parts = tuple(parts)
        self._bytes = _encode(self._parts)
        return self

    def to_bytes(self) -> bytes:
        return self._bytes

    def __bytes__(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        out = []
        for proto, value in self._parts:
            out.append("/" + proto.name)
            if proto.size:
                text = _value_to_text(proto, value)
                out.append(text if proto.path and text.startswith("/") else "/" + text)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Multiaddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Multiaddr):
            return self._bytes == other._bytes
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        """Components as ``(protocol name, value text or None)``."""
        for proto, value in self._parts:
            yield proto.name, (_value_to_text(proto, value) if proto.size else None)

    def __len__(self) -> int:
        return len(self._parts)

    @property
    def components(self) -> tuple[tuple[Protocol, bytes], ...]:
        """Components as ``(protocol, binary value)`` pairs, undecoded (the
        form the address's own code works on)."""
        return self._parts

    def protocols(self) -> list[str]:
        return [p.name for p, _ in self._parts]

    def value_for(self, name: str) -> str | None:
        """Text value of the first component named ``name`` (None if absent)."""
        for proto, value in self._parts:
            if proto.name == name:
                return _value_to_text(proto, value) if proto.size else ""
        return None

    def encapsulate(self, other: "Multiaddr | str") -> "Multiaddr":
        other = other if isinstance(other, Multiaddr) else Multiaddr(other)
        return Multiaddr._from_parts(self._parts + other._parts)

    def decapsulate(self, other: "Multiaddr | str") -> "Multiaddr":
        """Remove the last occurrence of ``other`` (an address, or a protocol
        name such as ``"p2p"`` or ``"/udp"``) and everything after it."""
        if isinstance(other, str) and "/" not in other.strip("/"):
            name = _ALIASES.get(other.strip("/"), other.strip("/"))
            for i in range(len(self._parts) - 1, -1, -1):
                if self._parts[i][0].name == name:
                    return Multiaddr._from_parts(self._parts[:i])
            return self
        other = other if isinstance(other, Multiaddr) else Multiaddr(other)
        n = len(other._parts)
        for i in range(len(self._parts) - n, -1, -1):
            if self._parts[i:i + n] == other._parts:
                return Multiaddr._from_parts(self._parts[:i])
        return self

    def peer_id(self) -> PeerId | None:
        """The PeerId of the trailing ``/p2p`` component, if the address ends with one."""
        if self._parts and self._parts[-1][0].name == "p2p":
            return PeerId(self._parts[-1][1])
        return None

    def with_peer_id(self, peer_id: PeerId) -> "Multiaddr":
        base = self.without_peer_id()
        return Multiaddr._from_parts(base._parts + ((PROTOCOLS["p2p"], peer_id.to_bytes()),))

    def without_peer_id(self) -> "Multiaddr":
        if self._parts and self._parts[-1][0].name == "p2p":
            return Multiaddr._from_parts(self._parts[:-1])
        return self


def _parse_text(text: str) -> list[tuple[Protocol, bytes]]:
    if len(text) > 4 * MAX_MULTIADDR_BYTES:
        raise MultiaddrError("multiaddr text too long")
    if not text.startswith("/"):
        raise MultiaddrError(f"multiaddr must start with '/': {text[:80]!r}")
    tokens = text[1:].split("/")
    if tokens == [""]:
        raise MultiaddrError("empty multiaddr")
    parts: list[tuple[Protocol, bytes]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == "" and i == len(tokens) - 1 and parts:
            break  # tolerate one trailing slash (a path keeps its own, below)
        name = _ALIASES.get(tokens[i], tokens[i])
        proto = PROTOCOLS.get(name)
        if proto is None:
            raise MultiaddrError(f"unknown multiaddr protocol {tokens[i][:40]!r}")
        i += 1
        if proto.size == 0:
            parts.append((proto, b""))
            continue
        if proto.path:
            rest = "/".join(tokens[i:])
            if not rest.strip("/"):
                raise MultiaddrError(f"{name} needs a path")
            parts.append((proto, _text_to_value(proto, "/" + rest)))
            break
        if i >= len(tokens):
            raise MultiaddrError(f"{name} needs a value")
        parts.append((proto, _text_to_value(proto, tokens[i])))
        i += 1
    return parts


def _encode(parts: Iterable[tuple[Protocol, bytes]]) -> bytes:
    out = bytearray()
    for proto, value in parts:
        out += encode_uvarint(proto.code)
        if proto.size == VAR:
            out += encode_uvarint(len(value))
        out += value
    if len(out) > MAX_MULTIADDR_BYTES:
        raise MultiaddrError("multiaddr too long")
    return bytes(out)


def _parse_binary(data: bytes) -> list[tuple[Protocol, bytes]]:
    if not data:
        raise MultiaddrError("empty binary multiaddr")
    if len(data) > MAX_MULTIADDR_BYTES:
        raise MultiaddrError("binary multiaddr too long")
    parts = []
    pos = 0
    end = len(data)
    try:
        while pos < end:
            code, pos = decode_uvarint(data, pos)
            proto = _BY_CODE.get(code)
            if proto is None:
                raise MultiaddrError(f"unknown multiaddr protocol code 0x{code:x}")
            if proto.size == VAR:
                size, pos = decode_uvarint(data, pos)
                if size > MAX_VALUE_BYTES:
                    raise MultiaddrError(f"{proto.name} value too long")
            else:
                size = proto.size // 8
            if pos + size > end:
                raise MultiaddrError(f"truncated {proto.name} value")
            value = data[pos:pos + size]
            pos += size
            if proto.path and pos != end:
                # a path (unix) takes the rest of the text form, so it must be last
                raise MultiaddrError(f"{proto.name} must be the last component")
            if proto.size:
                _validate_value(proto, value)
            parts.append((proto, value))
    except VarintError as exc:
        raise MultiaddrError(f"bad varint in multiaddr: {exc}") from None
    return parts


def decode_many(items: Iterable[bytes]) -> tuple[list[Multiaddr], list[MultiaddrError]]:
    """Decode a list of binary multiaddrs, keeping the good ones: one bad
    address is returned among the errors, never raised for the whole list."""
    good, bad = [], []
    for item in items:
        try:
            good.append(Multiaddr.from_bytes(item))
        except MultiaddrError as exc:
            bad.append(exc)
    return good, bad
