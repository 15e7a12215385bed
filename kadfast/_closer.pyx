# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The kad server's closerPeers cache, walked compiled: the hot loop of a
FIND_NODE answer (``kadfast.kad.server.KadServer``).

The routing table gives the entries closest to a target
(``RoutingTable.closest``); this module picks, for up to k of them, the
cached closerPeers field of each, or asks the server for a fresh one. The
layout of the cache's values is the server's and is known here only:
nothing in the routing table reads it. Time is an argument. The
plain-Python twin is ``kadfast._closer_py``.
"""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

from kadfast._routing cimport Entry
from kadfast._xor cimport Key, cmp_words


def cached_fields(list entries, Py_ssize_t k, dict cache, Key skip, object unreachable, object epoch,
                  double now, object refresh):
    """Up to ``k`` cached values for ``entries`` (routing-table entries,
    ``RoutingTable.closest(target, limit)``), in their order.

    Entries whose key is ``skip`` or is in ``unreachable`` (a set, or None)
    are passed over. For each other entry, ``cache[entry.key]`` is a tuple
    ``(book, version, conn, epoch, value)``: ``book`` an address-book view
    with ``version`` and ``min_expires``, ``conn`` the connection type the
    value was made with. It is used as it is when its ``epoch`` is
    ``epoch``, ``book.version == version`` and ``now < book.min_expires``.
    Otherwise ``refresh(key, entry.value, hit)`` (``hit`` the stale tuple or
    None) gives the value, or None to leave the entry out.
    """
    cdef list out = []
    if k <= 0:
        return out
    cdef Py_ssize_t i, n = PyList_GET_SIZE(entries), got = 0
    cdef Entry e
    cdef Key key
    cdef PyObject* hit
    cdef object t, book, value
    cdef bint check_unreachable = unreachable is not None and len(unreachable) > 0
    for i in range(n):
        e = <Entry>PyList_GET_ITEM(entries, i)
        key = e.key
        if skip is not None and cmp_words(key.w, skip.w) == 0:
            continue
        if check_unreachable and key in unreachable:
            continue
        hit = PyDict_GetItem(cache, key)
        value = None
        if hit is not NULL and type(<object>hit) is tuple and PyTuple_GET_SIZE(<object>hit) == 5:
            t = <object>hit
            book = <object>PyTuple_GET_ITEM(t, 0)
            if (<object>PyTuple_GET_ITEM(t, 3) == epoch and book.version == <object>PyTuple_GET_ITEM(t, 1)
                    and now < book.min_expires):
                value = <object>PyTuple_GET_ITEM(t, 4)
        if value is None:
            value = refresh(key, e.value, None if hit is NULL else <object>hit)
            if value is None:
                continue
        out.append(value)
        got += 1
        if got >= k:
            break
    return out
