"""The executor trusts libvirt, not telemetry, on real libvirtd/QEMU hosts (the libvirt lab):

- a snapshot that calls the target empty while libvirt there runs guests filling its inventory
  capacity: the move is refused (confirmed_no_room) and the VM keeps running on its source,
  exactly once, while a move to a host that really has room goes ahead;
- a post-check that finds the target's libvirtd dead: the move is listed as unresolved with the
  reason, verified again on a timer, and resolved as soon as libvirtd answers again, without
  migrating a second time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rebalancerd.adapters.clock import SystemClock
from rebalancerd.adapters.libvirt import LibvirtHypervisor
from rebalancerd.adapters.libvirt_events import HypervisorEvent
from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.domain.plan import Migration, MigrationPlan, PlanStep, Reason, ReasonKind
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Policy
from tests.fixtures.lab import Lab

pytestmark = pytest.mark.lab

GUEST_MIB = 64
HOST_MIB = 256
"""The inventory's memory of each host: 256 MiB - 10 % headroom = 230 MiB for guests."""


def policy() -> Policy:
    return Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "limits": {"cooldown_s": 0.0, "max_concurrent": 2, "max_per_source": 2},
            "migration": {"default": {"max_downtime_ms": 300, "time_budget_s": 60}},
        }
    )


def snapshot(lab: Lab, vms: dict[str, str]) -> ClusterSnapshot:
    """What telemetry says: only `vms` (the guests filling h2 are not reported)."""
    hosts = tuple(Host(h.name, cores=4, memory_mib=HOST_MIB) for h in lab.hosts)
    guests = tuple(Vm(n, h, vcpus=1, memory_mib=GUEST_MIB, cpu_used_mc=100) for n, h in vms.items())
    return ClusterSnapshot(hosts, guests, taken_at=time.time())


def plan(*moves: tuple[str, str, str]) -> MigrationPlan:
    return MigrationPlan(
        steps=(
            PlanStep(
                tuple(
                    Migration(vm, s, t, Reason(ReasonKind.BALANCE, "lab"), memory_mib=GUEST_MIB)
                    for vm, s, t in moves
                )
            ),
        )
    )


@pytest.fixture
async def hv(lab: Lab) -> AsyncIterator[tuple[LibvirtHypervisor, list[HypervisorEvent]]]:
    events: list[HypervisorEvent] = []
    h = LibvirtHypervisor(lab.inventory(), poll_interval_s=0.1, listeners=[events.append])
    yield h, events
    await h.close()


def executor(hv: LibvirtHypervisor, metrics: MemoryMetrics, journal: Journal) -> Executor:
    return Executor(
        hv, SystemClock(), metrics, journal, adaptive=AdaptiveConcurrency(slow_start=False)
    )


async def test_target_full_by_libvirts_count_is_refused_while_telemetry_calls_it_empty(
    lab: Lab, hv: tuple[LibvirtHypervisor, list[HypervisorEvent]]
) -> None:
    adapter, events = hv
    lab.define_guest("h1", "cf1", GUEST_MIB)
    lab.define_guest("h1", "cf2", GUEST_MIB)
    for i in range(3):  # 192 MiB on h2 that telemetry does not report: 192 + 64 > 230
        lab.define_guest("h2", f"cfill{i}", GUEST_MIB)
    facts = await adapter.host_facts("h2")
    assert facts.domain_memory_mib == {f"cfill{i}": GUEST_MIB for i in range(3)}
    assert facts.running == {f"cfill{i}" for i in range(3)}
    assert facts.free_memory_mib is not None and facts.free_memory_mib > 0

    metrics, journal = MemoryMetrics(), Journal.open(":memory:")
    ex = executor(adapter, metrics, journal)
    snap = snapshot(lab, {"cf1": "h1", "cf2": "h1"})
    report = await asyncio.wait_for(
        ex.execute(plan(("cf1", "h1", "h2"), ("cf2", "h1", "h3")), snap, policy()), 120
    )
    assert [(r.vm, r.reason) for r in report.skipped] == [("cf1", "confirmed_no_room")]
    assert metrics.total("migrations_skipped_total", reason="confirmed_no_room") == 1
    assert lab.running_on("cf1") == ["h1"] and "cf1" not in lab.guests("h2")
    started = [e.vm for e in events if e.kind == "migration-started"]
    assert started == ["cf2"]  # nothing was attempted towards the full host
    # a host with room by libvirt's own count still receives
    assert [r.vm for r in report.succeeded] == ["cf2"] and lab.running_on("cf2") == ["h3"]
    assert [e.vm for e in journal.moves()] == ["cf2"]


@pytest.mark.fault
async def test_post_check_on_a_dead_libvirtd_is_resolved_when_it_answers(
    lab: Lab, hv: tuple[LibvirtHypervisor, list[HypervisorEvent]]
) -> None:
    adapter, events = hv
    lab.define_guest("h1", "pv1", GUEST_MIB)
    real_migrate = adapter.migrate

    async def migrate_then_kill_target(*a: Any, **kw: Any) -> Any:
        result = await real_migrate(*a, **kw)
        await asyncio.to_thread(lab.kill_libvirtd, "h2")  # before the post-check runs
        return result

    adapter.migrate = migrate_then_kill_target  # type: ignore[method-assign]
    metrics, journal = MemoryMetrics(), Journal.open(":memory:")
    ex = executor(adapter, metrics, journal)
    ex.verify_retry_first_s, ex.verify_retry_max_s = 0.5, 2.0
    report = await asyncio.wait_for(
        ex.execute(plan(("pv1", "h1", "h2")), snapshot(lab, {"pv1": "h1"}), policy()), 120
    )
    assert [r.reason for r in report.failed] == ["unverified"], report
    (pending,) = ex.in_flight()
    assert pending.state == "unresolved" and "h2" in pending.detail, pending
    assert "pv1" in ex.frozen_vms()
    await asyncio.sleep(3)  # a few retries against the dead daemon: still open
    assert [f.state for f in ex.in_flight()] == ["unresolved"]
    assert [e.state for e in journal.open_moves()] == ["unverified"]

    await asyncio.to_thread(lab.restart_libvirtd, "h2")
    deadline = time.monotonic() + 30
    while ex.in_flight() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert ex.in_flight() == [] and journal.open_moves() == []
    assert [e.state for e in journal.moves()] == ["succeeded"]
    assert lab.running_on("pv1") == ["h2"] and "pv1" not in lab.guests("h1")
    assert [e.vm for e in events if e.kind == "migration-started"] == ["pv1"]  # once
    assert metrics.total("migrations_reconciled_total", result="succeeded") == 1
    assert metrics.total("vm_lost_total") == 0
