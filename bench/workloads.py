"""Workloads shared by bench/run.py and the pytest-benchmark suite.

Each workload is built for one implementation pair (compiled or plain-Python
twin) and returns a zero-argument callable doing ``ops`` operations, so that
both are timed on identical inputs in the same process.
"""

from __future__ import annotations

import random

import numpy as np

from kadfast import _noise, _routing, _routing_py, _xor, _xor_py
from kadfast import noise as _noise_py

IMPLS = {"compiled": (_xor, _routing), "python": (_xor_py, _routing_py)}
#: the Noise transport: compiled (kadfast._noise) and its plain-Python twin on cryptography
TRANSPORTS = {"compiled": _noise.NoiseTransport, "python": _noise_py.NoiseTransport}

TABLE_PEERS = 5_000   # peers offered to the routing table
FLAT_KEYS = 100_000   # digests in the flat scan
N_CLOSEST = 20


def _digests(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(32) for _ in range(n)]


def xor_distance(impl: str):
    x, _ = IMPLS[impl]
    keys = [x.Key.from_digest(d) for d in _digests(256, 1)]
    pairs = list(zip(keys, keys[1:] + keys[:1]))
    f = x.xor_distance

    def run():
        for a, b in pairs:
            f(a, b)

    return run, len(pairs)


def _filled_table(x, rt):
    local = x.Key.from_digest(_digests(1, 2)[0])
    table = rt.RoutingTable(local, k=20)
    for d in _digests(TABLE_PEERS, 3):
        table.update(x.Key.from_digest(d), None, 0.0, True)
    return table


def closest_table(impl: str):
    x, rt = IMPLS[impl]
    table = _filled_table(x, rt)
    targets = [x.Key.from_digest(d) for d in _digests(64, 4)]

    def run():
        for t in targets:
            table.closest(t, N_CLOSEST)

    return run, len(targets)


def closest_flat(impl: str):
    x, _ = IMPLS[impl]
    arr = np.random.default_rng(5).integers(0, 256, (FLAT_KEYS, 32), dtype=np.uint8)
    target = x.Key.from_digest(_digests(1, 6)[0])
    f = x.closest_digests

    def run():
        f(target, arr, N_CLOSEST)

    return run, 1


def table_update(impl: str):
    x, rt = IMPLS[impl]
    table = _filled_table(x, rt)
    keys = [e.key for e in table]
    random.Random(7).shuffle(keys)
    update = table.update

    def run():
        for k in keys:
            update(k, None, 1.0, True)

    return run, len(keys)


def noise_exchange(impl: str):
    """One FIND_NODE exchange over the Noise transport, both sides: a 70-byte
    request encrypted and decrypted, then a 1,100-byte reply (20 peers)."""
    cls = TRANSPORTS[impl]
    k1, k2 = _digests(2, 8)
    client, server = cls(k1, k2), cls(k2, k1)
    rnd = random.Random(9)
    request, reply = rnd.randbytes(70), rnd.randbytes(1100)

    def run():
        for _ in range(32):
            server.decrypt(client.encrypt(request))
            client.decrypt(server.encrypt(reply))

    return run, 32


WORKLOADS = {
    "xor_distance": xor_distance,
    "closest_table": closest_table,
    "closest_flat": closest_flat,
    "table_update": table_update,
    "noise_exchange": noise_exchange,
}
