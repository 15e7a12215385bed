"""IPNS records (kadfast.ipns): the IpnsEntry protobuf, the DAG-CBOR data,
verification as the IPNS record spec lays it out, ordering, and signing.

The spec's own test vectors are published only as links to binary record
files (no hex or base64 in the text), so the project ships none of them.
The tests below build the equivalent cases with kadfast's signer instead —
V1-only (invalid), V1+V2 (valid), V1+V2 with V1 value differing from the
CBOR (invalid), V1+V2 with a broken signatureV2 (invalid), V1+V2 with a
broken signatureV1 (valid), V2-only (valid) — and more invalid ones (key
mismatch, expired, oversized, wrong validity type, garbage CBOR, ...).
Records made by go (boxo's ``ipns.NewRecord``) are checked in
tests/interop/test_ipns.py.
"""

from __future__ import annotations

import time
from dataclasses import replace

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from kadfast import Ed25519KeyPair
from kadfast.errors import KadfastError
from kadfast.ipns import (
    MAX_RECORD_SIZE,
    IpnsEntry,
    IpnsError,
    compare,
    create_record,
    decode_entry,
    format_rfc3339,
    name_from_routing_key,
    parse_record,
    parse_rfc3339,
    routing_key,
    select_best,
    verify_record,
)
from kadfast.keys import KeyType, PublicKey
from kadfast.peerid import PeerId

KP = Ed25519KeyPair.from_seed(b"\x07" * 32)
OTHER = Ed25519KeyPair.from_seed(b"\x08" * 32)
NOW = 1_900_000_000.0  # a fixed wall-clock time (2030)
HOUR = 3600
VALUE = "/ipfs/bafkqaddwgevxmmraojswg33smq"


def signed(kp, doc: dict, *, v1: dict | None = None, pub_key: bytes | None = None,
           sig_v2: bytes | None = None, sig_v1: bytes | None = None) -> bytes:
    """A record whose data is ``doc`` (CBOR-encoded here, or raw bytes), signed
    by ``kp``, with the given V1 fields; the pieces overridable to break it."""
    data = doc if isinstance(doc, bytes) else cbor2.dumps(doc, canonical=True)
    fields = dict(v1 or {})
    if fields:
        fields["signature_v1"] = sig_v1 if sig_v1 is not None else kp.sign(
            fields.get("value", b"") + fields.get("validity", b"") + b"EOL")
    return IpnsEntry(
        data=data, signature_v2=sig_v2 if sig_v2 is not None else kp.sign(b"ipns-signature:" + data),
        pub_key=pub_key, **fields).encode()


def doc(value=VALUE.encode(), seq=1, eol=NOW + HOUR, ttl=300 * 10**9, vtype=0, **extra) -> dict:  # noqa: B008 - bytes
    d = {"Value": value, "Validity": format_rfc3339(int(eol * 10**9)), "ValidityType": vtype,
         "Sequence": seq, "TTL": ttl}
    d.update(extra)
    return d


def v1_of(d: dict) -> dict:
    return {"value": d["Value"], "validity": d["Validity"], "validity_type": d["ValidityType"],
            "sequence": d["Sequence"], "ttl": d["TTL"]}


class EcdsaSigner:
    """An ECDSA (P-256) key: its PeerId is a sha2-256 hash, so records must carry pubKey."""

    def __init__(self, curve=ec.SECP256R1(), key_type=KeyType.ECDSA):  # noqa: B008 - immutable
        self._key = ec.derive_private_key(4242, curve)
        pub = self._key.public_key()
        if key_type is KeyType.SECP256K1:
            data = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        else:
            data = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key = PublicKey(key_type, data)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


class RsaSigner:
    def __init__(self):
        self._key = rsa.generate_private_key(65537, 2048)
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key = PublicKey(KeyType.RSA, der)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, padding.PKCS1v15(), hashes.SHA256())


# -- the spec's test-vector cases, rebuilt ---------------------------------------------
def test_vector_cases_v1_only_is_invalid():
    d = doc()
    entry = IpnsEntry(**v1_of(d), signature_v1=KP.sign(d["Value"] + d["Validity"] + b"EOL"))
    with pytest.raises(IpnsError, match="signatureV2"):
        verify_record(KP.peer_id, entry.encode(), NOW)


def test_vector_cases_v1_and_v2_valid():
    raw = create_record(KP, VALUE, 3, NOW + HOUR)
    rec = verify_record(KP.peer_id, raw, NOW)
    assert rec.value == VALUE.encode() and rec.sequence == 3 and rec.ttl == 300 * 10**9
    e = rec.entry
    assert e.value == rec.value and e.sequence == 3 and e.validity == rec.validity and e.ttl == rec.ttl
    assert e.validity_type == 0 and e.signature_v1 and e.pub_key is None
    # the legacy V1 signature covers value + validity + "EOL", as go signs it
    assert KP.public_key.verify(e.value + e.validity + b"EOL", e.signature_v1)
    assert abs(rec.eol - (NOW + HOUR)) < 1e-6


def test_vector_cases_v1_value_differing_from_cbor_is_invalid():
    d = doc()
    v1 = v1_of(d) | {"value": b"/ipfs/bafkqaaa"}  # both signatures valid, values differ
    raw = signed(KP, d, v1=v1)
    e = decode_entry(raw)
    assert KP.public_key.verify(e.value + e.validity + b"EOL", e.signature_v1)
    with pytest.raises(IpnsError, match="value"):
        verify_record(KP.peer_id, raw, NOW)


def test_vector_cases_broken_signature_v2_is_invalid():
    d = doc()
    raw = signed(KP, d, v1=v1_of(d), sig_v2=OTHER.sign(b"ipns-signature:" + cbor2.dumps(d, canonical=True)))
    with pytest.raises(IpnsError, match="signatureV2 does not verify"):
        verify_record(KP.peer_id, raw, NOW)


def test_vector_cases_broken_signature_v1_is_still_valid():
    d = doc(value=b"/ipfs/bafkqahtwgevxmmrao5uxi2bamjzg623fnyqhg2lhnzqxi5lsmuqhmmi")
    raw = signed(KP, d, v1=v1_of(d), sig_v1=b"\x00" * 64)
    assert verify_record(KP.peer_id, raw, NOW).value == d["Value"]


def test_vector_cases_v2_only_is_valid():
    raw = create_record(KP, VALUE, 0, NOW + HOUR, v1=False)
    e = decode_entry(raw)
    assert (e.value, e.signature_v1, e.validity, e.sequence, e.ttl, e.validity_type) == (None,) * 6
    assert verify_record(KP.peer_id, raw, NOW).sequence == 0


# -- each V1 field must agree with the signed data ------------------------------------------
@pytest.mark.parametrize("field, bad", [
    ("validity", format_rfc3339(int((NOW + 2 * HOUR) * 10**9))),
    ("sequence", 9),
    ("ttl", 1),
    ("validity_type", 1),
])
def test_every_v1_field_must_match_the_data(field, bad):
    d = doc()
    raw = signed(KP, d, v1=v1_of(d) | {field: bad})
    with pytest.raises(IpnsError, match="differ"):
        verify_record(KP.peer_id, raw, NOW)


def test_v1_value_alone_triggers_the_check_and_missing_v1_fields_count_as_defaults():
    d = doc(seq=0, ttl=0)
    # value present, no signatureV1; the others absent: defaults (0, b"") must match
    entry = IpnsEntry(value=d["Value"], validity=d["Validity"], data=cbor2.dumps(d, canonical=True))
    data = entry.data
    raw = IpnsEntry(value=entry.value, validity=entry.validity, data=data,
                    signature_v2=KP.sign(b"ipns-signature:" + data)).encode()
    verify_record(KP.peer_id, raw, NOW)
    # without the validity copy, b"" differs from the data's validity
    raw = IpnsEntry(value=d["Value"], data=data, signature_v2=KP.sign(b"ipns-signature:" + data)).encode()
    with pytest.raises(IpnsError, match="validity"):
        verify_record(KP.peer_id, raw, NOW)


# -- keys --------------------------------------------------------------------------------------
def test_a_record_signed_by_another_key_is_refused():
    raw = create_record(OTHER, VALUE, 1, NOW + HOUR)
    with pytest.raises(IpnsError, match="signatureV2"):
        verify_record(KP.peer_id, raw, NOW)
    # the signer's key embedded does not help: it does not match the name
    raw = create_record(OTHER, VALUE, 1, NOW + HOUR, embed_public_key=True)
    with pytest.raises(IpnsError, match="does not match the name"):
        verify_record(KP.peer_id, raw, NOW)


def test_an_embedded_key_that_matches_the_name_is_used():
    raw = create_record(KP, VALUE, 1, NOW + HOUR, embed_public_key=True)
    assert decode_entry(raw).pub_key == KP.public_key.encode()
    verify_record(KP.peer_id, raw, NOW)
    d = doc()
    raw = signed(KP, d, pub_key=b"\x08\x01\x12\x03abc")  # not a key
    with pytest.raises(IpnsError, match="pubKey is not a public key"):
        verify_record(KP.peer_id, raw, NOW)


def test_hashed_names_need_the_embedded_key():
    signer = EcdsaSigner()
    name = PeerId.from_public_key(signer.public_key)
    assert name.to_bytes()[:2] == b"\x12\x20"
    raw = create_record(signer, VALUE, 1, NOW + HOUR)  # embedded by default: the name cannot hold it
    assert decode_entry(raw).pub_key == signer.public_key.encode()
    verify_record(name, raw, NOW)
    raw = create_record(signer, VALUE, 1, NOW + HOUR, embed_public_key=False)
    with pytest.raises(IpnsError, match="no pubKey"):
        verify_record(name, raw, NOW)


def test_rsa_and_secp256k1_records():
    signer = RsaSigner()
    name = PeerId.from_public_key(signer.public_key)
    verify_record(name, create_record(signer, VALUE, 1, NOW + HOUR), NOW)
    k1 = EcdsaSigner(ec.SECP256K1(), KeyType.SECP256K1)
    name = PeerId.from_public_key(k1.public_key)
    assert name.to_bytes()[0] == 0  # inlined: no pubKey needed
    raw = create_record(k1, VALUE, 1, NOW + HOUR)
    assert decode_entry(raw).pub_key is None
    verify_record(name, raw, NOW)


# -- validity ------------------------------------------------------------------------------------
def test_expiry_uses_the_given_time_only():
    raw = create_record(KP, VALUE, 1, NOW + 10)
    verify_record(KP.peer_id, raw, NOW)
    verify_record(KP.peer_id, raw, NOW + 10)  # valid up to and at its end of life
    with pytest.raises(IpnsError, match="expired"):
        verify_record(KP.peer_id, raw, NOW + 10.001)
    with pytest.raises(IpnsError, match="expired"):
        verify_record(KP.peer_id, create_record(KP, VALUE, 1, time.time() - 1), time.time())


def test_only_the_eol_validity_type_is_known():
    d = doc(vtype=1)
    with pytest.raises(IpnsError, match="validity type"):
        verify_record(KP.peer_id, signed(KP, d), NOW)


@pytest.mark.parametrize("validity", [b"", b"tomorrow", b"2030-01-01 00:00:00Z", b"2030-01-01T00:00:00",
                                      b"2030-13-01T00:00:00Z", b"2030-01-01T00:00:00.1234567891Z",
                                      b"2030-01-01T24:00:00Z", b"2030-01-01T00:00:00+25:00"])
def test_unparsable_validity_is_refused(validity):
    d = doc() | {"Validity": validity}
    with pytest.raises(IpnsError):
        verify_record(KP.peer_id, signed(KP, d), NOW)


def test_rfc3339():
    assert parse_rfc3339(b"1970-01-01T00:00:00.000000001Z") == 1
    assert parse_rfc3339(b"1970-01-01T00:00:01Z") == 10**9
    assert parse_rfc3339(b"1970-01-01T00:00:00.5Z") == 5 * 10**8
    assert parse_rfc3339(b"2000-01-01T02:00:00+02:00") == parse_rfc3339(b"2000-01-01T00:00:00Z") == 946684800 * 10**9
    assert parse_rfc3339(b"1999-12-31T23:00:00-01:00") == 946684800 * 10**9
    # go's RFC3339Nano: no trailing zeros, no fraction when it is zero
    assert format_rfc3339(946684800 * 10**9) == b"2000-01-01T00:00:00Z"
    assert format_rfc3339(946684800 * 10**9 + 500_000_000) == b"2000-01-01T00:00:00.5Z"
    assert format_rfc3339(1) == b"1970-01-01T00:00:00.000000001Z"
    for ns in (0, 1, 123456789, 1_900_000_000_123_456_789, -1):
        assert parse_rfc3339(format_rfc3339(ns)) == ns
    assert format_rfc3339(-1) == b"1969-12-31T23:59:59.999999999Z"
    with pytest.raises(IpnsError):
        format_rfc3339(253402300800 * 10**9)  # the year 10000


# -- size and shape ----------------------------------------------------------------------------------
def padded_record(size: int) -> bytes:
    """A valid record of exactly ``size`` bytes (an extra field pads the data)."""
    pad = 0
    for _ in range(4):
        raw = signed(KP, doc(_pad=b"x" * pad))
        pad += size - len(raw)
    assert len(raw) == size
    return raw


def test_size_limit_is_10_kib():
    assert MAX_RECORD_SIZE == 10240
    verify_record(KP.peer_id, padded_record(MAX_RECORD_SIZE), NOW)
    raw = padded_record(MAX_RECORD_SIZE + 1)
    with pytest.raises(IpnsError, match="limit"):
        verify_record(KP.peer_id, raw, NOW)
    with pytest.raises(IpnsError, match="limit"):
        create_record(KP, VALUE, 1, NOW + HOUR, extra={"_pad": b"x" * MAX_RECORD_SIZE})


@pytest.mark.parametrize("data", [
    b"\xff\xfe\xfd",                                  # garbage
    cbor2.dumps([1, 2, 3]),                           # not a map
    cbor2.dumps(doc(), canonical=True) + b"\x00",     # bytes after the map
    bytes.fromhex("bf") + cbor2.dumps(doc(), canonical=True)[1:] + b"\xff",  # indefinite-length map
    cbor2.dumps({1: 2}),                              # non-string key
    cbor2.dumps({k: v for k, v in doc().items() if k != "TTL"}),  # a field missing
    cbor2.dumps(doc() | {"Value": "text, not bytes"}),
    cbor2.dumps(doc() | {"Sequence": True}),
    cbor2.dumps(doc() | {"Sequence": -1}),
    cbor2.dumps(doc() | {"TTL": -5}),
    cbor2.dumps(doc() | {"Sequence": 1 << 63}),
    cbor2.dumps(doc() | {"Sequence": cbor2.CBORTag(2, b"\x01")}),  # a bignum (tag 2)
    cbor2.dumps(doc() | {"_when": cbor2.CBORTag(1, 0)}),          # a tag other than 42
])
def test_data_that_is_not_the_spec_dag_cbor_is_refused(data):
    with pytest.raises(IpnsError):
        verify_record(KP.peer_id, signed(KP, data), NOW)


def test_extra_fields_are_ignored_and_cid_links_allowed():
    link = cbor2.CBORTag(42, b"\x00\x01\x55\x00\x00")
    raw = signed(KP, doc(_meta={"a": [1, 2.5, None]}, _link=link))
    assert verify_record(KP.peer_id, raw, NOW).sequence == 1
    raw = create_record(KP, VALUE, 1, NOW + HOUR, extra={"_note": "hi"})
    verify_record(KP.peer_id, raw, NOW)
    with pytest.raises(IpnsError):
        create_record(KP, VALUE, 1, NOW + HOUR, extra={"Sequence": 5})


def test_a_large_data_field_is_decoded_to_its_end():
    # bigger than the CBOR decoder's read buffer: trailing bytes are still seen
    data = cbor2.dumps(doc(_pad=b"p" * 9000), canonical=True)
    verify_record(KP.peer_id, signed(KP, data), NOW)
    with pytest.raises(IpnsError, match="after"):
        verify_record(KP.peer_id, signed(KP, data + b"\x01"), NOW)


def test_missing_or_empty_signature_v2_or_data():
    d = cbor2.dumps(doc(), canonical=True)
    for entry in (IpnsEntry(data=d), IpnsEntry(data=d, signature_v2=b""),
                  IpnsEntry(signature_v2=b"s"), IpnsEntry(signature_v2=b"s", data=b"")):
        with pytest.raises(IpnsError):
            verify_record(KP.peer_id, entry.encode(), NOW)


def test_protobuf_codec():
    e = IpnsEntry(value=b"v", signature_v1=b"s1", validity_type=0, validity=b"t", sequence=7,
                  ttl=9, pub_key=b"k", signature_v2=b"s2", data=b"d")
    raw = e.encode()
    assert decode_entry(raw) == e
    # fields in field-number order, as go writes them
    assert raw == bytes.fromhex("0a0176") + bytes.fromhex("12027331") + bytes.fromhex("1800") + \
        bytes.fromhex("220174") + bytes.fromhex("2807") + bytes.fromhex("3009") + \
        bytes.fromhex("3a016b") + bytes.fromhex("42027332") + bytes.fromhex("4a0164")
    assert decode_entry(b"") == IpnsEntry()
    # unknown fields skipped; a repeated field: the last wins
    assert decode_entry(bytes.fromhex("5a0178") + bytes.fromhex("2801") + bytes.fromhex("2802")).sequence == 2
    for bad in (bytes.fromhex("0801"),       # value as a varint
                bytes.fromhex("2a0101"),     # sequence as bytes
                bytes.fromhex("0a05ab"),     # truncated
                b"\x00"):                    # field number 0
        with pytest.raises(IpnsError):
            decode_entry(bad)


def test_routing_keys():
    key = routing_key(KP.peer_id)
    assert key == b"/ipns/" + KP.peer_id.to_bytes()
    assert name_from_routing_key(key) == KP.peer_id
    for bad in (b"/pk/" + KP.peer_id.to_bytes(), b"/ipns/", b"/ipns/junk"):
        with pytest.raises(IpnsError):
            name_from_routing_key(bad)


# -- ordering ----------------------------------------------------------------------------------------
def test_higher_sequence_wins_then_later_validity_then_greater_bytes():
    s1 = create_record(KP, VALUE, 1, NOW + HOUR)
    s2_short = create_record(KP, VALUE, 2, NOW + 60)
    s2_long = create_record(KP, VALUE, 2, NOW + HOUR)
    assert compare(s2_short, s1) == 1 and compare(s1, s2_short) == -1
    assert compare(s2_long, s2_short) == 1
    assert select_best([s1, s2_short, s2_long]) == 2
    assert select_best([s2_long, s1, s2_short]) == 0
    # equal sequence and validity: the greater bytes win, whatever the order
    a = create_record(KP, "/ipfs/bafkqaaa", 5, NOW + HOUR)
    b = create_record(KP, VALUE, 5, NOW + HOUR)
    hi, lo = (a, b) if a > b else (b, a)
    assert compare(hi, lo) == 1 and compare(lo, hi) == -1 and compare(a, a) == 0
    assert select_best([lo, hi]) == 1 and select_best([hi, lo]) == 0
    assert select_best([s1, s1]) == 0  # the first of equal ones
    # a value that does not parse loses against any that does
    assert select_best([b"junk", s1]) == 1 and select_best([s1, b"junk"]) == 0
    assert compare(b"junk", s1) == -1
    with pytest.raises(IpnsError):
        select_best([])


def test_create_record_arguments():
    raw = create_record(KP, b"/ipfs/bafkqaaa", 1, int(NOW) + 1, ttl=60)
    rec = parse_record(raw)
    assert rec.eol_ns == (int(NOW) + 1) * 10**9 and rec.ttl == 60 * 10**9
    for kw in ({"sequence": -1}, {"sequence": 1 << 63}, {"ttl": -1.0}):
        args = {"sequence": 1, "ttl": 300.0} | kw
        with pytest.raises(IpnsError):
            create_record(KP, VALUE, args["sequence"], NOW + HOUR, args["ttl"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_verification_of_random_bytes_raises_only_ipns_error(raw):
    try:
        verify_record(KP.peer_id, raw, NOW)
    except IpnsError as exc:
        assert isinstance(exc, KadfastError)
        return
    raise AssertionError("random bytes verified")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 63) - 1), st.integers(0, 10**11), st.booleans(), st.binary(max_size=60))
def test_created_records_verify_and_keep_their_values(seq, eol_offset, v1, value):
    raw = create_record(KP, value, seq, int(NOW) + eol_offset, v1=v1)
    rec = verify_record(KP.peer_id, raw, NOW)
    assert (rec.value, rec.sequence, rec.eol_ns) == (value, seq, (int(NOW) + eol_offset) * 10**9)
    # flipping any byte of the signed data or of the signature breaks the record
    e = rec.entry
    for broken in (replace(e, signature_v2=bytes([e.signature_v2[0] ^ 1]) + e.signature_v2[1:]),
                   replace(e, data=e.data[:-1] + bytes([e.data[-1] ^ 1]))):
        with pytest.raises(IpnsError):
            verify_record(KP.peer_id, broken.encode(), NOW)

