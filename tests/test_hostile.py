"""Hostile peers and operator limits, on loopback.

Each test plays a misbehaving peer against a kad server (a started
:class:`KadNode`) and then checks that the server still serves a well-behaved
peer on a fresh connection (:func:`assert_serves`: a ping and a FIND_NODE).
Misbehaviour below the kad protocol is produced by :class:`RawClient`, a
dialer made of a raw asyncio socket and the sans-IO cores (multistream,
Noise, Yamux), so a test can break the rules at any layer.

Covered elsewhere and not repeated here: a peer proving another PeerId than
the one dialed (``test_net.py::test_dial_failures_are_typed``, DialWrongPeer),
garbage before the multistream header (``test_net.py::test_garbage_instead_of_handshake``),
a silent connection (``test_net.py::test_stalled_handshake_is_dropped``), the
host's inbound stream limit with well-behaved streams
(``test_net.py::test_inbound_stream_limit``) and the total connection limit
(``test_net.py::test_connection_limit_refuses_inbound``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
from _loops import loop_runner
from _rawclient import RawClient, read_to_eof, tcp_port

from kadfast import Ed25519KeyPair, Multiaddr
from kadfast import yamux as y
from kadfast.addrbook import ip_group
from kadfast.identify import PROTOCOL_ID as IDENTIFY_PROTOCOL
from kadfast.kad.node import Config, KadNode, Quorum
from kadfast.kad.pb import (
    MAX_MESSAGE_SIZE,
    KadMessage,
    KadPeer,
    KadRecord,
    MessageReader,
    MessageType,
    decode_message,
    encode_message,
    frame,
)
from kadfast.kad.ratelimit import PeerRateLimiter
from kadfast.kad.validation import InvalidRecord, Validator
from kadfast.multistream import MultistreamDialer
from kadfast.net import ConnectionEstablished, Host, HostConfig, StreamReset
from kadfast.noise import STATIC_KEY_SIGNATURE_PREFIX, NoiseHandshake, NoiseStaticKey
from kadfast.peerid import PeerId
from kadfast.ping import PROTOCOL_ID as PING_PROTOCOL
from kadfast.protobuf import field_bytes
from kadfast.store import Record

KAD = "/ipfs/kad/1.0.0"
LISTEN = ["/ip4/127.0.0.1/tcp/0"]


run = loop_runner(20.0)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- helpers -------------------------------------------------------------------
async def start_node(config: Config | None = None, clock=None, **host_kw) -> KadNode:
    kw = {"clock": clock} if clock is not None else {}
    node = KadNode(config=config or Config(), host_config=HostConfig(listen_addrs=LISTEN, **host_kw), **kw)
    await node.start()
    return node


def maddr(h: Host) -> Multiaddr:
    return h.listen_addrs[0].with_peer_id(h.peer_id)


def random_peer() -> PeerId:
    return PeerId(bytes.fromhex("002408011220") + os.urandom(32))


def dead_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def kad_request(host: Host, peer: PeerId, *msgs: KadMessage, replies: int = 1, timeout: float = 5.0) -> list[KadMessage]:
    """Write ``msgs`` on one fresh kad stream and read ``replies`` replies."""
    s = await host.new_stream(peer, KAD)
    try:
        s.write(b"".join(frame(encode_message(m)) for m in msgs))
        out = []
        for _ in range(replies):
            body = await asyncio.wait_for(s.read_message(MAX_MESSAGE_SIZE), timeout)
            assert body is not None, "stream ended without a reply"
            out.append(decode_message(body))
    except BaseException:
        s.reset()
        raise
    s.close()
    return out


async def expect_reset(host: Host, peer: PeerId, raw: bytes, timeout: float = 5.0) -> None:
    """Write ``raw`` on a fresh kad stream; the server must reset the stream."""
    s = await host.new_stream(peer, KAD)
    with pytest.raises(StreamReset):
        s.write(raw)
        while await asyncio.wait_for(s.read(), timeout):
            pass


async def assert_serves(node: KadNode) -> None:
    """A well-behaved peer on a fresh connection gets answers: ping and FIND_NODE."""
    async with Host() as h:
        await h.dial(maddr(node.host))
        assert await h.ping(node.peer_id, timeout=5) >= 0
        key = os.urandom(32)
        [reply] = await kad_request(h, node.peer_id, KadMessage(MessageType.FIND_NODE, key=key))
        assert reply.type == MessageType.FIND_NODE and reply.key == key


async def until_true(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# -- kad messages with bad varints ---------------------------------------------------
def test_bad_varints_in_kad_messages_reset_the_stream(run):
    async def main():
        node = await start_node()
        try:
            async with Host() as h:
                await h.dial(maddr(node.host))
                find = encode_message(KadMessage(MessageType.FIND_NODE, key=b"k"))
                bad = [
                    b"\xff" * 10 + b"\x01",                              # length prefix longer than 10 bytes
                    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # ... even of a small value
                    b"\x80\x80\x40",                                     # length 1 MiB > max_message_size
                    b"\x83\x00" + find[:3],                              # non-minimal length prefix (3)
                    frame(b"\x08" + b"\xff" * 10 + b"\x01"),             # a field varint of 11 bytes
                    frame(b"\x12\xff\xff\xff\xff\x0f" + b"k"),           # a key longer than the message
                ]
                for raw in bad:
                    await expect_reset(h, node.peer_id, raw)
                # the connection survived every one of them; so does serving on it
                [reply] = await kad_request(h, node.peer_id, KadMessage(MessageType.FIND_NODE, key=b"k"))
                assert reply.key == b"k"
                assert len(h.connections(node.peer_id)) == 1
            assert list(node.store.records()) == []
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


# -- the handshake ----------------------------------------------------------------------
def test_slowloris_handshake_is_cut_at_the_handshake_timeout(run):
    async def main():
        node = await start_node(handshake_timeout=0.5)
        # the multistream header and /noise, one byte every 0.1 s: 2.8 s in all,
        # each byte well inside any per-read timeout, the whole far beyond 0.5 s
        header = b"\x13/multistream/1.0.0\n\x07/noise\n"
        loop = asyncio.get_running_loop()
        try:
            async def slow_client():
                reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(node.host))

                async def drip():
                    for b in header:
                        writer.write(bytes([b]))
                        await asyncio.sleep(0.1)

                t0 = loop.time()
                dripper = loop.create_task(drip())
                try:
                    await read_to_eof(reader, timeout=5)
                finally:
                    dripper.cancel()
                    await asyncio.gather(dripper, return_exceptions=True)
                    writer.transport.abort()
                return loop.time() - t0, dripper

            results = await asyncio.gather(*[slow_client() for _ in range(5)])
            for elapsed, _ in results:
                assert 0.4 <= elapsed < 2.0, elapsed  # cut at ~0.5 s although bytes kept coming
            assert node.host.connection_count() == 0
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


def _bad_signature_key() -> NoiseStaticKey:
    """A static key whose payload signs another X25519 key than its own."""
    kp = Ed25519KeyPair.generate()
    sk = NoiseStaticKey(kp)
    other = NoiseStaticKey(kp)
    sig = kp.sign(STATIC_KEY_SIGNATURE_PREFIX + other.public_bytes)
    sk.payload = field_bytes(1, kp.public_key.encode()) + field_bytes(2, sig)
    return sk


@pytest.mark.parametrize("attack", ["bad_signature", "garbage_message_3", "short_message_1", "random_frames"])
def test_bad_noise_handshakes_are_dropped(run, attack):
    async def main():
        node = await start_node()
        events = node.host.subscribe()
        try:
            c = await RawClient.connect(node.host)
            rest = await c.select_noise()
            if attack == "bad_signature":
                await c.noise(rest, static_key=_bad_signature_key())
            elif attack == "garbage_message_3":
                hs = NoiseHandshake(Ed25519KeyPair.generate(), initiator=True)
                c.writer.write(hs.data_to_send())
                if rest:
                    hs.receive_data(rest)
                while not hs.complete:
                    hs.receive_data(await c.recv())
                msg3 = hs.data_to_send()
                c.writer.write(msg3[:2] + os.urandom(len(msg3) - 2))  # right length, random bytes
            elif attack == "short_message_1":
                c.writer.write(b"\x00\x05" + os.urandom(5))  # an ephemeral key needs 32 bytes
            else:
                c.writer.write(b"\x00\x20" + os.urandom(32))  # a valid-looking message 1 ...
                await c.recv()                                # ... the server answers it ...
                c.writer.write(b"\x00\xc8" + os.urandom(200))  # ... then a random message 3
            await read_to_eof(c.reader, timeout=5)  # the server hangs up
            c.close()
            assert node.host.connection_count() == 0
            assert not any(isinstance(events.get_nowait(), ConnectionEstablished) for _ in range(events.qsize()))
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


# -- per-IP connection limit ------------------------------------------------------------
def test_ip_groups():
    assert ip_group("10.1.2.3") == ("10.1.2.3", False)
    assert ip_group("127.0.0.1") == ("127.0.0.1", True)
    assert ip_group("::ffff:10.1.2.3") == ("10.1.2.3", False)
    assert ip_group("2001:db8:1:2:aaaa::1")[0] == ip_group("2001:db8:1:2:bbbb::9")[0] == "2001:db8:1:2::/64"
    assert ip_group("2001:db8:1:3::1")[0] != ip_group("2001:db8:1:2::1")[0]
    assert ip_group("::1")[1] and ip_group("fe80::1%eth0")[0] == "fe80::/64"
    assert ip_group("not an ip") == (None, False)
    c = HostConfig()
    assert c.max_connections_per_ip == 64 and c.limit_loopback is False


def test_per_ip_connection_limit(run):
    async def main():
        node = await start_node(max_connections_per_ip=3, limit_loopback=True)
        exempt = await start_node(max_connections_per_ip=1)  # loopback exempt by default
        host = node.host
        try:
            # three connections from 127.0.0.2 that stall in the handshake
            held = [await RawClient.connect(host, local_ip="127.0.0.2") for _ in range(3)]
            await until_true(lambda: host.usage().per_ip.get("127.0.0.2") == 3)
            # a fourth from that address is closed at once, before any handshake byte
            c4 = await RawClient.connect(host, local_ip="127.0.0.2")
            c4.writer.write(b"\x13/multistream/1.0.0\n")
            t0 = time.monotonic()
            assert await read_to_eof(c4.reader, timeout=5) == b""
            assert time.monotonic() - t0 < 2.0  # refused, not timed out (handshake timeout 10 s)
            c4.close()
            assert host.usage().per_ip.get("127.0.0.2") == 3
            # another address is not affected
            await assert_serves(node)
            # closed connections give their slots back
            for c in held:
                c.close()
            await until_true(lambda: "127.0.0.2" not in host.usage().per_ip)
            c5 = await RawClient.connect(host, local_ip="127.0.0.2")
            await c5.upgrade()
            c5.close()
            # loopback is exempt unless limit_loopback: several connections from 127.0.0.1
            hosts = [Host() for _ in range(3)]
            for h in hosts:
                await h.start()
                await h.dial(maddr(exempt.host))
            for h in hosts:
                await h.close()
            await assert_serves(exempt)
        finally:
            await node.stop()
            await exempt.stop()
    run(main)


def test_handshake_rate_per_ip_and_per_subnet(run):
    """Connections beyond max_handshakes_per_ip_per_second (with its burst)
    from one address are closed before any Noise work; another address of
    the same /24 still gets in until the subnet's own rate is used up."""
    async def main():
        # a burst of 3 and a token per 100 s: the outcome cannot depend on timing
        node = await start_node(limit_loopback=True, max_handshakes_per_ip_per_second=0.01,
                                max_handshakes_per_subnet_per_second=0.01, handshake_burst_seconds=300.0)
        host = node.host
        try:
            async def refused(ip: str) -> bool:
                c = await RawClient.connect(host, local_ip=ip)
                try:
                    await asyncio.wait_for(c.select_noise(), 5)
                except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                    return True
                finally:
                    c.close()
                return False

            # the burst: 3 handshakes from 127.0.9.1, then refusals
            outcomes = [await refused("127.0.9.1") for _ in range(6)]
            assert outcomes[:3] == [False] * 3 and all(outcomes[3:]), outcomes
            # the /24 used its burst too (3 of them came from it): another
            # address of it is refused, one of another /24 is not
            assert await refused("127.0.9.2")
            assert not await refused("127.0.10.1")
            # a well-behaved peer from elsewhere is served
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


# -- stream floods --------------------------------------------------------------------------
def test_kad_stream_flood_beyond_the_per_connection_limit(run):
    async def main():
        node = await start_node()
        limit = node.config.max_inbound_kad_streams_per_connection
        assert limit == 32
        try:
            async with Host() as h:
                await h.dial(maddr(node.host))
                held = [await h.new_stream(node.peer_id, KAD) for _ in range(limit)]  # open, idle
                extra = await h.new_stream(node.peer_id, KAD)
                with pytest.raises(StreamReset):  # on the write when the reset arrived first
                    extra.write(frame(encode_message(KadMessage(MessageType.PING))))
                    await asyncio.wait_for(extra.read(), 5)
                assert h.connection(node.peer_id).is_open
                # the streams within the limit are served
                held[0].write(frame(encode_message(KadMessage(MessageType.FIND_NODE, key=b"x"))))
                body = await asyncio.wait_for(held[0].read_message(MAX_MESSAGE_SIZE), 5)
                assert decode_message(body).key == b"x"
                # a stream closed by both sides frees its slot
                held[0].close()
                assert await asyncio.wait_for(held[0].read_to_end(1024), 5) == b""
                [reply] = await kad_request(h, node.peer_id, KadMessage(MessageType.FIND_NODE, key=b"y"))
                assert reply.key == b"y"
                for s in held[1:]:
                    s.reset()
                # every stream ended: the count is back to zero (no drift)
                server_conn = node.host.connection(h.peer_id)
                await until_true(lambda: server_conn.inbound_streams_for(KAD) == 0)
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


def test_raw_yamux_stream_flood_beyond_the_inbound_stream_limit(run):
    async def main():
        node = await start_node(max_inbound_streams=8)
        try:
            c = await RawClient.connect(node.host)
            await c.upgrade()
            sids = []
            for _ in range(20):  # streams that never finish negotiating
                sid = c.session.open_stream()
                c.session.send(sid, b"\x13/multi")
                sids.append(sid)
            c.flush()
            events = await c.events_until(lambda evs: sum(isinstance(e, y.StreamResetByPeer) for e in evs) >= 12)
            reset = {e.stream_id for e in events if isinstance(e, y.StreamResetByPeer)}
            assert reset == set(sids[8:])
            conn = next(iter(node.host.pending_connections() + list(node.host.open_connections())))
            assert conn.core.inbound_streams == 8 and conn.is_open
            c.close()
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


def test_idle_and_trickling_kad_streams_are_reset(run):
    """A kad stream that negotiated and then says nothing, and one that
    trickles an unfinished message, are reset once no whole request came
    for kad_stream_idle_timeout; a stream with requests coming goes on."""
    async def main():
        # `busy` asks again as soon as an answer comes: far more than the
        # read rate limit allows, which is not what this test is about
        node = await start_node(Config(kad_stream_idle_timeout=1.0, maintenance_period=0.05,
                                       max_reads_per_peer_per_second=0))
        try:
            c = await RawClient.connect(node.host)
            await c.upgrade()
            proposal = MultistreamDialer([KAD]).data_to_send()
            silent, trickle, busy = (c.session.open_stream() for _ in range(3))
            c.session.send(silent, proposal)
            c.session.send(trickle, proposal + b"\x80\x01" + b"\x08")  # 128 bytes announced, 1 sent
            c.session.send(busy, proposal)
            c.flush()
            events: list = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.4:  # requests on `busy` every 0.1 s, well within the timeout
                c.session.send(busy, frame(encode_message(KadMessage(MessageType.FIND_NODE, key=os.urandom(32)))))
                c.flush()
                try:
                    events += await c.events_until(bool, timeout=0.1)
                except asyncio.TimeoutError:
                    pass
            reset = {e.stream_id for e in events if isinstance(e, y.StreamResetByPeer)}
            assert reset == {silent, trickle}, reset
            assert any(isinstance(e, y.StreamData) and e.stream_id == busy for e in events)
            c.close()
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


async def _filled_node(config: Config) -> KadNode:
    """A server whose FIND_NODE answers carry 20 peers (about 1 KiB each)."""
    node = await start_node(config)
    for i in range(40):
        node.add_address(random_peer(), Multiaddr(f"/ip4/10.1.{i}.1/tcp/4001"))
    return node


def test_held_requests_are_answered_in_order_as_the_output_drains(run):
    """With the output over max_queued_reply_bytes, requests wait instead of
    being answered at once; a client that reads gets every answer, in order."""
    async def main():
        node = await _filled_node(Config(max_queued_reply_bytes=1))  # every second answer waits
        try:
            async with Host() as h:
                await h.dial(maddr(node.host))
                keys = [os.urandom(32) for _ in range(200)]
                replies = await kad_request(h, node.peer_id, *[KadMessage(MessageType.FIND_NODE, key=k) for k in keys],
                                            replies=len(keys), timeout=10)
                assert [r.key for r in replies] == keys and all(len(r.closer_peers) == 20 for r in replies)
        finally:
            await node.stop()
    run(main)


def test_a_client_that_never_reads_its_answers_is_held_and_then_reset(run):
    """A client floods one kad stream with FIND_NODE and reads nothing. The
    server answers while the kernel takes the answers, then holds requests
    (bounded by max_held_request_bytes) and finally resets the stream: what
    it queues stays within max_queued_reply_bytes plus one answer, instead of
    growing with every request (2.3 GB from 4 such connections before)."""
    async def main():
        cfg = Config(max_queued_reply_bytes=64 * 1024, max_held_request_bytes=16 * 1024,
                     max_reads_per_peer_per_second=0)  # the held bytes must stop it, not the read rate
        node = await _filled_node(cfg)
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", tcp_port(node.host)))
            c = RawClient(*await asyncio.open_connection(sock=sock))
            await c.upgrade()
            await until_true(lambda: node.host.connection_count() == 1)
            conn = node.host.connection(next(iter(node.host.connected_peers())))
            sid = c.session.open_stream()
            c.session.send(sid, MultistreamDialer([KAD]).data_to_send())
            c.flush()

            def kad_streams():
                return [st for st in conn.streams.values() if st.inbound and st.protocol == KAD]
            await until_true(lambda: kad_streams())
            request = frame(encode_message(KadMessage(MessageType.FIND_NODE, key=os.urandom(32))))
            sent = 0
            peak = 0
            for _ in range(400):  # up to 400 x 50 requests, until the server resets the stream
                c.send_plain(y.encode_header(0, 0, sid, len(request) * 50) + request * 50)
                sent += 50
                await c.writer.drain()
                await asyncio.sleep(0)
                peak = max(peak, conn.queued_output())
                if not kad_streams():
                    break
            assert not kad_streams(), "never reset"
            answered = node.request_counts.get(MessageType.FIND_NODE, 0)
            assert answered < sent
            assert peak <= cfg.max_queued_reply_bytes + 16 * 1024, peak
            c.close()
            await assert_serves(node)
        finally:
            await node.stop()
    run(main, timeout=60)


# -- Yamux window violation ---------------------------------------------------------------------
def test_data_frame_larger_than_the_window_closes_the_connection_with_go_away(run):
    async def main():
        node = await start_node()
        events = node.host.subscribe()
        try:
            c = await RawClient.connect(node.host)
            await c.upgrade()
            await asyncio.wait_for(_next(events, ConnectionEstablished), 5)
            n = y.DEFAULT_WINDOW + 1
            # stream 1, SYN on a Data frame that carries one byte more than the window
            c.send_plain(y.encode_header(0, y.FLAG_SYN, 1, n) + b"\0" * n)
            got = await c.events_to_eof()
            go_aways = [e for e in got if isinstance(e, y.GoAwayReceived)]
            assert go_aways and go_aways[0].code == y.GO_AWAY_PROTOCOL_ERROR
            c.close()
            assert node.host.connection_count() == 0
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


async def _next(q: asyncio.Queue, kind):
    while True:
        ev = await q.get()
        if isinstance(ev, kind):
            return ev


# -- kad requests that must not take effect --------------------------------------------------------
def test_add_provider_naming_another_peer_is_ignored(run):
    async def main():
        node = await start_node()
        try:
            async with Host() as h:
                await h.dial(maddr(node.host))
                other = random_peer()
                addr = Multiaddr("/ip4/10.9.9.9/tcp/4001")
                me = KadPeer(h.peer_id, [Multiaddr("/ip4/10.1.1.1/tcp/1")])
                # ADD_PROVIDER has no reply: the GET_PROVIDERS behind it on the
                # same stream is answered only after it was handled
                [reply] = await kad_request(
                    h, node.peer_id,
                    KadMessage(MessageType.ADD_PROVIDER, key=b"k1", provider_peers=[KadPeer(other, [addr]), me]),
                    KadMessage(MessageType.GET_PROVIDERS, key=b"k1"))
                assert [p.peer_id for p in reply.provider_peers] == [h.peer_id]
                [reply] = await kad_request(
                    h, node.peer_id,
                    KadMessage(MessageType.ADD_PROVIDER, key=b"k2", provider_peers=[KadPeer(other, [addr])]),
                    KadMessage(MessageType.GET_PROVIDERS, key=b"k2"))
                assert reply.provider_peers == []
            now = node.clock()
            assert [p.provider for p in node.store.providers(b"k1", now)] == [h.peer_id]
            assert node.store.providers(b"k2", now) == []
            assert node.host.addrbook.addrs(other, time.monotonic()) == []
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


class OnlyGood(Validator):
    def validate(self, key, value):
        if value != b"good":
            raise InvalidRecord("not good")


def test_bad_put_value_resets_the_stream_and_stores_nothing(run):
    async def main():
        node = await start_node()
        node.validator.register("strict", OnlyGood())
        try:
            async with Host() as h:
                await h.dial(maddr(node.host))
                bad = [
                    KadMessage(MessageType.PUT_VALUE, key=b"/any/a", record=KadRecord(b"/any/b", b"v")),
                    KadMessage(MessageType.PUT_VALUE, key=b"/any/a"),  # no record at all
                    KadMessage(MessageType.PUT_VALUE, key=b"/strict/k", record=KadRecord(b"/strict/k", b"bad")),
                ]
                for msg in bad:
                    await expect_reset(h, node.peer_id, frame(encode_message(msg)))
                assert list(node.store.records()) == []
                # a valid one on the same connection is stored and echoed
                good = KadMessage(MessageType.PUT_VALUE, key=b"/strict/k", record=KadRecord(b"/strict/k", b"good"))
                [reply] = await kad_request(h, node.peer_id, good)
                assert reply.record.value == b"good"
            assert [r.key for r in node.store.records()] == [b"/strict/k"]
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


# -- lookups through liars and laggards -------------------------------------------------------------
async def honest_network(n: int) -> list[KadNode]:
    nodes = [await start_node() for _ in range(n)]
    for node in nodes[1:]:
        node.add_address(nodes[0].peer_id, nodes[0].listen_addrs[0])
    await asyncio.gather(*[node.bootstrap() for node in nodes[1:]])
    return nodes


def test_find_node_replies_full_of_made_up_peers(run):
    async def main():
        honest = await honest_network(3)
        liar = Host(config=HostConfig(listen_addrs=LISTEN))
        await liar.start()
        closed_port = dead_port()
        made_up: set[PeerId] = set()

        async def lie(stream):
            reader = MessageReader()
            while True:
                data = await stream.read()
                if not data:
                    return
                for body in reader.feed(data):
                    msg = decode_message(body)
                    fakes = (
                        [KadPeer(random_peer(), [Multiaddr(f"/ip4/127.0.0.1/tcp/{closed_port}")]) for _ in range(8)]
                        + [KadPeer(random_peer(), [Multiaddr("/ip4/192.0.2.1/tcp/4001")]) for _ in range(4)]   # TEST-NET-1
                        + [KadPeer(random_peer(), [liar.listen_addrs[0]]) for _ in range(4)]  # wrong PeerId there
                        + [KadPeer(random_peer(), [Multiaddr("/ip4/10.0.0.1/udp/1/quic-v1")]) for _ in range(4)]
                    )
                    made_up.update(p.peer_id for p in fakes)
                    stream.write(frame(encode_message(KadMessage(msg.type, key=msg.key, closer_peers=fakes))))

        liar.set_stream_handler(KAD, lie)
        cfg = Config(query_timeout=3.0, request_timeout=1.0)
        victim = await start_node(cfg, dial_timeout=1.0)
        victim.add_address(liar.peer_id, liar.listen_addrs[0])
        victim.add_address(honest[0].peer_id, honest[0].listen_addrs[0])
        try:
            async def lookup():
                t0 = time.monotonic()
                peers = await victim.get_closest_peers(os.urandom(32))
                return time.monotonic() - t0, peers

            results = await asyncio.gather(*[lookup() for _ in range(4)])
            honest_ids = {n.peer_id for n in honest}
            for elapsed, peers in results:
                assert elapsed < cfg.query_timeout + 1.0
                assert set(peers) <= honest_ids | {liar.peer_id}
                assert set(peers) & honest_ids
            assert len(made_up) >= 4 * 20
            table = set(victim.routing_table_peers())
            assert not table & made_up  # unreachable peers never enter the routing table
            assert table <= honest_ids | {liar.peer_id}
            # what was learned about them stays within the bounded tables
            assert len(victim.host.addrbook) <= victim.host.addrbook.max_peers
            assert victim.host.usage().backoff_entries <= victim.host.config.max_backoff_entries
            # no connection is left behind by the failed dials (uvloop creates the
            # protocol before connecting; a refused dial once leaked it as pending)
            # open connections: the honest nodes and the liar; a dial to a
            # made-up address may still be pending (an unroutable address
            # whose connect hangs) until the dial timeout ends it
            assert sum(len(victim.host.connections(p)) for p in victim.host.connected_peers()) <= len(honest) + 1
            deadline = time.monotonic() + 3 * 1.0 + 2.0
            while victim.host.connection_count() > len(honest) + 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert victim.host.connection_count() <= len(honest) + 1
            await assert_serves(victim)
        finally:
            await victim.stop()
            await liar.close()
            for n in honest:
                await n.stop()
    run(main, timeout=30)


def test_peer_that_answers_slowly_to_everything(run):
    async def main():
        honest = await honest_network(3)
        slow = Host(config=HostConfig(listen_addrs=LISTEN))
        never = asyncio.Event()

        async def stall(stream):
            await never.wait()

        for proto in (KAD, IDENTIFY_PROTOCOL, PING_PROTOCOL):
            slow.set_stream_handler(proto, stall)
        await slow.start()
        cfg = Config(request_timeout=0.5, query_timeout=5.0)
        victim = await start_node(cfg)
        victim.add_address(slow.peer_id, slow.listen_addrs[0])
        victim.add_address(honest[0].peer_id, honest[0].listen_addrs[0])
        try:
            t0 = time.monotonic()
            peers = await victim.get_closest_peers(os.urandom(32))
            assert time.monotonic() - t0 < 3.0
            assert slow.peer_id not in peers and set(peers) == {n.peer_id for n in honest}
            entry = victim.table.get(_key(slow.peer_id))
            assert entry is None or not entry.connected
            t0 = time.monotonic()
            stored = await victim.put_record(Record(b"/t/slow", b"v"), Quorum.ONE)
            assert stored >= 1 and time.monotonic() - t0 < 3.0
            await assert_serves(victim)
        finally:
            await victim.stop()
            await slow.close()
            for n in honest:
                await n.stop()
    run(main, timeout=30)


def _key(peer: PeerId):
    from kadfast import Key
    return Key(peer.to_bytes())


# -- rate limits ------------------------------------------------------------------------------------
def test_peer_rate_limiter_unit():
    lim = PeerRateLimiter(rate=2.0, burst=3.0, max_peers=2)
    assert [lim.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert lim.allow("a", 0.5)          # one token back after half a second at 2/s
    assert not lim.allow("a", 0.5)
    assert not lim.allow("a", 0.4)      # a clock going backwards refills nothing
    assert [lim.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]  # never above the burst
    lim.allow("b", 100.0)
    lim.allow("c", 100.0)
    assert len(lim) == 2                # bounded: "a", the least recently seen, is forgotten
    assert PeerRateLimiter(0, 1).allow("x", 0.0)  # rate 0: no limit
    c = Config()
    assert c.max_puts_per_peer_per_second > 0 and c.max_provider_adds_per_peer_per_second > 0


def test_put_and_add_provider_rate_limits(run):
    async def main():
        clock = FakeClock()
        cfg = Config(max_puts_per_peer_per_second=1.0, max_provider_adds_per_peer_per_second=1.0,
                     rate_limit_burst_seconds=3.0)
        node = await start_node(cfg, clock=clock)

        def put(i: int) -> KadMessage:
            key = b"/r/%d" % i
            return KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, b"v"))

        def add_provider(h: Host, key: bytes) -> list[KadMessage]:
            return [KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=[KadPeer(h.peer_id, [Multiaddr("/ip4/10.1.1.1/tcp/1")])]),
                    KadMessage(MessageType.GET_PROVIDERS, key=key)]

        try:
            async with Host() as flood, Host() as other:
                for h in (flood, other):
                    await h.dial(maddr(node.host))
                # a burst of 3, then the fourth PUT_VALUE resets its stream
                for i in range(3):
                    [reply] = await kad_request(flood, node.peer_id, put(i))
                    assert reply.record.key == b"/r/%d" % i
                await expect_reset(flood, node.peer_id, frame(encode_message(put(3))))
                assert node.store.get(b"/r/3", clock()) is None
                # ADD_PROVIDER has its own bucket
                for i in range(3):
                    [reply] = await kad_request(flood, node.peer_id, *add_provider(flood, b"p%d" % i))
                    assert [p.peer_id for p in reply.provider_peers] == [flood.peer_id]
                await expect_reset(flood, node.peer_id, b"".join(frame(encode_message(m)) for m in add_provider(flood, b"p3")))
                assert node.store.providers(b"p3", clock()) == []
                # other peers are not affected
                [reply] = await kad_request(other, node.peer_id, put(10))
                assert reply.record.key == b"/r/10"
                [reply] = await kad_request(other, node.peer_id, *add_provider(other, b"p10"))
                assert [p.peer_id for p in reply.provider_peers] == [other.peer_id]
                # tokens come back with the node's clock
                clock.t += 1.0
                [reply] = await kad_request(flood, node.peer_id, put(4))
                assert reply.record.key == b"/r/4"
                await expect_reset(flood, node.peer_id, frame(encode_message(put(5))))
                # the flooder's connection stays; reads are not limited
                [reply] = await kad_request(flood, node.peer_id, KadMessage(MessageType.GET_VALUE, key=b"/r/0"))
                assert reply.record.value == b"v"
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


def test_read_rate_limit_resets_the_stream_of_a_flooding_peer(run):
    """FIND_NODE, GET_VALUE and GET_PROVIDERS from one peer share its read
    bucket: past it the request's stream is reset, the connection stays,
    other peers are served, and tokens come back with the clock."""
    async def main():
        clock = FakeClock()
        node = await start_node(Config(max_reads_per_peer_per_second=1.0, rate_limit_burst_seconds=3.0), clock=clock)
        reads = [KadMessage(MessageType.FIND_NODE, key=os.urandom(32)), KadMessage(MessageType.GET_VALUE, key=b"/k"),
                 KadMessage(MessageType.GET_PROVIDERS, key=b"p")]
        try:
            async with Host() as flood, Host() as other:
                for h in (flood, other):
                    await h.dial(maddr(node.host))
                replies = await kad_request(flood, node.peer_id, *reads, replies=3)
                assert [r.type for r in replies] == [m.type for m in reads]
                for m in reads:
                    await expect_reset(flood, node.peer_id, frame(encode_message(m)))
                [reply] = await kad_request(other, node.peer_id, reads[0])
                assert reply.key == reads[0].key
                assert len(flood.connections(node.peer_id)) == 1
                assert await flood.ping(node.peer_id, timeout=5) >= 0  # not a kad request
                clock.t += 1.0
                [reply] = await kad_request(flood, node.peer_id, reads[1])
                assert reply.type == MessageType.GET_VALUE
                await expect_reset(flood, node.peer_id, frame(encode_message(reads[1])))
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


def test_a_put_to_a_full_store_is_refused(run):
    """A server whose store is full (StoreConfig.max_records) refuses an
    honest PUT_VALUE of a new key explicitly: the stream is reset, so the
    putting node counts that peer as failed (QuorumFailed with none stored),
    while replicas and changes of the records held are still taken."""
    from kadfast.kad.node import QuorumFailed
    from kadfast.store import StoreConfig

    async def main():
        node = await start_node(Config(store=StoreConfig(max_records=2)))
        client = KadNode(config=Config(mode="client"))
        await client.start()
        try:
            client.add_address(node.peer_id, node.listen_addrs[0])
            async with Host() as h:
                await h.dial(maddr(node.host))
                for key in (b"/f/1", b"/f/2"):
                    [reply] = await kad_request(h, node.peer_id, KadMessage(
                        MessageType.PUT_VALUE, key=key, record=KadRecord(key, b"v")))
                    assert reply.record.key == key
                await expect_reset(h, node.peer_id, frame(encode_message(KadMessage(
                    MessageType.PUT_VALUE, key=b"/f/3", record=KadRecord(b"/f/3", b"v")))))
                [reply] = await kad_request(h, node.peer_id, KadMessage(
                    MessageType.PUT_VALUE, key=b"/f/1", record=KadRecord(b"/f/1", b"w")))
                assert reply.record.value == b"w"
            with pytest.raises(QuorumFailed) as err:
                await client.put_record(Record(b"/f/4", b"v"), Quorum.ONE)
            assert err.value.stored == 0
            assert client.store.get(b"/f/4", client.clock()) is not None  # the putter keeps its own copy
            assert node.store.get(b"/f/4", node.clock()) is None and len(node.store) == 2
            assert await client.put_record(Record(b"/f/2", b"v"), Quorum.ONE) == 1  # a replica of a held record
            await assert_serves(node)
        finally:
            await client.stop()
            await node.stop()
    run(main)


def test_inbound_stream_that_never_negotiates_is_reset():
    async def main():
        from kadfast.net import Host, HostConfig
        server = Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], negotiation_timeout=0.3))
        client = Host()
        await server.start()
        await client.start()
        try:
            conn = await client.dial(server.listen_addrs[0].with_peer_id(server.peer_id))
            # open a Yamux stream by hand and never send a multistream header
            sid = conn.session.open_stream()
            conn.stream_send(sid, b"\x13")  # a length prefix, then silence: never a whole message
            sconn = None
            deadline = asyncio.get_running_loop().time() + 5
            while sconn is None or not sconn.core.negotiating(sid):
                sconn = server.connection(client.peer_id)
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            while sconn.core.negotiating(sid):
                assert asyncio.get_running_loop().time() < deadline, "never reset"
                await asyncio.sleep(0.05)
            assert await client.ping(server.peer_id) > 0
        finally:
            await client.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 20))


# -- fairness: one busy connection cannot hold the loop -------------------------------
def test_a_flooding_connection_gets_its_share_of_the_loop_and_no_more(run):
    """A peer writes 4 MiB of Yamux frames that the server must parse and then
    ignores (window updates for a stream it does not know). The server
    handles each connection's input ``max_read_bytes_per_turn`` at a time
    (uvloop would otherwise hand one turn up to 32 reads of that socket): a
    FIND_NODE on another connection, sent once the flood is under way, is
    answered while most of the flood still waits; then all of it is handled."""
    import struct

    async def go():
        node = await start_node()
        try:
            async with Host() as honest:
                await honest.dial(maddr(node.host))
                raw = await RawClient.connect(node.host)
                await raw.upgrade()
                await until_true(lambda: len(node.host.connected_peers()) == 2)
                [flooder] = [p for p in node.host.connected_peers() if p != honest.peer_id]
                conn = node.host.connection(flooder)
                start = conn.bytes_in
                count = 4 * 1024 * 1024 // 12
                frames = struct.pack(">BBHII", 0, y.TYPE_WINDOW_UPDATE, 0, 999, 1) * count
                chunks = [raw.crypto.encrypt(frames[i:i + 60_000]) for i in range(0, len(frames), 60_000)]
                total = sum(len(c) for c in chunks)
                for c in chunks:
                    raw.writer.write(c)
                await until_true(lambda: conn.bytes_in > start)
                key = os.urandom(32)
                [reply] = await kad_request(honest, node.peer_id, KadMessage(MessageType.FIND_NODE, key=key), timeout=10)
                assert reply.key == key
                assert conn.bytes_in - start < total // 2, "the flood was handled before the honest request"
                await until_true(lambda: conn.bytes_in - start >= total, timeout=30)
                assert conn.is_open
                raw.close()
        finally:
            await node.stop()

    run(go, timeout=60)


def test_a_yamux_ping_flood_closes_the_connection(run):
    """Pings beyond the answered rate by the thousand, without a pause: the
    server sends GoAway(protocol error) and closes the connection, and goes on
    serving others."""
    import struct

    async def go():
        node = await start_node()
        try:
            raw = await RawClient.connect(node.host)
            await raw.upgrade()
            pings = b"".join(struct.pack(">BBHII", 0, y.TYPE_PING, y.FLAG_SYN, 0, i) for i in range(5000))
            raw.send_plain(pings)
            events = await raw.events_to_eof(timeout=10)
            assert y.GoAwayReceived(y.GO_AWAY_PROTOCOL_ERROR) in events
            await assert_serves(node)
        finally:
            await node.stop()

    run(go)


def test_libp2p_ping_flood_is_answered_at_the_burst_and_then_reset(run):
    """/ipfs/ping/1.0.0: a peer writing 100 pings at once gets the burst (20)
    echoed and then the stream reset; a third ping stream on one connection
    is reset at once; and a ping after the bucket refilled is answered."""
    async def go():
        node = await start_node(max_pings_per_second=50.0, ping_burst=20)
        try:
            async with Host() as h:
                await h.dial(maddr(node.host))
                s = await h.new_stream(node.peer_id, PING_PROTOCOL)
                payloads = [os.urandom(32) for _ in range(100)]
                s.write(b"".join(payloads))
                echoed = bytearray()
                with pytest.raises(StreamReset):
                    while True:
                        chunk = await asyncio.wait_for(s.read(), 5)
                        assert chunk, "the stream ended instead of being reset"
                        echoed += chunk
                assert bytes(echoed) == b"".join(payloads[:20])
                # two ping streams may be open on one connection, not three
                a = await h.new_stream(node.peer_id, PING_PROTOCOL)
                b = await h.new_stream(node.peer_id, PING_PROTOCOL)
                c = await h.new_stream(node.peer_id, PING_PROTOCOL)
                with pytest.raises(StreamReset):
                    while await asyncio.wait_for(c.read(), 5):
                        pass
                for st in (a, b):
                    st.reset()
                # the bucket refills at 50/s, and the resets free the stream
                # slots: a ping is answered again
                deadline = time.monotonic() + 5
                while True:
                    try:
                        assert await h.ping(node.peer_id, timeout=5) >= 0
                        break
                    except StreamReset:
                        assert time.monotonic() < deadline, "pings never answered again"
                        await asyncio.sleep(0.05)
            await assert_serves(node)
        finally:
            await node.stop()

    run(go)


# -- unfinished messages: per-connection and process budgets, and a deadline -----------
def _open_unfinished_kad_streams(c: RawClient, n: int, body: int = 15 * 1024) -> list[int]:
    """``n`` kad streams, each announcing a 16 KiB message and sending ``body`` bytes of it."""
    proposal = MultistreamDialer([KAD]).data_to_send()
    sids = []
    for _ in range(n):
        sid = c.session.open_stream()
        c.session.send(sid, proposal + b"\x80\x80\x01" + b"\x00" * body)  # length 16,384
        sids.append(sid)
    c.flush()
    return sids


async def _resets_seen(c: RawClient, done, timeout: float) -> set[int]:
    """The ids of the streams that the server reset, read until
    ``done(ids)`` holds or ``timeout`` passes (what came is kept either way)."""
    ids: set[int] = set()
    deadline = time.monotonic() + timeout
    while not done(ids) and time.monotonic() < deadline:
        try:
            data = await c.recv(timeout=max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            break
        ids |= {e.stream_id for e in c.session.receive_data(c.crypto.decrypt(data)) if isinstance(e, y.StreamResetByPeer)}
    return ids


def test_unfinished_kad_messages_are_bounded_per_connection_and_have_a_deadline(run):
    """32 kad streams on one connection each hold most of a 16 KiB message
    (580 KiB held per connection, with no deadline, before): the streams that
    would take the connection past max_request_bytes_per_connection are reset,
    what stays held is within it, and those left are reset once their message
    is unfinished for kad_message_timeout; then nothing is held."""
    async def main():
        node = await start_node(Config(kad_message_timeout=5.0, maintenance_period=0.05))
        try:
            c = await RawClient.connect(node.host)
            await c.upgrade()
            t0 = time.monotonic()
            sids = _open_unfinished_kad_streams(c, 32)
            early = await _resets_seen(c, lambda ids: len(ids) >= 32 - 8, timeout=10)
            assert len(early) == 32 - 8 and time.monotonic() - t0 < 5.0  # 8 x 15 KiB fit in 128 KiB
            cap = node.config.max_request_bytes_per_connection
            assert 8 * 15 * 1024 <= node.buffered_bytes()["requests"] <= cap
            # the 8 left: reset at the deadline
            late = await _resets_seen(c, lambda ids: early | ids == set(sids), timeout=10)
            assert early | late == set(sids) and time.monotonic() - t0 >= 5.0
            await until_true(lambda: node.buffered_bytes()["requests"] == 0)
            c.close()
            await assert_serves(node)
        finally:
            await node.stop()
    run(main)


def test_the_process_budget_refuses_requests_beyond_it(run):
    """max_buffered_bytes bounds what all connections together hold: with a
    40 KiB budget, two connections holding unfinished messages get at most
    two of them held (15 KiB each), the rest reset; a whole request is still
    answered; and the metric shows what is held."""
    async def main():
        node = await start_node(Config(max_buffered_bytes=40 * 1024))
        try:
            clients = []
            for _ in range(2):
                c = await RawClient.connect(node.host)
                await c.upgrade()
                _open_unfinished_kad_streams(c, 3)
                clients.append(c)
            await until_true(lambda: node.buffered_bytes()["requests"] > 0)
            seen = await asyncio.gather(*(_resets_seen(c, lambda ids: len(ids) == 3, timeout=0.1) for c in clients))
            deadline = time.monotonic() + 10
            while sum(map(len, seen)) < 4 and time.monotonic() < deadline:
                more = await asyncio.gather(*(_resets_seen(c, lambda ids: bool(ids), timeout=0.2) for c in clients))
                seen = [a | b for a, b in zip(seen, more)]
            resets = sum(map(len, seen))
            # 6 streams: 2 held (15 KiB and a 3-byte prefix each: a third would
            # pass the budget), 4 reset
            assert resets == 4 and node.buffered_bytes()["requests"] == 2 * (15 * 1024 + 3)
            await assert_serves(node)
            for c in clients:
                c.close()
            await until_true(lambda: node.buffered_bytes()["requests"] == 0)
        finally:
            await node.stop()
    run(main)
