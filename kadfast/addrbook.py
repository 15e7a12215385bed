"""The address book: where other peers can be reached, and where they see us.

Addresses come from lookups (closer peers in kad replies), identify, and
connections that worked. Each address has an expiry; one that worked is
kept longer and listed first. Every limit is bounded: addresses per peer
(evicting the one expiring first), peers in total (evicting the least
recently updated peer, O(1) with an ``OrderedDict``), and our own observed
addresses.

Peer addresses are stored without a trailing ``/p2p/<peer>``: a matching
suffix is stripped, and an address whose ``/p2p`` names another peer is
dropped (as rust-libp2p does).

Also here: classification of addresses by scope (loopback, private, public)
in the spirit of go-multiaddr's ``manet`` helpers, the choice of our
addresses to announce to a given peer, and the test for a plain TCP address
that kadfast can dial.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from .multiaddr import Multiaddr
from .peerid import PeerId

__all__ = [
    "AddressBook",
    "AddrEntry",
    "DEFAULT_TTL",
    "CONNECTED_TTL",
    "OBSERVED_TTL",
    "MAX_OBSERVED_ADDRS",
    "is_public",
    "is_private",
    "is_loopback",
    "addrs_for_remote",
    "dialable_quic",
    "dialable_tcp",
    "ip_prefix",
    "ip_group",
    "ip_subnets",
]

#: How long an address learned from a lookup or identify is kept (go-libp2p's
#: peerstore keeps "temporary" addresses much less, "recently connected" 15 min;
#: kad peers reappear through lookups, so an hour suffices).
DEFAULT_TTL = 3600.0
#: How long an address that worked is kept after it was last confirmed.
CONNECTED_TTL = 4 * 3600.0
#: How long an observation of our own address counts.
OBSERVED_TTL = 1800.0
#: Distinct observed addresses of ourselves that we track.
MAX_OBSERVED_ADDRS = 32
#: Distinct reporters remembered per observed address (enough to rank them).
MAX_REPORTERS = 64


@dataclass(frozen=True, slots=True)
class AddrEntry:
    addr: Multiaddr
    expires: float
    last_seen: float
    connected_at: float | None
    source: str


class _Entry:
    __slots__ = ("expires", "last_seen", "connected_at", "source")

    def __init__(self, expires: float, last_seen: float, source: str) -> None:
        self.expires = expires
        self.last_seen = last_seen
        self.connected_at: float | None = None
        self.source = source

    def rank(self) -> tuple[float, float]:
        # Addresses that worked first (most recent connection first), then the
        # others by when they were last confirmed.
        connected = self.connected_at if self.connected_at is not None else float("-inf")
        return (connected, self.last_seen)


class _Book(dict[Multiaddr, _Entry]):
    """One peer's addresses (``{addr: _Entry}``), with what the readers cache:
    ``version`` changes (to a number never used before, by any book) whenever
    an address is added, dropped or re-ranked; ``ordered`` is the sorted
    address tuple of that version (None until asked for); ``min_expires``
    is a lower bound of the entries' expiry times (no entry expired while
    ``now`` is below it)."""

    __slots__ = ("version", "ordered", "min_expires")
    version: int
    ordered: tuple[Multiaddr, ...] | None
    min_expires: float


def _normalize(peer: PeerId, addr: Multiaddr) -> Multiaddr | None:
    owner = addr.peer_id()
    if owner is not None:
        if owner != peer:
            return None
        addr = addr.without_peer_id()
    if not len(addr):
        return None  # a bare /p2p/<peer> names no transport
    return addr


class AddressBook:
    """Addresses of other peers with expiry, plus our own observed addresses.

    Not thread-safe; every method that depends on time takes ``now``.
    """

    def __init__(
        self,
        *,
        max_addrs_per_peer: int = 16,
        max_peers: int = 10000,
        default_ttl: float = DEFAULT_TTL,
        connected_ttl: float = CONNECTED_TTL,
        observed_ttl: float = OBSERVED_TTL,
        min_observers: int = 1,
        max_observed: int = MAX_OBSERVED_ADDRS,
    ) -> None:
        if max_addrs_per_peer < 1 or max_peers < 1 or max_observed < 1 or min_observers < 1:
            raise ValueError("address book limits must be at least 1")
        self.max_addrs_per_peer = max_addrs_per_peer
        self.max_peers = max_peers
        self.default_ttl = default_ttl
        self.connected_ttl = connected_ttl
        self.observed_ttl = observed_ttl
        self.min_observers = min_observers
        self.max_observed = max_observed
        # peer -> {addr: _Entry}; order = least recently updated first
        self._peers: OrderedDict[PeerId, _Book] = OrderedDict()
        # our address -> {reporter: last report time}
        self._observed: dict[Multiaddr, dict[PeerId, float]] = {}
        self._versions = itertools.count(1)
        #: peers that ``keep(peer)`` says are needed (e.g. routing-table
        #: entries) are spared when the book is full and evicts
        self.keep: Callable[[PeerId], bool] | None = None

    # -- peers' addresses -------------------------------------------------

    def _changed(self, book: _Book) -> None:
        """``book`` changed: a new version, its cached order forgotten."""
        book.version = next(self._versions)
        book.ordered = None

    def _book(self, peer: PeerId) -> _Book:
        book = self._peers.get(peer)
        if book is None:
            book = self._peers[peer] = _Book()
            book.min_expires = float("inf")
            self._changed(book)
            tries = 0
            while len(self._peers) > self.max_peers:
                victim, vbook = self._peers.popitem(last=False)
                if self.keep is not None and tries < self.max_peers and self.keep(victim):
                    self._peers[victim] = vbook  # spared: back at the recent end
                    tries += 1
                    continue
                self._changed(vbook)
        else:
            self._peers.move_to_end(peer)
        return book

    def _put(
        self, book: _Book, addr: Multiaddr, expires: float, now: float, source: str
    ) -> _Entry | None:
        entry = book.get(addr)
        self._changed(book)  # a refresh may re-rank the addresses, too
        if entry is not None:
            entry.expires = max(entry.expires, expires)
            entry.last_seen = now
            entry.source = source
            return entry
        if len(book) >= self.max_addrs_per_peer:
            victim = min(book, key=lambda a: book[a].expires)
            if book[victim].expires >= expires:
                return None  # the newcomer would be (among) the first to expire
            del book[victim]
        entry = book[addr] = _Entry(expires, now, source)
        if expires < book.min_expires:
            book.min_expires = expires
        return entry

    def add(
        self,
        peer: PeerId,
        addrs: Iterable[Multiaddr],
        now: float,
        ttl: float | None = None,
        source: str = "lookup",
    ) -> None:
        """Learn addresses of ``peer`` valid for ``ttl`` seconds (default
        ``default_ttl``); known ones are refreshed (never shortened). A ttl
        <= 0 adds nothing."""
        ttl = self.default_ttl if ttl is None else ttl
        if ttl <= 0:
            return
        usable: dict[Multiaddr, None] = {}  # ordered set; a peer lists its best first
        for given in addrs:
            addr = _normalize(peer, given)
            if addr is not None:
                usable[addr] = None
                if len(usable) >= self.max_addrs_per_peer:
                    break
        if not usable:
            return
        book = self._book(peer)
        for addr in usable:
            self._put(book, addr, now + ttl, now, source)

    def mark_connected(self, peer: PeerId, addr: Multiaddr, now: float) -> None:
        """``addr`` worked for ``peer``: list it first, keep it ``connected_ttl``."""
        norm = _normalize(peer, addr)
        if norm is None:
            return
        book = self._book(peer)
        entry = book.get(norm)
        if entry is None and len(book) >= self.max_addrs_per_peer:
            # A working address always gets in: evict the one expiring first.
            del book[min(book, key=lambda a: book[a].expires)]
        entry = self._put(book, norm, now + self.connected_ttl, now, "connected")
        assert entry is not None  # there is room: made above
        entry.connected_at = now

    def _live(self, peer: PeerId, now: float) -> _Book | None:
        book = self._peers.get(peer)
        if book is None or now < book.min_expires:
            return book
        expired = [a for a, e in book.items() if e.expires <= now]
        for a in expired:
            del book[a]
        if expired:
            self._changed(book)
        if not book:
            del self._peers[peer]
            return None
        book.min_expires = min(e.expires for e in book.values())
        return book

    def addrs(self, peer: PeerId, now: float) -> list[Multiaddr]:
        """Unexpired addresses of ``peer``, the best first (those that worked,
        most recent first, then by last confirmation). Drops expired ones."""
        book = self._live(peer, now)
        if book is None:
            return []
        ordered = book.ordered
        if ordered is None:
            ordered = book.ordered = tuple(sorted(book, key=lambda a: book[a].rank(), reverse=True))
        return list(ordered)

    def book(self, peer: PeerId, now: float) -> _Book | None:
        """The unexpired addresses of ``peer`` as a live view (None when it
        has none): a dict ``{addr: entry}`` whose ``version`` changes
        whenever :meth:`addrs` may give another answer (also when the peer
        is dropped from the book), and which holds at least until ``now``
        reaches its ``min_expires``. For caches; do not modify it."""
        return self._live(peer, now)

    def version(self, peer: PeerId, now: float) -> int:
        """A number that changes whenever :meth:`addrs` of ``peer`` may give
        another answer (an address added, dropped, expired or re-ranked);
        never reused, never 0; 0 when ``peer`` has no unexpired address. For
        caches of things derived from a peer's addresses."""
        book = self._live(peer, now)
        return 0 if book is None else book.version

    def entries(self, peer: PeerId, now: float) -> list[AddrEntry]:
        """Like :meth:`addrs`, with each address's bookkeeping."""
        book = self._live(peer, now)
        if book is None:
            return []
        return [
            AddrEntry(a, e.expires, e.last_seen, e.connected_at, e.source)
            for a, e in sorted(book.items(), key=lambda item: item[1].rank(), reverse=True)
        ]

    def remove(self, peer: PeerId) -> None:
        book = self._peers.pop(peer, None)
        if book is not None:
            self._changed(book)

    def remove_addr(self, peer: PeerId, addr: Multiaddr) -> None:
        norm = _normalize(peer, addr)
        book = self._peers.get(peer)
        if book is None or norm is None:
            return
        if book.pop(norm, None) is not None:
            self._changed(book)
        if not book:
            del self._peers[peer]

    def sweep(self, now: float) -> int:
        """Drop expired addresses (and peers left without any), and expired
        observations of ourselves; returns the number of peer addresses dropped."""
        dropped = 0
        for peer in list(self._peers):
            book = self._peers[peer]
            expired = [a for a, e in book.items() if e.expires <= now]
            for a in expired:
                del book[a]
            if expired:
                self._changed(book)
            dropped += len(expired)
            if not book:
                del self._peers[peer]
        self._sweep_observed(now)
        return dropped

    def peers(self) -> list[PeerId]:
        """Peers with addresses (some may have expired since the last sweep),
        least recently updated first."""
        return list(self._peers)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def held(self, peer: PeerId) -> int:
        """How many addresses are held for ``peer``, expired ones not yet
        swept included: what the per-peer bound limits."""
        book = self._peers.get(peer)
        return 0 if book is None else len(book)

    def observed_held(self) -> list[Multiaddr]:
        """Every address of ours that some peer reported and that is held
        (confirmed or not): what ``max_observed`` bounds."""
        return list(self._observed)

    # -- our own observed addresses --------------------------------------

    def set_observed(self, addr: Multiaddr, reporter: PeerId, now: float) -> None:
        """``reporter`` sees us at ``addr`` (identify's observedAddr).

        Each address's reporters are kept in the order of their latest
        report (``now`` does not go back), so the stalest one is the first
        and the latest report the last: every accepted connection reports,
        and none of this walks the reporters."""
        addr = addr.without_peer_id()
        if not len(addr):
            return
        observed = self._observed
        reporters = observed.get(addr)
        if reporters is None:
            if len(observed) >= self.max_observed:
                self._sweep_observed(now)
            if len(observed) >= self.max_observed:
                # Evict the least confirmed address, the stalest among equals.
                victim = min(observed, key=lambda a: (len(observed[a]), _latest(observed[a])))
                del observed[victim]
            reporters = observed[addr] = {}
        if reporters.pop(reporter, None) is None and len(reporters) >= MAX_REPORTERS:
            del reporters[next(iter(reporters))]  # the stalest reporter
        reporters[reporter] = now

    def _sweep_observed(self, now: float) -> None:
        cutoff = now - self.observed_ttl
        for addr in list(self._observed):
            reporters = self._observed[addr]
            stale = []
            for peer, t in reporters.items():  # stalest first
                if t > cutoff:
                    break
                stale.append(peer)
            for peer in stale:
                del reporters[peer]
            if not reporters:
                del self._observed[addr]

    def observed(self, now: float | None = None) -> list[Multiaddr]:
        """Our addresses reported by at least ``min_observers`` distinct peers
        (within ``observed_ttl`` of ``now``; all reports when ``now`` is None),
        the most reported first."""
        cutoff = None if now is None else now - self.observed_ttl
        counted = []
        for addr, reporters in self._observed.items():
            n = len(reporters) if cutoff is None else sum(1 for t in reporters.values() if t > cutoff)
            if n >= self.min_observers:
                counted.append((n, _latest(reporters), addr))
        counted.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [addr for _, _, addr in counted]


def _latest(reporters: dict[PeerId, float]) -> float:
    """The time of the latest report (the last: reporters are kept in
    report order)."""
    return next(reversed(reporters.values()))


# -- address scope ---------------------------------------------------------

_net = ipaddress.ip_network

_LOOPBACK = [_net("127.0.0.0/8"), _net("::1/128")]
#: Reachable inside a site or link only.
_PRIVATE = [
    _net("10.0.0.0/8"),  # RFC 1918
    _net("172.16.0.0/12"),  # RFC 1918
    _net("192.168.0.0/16"),  # RFC 1918
    _net("100.64.0.0/10"),  # RFC 6598 carrier-grade NAT
    _net("169.254.0.0/16"),  # RFC 3927 link-local
    _net("fc00::/7"),  # RFC 4193 unique local
    _net("fe80::/10"),  # RFC 4291 link-local
]
#: Not routable on the internet (and not private either): unspecified,
#: documentation, benchmarking, multicast, reserved (go-multiaddr's
#: ``unroutableCIDR4/6`` in spirit).
_UNROUTABLE = [
    _net("0.0.0.0/8"),
    _net("192.0.0.0/24"),
    _net("192.0.2.0/24"),
    _net("198.18.0.0/15"),
    _net("198.51.100.0/24"),
    _net("203.0.113.0/24"),
    _net("224.0.0.0/4"),
    _net("240.0.0.0/4"),
    _net("::/128"),
    _net("100::/64"),
    _net("2001:db8::/32"),
    _net("ff00::/8"),
]
#: Special-use names resolvable only locally (RFC 6761, RFC 8375, common practice).
_LOOPBACK_SUFFIXES = (".localhost",)
_PRIVATE_SUFFIXES = (".local", ".localdomain", ".internal", ".home.arpa", ".lan", ".test", ".invalid", ".example")

_SCOPE_LOOPBACK, _SCOPE_PRIVATE, _SCOPE_UNROUTABLE, _SCOPE_PUBLIC = 0, 1, 2, 3


#: the IPv4 networks above as (scope, network, mask) integers, in the order
#: ``_ip_scope`` tries them: every accepted connection classifies its
#: remote address, most of them IPv4, and ``ipaddress`` is slow at it
_IP4_RANGES = tuple(
    (scope, int(net.network_address), int(net.netmask))
    for nets, scope in ((_LOOPBACK, _SCOPE_LOOPBACK), (_PRIVATE, _SCOPE_PRIVATE), (_UNROUTABLE, _SCOPE_UNROUTABLE))
    for net in nets
    if net.version == 4
)


def _ip4_scope(text: str) -> int:
    """``_ip_scope`` of a dotted-quad IPv4 address, on integers."""
    n = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    for scope, network, mask in _IP4_RANGES:
        if n & mask == network:
            return scope
    return _SCOPE_PUBLIC


def _ip_scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for nets, scope in ((_LOOPBACK, _SCOPE_LOOPBACK), (_PRIVATE, _SCOPE_PRIVATE), (_UNROUTABLE, _SCOPE_UNROUTABLE)):
        for net in nets:
            if ip.version == net.version and ip in net:
                return scope
    return _SCOPE_PUBLIC


def _name_scope(name: str) -> int:
    dotted = "." + name.lower().rstrip(".")
    if dotted.endswith(_LOOPBACK_SUFFIXES):
        return _SCOPE_LOOPBACK
    if dotted.endswith(_PRIVATE_SUFFIXES):
        return _SCOPE_PRIVATE
    return _SCOPE_PUBLIC


_SCOPE_MEMO: dict[tuple, int] = {}


def _scope(addr: Multiaddr) -> int:
    """Scope of the address's first component (memoized per component,
    bounded: every accepted connection asks for its remote address's)."""
    parts = addr.components
    if not parts:
        return _SCOPE_UNROUTABLE
    first = parts[0]
    if first[0].name == "ip6zone":
        return _scope_uncached(addr)  # the /ip6 after the zone decides
    scope = _SCOPE_MEMO.get(first)
    if scope is None:
        scope = _scope_uncached(addr)
        if len(_SCOPE_MEMO) >= 4096:
            _SCOPE_MEMO.clear()
        _SCOPE_MEMO[first] = scope
    return scope


def _scope_uncached(addr: Multiaddr) -> int:
    """Scope of the address's first component: an IP by its network, a DNS
    name by its suffix; /unix and /memory are loopback; anything else (a
    relay's /p2p, onion, garlic) counts as public."""
    for name, value in addr:
        if name == "ip4":
            return _ip4_scope(value)  # type: ignore[arg-type]  # (ip4 has a value)
        if name == "ip6":
            return _ip_scope(ipaddress.ip_address(value))  # type: ignore[arg-type]  # (ip6 has a value)
        if name == "ip6zone":
            continue  # the /ip6 that follows decides
        if name in ("dns", "dns4", "dns6", "dnsaddr"):
            return _name_scope(value)  # type: ignore[arg-type]  # (dns* have a value)
        if name in ("unix", "memory"):
            return _SCOPE_LOOPBACK
        return _SCOPE_PUBLIC
    return _SCOPE_UNROUTABLE  # the empty address


def ip_prefix(ip: str, v4_bits: int, v6_bits: int) -> str | None:
    """The network of ``ip`` with the given prefix length (an IPv4-mapped
    IPv6 address counts as IPv4), e.g. ``"1.2.0.0/16"``; None for what does
    not parse. The groups that per-IP limits count under."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(ipaddress.ip_network((addr, v4_bits if addr.version == 4 else v6_bits), strict=False))


def is_loopback(addr: Multiaddr) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped), ``localhost`` names, /unix, /memory."""
    return _scope(addr) == _SCOPE_LOOPBACK


def is_private(addr: Multiaddr) -> bool:
    """RFC 1918, CGNAT 100.64/10, link-local (v4 and v6), ULA fc00::/7, and
    special-use local names (``.local``, ``.internal``, ``.home.arpa``, ...)."""
    return _scope(addr) == _SCOPE_PRIVATE


def is_public(addr: Multiaddr) -> bool:
    """Globally routable: an IP outside the loopback, private and special
    ranges, or a DNS name other than the local ones."""
    return _scope(addr) == _SCOPE_PUBLIC


def addrs_for_remote(our_addrs: list[Multiaddr], remote_addr: Multiaddr) -> list[Multiaddr]:
    """Our addresses worth announcing to a peer that reached us over
    ``remote_addr``: to a public peer only public ones; to a private peer all
    but loopback; to a loopback peer all. Unroutable addresses (0.0.0.0,
    documentation ranges) go to loopback peers only. Order is kept."""
    remote = _scope(remote_addr)
    if remote == _SCOPE_LOOPBACK:
        return list(our_addrs)
    if remote == _SCOPE_PUBLIC:
        return [a for a in our_addrs if _scope(a) == _SCOPE_PUBLIC]
    return [a for a in our_addrs if _scope(a) in (_SCOPE_PRIVATE, _SCOPE_PUBLIC)]


def plausible_addrs(announced: Iterable[Multiaddr], remote_addr: Multiaddr | None) -> list[Multiaddr]:
    """The addresses a peer announced for itself (identify, ADD_PROVIDER)
    that may be handed to others. A peer that reached us from a public
    address is believed only for addresses on that same IP (any port or
    transport): otherwise any identity could have the DHT send its clients
    to a victim's address. A peer on loopback or a private network is taken
    at its word (local networks and tests), as is one whose address we do
    not know. Order is kept."""
    if remote_addr is None or _scope(remote_addr) != _SCOPE_PUBLIC:
        return list(announced)
    ip = remote_addr.value_for("ip4") or remote_addr.value_for("ip6")
    if ip is None:
        return list(announced)
    seen = ipaddress.ip_address(ip)
    out = []
    for a in announced:
        theirs = a.value_for("ip4") or a.value_for("ip6")
        if theirs is not None and ipaddress.ip_address(theirs) == seen:
            out.append(a)
    return out


_HOSTS = frozenset(("ip4", "ip6", "dns", "dns4", "dns6"))


def dialable_tcp(addr: Multiaddr) -> bool:
    """``/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>`` with an optional trailing
    ``/p2p/<id>`` and nothing else (no ws, quic, circuit); port 0 and the
    unspecified IPs are not dialable."""
    parts = list(addr)
    if len(parts) == 3 and parts[2][0] == "p2p":
        parts = parts[:2]
    if len(parts) != 2:
        return False
    (host, value), (transport, port) = parts
    if host not in _HOSTS or transport != "tcp" or port == "0":
        return False
    if host in ("ip4", "ip6") and ipaddress.ip_address(value).is_unspecified:  # type: ignore[arg-type]
        return False
    return True


def dialable_quic(addr: Multiaddr) -> bool:
    """``/ip4|ip6/<ip>/udp/<port>/quic-v1`` with an optional trailing
    ``/p2p/<id>`` and nothing else (no webtransport, no draft-29 ``/quic``);
    port 0 and the unspecified IPs are not dialable."""
    parts = list(addr)
    if len(parts) == 4 and parts[3][0] == "p2p":
        parts = parts[:3]
    if len(parts) != 3:
        return False
    (host, value), (transport, port), (quic, _) = parts
    if host not in ("ip4", "ip6") or transport != "udp" or quic != "quic-v1" or port == "0":
        return False
    return not ipaddress.ip_address(value).is_unspecified  # type: ignore[arg-type]


def ip_group(ip: str) -> tuple[str | None, bool]:
    """The key an address is counted under for the host's max_connections_per_ip (the
    address itself; an IPv6 address's /64 prefix; an IPv4-mapped IPv6
    address's IPv4 address) and whether it is a loopback address."""
    if ":" not in ip and ip.count(".") == 3:
        try:  # a socket's IPv4 address, canonical already: no ipaddress object
            socket.inet_pton(socket.AF_INET, ip)
        except OSError:
            return None, False
        return ip, ip.startswith("127.")
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return None, False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        else:
            net = ipaddress.IPv6Network((int(addr) >> 64 << 64, 64))
            return str(net), addr.is_loopback
    return str(addr), addr.is_loopback


def ip_subnets(ip: str, group: str) -> tuple[str | None, str | None]:
    """The small and large subnets of an address whose :func:`ip_group` is
    ``group``: IPv4 /24 and /16, IPv6 /48 and /32 (as
    :func:`ip_prefix` writes them)."""
    if "/" not in group:  # IPv4 (an IPv4-mapped address too): the dotted address, canonical
        a, b, c, _ = group.split(".")
        return f"{a}.{b}.{c}.0/24", f"{a}.{b}.0.0/16"
    return ip_prefix(ip, 24, 48), ip_prefix(ip, 16, 32)
