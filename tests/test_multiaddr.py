"""Multiaddr text and binary forms, with known vectors from the multiaddr
implementations' shared test cases."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast import Ed25519KeyPair, Multiaddr, PeerId, decode_many
from kadfast.errors import KadfastError, MultiaddrError

VECTORS = [
    ("/ip4/127.0.0.1/udp/1234", "047f000001910204d2"),
    ("/ip4/127.0.0.1/tcp/4321", "047f0000010610e1"),
    ("/ip4/127.0.0.1/udp/1234/ip4/127.0.0.1/tcp/4321", "047f000001910204d2047f0000010610e1"),
    ("/ip6/2001:8a0:7ac5:4201:3ac9:86ff:fe31:7095", "29200108a07ac542013ac986fffe317095"),
    ("/onion/aaimaq4ygg2iegci:80", "bc030010c0439831b48218480050"),
    (
        "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234",
        "bd03adadec040be047f9658668b11a504f3155001f231a37f54c4476c07fb4cc139ed7e30304d2",
    ),
    ("/dns4/example.com/tcp/443/wss", "360b6578616d706c652e636f6d0601bbde03"),
    ("/ip4/127.0.0.1/tcp/4001/p2p-circuit", "047f000001060fa1a202"),
    ("/ip4/1.2.3.4/udp/4001/quic-v1", "040102030491020fa1cd03"),
]


@pytest.mark.parametrize("text,hexbytes", VECTORS)
def test_known_vectors(text, hexbytes):
    m = Multiaddr(text)
    assert m.to_bytes().hex() == hexbytes
    assert str(Multiaddr.from_bytes(bytes.fromhex(hexbytes))) == text


def test_certhash_vector_binary():
    m = Multiaddr("/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/b2uaraocy6yrdblb4sfptaddgimjmmpy")
    assert m.to_bytes().hex() == "047f000001910204d2cd03d103d20313d501103858f62230ac3c915f300c664312c63f"
    # text comes back in the canonical base64url multibase, same bytes
    again = Multiaddr(str(m))
    assert again == m and str(again).split("/certhash/")[1].startswith("u")


def test_ipfs_alias_and_p2p():
    a = Multiaddr("/ipfs/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC")
    assert a.to_bytes().hex().startswith("a503221220d52ebb89d85b02a284948203a62ff28389c57c9f42beec4ec20db76a68911c0b")
    assert str(a) == "/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC"


@pytest.mark.parametrize(
    "text",
    [
        "/ip6/::1/tcp/8080",
        "/dns/example.com/tcp/80/http",
        "/dns6/ipfs.io/tcp/443/tls/sni/ipfs.io/ws",
        "/dnsaddr/bootstrap.libp2p.io",
        "/ip4/1.2.3.4/udp/443/webrtc-direct/certhash/uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_1aluKR_tpevQ",
        "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWGFc89crWEs66KcMHUcKcqnzkbxzHdB7QtYTE7qEuNgDH/p2p-circuit/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC",
        "/unix/a/b/c/d/e",
        "/ip4/0.0.0.0/udp/0/quic",
        "/ip6zone/x/ip6/fe80::1/tcp/1",
        "/ip4/1.2.3.4/ipcidr/24",
        "/memory/1234",
        "/ip4/1.2.3.4/tcp/80/http/http-path/foo%2Fbar",
        "/ip4/1.2.3.4/tcp/1/webrtc",
        "/ip4/1.2.3.4/tcp/1/noise",
        "/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzuq",
    ],
)
def test_text_binary_round_trip(text):
    m = Multiaddr(text)
    assert str(m) == text
    assert Multiaddr.from_bytes(m.to_bytes()) == m
    assert Multiaddr(str(Multiaddr.from_bytes(m.to_bytes()))) == m


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ip4/1.2.3.4",
        "/ip4/256.0.0.1",
        "/ip4/1.2.3.4/tcp/65536",
        "/ip4/1.2.3.4/tcp",
        "/ip4/1.2.3.4/tcp/-1",
        "/foo/1",
        "/p2p/notapeerid",
        "/onion/aaimaq4ygg2iegci",
        "/onion/aaimaq4ygg2iegci:0",
        "/unix",
        "/dns4/",
        "/" + "dns4/x/" * 1000,
    ],
)
def test_bad_text(text):
    with pytest.raises(MultiaddrError):
        Multiaddr(text)


@pytest.mark.parametrize(
    "hexbytes",
    [
        "",
        "04",  # truncated ip4
        "047f0000",
        "ff7f",  # unknown code (varint 0x3fff)
        "a50303010203",  # p2p value that is no PeerId
        "3602612f",  # dns4 "a/" (a slash in a name)
        "36ff01",  # length past the end
        "8080808080808080808001",  # varint longer than 9 bytes
        "8400",  # non-minimal varint for code 4
    ],
)
def test_bad_binary(hexbytes):
    with pytest.raises(MultiaddrError):
        Multiaddr.from_bytes(bytes.fromhex(hexbytes))


def test_one_bad_address_fails_alone():
    good = Multiaddr("/ip4/1.2.3.4/tcp/1").to_bytes()
    quic = Multiaddr("/ip4/1.2.3.4/udp/1/quic-v1/webtransport").to_bytes()
    addrs, errors = decode_many([good, b"\xff\x7f", quic, b"\x04\x01"])
    assert [str(a) for a in addrs] == ["/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/udp/1/quic-v1/webtransport"]
    assert len(errors) == 2 and all(isinstance(e, MultiaddrError) for e in errors)


def test_encapsulate_decapsulate_and_peer_id():
    pid = Ed25519KeyPair.generate().peer_id
    base = Multiaddr("/ip4/127.0.0.1/tcp/4001")
    full = base.encapsulate(f"/p2p/{pid}")
    assert full.peer_id() == pid
    assert full.without_peer_id() == base
    assert base.with_peer_id(pid) == full
    assert full.with_peer_id(pid) == full
    assert full.decapsulate("p2p") == base
    assert full.decapsulate("/tcp/4001") == Multiaddr("/ip4/127.0.0.1")
    assert full.decapsulate("/udp/1") == full
    assert base.peer_id() is None
    assert full.value_for("tcp") == "4001" and full.value_for("udp") is None
    assert full.protocols() == ["ip4", "tcp", "p2p"]
    assert list(base) == [("ip4", "127.0.0.1"), ("tcp", "4001")]
    udp = Multiaddr("/ip4/127.0.0.1/udp/1234").encapsulate("/udp/5678")
    assert str(udp) == "/ip4/127.0.0.1/udp/1234/udp/5678"
    assert str(udp.decapsulate("/udp")) == "/ip4/127.0.0.1/udp/1234"
    assert isinstance(full.peer_id(), PeerId)


@given(st.binary(max_size=120))
def test_binary_fuzz_only_multiaddr_errors(data):
    try:
        m = Multiaddr.from_bytes(data)
    except MultiaddrError:
        return
    assert Multiaddr(str(m)).to_bytes() == data


@given(st.text(max_size=60))
def test_text_fuzz_only_multiaddr_errors(text):
    try:
        m = Multiaddr(text)
    except KadfastError as exc:
        assert isinstance(exc, MultiaddrError)
        return
    assert Multiaddr.from_bytes(m.to_bytes()) == m


@pytest.mark.parametrize("hexbytes", ["90030100", "90030b27746d70253246736f636b", "90030b2f746d70250000007f636b047f000001"])
def test_unix_path_must_be_absolute_and_last(hexbytes):
    # found by fuzzing: such values could not survive a round trip through text
    with pytest.raises(MultiaddrError):
        Multiaddr.from_bytes(bytes.fromhex(hexbytes))


def test_unix_path_trailing_slash_survives_text():
    # found by fuzzing: a path ending in "/" lost it when parsed back
    for text in ("/unix/a/b/", "/unix/a//b", "/unix/x"):
        m = Multiaddr(text)
        assert str(m) == text and Multiaddr(str(m)) == m
    assert str(Multiaddr("/ip4/1.2.3.4/tcp/1/")) == "/ip4/1.2.3.4/tcp/1"
    with pytest.raises(MultiaddrError):
        Multiaddr("/unix//")


def test_from_ip_port_matches_text_and_rejects_bad_sockets():
    from kadfast.errors import MultiaddrError

    for host, port in [("127.0.0.1", 4001), ("10.1.2.3", 0), ("::1", 65535), ("fe80::1%eth0", 7), ("2001:db8::5", 80)]:
        m = Multiaddr.from_ip_port(host, port)
        proto = "ip6" if ":" in host else "ip4"
        assert m == Multiaddr(f"/{proto}/{host.split('%')[0]}/tcp/{port}")
        assert Multiaddr.from_bytes(m.to_bytes()) == m
    assert str(Multiaddr.from_ip_port("1.2.3.4", 53, "udp")) == "/ip4/1.2.3.4/udp/53"
    for host, port in [("127.1", 1), ("0x7f.0.0.1", 1), ("host", 1), ("1.2.3.4", 70000), ("1.2.3.4", -1), ("::g", 1)]:
        with pytest.raises(MultiaddrError):
            Multiaddr.from_ip_port(host, port)
