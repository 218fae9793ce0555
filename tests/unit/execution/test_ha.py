"""Dead hosts through the executor (execution/ha.py): classification, fencing through a power
driver, HA restarts elsewhere exactly once, journal steps, resume after a crash, dry-run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.domain.ha import Liveness, classify, place_restarts
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.combine import combine
from rebalancerd.policy.ha import ha_priority
from rebalancerd.policy.schema import Policy
from rebalancerd.ports import HypervisorError, PowerError, PowerState
from tests.unit.execution.fakes import FakeDomain, FakeHypervisor


class Crash(BaseException):
    """The daemon dies here (SIGKILL): nothing after it runs."""


@dataclass
class StartingHypervisor(FakeHypervisor):
    """FakeHypervisor + ports.DomainStarter."""

    started: list[tuple[str, str]] = field(default_factory=list)
    crash_after_start: bool = False
    fail_start: bool = False

    async def domain_xml(self, host: str, vm: str) -> str:
        doms = self._check(host)
        if vm not in doms:
            raise HypervisorError(f"{vm} not on {host}")
        return f"<domain><name>{vm}</name></domain>"

    async def start_domain(self, host: str, xml: str) -> None:
        self._check(host)
        if self.fail_start:
            raise HypervisorError(f"start on {host} failed: boom")
        vm = xml.split("<name>")[1].split("</name>")[0]
        self.started.append((vm, host))
        self.hosts[host][vm] = FakeDomain(memory_mib=1024)
        if self.crash_after_start:
            raise Crash


@dataclass
class FakePower:
    """A BMC per host: hard off kills the host's guests and libvirtd (unreachable)."""

    hv: StartingHypervisor
    state: dict[str, PowerState] = field(default_factory=dict)
    broken: bool = False
    stays_on: bool = False
    offs: list[tuple[str, bool]] = field(default_factory=list)

    async def power_state(self, host: str) -> PowerState:
        if self.broken:
            raise PowerError(f"{host}: BMC timeout")
        return self.state.get(host, PowerState.ON)

    async def power_on(self, host: str) -> None:
        self.state[host] = PowerState.ON

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        self.offs.append((host, hard))
        if self.broken:
            raise PowerError(f"{host}: BMC timeout")
        if self.stays_on:
            return
        self.state[host] = PowerState.OFF
        self.hv.hosts[host] = {}
        self.hv.unreachable.add(host)


HA_POLICY = {
    "apiVersion": "rebalancerd/v1",
    "kind": "Policy",
    "ha": {
        "groups": [
            {"name": "db", "vms": ["db-*"], "priority": 10},
            {"name": "web", "vm_tags": ["web"], "priority": 5},
        ],
        "dead_after_probes": 3,
    },
}


def ha_policy(**extra: object) -> Policy:
    return Policy.model_validate({**HA_POLICY, **extra})


def snapshot(stale: frozenset[str] = frozenset(), h0_mib: int = 16384) -> ClusterSnapshot:
    hosts = tuple(
        Host(
            f"h{i}",
            cores=8,
            memory_mib=h0_mib if i else 16384,
            state=HostState.STALE if f"h{i}" in stale else HostState.ACTIVE,
        )
        for i in range(3)
    )
    vms = [
        Vm("db-1", "h0", vcpus=1, memory_mib=1024, cpu_used_mc=100),
        Vm("app-1", "h0", vcpus=1, memory_mib=1024, cpu_used_mc=100, tags=frozenset({"web"})),
        Vm("batch-1", "h0", vcpus=1, memory_mib=1024, cpu_used_mc=100),
        Vm("disk-1", "h0", vcpus=1, memory_mib=1024, local_disk_mib=4096, tags=frozenset({"web"})),
        Vm("other", "h1", vcpus=1, memory_mib=1024, cpu_used_mc=100),
    ]
    return ClusterSnapshot(hosts, tuple(v for v in vms if v.host not in stale))


@dataclass
class Rig:
    ex: Executor
    hv: StartingHypervisor
    power: FakePower
    clock: VirtualClock
    metrics: MemoryMetrics
    journal: Journal
    states: dict[str, HostState]

    async def cycle(self, policy: Policy, snap: ClusterSnapshot | None = None) -> None:
        stale = frozenset(h for h, s in self.states.items() if s is HostState.STALE)
        await self.ex.recover_dead_hosts(snap or snapshot(stale), policy)
        self.clock.advance(5.0)

    def kill_h0(self) -> None:
        """libvirtd and the agent of h0 die; its guests may or may not run on."""
        self.states["h0"] = HostState.STALE
        self.hv.unreachable.add("h0")

    def steps(self) -> list[tuple[str, str | None, str | None]]:
        return [(s.step, s.vm, s.target) for s in self.journal.ha_steps()]

    def report(self) -> dict[str, object]:
        return self.ex.ha.report()[0]


def rig(
    journal: Journal | None = None,
    *,
    with_power: bool = True,
    dry_run: bool = False,
    hv: StartingHypervisor | None = None,
) -> Rig:
    clock = VirtualClock()
    if hv is None:
        hv = StartingHypervisor.for_snapshot(clock, snapshot())  # type: ignore[assignment]
    assert hv is not None
    power = FakePower(hv)
    metrics = MemoryMetrics()
    journal = journal or Journal.open(":memory:")
    states = {f"h{i}": HostState.ACTIVE for i in range(3)}
    ex = Executor(
        hv,
        clock,
        metrics,
        journal,
        dry_run=dry_run,
        host_states=lambda: states,
        adaptive=AdaptiveConcurrency(slow_start=False),
        power={h: power for h in states} if with_power else {},
        agent_status=lambda h: "offline",
    )
    return Rig(ex, hv, power, clock, metrics, journal, states)


async def dead(r: Rig, policy: Policy, cycles: int = 3) -> None:
    await r.cycle(policy)  # all fresh: definitions remembered
    r.kill_h0()
    for _ in range(cycles):
        await r.cycle(policy)


# ---------------------------------------------------------------------------------------------


async def test_dead_host_is_fenced_then_ha_vms_restart_once_in_priority_order() -> None:
    r = rig()
    pol = ha_policy()
    await r.cycle(pol)
    r.kill_h0()
    await r.cycle(pol)
    await r.cycle(pol)
    assert r.report()["state"] == "stale"  # 2 of 3 probes: not dead yet
    assert r.power.offs == [] and r.hv.started == []
    await r.cycle(pol)
    rep = r.report()
    assert rep["state"] == "dead" and rep["fence"] == "confirmed"
    assert "agent offline (last will)" in str(rep["reason"])
    assert r.power.offs == [("h0", True)]
    assert [vm for vm, _ in r.hv.started] == ["db-1", "app-1"]  # priority 10, then 5
    assert all(t in ("h1", "h2") for _, t in r.hv.started)
    assert r.steps() == [
        ("fence_requested", None, None),
        ("fence_confirmed", None, None),
        ("restart_started", "db-1", r.hv.started[0][1]),
        ("restart_running", "db-1", r.hv.started[0][1]),
        ("restart_started", "app-1", r.hv.started[1][1]),
        ("restart_running", "app-1", r.hv.started[1][1]),
    ]
    states = {v["vm"]: (v["state"], v["reason"]) for v in rep["vms"]}  # type: ignore[attr-defined]
    assert states["batch-1"][0] == "not_ha"
    assert states["disk-1"][0] == "local_disk"
    assert rep["affected_vms"] == ["app-1", "batch-1", "db-1", "disk-1"]
    assert r.metrics.gauges[("host_dead", (("host", "h0"),))] == 1.0
    assert r.metrics.gauges[("dead_host_vms", (("host", "h0"),))] == 4.0
    assert r.metrics.gauges[("ha_vms_pending", (("host", "h0"),))] == 0.0
    for _ in range(3):  # later cycles start nothing again
        await r.cycle(pol)
    assert len(r.hv.started) == 2 and len(r.power.offs) == 1
    # the host comes back: the incident is closed
    r.states["h0"] = HostState.ACTIVE
    await r.cycle(pol)
    assert r.ex.ha.report() == [] and r.steps()[-1][0] == "host_back"
    assert r.metrics.gauges[("host_dead", (("host", "h0"),))] == 0.0


async def test_stale_host_whose_libvirtd_answers_is_not_dead() -> None:
    r = rig()
    pol = ha_policy()
    await r.cycle(pol)
    r.states["h0"] = HostState.STALE  # agent gone, libvirtd fine
    for _ in range(5):
        await r.cycle(pol)
    assert r.report()["state"] == "stale"
    assert "libvirtd unreachable 0/3" in str(r.report()["reason"])
    assert r.power.offs == [] and r.hv.started == [] and r.steps() == []


@pytest.mark.parametrize("how", ["broken", "stays_on"])
async def test_fencing_that_cannot_be_confirmed_restarts_nothing(how: str) -> None:
    r = rig()
    setattr(r.power, how, True)
    pol = ha_policy()
    await dead(r, pol, cycles=5)
    rep = r.report()
    assert rep["state"] == "dead" and rep["fence"] == "failed"
    assert r.hv.started == []
    assert all(s[0] in ("fence_requested", "fence_failed") for s in r.steps())
    db = next(v for v in rep["vms"] if v["vm"] == "db-1")  # type: ignore[attr-defined]
    assert db["state"] == "blocked" and db["reason"].startswith("not fenced")
    assert r.metrics.total("fence_actions_total") >= 1
    assert r.metrics.gauges[("ha_vms_pending", (("host", "h0"),))] == 2.0


async def test_without_a_power_driver_dead_hosts_are_reported_only() -> None:
    r = rig(with_power=False)
    await dead(r, ha_policy())
    rep = r.report()
    assert rep["state"] == "dead" and rep["fence"] == "unavailable"
    assert "no power driver" in str(rep["reason"])
    assert r.hv.started == [] and r.steps() == []


async def test_dry_run_and_advisory_never_fence_nor_start() -> None:
    for r, pol in ((rig(dry_run=True), ha_policy()), (rig(), ha_policy(mode="advisory"))):
        await dead(r, pol)
        assert r.report()["state"] == "dead"
        assert r.power.offs == [] and r.hv.started == [] and r.steps() == []


async def test_no_ha_groups_no_fencing() -> None:
    r = rig()
    await dead(r, Policy.model_validate({"apiVersion": "rebalancerd/v1", "kind": "Policy"}))
    assert r.report()["state"] == "dead"
    assert r.power.offs == [] and r.hv.started == []


async def test_vm_already_running_elsewhere_is_not_started_again() -> None:
    r = rig()
    pol = ha_policy()
    await r.cycle(pol)
    r.hv.hosts["h2"]["db-1"] = FakeDomain()  # someone started it on h2 already
    r.kill_h0()
    for _ in range(3):
        await r.cycle(pol)
    assert [vm for vm, _ in r.hv.started] == ["app-1"]
    assert ("restart_running", "db-1", "h2") in r.steps()


async def test_a_live_host_that_does_not_answer_blocks_every_restart() -> None:
    r = rig()
    pol = ha_policy()
    await r.cycle(pol)
    r.kill_h0()
    await r.cycle(pol)
    await r.cycle(pol)
    r.hv.unreachable.add("h2")  # telemetry still calls h2 active
    await r.cycle(pol)
    assert r.report()["fence"] == "confirmed" and r.hv.started == []
    r.hv.unreachable.discard("h2")
    await r.cycle(pol)
    assert len(r.hv.started) == 2


async def test_no_room_is_reported_with_reason() -> None:
    clock = VirtualClock()
    hv = StartingHypervisor.for_snapshot(clock, snapshot())
    r = rig(hv=hv)  # type: ignore[arg-type]
    pol = ha_policy()
    await r.cycle(pol)
    r.kill_h0()
    tiny = snapshot(frozenset({"h0"}), h0_mib=1536)  # h1, h2: room for one 1 GiB VM each
    for _ in range(3):
        await r.cycle(pol, tiny)
    # h1 already holds "other": only h2 has room, for the higher priority VM
    assert r.hv.started == [("db-1", "h2")]
    app = next(v for v in r.report()["vms"] if v["vm"] == "app-1")  # type: ignore[attr-defined]
    assert app["state"] == "blocked" and app["reason"] == "no host has room"


@pytest.mark.parametrize("started", [True, False])
async def test_crash_mid_restart_resumes_from_the_journal_and_never_starts_twice(
    tmp_path: Path, started: bool
) -> None:
    """SIGKILL right after `restart_started` was journaled: with the guest started (crash after
    libvirt created it) or not (crash before). The next daemon looks on every live host first."""
    j1 = Journal.open(tmp_path)
    r1 = rig(j1)
    pol = ha_policy()
    await r1.cycle(pol)
    r1.kill_h0()
    await r1.cycle(pol)
    await r1.cycle(pol)
    if started:
        r1.hv.crash_after_start = True
    else:
        r1.hv.fail_start = True  # stands for "killed before libvirt was asked"
        orig = j1.record_ha_step

        def crash_on_failure(*a: object, **kw: object) -> None:
            if a[2] == "restart_failed":
                raise Crash
            orig(*a, **kw)  # type: ignore[arg-type]

        j1.record_ha_step = crash_on_failure  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await r1.cycle(pol)
    assert [s.step for s in j1.ha_steps()][-1] == "restart_started"
    j1.close()

    # the restarted daemon: new executor, same journal file, same hosts
    j2 = Journal.open(tmp_path)
    hv = r1.hv
    hv.crash_after_start = hv.fail_start = False
    before = list(hv.started)
    r2 = rig(j2, hv=hv)
    r2.power.state["h0"] = PowerState.OFF
    r2.states["h0"] = HostState.STALE
    for _ in range(4):  # dead again after 3 probes; the incident is the journal's
        await r2.cycle(pol)
    runs = [vm for vm, _ in hv.started]
    assert runs.count("db-1") == 1 and runs.count("app-1") == 1
    assert len(hv.started) - len(before) == (1 if started else 2)
    incidents = {s.incident for s in j2.ha_steps()}
    assert len(incidents) == 1
    steps = [(s.step, s.vm) for s in j2.ha_steps()]
    assert steps.count(("restart_running", "db-1")) == 1
    assert r2.power.offs == []  # confirmed before the crash, still OFF: not fenced again
    where = {vm: hv.where(vm) for vm in ("db-1", "app-1")}
    assert all(len(w) == 1 for w in where.values()), where


# ---------------------------------------------------------------------------------------------
# the pure parts


def test_classify_needs_n_consecutive_failed_probes() -> None:
    v = classify("h", agent="silent", failed_probes=2, dead_after=3, power="on")
    assert v.liveness is Liveness.STALE and "2/3" in v.reason and "power on" in v.reason
    v = classify("h", agent="offline", failed_probes=3, dead_after=3, power=None)
    assert v.liveness is Liveness.DEAD and "no power driver" in v.reason


def test_ha_priority_and_combined_groups() -> None:
    pol = ha_policy()
    assert ha_priority(pol, Vm("db-9", "h", 1, 1)) == 10
    assert ha_priority(pol, Vm("x", "h", 1, 1, tags=frozenset({"web"}))) == 5
    assert ha_priority(pol, Vm("x", "h", 1, 1)) is None
    other = Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "name": "b",
            "ha": {"groups": [{"name": "all-db", "vms": ["db-*"], "priority": 50}]},
        }
    )
    both = combine([pol, other])
    assert ha_priority(both, Vm("db-9", "h", 1, 1)) == 50
    assert len(both.ha.groups) == 3


def test_place_restarts_respects_capacity_pins_and_anti_affinity() -> None:
    from rebalancerd.domain.model import AffinityGroup, ClusterRules, Pin

    hosts = (Host("a", cores=4, memory_mib=4096), Host("b", cores=4, memory_mib=4096))
    rules = ClusterRules(
        groups=(AffinityGroup("g", frozenset({"r1", "r2"}), anti=True),),
        pins=(Pin("p", frozenset({"b"})),),
    )
    snap = ClusterSnapshot(hosts, (Vm("r1", "a", 1, 1024),), rules)
    out = place_restarts(
        snap,
        [Vm("r2", "dead", 1, 1024), Vm("p", "dead", 1, 1024), Vm("big", "dead", 1, 4000)],
        headroom=0.0,
    )
    assert [(c.vm, c.target) for c in out[:2]] == [("r2", "b"), ("p", "b")]
    assert out[2].target is None and out[2].reason == "no host has room"
