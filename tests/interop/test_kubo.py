"""Kubo, the reference IPFS daemon, against a kadfast server.

A kadfast server (a :class:`KadNode` in server mode on ``/ipfs/kad/1.0.0``,
on an event loop in a thread of its own) is the only bootstrap peer of every
Kubo daemon. The module's two daemons ``a`` and ``b`` are DHT clients
(``Routing.Type=dhtclient``), so the kadfast server is the only DHT server
they know: every provider record and IPNS record between them goes through
kadfast.

- provide / findprovs both ways between Kubo (as a DHT client and as a DHT
  server) and kadfast nodes;
- IPNS: ``ipfs name publish`` on one daemon, ``ipfs name resolve --nocache``
  on the other; ``ipfs routing get /ipns/<name>`` returns the signed record;
- ``ipfs routing findpeer`` of a client-mode Kubo that is connected only to
  the kadfast server;
- ``ipfs cat`` of content added on one daemon, its provider found through
  kadfast by the other;
- a stale and a forged IPNS record sent to the kadfast server are refused, and
  Kubo still resolves the newest value.

Every test runs twice, once over each ``transport``: with
daemons that listen and dial on TCP only (QUIC off), and with daemons that
listen on QUIC only (``/quic-v1``, TCP off; the harness's KUBO_QUIC_ONLY). The
kadfast server listens on both; each daemon's one bootstrap address is the
server's address of its transport, and the other kadfast nodes of a test
listen on and dial that transport only. Each daemon that joins is checked at
both ends of its connection to the server: a
:class:`~kadfast.net.quicconn.QuicConnection` (or, over TCP, not one) on
kadfast's side, an address of the transport in Kubo's ``ipfs swarm peers``.
Over QUIC, ``ipfs cat`` fetches from the other daemon over QUIC too.

Provider keys are the multihashes of the CIDs. Each daemon is driven with the
`ipfs` CLI against its RPC API.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import cbor2
import pytest

from kadfast import Multiaddr, PeerId
from kadfast.kad.node import PROTOCOL, Config, KadNode
from kadfast.kad.pb import KadMessage, KadRecord, MessageType, decode_message, encode_message, frame
from kadfast.loop import new_event_loop
from kadfast.net import HostConfig
from kadfast.net.quicconn import QuicConnection
from kadfast.net.stream import StreamReset

from .conftest import peer_selected
from .harness import KUBO_QUIC_ONLY

pytestmark = pytest.mark.interop

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
QUIC_LOOPBACK = "/ip4/127.0.0.1/udp/0/quic-v1"
#: seconds for a DHT operation of a Kubo CLI call
DHT_TIMEOUT = 60.0


@pytest.fixture(scope="module", autouse=True)
def _kubo_selected(request):
    # module scope: decided before the module's daemons (or the build) start
    if not peer_selected(request.config, "kubo"):
        pytest.skip("kubo not among the selected interop implementations")


# --------------------------------------------------------------------------
# kadfast nodes on a loop of their own
# --------------------------------------------------------------------------


class KadfastLoop:
    """An event loop in a thread; kadfast nodes live on it, tests call in."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kadfast-loop", daemon=True)
        self.thread.start()
        self.nodes: list[KadNode] = []

    def run(self, coro, timeout: float = 90.0) -> Any:
        """Run a coroutine on the loop; its result (or exception)."""
        __tracebackhide__ = True
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """``fn()`` on the loop's thread (for reads of a node's state)."""
        fut: Future = Future()

        def work() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(work)
        return fut.result(timeout)

    def node(self, *, listen: list[str] | None = None, mode: str = "auto") -> KadNode:
        """A started kadfast node listening on ``listen`` (default: TCP on
        loopback; ``[]``: nowhere)."""

        async def start() -> KadNode:
            node = KadNode(
                config=Config(mode=mode, protocol=PROTOCOL),
                host_config=HostConfig(listen_addrs=[LOOPBACK] if listen is None else listen),
            )
            await node.start()
            return node

        node = self.run(start())
        self.nodes.append(node)
        return node

    def close(self) -> None:
        async def stop_all() -> None:
            for node in reversed(self.nodes):
                await node.stop()

        try:
            self.run(stop_all(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()




def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; AssertionError after ``timeout``."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {value!r})")
        time.sleep(interval)


# --------------------------------------------------------------------------
# CIDs, multihashes, IPNS records
# --------------------------------------------------------------------------

RAW = 0x55


def multihash(data: bytes) -> bytes:
    """sha2-256 multihash of ``data``: what a provider record's key is."""
    return b"\x12\x20" + hashlib.sha256(data).digest()


def cid_v1(mh: bytes, codec: int = RAW) -> str:
    """CIDv1 text (multibase base32) of a multihash (codec < 0x80)."""
    body = bytes([1, codec]) + mh
    return "b" + base64.b32encode(body).decode().lower().rstrip("=")


def cid_multihash(text: str) -> bytes:
    """The multihash of a CIDv1 in base32 text (what Kubo prints)."""
    assert text.startswith("b"), text
    raw = base64.b32decode(text[1:].upper() + "=" * (-len(text[1:]) % 8))
    assert raw[0] == 1, text
    pos = 2 if raw[1] < 0x80 else 3  # version, then the codec varint
    return raw[pos:]


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


#: IpnsEntry fields (ipfs/specs, IPNS record): name -> (number, wire type)
IPNS_FIELDS = {
    "value": (1, 2), "signatureV1": (2, 2), "validityType": (3, 0), "validity": (4, 2),
    "sequence": (5, 0), "ttl": (6, 0), "pubKey": (7, 2), "signatureV2": (8, 2), "data": (9, 2),
}
_IPNS_BY_NUMBER = {num: name for name, (num, _) in IPNS_FIELDS.items()}


def parse_ipns(data: bytes) -> dict[str, Any]:
    """An IpnsEntry protobuf as {field name: bytes or int} (known fields only)."""
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _read_uvarint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_uvarint(data, pos)
        elif wire == 2:
            length, pos = _read_uvarint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"unexpected wire type {wire} in an IpnsEntry")
        if number in _IPNS_BY_NUMBER:
            out[_IPNS_BY_NUMBER[number]] = value
    return out


def encode_ipns(fields: dict[str, Any]) -> bytes:
    """The IpnsEntry protobuf of ``fields`` (field-number order)."""
    out = bytearray()
    for name, (number, wire) in sorted(IPNS_FIELDS.items(), key=lambda kv: kv[1][0]):
        if name not in fields:
            continue
        out += _uvarint(number << 3 | wire)
        value = fields[name]
        if wire == 0:
            out += _uvarint(value)
        else:
            out += _uvarint(len(value)) + value
    return bytes(out)


def forge(record: bytes, value: bytes) -> bytes:
    """``record`` with another value and a higher sequence, both in the
    protobuf fields and in the DAG-CBOR ``data`` that signatureV2 covers; the
    signatures are kept, so they no longer match."""
    fields = parse_ipns(record)
    data = cbor2.loads(fields["data"])
    seq = fields["sequence"] + 1
    data["Value"], data["Sequence"] = value, seq
    fields["value"], fields["sequence"] = value, seq
    fields["data"] = cbor2.dumps(data, canonical=True)
    return encode_ipns(fields)


# --------------------------------------------------------------------------
# Kubo helpers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Transport:
    """How the Kubo daemons and the kadfast nodes of a test reach each other:
    ``tcp`` (Kubo listens on TCP only, with QUIC off) or ``quic`` (Kubo
    listens on QUIC only, with TCP off). The kadfast server listens on both;
    each daemon bootstraps from its address of the transport, and the kadfast
    nodes of the test listen on and dial that transport only."""

    name: str
    #: what the kadfast nodes of a test (not the server) listen on
    kadfast_listen: str
    #: settings of the daemons on top of the harness's KUBO_CONFIG
    kubo_config: dict[str, Any] = field(default_factory=dict)

    def addr(self, node: KadNode) -> str:
        """The node's listen address of this transport, with its peer id."""
        for addr in node.listen_addrs:
            if (addr.value_for("quic-v1") is not None) == (self.name == "quic"):
                return str(addr.with_peer_id(node.peer_id))
        raise AssertionError(f"{node.peer_id} listens on no {self.name} address: {node.listen_addrs}")

    def carries(self, addr: str) -> bool:
        """Whether the multiaddr ``addr`` is one of this transport."""
        return ("/quic-v1" in addr) if self.name == "quic" else ("/tcp/" in addr and "/quic" not in addr)


TCP = Transport("tcp", LOOPBACK)
QUIC = Transport("quic", QUIC_LOOPBACK, dict(KUBO_QUIC_ONLY))


def in_wan_table(kubo, peer_id: str) -> bool:
    return peer_id in kubo.cli("stats", "dht", "wan").decode()


def swarm_addrs(kubo) -> dict[str, str]:
    """``ipfs swarm peers``: the address of each connected peer, by its id."""
    lines = kubo.cli("swarm", "peers").decode().split()
    return {line.rsplit("/p2p/", 1)[-1]: line.rsplit("/p2p/", 1)[0] for line in lines if "/p2p/" in line}


def swarm_peers(kubo) -> set[str]:
    return set(swarm_addrs(kubo))


def add_bytes(kubo, data: bytes) -> str:
    """``ipfs add`` of ``data`` as one raw block; its CID (v1, base32)."""
    return kubo.cli("add", "-Q", "--cid-version=1", "--raw-leaves", input=data).decode().strip()


def join(kubo, server: KadNode, loop: KadfastLoop, transport: Transport) -> None:
    """Wait until ``kubo`` has the kadfast server in its WAN routing table
    and the server sees the connection; check that both ends hold it over
    ``transport``: a :class:`QuicConnection` (or not) on kadfast's side, an
    address of the transport in Kubo's ``swarm peers``."""
    sid = str(server.peer_id)
    wait_for(lambda: in_wan_table(kubo, sid), 60, f"kadfast server in {kubo.name}'s WAN routing table")
    kid = PeerId.from_string(kubo.peer_id)
    conn = wait_for(lambda: loop.call(lambda: server.host.connection(kid)), 30,
                    f"{kubo.name} connected to the kadfast server")
    assert isinstance(conn, QuicConnection) == (transport.name == "quic"), (transport.name, conn)
    addr = swarm_addrs(kubo).get(sid)
    assert addr is not None and transport.carries(addr), f"{kubo.name} holds the kadfast server at {addr}"


def serves_dht(kubo) -> bool:
    """Whether identify of ``kubo`` lists the (WAN) DHT protocol."""
    return PROTOCOL in (kubo.cli_json("id").get("Protocols") or [])


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kad():
    loop = KadfastLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def server(kad) -> KadNode:
    """The kadfast server every Kubo bootstraps from, on TCP and on QUIC."""
    node = kad.node(mode="server", listen=[LOOPBACK, QUIC_LOOPBACK])
    assert node.config.protocol == "/ipfs/kad/1.0.0"
    return node


@pytest.fixture(scope="module", params=[TCP, QUIC], ids=lambda t: t.name)
def transport(request) -> Transport:
    """Each test that uses it runs once with TCP-only and once with QUIC-only
    daemons (module scope: the ``pair`` of each is made once)."""
    return request.param


@pytest.fixture(scope="module")
def pair(kubo_module_daemons, kad, server, transport):
    """Kubo daemons ``a`` and ``b``, DHT clients whose only DHT server is kadfast."""
    boot = [transport.addr(server)]
    a = kubo_module_daemons(boot, routing="dhtclient", name=f"a-{transport.name}", config=transport.kubo_config)
    b = kubo_module_daemons(boot, routing="dhtclient", name=f"b-{transport.name}", config=transport.kubo_config)
    for kubo in (a, b):
        assert kubo.addrs and all(transport.carries(addr) for addr in kubo.addrs), (kubo.name, kubo.addrs)
        join(kubo, server, kad, transport)
        assert not serves_dht(kubo), f"{kubo.name} serves the DHT"
    return a, b


@pytest.fixture(autouse=True)
def _attach_module_daemons(request, kubo_module_daemons):
    yield
    if any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call")):
        kubo_module_daemons.attach(request.node)


@pytest.fixture(scope="module")
def published(pair):
    """``a`` published its own key (``self``): (name, value path)."""
    a, _ = pair
    cid = add_bytes(a, b"kadfast-kubo-ipns-" + os.urandom(16))
    path = f"/ipfs/{cid}"
    out = a.cli_json("name", "publish", "--key=self", path, timeout=DHT_TIMEOUT)
    assert out["Value"] == path, out
    return out["Name"], path


def resolve(kubo, name: str) -> str:
    return kubo.cli("name", "resolve", "--nocache", f"/ipns/{name}", timeout=DHT_TIMEOUT).decode().strip()


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("routing", ["dhtclient", "dhtserver"])
def test_provide_and_find_providers_both_ways(kubo_daemon, kad, server, transport, routing):
    kubo = kubo_daemon([transport.addr(server)], routing=routing, name=f"provider-{routing}-{transport.name}",
                       config=transport.kubo_config)
    join(kubo, server, kad, transport)
    if routing == "dhtserver":
        assert serves_dht(kubo)
        kid = PeerId.from_string(kubo.peer_id)
        wait_for(lambda: kad.call(lambda: kid in server.routing_table_peers()), 30,
                 "the DHT-server Kubo in kadfast's routing table")

    # Kubo provides; a kadfast node that joins afterwards finds it
    data = b"kubo-provides-" + os.urandom(16)
    cid = add_bytes(kubo, data)
    mh = multihash(data)
    assert cid_multihash(cid) == mh
    kubo.cli("routing", "provide", cid, timeout=DHT_TIMEOUT)
    seeker = kad.node(listen=[transport.kadfast_listen])
    kad.run(seeker.host.dial(Multiaddr(transport.addr(server))), 20)
    found = kad.run(seeker.get_providers(mh))
    kid = PeerId.from_string(kubo.peer_id)
    assert kid in found, f"kadfast found {found} for {cid}"
    assert any(str(addr) in kubo.addrs for addr in found[kid]), (found[kid], kubo.addrs)

    # kadfast provides; Kubo finds it
    provider = kad.node(listen=[transport.kadfast_listen])
    kad.run(provider.host.dial(Multiaddr(transport.addr(server))), 20)
    key = multihash(b"kadfast-provides-" + os.urandom(16))
    assert kad.run(provider.provide(key)) >= 1
    out = kubo.cli("routing", "findprovs", "--num-providers=1", cid_v1(key), timeout=DHT_TIMEOUT)
    assert str(provider.peer_id) in out.decode().split(), out


def test_ipns_publish_and_resolve_across_two_daemons(pair, published):
    a, b = pair
    name, path = published
    assert resolve(b, name) == path
    # b is not connected to a: the record came from the kadfast server
    assert a.peer_id not in swarm_peers(b)


def test_routing_get_of_an_ipns_name(pair, published):
    _, b = pair
    name, path = published
    record = b.cli("routing", "get", f"/ipns/{name}", timeout=DHT_TIMEOUT)
    fields = parse_ipns(record)
    assert fields["value"] == path.encode(), fields
    assert fields.get("signatureV2") and fields.get("data"), sorted(fields)
    data = cbor2.loads(fields["data"])
    assert data["Value"] == path.encode() and data["Sequence"] == fields.get("sequence", 0), data


def test_findpeer_of_a_client_mode_kubo(kubo_daemon, pair, kad, server, transport):
    """Needs kadfast's FIND_NODE to answer with the target's own entry when it
    is connected but not in the routing table (a DHT client)."""
    _, b = pair
    target = kubo_daemon([transport.addr(server)], routing="dhtclient", name=f"findpeer-target-{transport.name}",
                         config=transport.kubo_config)
    join(target, server, kad, transport)
    assert not serves_dht(target)
    tid = PeerId.from_string(target.peer_id)
    assert tid not in kad.call(server.routing_table_peers)
    assert target.peer_id not in swarm_peers(b)
    out = b.cli("routing", "findpeer", target.peer_id, timeout=DHT_TIMEOUT).decode().split()
    assert any(addr in out for addr in target.addrs), (out, target.addrs)


def test_cat_of_content_found_through_kadfast(pair, kad, server, transport):
    a, b = pair
    data = os.urandom(300_000)  # a few blocks: a DAG, not one raw block
    cid = a.cli("add", "-Q", "--cid-version=1", input=data).decode().strip()
    a.cli("routing", "provide", cid, timeout=DHT_TIMEOUT)
    mh = cid_multihash(cid)
    aid = PeerId.from_string(a.peer_id)
    holds = kad.call(lambda: [r.provider for r in server.store.providers(mh, server.clock())])
    assert aid in holds, holds
    if a.peer_id in swarm_peers(b):
        b.cli("swarm", "disconnect", f"/p2p/{a.peer_id}")
    assert b.cli("cat", cid, timeout=DHT_TIMEOUT) == data
    addr = swarm_addrs(b).get(a.peer_id)
    assert addr is not None, "b fetched the file without connecting to a"
    assert transport.carries(addr), f"b holds a at {addr}"


async def _put_value(node: KadNode, server: KadNode, key: bytes, value: bytes) -> KadMessage | None:
    """PUT_VALUE straight to the server; its reply, or None when it refused
    (reset the stream, or closed it without a reply)."""
    stream = await node.host.new_stream(server.peer_id, PROTOCOL)
    msg = KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, value))
    try:
        stream.write(frame(encode_message(msg)))
        body = await asyncio.wait_for(stream.read_message(1 << 20), 20)
    except StreamReset:
        return None
    finally:
        stream.close()
    return None if body is None else decode_message(body)


def test_stale_and_forged_ipns_records_refused(pair, kad, server, transport):
    """Needs kadfast's /ipns/ validator: a server that stores what it is sent
    lets the stale or forged record replace the newest one."""
    a, b = pair
    a.cli("key", "gen", "--type=ed25519", "stale-forged")
    kid = a.cli_json("key", "list", "-l", "--ipns-base=b58mh")
    key_id = next(k["Id"] for k in kid["Keys"] if k["Name"] == "stale-forged")
    routing_key = b"/ipns/" + PeerId.from_string(key_id).to_bytes()

    first = "/ipfs/" + add_bytes(a, b"ipns-first-" + os.urandom(8))
    name = a.cli_json("name", "publish", "--key=stale-forged", first, timeout=DHT_TIMEOUT)["Name"]
    assert resolve(b, name) == first
    stale = b.cli("routing", "get", f"/ipns/{name}", timeout=DHT_TIMEOUT)
    assert parse_ipns(stale)["value"] == first.encode()

    second = "/ipfs/" + add_bytes(a, b"ipns-second-" + os.urandom(8))
    a.cli_json("name", "publish", "--key=stale-forged", second, timeout=DHT_TIMEOUT)
    assert resolve(b, name) == second
    newest = b.cli("routing", "get", f"/ipns/{name}", timeout=DHT_TIMEOUT)
    assert parse_ipns(newest).get("sequence", 0) > parse_ipns(stale).get("sequence", 0)

    def held() -> bytes | None:
        rec = kad.call(lambda: server.store.get(routing_key, server.clock()))
        return None if rec is None else rec.value

    assert held() == newest
    client = kad.node(listen=[], mode="client")
    kad.run(client.host.dial(Multiaddr(transport.addr(server))), 20)

    forged_value = ("/ipfs/" + cid_v1(multihash(b"forged-" + os.urandom(8)))).encode()
    forged = forge(newest, forged_value)
    assert parse_ipns(forged)["sequence"] == parse_ipns(newest).get("sequence", 0) + 1
    for what, record in (("stale", stale), ("forged", forged)):
        reply = kad.run(_put_value(client, server, routing_key, record))
        assert reply is None, f"kadfast accepted the {what} IPNS record (a {reply.type.name} reply)"
        assert held() == newest, f"kadfast replaced the newest IPNS record with the {what} one"
        assert resolve(b, name) == second, f"Kubo resolves another value after the {what} put"
