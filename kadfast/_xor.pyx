# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Kademlia key space, compiled: keys, XOR distance, bucket index, and a
batch scan for the n closest of many digests.

The plain-Python twin is ``kadfast._xor_py``; both must behave identically.
"""

cimport cython
from libc.stdint cimport uint64_t, int64_t, int16_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import hashlib
import numpy as np

from kadfast.errors import KeyspaceError

# SHA-256 of key preimages (every FIND_NODE target is hashed once): CPython's
# own implementation where the interpreter has it (3.12+: _sha2; 3.11:
# _sha256), hashlib's OpenSSL one otherwise. Hot, both take ~0.3 us; on a
# server answering one request at a time the OpenSSL path (a digest context
# made, copied and freed per call) costs ~2.5 us of server CPU per FIND_NODE
# more (docs/benchmarks.md), while the built-in one is one small
# compression loop. The digests are the same (tests check against hashlib).
try:
    from _sha2 import sha256 as _sha256_impl
    KEY_SHA256 = "cpython"
except ImportError:
    try:
        from _sha256 import sha256 as _sha256_impl
        KEY_SHA256 = "cpython"
    except ImportError:  # an interpreter built without its own hashes
        _sha256_impl = hashlib.sha256
        KEY_SHA256 = "hashlib"

cdef object _sha256 = _sha256_impl

DIGEST_SIZE = 32
NUM_BUCKETS = 256


cdef extern from *:
    """
    static inline uint64_t kf_load_be64(const unsigned char* p) {
        uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v);
    }
    static inline int kf_clz64(uint64_t v) { return __builtin_clzll(v); }
    """
    uint64_t kf_load_be64(const unsigned char* p) nogil
    int kf_clz64(uint64_t v) nogil


cdef inline void load_words(const unsigned char* p, uint64_t* w) noexcept nogil:
    w[0] = kf_load_be64(p)
    w[1] = kf_load_be64(p + 8)
    w[2] = kf_load_be64(p + 16)
    w[3] = kf_load_be64(p + 24)


cdef inline int bucket_of(const uint64_t* a, const uint64_t* b) noexcept nogil:
    """floor(log2(a ^ b)), or -1 when a == b."""
    cdef uint64_t x
    cdef int i
    for i in range(4):
        x = a[i] ^ b[i]
        if x:
            return 255 - 64 * i - kf_clz64(x)
    return -1


cdef inline int cmp_words(const uint64_t* a, const uint64_t* b) noexcept nogil:
    cdef int i
    for i in range(4):
        if a[i] != b[i]:
            return -1 if a[i] < b[i] else 1
    return 0


@cython.final
cdef class Key:
    """A Kademlia key: the original bytes (``preimage``) and their SHA-256
    ``digest``, computed once. Keys compare and hash by digest."""

    def __init__(self, preimage):
        cdef bytes pre = bytes(preimage)
        self.preimage = pre
        self._set_digest(_sha256(pre).digest())

    cdef int _set_digest(self, bytes digest) except -1:
        if PyBytes_GET_SIZE(digest) != 32:
            raise KeyspaceError("a key digest is 32 bytes")
        self.digest = digest
        load_words(<const unsigned char*>PyBytes_AS_STRING(digest), self.w)
        self._hash = hash(digest)
        self._int = None
        return 0

    cdef inline object as_int(self):
        if self._int is None:
            self._int = int.from_bytes(self.digest, "big")
        return self._int

    @staticmethod
    def from_digest(digest):
        """A key given by its digest (no preimage), e.g. a random lookup target."""
        if not isinstance(digest, (bytes, bytearray, memoryview)):
            raise KeyspaceError("digest must be bytes")
        cdef Key k = Key.__new__(Key)
        k.preimage = None
        k._set_digest(bytes(digest))
        return k

    def distance(self, Key other not None):
        """XOR distance as an int in [0, 2**256)."""
        return xor_distance(self, other)

    def bucket_index(self, Key other not None):
        return bucket_of(self.w, other.w)

    def __eq__(self, other):
        if not isinstance(other, Key):
            return NotImplemented
        return cmp_words(self.w, (<Key>other).w) == 0

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"Key({self.digest.hex()[:16]}…)"

    def __reduce__(self):
        if self.preimage is None:
            return (Key.from_digest, (self.digest,))
        return (Key, (self.preimage,))


def xor_distance(Key a not None, Key b not None):
    """XOR distance of two keys, as an int read big-endian."""
    return a.as_int() ^ b.as_int()


def compare_distance(Key target not None, Key a not None, Key b not None):
    """-1, 0 or 1 as ``a`` is closer to, as close as, or farther from ``target`` than ``b``."""
    cdef int i
    cdef uint64_t da, db
    for i in range(4):
        da = a.w[i] ^ target.w[i]
        db = b.w[i] ^ target.w[i]
        if da != db:
            return -1 if da < db else 1
    return 0


def bucket_index(Key a not None, Key b not None):
    """floor(log2(distance(a, b))) in 0..255, or -1 when the keys are equal."""
    return bucket_of(a.w, b.w)


cdef const unsigned char[:, ::1] _as_digest_matrix(digests) except *:
    arr = np.asarray(digests)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 32:
        raise KeyspaceError("digests must be a uint8 array of shape (N, 32)")
    return np.ascontiguousarray(arr)


cdef inline bint _farther(const uint64_t* a, int64_t ia, const uint64_t* b, int64_t ib) noexcept nogil:
    # (distance, index) order: equal distances (duplicate digests) go by index,
    # as in the plain-Python twin
    cdef int c = cmp_words(a, b)
    return c > 0 or (c == 0 and ia > ib)


cdef inline void _sift_down(uint64_t* hd, int64_t* hi, Py_ssize_t size, Py_ssize_t pos,
                            const uint64_t* d, int64_t idx) noexcept nogil:
    # place (d, idx) at ``pos`` of the max-heap and sift it down
    cdef Py_ssize_t child
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _farther(&hd[4 * (child + 1)], hi[child + 1], &hd[4 * child], hi[child]):
            child += 1
        if not _farther(&hd[4 * child], hi[child], d, idx):
            break
        memcpy(&hd[4 * pos], &hd[4 * child], 32)
        hi[pos] = hi[child]
        pos = child
    memcpy(&hd[4 * pos], d, 32)
    hi[pos] = idx


def closest_digests(Key target not None, digests, Py_ssize_t n):
    """Indices (int64, closest first) of the ``n`` digests nearest to ``target``.

    One pass over the array keeping a max-heap of the best ``n``; most rows are
    rejected after one 64-bit compare, so the whole array is never sorted.
    """
    cdef const unsigned char[:, ::1] m = _as_digest_matrix(digests)
    cdef Py_ssize_t count = m.shape[0]
    if n < 0:
        raise KeyspaceError("n must be >= 0")
    if n > count:
        n = count
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    cdef int64_t[::1] res = out
    heap_d = np.empty(4 * n, dtype=np.uint64)
    heap_i = np.empty(n, dtype=np.int64)
    cdef uint64_t[::1] hd_view = heap_d
    cdef int64_t[::1] hi_view = heap_i
    cdef uint64_t* hd = &hd_view[0]
    cdef int64_t* hi = &hi_view[0]
    cdef const unsigned char* row = &m[0, 0]
    cdef Py_ssize_t size = 0, i, pos, parent, j
    cdef uint64_t d[4]
    cdef uint64_t tmp[4]
    cdef uint64_t t0 = target.w[0], t1 = target.w[1], t2 = target.w[2], t3 = target.w[3]
    cdef uint64_t worst0 = 0          # first word of the farthest kept (heap root)
    cdef int64_t ti
    with nogil:
        for i in range(count):
            d[0] = kf_load_be64(row) ^ t0
            if size == n:
                if d[0] > worst0:
                    row += 32
                    continue
                d[1] = kf_load_be64(row + 8) ^ t1
                d[2] = kf_load_be64(row + 16) ^ t2
                d[3] = kf_load_be64(row + 24) ^ t3
                if cmp_words(d, hd) < 0:
                    _sift_down(hd, hi, size, 0, d, i)
                    worst0 = hd[0]
            else:
                d[1] = kf_load_be64(row + 8) ^ t1
                d[2] = kf_load_be64(row + 16) ^ t2
                d[3] = kf_load_be64(row + 24) ^ t3
                pos = size
                size += 1
                while pos > 0:
                    parent = (pos - 1) // 2
                    if not _farther(d, i, &hd[4 * parent], hi[parent]):
                        break
                    memcpy(&hd[4 * pos], &hd[4 * parent], 32)
                    hi[pos] = hi[parent]
                    pos = parent
                memcpy(&hd[4 * pos], d, 32)
                hi[pos] = i
                worst0 = hd[0]
            row += 32
        # heap-sort: move the farthest to the end, one at a time
        j = size - 1
        while j >= 0:
            res[j] = hi[0]
            memcpy(tmp, &hd[4 * j], 32)
            ti = hi[j]
            _sift_down(hd, hi, j, 0, tmp, ti)
            j -= 1
    return out


def bucket_indices(Key local not None, digests):
    """Bucket index of every digest relative to ``local`` (int16; -1 where equal)."""
    cdef const unsigned char[:, ::1] m = _as_digest_matrix(digests)
    cdef Py_ssize_t count = m.shape[0], i
    out = np.empty(count, dtype=np.int16)
    cdef int16_t[::1] res = out
    cdef uint64_t w[4]
    with nogil:
        for i in range(count):
            load_words(&m[i, 0], w)
            res[i] = <int16_t>bucket_of(local.w, w)
    return out
