"""bench/sim.py run tiny: the whole pipeline (join, lookups, records, churn,
a bootstrap round, republish) and its report, in a few seconds."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import sim


@pytest.mark.parametrize("join", ["self", "prefill"])
def test_small_network_report(join, capsys):
    assert sim.main(["--nodes", "400", "--lookups", "100", "--records", "15", "--join", join,
                     "--seed", "7", "--json", "-q"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["nodes"] == 400 and r["departed"] == 80
    before, churn, rep = (r["phases"][p] for p in ("before_churn", "after_churn", "after_republish"))
    f = before["find"]
    assert f["success"] >= 0.95
    assert f["hops_median"] <= 3 and f["hops_p95"] <= 5
    assert 20 <= f["messages_median"] < 80
    # dead peers cost timeouts and extra requests, but lookups still get close
    assert churn["find"]["messages_median"] > f["messages_median"]
    assert churn["find"]["success"] >= 0.7
    # once every node ran its periodic bootstrap, the nodes that tried a
    # departed peer stop naming it: lookups are exact again
    boot = r["phases"]["after_bootstrap"]
    assert boot["find"]["success"] >= 0.99 and r["bootstrap_round"]["nodes"] == 320
    assert r["targets"]["success_after_churn_and_one_bootstrap>=99%"]
    # records: 20 replicas survive a 20% churn; republishing restores coverage
    assert before["get"]["success"] == 1.0 and before["get"]["coverage_mean"] == 1.0
    assert churn["get"]["success"] >= 0.99
    assert churn["get"]["coverage_mean"] < rep["get"]["coverage_mean"]
    assert rep["get"]["coverage_mean"] >= 0.9
    assert r["republish"]["lookups"] > 0


def test_table_output(capsys):
    assert sim.main(["--nodes", "200", "--lookups", "30", "--records", "5", "-q"]) == 0
    out = capsys.readouterr().out
    for word in ("before_churn", "after_churn", "after_bootstrap", "after_republish", "hops", "targets:"):
        assert word in out


def test_failed_peers_policies_after_churn(capsys):
    """Withholding a peer whose request failed (KadNode) is what makes the
    bootstrap round restore exact lookups; rust's keep-serving does not."""
    out = {}
    for policy in ("withhold", "serve"):
        assert sim.main(["--nodes", "400", "--lookups", "100", "--records", "0", "--join", "self",
                         "--seed", "3", "--failed-peers", policy, "--json", "-q"]) == 0
        out[policy] = json.loads(capsys.readouterr().out)["phases"]["after_bootstrap"]["find"]["success"]
    assert out["withhold"] >= 0.99
    assert out["serve"] < out["withhold"]


def test_repair_round_makes_lookups_exact_right_after_a_mass_departure(capsys):
    """Right after 20% leave at once, answers still name the departed peers
    and so hide the live ones just behind them; the lookups' repair round
    finds those."""
    out = {}
    for repair in ("off", "on"):
        assert sim.main(["--nodes", "600", "--lookups", "150", "--records", "0", "--seed", "2",
                         "--maintenance", "none", "--repair", repair, "--json", "-q"]) == 0
        phases = json.loads(capsys.readouterr().out)["phases"]
        out[repair] = (phases["before_churn"]["find"], phases["after_churn"]["find"])
    before_off, after_off = out["off"]
    before_on, after_on = out["on"]
    assert before_on["success"] == before_off["success"] == 1.0
    assert before_on["messages_median"] == before_off["messages_median"]   # no failure, no repair
    assert after_off["success"] <= 0.8
    assert after_on["success"] >= 0.95
