#!/usr/bin/env python3
"""kadfast interop peer built on py-libp2p (PyPI ``libp2p`` 0.8.x).

Speaks the JSON-lines control protocol of ../PROTOCOL.md: requests on stdin,
replies and events on stdout, logs on stderr.  Transport stack: TCP, Noise,
Yamux; protocols served: Kademlia (server mode; ``--client`` for client
mode, which does not serve it), identify, ping and ``/kadfast/json/1.0.0``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import sys
import time
from typing import Any

IMPL = "py"
JSON_PROTOCOL = "/kadfast/json/1.0.0"
PING_PROTOCOL = "/ipfs/ping/1.0.0"
IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"
KAD_PROTOCOL = "/ipfs/kad/1.0.0"
RECORD_NAMESPACE = "kadfast"
DEFAULT_TIMEOUT = 30.0
ADDR_TTL = 24 * 60 * 60  # seconds; peerstore address lifetime for dialed peers
MAX_JSON_BODY = 4 * 1024 * 1024
PER_PEER_TIMEOUT = 10.0
PEERSTORE_MAX_PEERS = 100_000

log = logging.getLogger("kadfast.interop.py")


def emit(obj: dict[str, Any]) -> None:
    """Write one protocol line on stdout (the only writer of stdout)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def hard_exit(code: int) -> None:
    """Leave without waiting for py-libp2p's (slow, sometimes hanging) teardown."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="kadfast interop peer (py-libp2p)")
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--client", action="store_true", help="Kademlia in client mode")
    return p.parse_args(argv)


def seed_secret(n: int) -> bytes:
    return hashlib.sha256(f"kadfast-interop-seed-{n}".encode()).digest()


def provider_key(text: str) -> bytes:
    """sha2-256 multihash of the UTF-8 text: 0x12 0x20 sha256(text)."""
    return b"\x12\x20" + hashlib.sha256(text.encode("utf-8")).digest()


def describe(exc: BaseException) -> str:
    """One-line reason, looking inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, CommandError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CommandError(Exception):
    """An error whose message is the reply's ``error``."""


# Everything that needs libp2p lives below; it is imported lazily so that an
# import failure still produces a `fatal` event.


async def amain(args: argparse.Namespace) -> None:
    import multiaddr
    import trio
    from libp2p import create_yamux_muxer_option, new_host
    from libp2p.abc import INotifee
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.identity.identify.pb.identify_pb2 import Identify
    from libp2p.io.utils import read_exactly
    from libp2p.kad_dht.common import ALPHA
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.kad_dht.utils import sort_peer_ids_by_distance
    from libp2p.network.config import ConnectionConfig
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
    from libp2p.peer.peerstore import PeerStore
    from libp2p.records.validator import Validator
    from libp2p.security.noise.transport import (
        PROTOCOL_ID as NOISE_PROTOCOL_ID,
    )
    from libp2p.security.noise.transport import (
        Transport as NoiseTransport,
    )
    from libp2p.tools.anyio_service import background_trio_service
    from libp2p.utils.varint import read_length_prefixed_protobuf

    class AnyValueValidator(Validator):
        """Accepts every value in the kadfast namespace.

        select() returns the LAST candidate.  py-libp2p's inbound PUT_VALUE
        handler calls select(key, [existing, incoming]) and rejects the PUT
        (resetting the stream) when the answer is 0, so a "pick the first"
        selector would make every second PUT of a key to this peer fail,
        even with an identical value.  Returning the last candidate gives
        last-writer-wins, as rust/go/js do.  `get` stops at the first
        record found (quorum 1), so the choice rarely matters there.
        """

        def validate(self, key: str, value: bytes) -> None:
            return None

        def select(self, key: str, values: list[bytes]) -> int:
            return max(len(values) - 1, 0)

    # ---- identity and host ------------------------------------------------
    if args.seed is not None:
        if not 0 <= args.seed < 2**31:
            raise CommandError("--seed must be in 0..2^31")
        key_pair = create_new_key_pair(seed_secret(args.seed))
    else:
        key_pair = create_new_key_pair(secrets.token_bytes(32))

    listen_addr = multiaddr.Multiaddr(args.listen)
    noise_static = create_x25519_key_pair()
    host = new_host(
        key_pair=key_pair,
        sec_opt={
            NOISE_PROTOCOL_ID: NoiseTransport(
                key_pair, noise_privkey=noise_static.private_key
            )
        },
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=[listen_addr],
        # More than one connection per peer makes every dial wait ~250 ms.
        connection_config=ConnectionConfig(max_connections_per_peer=1),
        # Loopback tests: advertise the listen addresses only, never the
        # ephemeral ports that identify reports as observed.
        disable_identify_address_discovery=True,
        # The default peerstore holds at most 1,000 peers and, past that,
        # evicts address-less entries first -- our own, whose key identify
        # needs. `kad_fill` (1,000 made-up peers) would get there.
        peerstore_opt=PeerStore(max_peers=PEERSTORE_MAX_PEERS),
    )
    local_id = host.get_id()
    peerstore = host.get_peerstore()

    # client mode: KadDHT registers no /ipfs/kad/1.0.0 handler, so identify
    # does not list it
    dht = KadDHT(host, DHTMode.CLIENT if args.client else DHTMode.SERVER)
    dht.register_validator(RECORD_NAMESPACE, AnyValueValidator())

    # ---- helpers ------------------------------------------------------------
    def strip_p2p(addr: multiaddr.Multiaddr) -> str:
        text = str(addr)
        idx = text.find("/p2p/")
        return text[:idx] if idx >= 0 else text

    def parse_peer_id(text: Any) -> ID:
        if not isinstance(text, str) or not text:
            raise CommandError("missing or bad peer_id")
        try:
            return ID.from_base58(text)
        except Exception as exc:
            raise CommandError(f"bad peer_id {text!r}: {exc}") from exc

    def peerstore_addrs(pid: ID) -> list[multiaddr.Multiaddr]:
        try:
            return list(peerstore.addrs(pid))
        except Exception:
            return []

    async def read_to_eof(stream: Any, limit: int = MAX_JSON_BODY) -> bytes:
        buf = bytearray()
        while True:
            try:
                chunk = await stream.read(65536)
            except StreamEOF:
                break
            if not chunk:
                break
            buf += chunk
            if len(buf) > limit:
                raise CommandError(f"message larger than {limit} bytes")
        return bytes(buf)

    def unblock(pid: ID) -> None:
        # py-libp2p refuses, for 60 s, to dial a peer whose addresses all
        # failed once; an explicit command should always try again.
        unblock_peer = getattr(host.get_network(), "unblock_peer", None)
        if callable(unblock_peer):
            unblock_peer(pid)

    async def ensure_connected(pid: ID) -> None:
        if pid in host.get_connected_peers():
            return
        addrs = peerstore_addrs(pid)
        if not addrs:
            raise CommandError(f"no known address for {pid}")
        unblock(pid)
        await host.connect(PeerInfo(pid, addrs))

    async def add_to_routing_table(pid: ID, addrs: list[multiaddr.Multiaddr]) -> bool:
        if pid == local_id or not addrs:
            return False
        return await dht.routing_table.add_peer(
            PeerInfo(pid, addrs), skip_server_mode_check=True
        )

    # Feed identify results into the routing table: a peer that connected to
    # us and turns out to serve kad is added with its listen addresses.
    async def feed_from_identify(pid: ID) -> None:
        with trio.move_on_after(15):
            while True:
                try:
                    protocols = peerstore.get_protocols(pid) or []
                except Exception:
                    protocols = []
                if protocols:
                    if KAD_PROTOCOL in [str(p) for p in protocols]:
                        if not dht.routing_table.peer_in_table(pid):
                            added = await add_to_routing_table(
                                pid, peerstore_addrs(pid)
                            )
                            log.debug("identify: %s -> routing table: %s", pid, added)
                    return
                if pid not in host.get_connected_peers():
                    return
                await trio.sleep(0.1)

    background: list[trio.Nursery] = []

    class Notifee(INotifee):
        async def opened_stream(self, network: Any, stream: Any) -> None:
            return None

        async def closed_stream(self, network: Any, stream: Any) -> None:
            return None

        async def connected(self, network: Any, conn: Any) -> None:
            pid = getattr(getattr(conn, "muxed_conn", None), "peer_id", None)
            if pid is not None and background:
                background[0].start_soon(feed_from_identify, pid)

        async def disconnected(self, network: Any, conn: Any) -> None:
            return None

        async def listen(self, network: Any, maddr: Any) -> None:
            return None

        async def listen_close(self, network: Any, maddr: Any) -> None:
            return None

    host.get_network().register_notifee(Notifee())

    # ---- /kadfast/json/1.0.0 responder ----------------------------------------
    async def handle_json(stream: Any) -> None:
        try:
            data = await read_to_eof(stream)
            body = json.loads(data.decode("utf-8")) if data.strip() else None
            reply = {"echo": body, "peer_id": str(local_id), "impl": IMPL}
            await stream.write(json.dumps(reply).encode("utf-8"))
            await stream.close()
        except Exception as exc:
            log.warning("json request handler failed: %r", exc)
            try:
                await stream.reset()
            except Exception:
                pass

    host.set_stream_handler(TProtocol(JSON_PROTOCOL), handle_json)

    # ---- commands -------------------------------------------------------------
    async def cmd_dial(req: dict[str, Any]) -> dict[str, Any]:
        addr_text = req.get("addr")
        if not isinstance(addr_text, str):
            raise CommandError("missing addr")
        maddr = multiaddr.Multiaddr(addr_text)
        info = info_from_p2p_addr(maddr)
        if info.peer_id == local_id:
            raise CommandError("cannot dial ourselves")
        unblock(info.peer_id)
        # Dial exactly the given address: py-libp2p would otherwise retry
        # stale peerstore addresses first and give up before reaching it.
        if info.peer_id not in host.get_connected_peers():
            try:
                peerstore.clear_addrs(info.peer_id)
            except Exception:
                pass
        await host.connect(info)
        peerstore.add_addrs(info.peer_id, info.addrs, ADDR_TTL)
        await add_to_routing_table(info.peer_id, list(info.addrs))
        return {"peer_id": str(info.peer_id)}

    async def cmd_bootstrap(req: dict[str, Any]) -> dict[str, Any]:
        if dht.routing_table.size() == 0 and not host.get_connected_peers():
            raise CommandError("no known peers to bootstrap from")
        await dht.peer_routing.refresh_routing_table()
        return {}

    async def cmd_put(req: dict[str, Any]) -> dict[str, Any]:
        key, value = req.get("key"), req.get("value")
        if not isinstance(key, str) or not isinstance(value, str):
            raise CommandError("key and value must be strings")
        quorum = int(req.get("quorum", 1))
        key_b, value_b = key.encode("utf-8"), value.encode("utf-8")
        dht.validator.validate(key, value_b)
        # Store locally (last writer wins), then PUT_VALUE to the closest peers.
        dht.value_store.put(key_b, value_b)
        peers = [
            p
            for p in await dht.peer_routing.find_closest_peers_network(key_b)
            if p != local_id
        ]
        stored = [0]
        done = trio.Event()
        remaining = [len(peers)]

        async def store_one(pid: ID) -> None:
            ok = False
            try:
                with trio.move_on_after(PER_PEER_TIMEOUT):
                    ok = await dht.value_store._store_at_peer(pid, key_b, value_b)
            except Exception as exc:
                log.debug("put at %s failed: %r", pid, exc)
            if ok:
                stored[0] += 1
            remaining[0] -= 1
            if stored[0] >= quorum or remaining[0] == 0:
                done.set()

        if quorum <= 0:
            done.set()
        if peers:
            # Stores go on in the background once the quorum is met.
            for pid in peers:
                background[0].start_soon(store_one, pid)
        else:
            done.set()
        await done.wait()
        if stored[0] < quorum:
            raise CommandError(
                f"quorum failed: stored at {stored[0]} of {len(peers)} peers, "
                f"needed {quorum}"
            )
        return {}

    async def cmd_get(req: dict[str, Any]) -> dict[str, Any]:
        key = req.get("key")
        if not isinstance(key, str):
            raise CommandError("key must be a string")
        value = await dht.get_value(key, quorum=1)
        if value is None:
            raise CommandError("not found")
        return {"value": value.decode("utf-8", errors="replace")}

    async def cmd_provide(req: dict[str, Any]) -> dict[str, Any]:
        key = req.get("key")
        if not isinstance(key, str):
            raise CommandError("key must be a string")
        sent = await dht.provider_store.provide(provider_key(key))
        if not sent:
            raise CommandError("provider record reached no peer")
        return {}

    async def cmd_providers(req: dict[str, Any]) -> dict[str, Any]:
        key = req.get("key")
        if not isinstance(key, str):
            raise CommandError("key must be a string")
        count = max(int(req.get("count", 1)), 1)
        mh = provider_key(key)
        store = dht.provider_store
        found: dict[ID, None] = {}
        addrs: dict[ID, dict[str, None]] = {}

        def note(info: Any) -> None:
            found[info.peer_id] = None
            known = addrs.setdefault(info.peer_id, {})
            for a in info.addrs or []:
                known[strip_p2p(a)] = None

        for info in store.get_providers(mh):
            note(info)
        if len(found) < count:
            # Iterative GET_PROVIDERS lookup (py-libp2p's find_providers stops
            # at the local store as soon as it holds any provider).
            candidates = [
                p
                for p in await dht.peer_routing.find_closest_peers_network(mh)
                if p != local_id
            ]
            queried: set[ID] = set()
            while candidates and len(found) < count:
                batch, candidates = candidates[:ALPHA], candidates[ALPHA:]
                closer_all: list[ID] = []

                async def ask(pid: ID) -> None:
                    queried.add(pid)
                    with trio.move_on_after(PER_PEER_TIMEOUT):
                        provs, closer = await store._get_providers_from_peer_with_closers(
                            pid, mh
                        )
                        for info in provs:
                            if info.addrs:
                                peerstore.add_addrs(info.peer_id, info.addrs, ADDR_TTL)
                                store.add_provider(mh, info)
                            note(info)
                        closer_all.extend(closer)

                async with trio.open_nursery() as nursery:
                    for pid in batch:
                        nursery.start_soon(ask, pid)
                for pid in closer_all:
                    if pid != local_id and pid not in queried and pid not in candidates:
                        candidates.append(pid)
                candidates = sort_peer_ids_by_distance(mh, candidates)
        chosen = list(found)[:count]
        return {
            "providers": [str(p) for p in chosen],
            "addrs": {str(p): list(addrs.get(p, {})) for p in chosen},
        }

    async def cmd_find_peer(req: dict[str, Any]) -> dict[str, Any]:
        target = parse_peer_id(req.get("peer_id"))
        if target == local_id:
            return {
                "peer_id": str(local_id),
                "addrs": [strip_p2p(a) for a in host.get_transport_addrs()],
            }
        closest = await dht.peer_routing.find_closest_peers_network(target.to_bytes())
        addrs = peerstore_addrs(target)
        if target not in closest and not addrs:
            raise CommandError(f"peer {target} not found")
        if not addrs:
            raise CommandError(f"peer {target} found without addresses")
        seen: dict[str, None] = {}
        for a in addrs:
            seen[strip_p2p(a)] = None
        return {"peer_id": str(target), "addrs": list(seen)}

    async def cmd_closest(req: dict[str, Any]) -> dict[str, Any]:
        if req.get("peer_id") is not None:
            key_b = parse_peer_id(req.get("peer_id")).to_bytes()
        elif isinstance(req.get("key"), str):
            key_b = req["key"].encode("utf-8")
        else:
            raise CommandError("need key or peer_id")
        peers = await dht.peer_routing.find_closest_peers_network(key_b)
        return {"peers": [str(p) for p in peers if p != local_id]}

    # go-libp2p and py-libp2p reset a third concurrent inbound ping stream
    # from one peer, so our pings to a given peer go one at a time.
    ping_locks: dict[ID, trio.Lock] = {}

    async def cmd_ping(req: dict[str, Any]) -> dict[str, Any]:
        pid = parse_peer_id(req.get("peer_id"))
        await ensure_connected(pid)
        async with ping_locks.setdefault(pid, trio.Lock()):
            return await ping_once(pid)

    async def ping_once(pid: ID) -> dict[str, Any]:
        stream = await host.new_stream(pid, [TProtocol(PING_PROTOCOL)])
        try:
            payload = secrets.token_bytes(32)
            start = time.perf_counter()
            await stream.write(payload)
            echo = await read_exactly(stream, 32)
            rtt = (time.perf_counter() - start) * 1000.0
            if echo != payload:
                raise CommandError("ping payload mismatch")
        finally:
            try:
                await stream.close()
            except Exception:
                pass
        return {"rtt_ms": rtt}

    async def cmd_identify(req: dict[str, Any]) -> dict[str, Any]:
        pid = parse_peer_id(req.get("peer_id"))
        await ensure_connected(pid)
        stream = await host.new_stream(pid, [TProtocol(IDENTIFY_PROTOCOL)])
        try:
            data = await read_length_prefixed_protobuf(stream, use_varint_format=True)
        finally:
            try:
                await stream.close()
            except Exception:
                pass
        msg = Identify()
        msg.ParseFromString(data)

        def ma_text(raw: bytes) -> str | None:
            try:
                return str(multiaddr.Multiaddr(raw))
            except Exception:
                return None

        listen = [t for t in (ma_text(a) for a in msg.listen_addrs) if t]
        observed = ma_text(msg.observed_addr) if msg.observed_addr else None
        return {
            "protocols": list(msg.protocols),
            "agent_version": msg.agent_version,
            "protocol_version": msg.protocol_version,
            "listen_addrs": listen,
            "observed_addr": observed or "",
        }

    async def cmd_request(req: dict[str, Any]) -> dict[str, Any]:
        pid = parse_peer_id(req.get("peer_id"))
        await ensure_connected(pid)
        body = json.dumps(req.get("body")).encode("utf-8")
        stream = await host.new_stream(pid, [TProtocol(JSON_PROTOCOL)])
        try:
            await stream.write(body)
            await stream.close_write()
            data = await read_to_eof(stream)
        except BaseException:
            try:
                await stream.reset()
            except Exception:
                pass
            raise
        try:
            await stream.close()
        except Exception:
            pass
        try:
            response = json.loads(data.decode("utf-8"))
        except ValueError as exc:
            raise CommandError(f"response is not JSON: {exc}") from exc
        return {"response": response}

    def fill_addr(i: int) -> multiaddr.Multiaddr:
        # A loopback address on port 1, where nothing listens (a dial is
        # refused at once). Not globally routable, so the k-buckets' subnet
        # diversity cap (2 peers per /24) does not apply to it.
        a, b, c = 1 + (i >> 16) % 254, (i >> 8) & 255, i & 255
        return multiaddr.Multiaddr(f"/ip4/127.{a}.{b}.{c}/tcp/1")

    async def cmd_kad_fill(req: dict[str, Any]) -> dict[str, Any]:
        # Made-up peers put into the routing table as if we had met them: a
        # permanent address in the peerstore (FIND_NODE replies take
        # addresses from there) and RoutingTable.add_peer, which splits any
        # full bucket (up to 256 buckets), so it never reaches the branch
        # that pings a full bucket's oldest entry. py-libp2p's own upkeep
        # pings only peers unseen for an hour (every 5 min, 5 at a time) and
        # refreshes the table every 10 min; random walk is off.
        count = req.get("count")
        if not isinstance(count, int) or count < 0:
            raise CommandError("missing argument: count")
        seed = req.get("seed")
        for i in range(count):
            if seed is None:
                secret = secrets.token_bytes(32)
            else:
                secret = hashlib.sha256(f"kadfast-interop-fill-{seed}-{i}".encode()).digest()
            pid = ID.from_pubkey(create_new_key_pair(secret).public_key)
            addr = fill_addr(i)
            peerstore.add_addrs(pid, [addr], 0)  # ttl 0: permanent
            if not await dht.routing_table.add_peer(
                PeerInfo(pid, [addr]), skip_server_mode_check=True
            ):
                peerstore.clear_addrs(pid)
            if i % 50 == 49:
                await trio.sleep(0)  # let the peer serve requests meanwhile
        return {"routing_table": dht.routing_table.size()}

    async def cmd_routing_table(req: dict[str, Any]) -> dict[str, Any]:
        return {"peers": [str(p) for p in dht.routing_table.get_peer_ids()]}

    async def cmd_connected(req: dict[str, Any]) -> dict[str, Any]:
        return {"peers": [str(p) for p in host.get_connected_peers()]}

    commands = {
        "dial": cmd_dial,
        "bootstrap": cmd_bootstrap,
        "put": cmd_put,
        "get": cmd_get,
        "provide": cmd_provide,
        "providers": cmd_providers,
        "find_peer": cmd_find_peer,
        "closest": cmd_closest,
        "ping": cmd_ping,
        "identify": cmd_identify,
        "request": cmd_request,
        "kad_fill": cmd_kad_fill,
        "routing_table": cmd_routing_table,
        "connected": cmd_connected,
    }

    async def handle_request(req: dict[str, Any]) -> None:
        rid = req.get("id")
        cmd = req.get("cmd")
        if cmd == "stop":
            emit({"id": rid, "ok": True, "result": {}})
            hard_exit(0)
        fn = commands.get(cmd) if isinstance(cmd, str) else None
        if fn is None:
            emit({"id": rid, "ok": False, "error": f"unsupported: {cmd}"})
            return
        try:
            timeout = float(req.get("timeout", DEFAULT_TIMEOUT))
        except (TypeError, ValueError):
            timeout = DEFAULT_TIMEOUT
        reply: dict[str, Any]
        try:
            with trio.fail_after(timeout):
                result = await fn(req)
            reply = {"id": rid, "ok": True, "result": result}
        except trio.TooSlowError:
            reply = {"id": rid, "ok": False, "error": f"timeout after {timeout:g}s"}
        except Exception as exc:
            log.debug("command %s failed", cmd, exc_info=True)
            reply = {"id": rid, "ok": False, "error": describe(exc)}
        emit(reply)

    async def stdin_loop(nursery: trio.Nursery) -> None:
        readline = sys.stdin.buffer.readline
        while True:
            line = await trio.to_thread.run_sync(readline, abandon_on_cancel=True)
            if not line:
                log.info("stdin closed, exiting")
                hard_exit(0)
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("request is not an object")
            except ValueError as exc:
                emit({"id": None, "ok": False, "error": f"bad request: {exc}"})
                continue
            nursery.start_soon(handle_request, req)

    # ---- run ------------------------------------------------------------------
    async with host.run(listen_addrs=[listen_addr]):
        async with background_trio_service(dht):
            async with trio.open_nursery() as nursery:
                background.append(nursery)
                addrs = [strip_p2p(a) for a in host.get_transport_addrs()]
                if not addrs:
                    raise CommandError(f"could not listen on {args.listen}")
                emit(
                    {
                        "event": "ready",
                        "impl": IMPL,
                        "peer_id": str(local_id),
                        "addrs": addrs,
                    }
                )
                await stdin_loop(nursery)


def main(argv: list[str]) -> None:
    level = os.environ.get("KADFAST_PEER_LOG", "WARNING").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = parse_args(argv)
    try:
        import trio

        trio.run(amain, args)
    except KeyboardInterrupt:
        hard_exit(0)
    except BaseException as exc:  # report anything as fatal
        log.error("fatal", exc_info=True)
        emit({"event": "fatal", "error": describe(exc)})
        hard_exit(1)
    hard_exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
