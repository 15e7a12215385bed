"""kadfast._xor against its plain-Python twin, and against first principles."""

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast import _xor, _xor_py
from kadfast.errors import KadfastError, KeyspaceError

digests = st.binary(min_size=32, max_size=32)


def both(d):
    return _xor.Key.from_digest(d), _xor_py.Key.from_digest(d)


def as_int(d):
    return int.from_bytes(d, "big")


@given(st.binary(max_size=200))
def test_key_hashes_preimage_once(pre):
    k = _xor.Key(pre)
    assert k.preimage == pre
    assert k.digest == hashlib.sha256(pre).digest()
    assert k == _xor.Key.from_digest(k.digest)
    assert hash(k) == hash(_xor.Key.from_digest(k.digest))
    assert _xor_py.Key(pre).digest == k.digest


def test_compiled_keys_hash_with_the_interpreters_own_sha256():
    """CPython builds carry their own SHA-256 (cheaper than OpenSSL's
    per-call digest context on a server's request path); the compiled keys
    use it, and fall back to hashlib only where it is missing."""
    import importlib.util

    has_builtin = any(importlib.util.find_spec(m) is not None for m in ("_sha2", "_sha256"))
    assert _xor.KEY_SHA256 == ("cpython" if has_builtin else "hashlib")
    assert has_builtin  # the interpreters this project supports have it


@given(digests, digests)
def test_distance_and_bucket_match_twin(a, b):
    ca, pa = both(a)
    cb, pb = both(b)
    d = as_int(a) ^ as_int(b)
    assert _xor.xor_distance(ca, cb) == _xor_py.xor_distance(pa, pb) == d == ca.distance(cb)
    assert _xor.bucket_index(ca, cb) == _xor_py.bucket_index(pa, pb) == d.bit_length() - 1
    assert ca.bucket_index(cb) == pa.bucket_index(pb)


@given(digests, digests, digests)
def test_compare_distance_matches_twin(t, a, b):
    ct, pt = both(t)
    ca, pa = both(a)
    cb, pb = both(b)
    got = _xor.compare_distance(ct, ca, cb)
    assert got == _xor_py.compare_distance(pt, pa, pb)
    da, db = as_int(a) ^ as_int(t), as_int(b) ^ as_int(t)
    assert got == (da > db) - (da < db)


def test_bucket_index_extremes():
    zero = _xor.Key.from_digest(bytes(32))
    assert _xor.bucket_index(zero, zero) == -1
    assert _xor.bucket_index(zero, _xor.Key.from_digest(bytes(31) + b"\x01")) == 0
    assert _xor.bucket_index(zero, _xor.Key.from_digest(b"\x80" + bytes(31))) == 255
    assert _xor.bucket_index(zero, _xor.Key.from_digest(bytes(8) + b"\x01" + bytes(23))) == 184


@given(
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=40),
    digests,
    st.integers(min_value=0, max_value=2**32 - 1),
    st.booleans(),
)
def test_closest_digests_matches_twin_and_sort(count, n, target, seed, clustered):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (count, 32), dtype=np.uint8)
    if clustered and count:
        # share the first 8-16 bytes with the target so that the 64-bit fast
        # path cannot decide alone
        arr[:, : 8 + seed % 9] = np.frombuffer(target, dtype=np.uint8)[: 8 + seed % 9]
    ct, pt = both(target)
    got = _xor.closest_digests(ct, arr, n)
    assert got.dtype == np.int64
    assert list(got) == list(_xor_py.closest_digests(pt, arr, n))
    brute = sorted(range(count), key=lambda i: as_int(arr[i].tobytes()) ^ as_int(target))[:n]
    assert list(got) == brute


@given(st.integers(min_value=0, max_value=200), digests, st.integers(min_value=0, max_value=2**32 - 1))
def test_bucket_indices_match_twin(count, local, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (count, 32), dtype=np.uint8)
    if count:
        arr[0] = np.frombuffer(local, dtype=np.uint8)
    cl, pl = both(local)
    got = _xor.bucket_indices(cl, arr)
    assert got.dtype == np.int16
    assert list(got) == list(_xor_py.bucket_indices(pl, arr))
    if count:
        assert got[0] == -1


@pytest.mark.parametrize("mod", [_xor, _xor_py])
def test_bad_input_raises_kadfast_errors(mod):
    with pytest.raises(KeyspaceError):
        mod.Key.from_digest(b"short")
    with pytest.raises(KeyspaceError):
        mod.Key.from_digest("not bytes")
    t = mod.Key.from_digest(bytes(32))
    for bad in (np.zeros((3, 31), np.uint8), np.zeros((3, 32), np.int32), np.zeros(32, np.uint8)):
        with pytest.raises(KeyspaceError):
            mod.closest_digests(t, bad, 2)
        with pytest.raises(KeyspaceError):
            mod.bucket_indices(t, bad)
    with pytest.raises(KeyspaceError):
        mod.closest_digests(t, np.zeros((3, 32), np.uint8), -1)
    assert issubclass(KeyspaceError, KadfastError)


def test_non_contiguous_arrays_are_accepted():
    arr = np.random.default_rng(3).integers(0, 256, (50, 64), dtype=np.uint8)[:, ::2]
    t = _xor.Key.from_digest(bytes(32))
    assert list(_xor.closest_digests(t, arr, 5)) == list(_xor_py.closest_digests(_xor_py.Key.from_digest(bytes(32)), arr, 5))


def test_closest_digests_breaks_ties_by_index():
    # found by fuzzing: duplicate digests tie; both implementations order them by index
    arr = np.zeros((8, 32), np.uint8)
    arr[5] = 1
    assert list(_xor.closest_digests(_xor.Key(b"x"), arr, 3)) == list(_xor_py.closest_digests(_xor_py.Key(b"x"), arr, 3))
    assert list(_xor.closest_digests(_xor.Key.from_digest(bytes(32)), arr, 8)) == [0, 1, 2, 3, 4, 6, 7, 5]
