"""What a Kademlia node tells its subscribers (``KadNode.events()``,
``KadNode.subscribe()``): routing-table changes, lookups' progress, records
stored and expired, requests served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..multiaddr import Multiaddr
from ..peerid import PeerId
from .pb import MessageType
from .query import QueryStats

__all__ = ["RoutingUpdated", "UnroutablePeer", "QueryProgressed", "RecordExpired", "InboundRequest", "RecordStored"]


@dataclass(frozen=True, slots=True)
class RoutingUpdated:
    peer: PeerId
    addrs: tuple[Multiaddr, ...]
    is_new_peer: bool
    bucket: int
    evicted: PeerId | None = None


@dataclass(frozen=True, slots=True)
class UnroutablePeer:
    peer: PeerId


@dataclass(frozen=True, slots=True)
class QueryProgressed:
    kind: str
    key: bytes
    stats: QueryStats
    finished: bool
    result: Any = None


@dataclass(frozen=True, slots=True)
class RecordExpired:
    key: bytes


@dataclass(frozen=True, slots=True)
class InboundRequest:
    peer: PeerId
    type: MessageType


@dataclass(frozen=True, slots=True)
class RecordStored:
    key: bytes
    publisher: PeerId | None
    from_peer: PeerId | None
