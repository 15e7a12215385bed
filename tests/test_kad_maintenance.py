"""MaintenanceSchedule: which periodic jobs are due at a given time (no clock,
no tasks; the times are the test's)."""

from __future__ import annotations

from kadfast.kad.maintenance import Due, MaintenanceSchedule
from kadfast.kad.node import Config


def test_first_step_sweeps_and_bootstraps_and_starts_the_round_clocks():
    s = MaintenanceSchedule(Config())
    d = s.due(100.0, unfinished_messages=False, table_peers=5)
    assert d == Due(idle_streams_before=40.0, sweep=True, bootstrap=True)
    # nothing again right after
    assert s.due(101.0, unfinished_messages=False, table_peers=5) == Due()


def test_each_job_comes_back_after_its_interval():
    cfg = Config(sweep_interval=60.0, periodic_bootstrap_interval=300.0, replication_interval=3600.0,
                 provider_republish_interval=7200.0, kad_stream_idle_timeout=60.0, kad_message_timeout=10.0)
    s = MaintenanceSchedule(cfg)
    s.due(0.0, unfinished_messages=False, table_peers=1)
    assert s.due(15.0, unfinished_messages=True, table_peers=1) == Due(idle_streams_before=-45.0,
                                                                       unfinished_before=5.0)
    assert s.due(17.0, unfinished_messages=True, table_peers=1) == Due()  # a quarter of the timeout not yet
    assert s.due(60.0, unfinished_messages=False, table_peers=1).sweep
    assert s.due(300.0, unfinished_messages=False, table_peers=1).bootstrap
    d = s.due(3600.0, unfinished_messages=False, table_peers=1)
    assert d.replication and not d.provider_republish
    d = s.due(7200.0, unfinished_messages=False, table_peers=1)
    assert d.replication and d.provider_republish


def test_no_bootstrap_without_peers_and_an_outside_bootstrap_counts():
    s = MaintenanceSchedule(Config(periodic_bootstrap_interval=300.0))
    assert not s.due(0.0, unfinished_messages=False, table_peers=0).bootstrap
    assert s.due(1.0, unfinished_messages=False, table_peers=3).bootstrap
    s.last_bootstrap = 250.0   # KadNode.bootstrap() ran
    assert not s.due(301.0, unfinished_messages=False, table_peers=3).bootstrap
    assert s.due(550.0, unfinished_messages=False, table_peers=3).bootstrap


def test_limits_of_zero_turn_the_stream_checks_off():
    s = MaintenanceSchedule(Config(kad_stream_idle_timeout=0, kad_message_timeout=0))
    d = s.due(0.0, unfinished_messages=True, table_peers=0)
    assert d.idle_streams_before is None and d.unfinished_before is None
