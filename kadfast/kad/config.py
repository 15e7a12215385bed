"""The Kademlia node's settings (:class:`Config`, rust-libp2p's defaults)
and quorums (:class:`Quorum`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..store import StoreConfig
from .pb import MAX_KEY_SIZE, MAX_MESSAGE_SIZE, MAX_VALUE_SIZE

__all__ = ["Config", "Quorum", "PROTOCOL", "HOUR"]

PROTOCOL = "/ipfs/kad/1.0.0"
HOUR = 3600.0


@dataclass
class Config:
    """Kademlia settings; the defaults are rust-libp2p's."""

    k: int = 20
    #: requests in flight per lookup (alpha)
    parallelism: int = 3
    query_timeout: float = 60.0
    request_timeout: float = 10.0
    record_ttl: float = 48 * HOUR
    replication_interval: float = 1 * HOUR
    #: records replicated (and provided keys republished) at once in a round:
    #: each is a lookup and k requests; a round works through its keys this
    #: many at a time
    max_concurrent_replications: int = 16
    republish_interval: float = 22 * HOUR
    provider_ttl: float = 48 * HOUR
    provider_republish_interval: float = 12 * HOUR
    periodic_bootstrap_interval: float = 5 * 60.0
    #: protocol name; a private DHT must use its own, or it joins the public one
    protocol: str = PROTOCOL
    #: "auto": server when listening or given external addresses; else client
    mode: str = "auto"
    max_message_size: int = MAX_MESSAGE_SIZE
    #: largest record value and key that put_record sends and a PUT_VALUE
    #: may carry: the GET_VALUE answer must fit in a 16 KiB message (see
    #: ``kad.pb.MAX_VALUE_SIZE``); a larger one is refused before sending
    max_value_size: int = MAX_VALUE_SIZE
    max_key_size: int = MAX_KEY_SIZE
    store: StoreConfig = field(default_factory=StoreConfig)
    #: closest-peers lookups (get_closest_peers, and so put_record, provide
    #: and bootstrap) that met failed peers among their k closest ask the k
    #: peers that answered for their own neighbourhoods once (the repair
    #: round of ``ClosestPeersIter``), so that the live peers behind departed
    #: ones are found; rust has no such round
    repair_lookups: bool = True
    #: a routing-table entry replaced by a pending one after this long disconnected
    pending_timeout: float = 60.0
    #: lookups the node runs at once (its query pool, ``node.queries``); one
    #: more raises TooManyQueries
    max_queries: int = 1024
    #: seconds between two runs of the maintenance step
    maintenance_period: float = 1.0
    #: seconds between two sweeps of expired records and providers (each a
    #: full scan of the store)
    sweep_interval: float = 60.0
    #: events kept per subscriber before new ones are dropped
    event_queue_size: int = 4096
    # -- limits on what one peer may ask of this server (rust has none of the
    # rate limits; a request over a limit resets its stream, and is logged)
    #: PUT_VALUE requests served per peer per second (a token bucket per peer,
    #: refilled on the node's clock); 0 turns the limit off
    max_puts_per_peer_per_second: float = 20.0
    #: ADD_PROVIDER requests served per peer per second; 0 turns the limit off
    max_provider_adds_per_peer_per_second: float = 20.0
    #: a peer's bucket holds this many seconds' worth of requests, so a burst
    #: (e.g. hourly replication) of up to rate * burst_seconds passes at once
    rate_limit_burst_seconds: float = 5.0
    #: peers whose buckets are remembered; the least recently seen is forgotten
    max_rate_limited_peers: int = 10_000
    #: kad streams one connection may have open towards us at once (rust's kad
    #: handler allows 32); a stream over it is reset. 0 turns the limit off
    max_inbound_kad_streams_per_connection: int = 32
    #: an inbound kad stream on which no whole request arrived for this many
    #: seconds is reset: one that negotiated and then says nothing, and one
    #: that trickles an unfinished message (go resets kad streams idle for a
    #: minute too). Checked every quarter of it, at most every 15 s; 0 off
    kad_stream_idle_timeout: float = 60.0
    #: back-pressure for peers that do not read their answers: while more
    #: than this many bytes wait to be sent on a connection (or a stream's
    #: answers wait for the peer's window), its kad streams' requests are
    #: held instead of answered, and answered as the output drains
    max_queued_reply_bytes: int = 256 * 1024
    #: request bytes one kad stream may have held so; past it the stream is
    #: reset (a peer that keeps asking and never reads)
    max_held_request_bytes: int = 64 * 1024
    #: request bytes the kad streams of one connection may hold at once:
    #: unfinished messages and requests held by back-pressure. A stream that
    #: takes its connection past it is reset (32 streams each holding most of
    #: a 16 KiB message would otherwise cost half a MiB per connection)
    max_request_bytes_per_connection: int = 128 * 1024
    #: the budget of all the bytes the kad server holds for its peers:
    #: unfinished and held requests of every connection, and answers queued
    #: for sending (counted every maintenance step). A request that would go
    #: past it resets its stream, and while the queued answers are past it,
    #: only connections whose output has drained are answered. Reported as
    #: the kadfast_buffered_bytes gauge of ``kadfast server --metrics``
    max_buffered_bytes: int = 64 * 1024 * 1024
    #: an unfinished kad message must be complete this many seconds after
    #: its first byte arrived, or its stream is reset (checked every quarter
    #: of it)
    kad_message_timeout: float = 10.0
    #: routing-table diversity (go-libp2p-kad-dht's peer diversity filter is
    #: the model): peers of one IP group (IPv4 /16, IPv6 /32, by the address
    #: of its connection, else its first known address) admitted per bucket
    #: and in the whole table; a newcomer over either limit is not inserted.
    #: Addresses that are not public (loopback, private, ...) are exempt
    #: unless ``ip_group_limits_everywhere``. 0 turns a limit off
    max_peers_per_ip_group_per_bucket: int = 2
    max_peers_per_ip_group: int = 10
    ip_group_limits_everywhere: bool = False
    #: records that peers of one network (IPv4 /24, IPv6 /48, by the
    #: connection's address; public addresses only unless
    #: ``ip_group_limits_everywhere``) may have stored here at once: many
    #: identities behind one network cannot fill the store; a PUT_VALUE of a
    #: new key (or a new value) over it is refused (the stream reset), while
    #: replicas of what is held cost nothing. A quarter of the default
    #: store, so that a neighbour's hourly replication still fits. 0: off
    max_records_per_ip_group: int = 256
    #: likewise for the keys that peers of one network are providers of here
    #: (an ADD_PROVIDER of a new key over it is ignored; the protocol has no
    #: answer to refuse it with)
    max_provider_keys_per_ip_group: int = 256
    #: what a server does with a PUT_VALUE whose key no registered validator
    #: checks: "owner" (the default) stores it when the key is new (or the
    #: record held expired), and then lets only the peer that stored it
    #: (its publisher, the authenticated sender) change its value; anyone
    #: else's different value is refused (InvalidRecord, the stream reset),
    #: while replicas of the value held are taken. "accept" stores any,
    #: last writer wins (rust-libp2p; any peer can overwrite such a
    #: record), "refuse" stores none (go-libp2p-kad-dht). In every mode, a
    #: key with no namespace whose value is a PeerId (the reference
    #: program's namespace record) must carry the sender's own PeerId, or
    #: repeat the value held: no one can point a namespace at another peer,
    #: and each peer may announce itself (last writer wins)
    unvalidated_records: str = "owner"
    # -- read limits, diverse answers and per-publisher records (rust and go
    # have none of these)
    #: FIND_NODE, GET_VALUE and GET_PROVIDERS requests served per peer per
    #: second, all three from one token bucket per peer (of
    #: rate_limit_burst_seconds' worth: 1,000 requests by default); over
    #: it the request's stream is reset. A lookup asks one server a request
    #: or two, so an honest client, even one running hundreds of lookups at
    #: once, stays far below it. 0 turns the limit off
    max_reads_per_peer_per_second: float = 200.0
    #: the closer peers of an answer (FIND_NODE, GET_VALUE, GET_PROVIDERS)
    #: hold at most this many peers of one IP group (IPv4 /16, IPv6 /32, as
    #: for the routing table, non-public addresses exempt unless
    #: ``ip_group_limits_everywhere``) while peers of other groups are at
    #: hand among the closest 4k + 1: those are taken first in distance
    #: order, then the rest fill the answer up to k. One network's many
    #: identities ground near a key do not make up a whole answer. 0: off
    max_answer_peers_per_ip_group: int = 2
    #: records one publisher (the authenticated sender of the PUT_VALUE that
    #: stored them) may have stored here at once, whatever its address
    #: (loopback and private ones too): one identity cannot fill the store,
    #: not even from the LAN. Replicas of held values cost nothing, a new
    #: value counts for its sender. Equal to max_records_per_ip_group, so
    #: that a neighbour's hourly replication still fits. 0 turns it off
    max_records_per_peer: int = 256


class Quorum:
    """How many peers must store a record, counted against k as rust does."""

    ONE = "one"
    MAJORITY = "majority"
    ALL = "all"

    @staticmethod
    def count(quorum: str | int, k: int) -> int:
        if quorum == Quorum.ONE:
            return 1
        if quorum == Quorum.MAJORITY:
            return k // 2 + 1
        if quorum == Quorum.ALL:
            return k
        if isinstance(quorum, int) and quorum >= 1:
            return min(quorum, k)
        raise ValueError(f"bad quorum {quorum!r}: one, majority, all or a positive int")
