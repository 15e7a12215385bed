"""Pairs (and trios) of different libp2p implementations talking to each other.

Every test starts fresh peers through the control protocol of
peers/PROTOCOL.md. In a pair ``a-b`` the peer of implementation ``a`` dials
the peer of implementation ``b``; pairs are ordered, so each connection
direction is tested. Trio tests ``a-b-c`` (all ordered triples) connect
``a`` and ``c`` only to ``b`` and check that the DHT carries knowledge of
``c`` to ``a``.

An operation that a peer answers with ``unsupported: ...`` turns its test into
an xfail naming the peer and the command; any other error fails.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .conftest import selected_impls
from .harness import Peer, PeerError, wait_until

pytestmark = pytest.mark.interop

KAD = "/ipfs/kad/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"
# Deadline for eventual state (connections, routing-table membership).
SETTLE_S = 20.0
# `timeout` argument of DHT commands.
OP_TIMEOUT = 30
# `timeout` of a JSON request on an open connection (one round trip).
REQUEST_TIMEOUT = 10


def _pairs(impls: list[str], same: bool = False) -> list[tuple[str, str]]:
    if same:  # also a peer against its own implementation (debugging aid)
        return list(itertools.product(impls, repeat=2))
    return list(itertools.permutations(impls, 2))


def _trios(impls: list[str], same: bool = False) -> list[tuple[str, str, str]]:
    """All ordered triples (a, b, c) of different implementations (24 of 4)."""
    if same:
        return list(itertools.product(impls, repeat=3))
    return list(itertools.permutations(impls, 3))


# Known interop failures of the libraries or the peer programs (not of
# kadfast, not of the harness), as (test name, implementations with "*" for
# any) -> (reason, strict). Strict entries fail as XPASS once fixed, so the entry gets removed;
# non-strict ones are intermittent. Every entry is described in README.md.
KNOWN_ISSUES: dict[tuple[str, tuple[str, ...]], tuple[str, bool]] = {
    ("test_put_get", ("py", "go")): (
        "py-libp2p 0.8.1 rejects go-libp2p-kad-dht's PUT_VALUE reply: go echoes "
        "the request with its unknown field 11 (py's own senderRecord), py checks "
        "that record against go's PeerId ('invalid-signed-record') and counts "
        "the put as failed",
        True,
    ),
    ("test_put_get", ("go", "py")): (
        "py -> go PUT_VALUE fails, see test_put_get[py-go]",
        True,
    ),
}


def _known_issue(test: str, impls: tuple[str, ...]) -> tuple[str, bool] | None:
    for (name, pattern), issue in KNOWN_ISSUES.items():
        if name == test and len(pattern) == len(impls):
            if all(p in ("*", i) for p, i in zip(pattern, impls)):
                return issue
    return None


def _params(test: str, combos: list[tuple[str, ...]]) -> list:
    params = []
    for combo in combos:
        issue = _known_issue(test, combo)
        marks = [pytest.mark.xfail(reason=issue[0], strict=issue[1])] if issue else []
        params.append(pytest.param(combo, id="-".join(combo), marks=marks))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    impls = selected_impls(metafunc.config)
    same = os.environ.get("KADFAST_INTEROP_SAME", "") not in ("", "0")
    test = metafunc.function.__name__
    if "pair" in metafunc.fixturenames:
        metafunc.parametrize("pair", _params(test, _pairs(impls, same)))
    if "trio" in metafunc.fixturenames:
        metafunc.parametrize("trio", _params(test, _trios(impls, same)))
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", impls)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def call(peer: Peer, cmd: str, timeout: float = OP_TIMEOUT, **args: Any) -> dict[str, Any]:
    """peer.call(), turning an ``unsupported`` answer into an xfail."""
    __tracebackhide__ = True
    try:
        return peer.call(cmd, timeout=timeout, **args)
    except PeerError as exc:
        if exc.unsupported:
            pytest.xfail(f"{peer.impl} peer does not support {cmd!r}: {exc.message}")
        raise


def peers_of(peer: Peer, cmd: str) -> list[str]:
    peers = call(peer, cmd, timeout=10)["peers"]
    assert isinstance(peers, list), f"{peer.name} {cmd}: 'peers' is not a list: {peers!r}"
    return peers


def wait_listed(peer: Peer, cmd: str, other: Peer, timeout: float = SETTLE_S) -> None:
    """Wait until ``other`` appears in ``peer``'s ``connected``/``routing_table``."""
    wait_until(
        lambda: other.peer_id in peers_of(peer, cmd),
        timeout,
        message=f"{other.name} ({other.peer_id}) in {peer.name}'s {cmd}",
    )


def dial(a: Peer, b: Peer) -> None:
    """a dials b; both must then see the connection."""
    result = call(a, "dial", addr=b.maddr)
    assert result.get("peer_id") == b.peer_id, f"{a.name} dial {b.maddr} returned {result!r}"
    wait_listed(a, "connected", b)
    wait_listed(b, "connected", a)


def new_key(kind: str) -> str:
    return f"/kadfast/{kind}-{uuid.uuid4().hex}"


def strip_p2p(addr: str) -> str:
    head, sep, _ = addr.partition("/p2p/")
    return head if sep else addr


def expected_echo(body: Any, responder: Peer) -> dict[str, Any]:
    return {"echo": body, "peer_id": responder.peer_id, "impl": responder.impl}


@pytest.fixture
def two(spawn_peer, pair) -> tuple[Peer, Peer]:
    """Started peers (a, b) of the pair; b first, as the listener."""
    impl_a, impl_b = pair
    b = spawn_peer(impl_b)
    a = spawn_peer(impl_a)
    return a, b


@pytest.fixture
def connected(two) -> tuple[Peer, Peer]:
    """The pair's peers, with a dialled to b and both seeing the connection."""
    a, b = two
    dial(a, b)
    return a, b


@pytest.fixture
def three(spawn_peer, trio) -> tuple[Peer, Peer, Peer]:
    """Trio (a, b, c): c dials b and b has c in its routing table; then a dials b."""
    impl_a, impl_b, impl_c = trio
    b = spawn_peer(impl_b)
    c = spawn_peer(impl_c)
    a = spawn_peer(impl_a)
    dial(c, b)
    wait_listed(b, "routing_table", c)
    dial(a, b)
    return a, b, c


# --------------------------------------------------------------------------
# one peer
# --------------------------------------------------------------------------


def _b58encode(data: bytes) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = alphabet[r] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def seeded_peer_id(seed: int) -> str:
    """PeerId for ``--seed`` as PROTOCOL.md defines it (Ed25519, identity mh)."""
    ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    secret = hashlib.sha256(f"kadfast-interop-seed-{seed}".encode()).digest()
    public = (
        ed25519.Ed25519PrivateKey.from_private_bytes(secret)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    proto = b"\x08\x01\x12\x20" + public  # PublicKey{Type=Ed25519, Data}
    return _b58encode(b"\x00" + bytes([len(proto)]) + proto)


def test_seeded_identity(spawn_peer, impl):
    """--seed N gives the same, spec-derived PeerId in every implementation."""
    peer = spawn_peer(impl, seed=424242)
    assert peer.peer_id == seeded_peer_id(424242)
    assert all(a.startswith("/ip4/127.0.0.1/tcp/") for a in peer.addrs), peer.addrs


def test_unknown_command(spawn_peer, impl):
    peer = spawn_peer(impl)
    with pytest.raises(PeerError) as info:
        peer.call("no_such_command", timeout=5)
    assert info.value.unsupported, info.value.message


def test_stop_and_stdin_close(spawn_peer, impl):
    """`stop` ends the program with exit code 0; so does closing stdin."""
    peer = spawn_peer(impl)
    assert peer.call("stop", timeout=10) == {}
    assert peer.proc.wait(timeout=10) == 0, peer.diagnostics()

    peer = spawn_peer(impl)
    peer.proc.stdin.close()
    assert peer.proc.wait(timeout=10) == 0, peer.diagnostics()


# --------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------


def test_dial_connected(two):
    a, b = two
    dial(a, b)


def test_routing_tables(connected):
    """The dialled peer is in a's table at once; b learns a (identify) soon."""
    a, b = connected
    assert b.peer_id in peers_of(a, "routing_table")
    wait_listed(b, "routing_table", a)


def test_identify(connected):
    a, b = connected
    info = call(a, "identify", peer_id=b.peer_id)
    protocols = info.get("protocols") or []
    assert KAD in protocols, f"{b.name} protocols per {a.name}: {protocols}"
    assert IDENTIFY in protocols, f"{b.name} protocols per {a.name}: {protocols}"
    assert isinstance(info.get("agent_version"), str) and info["agent_version"]
    listen = [strip_p2p(x) for x in info.get("listen_addrs") or []]
    assert b.addrs[0] in listen, f"{b.name} listens on {b.addrs}, identify says {listen}"


def test_ping(connected):
    a, b = connected
    rtt = call(a, "ping", peer_id=b.peer_id)["rtt_ms"]
    assert isinstance(rtt, (int, float)) and 0 <= rtt < 10_000
    rtt = call(b, "ping", peer_id=a.peer_id)["rtt_ms"]
    assert isinstance(rtt, (int, float)) and 0 <= rtt < 10_000


def test_put_get(connected):
    """a puts, b gets; then b puts, a gets (PUT_VALUE both ways)."""
    a, b = connected
    key, value = new_key("rec"), f"from {a.name} {uuid.uuid4().hex}"
    call(a, "put", key=key, value=value)
    assert call(b, "get", key=key)["value"] == value

    wait_listed(b, "routing_table", a)
    key, value = new_key("rec"), f"from {b.name} {uuid.uuid4().hex}"
    call(b, "put", key=key, value=value)
    assert call(a, "get", key=key)["value"] == value


def test_provide_providers(connected):
    """a provides, b finds a among the providers (ADD_PROVIDER a -> b)."""
    a, b = connected
    key = new_key("prov")
    call(a, "provide", key=key)
    providers = call(b, "providers", key=key)["providers"]
    assert a.peer_id in providers, f"{a.name} not among providers {providers}"


def test_get_and_providers_from_remote_store(spawn_peer, pair):
    """GET_VALUE and GET_PROVIDERS from a to b's implementation.

    Two peers of b's implementation (b, b2) hold the record and the provider
    record; a fresh peer of a's implementation dials b and must fetch both
    over the wire (a's own store is empty, unlike in test_put_get).
    """
    impl_a, impl_b = pair
    b = spawn_peer(impl_b)
    b2 = spawn_peer(impl_b)
    dial(b2, b)
    key, value = new_key("rec"), f"stored by {b2.name}"
    pkey = new_key("prov")
    call(b2, "put", key=key, value=value)
    call(b2, "provide", key=pkey)

    a = spawn_peer(impl_a)
    dial(a, b)
    assert call(a, "get", key=key)["value"] == value
    providers = call(a, "providers", key=pkey)["providers"]
    assert b2.peer_id in providers, f"{b2.name} not among providers {providers}"


def test_request_echo(connected):
    """/kadfast/json/1.0.0 both ways."""
    a, b = connected
    body = {"n": 1, "text": "héllo", "list": [1, 2.5, None, True], "nested": {"k": "v"}}
    reply = call(a, "request", timeout=REQUEST_TIMEOUT, peer_id=b.peer_id, body=body)
    assert reply["response"] == expected_echo(body, b)
    body = ["from", b.impl, 2]
    reply = call(b, "request", timeout=REQUEST_TIMEOUT, peer_id=a.peer_id, body=body)
    assert reply["response"] == expected_echo(body, a)


def test_concurrent_requests(connected):
    """Several requests in flight at once; each reply carries its own id."""
    a, b = connected
    bodies = [{"i": i, "pad": "x" * (i * 100)} for i in range(8)]
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        pings = pool.submit(call, a, "ping", REQUEST_TIMEOUT, peer_id=b.peer_id)
        futures = [
            pool.submit(call, a, "request", REQUEST_TIMEOUT, peer_id=b.peer_id, body=body)
            for body in bodies
        ]
        replies = [f.result() for f in futures]
        assert pings.result()["rtt_ms"] >= 0
    for body, reply in zip(bodies, replies):
        assert reply["response"] == expected_echo(body, b)


# --------------------------------------------------------------------------
# trios
# --------------------------------------------------------------------------


def test_find_peer_via_third(three):
    """a finds c through b (FIND_NODE a -> b, b answers with c's addresses)."""
    a, b, c = three
    found = call(a, "find_peer", peer_id=c.peer_id)
    assert found.get("peer_id") == c.peer_id
    addrs = [strip_p2p(x) for x in found.get("addrs") or []]
    assert c.addrs[0] in addrs, f"{c.name} listens on {c.addrs}, find_peer gave {addrs}"


def _b58decode(text: str) -> bytes:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    n = 0
    for ch in text:
        n = n * 58 + alphabet.index(ch)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def kad_distance(key: bytes, peer_id: str) -> int:
    """XOR distance between sha256(key) and sha256(PeerId bytes)."""
    a = hashlib.sha256(key).digest()
    b = hashlib.sha256(_b58decode(peer_id)).digest()
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def random_peer_id_closer_to(near: Peer, far: Peer) -> str:
    """A valid PeerId nobody has, nearer (XOR) to ``near`` than to ``far``.

    It is a sha2-256 multihash (``Qm...``) of random bytes. A PeerId rather
    than a text key because py-libp2p resets FIND_NODE streams whose key is
    not a PeerId. Nearer to ``near`` because js-libp2p does not query peers
    that are farther from the key than those it has already heard from, and
    leaves them out of its result.
    """
    while True:
        mh = b"\x12\x20" + os.urandom(32)
        if kad_distance(mh, near.peer_id) < kad_distance(mh, far.peer_id):
            return _b58encode(mh)


def test_closest_via_third(three):
    """a's closest-peers query for a key near c walks from b to c."""
    a, b, c = three
    peers = call(a, "closest", peer_id=random_peer_id_closer_to(c, b))["peers"]
    assert b.peer_id in peers and c.peer_id in peers, (
        f"closest from {a.name}: {peers}; expected {b.name}={b.peer_id}, {c.name}={c.peer_id}"
    )


def test_bootstrap_via_third(three):
    """After bootstrap through b, a has c in its routing table."""
    a, b, c = three
    call(a, "bootstrap")
    wait_listed(a, "routing_table", c)
