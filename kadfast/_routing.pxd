# cython: language_level=3
cimport cython

from kadfast._xor cimport Key


@cython.final
cdef class Entry:
    cdef readonly Key key
    cdef public object value
    cdef readonly bint connected
    cdef readonly double last_seen
