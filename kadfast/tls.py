"""libp2p's TLS certificates (libp2p/specs tls/tls.md): the self-signed
X.509 certificate that carries a host key in the libp2p Public Key
Extension, made and checked, with no I/O.

A certificate's own key is an ECDSA P-256 key unrelated to the host key
(the spec: it SHOULD NOT be related; go-libp2p and rust-libp2p do the
same), signed with ECDSA-SHA256. The extension (OID
``1.3.6.1.4.1.53594.1.1``) holds the DER ``SignedKey ::= SEQUENCE {
publicKey OCTET STRING, signature OCTET STRING }``: the host key as the
libp2p ``PublicKey`` protobuf, and its signature of
``"libp2p-tls-handshake:" || SubjectPublicKeyInfo of the certificate key``.

:func:`make_certificate` makes ours (once per host: the spec allows
reusing it for many connections); :func:`verify_certificate_chain` checks
what a peer presented, every MUST of the spec's Peer Authentication
section, and returns the host key it proves. X.509 parsing and every
signature are ``cryptography``'s; only the two-field ``SignedKey`` is
decoded here, strictly (DER, bounded).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .errors import CryptoKeyError, TlsCertificateError
from .keys import Ed25519KeyPair, PublicKey
from .peerid import PeerId

__all__ = [
    "ALPN",
    "EXTENSION_OID",
    "SIGNATURE_PREFIX",
    "Libp2pCertificate",
    "make_certificate",
    "verify_certificate_chain",
]

#: The ALPN protocol of libp2p over TLS (and QUIC).
ALPN = "libp2p"
#: The libp2p Public Key Extension (IANA enterprise number 53594).
EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
#: What the host key signs, followed by the certificate key's SubjectPublicKeyInfo.
SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
#: A SignedKey far larger than any key type's (RSA-16384 and its signature
#: are under 5 KiB) is refused before it is decoded.
MAX_SIGNED_KEY_BYTES = 8192
#: Our certificate is valid from an hour before it is made (clocks disagree)
#: for this long: a host makes one at start and keeps it.
VALIDITY = datetime.timedelta(days=365 * 100)
_BACKDATE = datetime.timedelta(hours=1)

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Libp2pCertificate:
    """Our certificate (``der``, and ``pem`` for TLS libraries that want
    files or text) and its private key (``key_pem``, PKCS#8)."""

    der: bytes
    pem: bytes
    key_pem: bytes
    private_key: ec.EllipticCurvePrivateKey


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def encode_signed_key(public_key: bytes, signature: bytes) -> bytes:
    """The DER SignedKey of an encoded host key and its signature."""
    return _der(0x30, _der(0x04, public_key) + _der(0x04, signature))


def _read_tlv(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """One DER element of ``tag`` at ``pos``: its contents and the end.
    Lengths must be minimal (DER), as every implementation writes them."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise TlsCertificateError("malformed SignedKey in the libp2p extension")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        n = first
    else:
        count = first & 0x7F
        if count == 0 or count > 2 or pos + count > len(data):
            raise TlsCertificateError("malformed SignedKey length in the libp2p extension")
        n = int.from_bytes(data[pos : pos + count], "big")
        if n < 0x80 or (count == 2 and n < 0x100):
            raise TlsCertificateError("SignedKey length not in DER's shortest form")
        pos += count
    end = pos + n
    if end > len(data):
        raise TlsCertificateError("truncated SignedKey in the libp2p extension")
    return data[pos:end], end


def decode_signed_key(data: bytes) -> tuple[bytes, bytes]:
    """``(publicKey, signature)`` of a DER SignedKey; nothing may follow."""
    if len(data) > MAX_SIGNED_KEY_BYTES:
        raise TlsCertificateError(f"SignedKey of {len(data)} bytes exceeds {MAX_SIGNED_KEY_BYTES}")
    body, end = _read_tlv(data, 0, 0x30)
    if end != len(data):
        raise TlsCertificateError("bytes after the SignedKey in the libp2p extension")
    key, pos = _read_tlv(body, 0, 0x04)
    signature, pos = _read_tlv(body, pos, 0x04)
    if pos != len(body):
        raise TlsCertificateError("SignedKey has fields beyond publicKey and signature")
    return key, signature


def make_certificate(identity: Ed25519KeyPair, now: datetime.datetime | None = None) -> Libp2pCertificate:
    """A fresh certificate key and the self-signed certificate that carries
    ``identity``'s host key, valid from an hour before ``now``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(*_SPKI)
    signed = encode_signed_key(identity.public_key.encode(), identity.sign(SIGNATURE_PREFIX + spki))
    # the subject says nothing: the peer is who the extension proves
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, os.urandom(8).hex())])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.UnrecognizedExtension(EXTENSION_OID, signed), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Libp2pCertificate(
        der=cert.public_bytes(serialization.Encoding.DER),
        pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        private_key=key,
    )


def verify_certificate_chain(
    chain: list[bytes], now: datetime.datetime | None = None, expected_peer: PeerId | None = None
) -> PublicKey:
    """The host key that a peer's certificate chain (DER certificates, as
    received) proves; :class:`TlsCertificateError` unless it holds exactly
    one certificate that is valid at ``now``, self-signed with a valid
    signature, has no critical extension but the libp2p one, and carries
    the libp2p extension whose host-key signature verifies. With
    ``expected_peer`` (a client knows whom it dialed) the key must be
    that peer's."""
    if len(chain) != 1:
        raise TlsCertificateError(f"a libp2p peer sends exactly one certificate, not {len(chain)}")
    try:
        cert = x509.load_der_x509_certificate(chain[0])
    except (ValueError, x509.InvalidVersion) as exc:
        raise TlsCertificateError(f"malformed certificate: {exc}") from None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    except ValueError as exc:  # a time Python cannot hold (year 0)
        raise TlsCertificateError(f"malformed certificate validity: {exc}") from None
    if now < not_before:
        raise TlsCertificateError("the certificate is not yet valid")
    if now > not_after:
        raise TlsCertificateError("the certificate has expired")
    try:
        cert_key = cert.public_key()
        spki = cert_key.public_bytes(*_SPKI)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TlsCertificateError(f"the certificate's key is not one we can use: {exc}") from None
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature) as exc:
        raise TlsCertificateError(f"the certificate's self-signature does not verify: {exc or 'invalid'}") from None
    signed = None
    try:
        extensions = cert.extensions
    except ValueError as exc:  # a duplicate or malformed extension
        raise TlsCertificateError(f"malformed certificate extensions: {exc}") from None
    for ext in extensions:
        if ext.oid == EXTENSION_OID:
            signed = ext.value.value  # an UnrecognizedExtension: its DER bytes
        elif ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            raise TlsCertificateError(f"the certificate has a critical extension we do not know: {ext.oid.dotted_string}")
    if signed is None:
        raise TlsCertificateError("the certificate lacks the libp2p public key extension")
    key_bytes, signature = decode_signed_key(signed)
    try:
        host_key = PublicKey.decode(key_bytes)
    except CryptoKeyError as exc:
        raise TlsCertificateError(f"the libp2p extension carries a bad host key: {exc}") from None
    if not host_key.verify(SIGNATURE_PREFIX + spki, signature):
        raise TlsCertificateError("the host key's signature of the certificate key does not verify")
    if expected_peer is not None and PeerId.from_public_key(host_key) != expected_peer:
        raise TlsCertificateError(
            f"the certificate proves {PeerId.from_public_key(host_key)}, not the peer dialed ({expected_peer})"
        )
    return host_key
