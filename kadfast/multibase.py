"""The text encodings that PeerIds use: base58btc, and multibase base32 for CIDs."""

from __future__ import annotations

import base64
import binascii

from .errors import DecodeError

__all__ = ["b58encode", "b58decode", "multibase_encode", "multibase_decode"]

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
#: A PeerId text is at most a few hundred characters; refusing longer input
#: keeps the quadratic-ish big-int conversion bounded.
MAX_TEXT_LEN = 4096


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    chars = []
    while n:
        n, r = divmod(n, 58)
        chars.append(_B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(chars))


def b58decode(text: str) -> bytes:
    if len(text) > MAX_TEXT_LEN:
        raise DecodeError("base58 text too long")
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise DecodeError(f"invalid base58 character {c!r}") from None
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def multibase_encode(data: bytes, base: str = "b") -> str:
    if base == "b":
        return "b" + base64.b32encode(data).decode().lower().rstrip("=")
    if base == "z":
        return "z" + b58encode(data)
    if base == "f":
        return "f" + data.hex()
    if base == "u":
        return "u" + base64.urlsafe_b64encode(data).decode().rstrip("=")
    raise DecodeError(f"unsupported multibase {base!r}")


def multibase_decode(text: str) -> bytes:
    """Decode multibase text: b/B (base32), z (base58btc), f/F (hex), u (base64url), m (base64)."""
    if not text or len(text) > MAX_TEXT_LEN:
        raise DecodeError("empty or oversized multibase text")
    prefix, body = text[0], text[1:]
    try:
        if prefix in "bB":
            body = body.upper()
            return base64.b32decode(body + "=" * (-len(body) % 8))
        if prefix == "z":
            return b58decode(body)
        if prefix in "fF":
            return bytes.fromhex(body)
        if prefix == "u":
            return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if prefix == "m":
            return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"malformed multibase text: {exc}") from None
    raise DecodeError(f"unsupported multibase prefix {prefix!r}")
