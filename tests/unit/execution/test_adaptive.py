"""Adaptive concurrency (AIMD) after downtime overshoots, start stagger, shared downtime target."""

from __future__ import annotations

import asyncio

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.domain.plan import Migration, ReasonKind
from rebalancerd.execution.adaptive import TOTAL, AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.observability import MemoryMetrics
from tests.unit.execution.fakes import FakeHypervisor, cluster, plan, policy
from tests.unit.execution.fakes import mig as _mig


def mig(vm: str, source: str, target: str) -> Migration:
    """A drain move (not judged by the 'did it help' back-off, which would pause a ring)."""
    return _mig(vm, source, target, ReasonKind.DRAIN)


def make(
    n_hosts: int = 8, **kw: object
) -> tuple[Executor, FakeHypervisor, VirtualClock, MemoryMetrics]:
    clock = VirtualClock()
    hv = FakeHypervisor.for_snapshot(clock, cluster(n_hosts=n_hosts))
    metrics = MemoryMetrics()
    ex = Executor(hv, clock, metrics, Journal.open(":memory:"), **kw)
    return ex, hv, clock, metrics


def ring(hv: FakeHypervisor, vms: list[str], n_hosts: int = 8) -> list[Migration]:
    """One move per VM to the host 4 further on (disjoint source/target pairs)."""
    out = []
    for vm in vms:
        src = hv.where(vm)[0]
        out.append(mig(vm, src, f"h{(int(src[1:]) + 4) % n_hosts}"))
    return out


# -- the pure controller -------------------------------------------------------------------------
def test_cut_is_multiplicative_once_per_generation_and_floors_at_one() -> None:
    a = AdaptiveConcurrency(cooloff_s=100)
    lim = {TOTAL: 8, "a": 20, "b": 20}
    ch = a.observe(
        downtime_ms=400, limit_ms=300, started=0, now=10, peak={TOTAL: 8}, policy_limits=lim
    )
    assert [(c.old, c.new, c.direction) for c in ch] == [(8, 4, "decrease")]
    # a second overshoot of the same generation (started before the cut) does not cut again
    assert (
        a.observe(
            downtime_ms=900, limit_ms=300, started=5, now=11, peak={TOTAL: 8}, policy_limits=lim
        )
        == []
    )
    assert a.cap(TOTAL, 8) == 4
    # the next generation overshoots too: halve again, then floor at 1
    a.observe(downtime_ms=250, limit_ms=300, started=12, now=20, peak={TOTAL: 4}, policy_limits=lim)
    assert a.cap(TOTAL, 8) == 2
    a.observe(downtime_ms=301, limit_ms=300, started=21, now=30, peak={TOTAL: 2}, policy_limits=lim)
    a.observe(downtime_ms=999, limit_ms=300, started=31, now=40, peak={TOTAL: 1}, policy_limits=lim)
    assert a.cap(TOTAL, 8) == 1
    # a policy limit below the cap wins
    assert a.cap(TOTAL, 0) == 0


def test_cut_uses_the_concurrency_the_move_saw_and_cuts_its_hosts() -> None:
    a = AdaptiveConcurrency()
    ch = a.observe(
        downtime_ms=260,  # above 80 % of 300
        limit_ms=300,
        started=0,
        now=1,
        peak={TOTAL: 3, "a": 2, "b": 1},
        policy_limits={TOTAL: 10, "a": 2, "b": 2},
    )
    assert {c.scope: (c.old, c.new) for c in ch} == {TOTAL: (10, 1), "a": (2, 1), "b": (2, 1)}
    assert a.cap("c", 2) == 2  # untouched host


def test_recovery_waits_for_cooloff_then_is_additive_and_restores_the_policy_limit() -> None:
    a = AdaptiveConcurrency(cooloff_s=100)
    lim = {TOTAL: 4}

    def good(started: float, now: float) -> list[str]:
        ch = a.observe(
            downtime_ms=40,
            limit_ms=300,
            started=started,
            now=now,
            peak={TOTAL: 1},
            policy_limits=lim,
        )
        return [c.direction for c in ch]

    a.observe(downtime_ms=500, limit_ms=300, started=0, now=10, peak={TOTAL: 4}, policy_limits=lim)
    assert a.cap(TOTAL, 4) == 2
    for t in range(20, 100, 10):  # inside the cool-off: no recovery
        assert good(t, t + 1) == []
    assert a.cap(TOTAL, 4) == 2
    assert good(5, 200) == []  # started before the cut: not evidence for the new cap
    # a cap's worth of good moves adds one slot
    assert good(150, 200) == [] and good(150, 201) == ["increase"]
    assert a.cap(TOTAL, 4) == 3
    assert good(210, 220) == [] and good(210, 221) == []
    assert good(210, 222) == ["restore"]
    assert a.throttled() == {} and a.cap(TOTAL, 4) == 4
    # moves in between (not good, not bad) change nothing
    a.observe(
        downtime_ms=200, limit_ms=300, started=230, now=231, peak={TOTAL: 4}, policy_limits=lim
    )
    assert a.cap(TOTAL, 4) == 4


# -- through the executor ------------------------------------------------------------------------
async def test_overshoot_lowers_the_cap_and_good_moves_bring_it_back() -> None:
    ex, hv, clock, metrics = make(adaptive=AdaptiveConcurrency(cooloff_s=300))
    pol = policy(max_concurrent=4)
    vms = ["vm0-0", "vm1-0", "vm2-0", "vm3-0"]
    hv.downtimes["vm0-0"] = 420.0  # class limit 300 ms
    with structlog.testing.capture_logs() as logs:
        rep = await ex.execute(plan(ring(hv, vms)), cluster(8), pol)
    assert len(rep.succeeded) == 4 and rep.max_concurrency == 4
    assert rep.downtime_over_limit == 1
    assert metrics.total("migration_downtime_over_limit_total") == 1
    assert rep.concurrency_limit == 4
    assert rep.concurrency_effective == rep.concurrency_effective_min == 2
    assert metrics.gauge("migration_concurrency_effective") == 2.0
    # the overshooting move's hosts: one move at a time
    assert metrics.gauge("migration_host_concurrency_effective", host="h0") == 1.0
    assert metrics.gauge("migration_host_concurrency_effective", host="h4") == 1.0
    adjusted = [e for e in logs if e["event"] == "migration_concurrency_adjusted"]
    assert {(e["scope"], e["host"], e["old"], e["new"]) for e in adjusted} == {
        ("cluster", None, 4, 2),
        ("host", "h0", 20, 1),
        ("host", "h4", 20, 1),
    }
    assert {e["direction"] for e in adjusted} == {"decrease"}

    # the next wave runs at most 2 at once, and only one move touches h0/h4 at a time
    snap = cluster(8).with_placement(
        cluster(8).placement().moved("vm0-0", "h4").moved("vm1-0", "h5")
    )
    snap = snap.with_placement(snap.placement().moved("vm2-0", "h6").moved("vm3-0", "h7"))
    hv.max_total = 0
    moves = [mig("vm0-1", "h0", "h4"), mig("vm0-2", "h0", "h5")]
    moves += [mig("vm1-1", "h1", "h6"), mig("vm2-1", "h2", "h7")]
    rep2 = await ex.execute(plan(moves), snap, pol)
    assert len(rep2.succeeded) == 4
    assert hv.max_total == 2 and rep2.max_concurrency == 2
    assert metrics.total("migration_limit_blocks_total", limit="adaptive_concurrency") >= 1
    h0_moves = sorted(t for t, vm in hv.starts if vm in ("vm0-1", "vm0-2"))
    assert h0_moves[1] - h0_moves[0] >= hv.duration_s  # never together on h0

    # after the cool-off, moves well within the limit raise the cap one slot at a time
    clock.advance(301)
    caps = [rep2.concurrency_effective]
    place = snap.placement()
    for _ in range(6):  # one VM bouncing between h1 and h5, each move good (42 ms)
        src = hv.where("vm1-2")[0]
        place = place.moved("vm1-2", src)
        tgt = "h5" if src == "h1" else "h1"
        rep_i = await ex.execute(plan([mig("vm1-2", src, tgt)]), snap.with_placement(place), pol)
        assert len(rep_i.succeeded) == 1
        caps.append(rep_i.concurrency_effective)
    assert caps == sorted(caps) and caps[-1] == 4 and max(caps) <= 4
    assert metrics.gauge("migration_concurrency_effective") == 4.0
    # a stricter policy always wins over the controller
    rep3 = await ex.execute(plan([]), snap, policy(max_concurrent=1))
    assert rep3.concurrency_effective == 1


async def test_stagger_spreads_the_starts_of_one_step() -> None:
    ex, hv, _, _ = make(stagger_s=3.0)
    vms = ["vm0-0", "vm1-0", "vm2-0"]
    rep = await ex.execute(plan(ring(hv, vms)), cluster(8), policy())
    assert len(rep.succeeded) == 3
    assert [t for t, _ in hv.starts] == [0.0, 3.0, 6.0]
    assert rep.max_concurrency == 3  # still concurrent: 10 s moves, 3 s apart


async def test_downtime_target_is_shared_by_concurrent_switchovers() -> None:
    ex, hv, _, _ = make()
    vms = ["vm0-0", "vm1-0", "vm2-0", "vm3-0"]
    await ex.execute(plan(ring(hv, vms)), cluster(8), policy(max_concurrent=4))
    assert {hv.settings_seen[v].max_downtime_ms for v in vms} == {45}  # 300 * 0.6 / 4
    ex2, hv2, _, _ = make(share_downtime=False)
    await ex2.execute(plan(ring(hv2, vms)), cluster(8), policy(max_concurrent=4))
    assert {hv2.settings_seen[v].max_downtime_ms for v in vms} == {180}
    ex3, hv3, _, _ = make()
    await ex3.execute(plan([mig("vm0-0", "h0", "h4")]), cluster(8), policy(max_concurrent=4))
    assert hv3.settings_seen["vm0-0"].max_downtime_ms == 180  # alone: no sharing


# -- property: the policy's limits hold whatever the downtimes -----------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limits=st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 3)),
    downtimes=st.lists(st.sampled_from([10.0, 100.0, 200.0, 260.0, 400.0, 2000.0]), min_size=16),
    gaps=st.lists(st.sampled_from([0.0, 50.0, 400.0]), min_size=3, max_size=3),
    stagger=st.sampled_from([0.0, 2.0]),
)
def test_limits_hold_and_cap_stays_within_policy(
    limits: tuple[int, int, int], downtimes: list[float], gaps: list[float], stagger: float
) -> None:
    total, per_src, per_tgt = limits

    async def go() -> None:
        ex, hv, clock, metrics = make(n_hosts=4, stagger_s=stagger)
        pol = policy(max_concurrent=total, max_per_source=per_src, max_per_target=per_tgt)
        snap = cluster(4)
        k = 0
        for gap in gaps:
            clock.advance(gap)
            place = snap.placement()
            moves = []
            for v in snap.vms:
                if len(moves) == 6:
                    break
                where = hv.where(v.name)[0]
                hv.downtimes[v.name] = downtimes[k % len(downtimes)]
                k += 1
                moves.append(mig(v.name, where, f"h{(int(where[1:]) + 1) % 4}"))
                place = place.moved(v.name, where)
            hv.max_total = hv.max_source = hv.max_target = 0
            with structlog.testing.capture_logs():
                rep = await ex.execute(plan(moves), snap.with_placement(place), pol)
            assert rep.started + len(rep.skipped) == len(moves)
            assert not rep.skipped  # waiting for a slot never turns into a skip
            assert hv.max_total <= total and rep.max_concurrency <= total
            assert hv.max_source <= per_src and hv.max_target <= per_tgt
            assert 1 <= rep.concurrency_effective_min <= rep.concurrency_effective <= total
            assert 1 <= metrics.gauge("migration_concurrency_effective") <= total
            over = sum(1 for r in rep.succeeded if (r.downtime_ms or 0) > 300)
            assert rep.downtime_over_limit == over
            for v in snap.vms:
                assert len(hv.where(v.name)) == 1

    asyncio.run(go())


def test_slow_start_doubles_while_good_and_falls_back_to_aimd() -> None:
    a = AdaptiveConcurrency(slow_start=True, cooloff_s=100)
    lim = {TOTAL: 8}

    def move(downtime: float, t: float) -> list[tuple[int, int]]:
        ch = a.observe(
            downtime_ms=downtime,
            limit_ms=300,
            started=t,
            now=t + 1,
            peak={TOTAL: 1},
            policy_limits=lim,
        )
        return [(c.old, c.new) for c in ch]

    assert a.cap(TOTAL, 8) == 1
    assert move(200, 0) == [(1, 2)]  # within the limit (below 80 %): doubles
    assert move(100, 1) == [] and move(100, 2) == [(2, 4)]
    assert [move(100, t) for t in (3, 4, 5)] == [[], [], []]
    assert move(100, 6) == [(4, 8)]  # reached the policy's limit: no cap left
    assert a.throttled() == {}

    b = AdaptiveConcurrency(slow_start=True, cooloff_s=100)
    b.observe(downtime_ms=10, limit_ms=300, started=0, now=1, peak={TOTAL: 1}, policy_limits=lim)
    assert b.cap(TOTAL, 8) == 2
    ch = b.observe(
        downtime_ms=400, limit_ms=300, started=2, now=3, peak={TOTAL: 2}, policy_limits=lim
    )
    assert [(c.old, c.new, c.direction) for c in ch] == [(2, 1, "decrease")]
    # now AIMD: nothing grows inside the cool-off
    b.observe(downtime_ms=10, limit_ms=300, started=4, now=5, peak={TOTAL: 1}, policy_limits=lim)
    assert b.cap(TOTAL, 8) == 1
    assert b.cap(TOTAL, 0) == 0  # the policy always wins


async def test_slow_start_through_the_executor_ramps_up_within_one_step() -> None:
    ex, hv, _, metrics = make(adaptive=AdaptiveConcurrency(slow_start=True))
    vms = ["vm0-0", "vm1-0", "vm2-0", "vm3-0"]
    rep = await ex.execute(plan(ring(hv, vms)), cluster(8), policy(max_concurrent=4))
    assert len(rep.succeeded) == 4 and not rep.skipped
    # 1 alone, then 2 together, then the last one (cap 4 = the policy: restored)
    assert [t for t, _ in hv.starts] == [0.0, 10.0, 10.0, 20.0]
    assert rep.concurrency_effective_min == 1 and rep.concurrency_effective == 4
    assert metrics.gauge("migration_concurrency_effective") == 4.0
