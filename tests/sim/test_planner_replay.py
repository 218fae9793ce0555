"""The replay with the daemon's planner and with the THR-MMT reference, on tiny traces."""

from __future__ import annotations

import numpy as np

from rebalancerd.policy.schema import Policy
from rebalancerd.sim.cloudsim import default_replay_policy
from rebalancerd.sim.replay import (
    NoMigration,
    PlannerDecider,
    Replay,
    ThresholdMmt,
    View,
    snapshot_of,
    unlimited_policy,
)
from rebalancerd.sim.traces import read_planetlab
from tests.sim.conftest import WriteDay


def spread_out(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def test_snapshot_capacity_in_millicores_equals_mips(write_day: WriteDay) -> None:
    tr = read_planetlab(write_day({f"vm{i}": [20, 40, 60] for i in range(4)}))
    rp = Replay(tr, ThresholdMmt(), default_replay_policy(), hosts=4)
    dc = rp.dc
    view = View(
        t=600.0,
        now=rp.epoch + 600,
        sample=2,
        dc=dc,
        trace=tr,
        host_of=rp.host_of,
        demand_mips=tr.cpu[:, 2] * dc.vm_mips,
        frozen=frozenset(),
        max_moves=None,
        max_mib=None,
    )
    snap = snapshot_of(view, dc.domain_hosts(), window=2)
    assert [h.cpu_capacity_mc for h in snap.hosts] == [3720, 5320, 3720, 5320]
    vm0 = snap.vm("vm0")
    assert vm0.cpu_used_mc == 1500  # 2500 MIPS at 60 %
    assert vm0.cpu_history_mc == (1000, 1500)
    assert vm0.memory_mib == 870
    assert snap.taken_at == rp.epoch + 600


def test_planner_consolidates_idle_hosts_within_limits(write_day: WriteDay) -> None:
    tr = read_planetlab(write_day({f"vm{i}": [10] * 24 for i in range(6)}))
    pol = default_replay_policy()
    rp = Replay(
        tr, PlannerDecider(pol, time_limit_s=0.5), pol, hosts=6, initial_placement=spread_out(6)
    )
    r = rp.run()
    assert r.timeline.active_hosts[0] == 6
    assert r.timeline.active_hosts[-1] < 6
    assert r.summary["migrations"] >= 1
    assert max(r.timeline.migrations) <= pol.limits.max_per_cycle
    assert r.summary["peak_concurrent_migrations"] <= pol.limits.max_concurrent
    # every VM moved at most once: the cooldown (1 h) spans the 2 h replay's second half
    assert r.summary["migrations"] <= 6 * 2
    # consolidating saves energy: less than the same trace and placement without any migration
    still = Replay(tr, NoMigration(), pol, hosts=6, initial_placement=spread_out(6)).run()
    assert still.summary["migrations"] == 0
    assert r.summary["energy_kwh"] < still.summary["energy_kwh"]


def test_planner_replay_is_deterministic(write_day: WriteDay) -> None:
    samples = {f"vm{i}": [(i * 17 + k * 11) % 80 for k in range(12)] for i in range(8)}
    tr = read_planetlab(write_day(samples))
    pol = default_replay_policy()
    runs = [
        Replay(
            tr,
            PlannerDecider(pol, time_limit_s=0.3, seed=3),
            pol,
            hosts=8,
            initial_placement=spread_out(8),
        ).run()
        for _ in range(2)
    ]
    assert runs[0].summary == runs[1].summary
    assert runs[0].timeline.to_dict() == runs[1].timeline.to_dict()


def test_thr_mmt_relieves_an_overloaded_host_smallest_ram_first(write_day: WriteDay) -> None:
    # 80 % of vm0 2500, vm1 2000, vm2 1000, vm3 500 MIPS = 2000 + 1600 + 800 + 400 = 4800 on host 1
    # (G5, 5320): above 0.8 x 5320 = 4256. MMT takes the least RAM first: vm3 (613 MB) -> 4400,
    # still above; then vm0 (870 MB) -> 2400. vm1 and vm2 (1740 MB) stay.
    tr = read_planetlab(write_day({f"vm{i}": [80] for i in range(4)}))
    start = np.array([1, 1, 1, 1], dtype=np.int64)
    pol: Policy = unlimited_policy(default_replay_policy())
    rp = Replay(tr, ThresholdMmt(0.8), pol, hosts=4, initial_placement=start)
    r = rp.run()
    assert r.summary["migrations"] == 2
    assert rp.host_of[1] == 1 and rp.host_of[2] == 1
    assert rp.host_of[0] != 1 and rp.host_of[3] != 1
