"""Executor unit tests: limits, windows, cooldowns, verification, breaker, dry-run, back-off."""

from __future__ import annotations

import pytest

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.domain.plan import ReasonKind
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.observability import MemoryMetrics
from tests.unit.execution.fakes import FakeHypervisor, cluster, mig, plan, policy


def make(
    snap: ClusterSnapshot | None = None, *, dry_run: bool = False, **kw: object
) -> tuple[Executor, FakeHypervisor, VirtualClock, MemoryMetrics, Journal]:
    clock = VirtualClock()
    snap = snap or cluster()
    hv = FakeHypervisor.for_snapshot(clock, snap)
    metrics = MemoryMetrics()
    journal = Journal.open(":memory:")
    # these tests are about the policy's limits: no slow start (test_adaptive.py covers it)
    kw.setdefault("adaptive", AdaptiveConcurrency(slow_start=False))
    ex = Executor(hv, clock, metrics, journal, dry_run=dry_run, **kw)  # type: ignore[arg-type]
    return ex, hv, clock, metrics, journal


async def test_moves_run_verified_and_journaled() -> None:
    ex, hv, _, metrics, journal = make()
    rep = await ex.execute(
        plan([mig("vm0-0", "h0", "h1"), mig("vm2-0", "h2", "h3")]), cluster(), policy()
    )
    assert sorted(r.vm for r in rep.succeeded) == ["vm0-0", "vm2-0"]
    assert hv.where("vm0-0") == ["h1"] and hv.where("vm2-0") == ["h3"]
    assert rep.max_concurrency == 2
    assert metrics.total("migrations_succeeded_total") == 2
    assert metrics.observations[("migration_downtime_seconds", ())] == [0.042, 0.042]
    states = {e.vm: e.state for e in journal.moves()}
    assert states == {"vm0-0": "succeeded", "vm2-0": "succeeded"}
    assert journal.open_moves() == []
    assert ex.in_flight() == []


async def test_total_concurrency_limit_waits_and_is_never_exceeded() -> None:
    ex, hv, _, metrics, _ = make(cluster(n_hosts=8))
    moves = [mig(f"vm{i}-0", f"h{i}", f"h{i + 4}") for i in range(4)]
    rep = await ex.execute(plan(moves), cluster(n_hosts=8), policy(max_concurrent=2))
    assert len(rep.succeeded) == 4 and not rep.skipped
    assert hv.max_total == 2 and rep.max_concurrency == 2
    assert metrics.total("migration_limit_blocks_total", limit="concurrency") == 2


async def test_per_source_and_per_target_limits() -> None:
    ex, hv, _, _, _ = make()
    moves = [mig("vm0-0", "h0", "h1"), mig("vm0-1", "h0", "h2"), mig("vm3-0", "h3", "h1")]
    rep = await ex.execute(plan(moves), cluster(), policy(max_per_source=1, max_per_target=1))
    assert len(rep.succeeded) == 3
    assert hv.max_source == 1 and hv.max_target == 1
    # vm3-0 could start at once with vm0-0? no: both target h1. vm0-1 waits for source h0.
    assert rep.max_concurrency == 2


async def test_zero_concurrency_skips_instead_of_waiting_forever() -> None:
    ex, hv, _, metrics, _ = make()
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy(max_concurrent=0))
    assert [r.reason for r in rep.skipped] == ["concurrency_zero"]
    assert hv.calls == []
    assert metrics.total("migrations_skipped_total", reason="concurrency_zero") == 1


async def test_per_cycle_limit() -> None:
    ex, hv, _, _, _ = make()
    moves = [mig(f"vm{i}-0", f"h{i}", f"h{(i + 1) % 4}") for i in range(4)]
    rep = await ex.execute(plan(moves), cluster(), policy(max_per_cycle=3))
    assert len(hv.calls) == 3
    assert [r.reason for r in rep.skipped] == ["per_cycle_limit"]


async def test_mib_per_hour_ledger_spans_cycles_and_slides() -> None:
    ex, hv, clock, _, _ = make()
    pol = policy(max_mib_per_hour=5000)  # 2 VMs of 2048 MiB fit, not 3
    r1 = await ex.execute(
        plan([mig("vm0-0", "h0", "h1"), mig("vm0-1", "h0", "h1")]), cluster(), pol
    )
    assert len(r1.succeeded) == 2
    r2 = await ex.execute(plan([mig("vm2-0", "h2", "h3")]), cluster(), pol)
    assert [r.reason for r in r2.skipped] == ["mib_per_hour"]
    clock.advance(3601)
    r3 = await ex.execute(plan([mig("vm2-0", "h2", "h3")]), cluster(), pol)
    assert len(r3.succeeded) == 1
    assert len(hv.calls) == 3


async def test_cooldown_blocks_second_move_and_is_frozen() -> None:
    ex, hv, clock, _, _ = make()
    pol = policy(cooldown_s=600)
    await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), pol)
    assert "vm0-0" in ex.frozen_vms()
    snap2 = cluster().with_placement(cluster().placement().moved("vm0-0", "h1"))
    rep = await ex.execute(plan([mig("vm0-0", "h1", "h2")]), snap2, pol)
    assert [r.reason for r in rep.skipped] == ["cooldown"]
    clock.advance(700)
    assert "vm0-0" not in ex.frozen_vms()
    rep = await ex.execute(plan([mig("vm0-0", "h1", "h2")]), snap2, pol)
    assert len(rep.succeeded) == 1 and hv.where("vm0-0") == ["h2"]


async def test_temporary_hop_may_move_a_vm_twice_in_one_plan() -> None:
    ex, hv, _, _, _ = make()
    p = plan([mig("vm0-0", "h0", "h3", ReasonKind.TEMPORARY)], [mig("vm0-0", "h3", "h1")])
    rep = await ex.execute(p, cluster(), policy(cooldown_s=3600))
    assert len(rep.succeeded) == 2 and hv.where("vm0-0") == ["h1"]


async def test_second_hop_skipped_when_first_failed() -> None:
    ex, hv, _, _, _ = make()
    hv.behaviour["vm0-0"] = "fail"
    p = plan([mig("vm0-0", "h0", "h3", ReasonKind.TEMPORARY)], [mig("vm0-0", "h3", "h1")])
    rep = await ex.execute(p, cluster(), policy())
    assert [r.reason for r in rep.failed] == ["migration_error"]
    assert [r.reason for r in rep.skipped] == ["vm_not_on_source"]
    assert hv.where("vm0-0") == ["h0"]


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (HostState.STALE, "target_stale"),
        (HostState.MAINTENANCE, "target_maintenance"),
        (HostState.DEGRADED, "target_degraded"),
    ],
)
async def test_target_must_be_active(state: HostState, reason: str) -> None:
    snap = cluster().with_host_states({"h1": state})
    ex, hv, _, _, _ = make(snap)
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), snap, policy())
    assert [r.reason for r in rep.skipped] == [reason] and hv.calls == []


async def test_policy_maintenance_window_makes_target_ineligible() -> None:
    ex, hv, _, _, _ = make()
    pol = policy(rules={"maintenance": [{"host": "h1"}]})
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), pol)
    assert [r.reason for r in rep.skipped] == ["target_maintenance"] and hv.calls == []


async def test_stale_source_and_fresh_telemetry() -> None:
    snap = cluster().with_host_states({"h0": HostState.STALE})
    ex, _hv, _, _, _ = make(snap)
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), snap, policy())
    assert [r.reason for r in rep.skipped] == ["source_stale"]
    # target turns stale in fresh telemetry after the plan was made
    fresh = cluster().with_host_states({"h2": HostState.STALE})
    ex2, hv2, _, _, _ = make(host_states=lambda: {h.name: h.state for h in fresh.hosts})
    rep2 = await ex2.execute(plan([mig("vm0-0", "h0", "h2")]), cluster(), policy())
    assert [r.reason for r in rep2.skipped] == ["target_stale"] and hv2.calls == []


async def test_rules_exclusion_pin_anti_affinity_and_capacity() -> None:
    snap = cluster(memory_mib=8192)  # 3 VMs x 2048 on each host: room for exactly one more
    ex, hv, _, _, _ = make(snap)
    pol = policy(
        targets={"headroom": 0.0},  # all of the 8192 may be used (headroom: the next test)
        rules={
            "exclusions": ["vm0-*"],
            "pins": [{"vm": "vm1-0", "hosts": ["h1", "h2"]}],
            "anti_affinity": [{"name": "aa", "vms": ["vm2-0", "vm3-1"]}],
        },
    )
    moves = [
        mig("vm0-0", "h0", "h1"),  # excluded
        mig("vm1-0", "h1", "h3"),  # pinned to h1/h2
        mig("vm2-0", "h2", "h3"),  # anti-affinity with vm3-1 on h3
        mig("vm2-1", "h2", "h0"),  # fits (8192 - 6144)
        mig("vm1-1", "h1", "h0"),  # h0 now full (vm2-1 on its way)
    ]
    rep = await ex.execute(plan(moves), snap, pol)
    assert {r.vm: r.reason for r in rep.skipped} == {
        "vm0-0": "excluded",
        "vm1-0": "pinned",
        "vm2-0": "anti_affinity",
        "vm1-1": "capacity",
    }
    assert hv.calls == [("vm2-1", "h2", "h0")]


async def test_capacity_keeps_the_policys_headroom_free() -> None:
    """Drift fix: the executor holds the target to capacity minus the policy's headroom, as the
    planner does (it used to compare with the raw capacity)."""
    snap = cluster(memory_mib=8192)  # 3 x 2048 on each host: 2048 left of the raw 8192
    moves = [mig("vm2-1", "h2", "h0")]
    rep = await make(snap)[0].execute(plan(moves), snap, policy(targets={"headroom": 0.0}))
    assert [r.vm for r in rep.succeeded] == ["vm2-1"]
    # with 10 % headroom only 7372 MiB may be used: 6144 + 2048 does not fit
    ex, hv, _, _, _ = make(snap)
    rep = await ex.execute(plan(moves), snap, policy(targets={"headroom": 0.1}))
    assert [r.reason for r in rep.skipped] == ["capacity"] and hv.calls == []


async def test_capacity_counts_predicted_cpu_demand_in_balance_mode() -> None:
    """Drift fix: the CPU the executor counts on the target is the planner's figure (predicted
    demand in balance mode: a percentile of the history), not only current use."""
    hosts = (Host("a", 4, 65536), Host("b", 4, 65536))  # 4000 mc, 3600 with 10 % headroom
    busy = tuple(1500 for _ in range(12))
    vms = (
        Vm("on-b", "b", 2, 1024, cpu_used_mc=500, cpu_history_mc=busy),
        Vm("mover", "a", 2, 1024, cpu_used_mc=500, cpu_history_mc=busy),
    )
    snap = ClusterSnapshot(hosts, vms)
    ex, _, _, _, _ = make(snap)
    rep = await ex.execute(plan([mig("mover", "a", "b")]), snap, policy())
    # current use 500 + 500 would fit; predicted 1500 + 1500 = 3000 fits too
    assert [r.vm for r in rep.succeeded] == ["mover"]
    hot = tuple(2000 for _ in range(12))
    vms2 = (
        Vm("on-b", "b", 2, 1024, cpu_used_mc=500, cpu_history_mc=hot),
        Vm("mover", "a", 2, 1024, cpu_used_mc=500, cpu_history_mc=hot),
    )
    snap2 = ClusterSnapshot(hosts, vms2)
    ex2, hv2, _, _, _ = make(snap2)
    rep2 = await ex2.execute(plan([mig("mover", "a", "b")]), snap2, policy())
    # predicted 2000 + 2000 = 4000 > 3600, although current use (1000) is far below
    assert [r.reason for r in rep2.skipped] == ["capacity"] and hv2.calls == []


async def test_target_listing_no_cpu_features_offers_none() -> None:
    """Drift fix: a guest that requires CPU features cannot go to a host that lists none (the
    executor used to skip the check then; the planner never did)."""
    hosts = (
        Host("a", 8, 32768, cpu_features=frozenset({"avx2", "aes"})),
        Host("b", 8, 32768),
        Host("c", 8, 32768, cpu_features=frozenset({"avx2", "aes", "sse4"})),
    )
    vms = (Vm("v", "a", 1, 1024, required_cpu_features=frozenset({"avx2"})),)
    snap = ClusterSnapshot(hosts, vms)
    ex, hv, _, _, _ = make(snap)
    rep = await ex.execute(plan([mig("v", "a", "b")]), snap, policy())
    assert [r.reason for r in rep.skipped] == ["cpu_incompatible"] and hv.calls == []
    rep = await ex.execute(plan([mig("v", "a", "c")]), snap, policy())
    assert [r.vm for r in rep.succeeded] == ["v"]


async def test_cpu_compatibility_and_unmigratable() -> None:
    hosts = (Host("a", 8, 32768, cpu_model="EPYC"), Host("b", 8, 32768, cpu_model="Skylake"))
    vms = (
        Vm("v1", "a", 1, 1024, cpu_model="EPYC"),
        Vm("v2", "a", 1, 1024, migratable=False),
        Vm("v3", "a", 1, 1024),
        Vm("v4", "a", 1, 1024, local_disk_mib=10_000),
    )
    snap = ClusterSnapshot(hosts, vms)
    ex, hv, _, _, _ = make(snap)
    hv.incompatible["v3"] = "host-passthrough device"
    moves = [mig(v, "a", "b") for v in ("v1", "v2", "v3", "v4")]
    rep = await ex.execute(plan(moves), snap, policy())
    assert {r.vm: r.reason for r in rep.skipped} == {
        "v1": "cpu_incompatible",
        "v2": "not_migratable",
        "v3": "incompatible",
        "v4": "local_disk",
    }
    assert hv.calls == []


async def test_windows_and_blackouts_in_policy_timezone() -> None:
    # VirtualClock starts 2026-01-01 00:00 UTC (a Thursday) = 01:00 in Berlin
    ex, _hv, clock, metrics, _ = make()
    pol = policy(windows=[{"start": "02:00", "end": "05:00"}], timezone="Europe/Berlin")
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), pol)
    assert [r.reason for r in rep.skipped] == ["outside_window"]
    clock.advance(3600)  # 02:00 Berlin
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), pol)
    assert len(rep.succeeded) == 1
    pol2 = policy(blackouts=[{"days": ["thu"], "start": "00:00", "end": "24:00"}])
    rep = await ex.execute(plan([mig("vm1-0", "h1", "h2")]), cluster(), pol2)
    assert [r.reason for r in rep.skipped] == ["blackout"]
    assert metrics.total("migrations_skipped_total", reason="blackout") == 1


@pytest.mark.parametrize(
    ("flag", "pol", "reason"),
    [
        (True, policy(), "dry_run"),
        (False, policy(dry_run=True), "dry_run"),
        (False, policy(mode="advisory"), "advisory"),
    ],
)
async def test_dry_run_and_advisory_never_touch_the_hypervisor(
    flag: bool, pol: object, reason: str
) -> None:
    ex, hv, _, _, journal = make(dry_run=flag)
    moves = [mig("vm0-0", "h0", "h1"), mig("vm0-1", "h0", "h5")]  # h5 unknown
    rep = await ex.execute(plan(moves), cluster(), pol)  # type: ignore[arg-type]
    assert rep.dry_run
    assert {r.vm: r.reason for r in rep.skipped} == {"vm0-0": reason, "vm0-1": "unknown_host"}
    assert hv.calls == [] and hv.domain_calls == 0 and journal.moves() == []


async def test_failure_keeps_vm_on_source_and_breaker_opens() -> None:
    ex, hv, clock, metrics, journal = make(breaker_threshold=2, breaker_open_s=600)
    pol = policy()
    for vm in ("vm0-0", "vm0-1"):
        hv.behaviour[vm] = "fail"
        rep = await ex.execute(plan([mig(vm, "h0", "h1")]), cluster(), pol)
        assert [r.reason for r in rep.failed] == ["migration_error"]
        assert hv.where(vm) == ["h0"]
    assert metrics.gauge("host_circuit_open", host="h0") == 1.0
    assert metrics.gauge("host_circuit_open", host="h1") == 1.0
    rep = await ex.execute(plan([mig("vm0-2", "h0", "h2")]), cluster(), pol)
    assert [r.reason for r in rep.skipped] == ["circuit_open"]
    rep = await ex.execute(plan([mig("vm2-0", "h2", "h3")]), cluster(), pol)
    assert len(rep.succeeded) == 1  # other hosts unaffected
    clock.advance(601)  # half-open: one trial at a time, success closes
    rep = await ex.execute(
        plan([mig("vm0-2", "h0", "h2"), mig("vm0-1", "h0", "h3")]), cluster(), pol
    )
    assert [r.vm for r in rep.succeeded] == ["vm0-2"]
    assert {r.vm: r.reason for r in rep.skipped} == {"vm0-1": "circuit_half_open"}
    assert metrics.gauge("host_circuit_open", host="h0") == 0.0
    assert {e.state for e in journal.moves()} == {"failed", "succeeded"}


async def test_verification_outcomes() -> None:
    ex, hv, _, metrics, journal = make()
    hv.behaviour.update(
        {
            "vm0-0": "abort",
            "vm1-0": "lie_ok",
            "vm2-0": "lose",
            "vm3-0": "both",
            "vm0-1": "not_persistent",
            "vm1-1": "raise",
        }
    )
    moves = [
        mig("vm0-0", "h0", "h1"),
        mig("vm1-0", "h1", "h2"),
        mig("vm2-0", "h2", "h3"),
        mig("vm3-0", "h3", "h0"),
    ]
    rep = await ex.execute(
        plan(moves, [mig("vm0-1", "h0", "h2"), mig("vm1-1", "h1", "h3")]), cluster(), policy()
    )
    assert [r.vm for r in rep.aborted] == ["vm0-0"]
    assert {r.vm: r.reason for r in rep.failed} == {
        "vm1-0": "verify_still_on_source",
        "vm2-0": "vm_lost",
        "vm3-0": "running_on_both",
        "vm1-1": "hypervisor_error",
    }
    assert [r.vm for r in rep.lost] == ["vm2-0"]
    assert [r.vm for r in rep.succeeded] == ["vm0-1"]
    assert metrics.total("vm_lost_total") == 1
    assert metrics.total("errors_total", where="verify_not_persistent") == 1
    states = {e.vm: e.state for e in journal.moves()}
    assert states["vm0-0"] == "aborted" and states["vm2-0"] == "lost"
    # a VM running on both hosts stays open: frozen until a human or reconcile resolves it
    assert states["vm3-0"] == "conflict" and "vm3-0" in ex.frozen_vms()


async def test_watchdog_aborts_a_hung_migration() -> None:
    ex, hv, _, metrics, _ = make(watchdog_grace_s=5)
    hv.behaviour["vm0-0"] = "hang"
    pol = policy(migration={"default": {"time_budget_s": 60}})
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), pol)
    assert hv.aborts == ["vm0-0"]
    assert [r.vm for r in rep.aborted] == ["vm0-0"] and hv.where("vm0-0") == ["h0"]
    assert metrics.total("migrations_aborted_total") == 1


async def test_request_stop_lets_in_flight_finish_and_starts_nothing_new() -> None:
    ex, hv, _, _, _ = make()
    pol = policy(max_concurrent=1)
    moves = [mig("vm0-0", "h0", "h1"), mig("vm2-0", "h2", "h3")]

    def progress_hook() -> None:
        ex.request_stop()

    orig = hv.migrate

    async def migrate(*a, **kw):  # type: ignore[no-untyped-def]
        progress_hook()
        return await orig(*a, **kw)

    hv.migrate = migrate  # type: ignore[method-assign]
    rep = await ex.execute(plan(moves), cluster(), pol)
    assert [r.vm for r in rep.succeeded] == ["vm0-0"]
    assert [r.reason for r in rep.skipped] == ["stopping"]


async def test_journal_unwritable_refuses_to_act() -> None:
    ex, hv, _, metrics, journal = make()
    journal._conn.execute("PRAGMA query_only=1")  # writes now fail like a read-only disk
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert [r.reason for r in rep.skipped] == ["journal_unwritable"]
    assert hv.calls == [] and metrics.gauge("journal_writable") == 0.0
    journal._conn.execute("PRAGMA query_only=0")
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert len(rep.succeeded) == 1 and metrics.gauge("journal_writable") == 1.0


async def test_moves_that_do_not_help_trigger_backoff() -> None:
    snap = cluster()
    ex, _hv, clock, metrics, _ = make(snap, backoff_strikes=2, backoff_s=900)
    pol = policy()
    # moving equal VMs between equally loaded hosts never reduces the imbalance
    place = snap.placement()
    moved = [("vm0-0", "h0", "h1"), ("vm1-0", "h1", "h2")]
    for vm, s, t in moved:
        cur = snap.with_placement(place)
        rep = await ex.execute(plan([mig(vm, s, t)]), cur, pol)
        assert len(rep.succeeded) == 1
        place = place.moved(vm, t)
    ex.observe_snapshot(snap.with_placement(place), pol)
    assert ex.help.history == ["not_helped", "not_helped"]
    assert ex.backoff_remaining() == pytest.approx(900)
    assert metrics.gauge("migration_backoff_active") == 1.0
    # discretionary moves pause; a drain still runs
    cur = snap.with_placement(place)
    rep = await ex.execute(
        plan([mig("vm2-0", "h2", "h3"), mig("vm3-0", "h3", "h0", ReasonKind.DRAIN)]), cur, pol
    )
    assert {r.vm: r.reason for r in rep.skipped} == {"vm2-0": "backoff"}
    assert [r.vm for r in rep.succeeded] == ["vm3-0"]
    clock.advance(901)
    assert ex.backoff_remaining() == 0


async def test_moves_that_help_do_not_back_off() -> None:
    hosts = (Host("a", 8, 32768), Host("b", 8, 32768))
    vms = tuple(Vm(f"v{i}", "a", 1, 4096, cpu_used_mc=1000) for i in range(4))
    snap = ClusterSnapshot(hosts, vms)
    ex, _, _, _, _ = make(snap, backoff_strikes=1)
    await ex.execute(plan([mig("v0", "a", "b")]), snap, policy())
    verdict = ex.observe_snapshot(snap.with_placement(snap.placement().moved("v0", "b")), policy())
    assert verdict == "helped" and ex.backoff_remaining() == 0


async def test_in_flight_and_frozen_during_a_move() -> None:
    ex, _hv, clock, metrics, _ = make()
    seen: list[tuple[str, float | None]] = []

    async def watch() -> None:
        await clock.sleep(6)  # half-way through the fake's 10 s migration
        for f in ex.in_flight():
            seen.append((f.vm, f.progress.data_remaining_mib if f.progress else None))
        seen.append(("frozen", 1.0 if "vm0-0" in ex.frozen_vms() else 0.0))

    import asyncio

    watcher = asyncio.create_task(watch())
    await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    await watcher
    assert seen == [("vm0-0", 512.0), ("frozen", 1.0)]
    assert metrics.gauge("migrations_in_flight") == 0.0


async def test_adapter_bug_during_verification_is_retried_until_resolved() -> None:
    ex, hv, clock, metrics, journal = make()
    orig = hv.domains
    broken = {"on": False}

    async def domains(host: str):  # type: ignore[no-untyped-def]
        if broken["on"]:
            raise RuntimeError("adapter bug")
        return await orig(host)

    orig_migrate = hv.migrate

    async def migrate(*a, **kw):  # type: ignore[no-untyped-def]
        res = await orig_migrate(*a, **kw)
        broken["on"] = True
        return res

    hv.domains = domains  # type: ignore[method-assign]
    hv.migrate = migrate  # type: ignore[method-assign]
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert [r.reason for r in rep.failed] == ["unverified"]
    assert metrics.total("errors_total", where="executor_verify") == 1
    assert [e.state for e in journal.open_moves()] == ["unverified"]
    assert "vm0-0" in ex.frozen_vms()
    (pending,) = ex.in_flight()
    assert pending.state == "unresolved" and "adapter bug" in pending.detail
    broken["on"] = False
    await clock.sleep(ex.verify_retry_max_s)  # verified again on the timer, not at a restart
    assert journal.open_moves() == [] and ex.in_flight() == []
    assert [e.state for e in journal.moves()] == ["succeeded"]
    assert "vm0-0" not in ex.frozen_vms()
    rec = await ex.reconcile()  # nothing left for a reconcile
    assert rec.succeeded == [] and rec.unresolved == []
