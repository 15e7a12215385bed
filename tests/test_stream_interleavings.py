"""A stream's frames in every order that a peer may send them, within one read.

Real clients cancel requests: go-libp2p-kad-dht writes a request and resets
the stream when it no longer wants the answer, so the SYN, the protocol
proposal, the request and the RST can all arrive in one read of the server.
The Yamux session then hands out every event of the read at once, and the
RST has removed the stream before the connection dispatches its data. Only
that stream may end; the connection, and every other stream on it, go on.

Each case below writes one stream's frames (with :class:`RawClient`, so the
frames are exactly these) into one Noise message, which the server decrypts
and hands to its Yamux session in one piece; then a well-behaved request on
the same connection must be answered. The same sequences are also split into
two reads at every boundary.
"""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest
from _rawclient import RawClient

from kadfast import yamux as y
from kadfast.kad.node import Config, KadNode
from kadfast.kad.pb import KadMessage, MessageType, decode_message, encode_message, frame
from kadfast.loop import new_event_loop, uvloop_available
from kadfast.multistream import MultistreamDialer
from kadfast.net import HostConfig
from kadfast.varint import decode_uvarint

KAD = "/ipfs/kad/1.0.0"
LOOPS = ["asyncio"] + (["uvloop"] if uvloop_available() else [])
PROPOSAL = MultistreamDialer([KAD]).data_to_send()


def request(key: bytes) -> bytes:
    return frame(encode_message(KadMessage(MessageType.FIND_NODE, key=key)))


# A case is a list of frames; each frame is (Yamux type, flags, payload).
# SYN rides on the first frame. Tokens:
#   S  WindowUpdate SYN (no data), then P: the proposal as data
#   SP the proposal on a Data frame carrying SYN
#   SPQ proposal and request on one Data frame carrying SYN
#   Q  the request as data      F  WindowUpdate FIN      R  WindowUpdate RST
#   QF the request on a Data frame carrying FIN
#   QR the request on a Data frame carrying RST (its payload is dropped)
def _frames(tokens: tuple[str, ...], req: bytes) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    for tok in tokens:
        if tok == "S":
            out += [(1, y.FLAG_SYN, b""), (0, 0, PROPOSAL)]
        elif tok == "SP":
            out.append((0, y.FLAG_SYN, PROPOSAL))
        elif tok == "SPQ":
            out.append((0, y.FLAG_SYN, PROPOSAL + req))
        elif tok == "Q":
            out.append((0, 0, req))
        elif tok == "QF":
            out.append((0, y.FLAG_FIN, req))
        elif tok == "QR":
            out.append((0, y.FLAG_RST, req))
        elif tok == "F":
            out.append((1, y.FLAG_FIN, b""))
        elif tok == "R":
            out.append((1, y.FLAG_RST, b""))
    return out


def _cases() -> list[tuple[str, ...]]:
    """Every order of request, FIN and RST after each way of opening, with
    no data after FIN (that breaks the Yamux rules and fails the session)."""
    cases = []
    for opening, rest in (("S", "QFR"), ("SP", "QFR"), ("SPQ", "FR")):
        for n in range(len(rest) + 1):
            for order in itertools.permutations(rest, n):
                if "Q" in order and "F" in order and order.index("Q") > order.index("F"):
                    continue
                cases.append((opening, *order))
    # request and end flag on one frame
    for opening in ("S", "SP"):
        cases += [(opening, "QF"), (opening, "QF", "R"), (opening, "QR")]
    return cases


CASES = _cases()


def _wire(sid: int, frames: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(y.encode_header(t, f, sid, len(p)) + p for t, f, p in frames)


class Replies:
    """The server's data per stream id, and whether it ended them."""

    def __init__(self) -> None:
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()

    def take(self, events) -> None:
        for ev in events:
            if isinstance(ev, y.StreamData):
                self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
            elif isinstance(ev, y.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, y.StreamResetByPeer):
                self.reset.add(ev.stream_id)

    def reply(self, sid: int) -> KadMessage | None:
        """The kad message answered on ``sid`` once it has arrived whole."""
        raw = bytes(self.data.get(sid, b""))
        ms = MultistreamDialer([KAD])
        ms.receive_data(raw)
        if not ms.done:
            return None
        body = ms.unused
        try:
            length, pos = decode_uvarint(body, 0)
        except Exception:
            return None
        if len(body) < pos + length:
            return None
        return decode_message(body[pos:pos + length])


async def _answered(c: RawClient, replies: Replies, sids: list[int], timeout: float = 5.0) -> None:
    async def go():
        while any(replies.reply(s) is None for s in sids):
            replies.take(c.session.receive_data(c.crypto.decrypt(await c.recv(timeout))))
    await asyncio.wait_for(go(), timeout)


async def _well_behaved(c: RawClient, replies: Replies) -> None:
    """A request on a fresh stream of the same connection is answered."""
    sid = c.session.open_stream()
    key = os.urandom(32)
    c.session.send(sid, PROPOSAL + request(key))
    c.flush()
    await _answered(c, replies, [sid])
    reply = replies.reply(sid)
    assert reply.type == MessageType.FIND_NODE and reply.key == key
    c.session.reset_stream(sid)
    c.flush()


async def until(predicate, timeout: float = 5.0) -> None:
    async def go():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(go(), timeout)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_every_interleaving_ends_only_its_stream(loop_name):
    async def main():
        node = KadNode(config=Config(), host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        await node.start()
        try:
            c = await RawClient.connect(node.host)
            replies = Replies()
            replies.take(await c.upgrade())
            await _well_behaved(c, replies)
            await until(lambda: node.host.connection_count() == 1)
            peer = next(iter(node.host.connected_peers()))
            conn = node.host.connection(peer)
            checked = 0
            for tokens in CASES:
                frames = _frames(tokens, request(os.urandom(32)))
                for split in range(len(frames)):  # 0: all in one read; else two reads
                    sid = c.session.open_stream()  # the id, and a place for the replies
                    reads = [frames] if split == 0 else [frames[:split], frames[split:]]
                    for part in reads:
                        c.send_plain(_wire(sid, part))
                        await c.writer.drain()
                    label = f"{'+'.join(tokens)} in {len(reads)} read(s)"
                    was_reset = any(f & y.FLAG_RST for _, f, _ in frames)
                    has_request = any(t in ("SPQ", "Q", "QF") for t in tokens)
                    if has_request and not was_reset:
                        await _answered(c, replies, [sid])
                        reply = replies.reply(sid)
                        assert reply.type == MessageType.FIND_NODE, label
                    try:
                        await _well_behaved(c, replies)
                    except (ConnectionError, asyncio.TimeoutError) as exc:
                        raise AssertionError(f"{label}: the connection did not survive: {exc!r}") from None
                    assert conn.is_open and node.host.connection(peer) is conn, label
                    if not was_reset:
                        # leave nothing open on the server: reset what we did not
                        c.send_plain(_wire(sid, [(1, y.FLAG_RST, b"")]))
                    c.session.reset_stream(sid)  # never sent its SYN: forgotten silently
                    checked += 1
            assert checked > 60
            # no stream of the cases is left on the server's side once it
            # has read the last reset: a Yamux ping behind it orders that
            c.session.ping(0.0)
            c.flush()
            await c.events_until(lambda evs: any(isinstance(e, y.PongReceived) for e in evs))
            assert conn.inbound_streams_for(KAD) == 0
            assert not [s for s in conn.streams.values() if s.inbound]
            c.close()
        finally:
            await node.stop()

    loop = new_event_loop(loop_name)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 120))
    finally:
        loop.close()


def test_cases_cover_every_order():
    assert ("SP", "Q", "R") in CASES and ("S", "R", "Q") in CASES and ("SPQ", "R", "F") in CASES
    assert ("S", "F", "Q") not in CASES  # data after FIN breaks the session, by the Yamux rules
    assert len(CASES) == len(set(CASES)) == 35
