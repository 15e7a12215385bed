"""Address book: /p2p suffixes, expiry, ordering, bounds and eviction order,
observed addresses; address scopes, what to announce, what we can dial."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast import Ed25519KeyPair, Multiaddr
from kadfast.addrbook import (
    MAX_REPORTERS,
    AddressBook,
    addrs_for_remote,
    dialable_tcp,
    is_loopback,
    is_private,
    is_public,
)

PEERS = [Ed25519KeyPair.from_seed(bytes([i + 1]) * 32).peer_id for i in range(8)]
A, B, C = PEERS[:3]


def M(text):
    return Multiaddr(text)


def tcp(i):
    return M(f"/ip4/1.2.3.{i}/tcp/4001")


def test_add_and_expiry():
    book = AddressBook(default_ttl=10.0)
    book.add(A, [tcp(1), tcp(2)], now=0.0)
    assert A in book and len(book) == 1
    assert set(book.addrs(A, 9.9)) == {tcp(1), tcp(2)}
    assert book.addrs(A, 10.0) == []
    assert A not in book  # reading dropped the expired peer
    book.add(A, [tcp(1)], now=0.0, ttl=5.0)
    book.add(A, [tcp(2)], now=0.0, ttl=20.0)
    assert book.addrs(A, 6.0) == [tcp(2)]


def test_refresh_extends_but_never_shortens():
    book = AddressBook(default_ttl=10.0)
    book.add(A, [tcp(1)], now=0.0, ttl=100.0)
    book.add(A, [tcp(1)], now=1.0, ttl=1.0)
    assert book.addrs(A, 50.0) == [tcp(1)]
    book.add(A, [tcp(1)], now=90.0)  # 100 vs 90 + 10
    assert book.addrs(A, 99.0) == [tcp(1)] and book.addrs(A, 100.0) == []


def test_zero_ttl_and_empty_lists_add_nothing():
    book = AddressBook()
    book.add(A, [tcp(1)], now=0.0, ttl=0.0)
    book.add(B, [], now=0.0)
    assert len(book) == 0 and A not in book and B not in book


def test_p2p_suffix_matching_stripped_other_dropped():
    book = AddressBook()
    book.add(
        A,
        [
            tcp(1).with_peer_id(A),
            tcp(2).with_peer_id(B),  # names another peer: dropped
            M(f"/p2p/{A}"),  # no transport left: dropped
            tcp(1),  # duplicate after stripping
            M(f"/ip4/5.6.7.8/tcp/1/p2p/{B}/p2p-circuit"),  # a relay address: kept whole
            M(f"/ip4/5.6.7.8/tcp/1/p2p/{B}/p2p-circuit/p2p/{A}"),  # same relay address with our suffix
        ],
        now=0.0,
    )
    assert sorted(map(str, book.addrs(A, 1.0))) == sorted([str(tcp(1)), f"/ip4/5.6.7.8/tcp/1/p2p/{B}/p2p-circuit"])
    book.remove_addr(A, tcp(1).with_peer_id(A))
    assert book.addrs(A, 1.0) == [M(f"/ip4/5.6.7.8/tcp/1/p2p/{B}/p2p-circuit")]
    book.mark_connected(A, tcp(9).with_peer_id(B), now=1.0)  # ignored
    assert tcp(9) not in book.addrs(A, 1.0)


def test_order_connected_first_then_most_recent():
    book = AddressBook()
    book.add(A, [tcp(1)], now=0.0)
    book.add(A, [tcp(2)], now=1.0)
    book.add(A, [tcp(3)], now=2.0)
    assert book.addrs(A, 3.0) == [tcp(3), tcp(2), tcp(1)]
    book.mark_connected(A, tcp(1), now=3.0)
    book.add(A, [tcp(2)], now=4.0)  # a lookup confirms tcp(2) later
    assert book.addrs(A, 5.0) == [tcp(1), tcp(2), tcp(3)]
    book.mark_connected(A, tcp(3), now=6.0)
    assert book.addrs(A, 7.0) == [tcp(3), tcp(1), tcp(2)]
    entries = book.entries(A, 7.0)
    assert [e.addr for e in entries] == [tcp(3), tcp(1), tcp(2)]
    assert entries[0].connected_at == 6.0 and entries[0].source == "connected"
    assert entries[2].source == "lookup" and entries[2].connected_at is None


def test_connected_addresses_live_longer():
    book = AddressBook(default_ttl=10.0, connected_ttl=100.0)
    book.add(A, [tcp(1), tcp(2)], now=0.0)
    book.mark_connected(A, tcp(2), now=1.0)
    book.mark_connected(B, tcp(7), now=1.0)  # an address that worked and was unknown
    assert book.addrs(A, 50.0) == [tcp(2)]
    assert book.addrs(B, 50.0) == [tcp(7)]


def test_per_peer_bound_evicts_the_first_to_expire():
    book = AddressBook(max_addrs_per_peer=3, default_ttl=10.0)
    book.add(A, [tcp(1)], now=0.0, ttl=30.0)
    book.add(A, [tcp(2)], now=0.0, ttl=10.0)
    book.add(A, [tcp(3)], now=0.0, ttl=20.0)
    book.add(A, [tcp(4)], now=1.0, ttl=25.0)  # evicts tcp(2)
    assert set(book.addrs(A, 2.0)) == {tcp(1), tcp(3), tcp(4)}
    book.add(A, [tcp(5)], now=1.0, ttl=5.0)  # would expire first itself: refused
    assert tcp(5) not in book.addrs(A, 2.0)
    book.mark_connected(A, tcp(6), now=2.0)  # a working address always gets in
    assert set(book.addrs(A, 3.0)) == {tcp(1), tcp(4), tcp(6)}
    # a huge batch keeps the first addresses listed
    book.add(B, [tcp(i) for i in range(100)], now=0.0)
    assert set(book.addrs(B, 1.0)) == {tcp(0), tcp(1), tcp(2)}


def test_peer_bound_evicts_least_recently_updated():
    book = AddressBook(max_peers=3)
    for i, p in enumerate(PEERS[:3]):
        book.add(p, [tcp(i)], now=float(i))
    book.add(PEERS[0], [tcp(0)], now=3.0)  # refresh: PEERS[1] is now the oldest
    book.addrs(PEERS[1], 3.0)  # reading is not updating
    book.add(PEERS[3], [tcp(3)], now=4.0)
    assert PEERS[1] not in book and len(book) == 3
    book.mark_connected(PEERS[2], tcp(2), now=5.0)
    book.add(PEERS[4], [tcp(4)], now=6.0)
    assert PEERS[0] not in book
    assert book.peers() == [PEERS[3], PEERS[2], PEERS[4]]


def test_remove_and_sweep():
    book = AddressBook(default_ttl=10.0)
    book.add(A, [tcp(1), tcp(2)], now=0.0)
    book.add(B, [tcp(3)], now=0.0, ttl=100.0)
    book.add(C, [tcp(4)], now=5.0)
    assert book.sweep(12.0) == 2
    assert A not in book and B in book and C in book
    book.remove(B)
    book.remove(B)
    book.remove_addr(C, tcp(4))
    book.remove_addr(C, tcp(4))
    assert len(book) == 0 and book.sweep(1000.0) == 0


@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 40), st.floats(0, 50), st.booleans()), max_size=80))
def test_bounds_always_hold(ops):
    book = AddressBook(max_addrs_per_peer=4, max_peers=5, default_ttl=20.0)
    now = 0.0
    for peer_i, addr_i, ttl, connected in ops:
        now += 1.0
        if connected:
            book.mark_connected(PEERS[peer_i], tcp(addr_i), now)
            assert book.addrs(PEERS[peer_i], now)[0] == tcp(addr_i)
        else:
            book.add(PEERS[peer_i], [tcp(addr_i)], now, ttl=ttl)
        assert len(book) <= 5
        for p in book.peers():
            assert book.held(p) <= 4
    for p in list(book.peers()):
        assert all(e.expires > now + 1 for e in book.entries(p, now + 1))


def test_observed_addresses():
    book = AddressBook(min_observers=2, observed_ttl=100.0, max_observed=3)
    ours = M("/ip4/8.8.4.4/tcp/4001")
    other = M("/ip4/9.9.9.9/tcp/4001")
    book.set_observed(ours.with_peer_id(A), A, now=0.0)  # a /p2p suffix is ignored
    book.set_observed(ours, A, now=1.0)  # the same reporter counts once
    assert book.observed(now=2.0) == []
    book.set_observed(ours, B, now=2.0)
    book.set_observed(other, A, now=2.0)
    book.set_observed(other, B, now=3.0)
    book.set_observed(other, C, now=3.0)
    assert book.observed(now=4.0) == [other, ours]  # most reported first
    assert book.observed(now=101.5) == [other]  # A's and B's reports of ours expired
    assert book.observed() == [other, ours]  # no time: all reports
    # bounded: a fourth address evicts the least confirmed
    for i in range(3):
        book.set_observed(M(f"/ip4/7.7.7.{i}/tcp/1"), A, now=50.0)
    assert len(book.observed_held()) == 3 and other in book.observed_held()
    book.sweep(1000.0)
    assert book.observed() == []


def test_observed_reporters_are_bounded_and_the_stalest_report_goes():
    # each address keeps at most MAX_REPORTERS reporters; a new one evicts the
    # one whose latest report is the oldest (a reporter that reported again
    # is fresh, whenever it first reported)
    n = MAX_REPORTERS
    many = [Ed25519KeyPair.from_seed(bytes([7, i]) * 16).peer_id for i in range(n + 1)]
    book = AddressBook(min_observers=n, observed_ttl=100.0)
    ours = M("/ip4/8.8.4.4/tcp/4001")
    for i in range(n):
        book.set_observed(ours, many[i], now=float(i))
    book.set_observed(ours, many[0], now=float(n))  # the first reporter again
    book.set_observed(ours, many[n], now=float(n + 1))  # one too many: many[1] (t=1) goes
    assert book.observed() == [ours]  # still n reporters
    # 100 s after t=1.5 every kept report is younger than the TTL: many[0]
    # kept its new report, and many[1]'s old one is gone
    assert book.observed(now=101.5) == [ours]
    assert book.observed(now=102.5) == []  # now many[2]'s has expired: n - 1 left
    book.sweep(163.5)  # the sweep drops the expired ones, stalest first
    book.set_observed(ours, many[1], now=163.5)
    assert book.observed() == []  # many[0] (t=64), many[n] (t=65), many[1]: three


def test_observed_default_needs_one_reporter():
    book = AddressBook()
    book.set_observed(M("/ip4/8.8.4.4/tcp/4001"), A, now=0.0)
    assert book.observed(0.0) == [M("/ip4/8.8.4.4/tcp/4001")]


# -- scopes ----------------------------------------------------------------

# address, loopback, private, public
SCOPES = [
    ("/ip4/127.0.0.1/tcp/1", True, False, False),
    ("/ip4/127.8.9.10/tcp/1", True, False, False),
    ("/ip6/::1/tcp/1", True, False, False),
    ("/ip6/::ffff:127.0.0.1/tcp/1", True, False, False),
    ("/dns4/localhost/tcp/1", True, False, False),
    ("/dns/foo.localhost/tcp/1", True, False, False),
    ("/unix/tmp/kad.sock", True, False, False),
    ("/memory/1234", True, False, False),
    ("/ip4/10.1.2.3/tcp/1", False, True, False),
    ("/ip4/172.16.0.1/tcp/1", False, True, False),
    ("/ip4/172.31.255.255/tcp/1", False, True, False),
    ("/ip4/192.168.1.101/tcp/1", False, True, False),
    ("/ip4/100.64.0.1/tcp/1", False, True, False),
    ("/ip4/100.127.255.254/tcp/1", False, True, False),
    ("/ip4/169.254.1.1/tcp/1", False, True, False),
    ("/ip6/fe80::1/tcp/1", False, True, False),
    ("/ip6zone/eth0/ip6/fe80::1/tcp/1", False, True, False),
    ("/ip6/fd00::1/tcp/1", False, True, False),
    ("/ip6/fc12::1/udp/1/quic-v1", False, True, False),
    ("/ip6/::ffff:192.168.0.1/tcp/1", False, True, False),
    ("/dns/printer.local/tcp/1", False, True, False),
    ("/dns/nas.home.arpa/tcp/1", False, True, False),
    ("/ip4/0.0.0.0/tcp/1", False, False, False),
    ("/ip6/::/tcp/1", False, False, False),
    ("/ip4/192.0.2.1/tcp/1", False, False, False),
    ("/ip6/2001:db8::1/tcp/1", False, False, False),
    ("/ip4/224.0.0.1/udp/1", False, False, False),
    ("/ip4/172.32.0.1/tcp/1", False, False, True),
    ("/ip4/100.128.0.1/tcp/1", False, False, True),
    ("/ip4/8.8.8.8/tcp/1", False, False, True),
    ("/ip4/1.2.3.4/udp/4001/quic-v1", False, False, True),
    ("/ip6/2606:4700::1111/tcp/1", False, False, True),
    ("/ip6/2001::1/udp/123/quic-v1", False, False, True),
    ("/dns/example.com/tcp/443/wss", False, False, True),
    ("/dns4/bootstrap.libp2p.io/tcp/4001", False, False, True),
    ("/dnsaddr/bootstrap.libp2p.io", False, False, True),
    ("/dns/LOCALHOST./tcp/1", True, False, False),
    (f"/p2p/{PEERS[0]}/p2p-circuit", False, False, True),
]


@pytest.mark.parametrize("text,loopback,private,public", SCOPES)
def test_scopes(text, loopback, private, public):
    a = M(text)
    assert (is_loopback(a), is_private(a), is_public(a)) == (loopback, private, public)


def test_addrs_for_remote_matches_go_filter():
    lh = M("/ip4/127.0.0.1/udp/123/quic-v1")
    priv = M("/ip4/192.168.1.101/tcp/123")
    pub = M("/ip6/2001::1/udp/123/quic-v1")
    pub_dns = M("/dns/example.com/udp/123/quic-v1")
    priv_dns = M("/dns4/localhost/udp/123/quic-v1")
    unspec = M("/ip4/0.0.0.0/tcp/1")
    ours = [lh, priv, pub, pub_dns, priv_dns, unspec]
    assert addrs_for_remote(ours, lh) == ours
    assert addrs_for_remote(ours, priv) == [priv, pub, pub_dns]
    assert addrs_for_remote(ours, M("/ip4/100.64.1.1/tcp/5")) == [priv, pub, pub_dns]
    assert addrs_for_remote(ours, pub) == [pub, pub_dns]
    assert addrs_for_remote(ours, M("/ip4/8.8.8.8/tcp/9")) == [pub, pub_dns]
    assert addrs_for_remote([], pub) == []


@pytest.mark.parametrize(
    "text,ok",
    [
        ("/ip4/1.2.3.4/tcp/4001", True),
        ("/ip6/::1/tcp/4001", True),
        ("/dns/example.com/tcp/4001", True),
        ("/dns4/example.com/tcp/4001", True),
        ("/dns6/example.com/tcp/4001", True),
        (f"/ip4/1.2.3.4/tcp/4001/p2p/{PEERS[0]}", True),
        ("/ip4/1.2.3.4/tcp/0", False),
        ("/ip4/0.0.0.0/tcp/4001", False),
        ("/ip6/::/tcp/4001", False),
        ("/ip4/1.2.3.4/tcp/4001/ws", False),
        ("/ip4/1.2.3.4/tcp/443/wss", False),
        ("/ip4/1.2.3.4/udp/4001/quic-v1", False),
        ("/ip4/1.2.3.4/udp/4001", False),
        ("/dnsaddr/bootstrap.libp2p.io", False),
        (f"/ip4/1.2.3.4/tcp/1/p2p/{PEERS[0]}/p2p-circuit", False),
        (f"/ip4/1.2.3.4/tcp/1/p2p/{PEERS[0]}/p2p-circuit/p2p/{PEERS[1]}", False),
        ("/ip4/1.2.3.4", False),
        ("/ip6zone/eth0/ip6/fe80::1/tcp/1", False),
        ("/unix/tmp/x", False),
        ("/ip4/1.2.3.4/tcp/1/ip4/5.6.7.8/tcp/2", False),
    ],
)
def test_dialable_tcp(text, ok):
    assert dialable_tcp(M(text)) is ok


def test_a_full_book_spares_the_peers_that_keep_says_are_needed():
    from kadfast import Ed25519KeyPair
    book = AddressBook(max_peers=3)
    peers = [Ed25519KeyPair.generate().peer_id for _ in range(6)]
    needed = peers[0]
    book.keep = lambda p: p == needed
    addr = Multiaddr("/ip4/10.0.0.1/tcp/1")
    for p in peers:
        book.add(p, [addr], now=0.0)
    assert needed in book and len(book) == 3
    assert book.addrs(needed, 0.0) == [addr]
    assert peers[1] not in book and peers[5] in book
    book.keep = lambda p: True  # even if everything is needed, the bound holds
    book.add(Ed25519KeyPair.generate().peer_id, [addr], now=0.0)
    assert len(book) == 3


def test_announced_addresses_must_be_plausible():
    """A peer that came from a public IP is believed only for addresses on
    that IP: an identity announcing a victim's address is not handed out.
    Loopback and private peers are taken at their word."""
    from kadfast.addrbook import plausible_addrs

    mine = [M("/ip4/5.6.7.8/tcp/4001"), M("/ip4/5.6.7.8/udp/4001/quic-v1")]
    victim = [M("/ip4/9.9.9.9/tcp/80"), M("/dns4/victim.example/tcp/443"), M("/ip6/2a00:1450::1/tcp/1")]
    assert plausible_addrs(mine + victim, M("/ip4/5.6.7.8/tcp/50000")) == mine
    assert plausible_addrs(victim, M("/ip4/5.6.7.8/tcp/50000")) == []
    v6 = M("/ip6/2a00:1450::1/tcp/4001")
    assert plausible_addrs([v6, mine[0]], M("/ip6/2a00:1450:0::1/tcp/9")) == [v6]
    for local in (M("/ip4/127.0.0.1/tcp/9"), M("/ip4/192.168.1.2/tcp/9"), None):
        assert plausible_addrs(mine + victim, local) == mine + victim



_ORACLE_NETS = {
    "loopback": [ipaddress.ip_network("127.0.0.0/8")],
    "private": [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                  "100.64.0.0/10", "169.254.0.0/16")],
    "unroutable": [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15",
                                                     "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4",
                                                     "240.0.0.0/4")],
}


@given(st.integers(0, 2**32 - 1))
def test_ipv4_scopes_match_the_ipaddress_networks(n):
    # the IPv4 scope is worked out on integers; ipaddress is the oracle
    ip = ipaddress.IPv4Address(n)
    kind = next((k for k, nets in _ORACLE_NETS.items() if any(ip in net for net in nets)), "public")
    a = M(f"/ip4/{ip}/tcp/1")
    assert (is_loopback(a), is_private(a), is_public(a)) == (kind == "loopback", kind == "private", kind == "public")
