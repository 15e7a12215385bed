"""bench/handshake_floor.py once, with few operations: the floor is the sum
of what it says it is (the timed run is the script itself)."""

import handshake_floor
import pytest


def test_the_floor_is_keygen_three_dh_and_a_verification():
    res = handshake_floor.measure(ops=20, runs=1)
    us = res["us"]
    assert all(v > 0 for v in us.values()), us
    floor = us["x25519_keygen"] + 3 * us["x25519_dh"] + us["ed25519_verify"]
    assert res["floor_us"] == pytest.approx(floor, abs=0.05)
    assert res["floor_with_signature_us"] == pytest.approx(floor + us["ed25519_sign"], abs=0.05)
