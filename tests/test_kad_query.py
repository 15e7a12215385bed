"""kadfast.kad.query.ClosestPeersIter on a fake clock: parallelism, timeouts,
stalling, termination, and results against brute force."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadfast import _xor, _xor_py
from kadfast.kad.query import ClosestPeersIter, QueryStats

KEYSPACES = [_xor, _xor_py]


def rand_key(rng: random.Random, xor=_xor):
    return xor.Key.from_digest(rng.getrandbits(256).to_bytes(32, "big"))


def by_distance(target, keys, xor=_xor):
    return sorted(keys, key=lambda k: xor.xor_distance(target, k))


class Setup:
    """A target, ``n`` random peers named 0..n-1 by closeness to the target."""

    def __init__(self, n: int, seed: int = 0, xor=_xor) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.xor = xor
        self.target = rand_key(rng, xor)
        keys = by_distance(self.target, [rand_key(rng, xor) for _ in range(n)], xor)
        self.keys = keys                     # keys[i] is the i-th closest
        self.pairs = [(key, i) for i, key in enumerate(keys)]

    def new(self, known=None, **kw) -> ClosestPeersIter:
        kw.setdefault("now", 0.0)
        pairs = self.pairs if known is None else [self.pairs[i] for i in known]
        shuffled = list(pairs)
        self.rng.shuffle(shuffled)
        return ClosestPeersIter(self.target, shuffled, **kw)


# -- construction --------------------------------------------------------------


@pytest.mark.parametrize("xor", KEYSPACES)
def test_new_iterator_keeps_closest_k_sorted_and_deduplicated(xor):
    s = Setup(50, xor=xor)
    pairs = list(s.pairs) + [(xor.Key.from_digest(k.digest), "dup") for k in s.keys]
    it = ClosestPeersIter(s.target, reversed(pairs), now=5.0, k=20, parallelism=25)
    assert len(it) == 20
    assert not it.finished and it.waiting() == 0 and it.result() == []
    assert it.stats == QueryStats(start=5.0)
    first = it.next(5.0)
    # the 20 closest, closest first; the first handle seen for a key is kept
    assert first == ["dup"] * 20
    it2 = ClosestPeersIter(s.target, s.pairs + [(s.keys[0], "dup")], now=0.0, parallelism=25)
    assert it2.next(0.0) == list(range(20))


def test_empty_iterator_is_finished():
    s = Setup(0)
    it = ClosestPeersIter(s.target, [], now=3.0)
    assert it.finished
    assert it.next(3.0) == [] and it.result() == []
    assert it.next_deadline() is None
    assert it.stats.end == 3.0 and it.stats.duration == 0.0


def test_bad_config():
    s = Setup(1)
    for kw in ({"k": 0}, {"parallelism": 0}, {"num_results": 0}, {"request_timeout": 0}, {"query_timeout": -1}):
        with pytest.raises(ValueError):
            ClosestPeersIter(s.target, s.pairs, now=0.0, **kw)


def test_num_results_above_k_keeps_more_known():
    s = Setup(40)
    it = s.new(k=20, num_results=30, parallelism=40)
    assert it.next(0.0) == list(range(30))


# -- parallelism and timeouts ----------------------------------------------------


def test_parallelism_respected_and_slots_refill():
    s = Setup(30)
    it = s.new(parallelism=3)
    assert it.next(0.0) == [0, 1, 2]
    assert it.waiting() == 3
    assert it.next(0.5) == []                       # at capacity
    assert it.on_success(1, [], 1.0)
    assert it.waiting() == 2
    assert it.next(1.0) == [3]
    assert it.on_failure(0, 1.5)
    assert it.next(1.5) == [4]
    assert it.stats.requests == 5 and it.stats.successes == 1 and it.stats.failures == 1
    assert it.state_of(s.keys[0]) == "Failed"
    assert it.state_of(s.keys[1]) == "Succeeded"
    assert it.state_of(s.keys[2]) == "Waiting"
    assert it.state_of(s.keys[9]) == "NotContacted"


def test_timeout_makes_peers_unresponsive_and_frees_slots():
    s = Setup(30)
    it = s.new(parallelism=2, request_timeout=10.0, now=100.0)
    assert it.next(100.0) == [0, 1]
    assert it.next_deadline() == 110.0
    assert it.on_success(1, [], 104.0)
    assert it.next(104.0) == [2]
    assert it.next_deadline() == 110.0
    assert it.next(109.999) == []
    # peer 0 times out at 110: its slot goes to the next peer
    assert it.next(110.0) == [3]
    assert it.state_of(s.keys[0]) == "Unresponsive"
    assert it.waiting() == 2
    assert it.next_deadline() == 114.0
    assert it.stats.failures == 1
    assert it.stats.requests == it.stats.successes + it.stats.failures + it.waiting()


def test_late_success_is_accepted():
    s = Setup(30)
    it = s.new(parallelism=1, request_timeout=10.0)
    assert it.next(0.0) == [0]
    assert it.next(10.0) == [1]
    assert it.stats.failures == 1
    assert it.on_success(0, [], 12.0)            # late
    assert it.state_of(s.keys[0]) == "Succeeded"
    assert it.stats.failures == 0 and it.stats.successes == 1
    assert it.result() == [0]
    assert not it.on_success(0, [], 12.0)        # no second time
    assert not it.on_failure(0, 12.0)


def test_late_failure_of_unresponsive_peer_is_not_double_counted():
    s = Setup(30)
    it = s.new(parallelism=1)
    it.next(0.0)
    assert it.next(10.0) == [1]
    assert it.on_failure(0, 11.0)
    assert it.state_of(s.keys[0]) == "Failed"
    assert it.stats.failures == 1


def test_unknown_or_not_waiting_handles_are_ignored():
    s = Setup(30)
    it = s.new()
    assert not it.on_success(0, [], 0.0)         # never asked
    assert not it.on_success("stranger", [], 0.0)
    assert not it.on_failure(5, 0.0)
    assert it.next(0.0) == [0, 1, 2]
    assert it.stats == QueryStats(requests=3)


def test_query_timeout():
    s = Setup(30)
    it = s.new(now=50.0, query_timeout=60.0, request_timeout=10.0)
    assert it.next(50.0) == [0, 1, 2]
    assert it.next_deadline() == 60.0
    for t in range(60, 110, 10):
        assert it.next(float(t))                 # all dead: three new peers each time
    assert it.next_deadline() == 110.0
    assert it.next(110.0) == []
    assert it.finished and it.stats.end == 110.0 and it.stats.duration == 60.0
    assert it.next_deadline() is None
    assert not it.on_success(20, [], 111.0)


# -- termination -------------------------------------------------------------------


def test_terminates_when_num_results_closest_succeeded():
    s = Setup(30)
    it = s.new(known=range(30), k=30, num_results=5, parallelism=2)
    asked = []
    while not it.finished:
        batch = it.next(0.0)
        assert batch
        asked += batch
        for h in batch:
            it.on_success(h, [], 0.0)
    # 0 and 1 bring nothing closer: stalled, up to 5 in flight; it finishes
    # as soon as 0..4 have answered, and the answers of 5 and 6 are ignored
    assert asked == [0, 1, 2, 3, 4, 5, 6]
    assert it.result() == [0, 1, 2, 3, 4]
    assert it.stats.end == 0.0
    assert it.stats.successes == 5 and it.stats.requests == 7


def test_terminates_without_extra_requests():
    s = Setup(30)
    it = s.new(known=range(30), k=30, num_results=5, parallelism=5)
    assert it.next(0.0) == [0, 1, 2, 3, 4]
    for h in (4, 3, 2, 1):
        it.on_success(h, [], 0.0)
    assert not it.finished
    it.on_success(0, [], 0.0)
    assert it.finished and it.result() == [0, 1, 2, 3, 4]


def test_finishes_on_success_without_next():
    s = Setup(10)
    it = s.new(num_results=3, parallelism=3)
    assert it.next(0.0) == [0, 1, 2]
    it.on_success(0, [], 0.0)
    it.on_success(2, [], 0.0)
    assert not it.finished
    it.on_success(1, [], 0.0)
    assert it.finished


def test_failed_and_unresponsive_peers_are_skipped_for_termination():
    s = Setup(30)
    it = s.new(num_results=3, parallelism=3, request_timeout=5.0)
    assert it.next(0.0) == [0, 1, 2]
    it.on_failure(0, 1.0)
    it.on_success(2, [], 1.0)
    assert it.next(1.0) == [3, 4]
    assert it.next(5.0) == [5]                    # 1 timed out at 5.0
    assert it.state_of(s.keys[1]) == "Unresponsive"
    it.on_success(3, [], 6.0)
    assert not it.finished                        # 4 is still waiting
    it.on_success(4, [], 6.0)
    assert it.finished                            # 2, 3, 4 are the 3 closest that did not fail
    assert it.result() == [2, 3, 4]


def test_a_waiting_closer_peer_blocks_termination():
    s = Setup(30)
    it = s.new(num_results=2, parallelism=3)
    assert it.next(0.0) == [0, 1, 2]
    it.on_success(1, [], 0.0)
    it.on_success(2, [], 0.0)
    assert not it.finished                       # 0 may still answer
    assert it.next(0.0) == [3, 4]                # meanwhile farther peers are asked
    it.on_success(0, [], 0.0)
    assert it.finished
    assert it.result() == [0, 1]


def test_runs_out_of_peers():
    s = Setup(5)
    it = s.new(num_results=20)
    while not it.finished:
        for h in it.next(0.0):
            if h % 2:
                it.on_failure(h, 0.0)
            else:
                it.on_success(h, [], 0.0)
    assert it.result() == [0, 2, 4]
    assert it.stats == QueryStats(requests=5, successes=3, failures=2, start=0.0, end=0.0)


def test_finish_stops_early():
    s = Setup(30)
    it = s.new()
    it.next(0.0)
    it.on_success(0, [], 2.0)
    it.next(3.0)
    it.finish()
    assert it.finished
    assert it.next(4.0) == []
    assert not it.on_success(1, [], 4.0)
    assert it.result() == [0]
    assert it.stats.end == 3.0 and it.stats.duration == 3.0
    it.finish()
    assert it.stats.end == 3.0


# -- closer peers, progress and stalling -------------------------------------------


def test_closer_peers_are_merged_and_duplicates_ignored():
    s = Setup(40)
    it = s.new(known=range(20, 40), parallelism=1)
    assert it.next(0.0) == [20]
    closer = [s.pairs[i] for i in (5, 3, 5, 21)] + [(s.xor.Key.from_digest(s.keys[3].digest), "dup3")]
    assert it.on_success(20, closer, 0.0)
    assert len(it) == 22
    assert it.next(0.0) == [3]
    it.on_success(3, [s.pairs[5], s.pairs[20], s.pairs[3]], 0.0)
    assert len(it) == 22
    assert it.next(0.0)[0] == 5


def test_response_is_capped():
    s = Setup(100)
    it = s.new(known=[99], k=10, parallelism=1)
    it.next(0.0)
    it.on_success(99, s.pairs[:50], 0.0)          # only the first k are taken
    assert len(it) == 11


def test_stalls_after_parallelism_responses_without_progress_and_widens():
    s = Setup(60)
    it = s.new(known=range(30), k=30, parallelism=3, num_results=10)
    assert it.next(0.0) == [0, 1, 2]
    # farther peers only: no progress (30 >= num_results peers are known)
    it.on_success(0, [s.pairs[40]], 0.0)
    it.on_success(1, [s.pairs[41]], 0.0)
    assert not it.stalled
    assert it.next(0.0) == [3, 4]
    it.on_success(2, [], 0.0)
    assert it.stalled
    # stalled: up to max(num_results, parallelism) = 10 in flight
    assert it.next(0.0) == [5, 6, 7, 8, 9, 10, 11, 12]
    assert it.waiting() == 10
    assert it.next(0.0) == []
    # a closer peer than any known: progress, back to iterating
    closer_key = s.xor.Key.from_digest(s.target.digest[:-1] + bytes([s.target.digest[-1] ^ 1]))
    it.on_success(3, [(closer_key, "near")], 0.0)
    assert not it.stalled
    assert it.waiting() == 9
    assert it.next(0.0) == []                     # above the parallelism: wait
    it.on_success(4, [], 0.0)
    it.on_success(5, [], 0.0)
    assert not it.stalled
    assert it.waiting() == 7
    it.on_success(6, [], 0.0)                     # 3 results without progress
    assert it.stalled


def test_progress_while_fewer_than_num_results_known():
    s = Setup(60)
    it = s.new(known=[50], num_results=20, parallelism=1)
    assert it.next(0.0) == [50]
    it.on_success(50, [s.pairs[55]], 0.0)         # farther, but few are known
    assert not it.stalled
    assert it.next(0.0) == [55]
    it.on_success(55, [], 0.0)                    # 2 < 20 known: still progress
    assert not it.stalled


def test_progress_means_a_new_peer_among_the_num_results_closest():
    s = Setup(60)
    it = s.new(known=[0, 1, 2, 3, 5, 6], num_results=5, parallelism=1)
    assert it.next(0.0) == [0]
    it.on_success(0, [s.pairs[4]], 0.0)          # not the closest, but 4th of 5: progress
    assert not it.stalled
    assert it.next(0.0) == [1]
    it.on_success(1, [s.pairs[7]], 0.0)          # 7 is beyond the 5th closest (5)
    assert it.stalled


def test_single_no_progress_stalls_with_parallelism_one():
    s = Setup(60)
    it = s.new(known=range(25), parallelism=1)
    assert it.next(0.0) == [0]
    it.on_success(0, [s.pairs[30]], 0.0)
    assert it.stalled
    # k = 20: only 0..19 were kept; 30 was added
    assert it.next(0.0) == list(range(1, 20)) + [30]


# -- property tests ------------------------------------------------------------------


# -- the repair round (kadfast's addition; off by default) ----------------------


def _repair_setup(repair: bool):
    """Peers 0..29 by closeness; the lookup knows 0, 2, 3, 4, 5 and asks them
    all; 2, 3, 4 answer with nothing new, then 0 fails."""
    s = Setup(30)
    it = s.new(known=[0, 2, 3, 4, 5], k=5, num_results=3, parallelism=5, request_timeout=5.0, repair=repair)
    assert it.next(0.0) == [0, 2, 3, 4, 5]
    for h in (2, 3, 4):
        it.on_success(h, [], 1.0)
    assert not it.finished
    it.on_failure(0, 1.0)
    return s, it


def test_without_repair_a_failed_closest_peer_just_drops_out():
    s, it = _repair_setup(False)
    assert it.finished and it.result() == [2, 3, 4] and not it.repaired


def test_repair_round_asks_the_answered_peers_for_their_own_neighbourhoods():
    s, it = _repair_setup(True)
    assert not it.finished and it.repaired        # 0 failed among the 3 closest
    assert it.on_success(5, [], 1.0)               # a late answer before next(): still repairing
    assert not it.finished
    batch = it.next(1.0)
    assert batch == [2, 3, 4] and all(it.is_repair(h) for h in batch)
    assert it.waiting() == 3
    assert it.on_success(2, [], 1.5)
    assert it.on_success(3, [s.pairs[1]], 1.5)     # 3's neighbourhood names 1
    assert not it.finished
    assert it.on_success(4, [s.pairs[6]], 1.5)
    # both asked about the target, as usual: 1 is closer than the 3rd answer,
    # and while it is in flight a free slot goes to the next candidate
    assert it.next(1.5) == [1, 6] and not it.is_repair(1) and not it.is_repair(6)
    it.on_success(1, [], 2.0)
    assert it.finished and it.result() == [1, 2, 3]
    assert it.stats == QueryStats(requests=10, successes=8, failures=1, start=0.0, end=2.0)


def test_repair_round_runs_once_and_gives_up_on_silent_peers():
    s, it = _repair_setup(True)
    it.on_success(5, [], 1.0)
    assert it.next(1.0) == [2, 3, 4]
    assert it.on_success(3, [s.pairs[1]], 2.0)
    assert it.next_deadline() == 6.0               # the repair requests' deadline
    assert it.next(2.0) == [1]
    it.on_failure(1, 3.0)                          # another failure among the closest
    assert not it.finished                         # 2 and 4 are still asked for their neighbourhoods
    assert it.next(6.0) == []                      # they timed out: given up, no second round
    assert it.finished and it.result() == [2, 3, 4]
    assert it.on_success(2, [s.pairs[1]], 6.5) is False
    assert it.stats.requests == 9 and it.stats.failures == 4 and it.stats.successes == 5


def test_repair_costs_nothing_when_no_closest_peer_failed():
    for repair in (False, True):
        s = Setup(30)
        it = s.new(known=range(30), k=30, num_results=5, parallelism=2, repair=repair)
        asked = []
        while not it.finished:
            batch = it.next(0.0)
            asked += batch
            for h in batch:
                if h == 7:
                    it.on_failure(h, 0.0)              # a failure, but not among the 5 closest
                else:
                    it.on_success(h, [], 0.0)
        assert asked == [0, 1, 2, 3, 4, 5, 6] and it.result() == [0, 1, 2, 3, 4]
        assert not it.repaired


@st.composite
def scenarios(draw):
    return dict(
        seed=draw(st.integers(0, 2**32)),
        n_known=draw(st.integers(0, 40)),
        universe=draw(st.integers(1, 120)),
        k=draw(st.integers(1, 25)),
        parallelism=draw(st.integers(1, 8)),
        num_results=draw(st.one_of(st.none(), st.integers(1, 25))),
        p_fail=draw(st.sampled_from([0.0, 0.1, 0.3])),
        p_silent=draw(st.sampled_from([0.0, 0.1, 0.3])),
        p_late=draw(st.sampled_from([0.0, 0.5])),
        xor=draw(st.sampled_from(KEYSPACES)),
        repair=draw(st.booleans()),
    )


@given(scenarios())
def test_random_lookups_keep_invariants(sc):
    """Drive random lookups: answers with random peers, failures, silent peers
    (some answer late); check parallelism, stats, termination and results."""
    rng = random.Random(sc["seed"])
    xor = sc["xor"]
    target = rand_key(rng, xor)
    universe = [(rand_key(rng, xor), i) for i in range(sc["universe"])]
    known = [universe[rng.randrange(len(universe))] for _ in range(sc["n_known"])]
    it = ClosestPeersIter(
        target, known, now=0.0, k=sc["k"], parallelism=sc["parallelism"],
        num_results=sc["num_results"], request_timeout=1.0, query_timeout=1e9, repair=sc["repair"],
    )
    n = it.num_results
    keys = dict((h, key) for key, h in universe)
    succeeded: set[int] = set()
    silent: list[int] = []
    now = 0.0
    asked: set[int] = set()
    repaired: set[int] = set()
    open_repairs: dict[int, float] = {}   # repair requests in flight -> deadline
    for _ in range(10_000):
        if it.finished:
            break
        was_stalled = it.stalled
        batch = it.next(now)
        if it.finished:
            assert batch == []
            break
        repairs = [h for h in batch if it.is_repair(h)]
        batch = [h for h in batch if h not in repairs]
        assert sc["repair"] or not repairs
        # a repair request goes, once, to a peer that answered about the target
        assert set(repairs) <= succeeded and not (set(repairs) & repaired)
        repaired.update(repairs)
        assert not (set(batch) & asked), "a peer is asked twice"
        asked.update(batch)
        # repair requests go out all at once, besides the parallelism
        open_repairs = {h: d for h, d in open_repairs.items() if d > now}
        open_repairs.update((h, now + 1.0) for h in repairs)
        if batch:
            cap = max(n, it.parallelism) if was_stalled else it.parallelism
            assert it.waiting() - len(open_repairs) <= cap
        assert it.stats.requests == it.stats.successes + it.stats.failures + it.waiting()
        for h in repairs:
            if rng.random() < 0.8:                # a neighbourhood: any peers at all
                closer = [universe[rng.randrange(len(universe))] for _ in range(rng.randrange(n + 1))]
                it.on_success(h, closer, now)
                del open_repairs[h]
        for h in batch:
            running = not it.finished             # an earlier answer may finish it
            r = rng.random()
            if r < sc["p_fail"]:
                assert it.on_failure(h, now) == running
            elif r < sc["p_fail"] + sc["p_silent"]:
                silent.append(h)
            else:
                closer = [universe[rng.randrange(len(universe))] for _ in range(rng.randrange(n + 1))]
                assert it.on_success(h, closer, now) == running
                if running:
                    succeeded.add(h)
        if not batch and not repairs:
            # nothing to do until a deadline: some silent peers answer late
            now = it.next_deadline()
            assert now is not None
            for h in list(silent):
                if rng.random() < sc["p_late"]:
                    silent.remove(h)
                    if it.on_success(h, [], now):
                        succeeded.add(h)
    assert it.finished
    assert it.next(now) == []
    assert it.stats.end is not None and it.stats.end <= now
    res = it.result()
    brute = sorted(succeeded, key=lambda h: xor.xor_distance(target, keys[h]))[:n]
    assert res == brute
    assert it.stats.successes - len(repaired) <= len(succeeded) <= it.stats.successes
    if len(res) < n:
        # every candidate was tried
        assert all(it.state_of(keys[h]) != "NotContacted" for h in keys if it.state_of(keys[h]))
