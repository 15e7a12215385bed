"""Plain-Python twin of ``kadfast._closer``: the kad server's closerPeers
cache walk, used by the tests to check the compiled one."""

from __future__ import annotations


def cached_fields(entries, k, cache, skip, unreachable, epoch, now, refresh):
    out: list = []
    if k <= 0:
        return out
    for e in entries:
        key = e.key
        if key == skip or (unreachable and key in unreachable):
            continue
        hit = cache.get(key)
        value = None
        if type(hit) is tuple and len(hit) == 5:
            book = hit[0]
            if hit[3] == epoch and book.version == hit[1] and now < book.min_expires:
                value = hit[4]
        if value is None:
            value = refresh(key, e.value, hit)
            if value is None:
                continue
        out.append(value)
        if len(out) >= k:
            break
    return out
