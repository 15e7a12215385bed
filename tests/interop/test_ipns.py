"""IPNS records between kadfast and go (boxo's ``ipns`` package, validating
``/ipns/`` in go-libp2p-kad-dht): records made by go are verified and stored
by kadfast and read back; records made by kadfast are stored by go and
fetched by go from a kadfast server; both sides refuse a record worse than
the one they hold (and an expired one), so their selection agrees. The go
peer makes its records with its ``ipns_record`` command; the other peers
answer ``unsupported: ipns_record``."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import replace

import cbor2
import pytest

from kadfast import Ed25519KeyPair, Multiaddr, PeerId
from kadfast.ipns import create_record, decode_entry, routing_key, verify_record
from kadfast.kad.node import KadError, KadNode
from kadfast.kad.pb import KadMessage, KadRecord, MessageType
from kadfast.loop import run as run_loop
from kadfast.net import StreamReset
from kadfast.store import Record

from .conftest import selected_impls
from .harness import PeerError
from .test_kad import call, node_maddr, start_node, until

pytestmark = pytest.mark.interop

# identity CIDs (raw codec), valid content paths for boxo's path.NewPath
VALUE_A = "/ipfs/bafkqaddwgevxmmraojswg33smq"
VALUE_B = "/ipfs/bafkqahtwgevxmmrao5uxi2bamjzg623fnyqhg2lhnzqxi5lsmuqhmmi"


def pytest_generate_tests(metafunc):
    if "other_impl" in metafunc.fixturenames:
        metafunc.parametrize("other_impl", [i for i in selected_impls(metafunc.config) if i != "go"])


def needs_go(interop_impls):
    if "go" not in interop_impls:
        pytest.fail("this test needs the go peer; run it with --interop-impls=go")


async def go_record(go, **args) -> tuple[bytes, bytes]:
    """(routing key, record) of an ``ipns_record`` made by the go peer."""
    res = await call(go, "ipns_record", **args)
    key = base64.b64decode(res["key_b64"])
    assert key == routing_key(PeerId.from_string(res["name"])) and res["name"] == go.peer_id
    return key, base64.b64decode(res["record_b64"])


async def put_to(client: KadNode, peer: PeerId, key: bytes, value: bytes):
    """One PUT_VALUE from ``client`` to ``peer``; the echo, or KadError."""
    return await client.request(peer, KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, value)))


async def refused_by(client: KadNode, peer: PeerId, key: bytes, value: bytes) -> None:
    with pytest.raises(KadError) as exc:
        await put_to(client, peer, key, value)
    assert isinstance(exc.value.__cause__, StreamReset), exc.value  # go and kadfast reset the stream


def forged(raw: bytes) -> bytes:
    """``raw`` with another value and a higher sequence (V1 fields and signed
    data alike), its signatures kept."""
    e = decode_entry(raw)
    doc = cbor2.loads(e.data)
    doc["Value"], doc["Sequence"] = VALUE_B.encode(), doc["Sequence"] + 1
    return replace(e, value=doc["Value"], sequence=doc["Sequence"], data=cbor2.dumps(doc, canonical=True)).encode()


async def go_get(go, key: bytes) -> bytes:
    res = await call(go, "get", key_b64=base64.b64encode(key).decode())
    return base64.b64decode(res["value_b64"])


async def setup(go):
    """A kadfast server that the go peer has dialed, and a kadfast client
    that knows both (for PUT_VALUEs to one peer at a time)."""
    gid = PeerId.from_string(go.peer_id)
    server = await start_node()
    client = KadNode()
    await client.start()
    await call(go, "dial", addr=node_maddr(server))
    server.add_address(gid, Multiaddr(go.addrs[0]))
    client.add_address(gid, Multiaddr(go.addrs[0]))
    client.add_address(server.peer_id, server.listen_addrs[0])
    await until(lambda: str(server.peer_id) in go.call("routing_table")["peers"])
    return gid, server, client


def test_records_made_by_go_are_accepted_and_selected_alike(spawn_peer, interop_impls):
    needs_go(interop_impls)
    go = spawn_peer("go")

    async def main():
        gid, server, client = await setup(go)
        try:
            key, s1 = await go_record(go, value=VALUE_A, seq=1)
            _, s0 = await go_record(go, value=VALUE_B, seq=0)
            _, s0_v2 = await go_record(go, value=VALUE_B, seq=0, v1=False)
            _, expired = await go_record(go, value=VALUE_B, seq=7, eol_seconds=-60)
            now = time.time()
            rec = verify_record(gid, s1, now)
            assert (rec.value, rec.sequence, rec.ttl) == (VALUE_A.encode(), 1, 300 * 10**9)
            assert rec.entry.signature_v1 and rec.entry.value == VALUE_A.encode()
            v2 = verify_record(gid, s0_v2, now)
            assert v2.entry.value is None and v2.entry.signature_v1 is None and v2.sequence == 0

            # a go-made V2-only record, put from kadfast, is stored by the
            # kadfast server and read back
            assert (await put_to(client, server.peer_id, key, s0_v2)).record.value == s0_v2
            reply = await client.request(server.peer_id, KadMessage(MessageType.GET_VALUE, key=key))
            assert reply.record.value == s0_v2

            # go puts seq 1 through its DHT: the kadfast server takes it
            # (better than its seq 0)
            await call(go, "put", key_b64=base64.b64encode(key).decode(),
                       value_b64=base64.b64encode(s1).decode(), quorum=1)
            assert server.store.get(key, server.clock()).value == s1

            # a seq 0 record, an expired one and a forged one (value changed,
            # sequence raised, signatures kept) are refused by both sides
            for worse in (s0, s0_v2, expired, forged(s1)):
                await refused_by(client, server.peer_id, key, worse)
                await refused_by(client, gid, key, worse)
            assert server.store.get(key, server.clock()).value == s1
            assert await go_get(go, key) == s1

            # kadfast's get finds seq 1 on both
            res = await client.get_record(key, quorum=2)
            assert res.best.value == s1 and {pr.peer for pr in res.records} == {gid, server.peer_id}
        finally:
            await client.stop()
            await server.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))


def test_records_made_by_kadfast_are_accepted_and_fetched_by_go(spawn_peer, interop_impls):
    needs_go(interop_impls)
    go = spawn_peer("go")

    async def main():
        gid, server, client = await setup(go)
        try:
            # a record that only the kadfast server holds: go fetches it with
            # its own get (its DHT validates it with boxo's ipns.Validator)
            only = Ed25519KeyPair.generate()
            key = routing_key(only.peer_id)
            rec = create_record(only, VALUE_A, 4, time.time() + 3600)
            assert (await put_to(client, server.peer_id, key, rec)).record.value == rec
            assert await go_get(go, key) == rec

            # go stores kadfast's V1+V2 record; kadfast's server gets a V2-only
            # one with a higher sequence: go's get picks it over its own
            pair = Ed25519KeyPair.generate()
            key = routing_key(pair.peer_id)
            k1 = create_record(pair, VALUE_A, 1, time.time() + 3600)
            k2 = create_record(pair, VALUE_B, 2, time.time() + 3600, v1=False)
            assert (await put_to(client, gid, key, k1)).record.value == k1
            assert (await put_to(client, server.peer_id, key, k2)).record.value == k2
            assert await go_get(go, key) == k2

            # go refuses what kadfast refuses: an older record, a forged one, an expired one
            k0 = create_record(pair, VALUE_B, 0, time.time() + 7200)
            await refused_by(client, server.peer_id, key, k0)
            await refused_by(client, gid, key, k1[:-1] + bytes([k1[-1] ^ 1]))
            await refused_by(client, server.peer_id, key, k1[:-1] + bytes([k1[-1] ^ 1]))
            expired = create_record(pair, VALUE_B, 9, time.time() - 1)
            await refused_by(client, gid, key, expired)
            await refused_by(client, server.peer_id, key, expired)
            await refused_by(client, gid, key, k0)
            assert server.store.get(key, server.clock()).value == k2

            # go still holds seq 1 (the same record put again is taken) ...
            assert (await put_to(client, gid, key, k1)).record.value == k1
            # ... until kadfast's get, which picks seq 2, corrects it: then go
            # refuses seq 1
            res = await client.get_record(key, quorum=2)
            assert res.best.value == k2
            assert {pr.peer: pr.record.value for pr in res.records} == {gid: k1, server.peer_id: k2}
            deadline = time.monotonic() + 10
            while True:
                try:
                    await put_to(client, gid, key, k1)
                except KadError:
                    break
                assert time.monotonic() < deadline, "go was not corrected"
                await asyncio.sleep(0.1)
        finally:
            await client.stop()
            await server.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))


def test_the_other_peers_do_not_make_ipns_records(spawn_peer, other_impl):
    peer = spawn_peer(other_impl)
    with pytest.raises(PeerError) as exc:
        peer.call("ipns_record", value=VALUE_A, seq=1, eol_seconds=60, v1=True)
    assert exc.value.unsupported and exc.value.message == "unsupported: ipns_record"


def test_kadfast_put_record_reaches_go(spawn_peer, interop_impls):
    """kadfast's own put_record of an IPNS record: go stores it (its
    validator accepts it, so the quorum of one is met by go or the server)."""
    needs_go(interop_impls)
    go = spawn_peer("go")

    async def main():
        gid, server, client = await setup(go)
        try:
            pair = Ed25519KeyPair.generate()
            key = routing_key(pair.peer_id)
            rec = create_record(pair, VALUE_A, 3, time.time() + 3600)
            stored = await server.put_record(Record(key, rec), 1)
            assert stored == 1  # the go peer is the only other peer the server knows
            assert await go_get(go, key) == rec
        finally:
            await client.stop()
            await server.stop()

    run_loop(lambda: asyncio.wait_for(main(), 120))
