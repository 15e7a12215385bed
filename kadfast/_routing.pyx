# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Kademlia routing table, compiled: 256 k-buckets in least-recently-seen
order with a pending entry per full bucket, and ``closest()`` that visits
buckets in the order the distance bits give instead of sorting the table.

Time is an argument (``now``, seconds on any monotonic clock); nothing here
reads a clock. The plain-Python twin is ``kadfast._routing_py``.
"""

cimport cython
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE

from kadfast._xor cimport Key, bucket_of, cmp_words

from kadfast.errors import RoutingError

# Results of RoutingTable.update()
INSERTED = 1   # a new entry went into its bucket
UPDATED = 2    # a known entry was refreshed (value, status, recency)
PENDING = 3    # the bucket is full: the entry waits as the bucket's pending entry
FULL = 4       # rejected: the bucket is full of connected entries, or has a pending entry already
SELF = 5       # rejected: the key is the table's own key

cdef int _INSERTED = 1, _UPDATED = 2, _PENDING = 3, _FULL = 4, _SELF = 5

#: rust-libp2p's defaults: k = 20, pending entries wait 60 s.
DEFAULT_K = 20
DEFAULT_PENDING_TIMEOUT = 60.0
MAX_K = 1024


cdef class Entry:
    """One routing-table entry: its key, the caller's value, its status
    (its fields are declared in ``_routing.pxd``)."""

    def __repr__(self):
        return f"Entry({self.key!r}, connected={self.connected}, last_seen={self.last_seen})"


@cython.final
cdef class AppliedPending:
    """A pending entry that entered its bucket, and the entry it evicted (or None)."""
    cdef readonly Entry inserted
    cdef readonly Entry evicted

    def __repr__(self):
        return f"AppliedPending(inserted={self.inserted!r}, evicted={self.evicted!r})"


@cython.final
cdef class _Bucket:
    # entries[:n_disconnected] are disconnected, the rest connected; each part
    # in least-recently-seen order (head first).
    cdef list entries
    cdef int n_disconnected
    cdef Entry pending
    cdef double pending_deadline

    def __cinit__(self):
        self.entries = []
        self.n_disconnected = 0
        self.pending = None


cdef inline Entry _new_entry(Key key, object value, bint connected, double now):
    cdef Entry e = Entry.__new__(Entry)
    e.key = key
    e.value = value
    e.connected = connected
    e.last_seen = now
    return e


@cython.final
cdef class RoutingTable:
    cdef readonly Key local_key
    cdef readonly int k
    cdef readonly double pending_timeout
    cdef list _buckets
    cdef Py_ssize_t _size
    cdef list _applied
    cdef uint64_t* _scratch     # k distances, 4 words each
    cdef int* _order

    def __cinit__(self, Key local_key not None, int k=DEFAULT_K, double pending_timeout=DEFAULT_PENDING_TIMEOUT):
        if k < 1 or k > MAX_K:
            raise RoutingError(f"k must be in 1..{MAX_K}")
        if not pending_timeout >= 0:
            raise RoutingError("pending_timeout must be >= 0")
        self.local_key = local_key
        self.k = k
        self.pending_timeout = pending_timeout
        self._buckets = [_Bucket() for _ in range(256)]
        self._size = 0
        self._applied = []
        self._scratch = <uint64_t*>malloc(k * 4 * sizeof(uint64_t))
        self._order = <int*>malloc(k * sizeof(int))
        if self._scratch == NULL or self._order == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self._scratch)
        free(self._order)

    cdef inline _Bucket _bucket_for(self, Key key):
        cdef int b = bucket_of(self.local_key.w, key.w)
        if b < 0:
            return None
        return <_Bucket>PyList_GET_ITEM(self._buckets, b)

    cdef inline Py_ssize_t _find(self, _Bucket bucket, Key key):
        cdef list entries = bucket.entries
        cdef Py_ssize_t i, n = PyList_GET_SIZE(entries)
        cdef Entry e
        for i in range(n - 1, -1, -1):   # recent entries are at the tail
            e = <Entry>PyList_GET_ITEM(entries, i)
            if e.key is key or cmp_words(e.key.w, key.w) == 0:
                return i
        return -1

    cdef inline void _place(self, _Bucket bucket, Entry e):
        # connected entries go to the tail, disconnected ones after the last disconnected
        if e.connected:
            bucket.entries.append(e)
        else:
            bucket.entries.insert(bucket.n_disconnected, e)
            bucket.n_disconnected += 1

    cdef void _apply_pending(self, _Bucket bucket):
        cdef Entry pending = bucket.pending
        cdef Entry evicted = None
        cdef AppliedPending ap
        bucket.pending = None
        if PyList_GET_SIZE(bucket.entries) >= self.k:
            if bucket.n_disconnected == 0:
                return                # every entry answered: the pending one is dropped
            evicted = <Entry>bucket.entries.pop(0)
            bucket.n_disconnected -= 1
        else:
            self._size += 1
        self._place(bucket, pending)
        ap = AppliedPending.__new__(AppliedPending)
        ap.inserted = pending
        ap.evicted = evicted
        self._applied.append(ap)

    def update(self, Key key not None, value, double now, bint connected=True):
        """Insert or refresh ``key``. ``value=None`` keeps a known entry's value.

        Returns INSERTED, UPDATED, PENDING, FULL or SELF. A due pending entry of
        the key's bucket is applied first; see :meth:`pop_applied`.
        """
        cdef int b = bucket_of(self.local_key.w, key.w)
        if b < 0:
            return _SELF
        cdef _Bucket bucket = <_Bucket>PyList_GET_ITEM(self._buckets, b)
        if bucket.pending is not None and now >= bucket.pending_deadline:
            self._apply_pending(bucket)
        cdef list entries = bucket.entries
        cdef Py_ssize_t n = PyList_GET_SIZE(entries)
        cdef Py_ssize_t i = self._find(bucket, key)
        cdef Entry e
        if i >= 0:
            e = <Entry>PyList_GET_ITEM(entries, i)
            if value is not None:
                e.value = value
            if connected:
                e.last_seen = now
                if e.connected and i == n - 1:
                    return _UPDATED       # already the most recent: nothing moves
            elif not e.connected:
                return _UPDATED           # stays where it is among the disconnected
            del entries[i]
            if not e.connected:
                bucket.n_disconnected -= 1
            e.connected = connected
            self._place(bucket, e)
            return _UPDATED
        if bucket.pending is not None and cmp_words(bucket.pending.key.w, key.w) == 0:
            e = bucket.pending
            if value is not None:
                e.value = value
            e.connected = connected
            if connected:
                e.last_seen = now
            return _PENDING
        if n < self.k:
            self._place(bucket, _new_entry(key, value, connected, now))
            self._size += 1
            return _INSERTED
        if bucket.n_disconnected == 0 or bucket.pending is not None:
            return _FULL
        bucket.pending = _new_entry(key, value, connected, now)
        bucket.pending_deadline = now + self.pending_timeout
        return _PENDING

    def remove(self, Key key not None):
        """Remove ``key`` (also as a pending entry); returns its Entry or None.
        A waiting pending entry takes the freed place at once."""
        cdef _Bucket bucket = self._bucket_for(key)
        if bucket is None:
            return None
        cdef Py_ssize_t i = self._find(bucket, key)
        cdef Entry e
        if i < 0:
            if bucket.pending is not None and cmp_words(bucket.pending.key.w, key.w) == 0:
                e = bucket.pending
                bucket.pending = None
                return e
            return None
        e = <Entry>bucket.entries.pop(i)
        if not e.connected:
            bucket.n_disconnected -= 1
        self._size -= 1
        if bucket.pending is not None:
            self._apply_pending(bucket)
        return e

    def get(self, Key key not None):
        cdef _Bucket bucket = self._bucket_for(key)
        if bucket is None:
            return None
        cdef Py_ssize_t i = self._find(bucket, key)
        return None if i < 0 else bucket.entries[i]

    def __contains__(self, key):
        return isinstance(key, Key) and self.get(key) is not None

    def __len__(self):
        return self._size

    def __iter__(self):
        cdef _Bucket bucket
        for bucket in self._buckets:
            yield from list(bucket.entries)

    def bucket(self, int index):
        """Entries of bucket ``index``, least recently seen first."""
        if not 0 <= index < 256:
            raise RoutingError("bucket index must be in 0..255")
        return list((<_Bucket>self._buckets[index]).entries)

    def pending(self, int index):
        """The pending entry of bucket ``index``, or None."""
        if not 0 <= index < 256:
            raise RoutingError("bucket index must be in 0..255")
        return (<_Bucket>self._buckets[index]).pending

    def pending_deadline(self, int index):
        if not 0 <= index < 256:
            raise RoutingError("bucket index must be in 0..255")
        cdef _Bucket bucket = self._buckets[index]
        return None if bucket.pending is None else bucket.pending_deadline

    def nonempty_buckets(self):
        return [i for i in range(256) if (<_Bucket>self._buckets[i]).entries]

    def apply_pending(self, double now):
        """Apply every pending entry whose timeout has passed; returns how many
        were considered. Their results are reported by :meth:`pop_applied`."""
        cdef _Bucket bucket
        cdef int count = 0
        for bucket in self._buckets:
            if bucket.pending is not None and now >= bucket.pending_deadline:
                self._apply_pending(bucket)
                count += 1
        return count

    def pop_applied(self):
        """The AppliedPending results since the last call (oldest first)."""
        out = self._applied
        self._applied = []
        return out

    def closest(self, Key target not None, Py_ssize_t n=-1):
        """The ``n`` entries closest to ``target`` (default k), closest first.

        Buckets are visited so that every entry of a later bucket is farther
        than every entry of an earlier one: first the buckets whose bit is set
        in distance(local, target), highest first, then the others, lowest
        first. Only one bucket at a time is sorted. Distinct keys have distinct
        distances, so the order has no ties.
        """
        if n < 0:
            n = self.k
        out = []
        if n == 0 or self._size == 0:
            return out
        cdef uint64_t d[4]
        cdef int j, i, phase, bit
        for j in range(4):
            d[j] = self.local_key.w[j] ^ target.w[j]
        cdef Py_ssize_t got = 0
        for phase in range(2):
            for j in range(256):
                i = 255 - j if phase == 0 else j
                bit = (d[3 - (i >> 6)] >> (i & 63)) & 1
                if bit != (1 - phase):
                    continue
                got = self._emit_sorted(<_Bucket>PyList_GET_ITEM(self._buckets, i), target, out, got, n)
                if got >= n:
                    return out
        return out

    cdef Py_ssize_t _emit_sorted(self, _Bucket bucket, Key target, list out, Py_ssize_t got, Py_ssize_t n) except -1:
        cdef list entries = bucket.entries
        cdef Py_ssize_t c = PyList_GET_SIZE(entries)
        if c == 0:
            return got
        cdef uint64_t* s = self._scratch
        cdef int* order = self._order
        cdef Entry e
        cdef int a, b, w, tmp
        for a in range(c):
            e = <Entry>PyList_GET_ITEM(entries, a)
            for w in range(4):
                s[4 * a + w] = e.key.w[w] ^ target.w[w]
            # insertion sort of indices by distance
            b = a
            while b > 0 and cmp_words(&s[4 * order[b - 1]], &s[4 * a]) > 0:
                order[b] = order[b - 1]
                b -= 1
            order[b] = a
        for a in range(c):
            out.append(<object>PyList_GET_ITEM(entries, order[a]))
            got += 1
            if got >= n:
                break
        return got
