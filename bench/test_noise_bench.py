"""pytest-benchmark: the Noise and multistream cores without sockets.

    python -m pytest bench/test_noise_bench.py --benchmark-only

The compiled transport against its plain-Python twin is the
``noise_exchange`` workload of bench/workloads.py (bench/run.py,
bench/test_hot_paths.py).
"""

import os

from kadfast import Ed25519KeyPair
from kadfast._noise import NoiseTransport as CompiledTransport
from kadfast.multistream import MultistreamDialer, MultistreamListener
from kadfast.noise import NoiseHandshake, NoiseStaticKey

ALICE = Ed25519KeyPair.from_seed(b"a" * 32)
BOB = Ed25519KeyPair.from_seed(b"b" * 32)


def _transport_pair():
    """The transport a handshake hands out: the compiled one (kadfast._noise)."""
    k1, k2 = os.urandom(32), os.urandom(32)
    return CompiledTransport(k1, k2), CompiledTransport(k2, k1)


def test_transport_roundtrip_200(benchmark):
    """Encrypt a 200-byte message on one side and decrypt it on the other."""
    a, b = _transport_pair()
    msg = os.urandom(200)

    def run():
        return b.decrypt(a.encrypt(msg))

    benchmark.group = "noise-transport"
    assert benchmark(run) == msg


def test_transport_decrypt_batch_10x200(benchmark):
    """Ten 200-byte frames arriving in one read: one decrypt() call."""
    a, b = _transport_pair()
    msg = os.urandom(200)

    def run():
        return b.decrypt(b"".join([a.encrypt(msg) for _ in range(10)]))

    benchmark.group = "noise-transport"
    benchmark.extra_info["ops_per_call"] = 10
    assert benchmark(run) == msg * 10


def test_transport_roundtrip_256k(benchmark):
    a, b = _transport_pair()
    msg = os.urandom(256 * 1024)

    def run():
        return b.decrypt(a.encrypt(msg))

    benchmark.group = "noise-transport"
    assert benchmark(run) == msg


def _handshake(static_a=None, static_b=None):
    init = NoiseHandshake(ALICE, initiator=True, expected_peer=BOB.peer_id, static_key=static_a)
    resp = NoiseHandshake(BOB, initiator=False, static_key=static_b)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    resp.receive_data(init.data_to_send())
    return init.complete and resp.complete


def test_xx_handshake_fresh_static_keys(benchmark):
    """Both sides of a full XX handshake, each generating its static key."""
    benchmark.group = "noise-handshake"
    assert benchmark(_handshake)


def test_xx_handshake_reused_static_keys(benchmark):
    """Both sides of a full XX handshake with per-process static keys."""
    sa, sb = NoiseStaticKey(ALICE), NoiseStaticKey(BOB)
    benchmark.group = "noise-handshake"
    assert benchmark(_handshake, sa, sb)


def test_multistream_negotiation(benchmark):
    """Both sides of a one-round multistream-select negotiation."""
    supported = frozenset({"/ipfs/kad/1.0.0", "/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"})

    def run():
        d = MultistreamDialer(["/ipfs/kad/1.0.0"], lazy=True)
        l = MultistreamListener(supported)
        l.receive_data(d.data_to_send() + b"request")
        d.receive_data(l.data_to_send() + b"response")
        return l.unused, d.unused

    benchmark.group = "multistream"
    assert benchmark(run) == (b"request", b"response")
