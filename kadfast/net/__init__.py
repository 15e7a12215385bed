"""The asyncio layer: TCP connections upgraded with multistream-select, Noise
and Yamux, streams, protocol handlers, identify and ping."""

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
from .connection import Connection
from .host import ConnectionClosed, ConnectionEstablished, Host, HostConfig, HostUsage, PeerIdentified
from .stream import Stream, StreamClosed, StreamReset

__all__ = [
    "Connection",
    "ConnectionClosed",
    "ConnectionEstablished",
    "HostUsage",
    "DialBackoff",
    "DialError",
    "DialLimitReached",
    "DialNegotiationFailed",
    "DialNoAddresses",
    "DialRefused",
    "DialTimeout",
    "DialWrongPeer",
    "Host",
    "HostConfig",
    "PeerIdentified",
    "ProtocolNotSupported",
    "Stream",
    "StreamClosed",
    "StreamReset",
]
