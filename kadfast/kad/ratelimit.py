"""The kad server's request rate limits: :mod:`kadfast.ratelimit`'s token
buckets, under the name the kad package has always given them."""

from ..ratelimit import PeerRateLimiter, RateLimited

__all__ = ["PeerRateLimiter", "RateLimited"]
