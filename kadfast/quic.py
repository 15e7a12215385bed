"""libp2p's QUIC transport (``/quic-v1``) for one connection, as a sans-IO
core on aioquic.

aioquic's ``QuicConnection`` is itself sans-IO (datagrams and the time in,
datagrams, events and a timer out); :class:`QuicCore` gives it what
libp2p asks of QUIC (libp2p/specs quic/README.md and tls/tls.md):

* TLS 1.3 with ALPN ``libp2p`` (QUIC has no other version);
* our libp2p certificate (:func:`kadfast.tls.make_certificate`, made once
  per host), and mutual authentication: the server asks for the client's
  certificate and both sides refuse a peer whose certificate does not
  prove a host key (:func:`kadfast.tls.verify_certificate_chain`); the
  client also refuses a server that is not the peer it dialed;
* no certificate authority: aioquic's own chain check is off, ours
  replaces it, and aioquic still checks the TLS CertificateVerify
  signature, which proves the peer holds the certificate's key.

Until the peer is authenticated nothing of its streams reaches the caller;
a failed authentication closes the connection (a CONNECTION_CLOSE with a
reason) and reports :class:`QuicFailed`. Streams are QUIC's own: data in
and out per stream id, FIN and resets; per-stream protocol negotiation is
the layer above.

The server asks for the client's certificate through
``tls.Context._request_client_certificate``, the switch aioquic keeps for
its own tests (it has no public one); ``tests/test_quic.py`` fails if an
aioquic release drops it.
"""

from __future__ import annotations

import datetime
import functools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aioquic import tls as aioquic_tls
from aioquic.buffer import Buffer
from aioquic.quic import connection as aioquic_connection
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import (
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .errors import StreamReset, TlsCertificateError
from .keys import PublicKey
from .peerid import PeerId
from .tls import ALPN, Libp2pCertificate, verify_certificate_chain

__all__ = [
    "QuicCore",
    "QuicEvent",
    "QuicUpgraded",
    "QuicFailed",
    "QuicStreamData",
    "QuicStreamReset",
    "QUIC_IDLE_TIMEOUT",
    "QUIC_HANDSHAKE_TIMEOUT",
    "quic_configuration",
    "initial_destination_cid",
    "version_negotiation",
    "destination_cid",
]

# aioquic logs every connection's progress at info on the "quic" logger: a
# line per handshake step is noise on a server that accepts thousands. Left
# as it is when the application set a level of its own.
if logging.getLogger("quic").level == logging.NOTSET:
    logging.getLogger("quic").setLevel(logging.WARNING)

#: Seconds without a packet before a connection is dropped (go-libp2p's
#: and rust-libp2p's QUIC use 30 s, with keep-alives by the layer above).
QUIC_IDLE_TIMEOUT = 30.0
#: Seconds a connection has to complete its handshake and authentication
#: (the TCP upgrade's ``handshake_timeout`` too): a peer that starts
#: handshakes and never finishes them holds no connection slot longer.
QUIC_HANDSHAKE_TIMEOUT = 10.0
#: Stream bytes the peer may have sent us beyond what arrived in order (the
#: gaps aioquic buffers, zero-filled, until they are filled), over the whole
#: connection. aioquic doubles a peer's flow-control credit as the highest
#: offset it sent grows, not as data is delivered: a peer that sends single
#: bytes ever further ahead would make it allocate without bound. Honest
#: reordering stays within a congestion window. A peer over it is closed.
MAX_UNDELIVERED = 16 << 20
#: the CONNECTION_CLOSE error code of FLOW_CONTROL_ERROR (RFC 9000 20.1)
FLOW_CONTROL_ERROR = 0x3
#: The CONNECTION_CLOSE error code of a failed libp2p authentication
#: (an application error: the TLS handshake itself succeeded).
AUTH_FAILED = 0x1


@dataclass(frozen=True, slots=True)
class QuicUpgraded:
    """The peer is authenticated: who it is, by its host key."""

    peer_id: PeerId
    public_key: PublicKey


@dataclass(frozen=True, slots=True)
class QuicFailed:
    """The connection is over (refused, timed out, closed by either side),
    with why; nothing follows."""

    reason: str


@dataclass(frozen=True, slots=True)
class QuicStreamData:
    """Bytes of a stream, in order; ``end``: the peer's FIN came with them."""

    stream_id: int
    data: bytes
    end: bool


@dataclass(frozen=True, slots=True)
class QuicStreamReset:
    """The peer reset a stream (RESET_STREAM) with ``error_code``."""

    stream_id: int
    error_code: int


QuicEvent = QuicUpgraded | QuicFailed | QuicStreamData | QuicStreamReset


def quic_configuration(certificate: Libp2pCertificate, *, is_client: bool,
                       idle_timeout: float = QUIC_IDLE_TIMEOUT) -> QuicConfiguration:
    """aioquic's configuration for libp2p: ALPN ``libp2p``, our certificate,
    aioquic's chain check off (ours runs on the peer's certificate)."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        verify_mode=ssl.CERT_NONE,
    )
    config.certificate = x509.load_der_x509_certificate(certificate.der)
    config.private_key = certificate.private_key
    return config


#: QUIC version 1 (RFC 9000), the one ``/quic-v1`` names
QUIC_V1 = QuicProtocolVersion.VERSION_1
#: the smallest UDP payload that may carry a client's Initial (RFC 9000 14.1)
MIN_INITIAL_DATAGRAM = 1200


def initial_destination_cid(datagram: bytes) -> bytes | None:
    """The destination connection id of a datagram that may open a
    connection (a QUIC v1 Initial of at least 1,200 bytes): what the server
    side's :class:`QuicCore` is made with. None for anything else (the
    shell drops it, or routes it to a connection it has)."""
    if len(datagram) < MIN_INITIAL_DATAGRAM:
        return None
    try:
        header = pull_quic_header(Buffer(data=datagram), host_cid_length=8)
    except ValueError:
        return None
    if header.version != QUIC_V1 or header.packet_type != QuicPacketType.INITIAL:
        return None
    return header.destination_cid


#: the length of the connection ids we choose (aioquic's default), which
#: short-header packets to us carry without a length
CID_LENGTH = 8


def destination_cid(datagram: bytes) -> bytes | None:
    """The destination connection id of a datagram's first packet, read
    without decrypting (a long header carries its length; a short header
    ours, :data:`CID_LENGTH` bytes); None when it is too short to have one."""
    if not datagram:
        return None
    if datagram[0] & 0x80:
        if len(datagram) < 6:
            return None
        n = datagram[5]
        if n > 20 or len(datagram) < 6 + n:
            return None
        return datagram[6:6 + n]
    if len(datagram) < 1 + CID_LENGTH:
        return None
    return datagram[1:1 + CID_LENGTH]


def version_negotiation(datagram: bytes) -> bytes | None:
    """The Version Negotiation packet that answers a datagram opening a
    connection in a QUIC version other than 1 (RFC 9000 6.1: a long header
    of an unknown version, at least 1,200 bytes); None for anything else.
    It is smaller than what it answers, so it amplifies nothing."""
    if len(datagram) < MIN_INITIAL_DATAGRAM or not datagram[0] & 0x80:
        return None
    try:
        header = pull_quic_header(Buffer(data=datagram), host_cid_length=8)
    except ValueError:
        return None
    if header.version in (None, QUIC_V1, QuicProtocolVersion.NEGOTIATION):
        return None
    return encode_quic_version_negotiation(source_cid=header.destination_cid,
                                           destination_cid=header.source_cid, supported_versions=[QUIC_V1])


# aioquic builds each connection's table of frame handlers anew, with a
# frozenset of epochs per frame type made by its module-level EPOCHS(): the
# same ~30 sets every time, 7 KiB and ~25 µs a connection. EPOCHS is pure
# (a shortcut string to an immutable set), so it is memoized in place.
if not hasattr(aioquic_connection.EPOCHS, "cache_info"):
    aioquic_connection.EPOCHS = functools.cache(aioquic_connection.EPOCHS)

#: capacity of each TLS output buffer once the handshake is over: aioquic
#: gives a connection three of 16 KiB (one per epoch) and keeps them for
#: its life, while after the handshake TLS writes at most a session ticket
#: (which a kadfast server does not send)
POST_HANDSHAKE_TLS_BUFFER = 1024


#: the groups our ClientHello offers key shares for, in order
CLIENT_KEY_SHARE_GROUPS = (aioquic_tls.Group.X25519, aioquic_tls.Group.SECP256R1)


class _Libp2pQuicConnection(QuicConnection):
    """aioquic's connection whose server side asks for the client's
    certificate (libp2p authenticates both ends)."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            self.tls._request_client_certificate = True
        else:
            # aioquic's client makes a key share for each of P-256, P-384,
            # X25519 and X448 (some 0.3 ms of key generation a dial), where
            # go-libp2p, rust-libp2p and js-libp2p all take X25519: offer
            # X25519 first and P-256 for a server without it
            self.tls._supported_groups = list(CLIENT_KEY_SHARE_GROUPS)


class QuicCore:
    """One libp2p QUIC connection, either side, driven by the caller.

    Feed what arrives with :meth:`receive_datagram`, send what
    :meth:`datagrams_to_send` returns, call :meth:`handle_timer` at
    :meth:`get_timer`, read :meth:`events` after each. The client
    (``expected_peer`` given: the peer it dials) starts at construction;
    the server is made for the first datagram of a new connection, with
    its ``original_destination_cid`` (:func:`initial_destination_cid`).
    Times: ``now`` and every later one on the caller's clock; ``utc_now``
    gives the wall-clock time at which the peer's certificate must be valid.
    """

    def __init__(self, certificate: Libp2pCertificate, *, now: float, utc_now: Callable[[], datetime.datetime],
                 remote_addr: NetworkAddress, expected_peer: PeerId | None = None,
                 original_destination_cid: bytes | None = None,
                 idle_timeout: float = QUIC_IDLE_TIMEOUT, handshake_timeout: float = QUIC_HANDSHAKE_TIMEOUT) -> None:
        self.initiator = expected_peer is not None
        self.expected_peer = expected_peer
        self.remote_addr = remote_addr
        #: our certificate (:func:`kadfast.tls.make_certificate`, made once by the shell)
        self._certificate = certificate
        #: the wall clock the peer's certificate validity is checked on (the
        #: shell's; the core reads no clock of its own)
        self._utc_now = utc_now
        config = quic_configuration(self._certificate, is_client=self.initiator, idle_timeout=idle_timeout)
        if self.initiator == (original_destination_cid is not None):
            raise ValueError("a client has the peer it dials, a server the Initial's destination id")
        self._quic = _Libp2pQuicConnection(configuration=config,
                                           original_destination_connection_id=original_destination_cid)
        self._events: list[QuicEvent] = []
        self._held: list[QuicEvent] = []  # stream events that arrived before authentication
        self._acked_pings: list[int] = []
        self._delivered = 0  # stream bytes aioquic handed out, in order
        #: the connection ids the peer's datagrams may carry as their
        #: destination: ours (the first, and those issued since), and a
        #: server's original one (the client's choice, in its Initials)
        self.connection_ids: set[bytes] = set()
        #: (added, id) changes to :attr:`connection_ids` not yet taken by the shell
        self._cid_changes: list[tuple[bool, bytes]] = []
        self.remote_peer_id: PeerId | None = None
        self.remote_public_key: PublicKey | None = None
        self._open = False
        self._done = False
        self._closed_locally = False
        #: when the peer must be authenticated by (None once it is)
        self._handshake_deadline: float | None = now + handshake_timeout
        self._add_cid(self._quic.host_cid)
        if original_destination_cid is not None:
            self._add_cid(original_destination_cid)
        if self.initiator:
            self._quic.connect(remote_addr, now)

    @property
    def is_open(self) -> bool:
        """Authenticated and not closed."""
        return self._open and not self._done

    # -- input ---------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> list[QuicEvent]:
        quic = self._quic
        quic.receive_datagram(data, addr, now)
        self._pump()
        # the peer's CONNECTION_CLOSE: aioquic keeps it and reports it only
        # once its draining period (3 PTO) is over; the connection is over
        # for us now, and must not count against its peer meanwhile (a peer
        # that closes and reconnects at once would meet our per-peer limit)
        if not self._done and not self._closed_locally and (closing := quic._close_event) is not None:
            self._finish(f"connection closed: {closing.reason_phrase or 'no reason'} (error 0x{closing.error_code:x})")
        # what the peer's stream frames reached (the connection's flow-control
        # use, read from aioquic, which has no accessor) beyond what came out
        if quic._local_max_data.used - self._delivered > MAX_UNDELIVERED and not self._done:
            quic.close(error_code=FLOW_CONTROL_ERROR, reason_phrase="too much stream data out of order")
            self._finish(f"the peer sent over {MAX_UNDELIVERED} bytes of stream data out of order")
        return self.events()

    def handle_timer(self, now: float) -> list[QuicEvent]:
        deadline = self._handshake_deadline
        if deadline is not None and now >= deadline and not self._done:
            self._handshake_deadline = None
            self._quic.close(error_code=AUTH_FAILED, reason_phrase="handshake timed out")
            self._finish("the handshake did not complete in time")
        self._quic.handle_timer(now)
        self._pump()
        return self.events()

    # -- output --------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        return self._quic.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        if self._done:
            return None
        timer = self._quic.get_timer()
        deadline = self._handshake_deadline
        if deadline is not None and (timer is None or deadline < timer):
            return deadline
        return timer

    def events(self) -> list[QuicEvent]:
        out, self._events = self._events, []
        return out

    # -- streams -------------------------------------------------------
    def open_stream(self) -> int:
        """A new bidirectional stream's id (nothing is sent until data is)."""
        if not self.is_open:
            raise ConnectionError("the QUIC connection is not open")
        return self._quic.get_next_available_stream_id()

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Queue data (and a FIN with ``end``); :class:`StreamReset` when
        the stream can no longer send (reset, by us or by the peer's
        STOP_SENDING, or closed by our FIN)."""
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end)
        except (RuntimeError, ValueError) as exc:
            raise StreamReset(f"QUIC stream {stream_id}: {exc}") from None

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        """RESET_STREAM: our sending side ends at once (nothing if it is done)."""
        try:
            self._quic.reset_stream(stream_id, error_code)
        except (RuntimeError, ValueError):
            pass  # a stream that cannot send (the peer's unidirectional one)

    def stop_stream(self, stream_id: int, error_code: int = 0) -> None:
        """STOP_SENDING: ask the peer to stop its side (nothing if the
        stream is gone already)."""
        try:
            self._quic.stop_stream(stream_id, error_code)
        except (RuntimeError, ValueError):
            pass

    def buffered(self, stream_id: int) -> int:
        """Bytes written on the stream and not sent yet: they wait for the
        peer's flow-control window or the congestion window (0 for a stream
        gone). As Yamux's, and as a TCP socket's write buffer: what has been
        sent and waits for its acknowledgement is not counted (there is at
        most a congestion window of it). aioquic has no accessor for it:
        its stream sender's end of the written data, less the offset of the
        next frame to send."""
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return max(0, sender._buffer_stop - sender.next_offset)

    def ping(self, uid: int) -> None:
        """Send a PING frame; ``uid`` is in :meth:`pings_acknowledged` once
        the peer acknowledged it."""
        self._quic.send_ping(uid)

    def pings_acknowledged(self) -> list[int]:
        """The uids of pings acknowledged since the last call."""
        out = self._acked_pings
        if out:
            self._acked_pings = []
        return out

    def close(self, reason: str = "closed locally", error_code: int = 0) -> None:
        if not self._done:
            self._closed_locally = True
            self._quic.close(error_code=error_code, reason_phrase=reason)

    # -- internals -----------------------------------------------------
    def _pump(self) -> None:
        quic = self._quic
        while (ev := quic.next_event()) is not None:
            if self._done:
                continue
            if isinstance(ev, qe.HandshakeCompleted):
                self._authenticate()
            elif isinstance(ev, qe.StreamDataReceived):
                self._delivered += len(ev.data)
                self._stream_event(QuicStreamData(ev.stream_id, ev.data, ev.end_stream))
            elif isinstance(ev, qe.StreamReset):
                self._stream_event(QuicStreamReset(ev.stream_id, ev.error_code))
            elif isinstance(ev, qe.ConnectionIdIssued):
                self._add_cid(ev.connection_id)
            elif isinstance(ev, qe.ConnectionIdRetired):
                if ev.connection_id in self.connection_ids:
                    self.connection_ids.discard(ev.connection_id)
                    self._cid_changes.append((False, ev.connection_id))
            elif isinstance(ev, qe.PingAcknowledged):
                if len(self._acked_pings) < 64:
                    self._acked_pings.append(ev.uid)
            elif isinstance(ev, qe.ConnectionTerminated):
                self._finish(f"connection closed: {ev.reason_phrase or 'no reason'} (error 0x{ev.error_code:x})")

    def _add_cid(self, cid: bytes) -> None:
        if cid not in self.connection_ids and len(self.connection_ids) < 64:
            self.connection_ids.add(cid)
            self._cid_changes.append((True, cid))

    def connection_id_changes(self) -> list[tuple[bool, bytes]]:
        """The (added, id) changes to :attr:`connection_ids` since the last call."""
        out = self._cid_changes
        if out:
            self._cid_changes = []
        return out

    def _stream_event(self, ev: QuicEvent) -> None:
        if self._open:
            self._events.append(ev)
        elif len(self._held) < 1024:  # bounded: the handshake completes within a flight
            self._held.append(ev)

    def _authenticate(self) -> None:
        tls = self._quic.tls
        cert = tls._peer_certificate
        chain = [] if cert is None else [cert, *tls._peer_certificate_chain]
        ders = [c.public_bytes(Encoding.DER) for c in chain]
        try:
            key = verify_certificate_chain(ders, self._utc_now())
        except TlsCertificateError as exc:
            self._quic.close(error_code=AUTH_FAILED, reason_phrase=f"libp2p TLS: {exc}"[:200])
            self._finish(f"authentication failed: {exc}")
            return
        self.remote_public_key = key
        self.remote_peer_id = peer = PeerId.from_public_key(key)
        if self.expected_peer is not None and peer != self.expected_peer:
            # who it is stays known (remote_peer_id): the dialer reports a wrong peer
            reason = f"the certificate proves {peer}, not the peer dialed ({self.expected_peer})"
            self._quic.close(error_code=AUTH_FAILED, reason_phrase=f"libp2p TLS: {reason}"[:200])
            self._finish(f"authentication failed: {reason}")
            return
        self._handshake_deadline = None
        self._open = True
        # the handshake's TLS output is written out by now (aioquic moves it
        # into its crypto streams as it comes): small buffers from here on
        quic = self._quic
        quic._crypto_buffers = {epoch: Buffer(capacity=POST_HANDSHAKE_TLS_BUFFER) for epoch in quic._crypto_buffers}
        self._events.append(QuicUpgraded(self.remote_peer_id, key))
        self._events.extend(self._held)
        self._held.clear()

    def _finish(self, reason: str) -> None:
        self._done = True
        self._held.clear()
        self._events.append(QuicFailed(reason))

