"""Host power on real parts: an ipmi_sim BMC per lab host (lanplus on 127.0.0.1) whose chassis
power commands stop and start that host's libvirtd (`lab.py kill-libvirtd` /
`restart-libvirtd`), the IPMI driver built from an inventory `power:` mapping as the daemon
builds it, the libvirt adapter over the lab, and the executor migrating onto the woken host.

The agent's freshness is the one injected input here (no agent runs in the lab): the power
module is told the host's agent reports again once libvirtd is back.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rebalancerd.adapters.clock import SystemClock
from rebalancerd.adapters.libvirt import LibvirtHypervisor
from rebalancerd.adapters.power_config import driver_for, parse_power_spec
from rebalancerd.domain.checks import ReasonCode
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.domain.plan import Migration, MigrationPlan, PlanStep, Reason, ReasonKind
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.execution.power import PowerManager
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Policy
from tests.fixtures.ipmi import Bmc, require_ipmi
from tests.fixtures.lab import LAB_SCRIPT, Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]
GUEST_MIB = 64


def lab_cmd(lab: Lab, what: str, host: str) -> list[str]:
    return [sys.executable, str(LAB_SCRIPT), what, "--dir", str(lab.dir), "--host", host]


@pytest.fixture
def bmc(lab: Lab, tmp_path: Path) -> Iterator[Bmc]:
    require_ipmi()
    b = Bmc(
        tmp_path / "bmc-h3",
        on=lab_cmd(lab, "restart-libvirtd", lab.hosts[2].name),
        off=lab_cmd(lab, "kill-libvirtd", lab.hosts[2].name),
    ).start()
    yield b
    b.stop()


@pytest.fixture
async def hv(lab: Lab) -> AsyncIterator[LibvirtHypervisor]:
    h = LibvirtHypervisor(lab.inventory(), poll_interval_s=0.1)
    yield h
    await h.close()


def policy(**energy: Any) -> Policy:
    e = {"switch_off": True, "max_power_actions_per_hour": 10, "wake_timeout_s": 60.0, **energy}
    return Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "mode": "consolidate",
            "limits": {"cooldown_s": 0.0},
            "energy": e,
        }
    )


def snapshot(lab: Lab, vms: dict[str, str], cpu_mc: int) -> ClusterSnapshot:
    hosts = tuple(Host(h.name, cores=4, memory_mib=8192) for h in lab.hosts)
    guests = tuple(
        Vm(n, h, vcpus=1, memory_mib=GUEST_MIB, cpu_used_mc=cpu_mc) for n, h in vms.items()
    )
    return ClusterSnapshot(hosts, guests, taken_at=time.time())


async def wait_for(cond: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def test_power_off_through_the_bmc_wake_verify_then_migrate_onto_it(
    lab: Lab, bmc: Bmc, hv: LibvirtHypervisor
) -> None:
    h1, h2, h3 = (h.name for h in lab.hosts)
    lab.define_guest(h1, "p1", GUEST_MIB)
    lab.define_guest(h2, "p2", GUEST_MIB)
    clock = SystemClock()
    metrics = MemoryMetrics()
    journal = Journal.open(":memory:")
    agents = {h1: HostState.ACTIVE, h2: HostState.ACTIVE, h3: HostState.ACTIVE}
    ipmi = driver_for(h3, parse_power_spec(h3, bmc.spec()))
    pm = PowerManager({h3: ipmi}, hv, clock, metrics, journal, agent_states=lambda: agents)
    quiet = snapshot(lab, {"p1": h1, "p2": h2}, cpu_mc=500)

    # a guest libvirt runs on h3 that the model does not know: never switched off
    lab.define_guest(h3, "stray", GUEST_MIB)
    r = await pm.cycle(pm.apply(quiet), policy())
    assert (h3, "off", "vm_on_host") in r.skipped and bmc.actions() == []
    lab.remove_all_guests()
    lab.define_guest(h1, "p1", GUEST_MIB)
    lab.define_guest(h2, "p2", GUEST_MIB)

    r = await pm.cycle(pm.apply(quiet), policy())
    assert r.switched_off == [h3] and bmc.actions() == ["shutdown 1"]
    await wait_for(lambda: not lab.libvirtd_running(h3))
    agents[h3] = HostState.STALE
    assert pm.apply(quiet).host(h3).state is HostState.STANDBY
    assert metrics.total("power_actions_total", driver="ipmi", action="off", result="ok") == 1

    # demand rises beyond two hosts: h3 is switched on through the BMC, WAKING meanwhile
    # (p3 exists in the model only: its demand is what counts here)
    busy = snapshot(lab, {"p1": h1, "p2": h2, "p3": h1}, cpu_mc=2500)
    r = await pm.cycle(pm.apply(busy), policy())
    assert r.woken == [h3] and bmc.actions()[-1] == "power 1"
    assert pm.apply(busy).host(h3).state is HostState.WAKING
    await wait_for(lambda: lab.libvirtd_running(h3))
    r = await pm.cycle(pm.apply(busy), policy())
    assert r.verified == []  # libvirtd back, agent not yet fresh
    agents[h3] = HostState.ACTIVE
    r = await pm.cycle(pm.apply(busy), policy())
    assert r.verified == [h3] and pm.overlay() == {}

    # back and verified: it receives a VM
    ex = Executor(
        hv, clock, metrics, Journal.open(":memory:"), host_states=lambda: {**agents, **pm.overlay()}
    )
    move = Migration("p2", h2, h3, Reason(ReasonKind.ENERGY, "lab"), memory_mib=GUEST_MIB)
    rep = await ex.execute(MigrationPlan(steps=(PlanStep((move,)),)), busy, policy())
    assert [m.vm for m in rep.succeeded] == ["p2"], rep
    assert lab.running_on("p2") == [h3]


async def test_a_host_that_never_comes_back_is_failed_wake_and_receives_nothing(
    lab: Lab, hv: LibvirtHypervisor, tmp_path: Path
) -> None:
    require_ipmi()
    h1, h2, h3 = (h.name for h in lab.hosts)
    # this BMC switches h3 off, but switching it on does not bring libvirtd back
    bmc = Bmc(tmp_path / "bmc", on=("true",), off=lab_cmd(lab, "kill-libvirtd", h3)).start()
    try:
        lab.define_guest(h1, "p1", GUEST_MIB)
        clock = SystemClock()
        metrics = MemoryMetrics()
        agents = {h1: HostState.ACTIVE, h2: HostState.ACTIVE, h3: HostState.ACTIVE}
        ipmi = driver_for(h3, parse_power_spec(h3, bmc.spec()))
        pm = PowerManager(
            {h3: ipmi}, hv, clock, metrics, Journal.open(":memory:"), agent_states=lambda: agents
        )
        quiet = snapshot(lab, {"p1": h1}, cpu_mc=500)
        pol = policy(min_active_hosts=2, wake_timeout_s=10.0)
        r = await pm.cycle(pm.apply(quiet), pol)
        assert r.switched_off == [h3]
        await wait_for(lambda: not lab.libvirtd_running(h3))
        agents[h3] = HostState.STALE
        busy = snapshot(lab, {"p1": h1}, cpu_mc=7000)
        r = await pm.cycle(pm.apply(busy), pol)
        assert r.woken == [h3]
        await asyncio.sleep(11)
        r = await pm.cycle(pm.apply(busy), pol)
        assert r.failed_wake == [h3]
        assert metrics.total("power_wake_failed_total", host=h3) == 1
        eff = pm.apply(busy)
        assert eff.host(h3).state is HostState.FAILED_WAKE
        ex = Executor(
            hv,
            clock,
            metrics,
            Journal.open(":memory:"),
            host_states=lambda: {**agents, **pm.overlay()},
        )
        move = Migration("p1", h1, h3, Reason(ReasonKind.ENERGY, "lab"), memory_mib=GUEST_MIB)
        rep = await ex.execute(MigrationPlan(steps=(PlanStep((move,)),)), eff, pol)
        assert rep.succeeded == []
        assert [s.reason for s in rep.skipped] == [ReasonCode.TARGET_FAILED_WAKE.value]
        assert lab.guests(h1)["p1"]["running"]
    finally:
        bmc.stop()
        if not lab.libvirtd_running(h3):
            lab.restart_libvirtd(h3)
