#!/usr/bin/env python3
"""Network benchmark on loopback: kadfast's wire stack against servers of
kadfast (uvloop and stock asyncio), py-libp2p and js-libp2p, in one run.

    python bench/net_bench.py [--quick] [--json] [--loop uvloop|asyncio|both] [--peers py,js]

The client is always kadfast on uvloop, in this process. Every server runs in
a child process of its own (so client and server never share a loop or a CPU
slot): kadfast as ``python bench/net_bench.py --serve --loop KIND``, the
others as the interop peer programs of ``tests/interop/peers`` (built and
cached by ``tests/interop/harness.py`` in ``~/.cache/kadfast-interop``). All
of them are driven through ``harness.Peer`` (ready line, ``stop``, killed in
a ``finally``).

Per server it measures

1. full handshakes: ``--dialers`` client hosts (default 4), each in a loop
   for a fixed time: TCP connect, multistream, Noise XX, multistream, Yamux,
   identify (the client waits for the server's identify answer), close, wait
   for the close. Connections per second, and the CPU time the server
   process (``/proc/<pid>/stat`` utime+stime) and this client process spent
   per handshake.
2. Yamux throughput: one ``/kadfast/json/1.0.0`` request carrying a JSON
   string of about 4 MiB (1 MiB with --quick), echoed back; MB/s (10^6 bytes)
   of request plus response over the round trip, best of a few runs.
3. small requests: 200 sequential and then 200 concurrent small JSON
   requests, each on a new stream of one connection; requests per second and
   server CPU microseconds per request.

A server that fails to start, dies, or fails a phase gets the error in its
table cell; the run goes on. A watchdog ends the whole run (killing every
child) if it exceeds its time budget.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROOT,
    count_loop_errors,
    cpu_delta,
    install_log_counter,
    load_harness,
    log_progress,
    machine_busy,
    make_emitter,
    proc_cpu,
    ready_line,
    run_server,
    short_error,
    start_control,
)

JSON_PROTOCOL = "/kadfast/json/1.0.0"
PEER_NAMES = {"py": "py-libp2p", "js": "js-libp2p", "rust": "rust-libp2p", "go": "go-libp2p"}
# the request body of the py peer is limited to 4 MiB (MAX_JSON_BODY in
# peers/py/peer.py): the JSON string is a little shorter than that
BIG_FULL = 4 * 1024 * 1024 - 1024
BIG_QUICK = 1024 * 1024
CHUNK = 256 * 1024  # write size; kadfast refuses to queue more than 1 MiB per stream
READ_LIMIT = 16 * 1024 * 1024


# --------------------------------------------------------------------------
# the kadfast server (child process): python bench/net_bench.py --serve
# --------------------------------------------------------------------------


def serve(loop_kind: str) -> int:
    """A kadfast host serving the JSON echo, speaking just enough of the
    interop control protocol (ready line, stop, stats; exit on stdin EOF)."""
    from kadfast.net import Host, HostConfig

    counter = install_log_counter()
    emit = make_emitter()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_errors = count_loop_errors(loop)
        host = Host(config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]))
        handled = [0, 0]  # requests served, handler errors

        async def json_echo(stream) -> None:
            try:
                body = json.loads(await read_all(stream, READ_LIMIT))
                reply = json.dumps(
                    {"echo": body, "peer_id": str(host.peer_id), "impl": "kadfast"}
                ).encode()
                await write_chunked(stream, reply)
                stream.close()
                handled[0] += 1
            except BaseException:
                handled[1] += 1
                raise

        host.set_stream_handler(JSON_PROTOCOL, json_echo)
        await host.start()
        done = asyncio.Event()
        start_control(loop, emit, done, {
            "stats": lambda req: {
                "connections": host.connection_count(),
                "requests": handled[0],
                "handler_errors": handled[1],
                "dropped_events": host.dropped_events,
                "loop_errors": dict(loop_errors.most_common(10)),
                "log": counter.summary(),
            },
        })
        emit(ready_line(loop_kind, loop, host.peer_id, host.listen_addrs))
        try:
            await done.wait()
        finally:
            await host.close()

    return run_server(main, loop_kind, emit)


# --------------------------------------------------------------------------
# the client side
# --------------------------------------------------------------------------


class Server:
    """One server under test: a started harness.Peer, or the error that
    prevented it."""

    def __init__(self, label: str, peer=None, error: str | None = None):
        self.label = label
        self.peer = peer
        self.error = error

    @property
    def pid(self) -> int | None:
        return self.peer.proc.pid if self.peer is not None and self.peer.proc else None

    def cpu(self) -> float | None:
        return proc_cpu(self.pid) if self.pid else None

    def check_alive(self) -> None:
        if self.peer is None or not self.peer.alive:
            code = self.peer.proc.poll() if self.peer is not None and self.peer.proc else None
            tail = self.peer.stderr_tail(5) if self.peer is not None else ""
            raise RuntimeError(f"server process is not running (exit {code}) {tail[-300:]}")


async def json_request(host, pid, payload: bytes, limit: int = READ_LIMIT) -> bytes:
    stream = await host.new_stream(pid, JSON_PROTOCOL)
    try:
        await write_chunked(stream, payload)
        stream.close()
        return await read_all(stream, limit)
    except BaseException:
        stream.reset()
        raise


async def write_chunked(stream, data: bytes) -> None:
    """``data`` on ``stream``, in writes of at most CHUNK bytes (each waiting
    for room) when it is longer than that."""
    if len(data) <= CHUNK:
        stream.write(data)
    else:
        mv = memoryview(data)
        for off in range(0, len(data), CHUNK):
            await stream.write_all(mv[off : off + CHUNK])


async def read_all(stream, limit: int) -> bytes:
    """Everything until the peer half-closes, read with ``Stream.read`` so that
    the Yamux window keeps moving. (``Stream.read_to_end`` acknowledges
    nothing until the end of the stream, so a message longer than the 256 KiB
    receive window stalls; see the module docstring.)"""
    chunks = []
    total = 0
    while True:
        data = await stream.read()
        if not data:  # the end; read() raises StreamReset on a reset
            return b"".join(chunks)
        chunks.append(data)
        total += len(data)
        if total > limit:
            stream.reset()
            raise ValueError(f"more than {limit} bytes")


async def bench_handshakes(server: Server, maddr, pid, duration: float, dialers: int, identities: int) -> dict:
    from kadfast.identify import PROTOCOL_ID as IDENTIFY_PROTOCOL
    from kadfast.net import Host, HostConfig

    loop = asyncio.get_running_loop()
    # Each dialer rotates through ``identities`` client hosts of its own, so
    # the server sees many distinct peers, each reconnecting only now and
    # then (py-libp2p counts a closed connection against its per-peer limit
    # of 8 for a while and refuses a peer that reconnects at once; and it may
    # not identify a peer it has seen before).
    pools = [[Host(config=HostConfig()) for _ in range(identities)] for _ in range(dialers)]
    every = [h for pool in pools for h in pool]
    # A handshake is complete when both identify exchanges are: ours (we wait
    # for the server's answer) and the server's (we wait until we answered
    # it) -- on every connection for servers that identify a reconnecting
    # peer, else on a host's first connection only.
    served: dict[Any, asyncio.Future] = {}

    def served_future(conn) -> asyncio.Future:
        fut = served.get(conn)
        if fut is None:
            fut = served[conn] = loop.create_future()
        return fut

    def wrap_identify(h) -> None:
        inner = h.identify_service.serve

        async def serve_identify(stream) -> None:
            try:
                result = inner(stream)  # the host's identify answer is inline (a plain function)
                if result is not None:
                    await result
            finally:
                fut = served_future(stream.conn)
                if not fut.done():
                    fut.set_result(None)

        h.set_stream_handler(IDENTIFY_PROTOCOL, serve_identify)

    for h in every:
        wrap_identify(h)
        await h.start()
    errors: collections.Counter[str] = collections.Counter()
    wait_served = [True]
    seen: set = set()
    try:
        async def one(h) -> None:
            first = h not in seen
            seen.add(h)
            try:
                conn = await asyncio.wait_for(h.dial(maddr), 10)
            except asyncio.TimeoutError:
                raise TimeoutError("dial timed out") from None
            try:
                try:
                    await h.identify(pid, timeout=10)
                except asyncio.TimeoutError:
                    raise TimeoutError("identify of the server timed out") from None
                if wait_served[0] or first:
                    try:
                        await asyncio.wait_for(asyncio.shield(served_future(conn)), 10)
                    except asyncio.TimeoutError:
                        raise TimeoutError("server's identify of us never came") from None
            finally:
                conn.close("benchmark")
                await conn.closed
                served.pop(conn, None)

        # Does the server identify a peer that connects again? (py-libp2p
        # identifies a peer on its first connection only.) The second
        # connection of one host decides.
        probe = pools[0][0]
        seen.add(probe)
        for _ in range(2):
            conn = await asyncio.wait_for(probe.dial(maddr), 20)
            try:
                await probe.identify(pid, timeout=10)
                await asyncio.wait_for(asyncio.shield(served_future(conn)), 2)
                wait_served[0] = True
            except asyncio.TimeoutError:
                wait_served[0] = False
            finally:
                conn.close("benchmark")
                await conn.closed
                served.pop(conn, None)
            await asyncio.sleep(0.5)
        # warm-up
        await asyncio.wait_for(asyncio.gather(*[one(pool[1 % identities]) for pool in pools]), 30)
        counts = [0] * dialers
        cpu_s0, cpu_c0, busy0, t0 = server.cpu(), proc_cpu(), machine_busy(), time.perf_counter()
        stop_at = loop.time() + duration

        streak = [0]  # consecutive failures, all dialers together
        gave_up = [None]

        async def worker(i: int) -> None:
            pool = pools[i]
            k = 2
            while loop.time() < stop_at and gave_up[0] is None:
                h = pool[k % identities]
                k += 1
                try:
                    await asyncio.wait_for(one(h), 30)
                    counts[i] += 1
                    streak[0] = 0
                except (asyncio.TimeoutError, Exception) as exc:
                    errors[short_error(exc)] += 1
                    streak[0] += 1
                    if streak[0] >= 50 and gave_up[0] is None:
                        # the server refuses everything now (py-libp2p does
                        # after ~250 connections): stop here, keep the rate
                        gave_up[0] = f"stopped after {sum(counts)} handshakes: {streak[0]} failures in a row"
                    await asyncio.sleep(0.01)

        await asyncio.gather(*[worker(i) for i in range(dialers)])
        elapsed = time.perf_counter() - t0
        cpu_s, cpu_c = cpu_delta(cpu_s0, server.cpu()), cpu_delta(cpu_c0, proc_cpu())
        busy = cpu_delta(busy0, machine_busy())
    finally:
        await asyncio.gather(*[asyncio.wait_for(h.close(), 5) for h in every], return_exceptions=True)
    n = sum(counts)
    return {
        "handshakes": n,
        "seconds": round(elapsed, 3),
        "per_s": round(n / elapsed, 1),
        "server_cpu_ms_per_handshake": round(cpu_s / n * 1e3, 3) if cpu_s is not None and n else None,
        "client_cpu_ms_per_handshake": round(cpu_c / n * 1e3, 3) if cpu_c is not None and n else None,
        "server_cpu_util": round(cpu_s / elapsed, 2) if cpu_s is not None else None,
        "client_cpu_util": round(cpu_c / elapsed, 2) if cpu_c is not None else None,
        # CPU used by everything else on the machine meanwhile (other jobs skew the numbers)
        "other_cpu_util": round((busy - (cpu_s or 0) - (cpu_c or 0)) / elapsed, 2) if busy is not None else None,
        "errors": dict(errors.most_common(5)),
        "error_count": sum(errors.values()),
        "server_identifies_reconnecting_client": wait_served[0],
        "gave_up": gave_up[0],
    }


async def bench_throughput(server: Server, host, pid, size: int, runs: int) -> dict:
    body = "k" * size
    payload = json.dumps(body).encode()
    samples, cpus = [], []
    resp_len = 0
    for _ in range(runs):
        cpu0, t0 = server.cpu(), time.perf_counter()
        resp = await asyncio.wait_for(json_request(host, pid, payload), 120)
        dt = time.perf_counter() - t0
        cpu = cpu_delta(cpu0, server.cpu())
        resp_len = len(resp)
        reply = json.loads(resp)
        if not isinstance(reply, dict) or reply.get("echo") != body:
            raise RuntimeError(f"echo mismatch ({len(resp)} bytes back)")
        samples.append((len(payload) + len(resp)) / dt / 1e6)
        if cpu is not None:
            cpus.append(cpu)
    return {
        "request_bytes": len(payload),
        "response_bytes": resp_len,
        "runs": runs,
        "mb_per_s_best": round(max(samples), 1),
        "mb_per_s_median": round(statistics.median(samples), 1),
        "server_cpu_ms_per_mb": round(statistics.median(cpus) * 1e3 / ((len(payload) + resp_len) / 1e6), 2) if cpus else None,
    }


async def bench_small(server: Server, host, pid, n: int, min_seconds: float) -> dict:
    """Batches of ``n`` small requests, sequential then concurrent; each kind
    repeated until ``min_seconds`` have passed (so the 10 ms CPU clock has
    enough ticks). Rate: median over batches; CPU: total over all batches."""
    def payload(i: int) -> bytes:
        return json.dumps({"i": i, "op": "bench", "pad": "x" * 64}).encode()

    async def req(i: int) -> None:
        resp = json.loads(await json_request(host, pid, payload(i), 1 << 20))
        if resp.get("echo", {}).get("i") != i:
            raise RuntimeError(f"bad echo for request {i}: {str(resp)[:100]}")

    async def seq_batch() -> list:
        for i in range(n):
            await req(i)
        return []

    async def conc_batch() -> list:
        results = await asyncio.gather(*[req(i) for i in range(n)], return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    for i in range(20):  # warm-up
        await req(i)
    out: dict[str, Any] = {"n": n}
    for kind, batch in (("seq", seq_batch), ("conc", conc_batch)):
        rates, failed = [], []
        done = 0
        cpu0, c0, t_start = server.cpu(), proc_cpu(), time.perf_counter()
        while True:
            t0 = time.perf_counter()
            errs = await batch()
            dt = time.perf_counter() - t0
            failed += errs
            done += n - len(errs)
            rates.append((n - len(errs)) / dt)
            if time.perf_counter() - t_start >= min_seconds or len(failed) > n:
                break
        cpu, ccpu = cpu_delta(cpu0, server.cpu()), cpu_delta(c0, proc_cpu())
        out[f"{kind}_per_s"] = round(statistics.median(rates), 1)
        out[f"{kind}_batches"] = len(rates)
        out[f"{kind}_server_cpu_us"] = round(cpu / done * 1e6, 1) if cpu is not None and done else None
        out[f"{kind}_client_cpu_us"] = round(ccpu / done * 1e6, 1) if ccpu is not None and done else None
        if failed:
            out[f"{kind}_errors"] = dict(collections.Counter(short_error(e) for e in failed).most_common(3))
    return out


async def bench_server(server: Server, opts) -> dict:
    """All three phases against one server; each phase's failure is recorded."""
    from kadfast import Multiaddr, PeerId
    from kadfast.net import Host, HostConfig

    loop_errors = count_loop_errors(asyncio.get_running_loop())
    res: dict[str, Any] = {"loop_errors": {}}
    maddr = Multiaddr(server.peer.maddr)
    pid = PeerId.from_string(server.peer.peer_id)

    async def phase(name: str, coro_fn, timeout: float) -> None:
        try:
            server.check_alive()
            res[name] = await asyncio.wait_for(coro_fn(), timeout)
        except (asyncio.TimeoutError, Exception) as exc:
            err = "timed out" if isinstance(exc, asyncio.TimeoutError) else short_error(exc)
            res[name] = {"error": err}
            log_progress(f"  {server.label}: {name} failed: {err}")

    # one connection for the stream phases first: a server that wedges under
    # the connection churn of the handshake phase still gets measured here
    host = Host(config=HostConfig())
    await host.start()
    try:
        async def connect() -> None:
            await host.dial(maddr)
            await host.identify(pid, timeout=10)

        await phase("connect", connect, 30)
        connected = not (isinstance(res.get("connect"), dict) and "error" in res["connect"])
        if connected:
            res.pop("connect", None)
            await phase(
                "throughput",
                lambda: bench_throughput(server, host, pid, opts.big, opts.big_runs),
                60 + 60 * opts.big_runs,
            )
            await phase("small", lambda: bench_small(server, host, pid, opts.small, opts.small_seconds), 120)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(host.close(), 5)
    await asyncio.sleep(0.2)
    await phase(
        "handshake",
        lambda: bench_handshakes(server, maddr, pid, opts.duration, opts.dialers, opts.identities),
        opts.duration + 120,
    )
    res["loop_errors"] = dict(loop_errors.most_common(5))
    return res


# --------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------

_LIVE_PEERS: list = []
_LIVE_LOCK = threading.Lock()


def kill_all() -> None:
    with _LIVE_LOCK:
        peers = list(_LIVE_PEERS)
    for p in peers:
        with contextlib.suppress(Exception):
            p.stop(timeout=5)


def start_watchdog(budget: float) -> None:
    def fire() -> None:
        print(f"net_bench: time budget of {budget:.0f}s exceeded; killing servers and exiting",
              file=sys.stderr, flush=True)
        with _LIVE_LOCK:
            peers = list(_LIVE_PEERS)
        for p in peers:
            with contextlib.suppress(Exception):
                p.kill(9)
        os._exit(3)

    t = threading.Timer(budget, fire)
    t.daemon = True
    t.start()


def start_server(harness, label: str, argv, cwd, impl: str) -> Server:
    peer = harness.Peer(impl, argv, cwd=cwd, name=label)
    with _LIVE_LOCK:
        _LIVE_PEERS.append(peer)
    try:
        peer.start(timeout=60)
    except Exception as exc:
        return Server(label, peer, error=f"start failed: {short_error(exc)}")
    return Server(label, peer)


def run_one(harness, label: str, make_argv, opts) -> dict:
    """Build/start one server, benchmark it, stop it (always)."""
    from kadfast.loop import run as run_loop

    t0 = time.monotonic()
    server = None
    try:
        try:
            argv, cwd, impl = make_argv()
        except Exception as exc:
            return {"error": f"build failed: {short_error(exc)}"}
        server = start_server(harness, label, argv, cwd, impl)
        if server.error:
            return {"error": server.error, "stderr": server.peer.stderr_tail(10)}
        res = run_loop(lambda: bench_server(server, opts), "uvloop")
        res["server_pid"] = server.pid
        res["server_ready"] = {k: v for k, v in server.peer.ready.items() if k in ("impl", "loop")}
        if any(isinstance(v, dict) and ("error" in v or v.get("error_count") or v.get("seq_errors") or v.get("conc_errors"))
               for v in res.values()):
            lines = [ln for ln in server.peer.stderr_tail(200).splitlines() if ln.strip()]
            res["server_stderr_tail"] = list(dict.fromkeys(lines))[-6:]
        if server.peer.alive:
            with contextlib.suppress(Exception):
                if impl == "kadfast":
                    res["server_stats"] = server.peer.call("stats", timeout=5)
        else:
            res["server_died"] = f"exit code {server.peer.proc.poll()}: {server.peer.stderr_tail(5)[-400:]}"
        return res
    except Exception as exc:
        return {"error": short_error(exc)}
    finally:
        if server is not None and server.peer is not None:
            code = None
            with contextlib.suppress(Exception):
                code = server.peer.stop(timeout=5)
            with _LIVE_LOCK:
                if server.peer in _LIVE_PEERS:
                    _LIVE_PEERS.remove(server.peer)
            log_progress(f"  {label}: done in {time.monotonic() - t0:.1f}s (server exit {code})")


def run_bench(opts) -> dict:
    harness = load_harness()
    client_log = install_log_counter()
    servers: list[tuple[str, Any]] = []
    loops = ["uvloop", "asyncio"] if opts.loop == "both" else [opts.loop]
    for kind in loops:
        def make(kind=kind):
            return [sys.executable, str(Path(__file__).resolve()), "--serve", "--loop", kind], str(ROOT), "kadfast"
        servers.append((f"kadfast/{kind}", make))
    for impl in opts.peers:
        def make(impl=impl):
            build = harness.build_for(impl).ensure()
            return list(build.argv), build.cwd, impl
        servers.append((PEER_NAMES.get(impl, impl), make))

    results: dict[str, Any] = {}
    client_logs: dict[str, Any] = {}
    for label, make in servers:
        log_progress(f"net_bench: {label} ...")
        client_log.reset()
        results[label] = run_one(harness, label, make, opts)
        client_logs[label] = client_log.summary()
        results[label]["client_log"] = client_logs[label]
    return {
        "config": {
            "quick": opts.quick,
            "handshake_seconds": opts.duration,
            "dialers": opts.dialers,
            "identities_per_dialer": opts.identities,
            "big_json_bytes": opts.big,
            "big_runs": opts.big_runs,
            "small_requests": opts.small,
            "small_min_seconds": opts.small_seconds,
            "client": "kadfast/uvloop (this process)",
            "cpus": os.cpu_count(),
        },
        "servers": results,
        "ratios_to": base_label(results),
        "ratios": ratios(results),
    }


METRICS = [
    # (label, path, higher is better, format)
    ("handshakes/s", ("handshake", "per_s"), True, "{:.0f}"),
    ("  server CPU ms/handshake", ("handshake", "server_cpu_ms_per_handshake"), False, "{:.2f}"),
    ("  client CPU ms/handshake", ("handshake", "client_cpu_ms_per_handshake"), False, "{:.2f}"),
    ("  server / client CPU util", ("handshake", "_util"), None, "{}"),
    ("  other processes' CPU util", ("handshake", "other_cpu_util"), None, "{:.2f}"),
    ("  handshake errors", ("handshake", "error_count"), None, "{}"),
    ("big JSON echo MB/s (best)", ("throughput", "mb_per_s_best"), True, "{:.1f}"),
    ("  MB/s (median)", ("throughput", "mb_per_s_median"), True, "{:.1f}"),
    ("  server CPU ms/MB", ("throughput", "server_cpu_ms_per_mb"), False, "{:.2f}"),
    ("small req/s sequential", ("small", "seq_per_s"), True, "{:.0f}"),
    ("  server CPU us/req", ("small", "seq_server_cpu_us"), False, "{:.0f}"),
    ("  client CPU us/req", ("small", "seq_client_cpu_us"), False, "{:.0f}"),
    ("small req/s concurrent", ("small", "conc_per_s"), True, "{:.0f}"),
    ("  server CPU us/req", ("small", "conc_server_cpu_us"), False, "{:.0f}"),
    ("  client CPU us/req", ("small", "conc_client_cpu_us"), False, "{:.0f}"),
]


def get_path(res: dict, path) -> Any:
    if path[-1] == "_util":
        ph = res.get(path[0]) if isinstance(res, dict) else None
        if isinstance(ph, dict) and ph.get("server_cpu_util") is not None:
            return f"{ph['server_cpu_util']:.2f} / {ph.get('client_cpu_util')}"
        return None
    cur: Any = res
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def _phase_error(res: dict, path) -> str | None:
    if "error" in res:
        return res["error"]
    ph = res.get(path[0])
    if isinstance(ph, dict) and "error" in ph:
        return ph["error"]
    if ph is None and "connect" in res and isinstance(res["connect"], dict):
        return res["connect"].get("error")
    return None


def base_label(results: dict) -> str | None:
    """What ratios are relative to: kadfast/uvloop, else the first server."""
    return "kadfast/uvloop" if "kadfast/uvloop" in results else next(iter(results), None)


def ratios(results: dict) -> dict:
    """Every server's value divided by the base server's (kadfast/uvloop), per metric."""
    bl = base_label(results)
    base = results.get(bl) if bl else None
    out: dict[str, dict[str, float]] = {}
    if not isinstance(base, dict):
        return out
    for label, path, _, _ in METRICS:
        b = get_path(base, path)
        if not isinstance(b, (int, float)) or not b or "errors" in label or "util" in label:
            continue
        row = {}
        for name, res in results.items():
            v = get_path(res, path)
            if isinstance(v, (int, float)) and name != bl:
                row[name] = round(v / b, 3)
        out[label.strip()] = row
    return out


def print_table(report: dict) -> None:
    results = report["servers"]
    names = list(results)
    bl = base_label(results)
    base = results.get(bl, {}) if bl else {}
    width = max(18, *(len(n) + 2 for n in names)) if names else 18
    cfg = report["config"]
    print(
        f"\nnet_bench: client kadfast/uvloop in this process, servers in child processes, "
        f"{cfg['cpus']} CPUs; handshakes {cfg['handshake_seconds']:.0f}s x {cfg['dialers']} dialers; "
        f"big JSON {cfg['big_json_bytes'] / 2**20:.2f} MiB x {cfg['big_runs']}; "
        f"batches of {cfg['small_requests']} small requests for >= {cfg['small_min_seconds']}s each"
    )
    print(f"(x = ratio to {bl}; CPU from /proc/<pid>/stat, 10 ms resolution)\n")
    head = f"{'metric':<28}" + "".join(f"{n:>{width}}" for n in names)
    print(head)
    print("-" * len(head))
    for label, path, _, fmt in METRICS:
        cells = []
        for n in names:
            res = results[n]
            v = get_path(res, path)
            if isinstance(v, str):
                text = v
            elif isinstance(v, (int, float)):
                text = fmt.format(v)
                b = get_path(base, path)
                if n != bl and isinstance(b, (int, float)) and b and "errors" not in label and "util" not in label:
                    text += f" ({v / b:.2f}x)"
            else:
                err = _phase_error(res, path)
                text = "ERR" if err else "-"
            cells.append(f"{text:>{width}}")
        print(f"{label:<28}" + "".join(cells))
    # errors and problems, spelled out
    notes = []
    for n in names:
        res = results[n]
        if "error" in res:
            notes.append(f"{n}: {res['error']}")
        for ph in ("handshake", "connect", "throughput", "small"):
            v = res.get(ph)
            if isinstance(v, dict) and "error" in v:
                notes.append(f"{n}: {ph}: {v['error']}")
        hs = res.get("handshake")
        if isinstance(hs, dict) and hs.get("errors"):
            notes.append(f"{n}: handshake errors {hs['errors']}")
        if isinstance(hs, dict) and hs.get("gave_up"):
            notes.append(f"{n}: handshake phase {hs['gave_up']}")
        if isinstance(hs, dict) and hs.get("server_identifies_reconnecting_client") is False:
            notes.append(f"{n}: server does not identify a reconnecting client; its identify awaited on first connections only")
        sm = res.get("small")
        for kind in ("seq", "conc"):
            if isinstance(sm, dict) and sm.get(f"{kind}_errors"):
                notes.append(f"{n}: {kind} request errors {sm[f'{kind}_errors']}")
        for line in res.get("server_stderr_tail", []):
            notes.append(f"{n}: server stderr: {line[:200]}")
        if res.get("server_died"):
            notes.append(f"{n}: server died: {res['server_died']}")
        if res.get("loop_errors"):
            notes.append(f"{n}: client loop errors {res['loop_errors']}")
        st = res.get("server_stats")
        if isinstance(st, dict):
            if st.get("handler_errors") or st.get("loop_errors"):
                notes.append(f"{n}: server handler errors {st.get('handler_errors')}, loop errors {st.get('loop_errors')}")
            for item in st.get("log", []):
                if not item["template"].startswith("DEBUG"):
                    notes.append(f"{n}: server log x{item['count']}: {item['example']}")
        for item in res.get("client_log", []):
            notes.append(f"{n}: client log x{item['count']}: {item['example']}")
    if notes:
        print("\nnotes:")
        for line in notes:
            print(f"  {line}")
    print()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (~3 s of handshakes per server, 1 MiB body)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both",
                    help="event loop(s) of the kadfast server (the client always uses uvloop)")
    ap.add_argument("--peers", default="py,js",
                    help="interop peers to benchmark as servers, comma list of py,js,rust,go ('' for none)")
    ap.add_argument("--dialers", type=int, default=4, help="concurrent dialer hosts in the handshake phase")
    ap.add_argument("--identities", type=int, default=256,
                    help="client identities each dialer rotates through in the handshake phase")
    ap.add_argument("--duration", type=float, default=None, help="seconds of handshakes per server")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.serve:
        return opts
    opts.peers = [p.strip() for p in opts.peers.split(",") if p.strip()]
    bad = [p for p in opts.peers if p not in PEER_NAMES]
    if bad:
        ap.error(f"unknown peer(s) {bad}; known: {', '.join(PEER_NAMES)}")
    if opts.duration is None:
        opts.duration = 3.0 if opts.quick else 10.0
    opts.big = BIG_QUICK if opts.quick else BIG_FULL
    opts.big_runs = 3 if opts.quick else 5
    opts.small = 200
    opts.small_seconds = 0.5 if opts.quick else 2.0
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.serve:
        return serve("uvloop" if opts.loop == "both" else opts.loop)
    sys.path.insert(0, str(ROOT))
    n_servers = (2 if opts.loop == "both" else 1) + len(opts.peers)
    # generous: build checks, starts (~seconds each), phases, stops
    start_watchdog(120 + n_servers * (opts.duration + (90 if opts.quick else 150)))
    try:
        report = run_bench(opts)
    finally:
        kill_all()
    if opts.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
