from __future__ import annotations

import asyncio

import pytest

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.ports import MigrationProgress, MigrationSettings
from rebalancerd.sim.hypervisor import SWITCHOVER_MS, SimDomain, SimHypervisor, migration_timing


def test_idle_guest_converges_in_two_rounds() -> None:
    # 1024 MiB at 100 MiB/s: round 0 = 10.24 s; nothing dirtied -> stop-and-copy of 0
    t = migration_timing(1024, 0.0, MigrationSettings(bandwidth_mib_s=100), link_mib_s=1000)
    assert t.converged and not t.aborted and not t.postcopy
    assert t.total_s == pytest.approx(10.24)
    assert t.downtime_ms == pytest.approx(SWITCHOVER_MS)
    assert t.rounds == 2


def test_dirty_guest_needs_more_rounds_and_more_downtime() -> None:
    s = MigrationSettings(bandwidth_mib_s=100, max_downtime_ms=300)
    # dirty 20 MiB/s: rounds send 1024, 204.8, 40.96 -> 8.19 left <= 30 MiB limit
    t = migration_timing(1024, 20.0, s, 1000)
    assert t.converged
    assert t.rounds == 4
    assert t.total_s == pytest.approx(10.24 + 2.048 + 0.4096 + 0.08192, rel=1e-6)
    assert t.downtime_ms == pytest.approx(81.92 + SWITCHOVER_MS, rel=1e-6)


def test_never_converging_guest_is_aborted_or_postcopied() -> None:
    s = MigrationSettings(bandwidth_mib_s=30, max_downtime_ms=100, time_budget_s=60)
    t = migration_timing(512, 98.0, s, 1000)
    assert t.aborted and not t.converged and t.total_s == pytest.approx(60)
    pc = migration_timing(
        512,
        98.0,
        MigrationSettings(
            bandwidth_mib_s=30, max_downtime_ms=100, time_budget_s=60, postcopy_after_s=20
        ),
        1000,
    )
    assert pc.converged and pc.postcopy and pc.downtime_ms == SWITCHOVER_MS
    assert pc.total_s < 60


def test_auto_converge_helps() -> None:
    base = MigrationSettings(bandwidth_mib_s=100, max_downtime_ms=100, time_budget_s=600)
    plain = migration_timing(2048, 95.0, base, 1000)
    ac = migration_timing(
        2048,
        95.0,
        MigrationSettings(
            bandwidth_mib_s=100, max_downtime_ms=100, time_budget_s=600, auto_converge=True
        ),
        1000,
    )
    assert plain.aborted
    assert ac.converged and ac.rounds > 3


def test_non_shared_disk_adds_copy_time() -> None:
    s = MigrationSettings(bandwidth_mib_s=100)
    assert migration_timing(1024, 0, s, 1000, local_disk_mib=1000).total_s == pytest.approx(20.24)


async def test_migrate_moves_domain_and_reports_progress() -> None:
    clock = VirtualClock()
    hv = SimHypervisor(clock)
    hv.add_host("a")
    hv.add_host("b")
    hv.add_domain("a", SimDomain("v", 4096, dirty_rate_mib_s=10))
    seen: list[MigrationProgress] = []
    res = await hv.migrate("v", "a", "b", MigrationSettings(bandwidth_mib_s=1000), seen.append)
    assert res.ok and res.downtime_ms is not None
    assert hv.where("v") == ["b"]
    assert (await hv.domains("b"))["v"].persistent
    assert "v" not in await hv.domains("a")
    assert seen and seen[-1].data_remaining_mib < seen[0].data_remaining_mib
    assert clock.monotonic() == pytest.approx(res.total_s)


async def test_failures_keep_vm_on_source() -> None:
    clock = VirtualClock()
    hv = SimHypervisor(clock)
    for h in "abc":
        hv.add_host(h)
    hv.add_domain("a", SimDomain("v", 1024))
    hv.fail_next["v"] = "injected"
    r = await hv.migrate("v", "a", "b", MigrationSettings())
    assert not r.ok and r.error == "injected" and hv.where("v") == ["a"]
    hv.hosts["c"].reachable = False
    r = await hv.migrate("v", "a", "c", MigrationSettings())
    assert not r.ok and hv.where("v") == ["a"]
    r = await hv.migrate("ghost", "a", "b", MigrationSettings())
    assert not r.ok and "not running" in (r.error or "")


async def test_abort_and_concurrency_tracking() -> None:
    clock = VirtualClock()
    hv = SimHypervisor(clock)
    hv.add_host("a")
    hv.add_host("b")
    hv.add_domain("a", SimDomain("v1", 8192))
    hv.add_domain("a", SimDomain("v2", 8192))
    s = MigrationSettings(bandwidth_mib_s=100)
    t1 = asyncio.create_task(hv.migrate("v1", "a", "b", s))
    t2 = asyncio.create_task(hv.migrate("v2", "a", "b", s))
    await clock.sleep(5)
    await hv.abort("v1", "a")
    r1, r2 = await asyncio.gather(t1, t2)
    assert r1.aborted and not r1.ok and hv.where("v1") == ["a"]
    assert r2.ok and hv.where("v2") == ["b"]
    assert hv.max_concurrency_seen == 2


def test_trace_load_interpolates_and_holds_last_sample() -> None:
    from rebalancerd.sim.cluster import TraceLoad

    tl = TraceLoad((0, 1000, 500), interval_s=300)
    assert tl.at(0) == 0 and tl.at(150) == 500 and tl.at(300) == 1000
    assert tl.at(450) == 750 and tl.at(600) == 500 and tl.at(10_000) == 500
    assert TraceLoad(()).at(5) == 0


async def test_sim_telemetry_reports_where_vms_run_after_a_move() -> None:
    from rebalancerd.domain.model import Host
    from rebalancerd.sim.cluster import LoadModel, SimCluster, SimTelemetry, SimVm, TraceLoad

    clock = VirtualClock()
    c = SimCluster(
        clock, [Host("a", cores=2, memory_mib=4096), Host("b", cores=2, memory_mib=4096)]
    )
    c.add_vm("a", SimVm("v", 1, 1024, TraceLoad((100, 900), interval_s=100)))
    c.add_vm("b", SimVm("w", 1, 1024, LoadModel(400, amplitude=0)))
    tel = SimTelemetry(c, interval_s=50)
    assert tel.data_age_s() == float("inf")
    snap = tel.current()
    assert snap.vm("v").host == "a" and snap.vm("v").cpu_used_mc == 100
    clock.advance(50)
    tel.tick()
    assert tel.current().vm("v").cpu_used_mc == 500
    assert tel.current().vm("v").cpu_history_mc == (100, 500)
    await c.hypervisor.migrate("v", "a", "b", MigrationSettings())
    assert tel.current().vm("v").host == "b"
