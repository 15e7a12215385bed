"""kadfast: a Kademlia DHT that speaks libp2p's wire protocol, with its hot
paths compiled by Cython.

The compiled modules ``kadfast._xor``, ``kadfast._routing`` and
``kadfast._closer`` are the real implementation; importing kadfast fails
loudly when they are missing (build the package with ``pip install .``)
instead of falling back to the slow plain-Python twins (``kadfast._xor_py``,
``kadfast._routing_py``, ``kadfast._closer_py``), which exist for the tests
and the benchmarks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

try:
    from . import _closer, _routing, _xor  # noqa: F401 - only to name them when they fail
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "kadfast's compiled modules (kadfast._xor, kadfast._routing, kadfast._closer) are missing or "
        "were built for another Python: install the package with `pip install .` "
        "(or `pip install -e .`) so that Cython builds them. "
        f"Original error: {exc}"
    ) from exc

from ._routing import AppliedPending, Entry, RoutingTable
from ._xor import Key, bucket_index, closest_digests, compare_distance, xor_distance
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .keys import Ed25519KeyPair, KeyType, PublicKey, load_keypair, load_or_create_keypair, save_keypair
from .multiaddr import Multiaddr, decode_many
from .peerid import PeerId
from .store import MemoryStore, ProviderRecord, Record, RecordStore

# The network stack (asyncio, the host, the node, the client) loads on first
# use of one of its names, so that importing a sans-IO core such as
# kadfast.yamux or kadfast.kad.pb does not drag it in.
_LAZY = {
    "Config": ".kad.node",
    "GetRecordResult": ".kad.node",
    "KadNode": ".kad.node",
    "PeerRecord": ".kad.node",
    "Quorum": ".kad.node",
    "Client": ".client",
    "Host": ".net",
    "HostConfig": ".net",
    "JsonRequestResponse": ".reqresp",
}

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client
    from .kad.node import Config, GetRecordResult, KadNode, PeerRecord, Quorum
    from .net import Host, HostConfig
    from .reqresp import JsonRequestResponse


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [  # noqa: PLE0604 - *_errors_all is a list of names
    "AppliedPending",
    "Client",
    "Config",
    "GetRecordResult",
    "Host",
    "HostConfig",
    "JsonRequestResponse",
    "KadNode",
    "PeerRecord",
    "Quorum",
    "Ed25519KeyPair",
    "Entry",
    "Key",
    "KeyType",
    "MemoryStore",
    "Multiaddr",
    "PeerId",
    "ProviderRecord",
    "PublicKey",
    "Record",
    "RecordStore",
    "RoutingTable",
    "bucket_index",
    "closest_digests",
    "compare_distance",
    "decode_many",
    "load_keypair",
    "load_or_create_keypair",
    "save_keypair",
    "xor_distance",
    *_errors_all,
]
