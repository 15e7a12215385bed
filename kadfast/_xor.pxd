# cython: language_level=3
from libc.stdint cimport uint64_t


cdef class Key:
    cdef readonly bytes preimage
    cdef readonly bytes digest
    cdef uint64_t w[4]          # the digest as four big-endian 64-bit words
    cdef Py_hash_t _hash
    cdef object _int            # the digest as a Python int, made on first use

    cdef object as_int(self)

    cdef int _set_digest(self, bytes digest) except -1


cdef int bucket_of(const uint64_t* a, const uint64_t* b) noexcept nogil
cdef int cmp_words(const uint64_t* a, const uint64_t* b) noexcept nogil
cdef void load_words(const unsigned char* p, uint64_t* w) noexcept nogil
