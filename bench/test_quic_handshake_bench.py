"""bench/quic_handshake_bench.py once, small: the in-memory pair of QUIC
cores connects and answers a stream every time, the server's figures are
positive, and the profile attributes its time to packages (the timed run is
the script itself)."""

import quic_handshake_bench as qhb


def test_connections_are_made_and_timed_and_profiled():
    res = qhb.run_round(3)
    assert res["server_us"] > 0 and res["client_us"] > 0
    prof = qhb.profile(2)
    shares = prof["share_by_package"]
    assert abs(sum(shares.values()) - 1.0) < 0.01
    assert shares.get("aioquic (Python)", 0) > 0 and shares.get("cryptography (OpenSSL)", 0) > 0
    floor = qhb.crypto_floor(ops=5)
    us = floor["us"]
    parts = us["x25519_keygen"] + us["x25519_dh"] + us["p256_sign"] + 2 * us["p256_verify"] + us["ed25519_verify"]
    assert abs(floor["floor_us"] - parts) < 0.5  # the parts are rounded to 0.1 µs
