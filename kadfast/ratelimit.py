"""Token-bucket rate limits per peer (or per IP group), sans-IO: the kad
server's request limits and the host's handshake limits.

:class:`PeerRateLimiter` keeps one token bucket per peer: it holds at most
``burst`` tokens, refills at ``rate`` tokens per second, and each accepted
request takes one. The table of buckets is bounded: beyond ``max_peers`` the
least recently seen peer's bucket is forgotten (that peer starts again with a
full bucket, which costs an attacker a new identity and a new connection per
``max_peers`` peers, both limited elsewhere). Time is passed in by the caller
(the node's clock), so tests drive it with a fake clock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

from .errors import RateLimited

__all__ = ["PeerRateLimiter", "RateLimited"]


class PeerRateLimiter:
    __slots__ = ("rate", "burst", "max_peers", "_buckets")

    def __init__(self, rate: float, burst: float, max_peers: int = 10_000) -> None:
        """``rate`` tokens per second (0 or less: no limit), at most ``burst``
        tokens per bucket (at least 1), ``max_peers`` buckets."""
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self.max_peers = max_peers
        # peer -> (tokens, time of the last update); least recently seen first
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    @classmethod
    def per_second(cls, rate: float, burst_seconds: float, max_peers: int = 10_000) -> "PeerRateLimiter":
        """A limiter of ``rate`` per second whose bucket holds ``burst_seconds`` worth."""
        return cls(rate, rate * burst_seconds, max_peers)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, peer: Hashable, now: float) -> bool:
        """Take a token from ``peer``'s bucket at time ``now``; False when it is empty."""
        if self.rate <= 0:
            return True
        buckets = self._buckets
        entry = buckets.get(peer)
        if entry is None:
            tokens = self.burst
            buckets[peer] = (tokens, now)
            while len(buckets) > self.max_peers:
                buckets.popitem(last=False)
        else:
            tokens, last = entry
            if now > last:
                tokens = min(self.burst, tokens + (now - last) * self.rate)
            else:  # a clock that went backwards refills nothing
                now = last
            buckets.move_to_end(peer)
        if tokens < 1.0:
            buckets[peer] = (tokens, now)
            return False
        buckets[peer] = (tokens - 1.0, now)
        return True
