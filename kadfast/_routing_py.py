"""Plain-Python twin of ``kadfast._routing``: the same routing table, used by
the tests as an oracle and by the benchmarks as the baseline."""

from __future__ import annotations

from ._xor_py import Key
from .errors import RoutingError

INSERTED = 1
UPDATED = 2
PENDING = 3
FULL = 4
SELF = 5
DEFAULT_K = 20
DEFAULT_PENDING_TIMEOUT = 60.0
MAX_K = 1024


class Entry:
    __slots__ = ("key", "value", "connected", "last_seen")

    def __init__(self, key, value, connected, last_seen):
        self.key = key
        self.value = value
        self.connected = connected
        self.last_seen = last_seen

    def __repr__(self):
        return f"Entry({self.key!r}, connected={self.connected}, last_seen={self.last_seen})"


class AppliedPending:
    __slots__ = ("inserted", "evicted")

    def __init__(self, inserted, evicted):
        self.inserted = inserted
        self.evicted = evicted


class _Bucket:
    __slots__ = ("entries", "n_disconnected", "pending", "pending_deadline")

    def __init__(self):
        self.entries = []
        self.n_disconnected = 0
        self.pending = None
        self.pending_deadline = 0.0


class RoutingTable:
    def __init__(self, local_key: Key, k: int = DEFAULT_K, pending_timeout: float = DEFAULT_PENDING_TIMEOUT):
        if not 1 <= k <= MAX_K:
            raise RoutingError(f"k must be in 1..{MAX_K}")
        if not pending_timeout >= 0:
            raise RoutingError("pending_timeout must be >= 0")
        self.local_key = local_key
        self.k = k
        self.pending_timeout = float(pending_timeout)
        self._buckets = [_Bucket() for _ in range(256)]
        self._size = 0
        self._applied: list[AppliedPending] = []

    def _bucket_for(self, key):
        b = self.local_key.bucket_index(key)
        return None if b < 0 else self._buckets[b]

    @staticmethod
    def _find(bucket, key):
        for i in range(len(bucket.entries) - 1, -1, -1):
            if bucket.entries[i].key == key:
                return i
        return -1

    @staticmethod
    def _place(bucket, e):
        if e.connected:
            bucket.entries.append(e)
        else:
            bucket.entries.insert(bucket.n_disconnected, e)
            bucket.n_disconnected += 1

    def _apply_pending(self, bucket):
        pending, bucket.pending = bucket.pending, None
        evicted = None
        if len(bucket.entries) >= self.k:
            if bucket.n_disconnected == 0:
                return
            evicted = bucket.entries.pop(0)
            bucket.n_disconnected -= 1
        else:
            self._size += 1
        self._place(bucket, pending)
        self._applied.append(AppliedPending(pending, evicted))

    def update(self, key, value, now, connected=True):
        bucket = self._bucket_for(key)
        if bucket is None:
            return SELF
        connected = bool(connected)
        if bucket.pending is not None and now >= bucket.pending_deadline:
            self._apply_pending(bucket)
        i = self._find(bucket, key)
        if i >= 0:
            e = bucket.entries[i]
            if value is not None:
                e.value = value
            if connected:
                e.last_seen = now
                if e.connected and i == len(bucket.entries) - 1:
                    return UPDATED
            elif not e.connected:
                return UPDATED
            del bucket.entries[i]
            if not e.connected:
                bucket.n_disconnected -= 1
            e.connected = connected
            self._place(bucket, e)
            return UPDATED
        if bucket.pending is not None and bucket.pending.key == key:
            e = bucket.pending
            if value is not None:
                e.value = value
            e.connected = connected
            if connected:
                e.last_seen = now
            return PENDING
        if len(bucket.entries) < self.k:
            self._place(bucket, Entry(key, value, connected, now))
            self._size += 1
            return INSERTED
        if bucket.n_disconnected == 0 or bucket.pending is not None:
            return FULL
        bucket.pending = Entry(key, value, connected, now)
        bucket.pending_deadline = now + self.pending_timeout
        return PENDING

    def remove(self, key):
        bucket = self._bucket_for(key)
        if bucket is None:
            return None
        i = self._find(bucket, key)
        if i < 0:
            if bucket.pending is not None and bucket.pending.key == key:
                e, bucket.pending = bucket.pending, None
                return e
            return None
        e = bucket.entries.pop(i)
        if not e.connected:
            bucket.n_disconnected -= 1
        self._size -= 1
        if bucket.pending is not None:
            self._apply_pending(bucket)
        return e

    def get(self, key):
        bucket = self._bucket_for(key)
        if bucket is None:
            return None
        i = self._find(bucket, key)
        return None if i < 0 else bucket.entries[i]

    def __contains__(self, key):
        return isinstance(key, Key) and self.get(key) is not None

    def __len__(self):
        return self._size

    def __iter__(self):
        for bucket in self._buckets:
            yield from list(bucket.entries)

    def _check_index(self, index):
        if not 0 <= index < 256:
            raise RoutingError("bucket index must be in 0..255")

    def bucket(self, index):
        self._check_index(index)
        return list(self._buckets[index].entries)

    def pending(self, index):
        self._check_index(index)
        return self._buckets[index].pending

    def pending_deadline(self, index):
        self._check_index(index)
        b = self._buckets[index]
        return None if b.pending is None else b.pending_deadline

    def nonempty_buckets(self):
        return [i for i in range(256) if self._buckets[i].entries]

    def apply_pending(self, now):
        count = 0
        for bucket in self._buckets:
            if bucket.pending is not None and now >= bucket.pending_deadline:
                self._apply_pending(bucket)
                count += 1
        return count

    def pop_applied(self):
        out, self._applied = self._applied, []
        return out

    def closest(self, target, n=-1):
        if n < 0:
            n = self.k
        out: list[Entry] = []
        if n == 0 or self._size == 0:
            return out
        d = self.local_key.distance(target)
        order = [i for i in range(255, -1, -1) if d >> i & 1] + [i for i in range(256) if not d >> i & 1]
        for i in order:
            entries = self._buckets[i].entries
            if not entries:
                continue
            for e in sorted(entries, key=lambda e: e.key.distance(target)):
                out.append(e)
                if len(out) >= n:
                    return out
        return out
