"""The iterative closest-peers lookup, sans-IO.

:class:`ClosestPeersIter` decides which peers to ask next while a lookup walks
towards a target key; the caller sends the requests and reports each answer
back. It does no I/O and reads no clock: every call that depends on time takes
``now`` (seconds on the caller's monotonic clock), and :meth:`next_deadline`
tells the caller when to call :meth:`next` again if nothing else happens.

:class:`QueryPool` runs many lookups side by side, as rust-libp2p's
``QueryPool`` does: each query is a ``ClosestPeersIter`` under an integer id,
``poll(now)`` returns the actions due over all of them (:class:`SendRequest`,
:class:`QueryFinished`), the answers are fed back by query id, and
``next_deadline()`` is the one timer the caller needs. The pool holds at most
``max_queries`` queries (:class:`~kadfast.errors.TooManyQueries` past it).

The behaviour follows rust-libp2p's ``ClosestPeersIter``:

* Candidates are kept sorted by XOR distance to the target and contacted
  closest first, at most ``parallelism`` at a time while the lookup makes
  progress (*Iterating*).
* A response makes progress when it brings a new peer that ranks among the
  ``num_results`` closest known before it (current rust-libp2p; before 2024
  it had to be closer than all of them), or while fewer than ``num_results``
  peers are known.
  ``parallelism`` responses in a row without progress make the lookup
  *Stalled*: it may then wait on up to ``max(num_results, parallelism)``
  requests at once, to try every remaining candidate among the closest.
  Progress while stalled returns it to *Iterating*.
* A request that outlives ``request_timeout`` makes its peer *Unresponsive*:
  the peer stops counting against the parallelism and is skipped by the
  termination rule, but a late answer is still accepted.
* The lookup is finished when the ``num_results`` closest peers that neither
  failed nor went unresponsive have all answered; or when no candidate is left
  to ask and no request is in flight; or when ``query_timeout`` has passed; or
  when :meth:`ClosestPeersIter.finish` is called.

One addition of kadfast's, off unless ``repair=True`` (rust has none):

* *Repair round.* When the termination rule holds but some peer that failed or
  went unresponsive ranks among the ``num_results`` closest, the answers the
  lookup got were written by peers that did not yet know of that departure:
  each answer names at most k peers, departed ones included, so live peers
  just behind them are named by no one. The lookup then asks each of the
  ``num_results`` closest peers that answered, once, for the peers closest to
  *its own* key (:meth:`ClosestPeersIter.is_repair` tells the caller which
  key to ask for). Their neighbourhoods name the peers behind the departed
  ones; those closer than the current ``num_results``-th answer are asked
  about the target as usual, and the lookup finishes by the rule above.
  The repair round happens at most once per lookup; a lookup that met no
  failure among its closest peers never runs it and costs what rust's does.

Peer states::

    NotContacted --next()--> Waiting --on_success--> Succeeded
                                |  \\--on_failure--> Failed
                                | deadline passed
                                v
                            Unresponsive --on_success--> Succeeded
                                         --on_failure--> Failed
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import TooManyQueries

if TYPE_CHECKING:  # only for annotations: either key-space twin works
    from .._xor import Key

__all__ = [
    "ClosestPeersIter",
    "QueryStats",
    "QueryPool",
    "Query",
    "SendRequest",
    "QueryFinished",
    "DEFAULT_MAX_QUERIES",
    "DEFAULT_K",
    "DEFAULT_PARALLELISM",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_QUERY_TIMEOUT",
]

#: Replication parameter k (Kademlia paper; rust-libp2p ``K_VALUE``).
DEFAULT_K = 20
#: Concurrency parameter alpha (Kademlia paper; rust-libp2p ``ALPHA_VALUE``).
DEFAULT_PARALLELISM = 3
#: Seconds before an unanswered peer counts as unresponsive (rust-libp2p
#: ``ClosestPeersIterConfig::peer_timeout``).
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Seconds a whole lookup may run (rust-libp2p ``query_timeout``).
DEFAULT_QUERY_TIMEOUT = 60.0

# Peer states (small ints: compared in the hot loop of next()).
NOT_CONTACTED = 0
WAITING = 1
UNRESPONSIVE = 2
FAILED = 3
SUCCEEDED = 4

_STATE_NAMES = ("NotContacted", "Waiting", "Unresponsive", "Failed", "Succeeded")

# Lookup states.
ITERATING = "iterating"
STALLED = "stalled"
FINISHED = "finished"


@dataclass(slots=True)
class QueryStats:
    """Counters of one lookup.

    ``requests`` counts peers handed out by ``next()``; ``successes`` the peers
    that answered; ``failures`` the peers that failed or are unresponsive (an
    unresponsive peer that answers late moves from ``failures`` to
    ``successes``). So ``requests == successes + failures + waiting()``.
    ``start`` and ``end`` are instants on the caller's clock.
    """

    requests: int = 0
    successes: int = 0
    failures: int = 0
    start: float = 0.0
    end: float | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, or None while the lookup runs."""
        return None if self.end is None else self.end - self.start


class _Peer:
    __slots__ = ("key", "handle", "distance", "state", "deadline")

    def __init__(self, key: Key, handle: Any, distance: int) -> None:
        self.key = key
        self.handle = handle
        self.distance = distance
        self.state = NOT_CONTACTED
        self.deadline = 0.0

    def __repr__(self) -> str:
        return f"_Peer({self.handle!r}, {_STATE_NAMES[self.state]})"


class ClosestPeersIter:
    """Iterative lookup of the `num_results` peers closest to `target`.

    ``known`` and the ``closer`` peers of :meth:`on_success` are
    ``(key, handle)`` pairs: ``key`` is the peer's Kademlia key (anything with
    a 32-byte ``digest``), ``handle`` is opaque to the iterator (typically the
    PeerId) and is what :meth:`next` and :meth:`result` return. Handles must be
    hashable; peers are told apart by key digest, and the first handle seen for
    a key is kept.

    Only the ``max(k, num_results)`` closest of ``known`` are used, and of one
    response only its first ``max(k, num_results)`` peers (a well-behaved peer
    sends at most k).
    """

    __slots__ = (
        "target",
        "k",
        "parallelism",
        "num_results",
        "request_timeout",
        "query_timeout",
        "stats",
        "_target_int",
        "_dists",
        "_peers",
        "_by_digest",
        "_inflight",
        "_num_waiting",
        "_state",
        "_no_progress",
        "_deadline",
        "_now",
        "_cap",
        "_repair",
        "_repaired",
        "_repair_queue",
        "_repair_inflight",
    )

    def __init__(
        self,
        target: Key,
        known: Iterable[tuple[Key, Any]],
        *,
        now: float,
        k: int = DEFAULT_K,
        parallelism: int = DEFAULT_PARALLELISM,
        num_results: int | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        query_timeout: float = DEFAULT_QUERY_TIMEOUT,
        repair: bool = False,
    ) -> None:
        if num_results is None:
            num_results = k
        if k < 1 or parallelism < 1 or num_results < 1:
            raise ValueError("k, parallelism and num_results must be >= 1")
        if not request_timeout > 0 or not query_timeout > 0:
            raise ValueError("timeouts must be > 0")
        self.target = target
        self.k = k
        self.parallelism = parallelism
        self.num_results = num_results
        self.request_timeout = float(request_timeout)
        self.query_timeout = float(query_timeout)
        self.stats = QueryStats(start=now)
        self._target_int = int.from_bytes(target.digest, "big")
        # Candidates sorted by distance: _dists[i] is _peers[i].distance.
        # Distinct digests have distinct distances, so there are no ties.
        self._dists: list[int] = []
        self._peers: list[_Peer] = []
        self._by_digest: dict[bytes, _Peer] = {}
        # Handle -> peer for the peers a result may still arrive from
        # (Waiting and Unresponsive), in the order they were asked.
        self._inflight: dict[Any, _Peer] = {}
        self._num_waiting = 0
        self._state = ITERATING
        self._no_progress = 0
        self._deadline = now + self.query_timeout
        self._now = now
        self._cap = max(k, num_results)
        self._repair = repair
        self._repaired = False
        # repair requests: peers to ask for their own neighbourhood, and
        # handle -> deadline for those asked and not yet answered
        self._repair_queue: list[_Peer] = []
        self._repair_inflight: dict[Any, float] = {}

        t = self._target_int
        fresh: dict[bytes, _Peer] = {}
        for key, handle in known:
            digest = key.digest
            if digest not in fresh:
                fresh[digest] = _Peer(key, handle, int.from_bytes(digest, "big") ^ t)
        peers = sorted(fresh.values(), key=lambda p: p.distance)[: self._cap]
        self._peers = peers
        self._dists = [p.distance for p in peers]
        self._by_digest = {p.key.digest: p for p in peers}
        self._check(now)

    # -- queries -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._state is FINISHED

    @property
    def stalled(self) -> bool:
        """True while the lookup is stalled (widened parallelism)."""
        return self._state is STALLED

    @property
    def repaired(self) -> bool:
        """True once the lookup has started its repair round (see the module doc)."""
        return self._repaired

    def waiting(self) -> int:
        """Requests in flight that have not timed out."""
        return self._num_waiting + len(self._repair_inflight)

    def is_repair(self, handle: Any) -> bool:
        """True if ``handle``, just handed out by :meth:`next`, is to be asked
        for the peers closest to its *own* key (a request of the repair
        round), False if for the target's."""
        return handle in self._repair_inflight

    def next_deadline(self) -> float | None:
        """The earliest instant at which :meth:`next` has something to do
        without any new result: a request deadline or the query deadline.
        None once finished."""
        if self._state is FINISHED:
            return None
        deadline = self._deadline
        for peer in self._inflight.values():
            if peer.state == WAITING and peer.deadline < deadline:
                deadline = peer.deadline
        for d in self._repair_inflight.values():
            if d < deadline:
                deadline = d
        return deadline

    def result(self) -> list[Any]:
        """Handles of up to ``num_results`` peers that answered, closest first."""
        out = []
        n = self.num_results
        for peer in self._peers:
            if peer.state == SUCCEEDED:
                out.append(peer.handle)
                if len(out) >= n:
                    break
        return out

    def state_of(self, key: Key) -> str | None:
        """The state name of the candidate with ``key`` (for tests and logs)."""
        peer = self._by_digest.get(key.digest)
        return None if peer is None else _STATE_NAMES[peer.state]

    def __len__(self) -> int:
        """Number of candidates known to the lookup, in any state."""
        return len(self._peers)

    def __repr__(self) -> str:
        return (
            f"ClosestPeersIter({self._state}, candidates={len(self._peers)}, "
            f"waiting={self._num_waiting}, {self.stats})"
        )

    # -- driving ---------------------------------------------------------------

    def next(self, now: float) -> list[Any]:
        """Handles of the peers to ask now; each becomes Waiting until
        ``now + request_timeout``. Empty when there is nothing to do now (at
        capacity, waiting for results, or finished)."""
        if self._state is FINISHED or self._tick(now):
            return []
        out: list[Any] = []
        deadline = now + self.request_timeout
        if self._repair_queue:
            for peer in self._repair_queue:
                self._repair_inflight[peer.handle] = deadline
                self.stats.requests += 1
                out.append(peer.handle)
            self._repair_queue = []
        cap = self._capacity()
        counter: int | None = 0   # None once a closer request is in flight
        n = self.num_results
        for peer in self._peers:
            state = peer.state
            if state == SUCCEEDED:
                if counter is not None:
                    counter += 1
                    if counter >= n:
                        if self._done(now):
                            return self.next(now)   # the repair round starts
                        return out
            elif state == NOT_CONTACTED:
                if self._num_waiting >= cap:
                    return out
                peer.state = WAITING
                peer.deadline = deadline
                self._inflight[peer.handle] = peer
                self._num_waiting += 1
                self.stats.requests += 1
                out.append(peer.handle)
                counter = None
            elif state == WAITING:
                if self._num_waiting >= cap:
                    return out
                counter = None
            # FAILED, UNRESPONSIVE: skipped
        if self._num_waiting == 0 and self._done(now):
            return self.next(now)
        return out

    def on_success(self, handle: Any, closer: Iterable[tuple[Key, Any]], now: float) -> bool:
        """Record the answer of ``handle`` with the ``closer`` peers it named.

        Accepted from a Waiting or Unresponsive peer while the lookup runs;
        returns False (and changes nothing) otherwise. Closer peers already
        known are ignored; the caller leaves out its own key."""
        if self._state is FINISHED or self._tick(now):
            return False
        if handle in self._repair_inflight:
            del self._repair_inflight[handle]
            self.stats.successes += 1
            self._add_candidates(closer)
            self._check(now)
            return True
        peer = self._inflight.pop(handle, None)
        if peer is None:
            return False
        stats = self.stats
        if peer.state == WAITING:
            self._num_waiting -= 1
        else:  # UNRESPONSIVE: already counted as a failure
            stats.failures -= 1
        peer.state = SUCCEEDED
        stats.successes += 1

        # Progress: a new peer closer than the num_results-th closest known
        # before this answer, or fewer than num_results peers known.
        dists = self._dists
        n = self.num_results
        if len(dists) < n:
            self._add_candidates(closer)
            progress = True
        else:
            progress = self._add_candidates(closer, dists[n - 1])

        if self._state is ITERATING:
            if progress:
                self._no_progress = 0
            else:
                self._no_progress += 1
                if self._no_progress >= self.parallelism:
                    self._state = STALLED
        elif progress:  # STALLED
            self._state = ITERATING
            self._no_progress = 0
        self._check(now)
        return True

    def on_failure(self, handle: Any, now: float) -> bool:
        """Record that the request to ``handle`` failed. Returns False (and
        changes nothing) unless the peer was Waiting or Unresponsive and the
        lookup runs."""
        if self._state is FINISHED or self._tick(now):
            return False
        if handle in self._repair_inflight:
            del self._repair_inflight[handle]
            self.stats.failures += 1
            self._check(now)
            return True
        peer = self._inflight.pop(handle, None)
        if peer is None:
            return False
        if peer.state == WAITING:
            self._num_waiting -= 1
            self.stats.failures += 1
        peer.state = FAILED
        self._check(now)
        return True

    def finish(self) -> None:
        """Stop now (e.g. a record lookup that has what it needs). The end
        instant in :attr:`stats` is the latest ``now`` seen."""
        if self._state is not FINISHED:
            self._finish(self._now)

    # -- internals -------------------------------------------------------------

    def _capacity(self) -> int:
        if self._state is STALLED:
            return max(self.num_results, self.parallelism)
        return self.parallelism

    def _finish(self, now: float) -> None:
        self._state = FINISHED
        self.stats.end = now

    def _tick(self, now: float) -> bool:
        """Apply the passage of time: expired requests become Unresponsive,
        an expired lookup finishes. True if the lookup is now finished."""
        if now > self._now:
            self._now = now
        if now >= self._deadline:
            self._finish(now)
            return True
        if self._num_waiting:
            for peer in self._inflight.values():
                if peer.state == WAITING and now >= peer.deadline:
                    peer.state = UNRESPONSIVE
                    self._num_waiting -= 1
                    self.stats.failures += 1
        if self._repair_inflight:
            late = [h for h, d in self._repair_inflight.items() if now >= d]
            for h in late:   # a repair request that timed out is given up
                del self._repair_inflight[h]
                self.stats.failures += 1
        return False

    def _add_candidates(self, closer: Iterable[tuple[Key, Any]], bound: int | None = None) -> bool:
        """Insert the first ``_cap`` of ``closer`` not yet known as
        NotContacted. True if one of them is closer than ``bound``."""
        dists = self._dists
        peers = self._peers
        t = self._target_int
        by_digest = self._by_digest
        closer_found = False
        taken = 0
        for key, h in closer:
            if taken >= self._cap:
                break
            taken += 1
            digest = key.digest
            if digest in by_digest:
                continue
            d = int.from_bytes(digest, "big") ^ t
            new = _Peer(key, h, d)
            i = bisect.bisect_left(dists, d)
            dists.insert(i, d)
            peers.insert(i, new)
            by_digest[digest] = new
            if bound is not None and d < bound:
                closer_found = True
        return closer_found

    def _done(self, now: float) -> bool:
        """The termination rule holds: finish, unless the repair round starts
        now or its requests are still to send or in flight. True when it
        starts."""
        if self._repair_inflight or self._repair_queue:
            return False
        if self._repair and not self._repaired:
            n = self.num_results
            hole = False
            answered: list[_Peer] = []
            for peer in self._peers:
                state = peer.state
                if state == SUCCEEDED:
                    answered.append(peer)
                    if len(answered) >= n:
                        break
                elif state == FAILED or state == UNRESPONSIVE:
                    hole = True
            if hole and answered:
                self._repaired = True
                self._repair_queue = answered
                return True
        self._finish(now)
        return False

    def _check(self, now: float) -> None:
        """Finish if the termination rule holds, without asking anyone."""
        counter = 0
        n = self.num_results
        for peer in self._peers:
            state = peer.state
            if state == SUCCEEDED:
                counter += 1
                if counter >= n:
                    break
            elif state == NOT_CONTACTED or state == WAITING:
                return
        # n closest answered, or nothing left to ask and nothing in flight
        self._done(now)


# -- the pool of lookups ----------------------------------------------------------

#: Lookups a :class:`QueryPool` runs at once unless told otherwise.
DEFAULT_MAX_QUERIES = 1024


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Ask ``peer`` on behalf of query ``query_id``: about the query's
    target, or, when ``repair`` is True, about the peer's *own* key (a
    request of the repair round). Report the outcome with
    :meth:`QueryPool.on_success` or :meth:`QueryPool.on_failure`."""

    query_id: int
    peer: Any
    repair: bool = False


@dataclass(frozen=True, slots=True)
class QueryFinished:
    """Query ``query_id`` ended (its termination rule, its timeout or
    :meth:`QueryPool.finish`) and left the pool. ``result`` holds the
    handles of up to ``num_results`` peers that answered, closest first;
    ``info`` is what was given to :meth:`QueryPool.add`."""

    query_id: int
    result: list[Any]
    stats: QueryStats
    info: Any = None


class Query:
    """One lookup of a :class:`QueryPool`: its id, its
    :class:`ClosestPeersIter` and the caller's ``info``."""

    __slots__ = ("id", "iter", "info", "dirty", "deadline")

    def __init__(self, query_id: int, it: ClosestPeersIter, info: Any) -> None:
        self.id = query_id
        self.iter = it
        self.info = info
        # dirty: an input arrived since the query was last polled; deadline:
        # its next_deadline() as of that poll (an input can only move it later)
        self.dirty = True
        self.deadline: float | None = None

    @property
    def stats(self) -> QueryStats:
        return self.iter.stats

    def __repr__(self) -> str:
        return f"Query({self.id}, {self.iter!r})"


class QueryPool:
    """The lookups of one node, driven from one place.

    Each query is a :class:`ClosestPeersIter`; the pool hands out ids,
    bounds how many queries run at once, and turns the state of them all into
    actions. It does no I/O and reads no clock: the caller passes ``now`` on
    one clock to every call. The caller's loop:

    * after :meth:`add`, and after every input (:meth:`on_success`,
      :meth:`on_failure`, :meth:`finish`), call :meth:`poll` and carry out
      what it returns: a :class:`SendRequest` per request to send, a
      :class:`QueryFinished` per query that ended (it has left the pool);
    * when no input comes, call :meth:`poll` again at :meth:`next_deadline`
      (the earliest request or query deadline over all queries).

    Inputs for a query that is no longer in the pool (finished, cancelled or
    unknown) are ignored. Queries are polled in the order they were added,
    so the same inputs at the same instants give the same actions.
    """

    __slots__ = ("max_queries", "_queries", "_next_id", "_now")

    def __init__(self, max_queries: int = DEFAULT_MAX_QUERIES) -> None:
        if max_queries < 1:
            raise ValueError("max_queries must be >= 1")
        self.max_queries = max_queries
        self._queries: dict[int, Query] = {}
        self._next_id = 1
        self._now = float("-inf")   # the latest instant seen

    def __len__(self) -> int:
        """Queries in the pool: running, or ended and not yet reported by :meth:`poll`."""
        return len(self._queries)

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._queries

    def __repr__(self) -> str:
        return f"QueryPool({len(self._queries)} queries, max {self.max_queries})"

    def get(self, query_id: int) -> Query | None:
        """The query ``query_id`` (its iterator, stats and info), or None
        once it has left the pool."""
        return self._queries.get(query_id)

    def ids(self) -> list[int]:
        """The ids of the queries in the pool, oldest first."""
        return list(self._queries)

    def add(
        self,
        target: Key,
        known: Iterable[tuple[Key, Any]],
        now: float,
        *,
        k: int = DEFAULT_K,
        parallelism: int = DEFAULT_PARALLELISM,
        num_results: int | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        query_timeout: float = DEFAULT_QUERY_TIMEOUT,
        repair: bool = False,
        info: Any = None,
    ) -> int:
        """Start a lookup of ``target`` from the ``known`` ``(key, handle)``
        pairs (see :class:`ClosestPeersIter` for them and for the settings);
        returns its id. Its first requests come from the next :meth:`poll`.
        Raises :class:`~kadfast.errors.TooManyQueries` when the pool holds
        ``max_queries`` queries."""
        if len(self._queries) >= self.max_queries:
            raise TooManyQueries(f"the query pool already runs {self.max_queries} queries")
        it = ClosestPeersIter(
            target, known, now=now, k=k, parallelism=parallelism, num_results=num_results,
            request_timeout=request_timeout, query_timeout=query_timeout, repair=repair,
        )
        self._seen(now)
        query_id = self._next_id
        self._next_id += 1
        self._queries[query_id] = Query(query_id, it, info)
        return query_id

    def poll(self, now: float) -> list[SendRequest | QueryFinished]:
        """Apply the passage of time and the inputs since the last poll: the
        requests to send now, then the queries that ended (removed from the
        pool), each in the order the queries were added."""
        self._seen(now)
        actions: list[SendRequest | QueryFinished] = []
        ended: list[Query] = []
        for q in self._queries.values():
            it = q.iter
            if not it.finished and (q.dirty or (q.deadline is not None and now >= q.deadline)):
                q.dirty = False
                for peer in it.next(now):
                    actions.append(SendRequest(q.id, peer, it.is_repair(peer)))
                q.deadline = it.next_deadline()
            if it.finished:
                ended.append(q)
        for q in ended:
            del self._queries[q.id]
            actions.append(QueryFinished(q.id, q.iter.result(), q.iter.stats, q.info))
        return actions

    def next_deadline(self) -> float | None:
        """When to :meth:`poll` again if no input comes: the earliest request
        or query deadline over all queries; the latest instant seen if some
        query has had an input since it was last polled; None when the pool is
        empty."""
        deadline: float | None = None
        for q in self._queries.values():
            d = self._now if q.dirty or q.iter.finished else q.deadline
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        return deadline

    def on_success(self, query_id: int, peer: Any, closer: Iterable[tuple[Key, Any]], now: float) -> bool:
        """``peer`` answered query ``query_id`` with the ``closer`` peers it
        named (the caller leaves out its own key). False if the query is no
        longer in the pool or did not expect that answer."""
        q = self._input(query_id, now)
        return q is not None and q.iter.on_success(peer, closer, now)

    def on_failure(self, query_id: int, peer: Any, now: float) -> bool:
        """The request of query ``query_id`` to ``peer`` failed. False if the
        query is no longer in the pool or did not expect it."""
        q = self._input(query_id, now)
        return q is not None and q.iter.on_failure(peer, now)

    def finish(self, query_id: int) -> bool:
        """End query ``query_id`` now with the results it has (e.g. a record
        lookup that found what it needs); the next :meth:`poll` reports it.
        False if it is no longer in the pool."""
        q = self._queries.get(query_id)
        if q is None:
            return False
        q.iter.finish()
        q.dirty = True
        return True

    def cancel(self, query_id: int) -> bool:
        """Drop query ``query_id`` without a :class:`QueryFinished`; its
        requests in flight are the caller's to abandon. False if it was no
        longer in the pool."""
        return self._queries.pop(query_id, None) is not None

    def _input(self, query_id: int, now: float) -> Query | None:
        q = self._queries.get(query_id)
        if q is None or q.iter.finished:
            return None
        self._seen(now)
        q.dirty = True
        return q

    def _seen(self, now: float) -> None:
        if now > self._now:
            self._now = now
