#!/usr/bin/env python3
"""Attacks on a default ``kadfast server``, on loopback, with an honest client
measuring what it still gets.

    python bench/attacks.py [--seconds 30] [--only noread,ping,...] [--json]

For each attack a fresh ``python -m kadfast server --limit-loopback`` runs in
a child process (the per-IP and per-subnet limits then apply to loopback
addresses as they would to public ones; ``--max-connections`` is lowered so
that a flood fills it). The attackers run in this process, from addresses of
127.1.0.0/16 and above (Linux routes all of 127/8 to loopback). An honest
prober runs in a child process of its own (``--probe``), from 127.0.0.1:
every 0.25 s a FIND_NODE on a fresh connection (a new identity: TCP, Noise,
Yamux, identify, one request), and every 0.1 s one on a connection it keeps;
each with a 5 s timeout. Per attack the table gives the server's resident
memory before, at its peak and 10 s after the attackers left, its CPU share
during the attack, and the prober's success and latency (p50/p95).

Attacks:

- ``noread``: 4 connections flood FIND_NODE on one kad stream each and never
  read (a tiny receive buffer); each reconnects when cut off.
- ``ping``: one connection floods Yamux pings and never reads the pongs.
- ``conns``: 1,500 connections from 400 addresses (8 /16s) finish their
  handshake and hold one kad stream that says nothing; the server allows
  1,000 connections.
- ``partial``: 900 connections each open 32 kad streams holding 15 KiB of a
  16 KiB message.
- ``handshakes``: connections from 4 addresses of one /24 start Noise
  handshakes with fresh ephemeral keys, as fast as the server lets them.

Not a unit test: run it by hand; ``tests/test_hostile.py`` and
``tests/test_connmgr.py`` assert the bounds at a small size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _common import percentile, proc_cpu, proc_rss_kib  # noqa: E402

KAD = "/ipfs/kad/1.0.0"


# --------------------------------------------------------------------------
# the honest prober (a child process)
# --------------------------------------------------------------------------
async def probe(maddr: str, seconds: float) -> dict:
    from kadfast import Multiaddr
    from kadfast.kad.pb import MAX_MESSAGE_SIZE, KadMessage, MessageType, decode_message, encode_message, frame
    from kadfast.net import Host

    target = Multiaddr(maddr)
    pid = target.peer_id()

    async def find_node(h: Host) -> None:
        s = await h.new_stream(pid, KAD)
        key = os.urandom(32)
        s.write(frame(encode_message(KadMessage(MessageType.FIND_NODE, key=key))))
        body = await s.read_message(MAX_MESSAGE_SIZE)
        if body is None or decode_message(body).key != key:
            raise ConnectionError("no answer")
        s.close()

    fresh: list[float | None] = []
    kept: list[float | None] = []
    end = time.monotonic() + seconds

    async def fresh_loop() -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            h = Host()
            try:
                await h.start()
                async with asyncio.timeout(5):
                    await h.dial(target)
                    await find_node(h)
                fresh.append(time.monotonic() - t0)
            except Exception:
                fresh.append(None)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(h.close(), 2)
            await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - t0)))

    async def kept_loop() -> None:
        h = Host()
        await h.start()
        try:
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(5):
                        await h.dial(target)
                        await find_node(h)
                    kept.append(time.monotonic() - t0)
                except Exception:
                    kept.append(None)
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
        finally:
            await h.close()

    await asyncio.gather(fresh_loop(), kept_loop())

    def summary(xs: list[float | None]) -> dict:
        ok = [x for x in xs if x is not None]
        return {"ok": len(ok), "n": len(xs),
                "p50_ms": round(percentile(ok, 50) * 1000, 1) if ok else None,
                "p95_ms": round(percentile(ok, 95) * 1000, 1) if ok else None}

    return {"fresh": summary(fresh), "kept": summary(kept)}


# --------------------------------------------------------------------------
# attackers
# --------------------------------------------------------------------------
def attacker_ip(i: int) -> str:
    """The i-th of 400 attacker addresses: 8 /16s of 50 /24s, one address each."""
    j = i % 400
    return f"127.{1 + j // 50}.{j % 50}.1"


async def connect(port: int, ip: str, rcvbuf: int | None = None):
    from _rawclient import RawClient

    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((ip, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return RawClient(*await asyncio.open_connection(sock=sock))


def open_kad_stream(c, payload: bytes = b"") -> int:
    from kadfast.multistream import MultistreamDialer

    sid = c.session.open_stream()
    c.session.send(sid, MultistreamDialer([KAD]).data_to_send() + payload)
    c.flush()
    return sid


async def again_and_again(stop: asyncio.Event, port: int, ip: str, attack, pause: float,
                          rcvbuf: int | None = None) -> None:
    """Connect from ``ip`` and run ``attack(client)`` until ``stop``; when the
    server cuts the attacker off (or refuses it), wait ``pause`` and come back."""
    while not stop.is_set():
        c = None
        try:
            c = await connect(port, ip, rcvbuf=rcvbuf)
            await attack(c)
        except Exception:
            await asyncio.sleep(pause)
        finally:
            if c is not None:
                c.close()


async def attack_noread(port: int, stop: asyncio.Event) -> None:
    from kadfast import yamux as y
    from kadfast.kad.pb import KadMessage, MessageType, encode_message, frame

    request = frame(encode_message(KadMessage(MessageType.FIND_NODE, key=os.urandom(32))))
    batch = request * 50

    async def flood(c) -> None:
        await asyncio.wait_for(c.upgrade(), 10)
        sid = open_kad_stream(c)
        while not stop.is_set():
            c.send_plain(y.encode_header(0, 0, sid, len(batch)) + batch)
            await asyncio.wait_for(c.writer.drain(), 10)

    await asyncio.gather(*(again_and_again(stop, port, attacker_ip(i), flood, 0.1, rcvbuf=4096) for i in range(4)))


async def attack_ping(port: int, stop: asyncio.Event) -> None:
    import struct

    from kadfast import yamux as y

    pings = b"".join(struct.pack(">BBHII", 0, y.TYPE_PING, y.FLAG_SYN, 0, i) for i in range(5000))

    async def flood(c) -> None:
        await asyncio.wait_for(c.upgrade(), 10)
        while not stop.is_set():
            c.send_plain(pings)
            await asyncio.wait_for(c.writer.drain(), 10)

    await again_and_again(stop, port, attacker_ip(0), flood, 0.1, rcvbuf=4096)


async def attack_conns(port: int, stop: asyncio.Event, count: int = 1500) -> None:
    held: list = []
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        while not stop.is_set():
            async with sem:
                try:
                    c = await connect(port, attacker_ip(i))
                    await asyncio.wait_for(c.upgrade(), 10)
                    open_kad_stream(c)
                except Exception:
                    await asyncio.sleep(0.5)
                    continue
            held.append(c)
            # hold it until the server closes it, then come back
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(c.reader.read(65536), 1.0)
                except asyncio.TimeoutError:
                    continue
                except Exception:
                    break
                if not data:
                    break
            c.close()

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        for c in held:
            c.close()


async def attack_partial(port: int, stop: asyncio.Event, count: int = 900) -> None:
    held: list = []
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            try:
                c = await connect(port, attacker_ip(i))
                await asyncio.wait_for(c.upgrade(), 10)
            except Exception:
                return
            for _ in range(32):
                open_kad_stream(c, b"\x80\x80\x01" + b"\x00" * (15 * 1024))
            held.append(c)

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
        await stop.wait()
    finally:
        for c in held:
            c.close()


async def attack_handshakes(port: int, stop: asyncio.Event) -> None:
    from kadfast import Ed25519KeyPair
    from kadfast.noise import NoiseHandshake

    key = Ed25519KeyPair.generate()

    async def begin(c) -> None:
        rest = await asyncio.wait_for(c.select_noise(), 5)
        hs = NoiseHandshake(key, initiator=True)  # a fresh ephemeral key each time
        c.writer.write(hs.data_to_send())
        if not rest:
            await c.recv(timeout=5)  # the server's reply: its DH and signature work

    await asyncio.gather(*(again_and_again(stop, port, f"127.1.200.{1 + i % 4}", begin, 0.01) for i in range(16)))


ATTACKS = {
    "noread": attack_noread,
    "ping": attack_ping,
    "conns": attack_conns,
    "partial": attack_partial,
    "handshakes": attack_handshakes,
}


# --------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------
def start_server(*extra: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "kadfast", "server", "--json", "--listen", "/ip4/127.0.0.1/tcp/0",
         "--limit-loopback", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        obj = json.loads(line)
        if obj.get("event") == "listening":
            return p, obj["addrs"][0]
    p.kill()
    raise RuntimeError("the server did not start")


async def run_attack(name: str, seconds: float) -> dict:
    server, maddr = start_server("--max-connections", "1000")
    port = int(maddr.split("/tcp/")[1].split("/")[0])
    try:
        await asyncio.sleep(1.0)
        rss0 = proc_rss_kib(server.pid)
        prober = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--probe", maddr, "--seconds", str(seconds),  # noqa: ASYNC240
            stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
        stop = asyncio.Event()
        cpu0, t0 = proc_cpu(server.pid), time.monotonic()
        task = asyncio.create_task(ATTACKS[name](port, stop))
        peak = rss0 or 0
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(0.5)
            peak = max(peak, proc_rss_kib(server.pid) or 0)
        cpu = (proc_cpu(server.pid) - cpu0) / (time.monotonic() - t0)
        out, _ = await prober.communicate()
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(task, 15)
        task.cancel()
        await asyncio.sleep(10)
        after = proc_rss_kib(server.pid)
        honest = json.loads(out) if out else {}
        return {"attack": name, "rss_mib": [round((rss0 or 0) / 1024), round(peak / 1024), round((after or 0) / 1024)],
                "server_cpu": round(cpu, 2), **honest}
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each attack")
    ap.add_argument("--only", default=",".join(ATTACKS), help="attacks to run, comma-separated")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from kadfast.loop import new_event_loop, uvloop_available

    loop = new_event_loop("uvloop" if uvloop_available() else "asyncio")
    if args.probe:
        print(json.dumps(loop.run_until_complete(probe(args.probe, args.seconds))))
        return 0
    rows = []
    for name in args.only.split(","):
        row = loop.run_until_complete(run_attack(name, args.seconds))
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            f, k = row.get("fresh", {}), row.get("kept", {})
            print(f"{name:11} RSS MiB before/peak/after {row['rss_mib']}  server CPU {row['server_cpu']:.2f}  "
                  f"fresh {f.get('ok')}/{f.get('n')} p50 {f.get('p50_ms')} p95 {f.get('p95_ms')} ms  "
                  f"kept {k.get('ok')}/{k.get('n')} p50 {k.get('p50_ms')} p95 {k.get('p95_ms')} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
