"""Error types of kadfast.

Every error that kadfast raises on bad input derives from :class:`KadfastError`,
so that a caller handling untrusted data (bytes from the network, files,
command-line text) can catch one type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .peerid import PeerId

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
    "TlsCertificateError",
    "YamuxError",
    "IdentifyError",
    "DialError",
    "DialRefused",
    "DialTimeout",
    "DialWrongPeer",
    "DialNegotiationFailed",
    "DialBackoff",
    "DialNoAddresses",
    "DialLimitReached",
    "QuicUnavailable",
    "ProtocolNotSupported",
    "StreamReset",
    "StreamClosed",
    "NoisePeerIdMismatch",
    "KadCodecError",
    "IpnsError",
    "InvalidRecord",
    "RateLimited",
    "KadError",
    "NoKnownPeers",
    "QuorumFailed",
    "NotFound",
    "ValueTooLarge",
    "TooManyQueries",
    "BootstrapError",
    "NoPeersInNamespace",
    "RequestError",
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


class TlsCertificateError(ProtocolError):
    """A peer's libp2p TLS certificate does not authenticate it (not exactly
    one certificate, outside its validity, a bad self-signature, no or a
    malformed libp2p public key extension, an unknown critical extension,
    a host-key signature that does not verify)."""


class YamuxError(ProtocolError):
    """A Yamux session error (malformed frame, window violation, too many streams)."""


class IdentifyError(ProtocolError):
    """A malformed identify message."""


class NoisePeerIdMismatch(NoiseError):
    """The remote authenticated as another peer than the one expected."""

    def __init__(self, expected: PeerId, actual: PeerId) -> None:
        super().__init__(f"peer id mismatch: remote is {actual}, expected peer {expected}")
        self.expected = expected
        self.actual = actual


class KadCodecError(ProtocolError):
    """A malformed kad message or frame (``remote=True``), or a message we
    were asked to encode that cannot be (``remote=False``)."""


class IpnsError(KadfastError):
    """A malformed or invalid IPNS record (or bad input to sign one)."""


class InvalidRecord(KadfastError):
    """A record that its namespace's validator refuses."""


class RateLimited(KadfastError):
    """A peer sent requests faster than its limit allows; its stream is reset."""


class DialError(KadfastError, ConnectionError):
    """A dial failed; subclasses in kadfast.net say how."""


class DialRefused(DialError):
    """The TCP connection was refused or the host unreachable."""


class DialTimeout(DialError):
    """The TCP connect or the upgrade did not finish in time."""


class DialWrongPeer(DialError):
    """The peer at that address proved another identity than the one dialed."""


class DialNegotiationFailed(DialError):
    """The upgrade failed: no common security or muxer protocol, or a broken handshake."""


class DialBackoff(DialError):
    """The peer failed recently; dialing it again waits until the back-off ends."""


class DialNoAddresses(DialError):
    """No dialable (TCP or QUIC) address is known for the peer."""


class DialLimitReached(DialError):
    """The connection limit is reached."""


class QuicUnavailable(KadfastError, OSError):
    """QUIC cannot run in this Python: aioquic needs the ``ssl`` module,
    which needs the system's OpenSSL. Listening on a QUIC address raises it;
    dials use the peer's TCP addresses alone."""


class ProtocolNotSupported(KadfastError):
    """The peer supports none of the protocols proposed for a stream."""


class StreamReset(KadfastError, ConnectionResetError):
    """The stream was reset (by the peer, by us, or because its connection closed)."""


class StreamClosed(KadfastError, BrokenPipeError):
    """Writing to a stream whose write side is closed."""


class KadError(KadfastError):
    """A Kademlia operation failed."""


class NoKnownPeers(KadError):
    """The routing table is empty: add a bootstrap address first."""


class QuorumFailed(KadError):
    """Fewer peers stored a record than the quorum asked for."""

    def __init__(self, key: bytes, stored: int, quorum: int) -> None:
        super().__init__(f"record stored on {stored} peers; quorum needs {quorum}")
        self.key = key
        self.stored = stored
        self.quorum = quorum


class NotFound(KadError):
    """No record (or peer) was found."""


class ValueTooLarge(KadError):
    """A record whose key or value is above the limits that let it reach
    peers and be read back (``Config.max_value_size``, ``max_key_size``)."""


class TooManyQueries(KadError):
    """A query pool already runs as many lookups as its limit allows."""


class BootstrapError(KadfastError):
    """No bootstrap node could be reached."""


class NoPeersInNamespace(KadfastError):
    """Nobody in the namespace answered."""


class RequestError(KadfastError):
    """A JSON request failed: the peer was unreachable, reset the stream,
    timed out, or answered with something that is not JSON."""
