"""kadfast._aead (ChaCha20-Poly1305 with one OpenSSL context per key) against
its oracle, cryptography's ChaCha20Poly1305, and the Noise transport on both."""

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305 as Oracle
from hypothesis import given, settings
from hypothesis import strategies as st

from kadfast import noise
from kadfast.noise import MAX_PLAINTEXT_LEN, NoiseError, NoiseTransport

if os.environ.get("KADFAST_NO_OPENSSL") == "1":  # a build asked to leave it out (setup.py)
    pytest.skip("kadfast._aead left out of this build", allow_module_level=True)
from kadfast import _aead  # noqa: E402  built wherever OpenSSL's headers are: missing, this fails

Fast = _aead.ChaCha20Poly1305

keys = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=12, max_size=12)
aads = st.one_of(st.none(), st.binary(max_size=80))


def test_the_transport_uses_it():
    assert noise.TRANSPORT_AEAD == "openssl-evp"
    t = NoiseTransport(os.urandom(32), os.urandom(32))
    assert type(t._enc) is Fast and type(t._dec) is Fast


@settings(max_examples=300)
@given(keys, nonces, st.binary(max_size=2000), aads)
def test_matches_cryptography(key, nonce, data, aad):
    fast, oracle = Fast(key), Oracle(key)
    ct = fast.encrypt(nonce, data, aad)
    assert ct == oracle.encrypt(nonce, data, aad)
    assert fast.decrypt(nonce, ct, aad) == data
    # buffers other than bytes, as the transport hands over memoryview slices
    assert fast.decrypt(nonce, memoryview(b"xx" + ct)[2:], aad) == data
    assert fast.encrypt(nonce, bytearray(data), aad) == ct


@settings(max_examples=300)
@given(keys, nonces, st.binary(min_size=1, max_size=300), aads, st.data())
def test_any_change_is_refused_and_the_context_recovers(key, nonce, data, aad, draw):
    fast = Fast(key)
    ct = fast.encrypt(nonce, data, aad)
    i = draw.draw(st.integers(0, len(ct) - 1))
    bad = bytearray(ct)
    bad[i] ^= 1 << draw.draw(st.integers(0, 7))
    with pytest.raises(InvalidTag):
        fast.decrypt(nonce, bytes(bad), aad)
    with pytest.raises(InvalidTag):
        Oracle(key).decrypt(nonce, bytes(bad), aad)
    other = bytes([nonce[0] ^ 1]) + nonce[1:]
    with pytest.raises(InvalidTag):
        fast.decrypt(other, ct, aad)
    with pytest.raises(InvalidTag):
        fast.decrypt(nonce, ct, (aad or b"") + b"x")
    # a failure leaves nothing behind in the kept context
    assert fast.decrypt(nonce, ct, aad) == data
    assert fast.encrypt(nonce, data, aad) == ct


def test_short_and_empty_inputs():
    key, nonce = os.urandom(32), os.urandom(12)
    fast, oracle = Fast(key), Oracle(key)
    tag_only = fast.encrypt(nonce, b"", None)
    assert tag_only == oracle.encrypt(nonce, b"", None) and len(tag_only) == 16
    assert fast.decrypt(nonce, tag_only, None) == b""
    for n in range(16):  # shorter than a tag
        with pytest.raises(InvalidTag):
            fast.decrypt(nonce, tag_only[:n], None)
    big = os.urandom(MAX_PLAINTEXT_LEN)
    assert fast.encrypt(nonce, big, None) == oracle.encrypt(nonce, big, None)
    assert fast.decrypt(nonce, oracle.encrypt(nonce, big, None), None) == big


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        Fast(b"\x00" * 31)
    with pytest.raises(ValueError):
        Fast(bytearray(32))
    fast = Fast(os.urandom(32))
    for nonce in (b"\x00" * 11, b"\x00" * 13, bytearray(12), None):
        with pytest.raises(ValueError):
            fast.encrypt(nonce, b"x", None)
        with pytest.raises(ValueError):
            fast.decrypt(nonce, b"x" * 20, None)
    with pytest.raises(TypeError):
        fast.encrypt(b"\x00" * 12, "text", None)
    with pytest.raises(TypeError):
        fast.decrypt(b"\x00" * 12, 12345, None)
    with pytest.raises(TypeError):
        fast.encrypt(b"\x00" * 12, b"x", 5)


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=10))
def test_noise_transport_on_either_aead_writes_the_same_frames(messages):
    k1, k2 = os.urandom(32), os.urandom(32)
    fast_a, fast_b = NoiseTransport(k1, k2), NoiseTransport(k2, k1)
    ref_a, ref_b = NoiseTransport(k1, k2, aead=Oracle), NoiseTransport(k2, k1, aead=Oracle)
    for m in messages:
        wire = fast_a.encrypt(m)
        assert wire == ref_a.encrypt(m)
        assert ref_b.decrypt(wire) == m
        back = ref_b.encrypt(m[::-1])
        assert fast_a.decrypt(back) == m[::-1]
        assert fast_b.decrypt(wire) == m


def test_noise_transport_on_it_refuses_a_forged_frame():
    k1, k2 = os.urandom(32), os.urandom(32)
    a, b = NoiseTransport(k1, k2), NoiseTransport(k2, k1)
    wire = bytearray(a.encrypt(b"hello"))
    wire[-1] ^= 0x80
    with pytest.raises(NoiseError):
        b.decrypt(bytes(wire))
    with pytest.raises(NoiseError):  # and refuses everything after it
        b.decrypt(a.encrypt(b"again"))
