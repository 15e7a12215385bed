"""How a dial or a stream can fail."""

from __future__ import annotations

from ..errors import DialError, KadfastError

__all__ = [
    "DialError",
    "DialRefused",
    "DialTimeout",
    "DialWrongPeer",
    "DialNegotiationFailed",
    "DialBackoff",
    "DialNoAddresses",
    "DialLimitReached",
    "ProtocolNotSupported",
]


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
    """No dialable (TCP) address is known for the peer."""


class DialLimitReached(DialError):
    """The connection limit is reached."""


class ProtocolNotSupported(KadfastError):
    """The peer supports none of the protocols proposed for a stream."""
