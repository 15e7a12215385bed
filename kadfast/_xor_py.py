"""Plain-Python twin of ``kadfast._xor``: same behaviour, used by the tests as
an oracle and by the benchmarks as the baseline."""

from __future__ import annotations

import hashlib
import heapq

import numpy as np

from .errors import KeyspaceError

DIGEST_SIZE = 32
NUM_BUCKETS = 256


class Key:
    __slots__ = ("preimage", "digest", "_int", "_hash")

    def __init__(self, preimage) -> None:
        self.preimage: bytes | None = bytes(preimage)
        self._set_digest(hashlib.sha256(self.preimage).digest())

    def _set_digest(self, digest: bytes) -> None:
        if len(digest) != 32:
            raise KeyspaceError("a key digest is 32 bytes")
        self.digest = digest
        self._int = int.from_bytes(digest, "big")
        self._hash = hash(digest)

    @staticmethod
    def from_digest(digest) -> "Key":
        if not isinstance(digest, (bytes, bytearray, memoryview)):
            raise KeyspaceError("digest must be bytes")
        k = Key.__new__(Key)
        k.preimage = None
        k._set_digest(bytes(digest))
        return k

    def distance(self, other: "Key") -> int:
        return self._int ^ other._int

    def bucket_index(self, other: "Key") -> int:
        return (self._int ^ other._int).bit_length() - 1

    def __eq__(self, other) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return self._int == other._int

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Key({self.digest.hex()[:16]}…)"


def xor_distance(a: Key, b: Key) -> int:
    return a._int ^ b._int


def compare_distance(target: Key, a: Key, b: Key) -> int:
    da = a._int ^ target._int
    db = b._int ^ target._int
    return (da > db) - (da < db)


def bucket_index(a: Key, b: Key) -> int:
    return (a._int ^ b._int).bit_length() - 1


def _matrix(digests):
    arr = np.asarray(digests)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 32:
        raise KeyspaceError("digests must be a uint8 array of shape (N, 32)")
    return arr


def closest_digests(target: Key, digests, n: int):
    arr = _matrix(digests)
    if n < 0:
        raise KeyspaceError("n must be >= 0")
    t = target._int
    rows = arr.tobytes()
    dists = (
        (int.from_bytes(rows[i * 32:(i + 1) * 32], "big") ^ t, i) for i in range(arr.shape[0])
    )
    return np.array([i for _, i in heapq.nsmallest(n, dists)], dtype=np.int64)


def bucket_indices(local: Key, digests):
    arr = _matrix(digests)
    rows = arr.tobytes()
    t = local._int
    return np.array(
        [(int.from_bytes(rows[i * 32:(i + 1) * 32], "big") ^ t).bit_length() - 1 for i in range(arr.shape[0])],
        dtype=np.int16,
    )
