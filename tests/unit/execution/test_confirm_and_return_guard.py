"""The executor's word comes from the hypervisors, not telemetry (the CONFIRMED pre-checks), and
the return guard (a VM does not go back to a host it left within `limits.return_guard_s`), in
the executor, in the planner and in an hour of a control loop over a misreporting host."""

from __future__ import annotations

from typing import Any

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.daemon.loop import ControlLoop
from rebalancerd.domain.checks import ReasonCode
from rebalancerd.domain.model import ClusterRules, ClusterSnapshot, Host, HostState, Pin, Vm
from rebalancerd.domain.plan import ReasonKind
from rebalancerd.domain.snapshot_facts import guarded_departures
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.observability import MemoryMetrics
from rebalancerd.planner import make_plan
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.policy.schema import Policy
from tests.unit.execution.fakes import FakeDomain, FakeHypervisor, mig, plan, policy

HOST_MIB = 16384


def two_hosts(*vms: tuple[str, str]) -> ClusterSnapshot:
    hosts = tuple(Host(h, cores=16, memory_mib=HOST_MIB) for h in ("h0", "h1", "h2"))
    guests = tuple(Vm(n, h, vcpus=2, memory_mib=2048, cpu_used_mc=500) for n, h in vms)
    return ClusterSnapshot(hosts, guests, taken_at=1_767_225_600.0)


def make(
    snap: ClusterSnapshot, **kw: Any
) -> tuple[Executor, FakeHypervisor, VirtualClock, MemoryMetrics, Journal]:
    clock = VirtualClock()
    hv = FakeHypervisor.for_snapshot(clock, snap)
    metrics = MemoryMetrics()
    journal = Journal.open(":memory:")
    kw.setdefault("adaptive", AdaptiveConcurrency(slow_start=False))
    return Executor(hv, clock, metrics, journal, **kw), hv, clock, metrics, journal


# -- confirmed from the hypervisors -------------------------------------------------------------


async def test_target_that_telemetry_calls_empty_but_libvirt_fills_is_refused() -> None:
    """Telemetry says h1 is empty; its hypervisor runs 7 x 2 GiB there (14 GiB of 16): one more
    2 GiB guest would pass 16 GiB - 10 % headroom. The move is refused, nothing migrates."""
    snap = two_hosts(("a", "h0"))
    ex, hv, _, metrics, journal = make(snap)
    for i in range(7):
        hv.hosts["h1"][f"ghost{i}"] = FakeDomain(memory_mib=2048)
    rep = await ex.execute(plan([mig("a", "h0", "h1")]), snap, policy())
    assert [r.reason for r in rep.skipped] == [ReasonCode.CONFIRMED_NO_ROOM]
    assert hv.calls == [] and hv.where("a") == ["h0"]
    assert metrics.total("migrations_skipped_total", reason="confirmed_no_room") == 1
    assert journal.moves() == []


async def test_room_that_libvirt_confirms_is_used() -> None:
    snap = two_hosts(("a", "h0"))
    ex, hv, _, _, _ = make(snap)
    for i in range(6):  # 12 GiB + 2 GiB <= 14.4 GiB
        hv.hosts["h1"][f"ghost{i}"] = FakeDomain(memory_mib=2048)
    rep = await ex.execute(plan([mig("a", "h0", "h1")]), snap, policy())
    assert [r.vm for r in rep.succeeded] == ["a"] and hv.where("a") == ["h1"]


async def test_node_free_memory_and_incoming_moves_count() -> None:
    """h1's hypervisor reports 4 GiB free: one 2 GiB guest fits (with the 256 MiB margin),
    the second, while the first is still on its way, does not."""
    snap = two_hosts(("a", "h0"), ("b", "h2"))
    ex, hv, _, _, _ = make(snap)
    hv.free_mib["h1"] = 4096
    rep = await ex.execute(
        plan([mig("a", "h0", "h1"), mig("b", "h2", "h1")]), snap, policy(max_per_target=2)
    )
    assert [r.vm for r in rep.succeeded] == ["a"]
    assert [(r.vm, r.reason) for r in rep.skipped] == [("b", ReasonCode.CONFIRMED_NO_ROOM)]
    assert hv.where("b") == ["h2"]


async def test_vm_libvirt_runs_elsewhere_or_on_the_target_is_not_moved() -> None:
    snap = two_hosts(("a", "h0"), ("b", "h0"))
    ex, hv, _, metrics, _ = make(snap)
    hv.hosts["h2"]["a"] = hv.hosts["h0"].pop("a")  # telemetry lags: libvirt runs it on h2
    hv.hosts["h1"]["b"] = FakeDomain(running=True)  # and b is already active on the target
    rep = await ex.execute(plan([mig("a", "h0", "h1"), mig("b", "h0", "h1")]), snap, policy())
    assert sorted((r.vm, r.reason) for r in rep.skipped) == [
        ("a", ReasonCode.CONFIRMED_NOT_ON_SOURCE),
        ("b", ReasonCode.CONFIRMED_NOT_ON_SOURCE),
    ]
    assert hv.calls == []
    assert metrics.total("migrations_skipped_total", reason="confirmed_not_on_source") == 2


async def test_unreachable_hypervisor_when_confirming_skips() -> None:
    snap = two_hosts(("a", "h0"))
    ex, hv, _, _, _ = make(snap)

    async def down(host: str) -> Any:
        from rebalancerd.ports import HypervisorError

        raise HypervisorError(f"host {host} unreachable")

    hv.host_facts = down  # type: ignore[method-assign]
    rep = await ex.execute(plan([mig("a", "h0", "h1")]), snap, policy())
    assert [r.reason for r in rep.skipped] == [ReasonCode.HYPERVISOR_UNREACHABLE]
    assert hv.calls == []


# -- the return guard ---------------------------------------------------------------------------


async def test_return_trip_within_the_guard_is_refused_drains_are_exempt() -> None:
    snap = two_hosts(("a", "h0"), ("b", "h0"))
    ex, hv, clock, metrics, _ = make(snap)
    rep = await ex.execute(plan([mig("a", "h0", "h1"), mig("b", "h0", "h1")]), snap, policy())
    assert len(rep.succeeded) == 2
    clock.advance(600)
    back = two_hosts(("a", "h1"), ("b", "h1"))
    rep = await ex.execute(
        plan([mig("a", "h1", "h0"), mig("b", "h1", "h0", ReasonKind.DRAIN)]), back, policy()
    )
    assert [(r.vm, r.reason) for r in rep.skipped] == [("a", ReasonCode.RETURN_TRIP)]
    assert [r.vm for r in rep.succeeded] == ["b"]
    assert hv.where("a") == ["h1"] and hv.where("b") == ["h0"]
    assert metrics.total("migrations_skipped_total", reason="return_trip") == 1
    # the planner is told: a may not go back to h0 (b left h0 too; leaving h1 by a drain
    # does not count)
    assert ex.recent_departures(policy()) == {"a": frozenset({"h0"}), "b": frozenset({"h0"})}
    # a third host is no return trip; after the guard, going back is allowed
    assert ex.recent_departures(policy(return_guard_s=0)) == {}
    clock.advance(3600)
    assert ex.recent_departures(policy()) == {}
    rep = await ex.execute(plan([mig("a", "h1", "h0")]), back, policy())
    assert [r.vm for r in rep.succeeded] == ["a"]


def test_planner_does_not_plan_a_return_trip() -> None:
    """h0 is hot; a came from h1 ten minutes ago: the planner moves the others, not a to h1."""
    hosts = (Host("h0", cores=4, memory_mib=HOST_MIB), Host("h1", cores=4, memory_mib=HOST_MIB))
    vms = tuple(Vm(n, "h0", vcpus=2, memory_mib=1024, cpu_used_mc=1000) for n in "abc")
    snap = ClusterSnapshot(hosts, vms, taken_at=1_767_225_600.0)
    pol = policy(max_per_cycle=1)
    free = make_plan(snap, pol, now=snap.taken_at, time_limit_s=2)
    assert [m.vm for m in free.migrations] == ["a"]  # unguarded, the first pick is a
    guarded = make_plan(
        snap, pol, now=snap.taken_at, time_limit_s=2, departed={"a": frozenset({"h1"})}
    )
    assert guarded.migrations and all(m.vm != "a" for m in guarded.migrations)
    # a drained source is exempt: the guard does not keep a VM on a host in maintenance
    drained = apply_policy(pol, snap, snap.taken_at)
    drained = ClusterSnapshot(
        (Host("h0", cores=4, memory_mib=HOST_MIB, state=HostState.MAINTENANCE), hosts[1]),
        drained.vms,
        taken_at=snap.taken_at,
    )
    p = make_plan(
        drained,
        policy(max_per_cycle=10),
        now=snap.taken_at,
        time_limit_s=2,
        departed={"a": frozenset({"h1"})},
        applied=True,
    )
    assert sorted(m.vm for m in p.migrations) == ["a", "b", "c"]


class FlappingTelemetry:
    """The VMs where the hypervisor really runs them, with the CPU of the host that lies this
    cycle reported at 95 %: h0 on even cycles, h1 on odd ones (the misreporting host)."""

    def __init__(self, hv: FakeHypervisor, clock: VirtualClock) -> None:
        self.hv = hv
        self.clock = clock
        self.calls = 0

    async def run(self) -> None:
        return None

    def current(self) -> ClusterSnapshot:
        hot = "h0" if self.calls % 2 == 0 else "h1"
        self.calls += 1
        hosts = tuple(Host(h, cores=8, memory_mib=HOST_MIB) for h in ("h0", "h1"))
        vms = []
        for h, doms in self.hv.hosts.items():
            n = max(1, len(doms))
            for name in doms:
                cpu = 7600 // n if h == hot else 200
                vms.append(Vm(name, h, vcpus=2, memory_mib=1024, cpu_used_mc=cpu))
        return ClusterSnapshot(hosts, tuple(vms), taken_at=self.clock.now())

    def data_age_s(self) -> float:
        return 0.0

    def host_states(self) -> dict[str, HostState]:
        return {"h0": HostState.ACTIVE, "h1": HostState.ACTIVE}


async def flapping_hour(pol: Policy) -> dict[str, int]:
    clock = VirtualClock()
    hv = FakeHypervisor(clock, duration_s=5.0)
    hv.hosts = {"h0": {f"v{i}": FakeDomain(memory_mib=1024) for i in range(4)}, "h1": {}}
    tel = FlappingTelemetry(hv, clock)
    # the "moves stopped helping" back-off off: the return guard alone must stop the flapping
    ex = Executor(hv, clock, MemoryMetrics(), Journal.open(":memory:"), backoff_strikes=10**6)
    loop = ControlLoop(
        tel, lambda: pol, ex, clock, MemoryMetrics(), interval_s=60, plan_in_thread=False
    )
    start = clock.monotonic()
    while clock.monotonic() - start < 3600:
        await loop.cycle()
        clock.advance(60)
    moves: dict[str, int] = {}
    for vm, _, _ in hv.calls:
        moves[vm] = moves.get(vm, 0) + 1
    return moves


async def test_an_hour_of_a_flapping_host_moves_each_vm_at_most_once() -> None:
    unguarded = await flapping_hour(policy(return_guard_s=0, max_per_cycle=2))
    assert max(unguarded.values()) > 1  # the flapping this guards against (cooldown 0)
    guarded = await flapping_hour(policy(max_per_cycle=2))
    assert guarded and max(guarded.values()) == 1, guarded


def test_a_soft_pin_to_the_host_left_lifts_the_guard() -> None:
    """An operator's move-back (or a policy's preference) is a soft pin: going there is wanted."""
    rules = ClusterRules(pins=(Pin("a", frozenset({"h1"}), hard=False, weight=5.0),))
    left = {"a": frozenset({"h1", "h2"}), "b": frozenset({"h1"})}
    assert guarded_departures(left, rules) == {"a": frozenset({"h2"}), "b": frozenset({"h1"})}
    hard = ClusterRules(pins=(Pin("a", frozenset({"h1"})),))
    assert guarded_departures(left, hard) == left
