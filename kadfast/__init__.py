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

__version__ = "0.1.0"

try:
    from . import _closer, _routing, _xor  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "kadfast's compiled modules (kadfast._xor, kadfast._routing, kadfast._closer) are missing or "
        "were built for another Python: install the package with `pip install .` "
        "(or `pip install -e .`) so that Cython builds them. "
        f"Original error: {exc}"
    ) from exc

from ._routing import AppliedPending, Entry, RoutingTable
from ._xor import Key, bucket_index, closest_digests, compare_distance, xor_distance
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .keys import Ed25519KeyPair, KeyType, PublicKey, load_keypair, load_or_create_keypair, save_keypair
from .multiaddr import Multiaddr, decode_many
from .peerid import PeerId
from .store import MemoryStore, ProviderRecord, Record, RecordStore
from .kad.node import Config, GetRecordResult, KadNode, PeerRecord, Quorum
from .client import BootstrapError, Client, NoPeersInNamespace
from .net import Host, HostConfig
from .reqresp import JsonRequestResponse

__all__ = [
    "AppliedPending",
    "BootstrapError",
    "Client",
    "Config",
    "GetRecordResult",
    "Host",
    "HostConfig",
    "JsonRequestResponse",
    "KadNode",
    "NoPeersInNamespace",
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
