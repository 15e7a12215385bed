"""kadfast.kad.query.QueryPool on given times, no sockets: queries side by
side, parallelism, timeouts at next_deadline(), early finish, cancel, late
answers, the max_queries bound, the repair flag, determinism."""

from __future__ import annotations

import heapq
import random

import pytest

from kadfast import _xor
from kadfast.errors import KadError, TooManyQueries
from kadfast.kad.query import (
    ClosestPeersIter,
    QueryFinished,
    QueryPool,
    QueryStats,
    SendRequest,
)


def rand_key(rng: random.Random):
    return _xor.Key.from_digest(rng.getrandbits(256).to_bytes(32, "big"))


class Net:
    """``n`` peers named 0..n-1 under random keys; every live peer answers a
    lookup of ``target`` with the k peers of the universe closest to it
    (dead ones included: they do not know who left) after ``latency(peer)``;
    dead peers fail after ``fail_after``, silent ones never answer."""

    def __init__(self, n: int, seed: int = 0, k: int = 20) -> None:
        self.rng = random.Random(seed)
        self.keys = [rand_key(self.rng) for _ in range(n)]
        self.k = k
        self.dead: set[int] = set()
        self.silent: set[int] = set()
        self.fail_after = 0.5

    def closest(self, target, n: int) -> list[int]:
        return sorted(range(len(self.keys)), key=lambda i: _xor.xor_distance(target, self.keys[i]))[:n]

    def pairs(self, peers) -> list[tuple]:
        return [(self.keys[i], i) for i in peers]

    def latency(self, target, peer: int) -> float:
        # deterministic per (target, peer): the same request takes the same time
        return 0.01 + (target.digest[0] ^ self.keys[peer].digest[1]) / 2550.0


def drive(pool: QueryPool, net: Net, targets: dict[int, object], now: float = 0.0, until: float = 1e9,
          on_answer=None) -> tuple[dict[int, QueryFinished], list]:
    """Run ``pool`` until empty (or ``until``): answers arrive per ``net``;
    ``on_answer(qid, peer)`` is called after each success. Returns the
    QueryFinished actions by query id and the log of every action."""
    heap: list = []
    seq = 0
    done: dict[int, QueryFinished] = {}
    log: list = []
    while len(pool) and now <= until:
        for act in pool.poll(now):
            log.append((now, act))
            if isinstance(act, SendRequest):
                if act.peer in net.silent:
                    continue
                target = net.keys[act.peer] if act.repair else targets[act.query_id]
                delay = net.fail_after if act.peer in net.dead else net.latency(target, act.peer)
                heapq.heappush(heap, (now + delay, seq, act.query_id, act.peer, target))
                seq += 1
            else:
                done[act.query_id] = act
        if not len(pool):
            break
        wake = pool.next_deadline()
        assert wake is not None
        if heap and heap[0][0] < wake:
            wake = heap[0][0]
        now = max(now, wake)
        while heap and heap[0][0] <= now:
            _, _, qid, peer, target = heapq.heappop(heap)
            if peer in net.dead:
                pool.on_failure(qid, peer, now)
            else:
                pool.on_success(qid, peer, net.pairs(net.closest(target, net.k)), now)
                if on_answer is not None:
                    on_answer(qid, peer)
    return done, log


# -- basics ----------------------------------------------------------------------


def test_ids_len_get_and_an_empty_pool():
    pool = QueryPool()
    assert len(pool) == 0 and pool.poll(0.0) == [] and pool.next_deadline() is None
    net = Net(30)
    a = pool.add(rand_key(net.rng), net.pairs(range(30)), 0.0)
    b = pool.add(rand_key(net.rng), net.pairs(range(30)), 0.0, info="b")
    assert isinstance(a, int) and isinstance(b, int) and a != b
    assert len(pool) == 2 and a in pool and pool.ids() == [a, b]
    q = pool.get(b)
    assert q is not None and q.id == b and q.info == "b" and isinstance(q.iter, ClosestPeersIter)
    assert q.stats == QueryStats(start=0.0)
    assert pool.get(12345) is None
    # inputs for unknown queries are ignored
    assert pool.on_success(12345, 1, [], 0.0) is False
    assert pool.on_failure(12345, 1, 0.0) is False
    assert pool.finish(12345) is False and pool.cancel(12345) is False


def test_a_query_with_no_known_peer_finishes_at_the_first_poll():
    pool = QueryPool()
    net = Net(1)
    qid = pool.add(rand_key(net.rng), [], 2.0, info="x")
    assert pool.next_deadline() == 2.0
    assert pool.poll(2.0) == [QueryFinished(qid, [], QueryStats(start=2.0, end=2.0), "x")]
    assert len(pool) == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        QueryPool(max_queries=0)
    pool = QueryPool()
    net = Net(3)
    with pytest.raises(ValueError):
        pool.add(rand_key(net.rng), net.pairs(range(3)), 0.0, parallelism=0)
    assert len(pool) == 0


# -- several queries -------------------------------------------------------------------


def test_interleaved_queries_each_respect_their_parallelism_and_find_the_closest():
    net = Net(300, seed=1)
    pool = QueryPool()
    targets = {}
    alphas = {}
    for i, alpha in enumerate((1, 2, 3, 5)):
        target = rand_key(net.rng)
        known = net.pairs(net.rng.sample(range(300), 20))
        qid = pool.add(target, known, 0.0, k=20, parallelism=alpha, info=i)
        targets[qid] = target
        alphas[qid] = alpha
    done, log = drive(pool, net, targets)
    first = [a for now, a in log if now == 0.0]
    assert [a.query_id for a in first] == sorted(a.query_id for a in first)   # in the order added
    for qid, alpha in alphas.items():
        assert sum(1 for a in first if a.query_id == qid) == alpha
    # the polls interleave the queries' requests
    order = [a.query_id for _, a in log if isinstance(a, SendRequest)]
    assert any(order[i] != order[i + 1] for i in range(len(order) - 1))
    assert sorted(done) == sorted(targets) and len(pool) == 0
    for qid, fin in done.items():
        assert fin.result == net.closest(targets[qid], 20)
        assert fin.info == list(alphas).index(qid)
        assert fin.stats.requests >= fin.stats.successes + fin.stats.failures > 0


def test_outstanding_requests_never_exceed_parallelism():
    net = Net(200, seed=2)
    pool = QueryPool()
    targets = {pool.add(t, net.pairs(range(0, 200, 7)), 0.0, parallelism=3): t
               for t in (rand_key(net.rng) for _ in range(3))}
    outstanding: dict[int, int] = {q: 0 for q in targets}
    heap: list = []
    now = 0.0
    seq = 0
    while len(pool):
        for act in pool.poll(now):
            if isinstance(act, SendRequest):
                outstanding[act.query_id] += 1
                it = pool.get(act.query_id).iter
                cap = max(it.num_results, it.parallelism) if it.stalled else it.parallelism
                assert outstanding[act.query_id] <= cap
                heapq.heappush(heap, (now + net.latency(targets[act.query_id], act.peer), seq, act))
                seq += 1
        if not len(pool):
            break
        deadline = pool.next_deadline()
        assert heap and deadline is not None
        now = max(now, min(heap[0][0], deadline))
        while heap and heap[0][0] <= now:
            act = heapq.heappop(heap)[2]
            outstanding[act.query_id] -= 1
            pool.on_success(act.query_id, act.peer, net.pairs(net.closest(targets[act.query_id], 20)), now)


def test_queries_of_one_pool_do_not_affect_each_other():
    """Each query of a shared pool sends what it sends alone, when it does."""
    net = Net(400, seed=3)
    net.dead = set(net.rng.sample(range(400), 60))
    net.silent = set(net.rng.sample(sorted(set(range(400)) - net.dead), 20))
    specs = [(rand_key(net.rng), net.pairs(net.rng.sample(range(400), 25)), repair) for repair in (False, True) * 3]
    shared = QueryPool()
    targets = {shared.add(t, known, 0.0, request_timeout=1.0, repair=r): t for t, known, r in specs}
    done, log = drive(shared, net, targets)
    for (t, known, r), qid in zip(specs, targets):
        alone = QueryPool()
        aid = alone.add(t, known, 0.0, request_timeout=1.0, repair=r)
        adone, alog = drive(alone, net, {aid: t})
        assert adone[aid].result == done[qid].result
        assert adone[aid].stats == done[qid].stats
        mine = [(now, a.peer, a.repair) for now, a in log if isinstance(a, SendRequest) and a.query_id == qid]
        assert mine == [(now, a.peer, a.repair) for now, a in alog if isinstance(a, SendRequest)]


def test_the_same_inputs_give_the_same_actions():
    def run():
        net = Net(250, seed=4)
        net.dead = set(range(0, 250, 9))
        pool = QueryPool()
        targets = {pool.add(t, net.pairs(range(100, 140)), 1.0, repair=True): t
                   for t in (rand_key(net.rng) for _ in range(5))}
        return drive(pool, net, targets, now=1.0)

    assert run() == run()


# -- time -------------------------------------------------------------------------------


def test_request_timeouts_fire_at_next_deadline_and_the_query_timeout_ends_it():
    net = Net(50, seed=5)
    net.silent = set(range(50))
    pool = QueryPool()
    target = rand_key(net.rng)
    qid = pool.add(target, net.pairs(range(50)), 0.0, parallelism=3, request_timeout=2.0, query_timeout=7.0)
    other = pool.add(target, net.pairs(range(50)), 0.0, parallelism=1, request_timeout=10.0, query_timeout=100.0)
    first = pool.poll(0.0)
    assert [a.query_id for a in first] == [qid] * 3 + [other]
    assert pool.next_deadline() == 2.0          # the earliest over both queries
    assert pool.poll(1.999) == []               # nothing before it
    second = pool.poll(2.0)                     # the first three went unresponsive
    assert [a.query_id for a in second] == [qid] * 3
    assert {a.peer for a in second}.isdisjoint({a.peer for a in first if a.query_id == qid})
    assert pool.next_deadline() == 4.0
    assert len(pool.poll(4.0)) == 3
    assert len(pool.poll(6.0)) == 3
    assert pool.next_deadline() == 7.0          # the query deadline comes before 8.0
    (end,) = pool.poll(7.0)
    assert isinstance(end, QueryFinished) and end.query_id == qid and end.result == []
    assert end.stats.end == 7.0 and end.stats.requests == 12 and end.stats.failures == 9
    assert pool.ids() == [other] and pool.next_deadline() == 10.0


def test_a_late_answer_of_an_unresponsive_peer_still_counts():
    net = Net(40, seed=6)
    pool = QueryPool()
    target = rand_key(net.rng)
    qid = pool.add(target, net.pairs(range(40)), 0.0, parallelism=1, request_timeout=1.0)
    (ask,) = pool.poll(0.0)
    pool.poll(1.0)                              # unresponsive now
    assert pool.get(qid).iter.state_of(net.keys[ask.peer]) == "Unresponsive"
    assert pool.on_success(qid, ask.peer, [], 1.5) is True
    assert pool.get(qid).iter.state_of(net.keys[ask.peer]) == "Succeeded"


# -- ending -----------------------------------------------------------------------------


def test_early_finish_reports_what_was_found_and_ignores_later_answers():
    net = Net(100, seed=7)
    pool = QueryPool()
    target = rand_key(net.rng)
    qid = pool.add(target, net.pairs(range(100)), 0.0, info="rec")
    asks = pool.poll(0.0)
    assert pool.on_success(qid, asks[0].peer, [], 0.1)
    assert pool.finish(qid) is True
    assert pool.next_deadline() == 0.1          # due now: the finish is to report
    assert pool.on_success(qid, asks[1].peer, [], 0.2) is False
    assert pool.on_failure(qid, asks[2].peer, 0.2) is False
    (fin,) = pool.poll(0.3)
    assert fin == QueryFinished(qid, [asks[0].peer], fin.stats, "rec")
    assert fin.stats.end == 0.1 and fin.stats.requests == 3 and fin.stats.successes == 1
    assert len(pool) == 0 and pool.get(qid) is None
    # answers after the end: ignored, no action
    assert pool.on_success(qid, asks[1].peer, [], 0.4) is False
    assert pool.on_failure(qid, asks[2].peer, 0.4) is False
    assert pool.finish(qid) is False
    assert pool.poll(0.5) == []


def test_a_finish_through_the_iterator_is_reported_too():
    net = Net(100, seed=8)
    pool = QueryPool()
    qid = pool.add(rand_key(net.rng), net.pairs(range(100)), 0.0)
    pool.poll(0.0)
    pool.get(qid).iter.finish()                 # what a node's on_reply hook does
    assert pool.next_deadline() == 0.0
    assert [type(a) for a in pool.poll(0.0)] == [QueryFinished]


def test_cancel_drops_a_query_without_a_report():
    net = Net(100, seed=9)
    pool = QueryPool()
    target = rand_key(net.rng)
    a = pool.add(target, net.pairs(range(100)), 0.0)
    b = pool.add(target, net.pairs(range(100)), 0.0)
    asks = [x for x in pool.poll(0.0) if x.query_id == a]
    assert pool.cancel(a) is True and pool.cancel(a) is False
    assert len(pool) == 1 and a not in pool
    assert pool.on_success(a, asks[0].peer, [], 0.1) is False
    acts = pool.poll(100.0)                     # b times out; a says nothing
    assert [(type(x), x.query_id) for x in acts] == [(QueryFinished, b)]
    assert pool.next_deadline() is None


# -- the bound ---------------------------------------------------------------------------


def test_max_queries_bounds_the_pool():
    net = Net(10, seed=10)
    pool = QueryPool(max_queries=3)
    target = rand_key(net.rng)
    ids = [pool.add(target, net.pairs(range(10)), 0.0) for _ in range(3)]
    with pytest.raises(TooManyQueries, match="3 queries") as exc:
        pool.add(target, net.pairs(range(10)), 0.0)
    assert isinstance(exc.value, KadError)
    assert len(pool) == 3
    # a finished query holds its place until poll reports it
    pool.finish(ids[0])
    with pytest.raises(TooManyQueries):
        pool.add(target, net.pairs(range(10)), 0.0)
    pool.poll(0.0)
    pool.cancel(ids[1])
    pool.add(target, net.pairs(range(10)), 0.0)
    pool.add(target, net.pairs(range(10)), 0.0)
    assert len(pool) == 3
    assert QueryPool().max_queries == 1024


# -- the repair round ----------------------------------------------------------------------


def test_the_repair_flag_marks_the_requests_of_the_repair_round():
    net = Net(120, seed=11)
    target = rand_key(net.rng)
    ranked = net.closest(target, 60)
    net.dead = set(ranked[:3])                  # departed, still named by everyone
    live = [p for p in ranked if p not in net.dead]
    known = net.pairs(ranked[30:60])
    for repair in (False, True):
        pool = QueryPool()
        qid = pool.add(target, known, 0.0, repair=repair)
        done, log = drive(pool, net, {qid: target})
        flagged = [a.peer for _, a in log if isinstance(a, SendRequest) and a.repair]
        result = done[qid].result
        if not repair:
            # every answer names the 20 closest, departed ones included:
            # the live peers just behind them are named by no one
            assert flagged == [] and result != live[:20]
            continue
        assert flagged, "a lookup that met failed peers among its closest runs the repair round"
        answered = {a.peer for _, a in log if isinstance(a, SendRequest) and not a.repair} - net.dead
        assert len(set(flagged)) == len(flagged) <= 20   # each asked once, for its own key
        assert set(flagged) <= answered
        stats = done[qid].stats
        assert stats.requests >= stats.successes + stats.failures
        assert result == live[:20]
