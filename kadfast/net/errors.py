"""How a dial can fail (the classes live in :mod:`kadfast.errors`, with every
other error of kadfast; this module names the network's share of them)."""

from __future__ import annotations

from ..errors import (
    DialBackoff,
    DialError,
    DialLimitReached,
    DialNegotiationFailed,
    DialNoAddresses,
    DialRefused,
    DialTimeout,
    DialWrongPeer,
    ProtocolNotSupported,
)

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
