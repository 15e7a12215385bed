"""The asyncio layer on loopback, on uvloop and on the stock loop."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from kadfast import Ed25519KeyPair, Multiaddr
from kadfast.net import (
    ConnectionClosed,
    ConnectionEstablished,
    DialBackoff,
    DialRefused,
    DialWrongPeer,
    Host,
    HostConfig,
    PeerIdentified,
    ProtocolNotSupported,
    StreamReset,
)
from kadfast.ping import PROTOCOL_ID as PING_PROTOCOL

ECHO = "/test/echo/1.0.0"


from _loops import loop_runner  # noqa: E402

run = loop_runner(30.0)


async def echo_handler(stream):
    while True:
        data = await stream.read()
        if not data:
            return
        stream.write(data)
        await stream.drain()


async def pair(config_a=None, config_b=None):
    a = Host(config=config_a or HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
    b = Host(config=config_b or HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
    await a.start()
    await b.start()
    for h in (a, b):
        h.set_stream_handler(ECHO, echo_handler)
    return a, b


def maddr(h: Host) -> Multiaddr:
    return h.listen_addrs[0].with_peer_id(h.peer_id)


async def wait_for_event(q, kind, timeout=10.0):
    async def get():
        while True:
            ev = await q.get()
            if isinstance(ev, kind):
                return ev
    return await asyncio.wait_for(get(), timeout)


def test_connect_identify_ping(run):
    async def main():
        a, b = await pair()
        qa, qb = a.subscribe(), b.subscribe()
        try:
            conn = await a.dial(maddr(b))
            assert conn.remote_peer_id == b.peer_id
            ev = await wait_for_event(qb, ConnectionEstablished)
            assert ev.peer_id == a.peer_id and ev.inbound
            ia = (await wait_for_event(qa, PeerIdentified)).info
            ib = (await wait_for_event(qb, PeerIdentified)).info
            assert ia.peer_id == b.peer_id and ib.peer_id == a.peer_id
            for info in (ia, ib):
                assert "/ipfs/id/1.0.0" in info.protocols and "/ipfs/ping/1.0.0" in info.protocols
                assert ECHO in info.protocols
                assert info.agent_version.startswith("kadfast/")
            assert b.listen_addrs[0] in ia.listen_addrs
            assert a.listen_addrs[0] in ib.listen_addrs
            assert ia.observed_addr == conn.local_addr     # b saw our ephemeral port
            assert ib.observed_addr == b.listen_addrs[0]   # a dialed b's listen address
            assert await a.identify(b.peer_id) == ia
            rtt = await a.ping(b.peer_id)
            assert 0 < rtt < 5
            assert await b.ping(a.peer_id) > 0
            assert a.connected_peers() == [b.peer_id] and b.connected_peers() == [a.peer_id]
            assert b.listen_addrs[0] in a.addrbook.addrs(b.peer_id, time.monotonic())
        finally:
            await a.close()
            await b.close()
    run(main)


def test_many_concurrent_streams_both_ways(run):
    async def main():
        a, b = await pair()
        try:
            await a.dial(maddr(b))

            async def one(src, dst, i):
                s = await src.new_stream(dst.peer_id, ECHO)
                payload = os.urandom(1000 + i * 37)
                s.write(payload)
                s.close()
                got = await s.read_to_end(1 << 20)
                assert got == payload
            await asyncio.gather(*[one(a, b, i) for i in range(50)], *[one(b, a, i) for i in range(50)])
            assert len(a.connections(b.peer_id)) == 1
        finally:
            await a.close()
            await b.close()
    run(main)


def test_large_transfer_exercises_flow_control(run):
    async def main():
        a, b = await pair()
        received = asyncio.get_running_loop().create_future()

        async def slow_sink(stream):
            total = bytearray()
            while True:
                chunk = await stream.read(8192)
                if not chunk:
                    break
                total += chunk
                await asyncio.sleep(0)
            received.set_result(bytes(total))
        b.set_stream_handler("/test/sink/1.0.0", slow_sink)
        try:
            s = await a.new_stream(b.peer_id, "/test/sink/1.0.0", [b.listen_addrs[0]])
            blob = os.urandom(3 * 1024 * 1024 + 17)
            for i in range(0, len(blob), 100_000):
                await s.write_all(blob[i:i + 100_000])
                # the session never buffers much more than the high-water mark
                assert a.connection(b.peer_id).session.buffered(s.stream_id) <= 64 * 1024 + 100_000
            s.close()
            assert await asyncio.wait_for(received, 20) == blob
        finally:
            await a.close()
            await b.close()
    run(main)


def test_half_close_and_reset(run):
    async def main():
        a, b = await pair()

        async def reply_after_eof(stream):
            data = await stream.read_to_end(1024)
            stream.write(b"got " + data)
            stream.close()

        async def resetter(stream):
            await stream.read(1)
            stream.reset()

        b.set_stream_handler("/test/reply/1.0.0", reply_after_eof)
        b.set_stream_handler("/test/reset/1.0.0", resetter)
        try:
            s = await a.new_stream(b.peer_id, "/test/reply/1.0.0", [b.listen_addrs[0]])
            s.write(b"hello")
            s.close()
            assert await s.read_to_end(1024) == b"got hello"
            r = await a.new_stream(b.peer_id, "/test/reset/1.0.0")
            r.write(b"x")
            with pytest.raises(StreamReset):
                await asyncio.wait_for(r.read(), 5)
            with pytest.raises(ProtocolNotSupported):
                await a.new_stream(b.peer_id, ["/nope/1", "/nope/2"])
            # the connection survives all of that
            assert await a.ping(b.peer_id) > 0
        finally:
            await a.close()
            await b.close()
    run(main)


def test_peer_vanishing_mid_stream(run):
    async def main():
        a, b = await pair()
        started = asyncio.get_running_loop().create_future()

        async def hang(stream):
            started.set_result(None)
            await asyncio.sleep(3600)

        b.set_stream_handler("/test/hang/1.0.0", hang)
        qa = a.subscribe()
        try:
            s = await a.new_stream(b.peer_id, "/test/hang/1.0.0", [b.listen_addrs[0]])
            s.write(b"x")
            await started
            reader = asyncio.ensure_future(s.read())
            await b.close()
            with pytest.raises(StreamReset):
                await asyncio.wait_for(reader, 5)
            ev = await wait_for_event(qa, ConnectionClosed)
            assert ev.peer_id == b.peer_id
            assert a.connected_peers() == []
        finally:
            await a.close()
    run(main)


def test_dial_failures_are_typed(run):
    async def main():
        a, b = await pair(config_a=HostConfig(dial_backoff_base=30.0))
        try:
            # refused: a port nobody listens on
            import socket
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            ghost = Ed25519KeyPair.generate().peer_id
            with pytest.raises(DialRefused):
                await a.dial(Multiaddr(f"/ip4/127.0.0.1/tcp/{port}").with_peer_id(ghost))
            with pytest.raises(DialBackoff):
                await a.dial(ghost)
            # wrong peer: b's address with another identity
            other = Ed25519KeyPair.generate().peer_id
            with pytest.raises(DialWrongPeer):
                await a.dial(b.listen_addrs[0].with_peer_id(other))
            assert a.connected_peers() == []
        finally:
            await a.close()
            await b.close()
    run(main)


def test_simultaneous_dials_are_merged(run):
    async def main():
        a, b = await pair()
        try:
            conns = await asyncio.gather(*[a.dial(maddr(b)) for _ in range(10)])
            assert all(c is conns[0] for c in conns)
            assert len(a.connections(b.peer_id)) == 1
        finally:
            await a.close()
            await b.close()
    run(main)


def test_a_cancelled_dialer_does_not_cancel_the_merged_dial(run):
    """Lookups cancel their outstanding requests: the first caller of a merged
    dial giving up must neither cancel the others' dial nor hand them its
    CancelledError (which would escape from their lookups as if *they* had
    been cancelled)."""
    async def main():
        a, b = await pair(config_a=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], max_concurrent_dials=1))
        try:
            first = asyncio.ensure_future(a.dial(maddr(b)))
            await asyncio.sleep(0)          # the first dial is under way
            others = [asyncio.ensure_future(a.dial(b.peer_id)) for _ in range(3)]
            await asyncio.sleep(0)          # ... and the others wait on it
            assert a.dial_under_way(b.peer_id) is not None and a.connection(b.peer_id) is None
            first.cancel()
            conns = await asyncio.gather(*others)
            assert first.cancelled()
            assert all(c is conns[0] for c in conns) and conns[0].is_open
            assert a.connection(b.peer_id) is conns[0]
            # a dial under way whose every caller gave up still ends, and its
            # connection is kept
            conns[0].close("test")
            await asyncio.wait_for(conns[0].closed, 5)
            assert a.connection(b.peer_id) is None
            lone = asyncio.ensure_future(a.dial(maddr(b)))
            while (dial := a.dial_under_way(b.peer_id)) is None or not dial.started:
                await asyncio.sleep(0)
            lone.cancel()
            await asyncio.wait_for(asyncio.shield(dial.task), 5)
            assert a.connection(b.peer_id) is not None and a.dial_under_way(b.peer_id) is None
            # ... but one still waiting for a dial slot is dropped
            conn = a.connection(b.peer_id)
            conn.close("test")
            await asyncio.wait_for(conn.closed, 5)
            # the one dial slot taken by a dial to a listener that never answers
            accepted: list[asyncio.StreamWriter] = []
            silent = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
            port = silent.sockets[0].getsockname()[1]
            mute = Ed25519KeyPair.generate().peer_id
            stuck = asyncio.ensure_future(a.dial(Multiaddr(f"/ip4/127.0.0.1/tcp/{port}").with_peer_id(mute)))
            try:
                while (held := a.dial_under_way(mute)) is None or not held.started:
                    await asyncio.sleep(0)
                waiting = [asyncio.ensure_future(a.dial(maddr(b))) for _ in range(2)]
                await asyncio.sleep(0)
                dial = a.dial_under_way(b.peer_id)
                assert dial is not None and dial.waiters == 2 and not dial.started
                waiting[0].cancel()
                await asyncio.sleep(0)
                assert not dial.task.done()  # one caller still waits
                waiting[1].cancel()
                await asyncio.gather(*waiting, return_exceptions=True)
                await asyncio.gather(dial.task, return_exceptions=True)
                assert dial.task.cancelled() and a.dial_under_way(b.peer_id) is None
            finally:
                stuck.cancel()
                await asyncio.gather(stuck, return_exceptions=True)
                silent.close()
                for w in accepted:  # the stuck dial fails at once and frees its slot
                    w.close()
            assert a.connection(b.peer_id) is None
            assert (await a.dial(maddr(b))).is_open   # a later dial starts afresh
        finally:
            await a.close()
            await b.close()
    run(main)


def test_inbound_stream_limit(run):
    async def main():
        a, b = await pair(config_b=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], max_inbound_streams=5))
        gate = asyncio.Event()

        async def hold(stream):
            await gate.wait()
            stream.write(b"ok")

        b.set_stream_handler("/test/hold/1.0.0", hold)
        try:
            await a.dial(maddr(b))
            await asyncio.sleep(0.2)  # let identify streams finish
            held = [await a.new_stream(b.peer_id, "/test/hold/1.0.0") for _ in range(5)]
            with pytest.raises((StreamReset, ProtocolNotSupported)):
                await a.new_stream(b.peer_id, "/test/hold/1.0.0")
            gate.set()
            for s in held:
                assert await s.read_to_end(16) == b"ok"
        finally:
            await a.close()
            await b.close()
    run(main)


def test_stalled_handshake_is_dropped(run):
    async def main():
        b = Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], handshake_timeout=0.3))
        await b.start()
        try:
            addr = b.listen_addrs[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", int(addr.value_for("tcp")))
            # send nothing after the connect: the server must hang up
            data = await asyncio.wait_for(reader.read(), 5)  # returns at EOF
            assert data in (b"", b"\x13/multistream/1.0.0\n")
            writer.close()
            assert b.connection_count() == 0
        finally:
            await b.close()
    run(main)


def test_an_outbound_negotiation_times_out_on_the_connection_timer(run):
    """The peer never answers the proposal: open_stream fails after
    negotiation_timeout, the stream is reset, the connection goes on."""
    async def main():
        a, b = await pair(config_a=HostConfig(negotiation_timeout=0.3))
        try:
            conn = await a.dial(maddr(b))
            # both identifies done first: their streams negotiate no more
            await a.identify(b.peer_id)
            await b.identify(a.peer_id)
            b.connection(a.peer_id).transport.pause_reading()  # the proposal is never read
            t0 = time.monotonic()
            with pytest.raises(StreamReset, match="protocol negotiation timed out"):
                await conn.open_stream([ECHO])
            assert 0.25 < time.monotonic() - t0 < 3
            # (b's identify stream may wait for b's FIN, unread: it is inbound)
            outbound = [s for s in conn.streams.values() if not s.inbound]
            assert conn.is_open and not outbound and conn.core.get_timer() is None
            b.connection(a.peer_id).transport.resume_reading()
            s = await a.new_stream(b.peer_id, ECHO)
            s.write(b"hi")
            assert await s.read_exactly(2) == b"hi"
        finally:
            await a.close()
            await b.close()
    run(main)


def test_garbage_instead_of_handshake(run):
    async def main():
        b = Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        await b.start()
        try:
            addr = b.listen_addrs[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", int(addr.value_for("tcp")))
            writer.write(os.urandom(4096))
            await asyncio.wait_for(reader.read(), 5)  # closed by the server
            writer.close()
            assert b.connection_count() == 0
        finally:
            await b.close()
    run(main)


def test_dial_timeout_on_silent_server(run):
    async def main():
        async def silent(reader, writer):
            await asyncio.sleep(30)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a = Host(config=HostConfig(dial_timeout=0.5))
        await a.start()
        try:
            from kadfast.net import DialTimeout
            ghost = Ed25519KeyPair.generate().peer_id
            t0 = time.monotonic()
            with pytest.raises(DialTimeout):
                await a.dial(Multiaddr(f"/ip4/127.0.0.1/tcp/{port}").with_peer_id(ghost))
            assert time.monotonic() - t0 < 3
        finally:
            await a.close()
            server.close()
    run(main)


def test_idle_connections_are_closed(run):
    async def main():
        a, b = await pair(config_a=HostConfig(idle_timeout=0.3))
        qa = a.subscribe()
        try:
            await a.dial(maddr(b))
            ev = await wait_for_event(qa, ConnectionClosed, timeout=10)
            assert ev.peer_id == b.peer_id and ev.reason == "idle"
        finally:
            await a.close()
            await b.close()
    run(main)


def test_connections_whose_streams_say_nothing_are_closed(run):
    """A connection held open by streams that receive nothing (a silent ping
    stream here: its handler waits for a ping that never comes) is closed
    once they were silent for idle_timeout; one whose stream talks stays."""
    async def main():
        server = Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], idle_timeout=0.5))
        await server.start()

        async def echo(stream):
            while data := await stream.read():
                stream.write(data)
        server.set_stream_handler("/test/echo/1", echo)
        quiet, talker = Host(), Host()
        await quiet.start()
        await talker.start()
        q = server.subscribe()
        try:
            await quiet.new_stream(server.peer_id, PING_PROTOCOL, [server.listen_addrs[0]])
            s = await talker.new_stream(server.peer_id, "/test/echo/1", [server.listen_addrs[0]])
            t0 = time.monotonic()
            ev = None
            while ev is None or ev.peer_id != quiet.peer_id:
                s.write(os.urandom(32))  # an echo every 0.1 s keeps its connection
                assert len(await asyncio.wait_for(s.read_exactly(32), 5)) == 32
                try:
                    ev = await asyncio.wait_for(q.get(), 0.1)
                except asyncio.TimeoutError:
                    pass
                if ev is not None and not isinstance(ev, ConnectionClosed):
                    ev = None
                assert time.monotonic() - t0 < 10, "the silent connection was never closed"
            assert ev.reason == "streams idle"
            assert server.connection(talker.peer_id) is not None
        finally:
            for h in (quiet, talker, server):
                await h.close()
    run(main)


def test_connection_limit_refuses_inbound(run):
    async def main():
        server = Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], max_connections=2))
        await server.start()
        clients = [Host() for _ in range(3)]
        for c in clients:
            await c.start()
        try:
            await clients[0].dial(maddr(server))
            await clients[1].dial(maddr(server))
            from kadfast.net import DialError
            with pytest.raises(DialError):
                await clients[2].dial(maddr(server))
            assert server.connection_count() == 2
        finally:
            for c in clients:
                await c.close()
            await server.close()
    run(main)


def test_external_addrs_are_announced(run):
    async def main():
        ext = "/dns4/node.example.com/tcp/4001"
        a, b = await pair(config_b=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], external_addrs=[ext]))
        try:
            await a.dial(maddr(b))
            info = await a.identify(b.peer_id)
            assert Multiaddr(ext) in info.listen_addrs
            assert b.listen_addrs[0] in info.listen_addrs  # loopback peer: loopback addresses too
            assert info.listen_addrs[0] == Multiaddr(ext)  # external first
        finally:
            await a.close()
            await b.close()
    run(main)


def test_read_to_end_larger_than_the_window_and_reset_semantics(run):
    async def main():
        a, b = await pair()
        got = asyncio.get_running_loop().create_future()

        async def sink(stream):
            got.set_result(await stream.read_to_end(8 << 20))

        async def partial_then_reset(stream):
            await stream.read(1)
            stream.write(b'{"partial": ')
            await stream.drain()
            await asyncio.sleep(0.05)
            stream.reset()

        async def reply_and_hang_up(stream):
            await stream.read(1)
            stream.write(b"complete")
            stream.close()
            await asyncio.sleep(0.05)
            stream.conn.close("done")

        b.set_stream_handler("/t/sink", sink)
        b.set_stream_handler("/t/partial", partial_then_reset)
        b.set_stream_handler("/t/hangup", reply_and_hang_up)
        try:
            s = await a.new_stream(b.peer_id, "/t/sink", [b.listen_addrs[0]])
            blob = os.urandom(1_500_000)  # several windows
            await s.write_all(blob)
            s.close()
            assert await asyncio.wait_for(got, 20) == blob

            s = await a.new_stream(b.peer_id, "/t/partial")
            s.write(b"x")
            with pytest.raises(StreamReset):
                await asyncio.wait_for(s.read_to_end(1024), 5)  # never a silent partial result

            s = await a.new_stream(b.peer_id, "/t/hangup")
            s.write(b"x")
            await asyncio.wait_for(s.conn.closed, 5)
            # everything and the FIN arrived before the connection went away
            assert await s.read_to_end(1024) == b"complete"
        finally:
            await a.close()
            await b.close()
    run(main)


def test_listeners_see_every_event_even_when_queues_overflow(run):
    async def main():
        a, b = await pair(config_a=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"], event_queue_size=1))
        seen = []
        a.add_listener(seen.append)
        q = a.subscribe()  # a queue of one: it overflows
        try:
            await a.dial(maddr(b))
            await a.identify(b.peer_id)
            await b.close()
            deadline = asyncio.get_running_loop().time() + 5
            while not any(isinstance(e, ConnectionClosed) for e in seen):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            kinds = [type(e) for e in seen]
            assert kinds[:1] == [ConnectionEstablished] and PeerIdentified in kinds and ConnectionClosed in kinds
            assert q.qsize() == 1 and a.dropped_events >= 2
            assert a.connection_count() == 0
        finally:
            await a.close()
    run(main)


def test_synchronous_consumer_answers_in_the_read_callback(run):
    async def main():
        a, b = await pair()

        async def upper(stream):
            def on_data(data):
                if not data:
                    stream.sink_finished()
                    return
                stream.write(data.upper())
            await stream.consume_with(on_data)

        async def failing(stream):
            def on_data(data):
                raise ValueError("bad input")
            await stream.consume_with(on_data)

        b.set_stream_handler("/t/upper", upper)
        b.set_stream_handler("/t/fail", failing)
        try:
            s = await a.new_stream(b.peer_id, "/t/upper", [b.listen_addrs[0]])
            for word in (b"one", b"two", b"three"):
                s.write(word)
                assert await s.read_exactly(len(word)) == word.upper()
            s.close()
            assert await s.read_to_end(16) == b""
            f = await a.new_stream(b.peer_id, "/t/fail")
            f.write(b"x")
            with pytest.raises(StreamReset):  # an error in the consumer resets the stream
                await asyncio.wait_for(f.read(), 5)
            assert await a.ping(b.peer_id) > 0
        finally:
            await a.close()
            await b.close()
    run(main)


def test_json_request_response_refuses_absurdly_nested_json(run):
    from kadfast.reqresp import DEFAULT_PROTOCOL, JsonRequestResponse, RequestError

    async def main():
        a, b = await pair()

        async def nested(stream):
            await stream.read_to_end(1024)
            await stream.write_all(b"[" * 100_000)  # valid prefix, far too deep for json

        b.set_stream_handler(DEFAULT_PROTOCOL, nested)
        rr = JsonRequestResponse(a)
        try:
            with pytest.raises(RequestError):
                await rr.request(b.peer_id, {"q": 1}, addrs=[b.listen_addrs[0]])
            # and as a server: the same input resets the stream, nothing else
            served = JsonRequestResponse(b, handler=lambda peer, req: asyncio.sleep(0, result=req))
            s = await a.new_stream(b.peer_id, DEFAULT_PROTOCOL)
            await s.write_all(b"[" * 100_000)
            s.close()
            with pytest.raises(StreamReset):
                await asyncio.wait_for(s.read_to_end(1024), 5)
            assert served.protocol in b.protocols and await a.ping(b.peer_id) > 0
        finally:
            await a.close()
            await b.close()
    run(main)


def test_a_flush_after_the_transport_closed_drops_the_output():
    """A flush scheduled before the peer reset the connection runs after the
    transport closed: uvloop raises on such a write; the output is dropped."""
    from kadfast.multistream import MultistreamListener
    from kadfast.net.connection import Connection
    from kadfast.net.host import Host

    class Transport:
        def __init__(self):
            self.closing = False
            self.written = []

        def get_extra_info(self, name):
            return None

        def is_closing(self):
            return self.closing

        def write(self, data):
            if self.closing:
                raise RuntimeError("the handler is closed")
            self.written.append(data)

    async def main():
        host = Host()
        await host.start()  # no listen address: only the loop and the reaper
        try:
            conn = Connection(host, initiator=True)
            tr = Transport()
            conn.connection_made(tr)
            assert tr.written  # the /noise proposal
            listener = MultistreamListener(["/noise"])
            listener.receive_data(tr.written[0])
            tr.closing = True
            conn.data_received(listener.data_to_send())  # queues Noise message 1; the flush drops it
            assert len(tr.written) == 1
        finally:
            await host.close()

    asyncio.run(main())


def test_inline_handlers_run_in_the_read_callback(run):
    """An inline handler is called synchronously once the protocol is
    negotiated (no task), owns its stream, and an exception from it resets
    only that stream."""
    async def main():
        a, b = await pair()
        calls = []

        def greet(stream):
            calls.append(asyncio.current_task())
            stream.write(b"hi " + str(stream.peer_id).encode())
            stream.close()

        def broken(stream):
            raise ValueError("handler bug")

        def upper(stream):
            def sink(data):
                if not data:
                    stream.sink_finished()
                    stream.close()
                    return
                stream.write(data.upper())
            stream.consume_with(sink)

        b.set_stream_handler("/test/greet/1.0.0", greet, inline=True)
        b.set_stream_handler("/test/broken/1.0.0", broken, inline=True)
        b.set_stream_handler("/test/upper/1.0.0", upper, inline=True)
        try:
            s = await a.new_stream(b.peer_id, "/test/greet/1.0.0", [b.listen_addrs[0]])
            assert await s.read_to_end(1024) == b"hi " + str(a.peer_id).encode()
            assert calls == [None]  # not in a task: in the connection's callback
            r = await a.new_stream(b.peer_id, "/test/broken/1.0.0")
            with pytest.raises(StreamReset):
                await asyncio.wait_for(r.read(), 5)
            u = await a.new_stream(b.peer_id, "/test/upper/1.0.0")
            u.write(b"abc")
            u.write(b"def")
            u.close()
            assert await u.read_to_end(1024) == b"ABCDEF"
            # an inline protocol replaced by an ordinary handler runs as a task again
            async def tasked(stream):
                calls.append(asyncio.current_task())
                stream.write(b"task")
            b.set_stream_handler("/test/greet/1.0.0", tasked)
            t = await a.new_stream(b.peer_id, "/test/greet/1.0.0")
            assert await t.read_to_end(1024) == b"task" and calls[-1] is not None
            assert await a.ping(b.peer_id) > 0  # the connection survives
        finally:
            await a.close()
            await b.close()
    run(main)


def test_a_closed_connection_is_freed_at_once(run):
    """Nothing keeps a closed connection alive: in particular no inbound
    stream's negotiation deadline (a loop timer) outlives its negotiation."""
    import gc
    import weakref

    async def main():
        a, b = await pair()
        qb = b.subscribe()
        try:
            await a.dial(maddr(b))
            await wait_for_event(qb, PeerIdentified)   # identify streams came and went
            s = await a.new_stream(b.peer_id, ECHO)
            s.write(b"hi")
            assert await s.read_exactly(2) == b"hi"
            inbound = b.connection(a.peer_id)
            assert inbound.core.get_timer() is None  # every stream negotiated: no deadline left
            ref = weakref.ref(inbound)
            del inbound
            await a.close()
            await wait_for_event(qb, ConnectionClosed)
            await asyncio.sleep(0)
            gc.collect()
            assert ref() is None, gc.get_referrers(ref())
        finally:
            await a.close()
            await b.close()
    run(main)


def test_identify_streams_leave_with_the_handshake_output(run, monkeypatch):
    """Each side opens its identify stream while it handles the read that
    completed the handshake, so the proposal leaves with that read's output
    (for the listener: with its answer to the dialer's identify), and
    half-closes it as soon as it is agreed, in the read that agreed it: from
    the dialer's first flight to both identifies done, every write either
    side makes is the output of a read (no write of its own per stream),
    and nothing of either identify stays open."""
    from kadfast.net.connection import Connection
    from kadfast.net.upgrade import ConnectionCore

    reading: list[Connection] = []
    writes: list[tuple[int, bool]] = []  # (the core, whether inside a read)
    data_received = Connection.data_received
    data_to_send = ConnectionCore.data_to_send

    def in_read(self, data):
        reading.append(self)
        try:
            return data_received(self, data)
        finally:
            reading.pop()

    def recorded(self):
        out = data_to_send(self)
        if out:
            writes.append((id(self), bool(reading)))
        return out

    monkeypatch.setattr(Connection, "data_received", in_read)
    monkeypatch.setattr(ConnectionCore, "data_to_send", recorded)

    async def main():
        a, b = await pair()
        qa, qb = a.subscribe(), b.subscribe()
        try:
            conn = await a.dial(maddr(b))
            await wait_for_event(qa, PeerIdentified)
            await wait_for_event(qb, PeerIdentified)
            conn_b = b.connection(a.peer_id)
            assert conn_b is not None and conn.core is not None and conn_b.core is not None
            mine = [w for w in writes if w[0] in (id(conn.core), id(conn_b.core))]
            # the dialer's first flight (the /noise proposal and Noise
            # message 1) is written when it connects; all else answers a read
            assert mine[0] == (id(conn.core), False) and all(r for _, r in mine[1:]), mine
            # a Yamux ping each way: every FIN sent before it has arrived
            await conn.ping(5)
            await conn_b.ping(5)
            assert not conn.streams and not conn_b.streams  # both identify streams freed
        finally:
            await a.close()
            await b.close()
    run(main)
