#!/usr/bin/env python3
"""Record load: PUT_VALUE and GET_VALUE requests per second against a kadfast
server holding 100,000 records, its memory per record, and the same with the
sqlite store.

    python bench/records_bench.py [--quick] [--json] [--records N] [--stores memory,sqlite,sqlite-each]
                                  [--duration S] [--value-size B] [--peers N] [--runs R] [--lag-probe]

The server is a kadfast ``KadNode`` in a child process of its own
(``python bench/records_bench.py --serve --store SPEC``) driven through the
interop harness's ``Peer`` (ready line, ``prefill``, ``gc``, ``stats``,
``stop``; killed in a ``finally``), with
``Config(store=StoreConfig(max_records=200_000), max_puts_per_peer_per_second=0,
max_reads_per_peer_per_second=0, max_records_per_peer=0, unvalidated_records="accept")``
-- the per-peer limits (PUT rate, default 20/s, burst 100; read rate,
default 200/s, burst 1,000; records per publisher) are turned off, since
all the load comes from one peer, and its overwrites of records that other
publishers stored are taken (last writer wins) -- and a routing table of random
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
request; for each store of ``--stores`` in turn (a fresh server each):
``memory``, ``sqlite`` (group commit, as ``kadfast server`` runs it: one
commit for the changes of the requests at hand, their replies sent after it)
and ``sqlite-each`` (a commit, and an fsync, per change).

``--lag-probe``: the server also times a 1 ms timer during the load and
reports how late it fired (99th percentile, maximum): how long its event
loop was held at a time (a commit's fsync, a batch of requests, a
maintenance step). It costs the server some CPU, so the CPU figures of such
a run are not the ones to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROOT,
    case_pipelined,
    count_loop_errors,
    fill_table,
    gc_rss,
    install_log_counter,
    kadfast_server_peer,
    load_harness,
    log_progress,
    make_emitter,
    percentile,
    print_case_table,
    proc_cpu,
    proc_rss_kib,
    random_peer_id,
    raw_client,
    ready_line,
    run_cases,
    run_server,
    short_error,
    start_control,
    summarize,
)

sys.path.insert(0, str(ROOT))

CASES = [("get", 1), ("get", 32), ("put", 1), ("put", 32)]
REQUEST_POOL = 4096
N_PUBLISHERS = 1000
RECORD_TTL = 48 * 3600.0


def record_key(i: int) -> bytes:
    return b"/bench/%010d" % i


# --------------------------------------------------------------------------
# the server (child process)
# --------------------------------------------------------------------------


def sqlite_prefill(store, n: int, value_size: int, publishers: list, expires: float) -> None:
    """Records ``record_key(0..n-1)`` with random values into a SqliteStore
    in one transaction (its ``put`` would commit, and fsync, per record)."""
    from kadfast.store import Record

    store.put_many(Record(record_key(i), os.urandom(value_size), publisher=publishers[i % len(publishers)],
                          expires=expires) for i in range(n))
    if store.group_commit:
        store.commit()


def prefill(node, store_spec: str, n: int, value_size: int) -> dict:
    from kadfast.store import Record

    pubs = [random_peer_id() for _ in range(N_PUBLISHERS)]
    store = node.store
    now = node.clock()
    t0 = time.perf_counter()
    if store_spec == "memory":
        put = store.put
        for i in range(n):
            put(Record(record_key(i), os.urandom(value_size), publisher=pubs[i % N_PUBLISHERS],
                       expires=now + RECORD_TTL), now)
    else:
        sqlite_prefill(store, n, value_size, pubs, now + RECORD_TTL)
    return {"records": len(store), "seconds": round(time.perf_counter() - t0, 2)}


def serve(loop_kind: str, store_spec: str, n_peers: int, lag_probe: bool = False) -> int:
    from kadfast.kad.node import Config, KadNode
    from kadfast.net import HostConfig
    from kadfast.sqlite_store import open_store
    from kadfast.store import StoreConfig

    counter = install_log_counter()
    emit = make_emitter()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_errors = count_loop_errors(loop)
        # all the load comes from one peer: its per-peer limits are off (the
        # PUT and read rates, its share of the store), and its PUT_VALUEs
        # overwrite records other publishers stored (last writer wins)
        cfg = Config(
            store=StoreConfig(max_records=200_000),
            max_puts_per_peer_per_second=0,
            max_reads_per_peer_per_second=0,
            max_records_per_peer=0,
            unvalidated_records="accept",
            periodic_bootstrap_interval=1e12,
        )
        from kadfast.keys import Ed25519KeyPair
        from kadfast.loop import tune_gc_for_server

        kp = Ed25519KeyPair.generate()
        # "sqlite:PATH" commits in groups, as `kadfast server` does;
        # "sqlite-each:PATH" commits every change on its own
        each = store_spec.startswith("sqlite-each:")
        spec = "sqlite:" + store_spec[len("sqlite-each:"):] if each else store_spec
        store = open_store(spec, kp.peer_id, cfg.store, group_commit=not each)
        node = KadNode(kp, config=cfg, host_config=HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"]), store=store)
        size = fill_table(node, n_peers)
        node.schedule.last_bootstrap = node.clock()  # no bootstrap lookups towards the made-up peers
        await node.start()
        tune_gc_for_server()  # as `kadfast server` does
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

        # --lag-probe: how late a 1 ms timer fires, i.e. how long the loop was
        # held (by a commit's fsync, a maintenance step, a burst of requests)
        lags: list[float] = []

        async def probe() -> None:
            while True:
                t = loop.time()
                await asyncio.sleep(0.001)
                lags.append(loop.time() - t - 0.001)

        probe_task = loop.create_task(probe()) if lag_probe else None

        def lag_stats() -> dict | None:
            if not lag_probe or not lags:
                return None
            return {"samples": len(lags), "p99_ms": round(percentile(lags, 99) * 1e3, 2),
                    "max_ms": round(max(lags) * 1e3, 2)}

        def maint_reset(req) -> dict:
            maint.update(calls=0, seconds=0.0, max=0.0)
            lags.clear()
            return {}

        start_control(loop, emit, done, {
            "prefill": lambda req: prefill(node, store_spec, int(req["n"]), int(req["value_size"])),
            "gc": lambda req: {"collected": gc.collect(), "rss_kib": proc_rss_kib()},
            "maint_reset": maint_reset,
            "stats": lambda req: {
                "records": len(node.store),
                "routing_table": len(node.table),
                "connections": node.host.connection_count(),
                "maintenance": dict(maint),
                "loop_lag": lag_stats(),
                "rss_kib": proc_rss_kib(),
                "loop_errors": dict(loop_errors.most_common(10)),
                "log": counter.summary(),
            },
        }, catch_errors=True)
        emit(ready_line(loop_kind, loop, node.peer_id, node.listen_addrs,
                        routing_table=size, store=type(node.store).__name__))
        try:
            await done.wait()
        finally:
            if probe_task is not None:
                probe_task.cancel()
            await node.stop()
            close = getattr(node.store, "close", None)
            if close:
                close()

    return run_server(main, loop_kind, emit)


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


async def case_reused(host, pid, kind, frames, meta, value_size, inflight, warmup, duration, win) -> dict:
    nf = len(frames)

    def check(i: int, body: bytes) -> None:  # reply i answers request i (one stream, in order)
        key, value = meta[i % nf]
        check_reply(kind, body, key, value, value_size)

    return await case_pipelined(host, pid, frames, inflight, warmup, duration, win, check)


async def bench_cases(server_pid: int, maddr: str, peer_id: str, opts) -> list[dict]:
    pools = {k: request_frames(k, opts.records, opts.value_size, REQUEST_POOL) for k in ("get", "put")}
    async with raw_client(maddr, peer_id) as (host, pid):
        def run_case(kind, inflight, win):
            frames, meta = pools[kind]
            return case_reused(host, pid, kind, frames, meta, opts.value_size, inflight, opts.warmup,
                               opts.duration, win)

        return await run_cases(server_pid, opts, run_case, 120, indent="    ")


def run_store(harness, label: str, spec: str, opts) -> dict:
    from kadfast.loop import run as run_loop

    peer = kadfast_server_peer(harness, __file__, label, "--loop", opts.loop, "--store", spec,
                               "--peers", str(opts.peers), *(["--lag-probe"] if opts.lag_probe else []))
    res: dict[str, Any] = {"store": spec}
    try:
        peer.start(timeout=120)
        pid = peer.proc.pid
        res["server"] = {k: peer.ready.get(k) for k in ("impl", "loop", "routing_table", "store")}
        rss0 = gc_rss(peer, 1.0, 120)
        pf = peer.call("prefill", timeout=600, n=opts.records, value_size=opts.value_size)
        rss1 = gc_rss(peer, 1.0, 120)
        mem = {
            "records": pf["records"],
            "prefill_seconds": pf["seconds"],
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "bytes_per_record": round((rss1 - rss0) * 1024 / pf["records"], 1) if pf["records"] else None,
        }
        if spec.startswith("sqlite"):
            path = spec.split(":", 1)[1]
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
            "loop_lag": st["loop_lag"],
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
            spec = "memory" if store == "memory" else f"{store}:{os.path.join(tmp, store + '.db')}"
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
                      "max_puts_per_peer_per_second=0, max_reads_per_peer_per_second=0, max_records_per_peer=0, "
                      "unvalidated_records='accept')",
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
            print_case_table(cases, indent="  ", case_width=10)
        st = res.get("server_stats")
        if st:
            print(f"  after the load: {st['records']} records, RSS {st['rss_kib'] / 1024:.1f} MiB; maintenance "
                  f"{st['maintenance_ms_per_step']} ms/step (max {st['maintenance_max_ms']} ms) during the load")
            if st.get("loop_lag"):
                lag = st["loop_lag"]
                print(f"  server loop held (a 1 ms timer's lateness) during the load: p99 {lag['p99_ms']} ms, "
                      f"max {lag['max_ms']} ms ({lag['samples']} samples)")
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
    ap.add_argument("--stores", default="memory,sqlite", help="comma list of memory, sqlite (group commit, as "
                    "kadfast server), sqlite-each (a commit per change)")
    ap.add_argument("--runs", type=int, default=1, help="repeat every case and report the medians")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per case (default 5; quick 1)")
    ap.add_argument("--cases", default=None, help="comma list, e.g. get/32,put/1 (default get/1,get/32,put/1,put/32)")
    ap.add_argument("--peers", type=int, default=1000, help="random peers in the server's routing table")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the server's event loop")
    ap.add_argument("--lag-probe", action="store_true", help="the server reports how late a 1 ms timer fires "
                    "during the load (p99, max): how long its loop was held; costs it some CPU")
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
    if any(s not in ("memory", "sqlite", "sqlite-each") for s in opts.stores):
        ap.error("--stores: memory, sqlite and/or sqlite-each")
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
        return serve(opts.loop, opts.store, opts.peers, opts.lag_probe)
    report = run_bench(opts)
    if opts.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0 if all("error" not in r for r in report["stores"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
