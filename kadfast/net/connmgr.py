"""Which connections the connection manager closes when there are too many.

The host (:class:`kadfast.net.host.Host`) trims its open connections down to
a low mark once they exceed a high mark, and at the hard limit when an
inbound connection needs a slot. This module holds the choice of what to
close, a pure function of the connections' bookkeeping, so that the order is
easy to test without sockets.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable, Protocol, Sized, TypeVar

__all__ = ["PrunableConnection", "choose_prunable", "PRUNED_REASON"]

#: the close reason of a connection closed by the connection manager
PRUNED_REASON = "pruned by the connection manager"


class PrunableConnection(Protocol):
    """What :func:`choose_prunable` reads of a connection (monotonic seconds)."""

    #: when the connection was accepted or dialed
    opened_at: float
    #: when anything was last received on it
    last_activity: float
    #: when data was last received on one of its streams (0.0: never)
    stream_activity: float

    @property
    def streams(self) -> Sized: ...


C = TypeVar("C", bound=PrunableConnection)


def choose_prunable(
    conns: Iterable[C],
    now: float,
    count: int,
    *,
    grace_period: float,
    in_use_window: float,
    is_protected: Callable[[C], bool] | None = None,
) -> list[C]:
    """Up to ``count`` of ``conns`` to close, least useful first.

    Never chosen: a connection younger than ``grace_period``; one with an
    open stream that received data within ``in_use_window`` (a stream in
    use); one that ``is_protected`` says to keep. Of the rest, connections
    without streams go first, then those with streams; within each, the one
    idle longest (oldest ``last_activity``) first.

    O(n) to sort the candidates into a heap, plus O(log n) per connection
    taken or skipped: ``is_protected`` (which may cost something, e.g. a
    routing-table lookup) is asked only about connections in the order they
    would be taken, until ``count`` are found."""
    if count <= 0:
        return []
    heap: list[tuple[bool, float, int, C]] = []
    for i, c in enumerate(conns):
        if now - c.opened_at < grace_period:
            continue
        busy = len(c.streams) > 0
        if busy and now - c.stream_activity < in_use_window:
            continue
        heap.append((busy, c.last_activity, i, c))  # i: ties never compare connections
    heapq.heapify(heap)
    out: list[C] = []
    while heap and len(out) < count:
        c = heapq.heappop(heap)[3]
        if is_protected is not None and is_protected(c):
            continue
        out.append(c)
    return out
