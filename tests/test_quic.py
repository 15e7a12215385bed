"""The libp2p QUIC core (kadfast.quic): two cores driven against each
other in memory on given times, through aioquic; libp2p's mutual TLS
authentication and its refusals."""

from __future__ import annotations

import datetime

import pytest
from aioquic import tls as aioquic_tls
from aioquic.quic import connection as aioquic_connection
from tls_helpers import plain_certificate

from kadfast.keys import Ed25519KeyPair
from kadfast.quic import (
    POST_HANDSHAKE_TLS_BUFFER,
    QuicCore,
    QuicFailed,
    QuicStreamData,
    QuicStreamReset,
    QuicUpgraded,
    initial_destination_cid,
)
from kadfast.tls import make_certificate

KA, KB, KC = (Ed25519KeyPair.from_seed(bytes([i]) * 32) for i in (11, 12, 13))
CLIENT_ADDR, SERVER_ADDR = ("127.0.0.1", 40001), ("127.0.0.1", 4001)


CERTS = {k.peer_id: make_certificate(k) for k in (KA, KB, KC)}


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def pair(client_key=KA, server_key=KB, expected=None, **kw):
    ckw, skw = dict(kw.get("client", {})), dict(kw.get("server", {}))
    client = QuicCore(ckw.pop("certificate", CERTS[client_key.peer_id]), now=Clock.now,
                      utc_now=ckw.pop("utc_now", utc_now), remote_addr=SERVER_ADDR,
                      expected_peer=expected or server_key.peer_id, **ckw)
    server = [None]

    def make_server(first):
        cid = initial_destination_cid(first)
        assert cid is not None
        server[0] = QuicCore(skw.get("certificate", CERTS[server_key.peer_id]), now=Clock.now, utc_now=utc_now,
                             remote_addr=CLIENT_ADDR, original_destination_cid=cid,
                             **{k: v for k, v in skw.items() if k != "certificate"})
        return server[0]

    return client, make_server


class Clock:
    now = 0.0


def run(client, make_server=None, server=None, rounds=40, step=0.005):
    """Datagrams both ways, the clock moving ``step`` a round and due timers
    run, until neither side has sent for a round; each side's events."""
    got = {"c": [], "s": []}
    quiet = 0
    for _ in range(rounds):
        now = Clock.now = Clock.now + step
        moved = False
        for core, key in ((client, "c"), (server, "s")):
            if core is not None and (t := core.get_timer()) is not None and t <= now:
                got[key] += core.handle_timer(now)
        for data, _addr in client.datagrams_to_send(now):
            moved = True
            if server is None:
                server = make_server(data)
            got["s"] += server.receive_datagram(data, CLIENT_ADDR, now)
        if server is not None:
            for data, _addr in server.datagrams_to_send(now):
                moved = True
                got["c"] += client.receive_datagram(data, SERVER_ADDR, now)
        quiet = 0 if moved else quiet + 1
        if quiet >= 3:
            break
    return server, got["c"], got["s"]


def until_closed(core, limit=60.0):
    """Run ``core``'s timers until it reports the end (at most ``limit``
    seconds of its clock); its events."""
    events = []
    while not any(isinstance(e, QuicFailed) for e in events):
        t = core.get_timer()
        assert t is not None and t <= Clock.now + limit, "no end in sight"
        Clock.now = max(Clock.now, t)
        events += core.handle_timer(Clock.now)
    return events


def test_aioquic_still_has_the_client_certificate_switch():
    # kadfast.quic asks for the client's certificate through it
    ctx = aioquic_tls.Context(is_client=False)
    assert ctx._request_client_certificate is False
    # and keeps the peer's certificate where kadfast.quic reads it
    assert hasattr(ctx, "_peer_certificate") and hasattr(ctx, "_peer_certificate_chain")


def test_both_sides_authenticate_each_other():
    client, make_server = pair()
    server, ec_, es = run(client, make_server)
    assert ec_ == [QuicUpgraded(KB.peer_id, KB.public_key)]
    assert es == [QuicUpgraded(KA.peer_id, KA.public_key)]
    assert client.is_open and server.is_open
    assert client.remote_peer_id == KB.peer_id and server.remote_peer_id == KA.peer_id


def test_after_the_handshake_a_connection_keeps_small_tls_buffers():
    """aioquic keeps three 16 KiB TLS output buffers for a connection's
    life; once the peer is authenticated they are swapped for small ones
    (48 of the ~97 KiB a connection held), and the connection goes on."""
    client, make_server = pair()
    server, _, _ = run(client, make_server)
    for core in (client, server):
        bufs = core._quic._crypto_buffers
        assert len(bufs) == 3 and all(b.capacity == POST_HANDSHAKE_TLS_BUFFER for b in bufs.values())
    sid = client.open_stream()
    client.send(sid, b"x" * 50_000, end=True)
    _, _, es = run(client, server=server, rounds=200)
    assert b"".join(e.data for e in es if isinstance(e, QuicStreamData)) == b"x" * 50_000


def test_the_client_offers_x25519_first_and_p256_only():
    """aioquic's client makes key shares for P-256, P-384, X25519 and X448;
    ours offers X25519 (what go-, rust- and js-libp2p pick) and P-256, and
    the server agrees on X25519."""
    client, make_server = pair()
    assert client._quic.tls._supported_groups == [aioquic_tls.Group.X25519, aioquic_tls.Group.SECP256R1]
    server, ec_, es = run(client, make_server)
    assert isinstance(ec_[0], QuicUpgraded) and isinstance(es[0], QuicUpgraded)
    assert server._quic.tls._x25519_private_key is not None  # the exchange was X25519


def test_aioquics_epoch_sets_are_memoized_and_unchanged():
    """aioquic's EPOCHS (frame type -> the epochs it may come in), built
    anew for every connection, is memoized: the same sets as aioquic's own."""
    epochs = aioquic_connection.EPOCHS
    original = epochs.__wrapped__
    for shortcut in ("IH01", "IH1", "01", "1", "0", "H"):
        assert epochs(shortcut) == original(shortcut) and epochs(shortcut) is epochs(shortcut)


def test_stream_data_both_ways_with_fin_and_reset():
    client, make_server = pair()
    server, _, _ = run(client, make_server)
    sid = client.open_stream()
    client.send(sid, b"hello", end=True)
    _, ec_, es = run(client, server=server)
    assert es == [QuicStreamData(sid, b"hello", True)]
    server.send(sid, b"world", end=True)
    _, ec_, es = run(client, server=server)
    assert ec_ == [QuicStreamData(sid, b"world", True)]
    sid2 = client.open_stream()
    assert sid2 != sid
    client.send(sid2, b"x")
    run(client, server=server)
    client.reset_stream(sid2, 7)
    _, _, es = run(client, server=server)
    assert QuicStreamReset(sid2, 7) in es


def test_the_peer_closing_ends_the_connection_at_once_not_after_draining():
    """aioquic reports a peer's CONNECTION_CLOSE once its draining period (3
    PTO) is over; the core reports it as soon as it arrives, so that a peer
    that closes and reconnects is not counted twice meanwhile."""
    client, make_server = pair()
    server, _, _ = run(client, make_server)
    client.close("bye")
    now = Clock.now = Clock.now + 0.001
    got = []
    for data, _addr in client.datagrams_to_send(now):
        got += server.receive_datagram(data, CLIENT_ADDR, now)
    assert got == [QuicFailed("connection closed: bye (error 0x0)")]
    assert server.get_timer() is None and not server.is_open
    # the side that closed ends when its closing period does (it answers
    # late packets with its CONNECTION_CLOSE meanwhile)
    assert client.get_timer() is not None
    assert isinstance(until_closed(client)[-1], QuicFailed)


def test_the_client_refuses_a_server_that_is_not_the_peer_dialed():
    client, make_server = pair(expected=KC.peer_id)
    server, ec_, es = run(client, make_server)
    assert len(ec_) == 1 and isinstance(ec_[0], QuicFailed) and "not the peer dialed" in ec_[0].reason
    assert not client.is_open
    # the server learns it is closed (when the client's close arrives),
    # and never saw a stream
    assert all(not isinstance(e, QuicStreamData) for e in es)
    # before the handshake is confirmed an application close travels as
    # the transport error APPLICATION_ERROR (0xc) without its reason
    # (RFC 9000 10.2.3)
    assert isinstance(es[-1], QuicFailed) and "error 0xc" in es[-1].reason


def test_the_server_refuses_a_client_without_a_libp2p_certificate():
    client, make_server = pair(client={"certificate": plain_certificate()})
    server, ec_, es = run(client, make_server)
    assert len(es) == 1 and isinstance(es[0], QuicFailed) and "lacks the libp2p public key extension" in es[0].reason
    assert server.remote_peer_id is None and not server.is_open
    # the client learns it when the server's close arrives
    assert isinstance(ec_[-1], QuicFailed) and "connection closed" in ec_[-1].reason


def test_stream_data_sent_before_the_server_authenticated_waits_for_it():
    # the client may send at once after its Finished: its stream data rides
    # with its certificate; the server hands on nothing before the client
    # is authenticated, and then all of it
    client, make_server = pair()
    server = None
    got_s = []
    sent = False
    for _ in range(40):
        Clock.now += 0.005
        if client.is_open and not sent:
            sent = True
            sid = client.open_stream()
            client.send(sid, b"early", end=True)
        out = client.datagrams_to_send(Clock.now)
        for data, _ in out:
            if server is None:
                server = make_server(data)
            got_s += server.receive_datagram(data, CLIENT_ADDR, Clock.now)
        back = server.datagrams_to_send(Clock.now) if server else []
        for data, _ in back:
            client.receive_datagram(data, SERVER_ADDR, Clock.now)
        if sent and not out and not back:
            break
    assert sent and got_s[0] == QuicUpgraded(KA.peer_id, KA.public_key)
    assert got_s[1:] == [QuicStreamData(sid, b"early", True)]


def test_an_idle_connection_times_out():
    client, make_server = pair(client={"idle_timeout": 5.0}, server={"idle_timeout": 5.0})
    server, _, _ = run(client, make_server)
    start = Clock.now
    events = until_closed(client, limit=10.0)
    assert "idle" in events[-1].reason.lower() or "timeout" in events[-1].reason.lower() or events[-1].reason
    assert 4.0 <= Clock.now - start <= 10.0
    assert client.get_timer() is None and not client.is_open


@pytest.mark.parametrize("side", ["client", "server"])
def test_our_certificate_is_made_once_and_reused(side):
    cert = make_certificate(KA if side == "client" else KB)
    kw = {side: {"certificate": cert}}
    client, make_server = pair(**kw)
    server, ec_, es = run(client, make_server)
    assert isinstance(ec_[0], QuicUpgraded) and isinstance(es[0], QuicUpgraded)


def test_a_handshake_that_does_not_complete_in_time_ends_the_connection():
    # a client that sends its first flight and no more holds the server's
    # connection for the handshake timeout, not for the idle timeout
    client, make_server = pair(server={"handshake_timeout": 3.0})
    start = Clock.now
    first = client.datagrams_to_send(Clock.now)
    server = make_server(first[0][0])
    for data, _ in first:
        server.receive_datagram(data, CLIENT_ADDR, Clock.now)
    server.datagrams_to_send(Clock.now)  # lost
    events = until_closed(server, limit=5.0)
    assert events[-1] == QuicFailed("the handshake did not complete in time")
    assert Clock.now - start == pytest.approx(3.0, abs=0.01)
    assert server.get_timer() is None and server.remote_peer_id is None
    # and an authenticated connection has no such deadline
    c2, make2 = pair(server={"handshake_timeout": 3.0}, client={"idle_timeout": 60.0})
    s2, _, _ = run(c2, make2)
    assert s2.is_open and (s2.get_timer() is None or s2.get_timer() > Clock.now + 3.0)


def test_the_peer_certificate_is_checked_on_the_wall_clock_given():
    # the core reads no clock: the certificate's validity is judged at the
    # time utc_now gives (here a century ahead: the server's has expired)
    late = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=365 * 101)
    client, make_server = pair(client={"utc_now": lambda: late})
    _, ec_, _ = run(client, make_server)
    assert isinstance(ec_[0], QuicFailed) and "expired" in ec_[0].reason


def test_a_connection_in_another_quic_version_is_told_which_one_we_speak():
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import pull_quic_header

    from kadfast.quic import version_negotiation

    client, _ = pair()
    [(first, _)] = client.datagrams_to_send(Clock.now)[:1]
    assert version_negotiation(first) is None  # v1: a connection, not a negotiation
    other = first[:1] + (0x1A2A3A4A).to_bytes(4, "big") + first[5:]  # a reserved version
    assert initial_destination_cid(other) is None
    vn = version_negotiation(other)
    assert vn is not None and len(vn) < len(other)
    header = pull_quic_header(Buffer(data=vn), host_cid_length=8)
    assert header.version == 0 and header.supported_versions == [1]
    # the client's ids swapped back to it (RFC 9000 17.2.1)
    sent = pull_quic_header(Buffer(data=other), host_cid_length=8)
    assert (header.destination_cid, header.source_cid) == (sent.source_cid, sent.destination_cid)
    for junk in (b"", b"\x80" * 1300, b"\x00" * 1300, vn):
        assert version_negotiation(junk) is None


def test_a_peer_sending_ever_further_ahead_is_closed():
    """Stream bytes that skip ahead (the gap before them never sent) make
    aioquic grant more credit and buffer the gap: a peer doing it on and on
    is closed soon after the gaps pass MAX_UNDELIVERED. The client here
    sends only the last byte of each chunk it writes (its aioquic sender is
    told the rest went out already)."""
    from kadfast.quic import MAX_UNDELIVERED

    client, make_server = pair()
    server, _, _ = run(client, make_server)
    sid = client.open_stream()
    client.send(sid, b"hi")
    _, _, es = run(client, server=server)
    assert es == [QuicStreamData(sid, b"hi", False)]
    sender = client._quic._streams[sid].sender
    chunk = 256 * 1024
    failed = []
    for _ in range(200):
        start = sender._buffer_stop
        client.send(sid, b"\x00" * chunk)
        sender._pending.subtract(start, start + chunk - 1)  # only the chunk's last byte goes out
        _, _, es = run(client, server=server)
        failed = [e for e in es if isinstance(e, QuicFailed)]
        if failed or not server.is_open:
            break
    assert failed and "out of order" in failed[0].reason
    assert sender._buffer_stop - 2 > MAX_UNDELIVERED  # it did get past the bound before the close
    assert sender._buffer_stop - 2 < 2 * MAX_UNDELIVERED + chunk  # and not far past
