# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""ChaCha20-Poly1305 (RFC 8439) for the Noise transport, on OpenSSL's EVP
interface with one cipher context per key, kept for the key's lifetime.

``cryptography``'s ``ChaCha20Poly1305`` makes, initialises and frees an
OpenSSL cipher context on every call; a context kept per key only sets the
next nonce. Per transport message that is ~0.3 us less hot and ~1.5 us less
of a server's CPU per FIND_NODE answered one at a time (README,
performance). The cipher itself is OpenSSL's either way: nothing here
computes ChaCha20 or Poly1305.

The API is the part of ``cryptography``'s class that the Noise transport
uses, with the same results and errors; ``cryptography`` is the tests'
oracle. Built only where OpenSSL's headers are found (setup.py); without
it :mod:`kadfast.noise` uses ``cryptography``'s class.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from cryptography.exceptions import InvalidTag

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX
    ctypedef struct EVP_CIPHER
    ctypedef struct ENGINE
    const EVP_CIPHER* EVP_chacha20_poly1305()
    EVP_CIPHER_CTX* EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX* ctx)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, ENGINE* impl,
                          const unsigned char* key, const unsigned char* iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl,
                         const unsigned char* inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX* ctx, int type, int arg, void* ptr)
    int EVP_CTRL_AEAD_GET_TAG
    int EVP_CTRL_AEAD_SET_TAG

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()

cdef enum:
    KEY_LEN = 32
    NONCE_LEN = 12
    TAG_LEN = 16
    # inputs beyond this do not fit OpenSSL's int lengths (a Noise frame is < 64 KiB)
    MAX_LEN = 0x7FFFFFF0

BACKEND = "openssl-evp"


cdef inline const unsigned char* _nonce_ptr(object nonce) except NULL:
    if type(nonce) is not bytes or PyBytes_GET_SIZE(nonce) != NONCE_LEN:
        raise ValueError("Nonce must be 12 bytes")
    return <const unsigned char*>PyBytes_AS_STRING(nonce)


@cython.final
cdef class ChaCha20Poly1305:
    """``encrypt(nonce, data, associated_data)`` gives ciphertext + tag,
    ``decrypt(nonce, data, associated_data)`` the plaintext or raises
    ``cryptography.exceptions.InvalidTag``. ``nonce`` is 12 bytes (bytes);
    ``data`` and ``associated_data`` any contiguous buffer (or None)."""

    cdef EVP_CIPHER_CTX* _ctx

    def __cinit__(self, key):
        if type(key) is not bytes or PyBytes_GET_SIZE(key) != KEY_LEN:
            raise ValueError("ChaCha20Poly1305 key must be 32 bytes")
        self._ctx = EVP_CIPHER_CTX_new()
        if self._ctx == NULL:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        if EVP_CipherInit_ex(self._ctx, EVP_chacha20_poly1305(), NULL,
                             <const unsigned char*>PyBytes_AS_STRING(key), NULL, 1) != 1:
            ERR_clear_error()
            raise RuntimeError("OpenSSL refused the ChaCha20-Poly1305 key")

    def __dealloc__(self):
        if self._ctx != NULL:
            EVP_CIPHER_CTX_free(self._ctx)
            self._ctx = NULL

    cdef int _start(self, const unsigned char* nonce, object aad, int enc) except -1:
        """Set the nonce (which restarts the cipher and the MAC), then
        absorb the associated data."""
        cdef Py_buffer view
        cdef int outl = 0
        cdef int ok
        if EVP_CipherInit_ex(self._ctx, NULL, NULL, NULL, nonce, enc) != 1:
            ERR_clear_error()
            raise RuntimeError("OpenSSL refused the nonce")
        if aad is None:
            return 0
        PyObject_GetBuffer(aad, &view, PyBUF_SIMPLE)
        try:
            if view.len > MAX_LEN:
                raise OverflowError("associated data is too long")
            ok = 1 if view.len == 0 else EVP_CipherUpdate(
                self._ctx, NULL, &outl, <const unsigned char*>view.buf, <int>view.len)
        finally:
            PyBuffer_Release(&view)
        if ok != 1:
            ERR_clear_error()
            raise RuntimeError("OpenSSL refused the associated data")
        return 0

    def encrypt(self, nonce, data, associated_data):
        cdef const unsigned char* iv = _nonce_ptr(nonce)
        cdef Py_buffer view
        cdef int outl = 0
        cdef Py_ssize_t n
        cdef unsigned char* o
        cdef bint ok
        self._start(iv, associated_data, 1)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            n = view.len
            if n > MAX_LEN:
                raise OverflowError("data is too long")
            out = PyBytes_FromStringAndSize(NULL, n + TAG_LEN)
            o = <unsigned char*>PyBytes_AS_STRING(out)
            ok = n == 0 or (EVP_CipherUpdate(self._ctx, o, &outl, <const unsigned char*>view.buf, <int>n) == 1
                            and outl == n)
        finally:
            PyBuffer_Release(&view)
        ok = ok and EVP_CipherFinal_ex(self._ctx, o + n, &outl) == 1 and outl == 0
        ok = ok and EVP_CIPHER_CTX_ctrl(self._ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, o + n) == 1
        if not ok:
            ERR_clear_error()
            raise RuntimeError("OpenSSL failed to encrypt")
        return out

    def decrypt(self, nonce, data, associated_data):
        cdef const unsigned char* iv = _nonce_ptr(nonce)
        cdef Py_buffer view
        cdef int outl = 0
        cdef Py_ssize_t n
        cdef const unsigned char* d
        cdef unsigned char* o
        cdef bint ok
        self._start(iv, associated_data, 0)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            n = view.len - TAG_LEN
            if n < 0:
                raise InvalidTag()
            if n > MAX_LEN:
                raise OverflowError("data is too long")
            d = <const unsigned char*>view.buf
            out = PyBytes_FromStringAndSize(NULL, n)
            o = <unsigned char*>PyBytes_AS_STRING(out)
            # the expected tag, then the ciphertext; Final checks the tag
            ok = EVP_CIPHER_CTX_ctrl(self._ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, <void*>(d + n)) == 1
            ok = ok and (n == 0 or (EVP_CipherUpdate(self._ctx, o, &outl, d, <int>n) == 1 and outl == n))
        finally:
            PyBuffer_Release(&view)
        if not (ok and EVP_CipherFinal_ex(self._ctx, o + n, &outl) == 1):
            ERR_clear_error()
            raise InvalidTag()
        return out
