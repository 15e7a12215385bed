#!/usr/bin/env python3
"""Record load: PUT_VALUE and GET_VALUE requests per second against a kadfast
server holding 100,000 records, its memory per record, and the same with the
sqlite store.

    python bench/records_bench.py [--quick] [--json] [--records N] [--stores memory,sqlite]
                                  [--duration S] [--value-size B] [--peers N] [--runs R]

The server is a kadfast ``KadNode`` in a child process of its own
(``python bench/records_bench.py --serve --store SPEC``) driven through the
interop harness's ``Peer`` (ready line, ``prefill``, ``gc``, ``stats``,
``stop``; killed in a ``finally``), with
``Config(store=StoreConfig(max_records=200_000), max_puts_per_peer_per_second=0)``
-- the per-peer PUT rate limit (default 20/s, burst 100) is turned off,
since all the load comes from one peer -- and a routing table of random
peers (``--peers``, as in ``bench/findnode_bench.py``) so that every
GET_VALUE reply carries the record and 20 closer peers, as in a real DHT.

Prefill: the server fills its store directly (``--records``, 100,000; 10,000
with ``--quick``): keys ``/bench/<10 digits>``, random values of
``--value-size`` bytes (default 128), publishers drawn from 1,000 peer ids,
expiry 48 h. The memory store gets ``store.put`` per record; the sqlite
store one bulk transaction (its ``put`` commits and fsyncs each record,
which would take minutes). Server RSS (``VmRSS``, after ``gc.collect()``)
before and after the prefill, divided by the count: memory per record (for
sqlite also the database size per record). Then the server's CPU while idle
(its once-a-second maintenance step).

The load generator is this process: a raw kadfast client on uvloop (a
kadfast ``Host`` and its streams, nothing else) sending pre-encoded
GET_VALUE frames (random stored keys) and PUT_VALUE frames (random stored
keys overwritten with a new value of the same size, so the record count does
not change) on one reused stream with 1 or 32 requests in flight; replies
are counted by ``MessageReader`` framing, not decoded (the first few of each
case are decoded and checked: the GET reply carries the record, the PUT
reply echoes it).

Per case: requests per second and server CPU (``/proc/<pid>/stat``) per
request; memory and ``sqlite:PATH`` stores in turn (a fresh server each).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from net_bench import (  # noqa: E402
    install_log_counter,
    load_harness,
    log_progress,
    machine_busy,
    proc_cpu,
    short_error,
)
from findnode_bench import fill_table, proc_sys_cpu  # noqa: E402

KAD_PROTOCOL = "/ipfs/kad/1.0.0"
CASES = [("get", 1), ("get", 32), ("put", 1), ("put", 32)]
REQUEST_POOL = 4096
N_PUBLISHERS = 1000
RECORD_TTL = 48 * 3600.0


def record_key(i: int) -> bytes:
    return b"/bench/%010d" % i


def proc_rss_kib(pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# --------------------------------------------------------------------------
# the server (child process)
# --------------------------------------------------------------------------


def prefill(node, store_spec: str, n: int, value_size: int) -> dict:
    from kadfast.peerid import PeerId
    from kadfast.store import Record

    pubs = [PeerId(bytes.fromhex("002408011220") + os.urandom(32)) for _ in range(N_PUBLISHERS)]
    store = node.store
    now = node.clock()
    t0 = time.perf_counter()
    if store_spec == "memory":
        put = store.put
        for i in range(n):
            put(Record(record_key(i), os.urandom(value_size), publisher=pubs[i % N_PUBLISHERS],
                       expires=now + RECORD_TTL), now)
    else:
        # one transaction: SqliteStore.put commits (WAL, synchronous=FULL) per record
        db = store._conn
        wall = store._to_disk(now + RECORD_TTL)
        pub_bytes = [p.to_bytes() for p in pubs]
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO records (key, value, publisher, expires) VALUES (?, ?, ?, ?)",
            ((record_key(i), os.urandom(value_size), pub_bytes[i % N_PUBLISHERS], wall) for i in range(n)),
        )
        db.execute("COMMIT")
    return {"records": len(store), "seconds": round(time.perf_counter() - t0, 2)}


def serve(loop_kind: str, store_spec: str, n_peers: int) -> int:
    from kadfast.kad.node import Config, KadNode
    from kadfast.loop import run as run_loop
    from kadfast.net import HostConfig
    from kadfast.sqlite_store import open_store
    from kadfast.store import StoreConfig

    counter = install_log_counter()
    out_lock = threading.Lock()

    def emit(obj: dict) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_errors: collections.Counter[str] = collections.Counter()

        def on_loop_error(lp, ctx):
            exc = ctx.get("exception")
            loop_errors[short_error(exc) if exc else str(ctx.get("message"))[:200]] += 1

        loop.set_exception_handler(on_loop_error)
        cfg = Config(
            store=StoreConfig(max_records=200_000),
            max_puts_per_peer_per_second=0,
            periodic_bootstrap_interval=1e12,
        )
        from kadfast.keys import Ed25519KeyPair

        kp = Ed25519KeyPair.generate()
        store = open_store(store_spec, kp.peer_id, cfg.store)
        node = KadNode(kp, config=cfg, host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]), store=store)
        size = fill_table(node, n_peers)
        node._last_bootstrap = node.clock()  # no bootstrap lookups towards the made-up peers
        await node.start()
        done = asyncio.Event()
        # time spent in the maintenance step (it walks the store once a second)
        maint = {"calls": 0, "seconds": 0.0, "max": 0.0}
        inner = node.maintenance

        async def timed_maintenance(now):
            t0 = time.perf_counter()
            try:
                return await inner(now)
            finally:
                dt = time.perf_counter() - t0
                maint["calls"] += 1
                maint["seconds"] += dt
                maint["max"] = max(maint["max"], dt)

        node.maintenance = timed_maintenance

        def on_line(line: str | None) -> None:
            if line is None:
                done.set()
                return
            try:
                req = json.loads(line)
            except ValueError:
                return
            cmd, rid = req.get("cmd"), req.get("id")
            try:
                if cmd == "stop":
                    emit({"id": rid, "ok": True, "result": {}})
                    done.set()
                elif cmd == "prefill":
                    emit({"id": rid, "ok": True, "result": prefill(node, store_spec, int(req["n"]), int(req["value_size"]))})
                elif cmd == "gc":
                    n = gc.collect()
                    emit({"id": rid, "ok": True, "result": {"collected": n, "rss_kib": proc_rss_kib()}})
                elif cmd == "maint_reset":
                    maint.update(calls=0, seconds=0.0, max=0.0)
                    emit({"id": rid, "ok": True, "result": {}})
                elif cmd == "stats":
                    emit({"id": rid, "ok": True, "result": {
                        "records": len(node.store),
                        "routing_table": len(node.table),
                        "connections": node.host.connection_count(),
                        "maintenance": dict(maint),
                        "rss_kib": proc_rss_kib(),
                        "loop_errors": dict(loop_errors.most_common(10)),
                        "log": counter.summary(),
                    }})
                else:
                    emit({"id": rid, "ok": False, "error": f"unsupported: {cmd}"})
            except Exception as exc:
                emit({"id": rid, "ok": False, "error": short_error(exc)})

        def read_stdin() -> None:
            for raw in sys.stdin:
                if raw.strip():
                    loop.call_soon_threadsafe(on_line, raw)
            loop.call_soon_threadsafe(on_line, None)

        threading.Thread(target=read_stdin, daemon=True).start()
        emit({
            "event": "ready",
            "impl": f"kadfast/{loop_kind}",
            "loop": type(loop).__module__,
            "peer_id": str(node.peer_id),
            "addrs": [str(a) for a in node.listen_addrs],
            "routing_table": size,
            "store": type(node.store).__name__,
        })
        try:
            await done.wait()
        finally:
            await node.stop()
            close = getattr(node.store, "close", None)
            if close:
                close()

    try:
        run_loop(main, loop_kind)
    except Exception as exc:  # pragma: no cover - reported to the parent
        emit({"event": "fatal", "error": short_error(exc)})
        return 1
    return 0


# --------------------------------------------------------------------------
# the load generator (this process)
# --------------------------------------------------------------------------


def request_frames(kind: str, n_records: int, value_size: int, n: int) -> tuple[list[bytes], list[tuple[bytes, bytes | None]]]:
    from kadfast.kad.pb import KadMessage, KadRecord, MessageType, encode_message, frame

    frames, meta = [], []
    for _ in range(n):
        key = record_key(random.randrange(n_records))
        if kind == "get":
            msg = KadMessage(MessageType.GET_VALUE, key=key)
            meta.append((key, None))
        else:
            value = os.urandom(value_size)
            msg = KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, value))
            meta.append((key, value))
        frames.append(frame(encode_message(msg)))
    return frames, meta


def check_reply(kind: str, body: bytes, key: bytes, value: bytes | None, value_size: int) -> None:
    from kadfast.kad.pb import MessageType, decode_message

    msg = decode_message(body)
    want = MessageType.GET_VALUE if kind == "get" else MessageType.PUT_VALUE
    if msg.type != want:
        raise RuntimeError(f"{kind}: reply of type {msg.type!r}")
    if msg.record is None or msg.record.key != key:
        raise RuntimeError(f"{kind}: reply without the record of {key!r}")
    if kind == "get":
        if len(msg.record.value) != value_size:
            raise RuntimeError(f"get: value of {len(msg.record.value)} bytes, want {value_size}")
        if len(msg.closer_peers) != 20:
            raise RuntimeError(f"get: {len(msg.closer_peers)} closer peers, want 20")
    elif msg.record.value != value:
        raise RuntimeError("put: the echo carries another value")


class Window:
    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.replies = 0

    def start(self) -> None:
        self.replies = 0
        self.cs0, self.cc0, self.busy0 = proc_cpu(self.server_pid), proc_cpu(), machine_busy()
        self.sys0 = proc_sys_cpu(self.server_pid)
        self.t0 = time.perf_counter()

    def stop(self) -> dict:
        dt = time.perf_counter() - self.t0
        cs, cc, busy = proc_cpu(self.server_pid), proc_cpu(), machine_busy()
        sys1 = proc_sys_cpu(self.server_pid)
        n = self.replies
        s_cpu = cs - self.cs0 if cs is not None and self.cs0 is not None else None
        c_cpu = cc - self.cc0 if cc is not None and self.cc0 is not None else None
        other = (busy - self.busy0 - (s_cpu or 0) - (c_cpu or 0)) / dt if busy is not None and self.busy0 is not None else None
        return {
            "requests": n,
            "seconds": round(dt, 3),
            "per_s": round(n / dt, 1),
            "server_cpu_us": round(s_cpu / n * 1e6, 2) if s_cpu is not None and n else None,
            "server_sys_us": round((sys1 - self.sys0) / n * 1e6, 2) if sys1 is not None and self.sys0 is not None and n else None,
            "client_cpu_us": round(c_cpu / n * 1e6, 2) if c_cpu is not None and n else None,
            "server_util": round(s_cpu / dt, 2) if s_cpu is not None else None,
            "other_util": round(other, 2) if other is not None else None,
        }


async def case_reused(host, pid, kind, frames, meta, value_size, inflight, warmup, duration, win) -> dict:
    from kadfast.kad.pb import MessageReader

    loop = asyncio.get_running_loop()
    stream = await host.new_stream(pid, KAD_PROTOCOL)
    reader = MessageReader(1 << 20)
    feed = reader.feed
    write = stream.write
    nf = len(frames)
    i = 0
    sent_meta = collections.deque()  # (key, value) of the first requests, to check their replies
    checked = 0
    for _ in range(inflight):
        write(frames[i % nf])
        if i < 3:
            sent_meta.append(meta[i % nf])
        i += 1
    outstanding = inflight
    phase = 0  # 0 warm-up, 1 measuring, 2 draining
    t_next = loop.time() + warmup
    try:
        while outstanding:
            data = await stream.read()
            if not data:
                raise RuntimeError("server closed the stream")
            bodies = feed(data)
            got = len(bodies)
            if checked < 3:
                for b in bodies[: 3 - checked]:
                    key, value = sent_meta.popleft()
                    check_reply(kind, b, key, value, value_size)
                    checked += 1
            outstanding -= got
            win.replies += got
            if phase < 2:
                now = loop.time()
                if now >= t_next:
                    if phase == 0:
                        phase = 1
                        win.start()
                        t_next = now + duration
                    else:
                        phase = 2
                        continue
                for _ in range(got):
                    write(frames[i % nf])
                    if i < 3:
                        sent_meta.append(meta[i % nf])
                    i += 1
                outstanding += got
    finally:
        stream.close()
    return win.stop()


async def bench_cases(server_pid: int, maddr: str, peer_id: str, opts) -> list[dict]:
    from kadfast import Multiaddr, PeerId
    from kadfast.net import Host, HostConfig

    host = Host(config=HostConfig())
    await host.start()
    pid = PeerId.from_string(peer_id)
    pools = {k: request_frames(k, opts.records, opts.value_size, REQUEST_POOL) for k in ("get", "put")}
    out = []
    try:
        await asyncio.wait_for(host.dial(Multiaddr(maddr)), 20)
        await host.identify(pid, timeout=10)
        for run in range(opts.runs):
            for kind, inflight in opts.cases:
                frames, meta = pools[kind]
                win = Window(server_pid)
                try:
                    res = await asyncio.wait_for(
                        case_reused(host, pid, kind, frames, meta, opts.value_size, inflight, opts.warmup,
                                    opts.duration, win), opts.duration + 120)
                except (asyncio.TimeoutError, Exception) as exc:
                    res = {"error": "timed out" if isinstance(exc, asyncio.TimeoutError) else short_error(exc)}
                res.update(run=run, case=f"{kind}/{inflight}")
                out.append(res)
                log_progress(f"    run {run + 1}/{opts.runs} {kind}/{inflight}: "
                             + (res.get("error") or f"{res['per_s']:.0f} req/s, server {res['server_cpu_us']} us/req"))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(host.close(), 5)
    return out


def summarize(samples: list[dict]) -> dict:
    by_case: dict[str, list[dict]] = collections.defaultdict(list)
    for s in samples:
        by_case[s["case"]].append(s)
    out = {}
    for case, rows in by_case.items():
        good = [r for r in rows if "error" not in r]
        entry: dict[str, Any] = {"runs": len(good)}
        for f in ("per_s", "server_cpu_us", "server_sys_us", "client_cpu_us", "server_util", "other_util"):
            vals = [r[f] for r in good if r.get(f) is not None]
            if vals:
                entry[f] = round(statistics.median(vals), 2)
        errs = [r["error"] for r in rows if "error" in r]
        if errs:
            entry["errors"] = dict(collections.Counter(errs))
        out[case] = entry
    return out


def gc_rss(peer, settle: float = 0.5) -> int:
    time.sleep(settle)
    r = peer.call("gc", timeout=120)
    time.sleep(0.2)
    return proc_rss_kib(peer.proc.pid) or r["rss_kib"]


def run_store(harness, label: str, spec: str, opts) -> dict:
    from kadfast.loop import run as run_loop

    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", "--loop", opts.loop, "--store", spec,
            "--peers", str(opts.peers)]
    peer = harness.Peer("kadfast", argv, cwd=str(ROOT), name=label)
    res: dict[str, Any] = {"store": spec}
    try:
        peer.start(timeout=120)
        pid = peer.proc.pid
        res["server"] = {k: peer.ready.get(k) for k in ("impl", "loop", "routing_table", "store")}
        rss0 = gc_rss(peer, 1.0)
        pf = peer.call("prefill", timeout=600, n=opts.records, value_size=opts.value_size)
        rss1 = gc_rss(peer, 1.0)
        mem = {
            "records": pf["records"],
            "prefill_seconds": pf["seconds"],
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "bytes_per_record": round((rss1 - rss0) * 1024 / pf["records"], 1) if pf["records"] else None,
        }
        if spec.startswith("sqlite:"):
            path = spec[len("sqlite:"):]
            size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
            mem["db_bytes"] = size
            mem["db_bytes_per_record"] = round(size / pf["records"], 1)
        # idle: the maintenance step runs once a second over the whole store
        peer.call("maint_reset", timeout=10)
        c0, t0 = proc_cpu(pid), time.time()
        time.sleep(opts.idle_seconds)
        idle = (proc_cpu(pid) - c0) / (time.time() - t0)
        st = peer.call("stats", timeout=30)
        m = st["maintenance"]
        mem["idle_server_cpu_util"] = round(idle, 3)
        mem["maintenance_ms_per_step"] = round(m["seconds"] / m["calls"] * 1e3, 2) if m["calls"] else None
        mem["maintenance_max_ms"] = round(m["max"] * 1e3, 2)
        res["memory"] = mem
        log_progress(f"  {label}: {pf['records']} records prefilled in {pf['seconds']} s; RSS {rss0 / 1024:.1f} -> "
                     f"{rss1 / 1024:.1f} MiB = {mem['bytes_per_record']} B/record; idle CPU {idle:.3f}, "
                     f"maintenance {mem['maintenance_ms_per_step']} ms/step")
        peer.call("maint_reset", timeout=10)
        samples = run_loop(lambda: bench_cases(pid, peer.maddr, peer.peer_id, opts), "uvloop")
        res["samples"] = samples
        res["cases"] = summarize(samples)
        st = peer.call("stats", timeout=30)
        m = st["maintenance"]
        res["server_stats"] = {
            "records": st["records"],
            "rss_kib": st["rss_kib"],
            "maintenance_steps_during_load": m["calls"],
            "maintenance_ms_per_step": round(m["seconds"] / m["calls"] * 1e3, 2) if m["calls"] else None,
            "maintenance_max_ms": round(m["max"] * 1e3, 2),
            "loop_errors": st["loop_errors"],
            "log": st["log"],
        }
    except Exception as exc:
        res["error"] = short_error(exc)
        res["stderr"] = peer.stderr_tail(10) if peer.proc else ""
    finally:
        with contextlib.suppress(Exception):
            peer.stop(timeout=30)
    return res


def run_bench(opts) -> dict:
    harness = load_harness()
    install_log_counter()
    tmp = tempfile.mkdtemp(prefix="kadfast-records-bench-")
    results = {}
    t_start = time.monotonic()
    try:
        for store in opts.stores:
            spec = "memory" if store == "memory" else f"sqlite:{os.path.join(tmp, 'records.db')}"
            label = f"kadfast/{opts.loop} {store}"
            log_progress(f"records_bench: {label} ...")
            results[store] = run_store(harness, label, spec, opts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "config": {
            "quick": opts.quick,
            "records": opts.records,
            "value_size": opts.value_size,
            "peers_met": opts.peers,
            "runs": opts.runs,
            "duration_s": opts.duration,
            "cases": [f"{k}/{n}" for k, n in opts.cases],
            "server": "kadfast KadNode in a child process; Config(store=StoreConfig(max_records=200_000), "
                      "max_puts_per_peer_per_second=0)",
            "client": "raw kadfast client on uvloop in this process (a Host and one reused stream per case): "
                      "pre-encoded GET_VALUE / PUT_VALUE (overwrite) frames for random stored keys, replies counted "
                      "by MessageReader framing, first ones decoded and checked",
            "cpus": os.cpu_count(),
        },
        "stores": results,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }


def print_table(report: dict) -> None:
    cfg = report["config"]
    print(f"\nrecords_bench: GET_VALUE / PUT_VALUE over Noise+Yamux on loopback, {cfg['cpus']} CPUs; "
          f"{cfg['records']} records of {cfg['value_size']} B; server routing table from {cfg['peers_met']} random peers; "
          f"{cfg['runs']} run(s) x {cfg['duration_s']:g}s per case, medians")
    print(f"server: {cfg['server']}")
    print(f"load generator: {cfg['client']}")
    for store, res in report["stores"].items():
        if "error" in res:
            print(f"\n{store}: ERROR {res['error']}\n{res.get('stderr', '')}")
        m = res.get("memory")
        if m:
            extra = (f"; database {m['db_bytes'] / 1e6:.1f} MB = {m['db_bytes_per_record']} B/record"
                     if "db_bytes" in m else "")
            print(f"\n{store} ({res['store'].split(':')[0]}): {m['records']} records prefilled in {m['prefill_seconds']} s; "
                  f"server RSS {m['rss_before_kib'] / 1024:.1f} -> {m['rss_after_kib'] / 1024:.1f} MiB = "
                  f"{m['bytes_per_record']} B of RSS per record{extra}")
            print(f"  idle server CPU {m['idle_server_cpu_util']:.3f} of a core; maintenance step "
                  f"{m['maintenance_ms_per_step']} ms (max {m['maintenance_max_ms']} ms) once a second")
        cases = res.get("cases")
        if cases:
            head = (f"  {'case':<10}{'req/s':>10}{'server us/req':>15}{'(kernel)':>10}{'client us/req':>15}"
                    f"{'server util':>13}{'other util':>12}")
            print(head)
            print("  " + "-" * (len(head) - 2))
            for case, row in cases.items():
                def f(key, fmt):
                    v = row.get(key)
                    return fmt.format(v) if isinstance(v, (int, float)) else "-"
                print(f"  {case:<10}{f('per_s', '{:.0f}'):>10}{f('server_cpu_us', '{:.1f}'):>15}"
                      f"{f('server_sys_us', '{:.1f}'):>10}{f('client_cpu_us', '{:.1f}'):>15}"
                      f"{f('server_util', '{:.2f}'):>13}{f('other_util', '{:.2f}'):>12}"
                      + (f"  errors {row['errors']}" if row.get("errors") else ""))
        st = res.get("server_stats")
        if st:
            print(f"  after the load: {st['records']} records, RSS {st['rss_kib'] / 1024:.1f} MiB; maintenance "
                  f"{st['maintenance_ms_per_step']} ms/step (max {st['maintenance_max_ms']} ms) during the load")
            if st.get("loop_errors"):
                print(f"  server loop errors: {st['loop_errors']}")
            for item in st.get("log", []):
                print(f"  server log x{item['count']}: {item['example'][:160]}")
    print(f"(run took {report['elapsed_s']} s)\n")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 records, 1 s per case")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--records", type=int, default=None, help="records prefilled (default 100,000; quick 10,000)")
    ap.add_argument("--value-size", type=int, default=128, help="bytes per record value")
    ap.add_argument("--stores", default="memory,sqlite", help="comma list of memory, sqlite")
    ap.add_argument("--runs", type=int, default=1, help="repeat every case and report the medians")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per case (default 5; quick 1)")
    ap.add_argument("--cases", default=None, help="comma list, e.g. get/32,put/1 (default get/1,get/32,put/1,put/32)")
    ap.add_argument("--peers", type=int, default=1000, help="random peers in the server's routing table")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the server's event loop")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", default="memory", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.serve:
        return opts
    if opts.records is None:
        opts.records = 10_000 if opts.quick else 100_000
    if not 1 <= opts.records <= 200_000:
        ap.error("--records must be between 1 and 200,000 (the server's max_records)")
    if opts.duration is None:
        opts.duration = 1.0 if opts.quick else 5.0
    opts.warmup = 0.3 if opts.quick else 0.5
    opts.idle_seconds = 2.0 if opts.quick else 5.0
    opts.stores = [s.strip() for s in opts.stores.split(",") if s.strip()]
    if any(s not in ("memory", "sqlite") for s in opts.stores):
        ap.error("--stores: memory and/or sqlite")
    if opts.cases:
        opts.cases = [(c.split("/")[0], int(c.split("/")[1])) for c in opts.cases.split(",") if c.strip()]
        if any(k not in ("get", "put") or n < 1 for k, n in opts.cases):
            ap.error("bad --cases")
    else:
        opts.cases = list(CASES)
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.serve:
        return serve(opts.loop, opts.store, opts.peers)
    report = run_bench(opts)
    if opts.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0 if all("error" not in r for r in report["stores"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
