"""Certificates for the QUIC tests that are not libp2p's (imported by the
unit and the interop tests of QUIC)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kadfast.tls import Libp2pCertificate


def plain_certificate() -> Libp2pCertificate:
    """A valid self-signed certificate without the libp2p extension."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not libp2p")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return Libp2pCertificate(cert.public_bytes(serialization.Encoding.DER),
                             cert.public_bytes(serialization.Encoding.PEM), b"", key)
