"""IPNS records (ipfs/specs ``src/ipns/ipns-record.md``): the ``IpnsEntry``
protobuf, its DAG-CBOR ``data``, verification, ordering and signing.

Sans-IO: nothing here reads a clock or the network; verification takes the
current time as an argument.

The wire form is the ``IpnsEntry`` protobuf::

    value = 1 (bytes)        signatureV1 = 2 (bytes)   validityType = 3 (enum)
    validity = 4 (bytes)     sequence = 5 (uint64)     ttl = 6 (uint64)
    pubKey = 7 (bytes)       signatureV2 = 8 (bytes)   data = 9 (bytes)

``data`` is a DAG-CBOR map with (at least) ``Value`` (bytes), ``Validity``
(bytes: an RFC 3339 time, the end of life), ``ValidityType`` (int, 0 = EOL,
the only type there is), ``Sequence`` (uint64) and ``TTL`` (uint64,
nanoseconds). Fields 1-6 are the legacy V1 copies of those values.

A record under the routing key ``b"/ipns/" + name`` (``name``: PeerId bytes)
is valid when, in the spec's order:

1. the serialized record is at most :data:`MAX_RECORD_SIZE` (10 KiB);
2. ``signatureV2`` and ``data`` are present and not empty;
3. the public key is the record's ``pubKey`` (whose PeerId must be the
   name), or else the one inlined in the name (an identity multihash);
4. ``data`` decodes as DAG-CBOR (no indefinite lengths, no duplicate or
   non-string keys, no tags but 42, nothing after the map) with the five
   fields of the right types;
5. ``signatureV2`` verifies over ``b"ipns-signature:" + data``;
6. when ``signatureV1`` or ``value`` is present, each V1 field equals its
   ``data`` counterpart (a missing one counts as its protobuf default);
   ``signatureV1`` itself is never checked, as the spec requires;
7. ``ValidityType`` is 0 (EOL) and ``Validity`` parses as an RFC 3339 time
   that is not before now.

Of two valid records the better one (:func:`compare`, as boxo's ``ipns``
package orders them) has the higher ``Sequence``; at equal sequence, the
later ``Validity``; at equal both, the one whose bytes are greater, so that
the choice never depends on the order records arrived in.

Sequence numbers stop at 2**63 - 1 (kadfast's varints are 63-bit, and go
reads the CBOR ``Sequence`` as an int64).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import cbor2

from .errors import CryptoKeyError, IpnsError, PeerIdError, ProtobufError
from .keys import PublicKey
from .peerid import MH_IDENTITY, PeerId
from .protobuf import WT_LEN, WT_VARINT, field_bytes, field_varint, iter_fields

__all__ = [
    "MAX_RECORD_SIZE",
    "NAMESPACE",
    "VALIDITY_EOL",
    "DEFAULT_TTL_NS",
    "IpnsError",
    "IpnsEntry",
    "IpnsRecord",
    "Signer",
    "routing_key",
    "name_from_routing_key",
    "decode_entry",
    "parse_record",
    "verify_record",
    "compare",
    "select_best",
    "create_record",
    "format_rfc3339",
    "parse_rfc3339",
]

#: The spec's record size limit: a serialized ``IpnsEntry`` of at most 10 KiB.
MAX_RECORD_SIZE = 10 * 1024
#: Routing keys of IPNS records are ``NAMESPACE + PeerId bytes``.
NAMESPACE = b"/ipns/"
#: ``ValidityType`` 0: ``Validity`` is the end of life of the record.
VALIDITY_EOL = 0
#: The spec's suggested TTL: 5 minutes, in nanoseconds.
DEFAULT_TTL_NS = 300 * 10**9
#: What the V2 signature covers: this prefix, then the raw ``data`` bytes.
SIGNATURE_V2_PREFIX = b"ipns-signature:"

#: What the legacy V1 signature covers after value and validity: go formats
#: the protobuf enum, so EOL's name
_V1_VALIDITY_TYPE = b"EOL"

_MAX_UINT63 = (1 << 63) - 1
_NS = 10**9

# the five fields of ``data`` the spec defines
_VALUE, _VALIDITY, _VALIDITY_TYPE, _SEQUENCE, _TTL = "Value", "Validity", "ValidityType", "Sequence", "TTL"


# -- names -------------------------------------------------------------------
def routing_key(name: PeerId) -> bytes:
    """The DHT key of ``name``'s records: ``b"/ipns/" + PeerId bytes``."""
    return NAMESPACE + name.to_bytes()


def name_from_routing_key(key: bytes) -> PeerId:
    """The name (a PeerId) of a routing key ``b"/ipns/" + PeerId bytes``."""
    if not key.startswith(NAMESPACE):
        raise IpnsError("key is not in the /ipns/ namespace")
    try:
        return PeerId(key[len(NAMESPACE):])
    except PeerIdError as exc:
        raise IpnsError(f"/ipns/ key does not hold a PeerId: {exc}") from None


# -- RFC 3339 times ------------------------------------------------------------
_RFC3339 = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d{2}):(\d{2}))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_rfc3339(text: bytes) -> int:
    """Nanoseconds since the Unix epoch of an RFC 3339 time with up to nine
    fractional digits (go's ``time.RFC3339Nano``, the spec's format):
    ``1970-01-01T00:00:00.000000001Z``, or an offset such as ``+02:00``."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise IpnsError(f"validity {text[:64]!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac = m.group(7) or b""
    try:
        dt = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError as exc:
        raise IpnsError(f"validity {text[:64]!r}: {exc}") from None
    offset = 0
    if m.group(8) is None:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise IpnsError(f"validity {text[:64]!r}: bad time zone offset")
        offset = (oh * 60 + om) * 60 * (1 if m.group(9) == b"+" else -1)
    delta = dt - _EPOCH
    seconds = delta.days * 86400 + delta.seconds - offset
    return seconds * _NS + int(frac.ljust(9, b"0") or b"0")


def format_rfc3339(eol_ns: int) -> bytes:
    """``eol_ns`` (nanoseconds since the epoch) as go's ``RFC3339Nano`` in
    UTC: trailing zeros of the fraction left out, and the fraction too when
    it is zero (``2030-01-02T03:04:05.5Z``)."""
    seconds, ns = divmod(int(eol_ns), _NS)
    try:
        dt = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        raise IpnsError(f"time {eol_ns} ns is outside the years 1-9999") from None
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ns:
        text += "." + f"{ns:09d}".rstrip("0")
    return (text + "Z").encode()


# -- the protobuf ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IpnsEntry:
    """The ``IpnsEntry`` protobuf as it is on the wire (None: field absent)."""

    value: bytes | None = None
    signature_v1: bytes | None = None
    validity_type: int | None = None
    validity: bytes | None = None
    sequence: int | None = None
    ttl: int | None = None
    pub_key: bytes | None = None
    signature_v2: bytes | None = None
    data: bytes | None = None

    def encode(self) -> bytes:
        """The protobuf, fields in field-number order (as go writes them)."""
        out = []
        if self.value is not None:
            out.append(field_bytes(1, self.value))
        if self.signature_v1 is not None:
            out.append(field_bytes(2, self.signature_v1))
        if self.validity_type is not None:
            out.append(field_varint(3, self.validity_type))
        if self.validity is not None:
            out.append(field_bytes(4, self.validity))
        if self.sequence is not None:
            out.append(field_varint(5, self.sequence))
        if self.ttl is not None:
            out.append(field_varint(6, self.ttl))
        if self.pub_key is not None:
            out.append(field_bytes(7, self.pub_key))
        if self.signature_v2 is not None:
            out.append(field_bytes(8, self.signature_v2))
        if self.data is not None:
            out.append(field_bytes(9, self.data))
        return b"".join(out)


_BYTES_FIELDS = {1: "value", 2: "signature_v1", 4: "validity", 7: "pub_key", 8: "signature_v2", 9: "data"}
_VARINT_FIELDS = {3: "validity_type", 5: "sequence", 6: "ttl"}


def decode_entry(raw: bytes) -> IpnsEntry:
    """Parse the ``IpnsEntry`` protobuf (unknown fields skipped; a repeated
    field: the last wins). Raises :class:`IpnsError`."""
    fields: dict[str, Any] = {}
    try:
        for number, wt, value in iter_fields(raw):
            name = _BYTES_FIELDS.get(number)
            if name is not None:
                if wt != WT_LEN:
                    raise IpnsError(f"IpnsEntry field {number} has wire type {wt}, not bytes")
                fields[name] = value
                continue
            name = _VARINT_FIELDS.get(number)
            if name is not None:
                if wt != WT_VARINT:
                    raise IpnsError(f"IpnsEntry field {number} has wire type {wt}, not a varint")
                fields[name] = value
    except ProtobufError as exc:
        raise IpnsError(f"malformed IpnsEntry protobuf: {exc}") from None
    return IpnsEntry(**fields)


# -- DAG-CBOR ``data`` -------------------------------------------------------------
def _refuse_tag(*args):
    raise IpnsError("DAG-CBOR allows no tag but 42")


def _tag_hook(tag, *args):
    if tag.tag == 42:  # a CID link: allowed in DAG-CBOR (e.g. in extra fields)
        return tag
    raise IpnsError(f"DAG-CBOR allows no tag but 42, got {tag.tag}")


# the tags that cbor2 decodes itself (tag_hook sees only the others)
_SEMANTIC_REFUSED = {t: _refuse_tag for t in (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 38, 100,
                                                256, 258, 260, 261, 1004, 55799)}


def _decode_data(data: bytes) -> dict:
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp, tag_hook=_tag_hook, semantic_decoders=_SEMANTIC_REFUSED, max_depth=32,
            allow_indefinite=False, allow_duplicate_keys=False, strict_hashable_types=True,
        )
        doc = decoder.decode()
    except (cbor2.CBORError, IpnsError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise IpnsError(f"record data is not DAG-CBOR: {exc}") from None
    if fp.tell() != len(data):
        raise IpnsError("record data has bytes after its DAG-CBOR map")
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise IpnsError("record data is not a DAG-CBOR map with string keys")
    return doc


def _field(doc: dict, name: str, kind: type):
    if name not in doc:
        raise IpnsError(f"record data lacks {name}")
    value = doc[name]
    if kind is int:
        if type(value) is not int:  # bool is an int subclass: refused
            raise IpnsError(f"record data {name} is not an integer")
        return value
    if type(value) is not bytes:
        raise IpnsError(f"record data {name} is not a byte string")
    return value


# -- parsed records ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IpnsRecord:
    """A parsed (not yet verified) record: the protobuf and the values of
    its ``data``."""

    entry: IpnsEntry
    value: bytes
    validity_type: int
    validity: bytes
    sequence: int
    ttl: int
    #: the bytes the record was parsed from
    raw: bytes

    @property
    def eol_ns(self) -> int:
        """End of life, in nanoseconds since the epoch (validity type EOL only)."""
        if self.validity_type != VALIDITY_EOL:
            raise IpnsError(f"unknown validity type {self.validity_type}")
        return parse_rfc3339(self.validity)

    @property
    def eol(self) -> float:
        """End of life, in seconds since the epoch."""
        return self.eol_ns / _NS


def parse_record(raw: bytes) -> IpnsRecord:
    """Steps 1, 2 and 4 of the verification: the size limit, the protobuf,
    and the DAG-CBOR ``data`` with its five fields of the right types. No
    signature, key or time is checked: see :func:`verify_record`."""
    raw = bytes(raw)
    if len(raw) > MAX_RECORD_SIZE:
        raise IpnsError(f"record of {len(raw)} bytes is over the {MAX_RECORD_SIZE}-byte limit")
    entry = decode_entry(raw)
    if not entry.signature_v2:
        raise IpnsError("record has no signatureV2")
    if not entry.data:
        raise IpnsError("record has no data")
    doc = _decode_data(entry.data)
    value = _field(doc, _VALUE, bytes)
    validity = _field(doc, _VALIDITY, bytes)
    validity_type = _field(doc, _VALIDITY_TYPE, int)
    sequence = _field(doc, _SEQUENCE, int)
    ttl = _field(doc, _TTL, int)
    if not 0 <= sequence <= _MAX_UINT63:
        raise IpnsError(f"record sequence {sequence} out of range")
    if not 0 <= ttl <= _MAX_UINT63:
        raise IpnsError(f"record TTL {ttl} out of range")
    return IpnsRecord(entry, value, validity_type, validity, sequence, ttl, raw)


def _public_key(entry: IpnsEntry, name: PeerId) -> PublicKey:
    if entry.pub_key:
        try:
            key = PublicKey.decode(entry.pub_key)
        except (CryptoKeyError, ValueError) as exc:
            raise IpnsError(f"record pubKey is not a public key: {exc}") from None
        if not name.matches_public_key(key):
            raise IpnsError("record pubKey does not match the name")
        return key
    if name.to_bytes()[0] != MH_IDENTITY:
        raise IpnsError("record has no pubKey and the name does not inline its key")
    try:
        inlined = name.public_key()
    except PeerIdError as exc:
        raise IpnsError(str(exc)) from None
    if inlined is None:  # pragma: no cover - identity multihashes always inline one
        raise IpnsError("the name does not inline its key")
    return inlined


def verify_record(name: PeerId, raw: bytes, now: float) -> IpnsRecord:
    """The spec's record verification of ``raw`` for ``name`` at ``now``
    (seconds since the epoch, from the caller's wall clock). Returns the
    parsed record; raises :class:`IpnsError` at the first failure."""
    rec = parse_record(raw)
    entry = rec.entry
    key = _public_key(entry, name)
    assert entry.data is not None and entry.signature_v2 is not None  # parse_record checked
    if not key.verify(SIGNATURE_V2_PREFIX + entry.data, entry.signature_v2):
        raise IpnsError("signatureV2 does not verify")
    if entry.signature_v1 or entry.value:
        mismatched = [
            what for what, pb, cbor in (
                ("value", entry.value or b"", rec.value),
                ("validity", entry.validity or b"", rec.validity),
                ("validityType", entry.validity_type or 0, rec.validity_type),
                ("sequence", entry.sequence or 0, rec.sequence),
                ("ttl", entry.ttl or 0, rec.ttl),
            ) if pb != cbor
        ]
        if mismatched:
            raise IpnsError(f"V1 field(s) {', '.join(mismatched)} differ from the signed data")
    if rec.validity_type != VALIDITY_EOL:
        raise IpnsError(f"unknown validity type {rec.validity_type}")
    if int(now * _NS) > rec.eol_ns:
        raise IpnsError(f"record expired at {rec.validity.decode()}")
    return rec


# -- ordering ----------------------------------------------------------------------------
def _rank(raw: bytes) -> tuple:
    """Sort key of a record: better records sort higher; one that does not
    parse sorts below every one that does."""
    try:
        rec = parse_record(raw)
        eol = rec.eol_ns
    except IpnsError:
        return (0, 0, 0, bytes(raw))
    return (1, rec.sequence, eol, rec.raw)


def compare(a: bytes, b: bytes) -> int:
    """1 when record ``a`` is better than ``b``, -1 when worse, 0 when they
    are the same bytes: higher sequence, then later validity, then greater
    bytes (boxo orders by the first two and breaks ties by the bytes)."""
    ra, rb = _rank(a), _rank(b)
    return (ra > rb) - (ra < rb)


def select_best(records: list[bytes]) -> int:
    """Index of the best of ``records`` (:func:`compare`); the first of equal ones."""
    if not records:
        raise IpnsError("no records to select from")
    ranks = [_rank(r) for r in records]
    best = 0
    for i in range(1, len(ranks)):
        if ranks[i] > ranks[best]:
            best = i
    return best


# -- signing ------------------------------------------------------------------------------
class Signer(Protocol):
    """What signs a record: a kadfast key pair (``Ed25519KeyPair``) or
    anything with its ``public_key`` and ``sign``."""

    public_key: PublicKey

    def sign(self, message: bytes) -> bytes: ...


def create_record(
    signer: Signer,
    value: bytes | str,
    sequence: int,
    eol: float,
    ttl: float = DEFAULT_TTL_NS / _NS,
    *,
    v1: bool = True,
    embed_public_key: bool | None = None,
    extra: dict | None = None,
) -> bytes:
    """A signed record, serialized: ``value`` (a content path such as
    ``/ipfs/bafy...``), ``sequence``, end of life ``eol`` (seconds since the
    epoch) and ``ttl`` (seconds). ``v1`` adds the legacy V1 fields and
    ``signatureV1`` (as boxo does by default); ``embed_public_key`` (default:
    only when the key does not fit in the name) sets ``pubKey``; ``extra``
    adds fields to the signed ``data``."""
    if isinstance(value, str):
        value = value.encode()
    if not 0 <= sequence <= _MAX_UINT63:
        raise IpnsError(f"sequence {sequence} out of range")
    eol_ns = eol * _NS if isinstance(eol, int) else round(eol * _NS)
    ttl_ns = ttl * _NS if isinstance(ttl, int) else round(ttl * _NS)
    if not 0 <= ttl_ns <= _MAX_UINT63:
        raise IpnsError(f"TTL {ttl} out of range")
    validity = format_rfc3339(eol_ns)
    doc = dict(extra or {})
    clash = set(doc) & {_VALUE, _VALIDITY, _VALIDITY_TYPE, _SEQUENCE, _TTL}
    if clash:
        raise IpnsError(f"extra fields may not replace {sorted(clash)}")
    doc.update({_VALUE: value, _VALIDITY: validity, _VALIDITY_TYPE: VALIDITY_EOL,
                _SEQUENCE: sequence, _TTL: ttl_ns})
    # canonical: map keys sorted by length, then bytewise (RFC 7049), as DAG-CBOR wants
    data = cbor2.dumps(doc, canonical=True)
    public_key = signer.public_key
    if embed_public_key is None:
        embed_public_key = PeerId.from_public_key(public_key).to_bytes()[0] != MH_IDENTITY
    fields: dict = {"data": data, "signature_v2": signer.sign(SIGNATURE_V2_PREFIX + data)}
    if v1:
        fields.update(value=value, validity_type=VALIDITY_EOL, validity=validity, sequence=sequence,
                      ttl=ttl_ns, signature_v1=signer.sign(value + validity + _V1_VALIDITY_TYPE))
    if embed_public_key:
        fields["pub_key"] = public_key.encode()
    raw = IpnsEntry(**fields).encode()
    if len(raw) > MAX_RECORD_SIZE:
        raise IpnsError(f"record of {len(raw)} bytes is over the {MAX_RECORD_SIZE}-byte limit")
    return raw
