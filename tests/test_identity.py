"""Keys, key files and PeerIds."""

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from kadfast import Ed25519KeyPair, KeyType, PeerId, PublicKey, load_keypair, load_or_create_keypair, save_keypair
from kadfast.errors import CryptoKeyError, KadfastError, KeyFileError, PeerIdError, SignatureError


def interop_seed(n: int) -> bytes:
    return hashlib.sha256(f"kadfast-interop-seed-{n}".encode()).digest()


def test_ed25519_peer_id_matches_js_libp2p():
    # js-libp2p derives this PeerId from the same 32-byte seed.
    pair = Ed25519KeyPair.from_seed(interop_seed(1))
    assert str(pair.peer_id) == "12D3KooWGFc89crWEs66KcMHUcKcqnzkbxzHdB7QtYTE7qEuNgDH"


def test_ed25519_peer_id_layout():
    pair = Ed25519KeyPair.generate()
    raw = pair.peer_id.to_bytes()
    assert raw[:6] == bytes.fromhex("002408011220")
    assert raw[6:] == pair.public_bytes
    assert str(pair.peer_id).startswith("12D3KooW")
    assert pair.peer_id.public_key() == pair.public_key
    assert pair.public_key.encode() == bytes.fromhex("08011220") + pair.public_bytes


def test_peer_id_text_forms_round_trip():
    pid = Ed25519KeyPair.generate().peer_id
    assert PeerId.from_string(str(pid)) == pid
    cid = pid.to_cid()
    assert cid.startswith("bafz")
    assert PeerId.from_string(cid) == pid
    assert PeerId.from_bytes(pid.to_bytes()) == pid
    assert hash(PeerId(pid.to_bytes())) == hash(pid)


def test_sha256_peer_id_of_rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub = PublicKey(KeyType.RSA, der)
    pid = PeerId.from_public_key(pub)
    assert pid.to_bytes()[:2] == b"\x12\x20"
    assert pid.to_bytes()[2:] == hashlib.sha256(pub.encode()).digest()
    assert str(pid).startswith("Qm")
    assert pid.public_key() is None
    assert pid.matches_public_key(pub)
    msg = b"noise-libp2p-static-key:" + os.urandom(32)
    sig = key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    assert pub.verify(msg, sig)
    assert not pub.verify(msg + b"x", sig)
    with pytest.raises(SignatureError):
        pub.check(msg + b"x", sig)


def test_known_qm_peer_id_parses():
    pid = PeerId.from_string("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    assert pid.to_bytes()[:2] == b"\x12\x20"
    assert pid.to_base58() == "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


@pytest.mark.parametrize("curve", [ec.SECP256K1(), ec.SECP256R1()])
def test_ecdsa_and_secp256k1_keys_verify(curve):
    key = ec.generate_private_key(curve)
    if isinstance(curve, ec.SECP256K1):
        data = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        pub = PublicKey(KeyType.SECP256K1, data)
        assert len(PeerId.from_public_key(pub).to_bytes()) == 2 + 37  # inlined (37 <= 42)
    else:
        data = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pub = PublicKey(KeyType.ECDSA, data)
    assert PublicKey.decode(pub.encode()) == pub
    sig = key.sign(b"hello", ec.ECDSA(hashes.SHA256()))
    assert pub.verify(b"hello", sig)
    assert not pub.verify(b"hellO", sig)
    assert not pub.verify(b"hello", b"\x30\x00garbage")


def test_ed25519_sign_verify():
    pair = Ed25519KeyPair.generate()
    sig = pair.sign(b"m")
    assert pair.public_key.verify(b"m", sig)
    assert not pair.public_key.verify(b"n", sig)
    assert not pair.public_key.verify(b"m", b"short")


@pytest.mark.parametrize(
    "key_type,data",
    [
        (KeyType.ED25519, b"\x01" * 31),
        (KeyType.SECP256K1, b"\x02" + b"\xff" * 32),
        (KeyType.RSA, b"not der"),
        (KeyType.ECDSA, b"\x30\x03\x02\x01\x01"),
    ],
)
def test_malformed_public_keys(key_type, data):
    with pytest.raises(CryptoKeyError):
        PublicKey(key_type, data)


def test_small_rsa_key_refused():
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(CryptoKeyError):
        PublicKey(KeyType.RSA, der)


def test_key_file_round_trip_and_mode(tmp_path):
    pair = Ed25519KeyPair.generate()
    path = tmp_path / "id.key"
    save_keypair(pair, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = path.read_bytes()
    assert data[:4] == bytes.fromhex("08011240")  # PrivateKey{Type=Ed25519, Data=64 bytes}
    assert load_keypair(path).peer_id == pair.peer_id
    assert load_or_create_keypair(path).peer_id == pair.peer_id
    fresh = tmp_path / "new.key"
    created = load_or_create_keypair(fresh)
    assert load_keypair(fresh).peer_id == created.peer_id


def test_legacy_96_byte_private_key(tmp_path):
    pair = Ed25519KeyPair.generate()
    body = pair.seed + pair.public_bytes * 2
    path = tmp_path / "old.key"
    path.write_bytes(bytes.fromhex("08011260") + body)
    assert load_keypair(path).peer_id == pair.peer_id
    path.write_bytes(bytes.fromhex("08011260") + pair.seed + pair.public_bytes + bytes(32))
    with pytest.raises(KeyFileError):
        load_keypair(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", bytes.fromhex("0800") + b"\x12\x01x", bytes.fromhex("08011240") + bytes(10), b"\x08\x01\x12\x40" + bytes(64)],
)
def test_malformed_key_files(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        load_keypair(path)


def test_missing_and_unreadable_key_files(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keypair(tmp_path / "nope")
    with pytest.raises(KeyFileError):
        load_keypair(tmp_path)  # a directory
    with pytest.raises(KeyFileError):
        save_keypair(Ed25519KeyPair.generate(), tmp_path / "no-such-dir" / "k")
    big = tmp_path / "big"
    big.write_bytes(bytes(100_000))
    with pytest.raises(KeyFileError, match="too large"):
        load_keypair(big)


@pytest.mark.parametrize(
    "text",
    ["", "12D3KooW", "0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5",
     "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", "x" * 10000, "b!!!"],
)
def test_malformed_peer_id_text(text):
    with pytest.raises(PeerIdError):
        PeerId.from_string(text)


@given(st.binary(max_size=80))
def test_peer_id_bytes_fuzz(data):
    try:
        pid = PeerId(data)
    except KadfastError:
        return
    assert PeerId.from_string(str(pid)) == pid
    assert PeerId.from_string(pid.to_cid()) == pid


@given(st.text(max_size=80))
def test_peer_id_text_fuzz(text):
    try:
        pid = PeerId.from_string(text)
    except KadfastError:
        return
    assert PeerId(pid.to_bytes()) == pid


def test_ordering():
    ids = sorted(Ed25519KeyPair.generate().peer_id for _ in range(10))
    assert [i.to_bytes() for i in ids] == sorted(i.to_bytes() for i in ids)
    assert PeerId(ids[0].to_bytes()) == ids[0] and ids[0] != ids[1]


def test_a_decoded_key_is_handed_out_again_from_any_buffer():
    pub = Ed25519KeyPair.generate().public_key
    raw = pub.encode()
    first = PublicKey.decode(raw)
    assert first == pub
    # the same encoding from a memoryview or a bytearray is the same object
    assert PublicKey.decode(memoryview(raw)) is first
    buf = bytearray(raw)
    again = PublicKey.decode(buf)
    assert again is first
    buf[-1] ^= 1  # the memo keeps its own copy: changing the buffer changes nothing
    assert PublicKey.decode(raw) is first and first.data == pub.data
