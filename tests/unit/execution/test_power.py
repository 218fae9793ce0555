"""The executor's power module with an in-process driver (the consumer side; the real drivers
are tested in tests/power and the lab test): safety rules, gates, journal, states, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.domain.checks import TARGET_STATE_REASON, ReasonCode
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.execution.journal import Journal
from rebalancerd.execution.power import PowerManager
from rebalancerd.execution.power_plan import Demand, decide, forecast
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.ports import PowerError, PowerState
from tests.unit.execution.fakes import FakeDomain, FakeHypervisor


class FakePower:
    driver = "ipmi"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.state: dict[str, PowerState] = {}
        self.fail: set[str] = set()

    async def power_state(self, host: str) -> PowerState:
        if "state" in self.fail:
            raise PowerError(f"ipmi {host}: no answer within 20s")
        return self.state.get(host, PowerState.ON)

    async def power_on(self, host: str) -> None:
        self.calls.append(("on", host))
        if "on" in self.fail:
            raise PowerError(f"ipmi {host}: credentials refused")
        self.state[host] = PowerState.ON

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        self.calls.append(("off", host))
        if "off" in self.fail:
            raise PowerError(f"ipmi {host}: credentials refused")
        self.state[host] = PowerState.OFF


def policy(**energy: Any) -> Policy:
    e = {"switch_off": True, "min_active_hosts": 1, "max_power_actions_per_hour": 10}
    e.update(energy)
    return Policy.model_validate(
        {"apiVersion": "rebalancerd/v1", "kind": "Policy", "mode": "consolidate", "energy": e}
    )


def cluster(cpu_used: int = 1000) -> ClusterSnapshot:
    hosts = tuple(Host(f"h{i}", cores=8, memory_mib=32768) for i in (1, 2, 3))
    vms = (
        Vm("a", "h1", vcpus=2, memory_mib=4096, cpu_used_mc=cpu_used),
        Vm("b", "h2", vcpus=2, memory_mib=4096, cpu_used_mc=cpu_used),
    )
    return ClusterSnapshot(hosts, vms)


class World:
    def __init__(self, snap: ClusterSnapshot, **kw: Any) -> None:
        self.clock = VirtualClock()
        self.hv = FakeHypervisor.for_snapshot(self.clock, snap)
        self.metrics = MemoryMetrics()
        self.journal = Journal.open(":memory:")
        self.power = FakePower()
        self.agents: dict[str, HostState] = {h.name: HostState.ACTIVE for h in snap.hosts}
        self.pm = self.manager(**kw)

    def manager(self, **kw: Any) -> PowerManager:
        return PowerManager(
            {"h1": self.power, "h2": self.power, "h3": self.power},
            self.hv,
            self.clock,
            self.metrics,
            self.journal,
            agent_states=lambda: self.agents,
            **kw,
        )

    def cycle(self, snap: ClusterSnapshot, pol: Policy) -> Any:
        return asyncio.run(self.pm.cycle(self.pm.apply(snap), pol))


def test_an_empty_host_is_switched_off_journaled_and_standby() -> None:
    snap = cluster()
    w = World(snap)
    r = w.cycle(snap, policy())
    assert r.switched_off == ["h3"] and w.power.calls == [("off", "h3")]
    assert w.pm.overlay() == {"h3": HostState.STANDBY}
    assert w.journal.power_hosts()["h3"][0] == "standby"
    [row] = w.journal.power_actions()
    assert (row["host"], row["action"], row["state"], row["driver"]) == (
        "h3",
        "off",
        "sent",
        "ipmi",
    )
    assert w.metrics.total("power_actions_total", driver="ipmi", action="off", result="ok") == 1
    assert w.metrics.gauge("host_power_state", host="h3", state="standby") == 1.0
    assert TARGET_STATE_REASON[HostState.STANDBY] is ReasonCode.TARGET_STANDBY
    # a restarted daemon knows which host it switched off
    assert w.manager().overlay() == {"h3": HostState.STANDBY}


def test_never_off_when_libvirt_runs_a_guest_the_model_does_not_know() -> None:
    snap = cluster()
    w = World(snap)
    w.hv.hosts["h3"]["stray"] = FakeDomain()
    r = w.cycle(snap, policy())
    assert r.switched_off == [] and w.power.calls == []
    assert ("h3", "off", "vm_on_host") in r.skipped
    assert w.pm.overlay() == {}
    assert w.metrics.total("power_actions_skipped_total", reason="vm_on_host") == 1


def test_unreachable_libvirtd_busy_host_dry_run_advisory_and_limit_refuse() -> None:
    snap = cluster()
    w = World(snap)
    w.hv.unreachable.add("h3")
    assert ("h3", "off", "hypervisor_unreachable") in w.cycle(snap, policy()).skipped
    w = World(snap, busy_hosts=lambda: {"h3"})
    assert w.cycle(snap, policy()).switched_off == []
    w = World(snap, dry_run=True)
    assert ("h3", "off", "dry_run") in w.cycle(snap, policy()).skipped
    pol = policy().model_copy(update={"dry_run": True})
    w = World(snap)
    assert ("h3", "off", "dry_run") in w.cycle(snap, pol).skipped
    assert w.power.calls == [] and w.journal.power_actions() == []
    w = World(snap)
    assert ("h3", "off", "limit") in w.cycle(snap, policy(max_power_actions_per_hour=0)).skipped
    assert w.power.calls == []


def test_spare_hosts_and_min_active_keep_hosts_on() -> None:
    snap = cluster()
    assert World(snap).cycle(snap, policy(spare_hosts=1)).switched_off == ["h3"]
    assert World(snap).cycle(snap, policy(spare_hosts=2)).switched_off == []
    assert World(snap).cycle(snap, policy(min_active_hosts=3)).switched_off == []
    # capacity: two busy hosts' demand does not fit on two hosts with 10 % margin
    busy = cluster(cpu_used=7000)
    assert World(busy).cycle(busy, policy()).switched_off == []


def test_a_failed_power_off_leaves_the_host_active_with_a_metric() -> None:
    snap = cluster()
    w = World(snap)
    w.power.fail.add("off")
    r = w.cycle(snap, policy())
    assert r.switched_off == [] and r.errors and "\n" not in r.errors[0]
    assert w.pm.overlay() == {}
    assert w.metrics.total("power_actions_total", action="off", result="error") == 1
    assert w.metrics.total("power_errors_total", driver="ipmi", call="off") == 1


def test_demand_wakes_a_standby_host_which_receives_nothing_until_verified() -> None:
    snap = cluster()
    w = World(snap)
    w.cycle(snap, policy())
    w.hv.unreachable.add("h3")  # switched off: libvirtd gone
    w.agents["h3"] = HostState.STALE
    hot = cluster(cpu_used=7500)
    r = w.cycle(hot, policy())
    assert r.woken == ["h3"] and w.power.calls[-1] == ("on", "h3")
    assert w.pm.apply(hot).host("h3").state is HostState.WAKING
    assert not HostState.WAKING.may_receive
    assert TARGET_STATE_REASON[HostState.WAKING] is ReasonCode.TARGET_WAKING
    # BMC on, but libvirtd not yet: still waking
    w.clock.advance(60)
    assert w.cycle(hot, policy()).verified == []
    w.hv.unreachable.discard("h3")
    w.clock.advance(60)
    assert w.cycle(hot, policy()).verified == []  # agent not fresh yet
    w.agents["h3"] = HostState.ACTIVE
    w.clock.advance(60)
    assert w.cycle(hot, policy()).verified == ["h3"]
    assert w.pm.overlay() == {} and w.journal.power_hosts() == {}
    assert w.metrics.observations[("power_wake_seconds", ())] == [180.0]


def test_a_host_that_never_comes_back_ends_failed_wake() -> None:
    snap = cluster()
    w = World(snap)
    w.cycle(snap, policy())
    w.hv.unreachable.add("h3")
    w.agents["h3"] = HostState.STALE
    hot = cluster(cpu_used=7500)
    w.cycle(hot, policy(wake_timeout_s=300))
    w.clock.advance(301)
    r = w.cycle(hot, policy(wake_timeout_s=300))
    assert r.failed_wake == ["h3"]
    assert w.pm.apply(hot).host("h3").state is HostState.FAILED_WAKE
    assert TARGET_STATE_REASON[HostState.FAILED_WAKE] is ReasonCode.TARGET_FAILED_WAKE
    assert w.metrics.total("power_wake_failed_total", host="h3") == 1
    assert w.metrics.gauge("host_power_state", host="h3", state="failed_wake") == 1.0


def test_balance_mode_wakes_standby_hosts() -> None:
    snap = cluster()
    w = World(snap)
    w.cycle(snap, policy())
    bal = policy().model_copy(update={"mode": Mode.BALANCE})
    assert w.cycle(snap, bal).woken == ["h3"]


def test_trend_wakes_ahead_of_demand() -> None:
    assert forecast([(0, 1000), (300, 2000), (600, 3000)], 300) == 4000
    assert forecast([(0, 3000), (300, 2000)], 300) == 2000
    hosts = (
        Host("h1", cores=8, memory_mib=32768),
        Host("h2", cores=8, memory_mib=32768, state=HostState.STANDBY),
    )
    snap = ClusterSnapshot(hosts, (Vm("a", "h1", vcpus=8, memory_mib=4096, cpu_used_mc=6000),))
    now = decide(snap, policy(), Demand(6000, 4096, 6000), switchable={"h1", "h2"})
    assert now.wake == ()
    ahead = decide(snap, policy(), Demand(6000, 4096, 7500), switchable={"h1", "h2"})
    assert ahead.wake == ("h2",)


def test_old_policy_hooks_drive_hosts_without_a_driver() -> None:
    snap = cluster()
    w = World(snap)
    made: list[tuple[list[str], list[str]]] = []

    def hook(on: list[str], off: list[str]) -> FakePower:
        made.append((on, off))
        return w.power

    pm = PowerManager({}, w.hv, w.clock, w.metrics, w.journal, hook_driver=hook)
    pol = Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "mode": "consolidate",
            "energy": {"power_off": ["/bin/off", "{host}"], "power_on": ["/bin/on", "{host}"]},
        }
    )
    assert pol.energy.switching
    r = asyncio.run(pm.cycle(snap, pol))
    assert r.switched_off == ["h3"]
    assert made == [(["/bin/on", "{host}"], ["/bin/off", "{host}"])]
