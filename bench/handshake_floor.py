"""The crypto floor of accepting one connection, measured on this machine.

A responder of libp2p's Noise XX handshake makes one ephemeral X25519 key,
does three Diffie-Hellman operations (ee, es, se from its side), and checks
the initiator's handshake payload: one Ed25519 verification of the signed
static key. Its own signed payload is made once per host (a kadfast host
signs its Noise static key at start), so a signature is not part of the
per-connection work; it is measured too, for servers that sign per
connection. Each operation runs through ``cryptography`` (OpenSSL), what
kadfast's handshake uses; the floor is what no implementation on this
library can go below.

    python bench/handshake_floor.py [--runs 5] [--ops 2000] [--json]

Prints each operation's time (median of ``--runs`` runs of ``--ops``
operations each) and the floor: keygen + 3 DH + 1 verify, and with a
signature as well.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def per_op_us(fn: Callable[[], object], ops: int, runs: int) -> float:
    """Median over ``runs`` of the mean time of one ``fn()`` call, in µs."""
    fn()  # warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(ops):
            fn()
        times.append((time.perf_counter() - t) / ops * 1e6)
    return statistics.median(times)


def measure(ops: int, runs: int) -> dict:
    peer = X25519PrivateKey.generate().public_key()
    mine = X25519PrivateKey.generate()
    signer = Ed25519PrivateKey.generate()
    message = b"noise-libp2p-static-key:" + os.urandom(32)
    signature = signer.sign(message)
    verifier = signer.public_key()
    ops_us = {
        "x25519_keygen": per_op_us(lambda: X25519PrivateKey.generate().public_key(), ops, runs),
        "x25519_dh": per_op_us(lambda: mine.exchange(peer), ops, runs),
        "ed25519_verify": per_op_us(lambda: verifier.verify(signature, message), ops, runs),
        "ed25519_sign": per_op_us(lambda: signer.sign(message), ops, runs),
    }
    floor = ops_us["x25519_keygen"] + 3 * ops_us["x25519_dh"] + ops_us["ed25519_verify"]
    return {
        "ops_per_run": ops,
        "runs": runs,
        "us": {k: round(v, 2) for k, v in ops_us.items()},
        "floor_us": round(floor, 2),
        "floor_with_signature_us": round(floor + ops_us["ed25519_sign"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    opts = ap.parse_args(argv)
    res = measure(opts.ops, opts.runs)
    if opts.json:
        print(json.dumps(res))
        return 0
    for name, us in res["us"].items():
        print(f"  {name:16s} {us:8.1f} µs")
    print(f"  floor (keygen + 3 DH + verify)       {res['floor_us']:8.1f} µs")
    print(f"  floor with a signature per connection {res['floor_with_signature_us']:7.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
