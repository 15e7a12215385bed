"""Identity keys: Ed25519 key pairs of our own, and remote public keys of every
libp2p key type (Ed25519, RSA, secp256k1, ECDSA), with signatures.

Encodings follow the libp2p peer-ids spec: ``PublicKey{Type=1, Data=2}`` and
``PrivateKey{Type=1, Data=2}`` protobufs, with ``Data`` as that spec gives it
per key type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .errors import CryptoKeyError, KeyFileError, ProtobufError, SignatureError
from .protobuf import WT_LEN, WT_VARINT, field_bytes, field_varint, iter_fields

if TYPE_CHECKING:
    from .peerid import PeerId

__all__ = [
    "KeyType",
    "PublicKey",
    "Ed25519KeyPair",
    "load_keypair",
    "save_keypair",
    "load_or_create_keypair",
]

#: A key file holds one small protobuf; anything larger is not a key file.
MAX_KEY_FILE_BYTES = 16 * 1024
#: RSA keys below 2048 bits are refused by go and rust libp2p; above 16384 bits
#: verification gets expensive enough to be a denial-of-service lever.
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384


class KeyType(IntEnum):
    RSA = 0
    ED25519 = 1
    SECP256K1 = 2
    ECDSA = 3


def _decode_key_proto(data: bytes) -> tuple[KeyType, bytes]:
    key_type = None
    key_data = None
    try:
        for number, wt, value in iter_fields(data):
            if number == 1 and wt == WT_VARINT:
                key_type = value
            elif number == 2 and wt == WT_LEN:
                key_data = value
    except ProtobufError as exc:
        raise CryptoKeyError(f"malformed key protobuf: {exc}") from None
    if key_type is None or key_data is None:
        raise CryptoKeyError("key protobuf lacks Type or Data")
    try:
        return KeyType(key_type), key_data
    except ValueError:
        raise CryptoKeyError(f"unknown key type {key_type}") from None


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key of any libp2p key type, able to verify signatures."""

    key_type: KeyType
    data: bytes
    #: the parsed key (Any: which verify() it has depends on key_type)
    _key: Any = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Parse once, up front, so that a malformed key fails here, not at verify().
        object.__setattr__(self, "key_type", KeyType(self.key_type))
        object.__setattr__(self, "_key", _parse_public(self.key_type, self.data))

    def encode(self) -> bytes:
        """The libp2p protobuf encoding (what a PeerId hashes)."""
        return field_varint(1, int(self.key_type)) + field_bytes(2, self.data)

    @classmethod
    def decode(cls, data: bytes) -> "PublicKey":
        """The key of a libp2p key protobuf. A key decoded lately is handed
        out again (a connection's key comes in its Noise payload and again
        in identify): keys are immutable, and the memo is bounded."""
        if type(data) is not bytes:
            data = bytes(data)  # a memoryview or bytearray: a hashable copy
        key = _DECODED.get(data)
        if key is None:
            key_type, key_data = _decode_key_proto(data)
            key = cls(key_type, key_data)
            if len(_DECODED) >= _DECODED_MAX:
                _DECODED.clear()
            _DECODED[data] = key
        return key

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is valid for ``message``; never raises on bad input."""
        key = self._key
        try:
            if self.key_type is KeyType.ED25519:
                key.verify(signature, message)
            elif self.key_type is KeyType.RSA:
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def check(self, message: bytes, signature: bytes) -> None:
        """Like :meth:`verify` but raises :class:`SignatureError` on a bad signature."""
        if not self.verify(message, signature):
            raise SignatureError(f"invalid {self.key_type.name} signature")


#: the keys :meth:`PublicKey.decode` made lately, by their encoding
_DECODED: dict[bytes, PublicKey] = {}
_DECODED_MAX = 1024


def _parse_public(key_type: KeyType, data: bytes) -> Any:
    try:
        if key_type is KeyType.ED25519:
            if len(data) != 32:
                raise CryptoKeyError(f"Ed25519 public key must be 32 bytes, got {len(data)}")
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        if key_type is KeyType.SECP256K1:
            if len(data) not in (33, 65):
                raise CryptoKeyError("secp256k1 public key must be 33 or 65 bytes")
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
        key = serialization.load_der_public_key(data)
    except CryptoKeyError:
        raise
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise CryptoKeyError(f"malformed {key_type.name} public key: {exc}") from None
    if key_type is KeyType.RSA:
        if not isinstance(key, rsa.RSAPublicKey):
            raise CryptoKeyError("RSA key data is not an RSA key")
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise CryptoKeyError(f"RSA key size {key.key_size} out of range")
    elif key_type is KeyType.ECDSA:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CryptoKeyError("ECDSA key data is not an EC key")
    return key


class Ed25519KeyPair:
    """Our own identity: an Ed25519 key pair."""

    __slots__ = ("_private", "public_bytes", "public_key")

    def __init__(self, private: ed25519.Ed25519PrivateKey) -> None:
        self._private = private
        self.public_bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = PublicKey(KeyType.ED25519, self.public_bytes)

    @classmethod
    def generate(cls) -> "Ed25519KeyPair":
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "Ed25519KeyPair":
        if len(seed) != 32:
            raise CryptoKeyError("an Ed25519 seed is 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    @property
    def peer_id(self) -> PeerId:
        from .peerid import PeerId

        return PeerId.from_public_key(self.public_key)

    def encode_private(self) -> bytes:
        """libp2p ``PrivateKey`` protobuf: Ed25519 data is seed || public key."""
        return field_varint(1, KeyType.ED25519) + field_bytes(2, self.seed + self.public_bytes)

    @classmethod
    def decode_private(cls, data: bytes) -> "Ed25519KeyPair":
        key_type, key_data = _decode_key_proto(data)
        if key_type is not KeyType.ED25519:
            raise CryptoKeyError(f"only Ed25519 private keys are supported, got {key_type.name}")
        # 64 bytes (seed || public) is the spec's form; older go keys repeat the
        # public key (96 bytes); a bare 32-byte seed is accepted too.
        if len(key_data) not in (32, 64, 96):
            raise CryptoKeyError(f"Ed25519 private key data has bad length {len(key_data)}")
        pair = cls.from_seed(key_data[:32])
        for extra in (key_data[32:64], key_data[64:96]):
            if extra and extra != pair.public_bytes:
                raise CryptoKeyError("Ed25519 private key data: public key does not match the seed")
        return pair


def save_keypair(pair: Ed25519KeyPair, path: str | os.PathLike[str]) -> None:
    """Write the key file atomically, readable by its owner only (mode 0600)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pair.encode_private())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror or exc}") from None


def load_keypair(path: str | os.PathLike[str]) -> Ed25519KeyPair:
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {path} is too large to be a key")
    try:
        return Ed25519KeyPair.decode_private(data)
    except CryptoKeyError as exc:
        raise KeyFileError(f"key file {path} is malformed: {exc}") from None


def load_or_create_keypair(path: str | os.PathLike[str]) -> Ed25519KeyPair:
    """Load the key at ``path``, or create it there when the file does not exist."""
    if os.path.exists(path):
        return load_keypair(path)
    pair = Ed25519KeyPair.generate()
    save_keypair(pair, path)
    return pair
