"""PeerIds: multihashes of a peer's public key (libp2p peer-ids spec)."""

from __future__ import annotations

import hashlib
from functools import total_ordering

from .errors import CryptoKeyError, DecodeError, PeerIdError, VarintError
from .keys import PublicKey
from .multibase import b58decode, b58encode, multibase_decode, multibase_encode
from .varint import decode_uvarint, encode_uvarint

__all__ = ["PeerId"]

MH_IDENTITY = 0x00
MH_SHA2_256 = 0x12
#: Public keys whose encoding is at most this long are inlined (identity multihash).
MAX_INLINE_KEY_LENGTH = 42
#: The CIDv1 multicodec of a libp2p public key.
CODEC_LIBP2P_KEY = 0x72
#: An identity multihash may carry any public key; bound it (an RSA-16384 key
#: encodes to a little over 2 KiB).
MAX_PEER_ID_BYTES = 4096


#: the PeerIds :meth:`PeerId.from_public_key` made lately (a connection's
#: key is seen in its Noise payload and again in identify); bounded
_FROM_KEY: dict[PublicKey, "PeerId"] = {}
_FROM_KEY_MAX = 1024


@total_ordering
class PeerId:
    """An immutable PeerId; compares, hashes and sorts by its bytes."""

    __slots__ = ("_bytes", "_hash")

    def __init__(self, data: bytes) -> None:
        data = bytes(data)
        _validate_multihash(data)
        self._bytes = data
        self._hash = hash(data)

    @classmethod
    def from_public_key(cls, key: PublicKey) -> "PeerId":
        known = _FROM_KEY.get(key)
        if known is not None and type(known) is cls:
            return known
        encoded = key.encode()
        if len(encoded) <= MAX_INLINE_KEY_LENGTH:
            mh = bytes([MH_IDENTITY]) + encode_uvarint(len(encoded)) + encoded
        else:
            mh = bytes([MH_SHA2_256, 32]) + hashlib.sha256(encoded).digest()
        pid = cls(mh)
        if len(_FROM_KEY) >= _FROM_KEY_MAX:
            _FROM_KEY.clear()
        _FROM_KEY[key] = pid
        return pid

    @classmethod
    def from_bytes(cls, data: bytes) -> "PeerId":
        return cls(data)

    @classmethod
    def from_string(cls, text: str) -> "PeerId":
        """Parse base58btc (``12D3KooW...``, ``Qm...``) or CIDv1 text (``bafz...``)."""
        if not isinstance(text, str) or not text:
            raise PeerIdError("empty PeerId text")
        try:
            if text[0] in "1Q":
                return cls(b58decode(text))
            raw = multibase_decode(text)
        except PeerIdError:
            raise
        except DecodeError as exc:
            raise PeerIdError(f"malformed PeerId text {text[:80]!r}: {exc}") from None
        try:
            version, pos = decode_uvarint(raw, 0)
            codec, pos = decode_uvarint(raw, pos)
        except VarintError as exc:
            raise PeerIdError(f"malformed CID: {exc}") from None
        if version != 1:
            raise PeerIdError(f"unsupported CID version {version}")
        if codec != CODEC_LIBP2P_KEY:
            raise PeerIdError(f"CID codec 0x{codec:x} is not libp2p-key (0x72)")
        return cls(raw[pos:])

    def to_bytes(self) -> bytes:
        return self._bytes

    def to_base58(self) -> str:
        return b58encode(self._bytes)

    def to_cid(self) -> str:
        """The CIDv1 text form, multibase base32 (``bafz...``)."""
        return multibase_encode(encode_uvarint(1) + encode_uvarint(CODEC_LIBP2P_KEY) + self._bytes)

    def public_key(self) -> PublicKey | None:
        """The public key inlined in an identity multihash, or None for a hashed one."""
        if self._bytes[0] != MH_IDENTITY:
            return None
        _, pos = decode_uvarint(self._bytes, 1)
        try:
            return PublicKey.decode(self._bytes[pos:])
        except CryptoKeyError as exc:
            raise PeerIdError(f"PeerId inlines a malformed key: {exc}") from None

    def matches_public_key(self, key: PublicKey) -> bool:
        return PeerId.from_public_key(key) == self

    def __bytes__(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerId({self.to_base58()!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PeerId):
            return self._bytes == other._bytes
        return NotImplemented

    def __lt__(self, other: object) -> bool:
        if isinstance(other, PeerId):
            return self._bytes < other._bytes
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[PeerId], tuple[bytes]]:
        return (PeerId, (self._bytes,))


def _validate_multihash(data: bytes) -> None:
    if len(data) > MAX_PEER_ID_BYTES:
        raise PeerIdError("PeerId too long")
    try:
        code, pos = decode_uvarint(data, 0)
        length, pos = decode_uvarint(data, pos)
    except VarintError as exc:
        raise PeerIdError(f"malformed multihash: {exc}") from None
    if len(data) - pos != length:
        raise PeerIdError("multihash length does not match its digest")
    if code == MH_SHA2_256:
        if length != 32:
            raise PeerIdError("sha2-256 multihash digest must be 32 bytes")
    elif code == MH_IDENTITY:
        if length == 0:
            raise PeerIdError("empty identity multihash")
    else:
        raise PeerIdError(f"unsupported multihash code 0x{code:x} for a PeerId")
