# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The Noise transport (after the handshake), compiled: libp2p's framing
(``u16 big-endian length | ciphertext | tag``) and ChaCha20-Poly1305 on
OpenSSL's EVP interface, with one cipher context per direction kept for the
connection's lifetime.

Its plain-Python twin is :class:`kadfast.noise.NoiseTransport` on
``cryptography``'s ChaCha20Poly1305, which makes, initialises and frees an
OpenSSL context on every call; the tests, the fuzzer and a benchmark hold
the two to the same bytes and the same errors. Here a message costs one
nonce set on the kept context, and a read's frames are opened in one call
into one output buffer. The cipher is OpenSSL's either way: nothing here
computes ChaCha20 or Poly1305.

Built only where OpenSSL's headers are found (setup.py); without it
:mod:`kadfast.noise` uses its twin.
"""

cimport cython
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

from kadfast.errors import NoiseError

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

cdef extern from "openssl/crypto.h" nogil:
    const char* OpenSSL_version(int t)
    int OPENSSL_VERSION


def openssl_version():
    """The version text of the OpenSSL this module runs on (the library
    loaded, not the headers it was compiled against)."""
    return OpenSSL_version(OPENSSL_VERSION).decode("ascii", "replace")

cdef enum:
    KEY_LEN = 32
    TAG_LEN = 16
    MAX_FRAME = 65535
    MAX_PLAIN = MAX_FRAME - TAG_LEN
    # messages beyond this many bytes are refused (they would not fit in
    # OpenSSL's int lengths and their framing); the connection writes far less
    MAX_MESSAGE = 0x7FFF0000

# the last usable nonce is 2**64 - 2 (2**64 - 1 is reserved by the Noise spec)
cdef uint64_t NONCE_LIMIT = 0xFFFFFFFFFFFFFFFF


cdef inline void _nonce(unsigned char* iv, uint64_t n) noexcept nogil:
    # 4 zero bytes, then the counter little-endian
    cdef int i
    memset(iv, 0, 4)
    for i in range(8):
        iv[4 + i] = <unsigned char>(n >> (8 * i))


cdef EVP_CIPHER_CTX* _new_ctx(object key, int enc) except NULL:
    if type(key) is not bytes or PyBytes_GET_SIZE(key) != KEY_LEN:
        raise ValueError("a Noise transport key is 32 bytes")
    cdef EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new()
    if ctx == NULL:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    if EVP_CipherInit_ex(ctx, EVP_chacha20_poly1305(), NULL,
                         <const unsigned char*>PyBytes_AS_STRING(key), NULL, enc) != 1:
        EVP_CIPHER_CTX_free(ctx)
        ERR_clear_error()
        raise RuntimeError("OpenSSL refused the ChaCha20-Poly1305 key")
    return ctx


@cython.final
cdef class NoiseTransport:
    """Encrypts our direction and decrypts the remote's; the same API and
    behaviour as :class:`kadfast.noise.NoiseTransport` (see there)."""

    cdef EVP_CIPHER_CTX* _enc
    cdef EVP_CIPHER_CTX* _dec
    cdef public uint64_t _send_n
    cdef public uint64_t _recv_n
    cdef readonly bytearray _buf  # a partial frame, never more than one
    cdef bint _failed

    def __cinit__(self, send_key, recv_key):
        self._enc = _new_ctx(send_key, 1)
        self._dec = _new_ctx(recv_key, 0)
        self._buf = bytearray()

    def __dealloc__(self):
        if self._enc != NULL:
            EVP_CIPHER_CTX_free(self._enc)
        if self._dec != NULL:
            EVP_CIPHER_CTX_free(self._dec)

    cdef int _seal(self, const unsigned char* src, Py_ssize_t size, unsigned char* dst) except -1:
        """One frame of ``size`` (<= MAX_PLAIN) plaintext bytes into dst
        (size + 18 bytes); encrypt() checked that the nonce is usable."""
        cdef unsigned char iv[12]
        cdef int outl = 0
        cdef bint ok
        _nonce(iv, self._send_n)
        dst[0] = <unsigned char>((size + TAG_LEN) >> 8)
        dst[1] = <unsigned char>(size + TAG_LEN)
        dst += 2
        ok = EVP_CipherInit_ex(self._enc, NULL, NULL, NULL, iv, 1) == 1
        ok = ok and (size == 0 or (EVP_CipherUpdate(self._enc, dst, &outl, src, <int>size) == 1
                                   and outl == size))
        ok = ok and EVP_CipherFinal_ex(self._enc, dst + size, &outl) == 1 and outl == 0
        ok = ok and EVP_CIPHER_CTX_ctrl(self._enc, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, dst + size) == 1
        if not ok:
            ERR_clear_error()
            raise RuntimeError("OpenSSL failed to encrypt")
        self._send_n += 1
        return 0

    cdef int _open(self, const unsigned char* src, Py_ssize_t size, unsigned char* dst) except -1:
        """Authenticate and decrypt one frame body of ``size`` (>= TAG_LEN)
        bytes into dst (size - 16 bytes); NoiseError when it fails."""
        cdef unsigned char iv[12]
        cdef int outl = 0
        cdef Py_ssize_t n = size - TAG_LEN
        cdef bint ok
        if self._recv_n >= NONCE_LIMIT:
            raise NoiseError("receive nonce exhausted")
        _nonce(iv, self._recv_n)
        ok = EVP_CipherInit_ex(self._dec, NULL, NULL, NULL, iv, 0) == 1
        # the expected tag first; Final checks it
        ok = ok and EVP_CIPHER_CTX_ctrl(self._dec, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, <void*>(src + n)) == 1
        ok = ok and (n == 0 or (EVP_CipherUpdate(self._dec, dst, &outl, src, <int>n) == 1 and outl == n))
        if not (ok and EVP_CipherFinal_ex(self._dec, dst + n, &outl) == 1):
            ERR_clear_error()
            raise NoiseError("Noise transport frame failed to authenticate")
        self._recv_n += 1
        return 0

    def encrypt(self, plaintext):
        """Framed ciphertext of ``plaintext``, split into frames of at most
        65519 bytes; empty input gives ``b""``."""
        cdef Py_buffer view
        cdef Py_ssize_t size, frames, pos, chunk
        cdef const unsigned char* src
        cdef unsigned char* dst
        PyObject_GetBuffer(plaintext, &view, PyBUF_SIMPLE)
        try:
            size = view.len
            if size == 0:
                return b""
            if size > MAX_MESSAGE:
                raise NoiseError(f"a message of {size} bytes is too large to encrypt at once", remote=False)
            frames = (size + MAX_PLAIN - 1) // MAX_PLAIN
            if self._send_n > NONCE_LIMIT - <uint64_t>frames:
                raise NoiseError("send nonce exhausted", remote=False)
            out = PyBytes_FromStringAndSize(NULL, size + frames * (TAG_LEN + 2))
            dst = <unsigned char*>PyBytes_AS_STRING(out)
            src = <const unsigned char*>view.buf
            pos = 0
            while pos < size:
                chunk = size - pos if size - pos < MAX_PLAIN else MAX_PLAIN
                self._seal(src + pos, chunk, dst)
                dst += chunk + TAG_LEN + 2
                pos += chunk
            return out
        finally:
            PyBuffer_Release(&view)

    def decrypt(self, data):
        """Feed ciphertext bytes (any split); returns the plaintext of every
        frame completed so far, joined (``b""`` when none). Raises
        :class:`NoiseError` on an authentication failure or a malformed
        frame, and refuses all input after one."""
        cdef Py_buffer view
        cdef Py_ssize_t end, pos, size, total, frames, i
        cdef Py_ssize_t first = -1  # body size of the buffered frame, once complete
        cdef const unsigned char* src
        cdef const unsigned char* b
        cdef unsigned char* dst
        cdef bint short_frame = False
        cdef bytearray buf = self._buf
        cdef Py_ssize_t blen = PyByteArray_GET_SIZE(buf)
        if self._failed:
            raise NoiseError("Noise transport already failed", remote=False)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            src = <const unsigned char*>view.buf
            end = view.len
            pos = 0
            if blen:
                # a frame began in an earlier read: move only the bytes it
                # still lacks into the buffer, and open it from there
                b = <const unsigned char*>PyByteArray_AS_STRING(buf)
                if blen >= 2:
                    first = b[0] << 8 | b[1]
                elif end:
                    first = b[0] << 8 | src[0]
                if first < 0 or end < 2 + first - blen:
                    buf += (<const char*>src)[:end]
                    return b""
                pos = 2 + first - blen
                buf += (<const char*>src)[:pos]
            # the complete frames that follow, and their plaintext's size
            total = first - TAG_LEN if first >= TAG_LEN else 0
            frames = 0
            if first < 0 or first >= TAG_LEN:
                i = pos
                while end - i >= 2:
                    size = src[i] << 8 | src[i + 1]
                    if i + 2 + size > end:
                        break
                    if size < TAG_LEN:
                        short_frame = True
                        break
                    total += size - TAG_LEN
                    frames += 1
                    i += 2 + size
            out = PyBytes_FromStringAndSize(NULL, total) if total else b""
            dst = <unsigned char*>PyBytes_AS_STRING(out)
            try:
                if first >= 0:
                    try:
                        if first < TAG_LEN:
                            raise NoiseError(f"Noise frame of {first} bytes is shorter than its tag")
                        self._open(<const unsigned char*>PyByteArray_AS_STRING(buf) + 2, first, dst)
                        dst += first - TAG_LEN
                    finally:
                        del buf[:]
                for i in range(frames):
                    size = src[pos] << 8 | src[pos + 1]
                    self._open(src + pos + 2, size, dst)
                    dst += size - TAG_LEN
                    pos += 2 + size
                if short_frame:
                    size = src[pos] << 8 | src[pos + 1]
                    raise NoiseError(f"Noise frame of {size} bytes is shorter than its tag")
            except NoiseError:
                self._failed = True
                raise
            if pos < end:
                buf += (<const char*>src)[pos:end]
            return out
        finally:
            PyBuffer_Release(&view)
