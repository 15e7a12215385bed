"""Namespaces on top of the DHT: announce membership, discover the members,
and talk to them with JSON request/response.

Membership is announced two ways:

- as a **provider record** under the sha2-256 multihash of the namespace:
  provider records accumulate (up to 20 per key and node), so every member is
  found, and js/go peers accept the key;
- in the **reference form** of the original program: a record whose key is the
  namespace bytes and whose value is the member's PeerId bytes. One record per
  key and node means later announcers overwrite earlier ones, but it lets
  peers running the original program and kadfast peers find each other.

Provider records outlive their makers (48 h), so discovery treats providers as
candidates: each is dialed with a short timeout and only those that answer
count.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, Awaitable, Callable, Iterable

from .errors import BootstrapError, DialError, NoPeersInNamespace, PeerIdError
from .kad.node import Config, KadError, KadNode, NoKnownPeers, NotFound, Quorum
from .keys import Ed25519KeyPair, load_or_create_keypair
from .multiaddr import Multiaddr
from .net import HostConfig
from .peerid import PeerId
from .reqresp import DEFAULT_PROTOCOL, JsonRequestResponse
from .store import Record, RecordStore

log = logging.getLogger("kadfast.client")

__all__ = [
    "Client",
    "BootstrapError",
    "NoPeersInNamespace",
    "namespace_provider_key",
    "namespace_record_key",
    "parse_bootstrap",
]


def namespace_provider_key(namespace: str) -> bytes:
    """The provider key of a namespace: the sha2-256 multihash of its UTF-8 bytes."""
    return b"\x12\x20" + hashlib.sha256(namespace.encode()).digest()


def namespace_record_key(namespace: str) -> bytes:
    """The reference program's record key: the namespace bytes themselves."""
    return namespace.encode()


def parse_bootstrap(addrs: Iterable[str | Multiaddr]) -> list[tuple[PeerId, Multiaddr]]:
    out = []
    for a in addrs:
        m = a if isinstance(a, Multiaddr) else Multiaddr(a)
        pid = m.peer_id()
        if pid is None:
            raise BootstrapError(f"bootstrap address {m} must end with /p2p/<peer id>")
        out.append((pid, m.without_peer_id()))
    return out


Handler = Callable[[PeerId, Any], Awaitable[Any]]


class Client:
    """A DHT node that belongs to (or looks into) a namespace.

    ``async with Client(bootstrap=[...], namespace="chat") as client:`` joins
    the DHT through the bootstrap nodes and, when ``announce`` is true (the
    default when a namespace is given), announces itself in the namespace and
    answers JSON requests (by default with ``{"peer": <its id>, "echo": <request>}``).
    """

    def __init__(
        self,
        bootstrap: Iterable[str | Multiaddr] = (),
        namespace: str | None = None,
        *,
        keypair: Ed25519KeyPair | None = None,
        key_file: str | None = None,
        listen: Iterable[str] = ("/ip4/0.0.0.0/tcp/0",),
        external_addrs: Iterable[str] = (),
        announce: bool | None = None,
        protocol: str = DEFAULT_PROTOCOL,
        kad_config: Config | None = None,
        host_config: HostConfig | None = None,
        store: RecordStore | None = None,
        request_timeout: float = 10.0,
        probe_timeout: float = 3.0,
        bootstrap_timeout: float = 30.0,
        handler: Handler | None = None,
    ) -> None:
        if keypair is None and key_file is not None:
            keypair = load_or_create_keypair(key_file)
        self.bootstrap_peers = parse_bootstrap(bootstrap)
        self.namespace = namespace
        self.announce_self = bool(namespace) if announce is None else announce
        hc = host_config or HostConfig()
        hc.listen_addrs = list(hc.listen_addrs or listen)
        hc.external_addrs = list(hc.external_addrs or external_addrs)
        self.node = KadNode(keypair, kad_config, host_config=hc, store=store)
        self.peer_id = self.node.peer_id
        self.rr = JsonRequestResponse(self.node.host, protocol=protocol, timeout=request_timeout)
        self.probe_timeout = probe_timeout
        self.bootstrap_timeout = bootstrap_timeout
        #: what answers requests (``async (peer, request) -> reply``) when
        #: the client serves; may be set until :meth:`start`
        self.handler = handler
        self.bootstrapped = False

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        await self.node.start()
        if self.announce_self or self.handler is not None:
            self.serve(self.handler or self._default_handler)
        if self.bootstrap_peers:
            await self.join()
        if self.namespace and self.announce_self:
            await self.announce()

    async def close(self) -> None:
        await self.node.stop()

    async def __aenter__(self) -> "Client":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        return self.node.listen_addrs

    async def join(self) -> int:
        """Connect to the bootstrap nodes (at least one must answer) and run the
        Kademlia bootstrap. Returns the routing-table size."""
        errors = []

        async def connect(pid, addr):
            self.node.add_address(pid, addr)
            try:
                await asyncio.wait_for(self.node.host.dial(pid, [addr]), self.bootstrap_timeout)
                return True
            except (DialError, asyncio.TimeoutError, OSError) as exc:
                errors.append(f"{addr}/p2p/{pid}: {exc or type(exc).__name__}")
                return False

        results = await asyncio.gather(*[connect(p, a) for p, a in self.bootstrap_peers])
        if not any(results):
            raise BootstrapError("no bootstrap node reachable: " + "; ".join(errors))
        try:
            size = await asyncio.wait_for(self.node.bootstrap(), self.bootstrap_timeout)
        except NoKnownPeers as exc:
            raise BootstrapError(str(exc)) from None
        except asyncio.TimeoutError:
            # a bootstrap node answered; lookups slowed by dead peers need not
            # hold the caller up (rust runs its bootstrap in the background)
            size = len(self.node.table)
            log.info("bootstrap still incomplete after %.0fs; going on with %d peers", self.bootstrap_timeout, size)
        self.bootstrapped = True
        return size

    # -- namespace -----------------------------------------------------------
    async def announce(self) -> None:
        """Announce membership: a provider record (all members are found) and
        the reference-form record (found by the original program)."""
        ns = self._need_namespace()
        sent = await self.node.provide(namespace_provider_key(ns))
        try:
            await self.node.put_record(Record(namespace_record_key(ns), self.peer_id.to_bytes()), Quorum.ONE)
        except KadError as exc:
            log.info("reference-form record for %r not stored: %s", ns, exc)
        log.info("announced in %r (provider record sent to %d peers)", ns, sent)

    async def candidates(self) -> list[PeerId]:
        """Peers that claim membership (providers and reference records), not
        yet checked; ourselves excluded."""
        ns = self._need_namespace()
        found: list[PeerId] = []
        try:
            providers = await self.node.get_providers(namespace_provider_key(ns))
            found.extend(p for p in providers if p != self.peer_id)
        except NoKnownPeers:
            pass
        try:
            res = await self.node.get_record(namespace_record_key(ns), quorum=self.node.config.k)
            for pr in res.records:
                try:
                    pid = PeerId(pr.record.value)
                except PeerIdError:
                    continue
                if pid != self.peer_id and pid not in found:
                    found.append(pid)
        except (NotFound, NoKnownPeers):
            pass
        return found

    async def peers(self, limit: int | None = None) -> list[PeerId]:
        """Members that answer: each candidate is dialed with a short timeout."""
        candidates = await self.candidates()

        async def probe(pid):
            try:
                await asyncio.wait_for(self.node.host.dial(pid), self.probe_timeout)
                return pid
            except (DialError, asyncio.TimeoutError, OSError):
                return None

        alive = [p for p in await asyncio.gather(*[probe(p) for p in candidates]) if p is not None]
        return alive[:limit] if limit is not None else alive

    async def connect_to_peer(self) -> PeerId:
        """A connected member of the namespace (the reference ``connect_to_peer``)."""
        peers = await self.peers(limit=1)
        if not peers:
            raise NoPeersInNamespace(f"no peer of namespace {self.namespace!r} answered")
        return peers[0]

    # -- requests ------------------------------------------------------------
    async def request(self, peer: PeerId, obj: Any, timeout: float | None = None) -> Any:
        return await self.rr.request(peer, obj, timeout=timeout)

    def serve(self, handler: Handler | None) -> None:
        """Answer JSON requests with ``handler(peer_id, request) -> response``."""
        self.rr.set_handler(handler)

    async def _default_handler(self, peer: PeerId, request: Any) -> Any:
        return {"peer": str(self.peer_id), "echo": request}

    def _need_namespace(self) -> str:
        if not self.namespace:
            raise ValueError("this client has no namespace")
        return self.namespace
