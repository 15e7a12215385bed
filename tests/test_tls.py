"""libp2p TLS certificates (kadfast.tls) against the spec's test vectors
(libp2p/specs tls/tls.md) and every MUST of its Peer Authentication
section."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from kadfast.errors import TlsCertificateError
from kadfast.keys import Ed25519KeyPair
from kadfast.peerid import PeerId
from kadfast.tls import (
    ALPN,
    EXTENSION_OID,
    SIGNATURE_PREFIX,
    decode_signed_key,
    encode_signed_key,
    make_certificate,
    verify_certificate_chain,
)

# the spec's test vectors: hex DER certificate, the PeerId it authenticates
VECTORS = [
    (
        "308201ae30820156a0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c696270"
        "32702e696f310a300806035504051301313020170d3735303130313133303030305a180f343039363031303131333030"
        "30305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d"
        "020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd60133"
        "1c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea37c307a3078060a2b0601040183a25a"
        "0101046a3068042408011220a77f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b90440d90d"
        "2769db992d5e6195dbb08e706b6651e024fda6cfb8846694a435519941cac215a8207792e42849cccc6cd8136c6e4bde"
        "92a58c5e08cfd4206eb5fe0bf909300a06082a8648ce3d0403020346003043021f50f6b6c52711a881778718238f650c"
        "9fb48943ae6ee6d28427dc6071ae55e702203625f116a7a454db9c56986c82a25682f7248ea1cb764d322ea983ed36a3"
        "1b77",
        "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv",
    ),
    (
        "308201f63082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c696270"
        "32702e696f310a300806035504051301313020170d3735303130313133303030305a180f343039363031303131333030"
        "30305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d"
        "020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd60133"
        "1c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea381c23081bf3081bc060a2b06010401"
        "83a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f"
        "909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3d"
        "d72a801980d205e8a1ad29f2044730450220064ea8124774caf8f50e57f436aa62350ce652418c019df5d98a3ac666c9"
        "386a022100aa59d704a931b5f72fb9222cb6cc51f954d04a4e2e5450f8805fe8918f71eaae300a06082a8648ce3d0403"
        "0203470030440220799395b0b6c1e940a7e4484705f610ab51ed376f19ff9d7c16757cfbf61b8d4302206205c03fbb0f"
        "95205c779be86581d3e31c01871ad5d1f3435bcf375cb0e5088a",
        "QmfXbAwNjJLXfesgztEHe8HwgVDCMMpZ9Eax1HYq6hn9uE",
    ),
    (
        "308201ba3082015fa0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c696270"
        "32702e696f310a300806035504051301313020170d3735303130313133303030305a180f343039363031303131333030"
        "30305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d"
        "020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd60133"
        "1c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea38184308181307f060a2b0601040183"
        "a25a01010471306f0425080212210206dc6968726765b820f050263ececf7f71e4955892776c0970542efd689d238204"
        "4630440220145e15a991961f0d08cd15425bb95ec93f6ffa03c5a385eedc34ecf464c7a8ab022026b3109b8a3f40ef83"
        "3169777eb2aa337cfb6282f188de0666d1bcec2a4690dd300a06082a8648ce3d0403020349003046022100e1a217eeef"
        "9ec9204b3f774a08b70849646b6a1e6b8b27f93dc00ed58545d9fe022100b00dafa549d0f03547878338c7b15e750288"
        "8f6d45db387e5ae6b5d46899cef0",
        "16Uiu2HAkutTMoTzDw1tCvSRtu6YoixJwS46S1ZFxW8hSx9fWHiPs",
    ),
]
# a mismatch between the PeerId it claims and the key that signed it
INVALID = (
        "308201f73082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c696270"
        "32702e696f310a300806035504051301313020170d3735303130313133303030305a180f343039363031303131333030"
        "30305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d"
        "020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd60133"
        "1c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea381c23081bf3081bc060a2b06010401"
        "83a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f"
        "909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3d"
        "d72a801980d205e8a1ad29f204473045022100bb6e03577b7cc7a3cd1558df0da2b117dfdcc0399bc2504ebe7de6f65c"
        "ade72802206de96e2a5be9b6202adba24ee0362e490641ac45c240db71fe955f2c5cf8df6e300a06082a8648ce3d0403"
        "020348003045022100e847f267f43717358f850355bdcabbefb2cfbf8a3c043b203a14788a092fe8db022027c1d04a2d"
        "41fd6b57a7e8b3989e470325de4406e52e084e34a3fd56eef0d0df"
)

KEY = Ed25519KeyPair.from_seed(b"\x05" * 32)
NOW = datetime.datetime(2026, 12, 4, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("cert_hex, peer", VECTORS)
def test_the_spec_vectors_authenticate_their_peer(cert_hex, peer):
    # Ed25519, ECDSA and secp256k1 host keys, each in an ECDSA certificate
    key = verify_certificate_chain([bytes.fromhex(cert_hex)], NOW)
    assert PeerId.from_public_key(key) == PeerId.from_string(peer)
    verify_certificate_chain([bytes.fromhex(cert_hex)], NOW, expected_peer=PeerId.from_string(peer))


def test_the_spec_vector_whose_host_key_did_not_sign_is_refused():
    with pytest.raises(TlsCertificateError, match="signature of the certificate key does not verify"):
        verify_certificate_chain([bytes.fromhex(INVALID)], NOW)


def test_the_spec_vectors_signed_key_encodes_back_to_itself():
    cert = x509.load_der_x509_certificate(bytes.fromhex(VECTORS[0][0]))
    raw = cert.extensions.get_extension_for_oid(EXTENSION_OID).value.value
    assert encode_signed_key(*decode_signed_key(raw)) == raw


def test_our_certificate_round_trip():
    ours = make_certificate(KEY, NOW)
    assert verify_certificate_chain([ours.der], NOW, expected_peer=KEY.peer_id) == KEY.public_key
    cert = x509.load_der_x509_certificate(ours.der)
    # its own key is ECDSA P-256, unrelated to the host key, and it signs itself
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.issuer == cert.subject
    assert x509.load_pem_x509_certificate(ours.pem).public_bytes(serialization.Encoding.DER) == ours.der
    assert serialization.load_pem_private_key(ours.key_pem, None).public_key() == cert.public_key()
    # valid from an hour before it was made, for a long time after
    assert cert.not_valid_before_utc <= NOW - datetime.timedelta(minutes=59)
    assert cert.not_valid_after_utc > NOW + datetime.timedelta(days=3650)
    assert ALPN == "libp2p"
    # a fresh key each time
    assert x509.load_der_x509_certificate(make_certificate(KEY, NOW).der).public_key() != cert.public_key()


def test_the_wrong_peer_is_refused():
    ours = make_certificate(KEY, NOW)
    other = Ed25519KeyPair.from_seed(b"\x06" * 32).peer_id
    with pytest.raises(TlsCertificateError, match="not the peer dialed"):
        verify_certificate_chain([ours.der], NOW, expected_peer=other)


def test_exactly_one_certificate():
    ours = make_certificate(KEY, NOW)
    for chain in ([], [ours.der, ours.der]):
        with pytest.raises(TlsCertificateError, match="exactly one certificate"):
            verify_certificate_chain(chain, NOW)


def test_a_certificate_outside_its_validity_is_refused():
    ours = make_certificate(KEY, NOW)
    with pytest.raises(TlsCertificateError, match="not yet valid"):
        verify_certificate_chain([ours.der], NOW - datetime.timedelta(hours=2))
    with pytest.raises(TlsCertificateError, match="expired"):
        verify_certificate_chain([ours.der], NOW + datetime.timedelta(days=365 * 101))


def _build(*, extensions=(), signer=None, subject="a", issuer="a"):
    """A certificate by hand: its key, its extensions, and who signs it."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, issuer)]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
    )
    for ext in extensions:
        if ext == "libp2p":
            value = encode_signed_key(KEY.public_key.encode(), KEY.sign(SIGNATURE_PREFIX + spki))
            builder = builder.add_extension(x509.UnrecognizedExtension(EXTENSION_OID, value), critical=False)
        elif ext == "libp2p-critical":
            value = encode_signed_key(KEY.public_key.encode(), KEY.sign(SIGNATURE_PREFIX + spki))
            builder = builder.add_extension(x509.UnrecognizedExtension(EXTENSION_OID, value), critical=True)
        elif ext == "libp2p-raw":
            continue
        else:
            oid, critical = ext
            builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), b"\x05\x00"),
                                            critical=critical)
    return builder.sign(signer or key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_the_libp2p_extension_may_be_critical():
    assert verify_certificate_chain([_build(extensions=["libp2p-critical"])], NOW) == KEY.public_key


def test_a_certificate_without_the_libp2p_extension_is_refused():
    with pytest.raises(TlsCertificateError, match="lacks the libp2p public key extension"):
        verify_certificate_chain([_build()], NOW)


def test_unknown_extensions_ignored_unless_critical():
    unknown = "1.3.6.1.4.1.99999.1"
    assert verify_certificate_chain([_build(extensions=["libp2p", (unknown, False)])], NOW) == KEY.public_key
    with pytest.raises(TlsCertificateError, match="critical extension we do not know"):
        verify_certificate_chain([_build(extensions=["libp2p", (unknown, True)])], NOW)


def test_a_bad_self_signature_is_refused():
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TlsCertificateError, match="self-signature does not verify"):
        verify_certificate_chain([_build(extensions=["libp2p"], signer=stranger)], NOW)
    # nor one whose issuer is not itself
    with pytest.raises(TlsCertificateError, match="self-signature does not verify"):
        verify_certificate_chain([_build(extensions=["libp2p"], issuer="b")], NOW)


def test_a_malformed_certificate_is_refused():
    with pytest.raises(TlsCertificateError, match="malformed certificate"):
        verify_certificate_chain([b"\x30\x03\x02\x01\x01"], NOW)


@pytest.mark.parametrize("raw, why", [
    (b"", "malformed SignedKey"),
    (b"\x31\x00", "malformed SignedKey"),  # a SET, not a SEQUENCE
    (b"\x30\x04\x04\x01a\x04", "malformed SignedKey"),  # the signature's length is missing
    (b"\x30\x07\x04\x01a\x04\x01b", "truncated"),  # shorter than it says
    (b"\x30\x06\x04\x01a\x04\x01bX", "bytes after the SignedKey"),
    (b"\x30\x09\x04\x01a\x04\x01b\x04\x01c", "beyond publicKey and signature"),
    (b"\x30\x07\x04\x81\x01a\x04\x01b", "shortest form"),  # a long form for a short length
    (b"\x30\x80\x04\x01a\x04\x01b\x00\x00", "malformed SignedKey length"),  # BER's indefinite length
])
def test_a_malformed_signed_key_is_refused(raw, why):
    with pytest.raises(TlsCertificateError, match=why):
        decode_signed_key(raw)


def test_long_lengths_in_a_signed_key():
    key, sig = b"k" * 200, b"s" * 7000  # two-byte lengths
    assert decode_signed_key(encode_signed_key(key, sig)) == (key, sig)
    with pytest.raises(TlsCertificateError, match="exceeds"):
        decode_signed_key(encode_signed_key(key, b"s" * 9000))


@given(st.binary(max_size=64))
def test_any_signed_key_bytes_decode_or_raise_our_error(raw):
    try:
        key, sig = decode_signed_key(raw)
    except TlsCertificateError:
        return
    assert encode_signed_key(key, sig) == raw  # what decodes is DER: it encodes back the same


def test_what_the_parser_cannot_use_is_our_error():
    # found by fuzzing: cryptography raises other errors for these
    der = make_certificate(KEY, NOW).der
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert der.count(p256) == 1
    with pytest.raises(TlsCertificateError, match="key is not one we can use"):
        verify_certificate_chain([der.replace(p256, bytes.fromhex("06082a8648ce3d030109"))], NOW)  # an unknown curve
    v3 = bytes.fromhex("a003020102")
    assert der.count(v3) == 1
    with pytest.raises(TlsCertificateError, match="malformed certificate"):
        verify_certificate_chain([der.replace(v3, bytes.fromhex("a003020142"))], NOW)  # X.509 version 67
