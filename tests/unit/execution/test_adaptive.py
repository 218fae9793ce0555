"""Adaptive concurrency (AIMD) after downtime overshoots, start stagger, shared downtime target."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.domain.model import ClusterSnapshot
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


def placed(hv: FakeHypervisor, n_hosts: int = 8) -> ClusterSnapshot:
    """The test cluster with every VM where the fake hypervisor runs it."""
    base = cluster(n_hosts)
    place = base.placement()
    for v in base.vms:
        place = place.moved(v.name, hv.where(v.name)[0])
    return base.with_placement(place)


def ring(hv: FakeHypervisor, vms: list[str], n_hosts: int = 8) -> list[Migration]:
    """One move per VM to the host 4 further on (disjoint source/target pairs)."""
    out = []
    for vm in vms:
        src = hv.where(vm)[0]
        out.append(mig(vm, src, f"h{(int(src[1:]) + 4) % n_hosts}"))
    return out


# -- the pure controller -------------------------------------------------------------------------
def feed(
    a: AdaptiveConcurrency, downtime: float, level: int, t: float, *, limit: int = 8
) -> list[tuple[int, int, str]]:
    """One completed cluster-wide move: `downtime` ms against 300 ms, seen at `level`."""
    ch = a.observe(
        downtime_ms=downtime,
        limit_ms=300,
        started=t,
        now=t + 1,
        peak={TOTAL: level},
        policy_limits={TOTAL: limit},
    )
    return [(c.old, c.new, c.direction) for c in ch]


def test_cut_is_multiplicative_once_per_generation_and_floors_at_one() -> None:
    a = AdaptiveConcurrency(cooloff_s=100, slow_start=False)
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
    a = AdaptiveConcurrency(slow_start=False)
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


def test_slow_start_is_the_default_and_growth_needs_evidence_at_the_current_level() -> None:
    assert AdaptiveConcurrency().cap(TOTAL, 8) == 2  # the default start (see adaptive.py)
    assert AdaptiveConcurrency().cap(TOTAL, 1) == 1
    a = AdaptiveConcurrency(start_cap=1)
    assert a.cap(TOTAL, 8) == 1
    # two moves at level 1 are not enough evidence (min_samples 3)
    assert feed(a, 30, 1, 0) == [] and feed(a, 60, 1, 1) == []
    assert a.predict(TOTAL, 2, 3) is None
    # the third: worst 60 ms = 0.2 of the limit, x 2/1 x 1.5 headroom = 0.6 <= 0.8: one more
    assert feed(a, 45, 1, 2) == [(1, 2, "increase")]
    assert a.cap(TOTAL, 8) == 2
    # moves that ran alone say nothing about 3 at once: the cap stays at 2
    for t in range(3, 20):
        assert feed(a, 10, 1, t) == []
    assert a.cap(TOTAL, 8) == 2
    # three at level 2, worst 100 ms: 0.333 x 3/2 x 1.5 = 0.75 <= 0.8: one more
    assert feed(a, 100, 2, 20) == [] and feed(a, 80, 2, 21) == []
    assert feed(a, 90, 2, 22) == [(2, 3, "increase")]
    # at level 3 the worst is 150 ms: 0.5 x 4/3 x 1.5 = 1.0 > 0.8: not 4 while it is remembered
    for t in range(23, 39):
        assert feed(a, 150 if t == 23 else 60, 3, t) == []
    assert a.cap(TOTAL, 8) == 3
    assert a.worst(TOTAL, 3, 39) == (16, 0.5)
    # at most `keep` (16) samples per level: the 17th pushes the slow one out
    assert feed(a, 60, 3, 39) == [(3, 4, "increase")]


def test_a_slow_level_blocks_growth_and_the_policy_limit_restores() -> None:
    a = AdaptiveConcurrency(start_cap=1)
    # one at a time already takes 90 ms: 0.3 x 2 x 1.5 = 0.9 > 0.8: two at once is not trusted
    for t in range(10):
        assert feed(a, 90 if t == 0 else 40, 1, t) == []
    assert a.cap(TOTAL, 8) == 1
    # at the policy's limit the direction is "restore", the learned cap is kept
    b = AdaptiveConcurrency(start_cap=1)
    assert feed(b, 20, 1, 0, limit=2) == [] and feed(b, 20, 1, 1, limit=2) == []
    assert feed(b, 20, 1, 2, limit=2) == [(1, 2, "restore")]
    assert b.throttled() == {TOTAL: 2}
    assert feed(b, 20, 2, 3, limit=2) == []  # nothing above the policy
    assert b.cap(TOTAL, 2) == 2 and b.cap(TOTAL, 1) == 1 and b.cap(TOTAL, 0) == 0
    # a policy raised later: 3 is not trusted before three moves ran 2 at once
    assert b.cap(TOTAL, 4) == 2
    assert feed(b, 20, 1, 4, limit=4) == [] and feed(b, 20, 2, 5, limit=4) == []
    assert feed(b, 20, 2, 6, limit=4) == [(2, 3, "increase")]


def test_an_overshoot_blocks_its_level_until_forgotten_and_growth_waits_for_the_cooloff() -> None:
    a = AdaptiveConcurrency(cooloff_s=100, history_s=1000)
    for t in range(3):
        feed(a, 20, 1, t)
    for t in range(3, 6):
        feed(a, 20, 2, t)
    assert a.cap(TOTAL, 8) == 3
    assert feed(a, 330, 3, 10) == [(3, 1, "decrease")]  # floor(3 x 0.5) = 1
    # inside the cool-off nothing grows, however good
    for t in range(20, 100, 10):
        assert feed(a, 10, 1, t) == []
    # after it: 2 is trusted again (measured there: 20 ms), 3 is not (overshot there)
    assert feed(a, 10, 1, 120) == [(1, 2, "increase")]
    assert a.predict(TOTAL, 3, 121) == 1.1
    for t in range(130, 300, 10):
        assert feed(a, 20, 2, t) == []
    assert a.cap(TOTAL, 8) == 2
    # once the overshoot is forgotten (history_s), fresh good evidence at 2 raises it again
    assert feed(a, 20, 2, 1020) == [(2, 3, "increase")]


def test_the_learned_state_round_trips_and_bad_state_is_reported() -> None:
    a = AdaptiveConcurrency(slow_start=False)
    a.observe(
        downtime_ms=400,
        limit_ms=300,
        started=0,
        now=10,
        peak={TOTAL: 4, "h1": 4, "h2": 2},
        policy_limits={TOTAL: 4, "h1": 8, "h2": 8},
    )
    for t in range(400, 403):
        feed(a, 30, 2, t, limit=4)
    state = json.loads(json.dumps(a.state()))
    b = AdaptiveConcurrency()  # slow start: overwritten by the loaded cluster scope
    assert b.load(state) == []
    assert b.throttled() == a.throttled() == {TOTAL: 3, "h1": 2, "h2": 1}
    assert b.predict(TOTAL, 3, 410) == a.predict(TOTAL, 3, 410)
    assert b.worst(TOTAL, 4, 410) == (1, 400 / 300)
    # the restored cool-off and generation still hold
    assert (
        b.observe(
            downtime_ms=900, limit_ms=300, started=5, now=411, peak={TOTAL: 4}, policy_limits={}
        )
        == []
    )
    c = AdaptiveConcurrency()
    bad = {
        "h3": {"cap": 0},
        "h4": {"history": {}},
        "h5": {"cap": 2, "history": {"x": []}},
        "h6": "nonsense",
        "h7": {"cap": 2, "decreased_at": None, "history": {"1": [[1.0, 0.1]]}},
    }
    assert sorted(c.load(bad)) == ["h3", "h4", "h5", "h6"]
    assert c.throttled() == {TOTAL: 2, "h7": 2}  # TOTAL: the default start


# -- through the executor ------------------------------------------------------------------------
async def test_overshoot_lowers_the_cap_and_good_moves_bring_it_back() -> None:
    ex, hv, clock, metrics = make(adaptive=AdaptiveConcurrency(cooloff_s=300, slow_start=False))
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

    # after the cool-off, good moves raise the cap one level at a time, to a level predicted
    # safe from what ran at the level below: 2 at once took 42 ms (0.14 x 3/2 x 1.5 <= 0.8)
    clock.advance(301)
    caps = []
    for _ in range(4):  # one VM bouncing between h1 and h5, each move good (42 ms)
        src = hv.where("vm1-2")[0]
        tgt = "h5" if src == "h1" else "h1"
        rep_i = await ex.execute(plan([mig("vm1-2", src, tgt)]), placed(hv), pol)
        assert len(rep_i.succeeded) == 1
        caps.append(rep_i.concurrency_effective)
    # moves alone say nothing about 4 at once (and 4 at once overshot): 3
    assert caps == [3, 3, 3, 3]
    rep_3 = await ex.execute(plan(ring(hv, ["vm1-2", "vm2-2", "vm3-2"])), placed(hv), pol)
    assert rep_3.max_concurrency == 3 and rep_3.concurrency_effective == 3
    assert ex.adaptive.predict(TOTAL, 4, clock.now()) == 1.4  # the remembered overshoot
    # once it is forgotten (history_s), good moves at 3 at once are evidence enough for 4
    clock.advance(ex.adaptive.history_s)
    rep_4 = await ex.execute(plan(ring(hv, ["vm1-2", "vm2-2", "vm3-2"])), placed(hv), pol)
    assert rep_4.concurrency_effective == 4
    assert metrics.gauge("migration_concurrency_effective") == 4.0
    # a stricter policy always wins over the controller
    rep5 = await ex.execute(plan([]), snap, policy(max_concurrent=1))
    assert rep5.concurrency_effective == 1


async def test_stagger_spreads_the_starts_of_one_step() -> None:
    ex, hv, _, _ = make(stagger_s=3.0, adaptive=AdaptiveConcurrency(slow_start=False))
    vms = ["vm0-0", "vm1-0", "vm2-0"]
    rep = await ex.execute(plan(ring(hv, vms)), cluster(8), policy())
    assert len(rep.succeeded) == 3
    assert [t for t, _ in hv.starts] == [0.0, 3.0, 6.0]
    assert rep.max_concurrency == 3  # still concurrent: 10 s moves, 3 s apart


async def test_downtime_target_is_shared_by_concurrent_switchovers() -> None:
    ex, hv, _, _ = make(adaptive=AdaptiveConcurrency(slow_start=False))
    vms = ["vm0-0", "vm1-0", "vm2-0", "vm3-0"]
    await ex.execute(plan(ring(hv, vms)), cluster(8), policy(max_concurrent=4))
    assert {hv.settings_seen[v].max_downtime_ms for v in vms} == {45}  # 300 * 0.6 / 4
    ex2, hv2, _, _ = make(share_downtime=False, adaptive=AdaptiveConcurrency(slow_start=False))
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


async def test_slow_start_through_the_executor_ramps_up_on_evidence() -> None:
    ex, hv, _, metrics = make(adaptive=AdaptiveConcurrency(start_cap=1))
    vms = [f"vm{i}-{j}" for j in range(2) for i in range(4)]
    with structlog.testing.capture_logs() as logs:
        rep = await ex.execute(plan(ring(hv, vms)), cluster(8), policy(max_concurrent=4))
    assert len(rep.succeeded) == 8 and not rep.skipped
    # three alone (the evidence for 2), then two at once until three of those completed
    starts = [t for t, _ in hv.starts]
    assert starts[:5] == [0.0, 10.0, 20.0, 30.0, 30.0]
    assert rep.concurrency_effective_min == 1 and rep.concurrency_effective <= 4
    ups = [
        (e["old"], e["new"])
        for e in logs
        if e["event"] == "migration_concurrency_adjusted" and e["scope"] == "cluster"
    ]
    assert ups[0] == (1, 2) and all(new == old + 1 for old, new in ups)
    assert metrics.gauge("migration_concurrency_effective") == float(rep.concurrency_effective)
    # never more at once than the cap in force when each started
    assert rep.max_concurrency <= max(new for _, new in ups)


async def test_restart_keeps_what_was_learned(tmp_path: Path) -> None:
    clock = VirtualClock()
    hv = FakeHypervisor.for_snapshot(clock, cluster(n_hosts=8))
    j1 = Journal.open(tmp_path)
    ex1 = Executor(hv, clock, MemoryMetrics(), j1, adaptive=AdaptiveConcurrency(slow_start=False))
    hv.downtimes["vm0-0"] = 420.0
    with structlog.testing.capture_logs():
        rep = await ex1.execute(
            plan(ring(hv, ["vm0-0", "vm1-0", "vm2-0", "vm3-0"])),
            cluster(8),
            policy(max_concurrent=4),
        )
    assert rep.concurrency_effective == 2
    j1.close()
    # a new process on the same state directory: the cut cap and the overshoot are remembered
    clock.advance(600)  # past the cool-off
    metrics = MemoryMetrics()
    with structlog.testing.capture_logs() as logs:
        ex2 = Executor(hv, clock, metrics, Journal.open(tmp_path))
    assert ex2.adaptive.throttled() == {TOTAL: 2, "h0": 1, "h4": 1}
    assert ex2.adaptive.predict(TOTAL, 4, clock.now()) is not None
    assert any(e["event"] == "adaptive_state_loaded" for e in logs)
    hv.max_total = 0
    vms = ["vm1-1", "vm2-1", "vm3-1", "vm1-2"]
    with structlog.testing.capture_logs():
        rep2 = await ex2.execute(plan(ring(hv, vms)), placed(hv), policy(max_concurrent=4))
    assert len(rep2.succeeded) == 4
    # not 1 (a fresh slow start), not 4 (the overshoot it learned from): 2 at once
    assert hv.max_total == 2 and rep2.max_concurrency == 2
    assert metrics.total("errors_total", where="adaptive_load") == 0


async def test_unreadable_or_malformed_learned_state_is_reported_not_fatal(tmp_path: Path) -> None:
    j = Journal.open(tmp_path)
    j.save_adaptive({TOTAL: "{not json", "h1": json.dumps({"cap": -3})}, 0.0)
    clock = VirtualClock()
    hv = FakeHypervisor.for_snapshot(clock, cluster(n_hosts=8))
    metrics = MemoryMetrics()
    with structlog.testing.capture_logs() as logs:
        ex = Executor(hv, clock, metrics, j)
    assert metrics.total("errors_total", where="adaptive_load") == 1
    assert [e["scopes"] for e in logs if e["event"] == "adaptive_state_malformed"] == [
        [TOTAL, "h1"]
    ]
    assert ex.adaptive.cap(TOTAL, 4) == 2  # what it starts from without state: slow start
    with structlog.testing.capture_logs():
        rep = await ex.execute(plan(ring(hv, ["vm0-0"])), cluster(8), policy(max_concurrent=4))
    assert len(rep.succeeded) == 1
    # and the good state replaced the bad one
    assert json.loads(j.adaptive_state()[TOTAL])["cap"] == 2
