"""libp2p's Noise secure channel (``/noise``) as a sans-IO core.

Noise protocol: ``Noise_XX_25519_ChaChaPoly_SHA256`` (noise.md revision 34),
empty prologue::

    -> e
    <- e, ee, s, es      payload: NoiseHandshakePayload
    -> s, se             payload: NoiseHandshakePayload

libp2p additions (libp2p/specs noise/README.md): every Noise message travels in
a frame ``u16 big-endian length | message`` (at most 65535 bytes, AEAD tag
included); the handshake payloads of messages 2 and 3 are the protobuf
``NoiseHandshakePayload{identity_key=1, identity_sig=2, extensions=4}``, with
no inner length prefix; ``identity_sig`` is the identity key's signature of
``"noise-libp2p-static-key:" || X25519 static public key``. Transport messages
carry the application bytes as they are (no padding, no inner length).

:class:`NoiseHandshake` takes handshake bytes in and hands bytes out; once
``complete``, :meth:`NoiseHandshake.transport` gives the transport that
encrypts and decrypts the rest of the connection: the compiled one of
``kadfast._noise`` where it is built, else :class:`NoiseTransport`, its
plain-Python twin. Neither touches a socket.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import CryptoKeyError, NoiseError, NoisePeerIdMismatch, ProtobufError
from .keys import Ed25519KeyPair, PublicKey
from .peerid import PeerId
from .protobuf import WT_LEN, field_bytes, iter_fields

try:  # the compiled transport (kadfast/_noise.pyx); built where OpenSSL's headers are
    from ._noise import NoiseTransport as _CompiledTransport
    from ._noise import openssl_version as _openssl_version

    #: the transport a handshake hands out: "compiled" (kadfast._noise, on
    #: OpenSSL's EVP interface) or "python" (:class:`NoiseTransport`, its twin)
    TRANSPORT_IMPL = "compiled"
    #: one line naming that transport and the library under it, for
    #: ``kadfast --version`` and the log
    TRANSPORT_DESCRIPTION = f"compiled (kadfast._noise on {_openssl_version()})"
except ImportError:  # pragma: no cover - a build without OpenSSL's headers
    _CompiledTransport = None  # type: ignore[assignment,misc]
    TRANSPORT_IMPL = "python"
    TRANSPORT_DESCRIPTION = (
        "plain Python (kadfast._noise is not built; cryptography's ChaCha20Poly1305, slower)"
    )

__all__ = [
    "PROTOCOL_NAME",
    "MAX_FRAME_LEN",
    "TAG_LEN",
    "MAX_PLAINTEXT_LEN",
    "STATIC_KEY_SIGNATURE_PREFIX",
    "NoisePeerIdMismatch",
    "NoiseStaticKey",
    "NoiseHandshake",
    "NoiseTransport",
    "TRANSPORT_IMPL",
    "TRANSPORT_DESCRIPTION",
    "name_fallback_once",
]

#: The one Noise protocol libp2p's ``/noise`` speaks.
PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
#: A frame's length is a u16 (libp2p noise spec), and Noise caps any message at
#: 65535 bytes too (noise.md section 3).
MAX_FRAME_LEN = 65535
#: The ChaCha20-Poly1305 authentication tag.
TAG_LEN = 16
#: Most plaintext bytes one transport frame can carry.
MAX_PLAINTEXT_LEN = MAX_FRAME_LEN - TAG_LEN
#: What the identity key signs, followed by the X25519 static public key.
STATIC_KEY_SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
#: noise.md section 5.1: the nonce 2**64-1 is reserved; a CipherState must
#: refuse to encrypt or decrypt once its counter reaches it.
_NONCE_LIMIT = 2**64 - 1

_DH_LEN = 32
_HASH_LEN = 32
_EMPTY = b""
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_pack_nonce = struct.Struct("<Q").pack
_pack_len = struct.Struct(">H").pack


# --------------------------------------------------------------------------
# Noise primitives (noise.md sections 4 and 5)


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """noise.md section 4.3 HKDF with two outputs, HMAC-SHA256."""
    temp_key = hmac.digest(chaining_key, ikm, "sha256")
    out1 = hmac.digest(temp_key, b"\x01", "sha256")
    out2 = hmac.digest(temp_key, out1 + b"\x02", "sha256")
    return out1, out2


def _x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _dh(private: X25519PrivateKey | None, public: bytes | None) -> bytes:
    # the keys of the earlier steps: set by the time a step uses them
    assert private is not None and public is not None
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # an all-zero shared secret: the remote sent a low-order point
        raise NoiseError("remote sent an invalid X25519 public key") from None


class _CipherState:
    """noise.md section 5.1, used during the handshake."""

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= _NONCE_LIMIT:
            raise NoiseError("nonce exhausted", remote=False)
        out = self._aead.encrypt(_NONCE_PREFIX + _pack_nonce(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if self.n >= _NONCE_LIMIT:
            raise NoiseError("nonce exhausted")
        try:
            out = self._aead.decrypt(_NONCE_PREFIX + _pack_nonce(self.n), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("handshake message failed to decrypt") from None
        self.n += 1
        return out


class _SymmetricState:
    """noise.md section 5.2."""

    __slots__ = ("ck", "h", "cipher")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= _HASH_LEN:
            h = protocol_name.ljust(_HASH_LEN, b"\x00")
        else:
            h = _hash(protocol_name)
        self.ck = h
        self.h = h
        self.cipher = _CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = _CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """The two transport keys: initiator->responder, responder->initiator."""
        return _hkdf2(self.ck, _EMPTY)


class _XXHandshakeState:
    """noise.md section 5.3 for the XX pattern only, with raw payloads.

    ``ephemeral`` fixes the ephemeral key (for test vectors only).
    """

    __slots__ = ("initiator", "_ss", "_s", "s_pub", "_e", "_re", "rs", "_step")

    def __init__(
        self,
        *,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = _EMPTY,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self._ss = _SymmetricState(PROTOCOL_NAME)
        self._ss.mix_hash(prologue)
        self._s = static
        self.s_pub = _x25519_public_bytes(static)
        self._e = ephemeral
        self._re: bytes | None = None
        #: the remote's static key, once message 2 (initiator) or 3 (responder) was read
        self.rs: bytes | None = None
        self._step = 0  # index of the next message: 0, 1, 2, then 3 = finished

    @property
    def finished(self) -> bool:
        return self._step == 3

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    def _ephemeral(self) -> bytes:
        if self._e is None:
            self._e = X25519PrivateKey.generate()
        e_pub = _x25519_public_bytes(self._e)
        self._ss.mix_hash(e_pub)
        return e_pub

    def write_message(self, payload: bytes) -> bytes:
        step = self._step
        if step == 3 or (step % 2 == 0) != self.initiator:
            raise NoiseError("not our turn to write a handshake message", remote=False)
        ss = self._ss
        if step == 0:  # -> e
            out = self._ephemeral()
        elif step == 1:  # <- e, ee, s, es
            out = self._ephemeral()
            ss.mix_key(_dh(self._e, self._re))
            out += ss.encrypt_and_hash(self.s_pub)
            ss.mix_key(_dh(self._s, self._re))
        else:  # -> s, se
            out = ss.encrypt_and_hash(self.s_pub)
            ss.mix_key(_dh(self._s, self._re))
        out += ss.encrypt_and_hash(payload)
        self._step = step + 1
        return out

    def read_message(self, message: bytes) -> bytes:
        step = self._step
        if step == 3 or (step % 2 == 0) == self.initiator:
            raise NoiseError("not the remote's turn to send a handshake message", remote=False)
        ss = self._ss
        pos = 0
        if step in (0, 1):  # e
            if len(message) < _DH_LEN:
                raise NoiseError("handshake message too short for an ephemeral key")
            self._re = message[:_DH_LEN]
            ss.mix_hash(self._re)
            pos = _DH_LEN
        if step == 1:  # ee, s, es (as the initiator)
            ss.mix_key(_dh(self._e, self._re))
            pos = self._read_static(message, pos)
            ss.mix_key(_dh(self._e, self.rs))
        elif step == 2:  # s, se (as the responder)
            pos = self._read_static(message, pos)
            ss.mix_key(_dh(self._e, self.rs))
        if ss.cipher.has_key() and len(message) - pos < TAG_LEN:
            raise NoiseError("handshake message too short for its payload tag")
        payload = ss.decrypt_and_hash(message[pos:])
        self._step = step + 1
        return payload

    def _read_static(self, message: bytes, pos: int) -> int:
        end = pos + _DH_LEN + TAG_LEN
        if len(message) < end:
            raise NoiseError("handshake message too short for a static key")
        self.rs = self._ss.decrypt_and_hash(message[pos:end])
        return end

    def split(self) -> tuple[bytes, bytes]:
        if self._step != 3:
            raise NoiseError("handshake not finished", remote=False)
        return self._ss.split()


# --------------------------------------------------------------------------
# libp2p handshake


class NoiseStaticKey:
    """An X25519 static key together with our signed handshake payload.

    Reusing one for many handshakes saves a key generation and an Ed25519
    signature per connection (go and rust keep one per process too).
    """

    __slots__ = ("private", "public_bytes", "payload")

    def __init__(self, identity: Ed25519KeyPair, private: X25519PrivateKey | None = None) -> None:
        self.private = private if private is not None else X25519PrivateKey.generate()
        self.public_bytes = _x25519_public_bytes(self.private)
        signature = identity.sign(STATIC_KEY_SIGNATURE_PREFIX + self.public_bytes)
        #: the encoded NoiseHandshakePayload (no extensions)
        self.payload = field_bytes(1, identity.public_key.encode()) + field_bytes(2, signature)

    @classmethod
    def generate(cls, identity: Ed25519KeyPair) -> "NoiseStaticKey":
        return cls(identity)


_EXTENSIONS_CACHE: dict[tuple[str, ...], bytes] = {}


def _extensions(muxers: tuple[str, ...]) -> bytes:
    """The encoded ``extensions`` field (4) of a NoiseHandshakePayload
    offering ``muxers`` (NoiseExtensions.stream_muxers, field 2)."""
    enc = _EXTENSIONS_CACHE.get(muxers)
    if enc is None:
        ext = b"".join(field_bytes(2, m.encode()) for m in muxers)
        enc = field_bytes(4, ext)
        if len(_EXTENSIONS_CACHE) < 16:  # a process uses one or two lists
            _EXTENSIONS_CACHE[muxers] = enc
    return enc


def _stream_muxers(extensions: bytes) -> list[bytes] | None:
    """NoiseExtensions.stream_muxers, as bytes (compared, never decoded);
    None when there are none. (Its length is bounded by the handshake
    message's, 65535 bytes; matching it is one pass.)"""
    muxers = [value for number, wt, value in iter_fields(extensions) if number == 2 and wt == WT_LEN]
    return muxers or None


def _verify_payload(payload: bytes, remote_static: bytes) -> tuple[PublicKey, list[bytes] | None]:
    """The remote's identity key, proven by its signature of ``remote_static``,
    and the stream multiplexers its extensions offer (None: no list)."""
    key_bytes = None
    signature = None
    muxers = None
    try:
        for number, wt, value in iter_fields(payload):
            if wt != WT_LEN:
                continue
            if number == 1:
                key_bytes = value
            elif number == 2:
                signature = value
            elif number == 4:
                muxers = _stream_muxers(value)
            # unknown fields are skipped
    except ProtobufError as exc:
        raise NoiseError(f"malformed handshake payload: {exc}") from None
    if not key_bytes or not signature:
        raise NoiseError("handshake payload lacks the identity key or its signature")
    try:
        key = PublicKey.decode(key_bytes)
    except CryptoKeyError as exc:
        raise NoiseError(f"handshake payload carries a bad identity key: {exc}") from None
    if not key.verify(STATIC_KEY_SIGNATURE_PREFIX + remote_static, signature):
        raise NoiseError("remote's signature of its Noise static key does not verify")
    return key, muxers


_HS_RUNNING = 0
_HS_COMPLETE = 1
_HS_FAILED = 2


class NoiseHandshake:
    """One side of a libp2p Noise XX handshake.

    The initiator's first message is queued at construction: write what
    :meth:`data_to_send` returns, feed what arrives to :meth:`receive_data`,
    repeat until ``complete``. Then :meth:`transport` encrypts the rest, and
    ``unused`` holds bytes that arrived behind the final handshake message
    (already transport ciphertext: pass them to ``transport().decrypt``).

    ``expected_peer``: the PeerId the remote must prove (the initiator knows
    whom it dialed); a mismatch raises :class:`NoisePeerIdMismatch` (a
    :class:`NoiseError`), with ``remote_peer_id`` set to the proven identity.
    ``static_key``: a :class:`NoiseStaticKey` of this identity to reuse; a
    fresh one is generated when omitted.

    ``muxers``: the stream multiplexers to offer in the handshake (the
    inlined muxer negotiation of libp2p's connections spec: the responder's
    list in message 2, the initiator's in message 3, both in the payload's
    NoiseExtensions). When both sides sent a list, ``muxer`` is the first of
    the initiator's that both support once the handshake is complete, and
    no common one fails the handshake; otherwise ``muxer`` stays None and the
    multiplexer is negotiated with multistream-select after the handshake.
    """

    __slots__ = (
        "_hs",
        "_payload",
        "_expected",
        "_buf",
        "_out",
        "_state",
        "_transport",
        "remote_peer_id",
        "remote_public_key",
        "unused",
        "_muxers",
        "muxer",
    )

    def __init__(
        self,
        keypair: Ed25519KeyPair,
        *,
        initiator: bool,
        expected_peer: PeerId | None = None,
        static_key: NoiseStaticKey | None = None,
        muxers: tuple[str, ...] = (),
    ) -> None:
        if static_key is None:
            static_key = NoiseStaticKey(keypair)
        self._hs = _XXHandshakeState(initiator=initiator, static=static_key.private)
        self._payload = static_key.payload + _extensions(muxers) if muxers else static_key.payload
        self._muxers = muxers
        #: the stream multiplexer agreed in the handshake (None: negotiate it after)
        self.muxer: str | None = None
        self._expected = expected_peer
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._state = _HS_RUNNING
        self._transport: NoiseTransport | _CompiledTransport | None = None
        self.remote_peer_id: PeerId | None = None
        self.remote_public_key: PublicKey | None = None
        self.unused = b""
        if initiator:
            self._send(self._hs.write_message(_EMPTY))

    @property
    def initiator(self) -> bool:
        return self._hs.initiator

    @property
    def complete(self) -> bool:
        return self._state == _HS_COMPLETE

    @property
    def handshake_hash(self) -> bytes:
        """Noise's handshake hash ``h`` (channel binding), final once complete."""
        return self._hs.handshake_hash

    def _send(self, message: bytes) -> None:
        self._out.append(_pack_len(len(message)) + message)

    def data_to_send(self) -> bytes:
        """Framed handshake bytes to write (empty when there is nothing)."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the remote, any split. Raises :class:`NoiseError` on a
        malformed frame, a decryption failure, a bad signature or the wrong peer;
        the handshake is dead after an error."""
        state = self._state
        if state == _HS_COMPLETE:
            self.unused += data
            return
        if state == _HS_FAILED:
            raise NoiseError("Noise handshake already failed", remote=False)
        buf = self._buf
        buf += data
        try:
            pos = 0
            while self._state == _HS_RUNNING and len(buf) - pos >= 2:
                n = buf[pos] << 8 | buf[pos + 1]
                if len(buf) - pos - 2 < n:
                    break
                message = bytes(buf[pos + 2 : pos + 2 + n])
                pos += 2 + n
                self._on_message(message)
            if self._state == _HS_COMPLETE:
                self.unused = bytes(buf[pos:])
                buf.clear()
            else:
                del buf[:pos]
        except NoiseError:
            self._fail()
            raise
        except Exception as exc:  # pragma: no cover - defensive: never leak other errors
            self._fail()
            raise NoiseError(f"Noise handshake failed: {exc!r}") from exc

    def _fail(self) -> None:
        self._state = _HS_FAILED
        self._buf = bytearray()
        self._out.clear()

    def _on_message(self, message: bytes) -> None:
        hs = self._hs
        payload = hs.read_message(message)
        if hs.initiator:
            # message 2: e, ee, s, es + responder's payload
            self._authenticate(payload)
            self._send(hs.write_message(self._payload))
            self._finish()
        elif hs.finished:
            # message 3: s, se + initiator's payload
            self._authenticate(payload)
            self._finish()
        else:
            # message 1: e (its payload, empty by spec, is not used)
            self._send(hs.write_message(self._payload))

    def _authenticate(self, payload: bytes) -> None:
        rs = self._hs.rs
        assert rs is not None  # read with this message
        key, offered = _verify_payload(payload, rs)
        peer = PeerId.from_public_key(key)
        # set even when it is not the expected peer: the remote did prove this identity
        self.remote_public_key = key
        self.remote_peer_id = peer
        if self._expected is not None and peer != self._expected:
            raise NoisePeerIdMismatch(self._expected, peer)
        if offered is not None and self._muxers:
            self.muxer = self._match_muxer(offered)

    def _match_muxer(self, offered: list[bytes]) -> str:
        """The first of the initiator's muxers that both sides support."""
        ours = self._muxers
        if self._hs.initiator:
            for m in ours:
                if m.encode() in offered:
                    return m
        else:
            for raw in offered:
                for m in ours:
                    if raw == m.encode():
                        return m
        raise NoiseError("no stream multiplexer in common (inlined muxer negotiation)")

    def _finish(self) -> None:
        k1, k2 = self._hs.split()
        if self._hs.initiator:
            self._transport = _HandshakeTransport(k1, k2)
        else:
            self._transport = _HandshakeTransport(k2, k1)
        self._state = _HS_COMPLETE

    def transport(self) -> NoiseTransport | _CompiledTransport:
        """The transport cipher pair (the same object on every call): the
        compiled one where it is built (:data:`TRANSPORT_IMPL`)."""
        if self._transport is None:
            raise NoiseError("Noise handshake is not complete", remote=False)
        return self._transport


# --------------------------------------------------------------------------
# transport


class NoiseTransport:
    """Encrypts our direction and decrypts the remote's, after the handshake.

    Each direction is a Noise CipherState: one ChaCha20-Poly1305 object and a
    64-bit counter used as the nonce (4 zero bytes, then the counter
    little-endian), empty associated data. After a decryption failure the
    transport refuses further input.

    This is the plain-Python twin of the compiled transport in
    ``kadfast._noise`` that handshakes hand out (:data:`TRANSPORT_IMPL`),
    and its test oracle.
    """

    __slots__ = ("_enc", "_dec", "_send_n", "_recv_n", "_buf", "_failed")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._enc = ChaCha20Poly1305(send_key)
        self._dec = ChaCha20Poly1305(recv_key)
        self._send_n = 0
        self._recv_n = 0
        self._buf = bytearray()  # a partial frame, never more than one
        self._failed = False

    def encrypt(self, plaintext: bytes) -> bytes:
        """Framed ciphertext of ``plaintext``, split into frames of at most
        :data:`MAX_PLAINTEXT_LEN` bytes; empty input gives ``b""``."""
        size = len(plaintext)
        if size <= MAX_PLAINTEXT_LEN:
            if not size:
                return b""
            n = self._send_n
            if n >= _NONCE_LIMIT:
                raise NoiseError("send nonce exhausted", remote=False)
            self._send_n = n + 1
            ct = self._enc.encrypt(_NONCE_PREFIX + _pack_nonce(n), plaintext, None)
            return _pack_len(size + TAG_LEN) + ct
        enc = self._enc.encrypt
        view = memoryview(plaintext)
        parts = []
        n = self._send_n
        for start in range(0, size, MAX_PLAINTEXT_LEN):
            if n >= _NONCE_LIMIT:
                raise NoiseError("send nonce exhausted", remote=False)
            chunk = view[start : start + MAX_PLAINTEXT_LEN]
            parts.append(_pack_len(len(chunk) + TAG_LEN))
            parts.append(enc(_NONCE_PREFIX + _pack_nonce(n), chunk, None))
            n += 1
        self._send_n = n
        return b"".join(parts)

    def decrypt(self, data: bytes) -> bytes:
        """Feed ciphertext bytes (any split); returns the plaintext of every
        frame completed so far, joined (``b""`` when none). Raises
        :class:`NoiseError` on an authentication failure or a malformed frame."""
        if self._failed:
            raise NoiseError("Noise transport already failed", remote=False)
        buf = self._buf
        if buf:
            # finish the buffered frame first; copy only once it is complete
            buf += data
            blen = len(buf)
            if blen < 2 or blen < 2 + (buf[0] << 8 | buf[1]):
                return b""
            data = bytes(buf)
            buf.clear()
        end = len(data)
        view = memoryview(data)
        dec = self._dec.decrypt
        n = self._recv_n
        out = []
        pos = 0
        try:
            while end - pos >= 2:
                size = data[pos] << 8 | data[pos + 1]
                stop = pos + 2 + size
                if stop > end:
                    break
                if size < TAG_LEN:
                    raise NoiseError(f"Noise frame of {size} bytes is shorter than its tag")
                if n >= _NONCE_LIMIT:
                    raise NoiseError("receive nonce exhausted")
                out.append(dec(_NONCE_PREFIX + _pack_nonce(n), view[pos + 2 : stop], None))
                n += 1
                pos = stop
        except InvalidTag:
            self._failed = True
            raise NoiseError("Noise transport frame failed to authenticate") from None
        except NoiseError:
            self._failed = True
            raise
        finally:
            self._recv_n = n
        if pos < end:
            buf += view[pos:]
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)


_fallback_named = False


def name_fallback_once(log: logging.Logger) -> None:
    """Warn on ``log``, once per process, when the transport handshakes
    hand out is the plain-Python one (a build without the compiled
    module): a slower node is never a silent one."""
    global _fallback_named
    if TRANSPORT_IMPL != "compiled" and not _fallback_named:
        _fallback_named = True
        log.warning("Noise transport: %s", TRANSPORT_DESCRIPTION)


#: what a completed handshake hands out (see :data:`TRANSPORT_IMPL`)
_HandshakeTransport = NoiseTransport if _CompiledTransport is None else _CompiledTransport
