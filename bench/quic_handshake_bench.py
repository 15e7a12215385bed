"""Where a QUIC handshake's server CPU goes: the sans-IO cores alone.

A client and a server :class:`~kadfast.net.quicstreams.QuicConnectionCore`
(QUIC-v1 on aioquic, TLS 1.3 with the libp2p certificate, both sides
verifying) are driven against each other in memory, datagrams handed over
by this process, until both report the connection upgraded; then one
stream is opened and negotiated (multistream-select) and answered, as an
identify exchange would be. No socket, no event loop: what is timed is
the work the host's shell hands to the server core (making it on the
first datagram, ``receive_datagram``, ``datagrams_to_send``,
``handle_timer``), per connection, and the same for the client. The process's cyclic GC is tuned as ``kadfast server``
tunes it (``tune_gc_for_server``).

    python bench/quic_handshake_bench.py [--runs 5] [--conns 200] [--profile] [--json]

``--profile`` runs one more round with the server core's calls under
cProfile and sums the time spent
inside each package's own functions (``tottime``): aioquic's Python code,
aioquic's C buffer, cryptography (OpenSSL), kadfast, the standard library.
That is the hot spot of kadfast's QUIC: see docs/benchmarks.md.

The crypto floor of the same handshake (what no implementation on
``cryptography`` can go below) is printed beside it: the server makes one
X25519 key share and one shared secret, signs the handshake with its
certificate key (ECDSA P-256), verifies the client's CertificateVerify
(ECDSA P-256) and the two libp2p SignedKey signatures (Ed25519) inside the
certificates, and checks each certificate's self-signature (ECDSA P-256).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kadfast.keys import Ed25519KeyPair
from kadfast.loop import tune_gc_for_server
from kadfast.net.quicstreams import QuicConnectionCore
from kadfast.net.upgrade import InboundStreamNegotiated, OutboundStreamNegotiated, StreamData, Upgraded
from kadfast.quic import QuicCore, initial_destination_cid
from kadfast.tls import make_certificate

PROTO = "/ipfs/id/1.0.0"
C_ADDR, S_ADDR = ("127.0.0.1", 40001), ("127.0.0.1", 4001)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Clocked:
    """A core whose calls are timed into ``self.seconds``."""

    def __init__(self, core: QuicConnectionCore | None, prof: cProfile.Profile | None = None) -> None:
        self.core: QuicConnectionCore = core  # type: ignore[assignment]
        self.seconds = 0.0
        self.prof = prof

    def call(self, name: str, *args):
        return self.call_fn(getattr(self.core, name), *args)

    def call_fn(self, fn, *args):
        prof = self.prof
        if prof is not None:
            prof.enable()
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - t
            if prof is not None:
                prof.disable()


def one_connection(client_cert, server_cert, server_peer, now: float,
                   prof: cProfile.Profile | None = None) -> tuple[float, float]:
    """One connection set up and one stream answered; (client s, server s).
    ``prof`` profiles the server core's calls."""
    supports = {PROTO}.__contains__
    c = Clocked(QuicConnectionCore(
        QuicCore(client_cert, now=now, utc_now=utc_now, remote_addr=S_ADDR, expected_peer=server_peer),
        supports_protocol=supports))
    s: Clocked | None = None
    up = {"c": False, "s": False}
    answered = False
    opened = False
    for _ in range(200):
        now += 0.001
        moved = False
        for data, _ in c.call("datagrams_to_send", now):
            moved = True
            if s is None:
                # the endpoint's work for a new connection is the server's too
                s = Clocked(None, prof)
                s.core = s.call_fn(lambda d=data, t=now: QuicConnectionCore(
                    QuicCore(server_cert, now=t, utc_now=utc_now, remote_addr=C_ADDR,
                             original_destination_cid=initial_destination_cid(d)),
                    supports_protocol=supports))
            for ev in s.call("receive_datagram", data, C_ADDR, now):
                if isinstance(ev, Upgraded):
                    up["s"] = True
                elif isinstance(ev, InboundStreamNegotiated):
                    s.call("send", ev.stream_id, b"\x40" + bytes(64))  # an identify-sized answer
        if s is not None:
            for data, _ in s.call("datagrams_to_send", now):
                moved = True
                for ev in c.call("receive_datagram", data, S_ADDR, now):
                    if isinstance(ev, Upgraded):
                        up["c"] = True
                    elif isinstance(ev, (StreamData, OutboundStreamNegotiated)) and ev.data:
                        answered = True  # the answer, or its first bytes behind the negotiation
        if up["c"] and not opened:
            c.call("open_stream", [PROTO], now)
            opened = True
            moved = True
        if answered and up["s"]:
            break
        if not moved:
            for side in (c, s):
                if side is not None and (t := side.core.get_timer()) is not None and t <= now + 0.05:
                    side.call("handle_timer", now)
    else:
        raise RuntimeError(f"no connection after 200 rounds (upgraded {up}, answered {answered})")
    assert s is not None
    return c.seconds, s.seconds


def run_round(n: int) -> dict:
    ka, kb = Ed25519KeyPair.generate(), Ed25519KeyPair.generate()
    cc, sc = make_certificate(ka), make_certificate(kb)
    one_connection(cc, sc, kb.peer_id, 0.0)  # warm up
    client = server = 0.0
    for i in range(n):
        c, s = one_connection(cc, sc, kb.peer_id, float(i))
        client += c
        server += s
    return {"client_us": client / n * 1e6, "server_us": server / n * 1e6}


def crypto_floor(ops: int = 500) -> dict:
    """The server's public-key work of one libp2p QUIC handshake, in µs."""
    def per_op(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(ops):
            fn()
        return (time.perf_counter() - t) / ops * 1e6

    peer_share = X25519PrivateKey.generate().public_key()
    mine = X25519PrivateKey.generate()
    p256 = ec.generate_private_key(ec.SECP256R1())
    msg = os.urandom(130)
    sig = p256.sign(msg, ec.ECDSA(hashes.SHA256()))
    p256_pub = p256.public_key()
    ed = Ed25519PrivateKey.generate()
    ed_sig = ed.sign(msg)
    ed_pub = ed.public_key()
    us = {
        "x25519_keygen": per_op(lambda: X25519PrivateKey.generate().public_key()),
        "x25519_dh": per_op(lambda: mine.exchange(peer_share)),
        "p256_sign": per_op(lambda: p256.sign(msg, ec.ECDSA(hashes.SHA256()))),
        "p256_verify": per_op(lambda: p256_pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))),
        "ed25519_verify": per_op(lambda: ed_pub.verify(ed_sig, msg)),
    }
    # keygen + DH + CertificateVerify signed + the client's verified + its
    # certificate's self-signature + its SignedKey (Ed25519)
    floor = us["x25519_keygen"] + us["x25519_dh"] + us["p256_sign"] + 2 * us["p256_verify"] + us["ed25519_verify"]
    return {"us": {k: round(v, 1) for k, v in us.items()}, "floor_us": round(floor, 1)}


def package_of(filename: str) -> str:
    if "aioquic" in filename:
        return "aioquic (C buffer)" if filename.endswith((".so", "_buffer")) else "aioquic (Python)"
    if "cryptography" in filename:
        return "cryptography (OpenSSL)"
    if "kadfast" in filename:
        return "kadfast"
    if filename.startswith("~") or filename == "<built-in>":
        return "built-in (C)"
    return "standard library / other"


def profile(n: int) -> dict:
    ka, kb = Ed25519KeyPair.generate(), Ed25519KeyPair.generate()
    cc, sc = make_certificate(ka), make_certificate(kb)
    one_connection(cc, sc, kb.peer_id, 0.0)
    prof = cProfile.Profile()
    for i in range(n):
        one_connection(cc, sc, kb.peer_id, float(i), prof)
    st = pstats.Stats(prof)
    by_pkg: dict[str, float] = defaultdict(float)
    top = []
    for (filename, line, func), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        pkg = package_of(filename)
        if pkg == "built-in (C)" and ("cryptography" in func or "openssl" in func.lower()):
            pkg = "cryptography (OpenSSL)"
        by_pkg[pkg] += tt
        top.append((tt, f"{os.path.basename(filename)}:{line}({func})"))
    total = sum(by_pkg.values()) or 1.0
    top.sort(reverse=True)
    return {
        "share_by_package": {k: round(v / total, 3) for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])},
        "top_functions_us_per_conn": [(name, round(tt / n * 1e6, 1)) for tt, name in top[:15]],
        "note": "the server core's calls only (from making its QuicCore on the first datagram on), under cProfile",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--conns", type=int, default=200, help="connections per run")
    ap.add_argument("--profile", action="store_true", help="one more round under cProfile: time by package")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(argv)
    tune_gc_for_server()
    rounds = [run_round(opts.conns) for _ in range(opts.runs)]
    res: dict = {
        "runs": opts.runs,
        "conns_per_run": opts.conns,
        "server_us_per_conn": round(statistics.median(r["server_us"] for r in rounds), 1),
        "client_us_per_conn": round(statistics.median(r["client_us"] for r in rounds), 1),
        "crypto_floor": crypto_floor(),
    }
    res["server_over_floor"] = round(res["server_us_per_conn"] / res["crypto_floor"]["floor_us"], 2)
    if opts.profile:
        res["profile"] = profile(max(20, opts.conns // 4))
    if opts.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"QUIC handshake + one stream, sans-IO cores in memory, {opts.runs} runs x {opts.conns} connections (medians)")
    print(f"  server core  {res['server_us_per_conn']:8.1f} µs per connection")
    print(f"  client core  {res['client_us_per_conn']:8.1f} µs per connection")
    fl = res["crypto_floor"]
    print(f"  crypto floor {fl['floor_us']:8.1f} µs (server: X25519 keygen + DH, P-256 sign, 2 P-256 verify, "
          f"Ed25519 verify: {fl['us']})")
    print(f"  server / floor: {res['server_over_floor']}x")
    if "profile" in res:
        print("\n  server time by package (tottime share, under cProfile):")
        for k, v in res["profile"]["share_by_package"].items():
            print(f"    {k:28s} {v * 100:5.1f} %")
        print("  top functions of the server (µs per connection, under cProfile):")
        for name, us in res["profile"]["top_functions_us_per_conn"]:
            print(f"    {us:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
