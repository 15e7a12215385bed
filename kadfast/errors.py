"""Error types of kadfast.

Every error that kadfast raises on bad input derives from :class:`KadfastError`,
so that a caller handling untrusted data (bytes from the network, files,
command-line text) can catch one type.
"""

from __future__ import annotations

__all__ = [
    "KadfastError",
    "DecodeError",
    "VarintError",
    "ProtobufError",
    "CryptoKeyError",
    "KeyFileError",
    "SignatureError",
    "PeerIdError",
    "MultiaddrError",
    "KeyspaceError",
    "RoutingError",
    "StoreError",
    "RecordTooLarge",
    "StoreFull",
    "ProtocolError",
    "MultistreamError",
    "NoiseError",
    "YamuxError",
    "IdentifyError",
    "DialError",
]


class KadfastError(Exception):
    """Base of every error raised by kadfast."""


class DecodeError(KadfastError, ValueError):
    """Bytes or text that do not decode to what they claim to be."""


class VarintError(DecodeError):
    """A malformed, oversized or non-minimal unsigned varint."""


class ProtobufError(DecodeError):
    """A malformed protobuf message."""


class CryptoKeyError(KadfastError, ValueError):
    """A malformed or unsupported public or private key."""


class KeyFileError(KadfastError, OSError):
    """A key file that is missing, unreadable or malformed."""


class SignatureError(KadfastError):
    """A signature that does not verify."""


class PeerIdError(DecodeError):
    """A malformed PeerId (bytes or text)."""


class MultiaddrError(DecodeError):
    """A malformed multiaddr (text or binary), or one with an unknown protocol."""


class KeyspaceError(KadfastError, ValueError):
    """Bad input to the key-space functions (wrong digest length, bad array shape)."""


class RoutingError(KadfastError, ValueError):
    """Bad input to the routing table."""


class StoreError(KadfastError):
    """A record or provider record that the store refuses."""


class RecordTooLarge(StoreError):
    """A record value above the store's size limit."""


class StoreFull(StoreError):
    """The store holds as many records (or provided keys) as its limit allows."""


class ProtocolError(KadfastError):
    """A peer broke a wire protocol. ``remote`` is True when the peer's bytes
    were at fault, False for a local misuse of the API."""

    def __init__(self, message: str, *, remote: bool = True, code: int | None = None) -> None:
        super().__init__(message)
        self.remote = remote
        #: the protocol's own error code, where it has one (Yamux GoAway codes)
        self.code = code


class MultistreamError(ProtocolError):
    """multistream-select failed: malformed message, or no common protocol."""


class NoiseError(ProtocolError):
    """The Noise handshake or transport failed (bad signature, wrong peer,
    decryption failure, malformed frame)."""


class YamuxError(ProtocolError):
    """A Yamux session error (malformed frame, window violation, too many streams)."""


class IdentifyError(ProtocolError):
    """A malformed identify message."""


class DialError(KadfastError, ConnectionError):
    """A dial failed; subclasses in kadfast.net say how."""
