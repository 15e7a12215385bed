"""Record validation: the /pk/ namespace (go-libp2p-record semantics), the
/ipns/ namespace (boxo semantics, on an injected wall clock), namespace
parsing and dispatch (unregistered namespaces accepted, as rust)."""

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from kadfast import Ed25519KeyPair, ipns
from kadfast.errors import KadfastError
from kadfast.kad.validation import (
    AcceptAllValidator,
    InvalidRecord,
    IpnsValidator,
    NamespacedValidator,
    PublicKeyValidator,
    Validator,
    split_key,
)
from kadfast.keys import KeyType, PublicKey
from kadfast.peerid import PeerId

ED = [Ed25519KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(2)]
_EC = ec.derive_private_key(12345, ec.SECP256R1()).public_key()
ECDSA_KEY = PublicKey(
    KeyType.ECDSA,
    _EC.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
)


def pk_key(peer_id: PeerId) -> bytes:
    return b"/pk/" + peer_id.to_bytes()


class Longest(Validator):
    """A test namespace: values must start with b"v"; the longest wins."""

    def __init__(self):
        self.calls = []

    def validate(self, key, value):
        self.calls.append(("validate", key, value))
        if not value.startswith(b"v"):
            raise InvalidRecord("value must start with v")

    def select(self, key, values):
        self.calls.append(("select", key, list(values)))
        return max(range(len(values)), key=lambda i: len(values[i]))


def test_errors_and_abstract_base():
    assert issubclass(InvalidRecord, KadfastError)
    with pytest.raises(TypeError):
        Validator()


def test_public_key_record_ed25519_identity_peer_id():
    pair = ED[0]
    v = PublicKeyValidator()
    v.validate(pk_key(pair.peer_id), pair.public_key.encode())
    assert v.select(pk_key(pair.peer_id), [pair.public_key.encode()] * 3) == 0


def test_public_key_record_hashed_peer_id():
    peer_id = PeerId.from_public_key(ECDSA_KEY)
    assert peer_id.to_bytes()[:2] == b"\x12\x20"  # too long to inline: sha2-256
    PublicKeyValidator().validate(pk_key(peer_id), ECDSA_KEY.encode())
    NamespacedValidator().validate(pk_key(peer_id), ECDSA_KEY.encode())


@pytest.mark.parametrize(
    "key, value",
    [
        (pk_key(ED[0].peer_id), ED[1].public_key.encode()),  # another peer's key
        (pk_key(PeerId.from_public_key(ECDSA_KEY)), ED[0].public_key.encode()),
        (pk_key(ED[0].peer_id), b""),
        (pk_key(ED[0].peer_id), b"garbage"),
        (pk_key(ED[0].peer_id), b"\x08\x01\x12\x03abc"),  # Ed25519 key of 3 bytes
        (pk_key(ED[0].peer_id), b"\x08\x09\x12\x20" + bytes(32)),  # unknown key type
        (b"/pk/", ED[0].public_key.encode()),
        (b"/pk/junk", ED[0].public_key.encode()),
        (b"/pk/" + ED[0].peer_id.to_bytes() + b"x", ED[0].public_key.encode()),
        (b"/other/" + ED[0].peer_id.to_bytes(), ED[0].public_key.encode()),
        (ED[0].peer_id.to_bytes(), ED[0].public_key.encode()),
        # the key inlined in an identity PeerId, but stored under its sha256 form:
        # go compares against the canonical PeerId of the key, so it is refused
        (b"/pk/\x12\x20" + bytes(32), ED[0].public_key.encode()),
    ],
)
def test_public_key_record_refused(key, value):
    with pytest.raises(InvalidRecord):
        PublicKeyValidator().validate(key, value)
    if key.startswith(b"/pk/"):  # other keys are not the pk namespace's to refuse
        with pytest.raises(InvalidRecord):
            NamespacedValidator().validate(key, value)


@given(st.binary(max_size=80), st.binary(max_size=120))
def test_public_key_validator_raises_only_invalid_record(rest, value):
    try:
        PublicKeyValidator().validate(b"/pk/" + rest, value)
    except InvalidRecord:
        return
    assert PeerId(rest).matches_public_key(PublicKey.decode(value))


@pytest.mark.parametrize(
    "key, expected",
    [
        (b"/pk/abc", ("pk", b"abc")),
        (b"/v/", ("v", b"")),
        (b"/ns/a/b", ("ns", b"a/b")),
        (b"/ipns/\x00\x24\x08", ("ipns", b"\x00\x24\x08")),
        (b"/v", None),
        (b"v/x", None),
        (b"//x", None),
        (b"/", None),
        (b"", None),
        (b"/\xff/x", None),
    ],
)
def test_split_key_and_namespace_of(key, expected):
    assert split_key(key) == expected
    assert NamespacedValidator.namespace_of(key) == (None if expected is None else expected[0])


def test_accept_all():
    v = AcceptAllValidator()
    v.validate(b"anything", b"")
    assert v.select(b"k", [b"a", b"b"]) == 0
    with pytest.raises(InvalidRecord):
        v.select(b"k", [])


def test_namespaced_dispatch():
    custom = Longest()
    v = NamespacedValidator({"v": custom})
    v.validate(b"/v/k", b"v1")
    with pytest.raises(InvalidRecord):
        v.validate(b"/v/k", b"x1")
    assert v.select(b"/v/k", [b"v1", b"v333", b"v22"]) == 1
    assert ("select", b"/v/k", [b"v1", b"v333", b"v22"]) in custom.calls
    # "pk" stays registered next to the given validators
    pair = ED[0]
    v.validate(pk_key(pair.peer_id), pair.public_key.encode())
    with pytest.raises(InvalidRecord):
        v.validate(pk_key(pair.peer_id), ED[1].public_key.encode())


def test_unregistered_namespaces_and_bare_keys_are_accepted():
    v = NamespacedValidator()
    for key in (b"/unknown/k", b"no-namespace", b"", b"/v", b"/\xff/x"):
        v.validate(key, b"anything")
        assert v.select(key, [b"a", b"b"]) == 0


def test_select_edge_cases():
    custom = Longest()
    v = NamespacedValidator()
    v.register("v", custom)
    with pytest.raises(InvalidRecord):
        v.select(b"/v/k", [])
    assert v.select(b"/v/k", [b"only"]) == 0
    assert custom.calls == []  # one value: nothing to choose, as go

    class Broken(Validator):
        def validate(self, key, value):
            pass

        def select(self, key, values):
            return len(values)

    v.register("broken", Broken())
    with pytest.raises(InvalidRecord):
        v.select(b"/broken/k", [b"a", b"b"])


def test_register_replaces_and_checks():
    v = NamespacedValidator()
    v.register("pk", AcceptAllValidator())  # replaced: anything goes now
    v.validate(b"/pk/junk", b"junk")
    assert v.validator_for(b"/pk/x").__class__ is AcceptAllValidator
    assert v.validator_for(b"/none/x") is None
    for bad in ("", "a/b"):
        with pytest.raises(ValueError):
            v.register(bad, AcceptAllValidator())
    with pytest.raises(TypeError):
        v.register("x", object())


# -- /ipns/ ---------------------------------------------------------------------
class WallClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


T0 = 1_900_000_000.0


def ipns_key(pair) -> bytes:
    return b"/ipns/" + pair.peer_id.to_bytes()


def test_ipns_is_validated_by_default_on_the_given_wall_clock():
    clock = WallClock(T0)
    v = NamespacedValidator(wall_clock=clock)
    assert isinstance(v.validator_for(b"/ipns/x"), IpnsValidator)
    pair = ED[0]
    rec = ipns.create_record(pair, "/ipfs/bafkqaaa", 1, T0 + 60)
    v.validate(ipns_key(pair), rec)
    clock.t = T0 + 61  # the validator reads the clock at each validation
    with pytest.raises(InvalidRecord, match="expired"):
        v.validate(ipns_key(pair), rec)
    # another name, a key that holds no PeerId, junk
    clock.t = T0
    for key, value in ((ipns_key(ED[1]), rec), (b"/ipns/junk", rec), (ipns_key(pair), b"junk"),
                       (b"/ipns/", rec)):
        with pytest.raises(InvalidRecord):
            v.validate(key, value)
    # the default clock is the system's
    NamespacedValidator().validate(ipns_key(pair), ipns.create_record(pair, "/ipfs/bafkqaaa", 1, time.time() + 60))


def test_ipns_select_higher_sequence_then_later_validity():
    pair = ED[0]
    v = NamespacedValidator(wall_clock=WallClock(T0))
    key = ipns_key(pair)
    s0 = ipns.create_record(pair, "/ipfs/bafkqaaa", 0, T0 + 600)
    s1 = ipns.create_record(pair, "/ipfs/bafkqaaa", 1, T0 + 60)
    s1_later = ipns.create_record(pair, "/ipfs/bafkqaaa", 1, T0 + 120)
    assert v.select(key, [s0, s1]) == 1 and v.select(key, [s1, s0]) == 0
    assert v.select(key, [s1, s1_later, s0]) == 1
    assert v.select(key, [s1_later, s1_later]) == 0
    assert IpnsValidator().select(key, [b"junk", s0]) == 1
    with pytest.raises(InvalidRecord):
        IpnsValidator().select(key, [])


def test_ipns_validator_can_be_replaced():
    v = NamespacedValidator({"ipns": AcceptAllValidator()})
    v.validate(b"/ipns/junk", b"junk")
