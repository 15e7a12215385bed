"""Fuzz targets: one per decoder / sans-IO core of kadfast.

A target is a function of one ``bytes`` argument. It feeds the bytes to the
layer whole and split at a point derived from the input (or, for compiled
code, to the compiled module and to its plain-Python twin) and

* lets only the layer's own error types escape (``Target.allowed``); any other
  exception is a finding (the harness in ``run.py`` reports it);
* raises :class:`Finding` when the two feeds disagree (whole vs split,
  compiled vs twin, a round trip that does not come back), or when a layer's
  own error wraps (``raise ... from exc``) an exception that is not a
  :class:`~kadfast.errors.KadfastError` -- a defensive catch-all that fired.

The first byte of most inputs is a configuration byte (mode, limits); seeds
built with the project's own encoders start with it too.

Import this module only through ``run.py`` (or after atheris' import hook is
installed): the kadfast modules it imports are what atheris instruments.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import tempfile
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from aioquic.buffer import Buffer
from aioquic.quic.packet import (
    QuicTransportParameters,
    pull_quic_transport_parameters,
    push_quic_transport_parameters,
)

from kadfast import _routing, _routing_py, _xor, _xor_py, ipns, tls
from kadfast import yamux as ym
from kadfast._noise import NoiseTransport as CompiledTransport
from kadfast.errors import (
    CryptoKeyError,
    IdentifyError,
    KadfastError,
    KeyFileError,
    KeyspaceError,
    MultiaddrError,
    MultistreamError,
    NoiseError,
    PeerIdError,
    ProtocolError,
    RoutingError,
    TlsCertificateError,
    YamuxError,
)
from kadfast.identify import IdentifyReader, decode_identify, encode_identify
from kadfast.kad import pb
from kadfast.keys import Ed25519KeyPair, PublicKey, load_keypair
from kadfast.multiaddr import Multiaddr, decode_many
from kadfast.multistream import MultistreamDialer, MultistreamListener, encode_message
from kadfast.net.quicstreams import QuicConnectionCore
from kadfast.noise import NoiseHandshake, NoiseStaticKey, NoiseTransport
from kadfast.peerid import PeerId
from kadfast.ping import PING_SIZE, PingInitiator, PingResponder
from kadfast.protobuf import field_bytes
from kadfast.quic import QuicCore, initial_destination_cid, version_negotiation

KadCodecError = pb.KadCodecError


class Finding(AssertionError):
    """A property violation (not an exception escaping from the layer)."""


@dataclass
class Target:
    name: str
    fn: Callable[[bytes], str]
    allowed: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    doc: str


TARGETS: dict[str, Target] = {}


def target(name: str, allowed: tuple, seeds: Callable[[], list[bytes]]):
    def deco(fn):
        TARGETS[name] = Target(name, fn, allowed, seeds, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


# ----------------------------------------------------------------- helpers


def split_point(data: bytes) -> int:
    return zlib.crc32(data) % (len(data) + 1)


def _check_wrap(exc: BaseException) -> None:
    cause = exc.__cause__
    if cause is not None and not isinstance(cause, KadfastError):
        raise Finding(f"{type(exc).__name__} wraps an unexpected {type(cause).__name__}: {cause!r}") from exc


def outcome(fn, allowed):
    """('ok', result) or ('err', error type name); other exceptions propagate."""
    try:
        return ("ok", fn())
    except allowed as exc:
        _check_wrap(exc)
        return ("err", type(exc).__name__)


def same(label: str, a, b) -> None:
    if a != b:
        raise Finding(f"{label}: {_short(a)} != {_short(b)}")


def _short(x) -> str:
    r = repr(x)
    return r if len(r) < 400 else r[:400] + "..."


def label(res) -> str:
    return "ok" if res[0] == "ok" else res[1]


# Fixed identities (generated once per process, deterministic seeds).
KP_A = Ed25519KeyPair.from_seed(bytes(range(32)))
KP_B = Ed25519KeyPair.from_seed(bytes(range(32, 64)))
SK_A = NoiseStaticKey(KP_A)
SK_B = NoiseStaticKey(KP_B)
PEER_A = KP_A.peer_id
PEER_B = KP_B.peer_id
MA_TCP = Multiaddr("/ip4/127.0.0.1/tcp/4001")


def _with_payload(sk: NoiseStaticKey, payload: bytes) -> NoiseStaticKey:
    out = NoiseStaticKey.__new__(NoiseStaticKey)
    out.private = sk.private
    out.public_bytes = sk.public_bytes
    out.payload = payload
    return out


# ----------------------------------------------------------- multistream

_PROTOS = ["/ipfs/kad/1.0.0", "/noise", "/yamux/1.0.0"]


def _ms_run(make, chunks):
    n = make()
    out = [n.data_to_send()]
    for c in chunks:
        n.receive_data(c)
        out.append(n.data_to_send())
    return (n.done, n.selected, n.unused, b"".join(out))


def _ms_check(make, data):
    p = split_point(data)
    w = outcome(lambda: _ms_run(make, [data]), MultistreamError)
    s = outcome(lambda: _ms_run(make, [data[:p], data[p:]]), MultistreamError)
    if w[0] == "ok" and s[0] == "ok":
        same("whole vs split", w, s)
    else:
        same("whole vs split outcome", w[0], s[0])
    return label(w)


def _ms_seeds_dialer():
    h = encode_message("/multistream/1.0.0")
    return [
        b"\x00" + h + encode_message(_PROTOS[0]) + b"rest",
        b"\x00" + h + encode_message("na") + encode_message(_PROTOS[1]),
        b"\x01" + h + encode_message(_PROTOS[0]),
        b"\x01" + h + encode_message("na"),
        b"\x00" + h + encode_message("na") + encode_message("na") + encode_message("na"),
    ]


@target("multistream_dialer", (MultistreamError,), _ms_seeds_dialer)
def multistream_dialer(data: bytes) -> str:
    """multistream-select dialer (plain and lazy) receive_data."""
    cfg, data = (data[0], data[1:]) if data else (0, b"")

    def make():
        if cfg & 1:
            d = MultistreamDialer([_PROTOS[0]], lazy=True)
        else:
            d = MultistreamDialer(list(_PROTOS))
        return d

    return _ms_check(make, data)


def _ms_seeds_listener():
    h = encode_message("/multistream/1.0.0")
    return [
        b"\x00" + h + encode_message(_PROTOS[0]) + b"tail",
        b"\x00" + h + encode_message("ls") + encode_message("/x") + encode_message(_PROTOS[2]),
        b"\x01" + h + encode_message("/nope") * 3 + encode_message("/ipfs/id/1.0.0"),
    ]


@target("multistream_listener", (MultistreamError,), _ms_seeds_listener)
def multistream_listener(data: bytes) -> str:
    """multistream-select listener (name set and predicate) receive_data."""
    cfg, data = (data[0], data[1:]) if data else (0, b"")

    def make():
        if cfg & 1:
            return MultistreamListener(lambda name: name.startswith("/ipfs/"))
        return MultistreamListener(_PROTOS)

    return _ms_check(make, data)


# ------------------------------------------------------------------ noise

_NOISE_MAX_PAYLOAD = 60000


def _noise_raw(initiator: bool, expected, chunks):
    hs = NoiseHandshake(KP_A, initiator=initiator, expected_peer=expected, static_key=SK_A)
    out = [hs.data_to_send()]
    for c in chunks:
        hs.receive_data(c)
        out.append(hs.data_to_send())
    return hs.complete, hs.remote_peer_id, hs.unused, len(b"".join(out))


def _noise_structured(we_initiate: bool, expected, payload: bytes, tail: bytes, p: int):
    """A real remote whose handshake payload is ``payload``; we receive its
    message split at ``p`` (p < 0: whole) followed by ``tail``."""
    remote_key = _with_payload(SK_B, payload)
    ours = NoiseHandshake(KP_A, initiator=we_initiate, expected_peer=expected, static_key=SK_A)
    remote = NoiseHandshake(KP_B, initiator=not we_initiate, static_key=remote_key)
    if we_initiate:
        remote.receive_data(ours.data_to_send())  # message 1
        msg = remote.data_to_send()  # message 2, carrying the fuzzed payload
    else:
        ours.receive_data(remote.data_to_send())  # message 1
        remote.receive_data(ours.data_to_send())  # message 2 (ours: valid)
        msg = remote.data_to_send()  # message 3, carrying the fuzzed payload
    msg += tail
    if p < 0:
        ours.receive_data(msg)
    else:
        p %= len(msg) + 1
        ours.receive_data(msg[:p])
        ours.receive_data(msg[p:])
    if not ours.complete:
        return (False, None, b"")
    if we_initiate:
        remote.receive_data(ours.data_to_send())
        if not remote.complete:
            raise Finding("our initiator completed but the remote responder did not")
    # the transports agree in both directions
    a, b = ours.transport(), remote.transport()
    same("transport ours->remote", b.decrypt(a.encrypt(b"ping")), b"ping")
    same("transport remote->ours", a.decrypt(b.encrypt(b"pong")), b"pong")
    return (True, ours.remote_peer_id, ours.unused)


def _noise_handshake(data: bytes, we_initiate: bool) -> str:
    cfg, data = (data[0], data[1:]) if data else (0, b"")
    expected = PEER_B if (we_initiate and cfg & 2) else None
    p = split_point(data)
    if cfg & 1:
        payload, tail = data[:_NOISE_MAX_PAYLOAD], b""
        if cfg & 4:
            tail = data[-16:]
        w = outcome(lambda: _noise_structured(we_initiate, expected, payload, tail, -1), NoiseError)
        s = outcome(lambda: _noise_structured(we_initiate, expected, payload, tail, p), NoiseError)
    else:
        w = outcome(lambda: _noise_raw(we_initiate, expected, [data]), NoiseError)
        s = outcome(lambda: _noise_raw(we_initiate, expected, [data[:p], data[p:]]), NoiseError)
    same("whole vs split", w, s)
    return label(w)


def _noise_seeds():
    good = SK_B.payload
    other = NoiseStaticKey(KP_A).payload  # a valid payload signing another static key
    seeds = []
    for cfg in (1, 3, 5):
        seeds += [bytes([cfg]) + good, bytes([cfg]) + other, bytes([cfg]) + good + field_bytes(4, b"\x0a\x05/yamux")]
    # raw: a well-formed first message (responder) / garbage frames
    seeds.append(b"\x00" + (32).to_bytes(2, "big") + bytes(32))
    seeds.append(b"\x00" + (80).to_bytes(2, "big") + bytes(80))
    return seeds


@target("noise_initiator", (NoiseError,), _noise_seeds)
def noise_initiator(data: bytes) -> str:
    """Noise XX handshake receive_data as the initiator (raw bytes, or a real
    responder whose handshake payload is the fuzz input)."""
    return _noise_handshake(data, True)


@target("noise_responder", (NoiseError,), _noise_seeds)
def noise_responder(data: bytes) -> str:
    """Noise XX handshake receive_data as the responder (raw bytes, or a real
    initiator whose handshake payload is the fuzz input)."""
    return _noise_handshake(data, False)


_K1 = bytes(range(32))
_K2 = bytes(range(100, 132))


def _transport_stream(data: bytes):
    """Ciphertext built from ops in ``data``; returns (stream, expected
    plaintext or None when a frame was corrupted or raw bytes were mixed in)."""
    sender = NoiseTransport(_K1, _K2)
    compiled = CompiledTransport(_K1, _K2)  # must write the same bytes
    parts, plain, clean = [], [], True
    i = 0
    while i + 1 < len(data):
        op, n = data[i], data[i + 1]
        i += 2
        body = data[i : i + n]
        i += n
        kind = op & 3
        if kind == 0:  # raw bytes
            parts.append(body)
            clean = clean and not body
        elif kind == 1:  # a valid frame
            ct = sender.encrypt(body)
            same("compiled encrypt", ct, compiled.encrypt(body))
            parts.append(ct)
            plain.append(body)
        elif kind == 2:  # a large plaintext: several frames
            big = (body or b"\x00") * (1 + (op >> 2) * 300)
            parts.append(sender.encrypt(big))
            same("compiled encrypt", parts[-1], compiled.encrypt(big))
            plain.append(big)
        else:  # a valid frame with one byte flipped
            ct = bytearray(sender.encrypt(body or b"x"))
            same("compiled encrypt", bytes(ct), compiled.encrypt(body or b"x"))
            pos = (op >> 2) % len(ct)
            ct[pos] ^= 1 << (n & 7)
            parts.append(bytes(ct))
            clean = False
    if i < len(data):
        parts.append(data[i:])
        clean = False
    return b"".join(parts), (b"".join(plain) if clean else None)


def _transport_run(chunks, cls=NoiseTransport):
    t = cls(_K2, _K1)
    return b"".join(t.decrypt(c) for c in chunks)


@target("noise_transport", (NoiseError,), lambda: [
    b"\x01\x05hello\x01\x00\x02\x03abc",
    b"\x01\x03abc\x03\x02zz\x01\x01q",
    b"\x06\x04abcd",
    b"\x00\x04\x00\x20abcd",
])
def noise_transport(data: bytes) -> str:
    """NoiseTransport.decrypt on streams of valid, corrupted and raw frames:
    the plain-Python transport and the compiled one (kadfast._noise) agree."""
    stream, expected = _transport_stream(data)
    p = split_point(data) % (len(stream) + 1)
    w = outcome(lambda: _transport_run([stream]), NoiseError)
    s = outcome(lambda: _transport_run([stream[:p], stream[p:]]), NoiseError)
    same("whole vs split", w, s)
    same("compiled vs twin", w, outcome(lambda: _transport_run([stream], CompiledTransport), NoiseError))
    same("compiled vs twin, split", s,
         outcome(lambda: _transport_run([stream[:p], stream[p:]], CompiledTransport), NoiseError))
    if expected is not None:
        same("decrypted plaintext", w, ("ok", expected))
    return label(w)


# ------------------------------------------------------------------ yamux

_YAMUX_LIMITS = [(512, 256), (1, 256), (2, 1), (4, 2)]


def _yamux_run(is_client: bool, cfg: int, chunks):
    streams, backlog = _YAMUX_LIMITS[(cfg >> 1) & 3]
    sess = ym.YamuxSession(is_client, max_streams=streams, max_ack_backlog=backlog,
                           max_buffer_per_stream=(0 if cfg & 8 else 1 << 20))
    reactive = bool(cfg & 1)
    if cfg & 16:
        sess.open_stream()
    events, out, err = [], [], None
    for i, c in enumerate(chunks):
        try:
            got = sess.receive_data(c, now=float(i))
        except YamuxError as exc:
            _check_wrap(exc)
            err = type(exc).__name__
            events += sess.events()
            out.append(sess.data_to_send())
            break
        events += got
        if reactive:
            for ev in got:
                try:
                    if isinstance(ev, ym.StreamData):
                        sess.consumed(ev.stream_id, len(ev.data))
                    elif isinstance(ev, ym.StreamOpened):
                        sess.send(ev.stream_id, b"hello")
                        sess.close_stream(ev.stream_id)
                    elif isinstance(ev, ym.StreamEnded):
                        sess.reset_stream(ev.stream_id)
                except YamuxError as exc:  # local misuse (stream gone): allowed
                    _check_wrap(exc)
            events += sess.events()
        out.append(sess.data_to_send())
    # pong RTTs depend on the feed's clock
    norm = [dataclasses.replace(e, rtt=0.0) if isinstance(e, ym.PongReceived) else e for e in events]
    return err, norm, b"".join(out), sess.is_closed, sorted(sess.stream_ids())


def _yamux(data: bytes, is_client: bool) -> str:
    cfg, data = (data[0], data[1:]) if data else (0, b"")
    p = split_point(data)
    w = _yamux_run(is_client, cfg, [data])
    s = _yamux_run(is_client, cfg, [data[:p], data[p:]])
    if not cfg & 1:  # reactive runs answer between chunks, so the split matters there
        same("whole vs split", w, s)
    return w[0] or "ok"


def _yamux_seeds():
    h = ym.encode_header
    syn = h(ym.TYPE_WINDOW_UPDATE, ym.FLAG_SYN, 2, 0) + h(ym.TYPE_DATA, 0, 2, 5) + b"hello"
    syn_odd = h(ym.TYPE_WINDOW_UPDATE, ym.FLAG_SYN, 1, 0) + h(ym.TYPE_DATA, ym.FLAG_FIN, 1, 3) + b"abc"
    more = (
        h(ym.TYPE_PING, ym.FLAG_SYN, 0, 7)
        + h(ym.TYPE_DATA, ym.FLAG_SYN, 4, 2) + b"hi"
        + h(ym.TYPE_WINDOW_UPDATE, 0, 4, 1000)
        + h(ym.TYPE_DATA, ym.FLAG_RST, 4, 0)
        + h(ym.TYPE_PING, ym.FLAG_ACK, 0, 1)
        + h(ym.TYPE_GO_AWAY, 0, 0, 0)
    )
    ack = h(ym.TYPE_WINDOW_UPDATE, ym.FLAG_ACK, 1, 0) + h(ym.TYPE_DATA, ym.FLAG_FIN, 1, 1) + b"z"
    seeds = []
    for cfg in (0, 1, 2, 3, 4, 16, 17):
        seeds += [bytes([cfg]) + s for s in (syn, syn_odd, syn + more, ack, syn_odd + more)]
    return seeds


@target("yamux_client", (YamuxError,), _yamux_seeds)
def yamux_client(data: bytes) -> str:
    """Yamux session receive_data as the client (dialer), plain and reacting to events."""
    return _yamux(data, True)


@target("yamux_server", (YamuxError,), _yamux_seeds)
def yamux_server(data: bytes) -> str:
    """Yamux session receive_data as the server (listener), plain and reacting to events."""
    return _yamux(data, False)


# --------------------------------------------------------------- identify


def _id_reader(chunks):
    r = IdentifyReader()
    fed = [r.feed(c) for c in chunks]
    last = next((x for x in reversed(fed) if x is not None), None)
    return last, r.eof()


@target("identify", (IdentifyError,), lambda: [
    b"\x00" + encode_identify(public_key=KP_A.public_key, listen_addrs=[MA_TCP], protocols=["/ipfs/kad/1.0.0"],
                              observed_addr=MA_TCP, protocol_version="ipfs/0.1.0", agent_version="kadfast"),
    b"\x01" + pb._varint(3) + b"\x2a\x01x" + pb._varint(2) + b"\x12\x00",
    b"\x01" + (lambda m: pb._varint(len(m)) + m)(
        encode_identify(public_key=KP_B.public_key, listen_addrs=[MA_TCP], signed_peer_record=b"\x01\x02")),
])
def identify(data: bytes) -> str:
    """decode_identify (with a re-encode round trip) and IdentifyReader (parts, eof)."""
    cfg, data = (data[0], data[1:]) if data else (0, b"")
    if not cfg & 1:
        w = outcome(lambda: decode_identify(data), IdentifyError)
        if w[0] == "ok":
            info = w[1]
            again = decode_identify(info.encode(max_bytes=1 << 20))
            same("decode(encode(info))", again, dataclasses.replace(info, bad_addrs=0))
        return label(w)
    p = split_point(data)
    w = outcome(lambda: _id_reader([data]), IdentifyError)
    s = outcome(lambda: _id_reader([data[:p], data[p:]]), IdentifyError)
    if w[0] == "ok" and s[0] == "ok":
        same("whole vs split (final info)", w[1][1], s[1][1])
    else:
        same("whole vs split outcome", w[0], s[0])
    return label(w)


# ------------------------------------------------------------------- ping

_PING_PAYLOAD = bytes(range(7, 7 + PING_SIZE))


def _ping_responder(chunks):
    r = PingResponder()
    out = b"".join(r.feed(c) for c in chunks)
    res = outcome(r.eof, ProtocolError)
    return out, r.echoed, label(res)


def _ping_initiator(chunks):
    i = PingInitiator(_PING_PAYLOAD, 1.0)
    rtts = [i.feed(c, 2.0) for c in chunks]
    rtts = [x for x in rtts if x is not None]
    res = outcome(i.eof, ProtocolError)
    return rtts, i.done, label(res)


@target("ping", (ProtocolError,), lambda: [b"\x00" + os.urandom(64) + b"abc", b"\x01" + _PING_PAYLOAD,
                                           b"\x01" + _PING_PAYLOAD[:10]])
def ping(data: bytes) -> str:
    """Ping responder (echo) and initiator (echo check) feed/eof."""
    cfg, data = (data[0], data[1:]) if data else (0, b"")
    p = split_point(data)
    if cfg & 1:
        w = outcome(lambda: _ping_initiator([data]), ProtocolError)
        s = outcome(lambda: _ping_initiator([data[:p], data[p:]]), ProtocolError)
        if w[0] == "ok" and w[1][1]:
            same("initiator accepted a wrong echo", data, _PING_PAYLOAD)
        same("whole vs split outcome", w[0], s[0])
    else:
        w = outcome(lambda: _ping_responder([data]), ProtocolError)
        s = outcome(lambda: _ping_responder([data[:p], data[p:]]), ProtocolError)
        same("whole vs split", w, s)
        if w[0] == "ok":
            same("echo", w[1][0], data[: len(data) - len(data) % PING_SIZE])
    return label(w) if w[0] == "err" or w[1][2] == "ok" else w[1][2]


# -------------------------------------------------------------------- kad


def _kad_seed_messages():
    peer = pb.KadPeer(PEER_A, [MA_TCP], pb.ConnectionType.CONNECTED)
    msgs = [
        pb.KadMessage(pb.MessageType.FIND_NODE, key=PEER_B.to_bytes()),
        pb.KadMessage(pb.MessageType.FIND_NODE, key=b"k", closer_peers=[peer, pb.KadPeer(PEER_B, [])]),
        pb.KadMessage(pb.MessageType.PUT_VALUE, key=b"/app/k",
                      record=pb.KadRecord(b"/app/k", b"value", "2024-01-01T00:00:00Z", PEER_A, 3600)),
        pb.KadMessage(pb.MessageType.GET_PROVIDERS, key=b"k", provider_peers=[peer], cluster_level_raw=3),
        pb.KadMessage(pb.MessageType.PING),
    ]
    return [pb.encode_message(m) for m in msgs]


@target("kad_pb", (KadCodecError,), lambda: (
    [b"\x00" + m for m in _kad_seed_messages()]
    + [b"\x01" + b"".join(pb.frame(m) for m in _kad_seed_messages())]
))
def kad_pb(data: bytes) -> str:
    """kad decode_message (with an encode round trip) and MessageReader framing (+ decode of each body)."""
    cfg, data = (data[0], data[1:]) if data else (0, b"")

    def decode(body):
        m = pb.decode_message(body)
        again = pb.decode_message(pb.encode_message(m))
        same("decode(encode(msg))", again, m)
        return m

    if not cfg & 1:
        return label(outcome(lambda: decode(data), KadCodecError))

    def read(chunks):
        r = pb.MessageReader(max_size=pb.MAX_MESSAGE_SIZE if not cfg & 2 else 64)
        bodies = [b for c in chunks for b in r.feed(c)]
        return bodies, label(outcome(r.eof, KadCodecError)), r.buffered

    p = split_point(data)
    w = outcome(lambda: read([data]), KadCodecError)
    s = outcome(lambda: read([data[:p], data[p:]]), KadCodecError)
    if w[0] == "ok" and s[0] == "ok":
        same("whole vs split", w, s)
        for body in w[1][0]:
            outcome(lambda: decode(body), KadCodecError)
    else:
        same("whole vs split outcome", w[0], s[0])
    return label(w)


# -------------------------------------------------------- multiaddr, peerid


def _ma_props(ma: Multiaddr) -> None:
    same("from_bytes(to_bytes)", Multiaddr.from_bytes(ma.to_bytes()), ma)
    same("parse(str)", Multiaddr(str(ma)), ma)
    list(ma)
    ma.protocols()
    ma.peer_id()
    ma.without_peer_id()


_MA_SEEDS = [
    "/ip4/127.0.0.1/tcp/4001", "/ip6/::1/udp/9/quic-v1", "/dns4/example.com/tcp/443/wss",
    "/ip4/1.2.3.4/tcp/1/p2p/" + str(PEER_A), "/dnsaddr/bootstrap.libp2p.io", "/unix/tmp%2Fsock",
    "/ip4/10.0.0.1/udp/1/quic-v1/webtransport/certhash/uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_m8wuEAfnQIdg",
    "/ip6zone/x/ip6/fe80::1/tcp/1", "/p2p-circuit/p2p/" + str(PEER_B),
]


@target("multiaddr_text", (MultiaddrError,), lambda: [s.encode() for s in _MA_SEEDS])
def multiaddr_text(data: bytes) -> str:
    """Multiaddr text parsing (+ binary and text round trips), whole and both halves."""
    p = split_point(data)
    res = None
    for part in (data, data[:p], data[p:]):
        text = part.decode("utf-8", "surrogateescape")
        r = outcome(lambda: Multiaddr(text), MultiaddrError)
        if r[0] == "ok":
            _ma_props(r[1])
        res = res or r
    return label(res)


@target("multiaddr_binary", (MultiaddrError,), lambda: [Multiaddr(s).to_bytes() for s in _MA_SEEDS])
def multiaddr_binary(data: bytes) -> str:
    """Multiaddr binary decoding (+ round trips) and decode_many on the halves."""
    p = split_point(data)
    r = outcome(lambda: Multiaddr.from_bytes(data), MultiaddrError)
    if r[0] == "ok":
        _ma_props(r[1])
    good, bad = decode_many([data[:p], data[p:], data])
    same("decode_many counts", len(good) + len(bad), 3)
    for e in bad:
        if not isinstance(e, MultiaddrError):
            raise Finding(f"decode_many returned a {type(e).__name__}")
    return label(r)


def _pid_props(pid: PeerId) -> None:
    same("from_bytes(to_bytes)", PeerId.from_bytes(pid.to_bytes()), pid)
    same("from_string(base58)", PeerId.from_string(pid.to_base58()), pid)
    same("from_string(cid)", PeerId.from_string(pid.to_cid()), pid)
    key = outcome(pid.public_key, (CryptoKeyError, PeerIdError))
    if key[0] == "ok" and key[1] is not None:
        if not pid.matches_public_key(key[1]):
            raise Finding("PeerId does not match its own inlined public key")


_PID_SEEDS = [PEER_A, PEER_B, PeerId(b"\x12\x20" + bytes(32))]


@target("peerid_text", (PeerIdError,), lambda: [s.encode() for p in _PID_SEEDS for s in (p.to_base58(), p.to_cid())])
def peerid_text(data: bytes) -> str:
    """PeerId.from_string (base58btc and CIDv1 multibase) with round trips."""
    text = data.decode("utf-8", "surrogateescape")
    r = outcome(lambda: PeerId.from_string(text), PeerIdError)
    if r[0] == "ok":
        _pid_props(r[1])
    return label(r)


@target("peerid_bytes", (PeerIdError,), lambda: [p.to_bytes() for p in _PID_SEEDS])
def peerid_bytes(data: bytes) -> str:
    """PeerId.from_bytes (multihash validation, inlined public key) with round trips."""
    r = outcome(lambda: PeerId.from_bytes(data), PeerIdError)
    if r[0] == "ok":
        _pid_props(r[1])
    return label(r)


# ------------------------------------------------------------------- keys


@target("public_key", (CryptoKeyError,), lambda: [KP_A.public_key.encode(), b"\x08\x00\x12\x00",
                                                  b"\x08\x02\x12\x21\x02" + bytes(32), b"\x08\x03\x12\x00"])
def public_key(data: bytes) -> str:
    """PublicKey.decode of every libp2p key type, re-encoding and verify (never raises)."""
    r = outcome(lambda: PublicKey.decode(data), CryptoKeyError)
    if r[0] == "ok":
        key = r[1]
        same("decode(encode(key))", PublicKey.decode(key.encode()), key)
        ok = key.verify(b"message", data[-64:])
        if not isinstance(ok, bool):
            raise Finding("verify returned a non-bool")
        PeerId.from_public_key(key)
    return label(r)


_KEYDIR = None


def _key_path() -> str:
    global _KEYDIR
    if _KEYDIR is None:
        _KEYDIR = tempfile.mkdtemp(prefix="kadfast-fuzz-")
    return os.path.join(_KEYDIR, "node.key")


@target("keyfile", (KeyFileError,), lambda: [KP_A.encode_private(), KP_B.encode_private()[:-3], b""])
def keyfile(data: bytes) -> str:
    """load_keypair on a file holding the bytes; agrees with decode_private; round trip."""
    path = _key_path()
    with open(path, "wb") as fh:
        fh.write(data)
    r = outcome(lambda: load_keypair(path), KeyFileError)
    d = outcome(lambda: Ed25519KeyPair.decode_private(data), CryptoKeyError)
    if len(data) <= 16 * 1024:
        same("load_keypair vs decode_private", r[0], d[0])
    if r[0] == "ok":
        same("seed round trip", Ed25519KeyPair.decode_private(r[1].encode_private()).seed, r[1].seed)
    return label(r)


# -------------------------------------------- compiled code vs plain twins


def _snapshot(table):
    buckets = {}
    for i in table.nonempty_buckets():
        buckets[i] = [(e.key.digest, e.value, e.connected, e.last_seen) for e in table.bucket(i)]
    pending = {}
    for i in range(256):
        e = table.pending(i)
        if e is not None:
            pending[i] = (e.key.digest, e.value, e.connected, table.pending_deadline(i))
    return len(table), buckets, pending


def _near(local: bytes, bucket: int, salt: int) -> bytes:
    x = int.from_bytes(local, "big")
    low = (salt * 0x9E3779B97F4A7C15) & ((1 << bucket) - 1) if bucket else 0
    return (x ^ (1 << bucket) ^ low).to_bytes(32, "big")


def _entry(e):
    return None if e is None else (e.key.digest, e.value, e.connected, e.last_seen)


def _rt_op(rt, xmod, table, keys, kind, idx, connected, now, n):
    key = keys[idx]
    if kind == 0 or kind == 1:
        return table.update(key, idx, now, connected)
    if kind == 2:
        return table.update(key, None, now, connected)
    if kind == 3:
        return _entry(table.remove(key))
    if kind == 4:
        return table.apply_pending(now), [(_entry(a.inserted), _entry(a.evicted)) for a in table.pop_applied()]
    if kind == 5:
        return [_entry(e) for e in table.closest(key, n)]
    if kind == 6:
        return _entry(table.get(key)), key in table
    if kind == 7:
        return [_entry(e) for e in table.bucket(n)], _entry(table.pending(n)), table.pending_deadline(n)
    return None


_RT_IMPLS = ((_routing, _xor), (_routing_py, _xor_py))


@target("routing", (RoutingError,), lambda: [bytes([3, 1]) + bytes(range(200)), bytes([0x81, 2]) + os.urandom(120)])
def routing(data: bytes) -> str:
    """Compiled routing table vs its plain-Python twin on op sequences decoded from the bytes."""
    if len(data) < 2:
        return "short"
    cfg, k_raw, data = data[0], data[1], data[2:602]  # at most 300 ops
    k = 1 + k_raw % 5 if k_raw < 250 else k_raw  # sometimes k beyond MAX_K
    local = bytes([cfg]) * 32
    if cfg & 0x80:
        digests = [_near(local, 250 + i % 4, i) for i in range(64)]
    else:
        digests = [zlib.crc32(bytes([i, cfg])).to_bytes(4, "big") * 8 for i in range(63)] + [local]
    made = []
    for rt, x in _RT_IMPLS:
        made.append(outcome(lambda: rt.RoutingTable(x.Key.from_digest(local), k=k, pending_timeout=10.0),
                            RoutingError))
    same("constructor outcome", made[0][0], made[1][0])
    if made[0][0] != "ok":
        return made[0][1]
    tables = [m[1] for m in made]
    keys = [[x.Key.from_digest(d) for d in digests] for _, x in _RT_IMPLS]
    now = 0.0
    errors = 0
    for i in range(0, len(data) - 1, 2):
        a, b = data[i], data[i + 1]
        kind, connected, now = a & 7, bool(a & 8), now + (a >> 4)
        idx, n = b & 63, (b >> 2) - 8  # n may be negative
        res = [outcome(lambda: _rt_op(rt, x, t, ks, kind, idx, connected, now, n), RoutingError)
               for (rt, x), t, ks in zip(_RT_IMPLS, tables, keys)]
        same(f"op {i // 2} ({kind}) result", res[0], res[1])
        errors += res[0][0] == "err"
        if kind == 0 and i % 32 == 0:
            same(f"op {i // 2} snapshot", _snapshot(tables[0]), _snapshot(tables[1]))
    same("final snapshot", _snapshot(tables[0]), _snapshot(tables[1]))
    return "RoutingError" if errors else "ok"


def _ks_all(x, data: bytes, cfg: int):
    """Every key-space function of module ``x`` on inputs cut from ``data``."""
    a = x.Key(data[:40])
    dlen = 32 if cfg & 1 else cfg % 40
    b = x.Key.from_digest(data[:dlen]) if len(data) >= dlen else x.Key(data)
    t = x.Key.from_digest((data[-32:] + bytes(32))[:32])
    rows = len(data) // 32
    width = 32 if not cfg & 2 else max(1, cfg % 33)
    flat = np.frombuffer(data[: (len(data) // width) * width], dtype=np.uint8)
    arr = flat.reshape(-1, width) if cfg & 4 else (flat.astype(np.int16).reshape(-1, width) if cfg & 8 else flat.reshape(-1, width))
    n = (cfg >> 4) - 4 if cfg & 2 else rows // 2
    res = [
        x.xor_distance(a, b), x.compare_distance(t, a, b), x.bucket_index(a, b), a.distance(b), a.bucket_index(t),
        a == b, hash(a) == hash(x.Key(data[:40])), a.digest, b.digest,
    ]
    def closest():
        ix = x.closest_digests(t, arr, n).tolist()
        ti = int.from_bytes(t.digest, "big")
        return ix, [int.from_bytes(arr[j].tobytes(), "big") ^ ti for j in ix]

    res.append(outcome(closest, KeyspaceError))
    res.append(outcome(lambda: x.bucket_indices(t, arr).tolist(), KeyspaceError))
    return res


@target("keyspace", (KeyspaceError,), lambda: [bytes([1]) + os.urandom(32 * 9), bytes([0x35]) + os.urandom(70),
                                               bytes([4]) + bytes(64)])
def keyspace(data: bytes) -> str:
    """Compiled _xor vs _xor_py (Key, distances, bucket index, closest_digests, bucket_indices)."""
    cfg, data = (data[0], data[1:]) if data else (0, b"")
    c = outcome(lambda: _ks_all(_xor, data, cfg), KeyspaceError)
    p = outcome(lambda: _ks_all(_xor_py, data, cfg), KeyspaceError)
    if c[0] == p[0] == "ok" and c[1][-2] != p[1][-2] and c[1][-2][0] == p[1][-2][0] == "ok":
        (ci, cd), (pi, pd) = c[1][-2][1], p[1][-2][1]
        if cd == pd:
            raise Finding(f"closest_digests tie order: compiled {ci} vs twin {pi} (equal distances {[hex(d) for d in cd]})")
    same("compiled vs twin", c, p)
    return label(c)


# -- IPNS records --------------------------------------------------------------------
_IPNS_NOW = 1_700_000_000.0


def _ipns_seeds() -> list[bytes]:
    eol = _IPNS_NOW + 3600
    return [
        ipns.create_record(KP_A, "/ipfs/bafkqaaa", 3, eol),
        ipns.create_record(KP_A, "/ipfs/bafkqaaa", 4, eol, v1=False),
        ipns.create_record(KP_A, "/ipns/k51qzi5uqu5d", 0, eol, embed_public_key=True),
    ]


@target("ipns_record", (ipns.IpnsError,), _ipns_seeds)
def ipns_record(data: bytes) -> str:
    """``verify_record`` of a name on a fixed clock (the server's check of an
    /ipns/ PUT_VALUE), and the selector on the input against a valid record."""
    res = outcome(lambda: ipns.verify_record(KP_A.peer_id, data, _IPNS_NOW), ipns.IpnsError)
    if res[0] == "ok":
        again = ipns.decode_entry(ipns.decode_entry(data).encode())
        same("decode(encode(entry))", again, ipns.decode_entry(data))
    valid = _IPNS_SEED_RECORD
    same("select_best vs compare", ipns.select_best([data, valid]), 0 if ipns.compare(data, valid) >= 0 else 1)
    return label(res)


_IPNS_SEED_RECORD = _ipns_seeds()[0]


_TLS_NOW = datetime.datetime(2026, 12, 4, tzinfo=datetime.timezone.utc)


def _tls_seeds() -> list[bytes]:
    return [tls.make_certificate(KP_A, _TLS_NOW).der]


@target("tls_certificate", (TlsCertificateError,), _tls_seeds)
def tls_certificate(data: bytes) -> str:
    """``verify_certificate_chain`` of the input as a peer's one libp2p TLS
    certificate on a fixed clock (X.509, validity, self-signature, the
    libp2p extension's SignedKey and host-key signature)."""
    res = outcome(lambda: tls.verify_certificate_chain([data], _TLS_NOW), TlsCertificateError)
    if res[0] == "ok":
        same("verified twice", tls.verify_certificate_chain([data], _TLS_NOW), res[1])
    return label(res)



_QUIC_CERT = None


def _quic_server_cert():
    global _QUIC_CERT
    if _QUIC_CERT is None:
        _QUIC_CERT = tls.make_certificate(KP_B)
    return _QUIC_CERT


def _quic_client_initial() -> bytes:
    client = QuicCore(tls.make_certificate(KP_A), now=0.0, utc_now=lambda: _TLS_NOW,
                      remote_addr=("127.0.0.1", 4001), expected_peer=KP_B.peer_id)
    return client.datagrams_to_send(0.0)[0][0]


def _quic_seeds() -> list[bytes]:
    first = _quic_client_initial()
    return [first, first[:1] + b"\x1a\x2a\x3a\x4a" + first[5:], first[:60], b"\x40" + os.urandom(40)]


@target("quic_datagram", (), _quic_seeds)
def quic_datagram(data: bytes) -> str:
    """A datagram from the network at a QUIC endpoint: whether it opens a
    connection (``initial_destination_cid``) or gets a Version Negotiation,
    and, if it opens one, a server connection (QuicCore on aioquic, then the
    stream layer) fed it and its timers: never an exception, whatever
    the bytes."""
    cid = initial_destination_cid(data)
    vn = version_negotiation(data)
    if vn is not None and cid is not None:
        raise Finding("a datagram both opens a connection and gets a Version Negotiation")
    if cid is None:
        return "vn" if vn is not None else "dropped"
    quic = QuicCore(_quic_server_cert(), now=0.0, utc_now=lambda: _TLS_NOW, remote_addr=("127.0.0.1", 40001),
                    original_destination_cid=cid)
    core = QuicConnectionCore(quic, supports_protocol=lambda p: True)
    events = core.receive_datagram(data, ("127.0.0.1", 40001), 0.0)
    core.datagrams_to_send(0.0)
    t = core.get_timer()
    if t is not None:
        events += core.handle_timer(t)
    return "ok" if not events else type(events[-1]).__name__


def _quic_parameter_seeds() -> list[bytes]:
    params = QuicTransportParameters(initial_max_data=1 << 20, initial_max_streams_bidi=128,
                                     max_idle_timeout=30_000, initial_source_connection_id=b"\x01" * 8)
    buf = Buffer(capacity=512)
    push_quic_transport_parameters(buf, params)
    return [buf.data, buf.data[:-3], b"\x00\x40"]


@target("quic_transport_parameters", (ValueError,), _quic_parameter_seeds)
def quic_transport_parameters(data: bytes) -> str:
    """The peer's QUIC transport parameters (carried in its TLS handshake)
    as aioquic parses them for our connections: a ValueError (which aioquic
    turns into TRANSPORT_PARAMETER_ERROR) or parameters, nothing else."""
    res = outcome(lambda: pull_quic_transport_parameters(Buffer(data=data)), (ValueError,))
    return label(res)
