"""Fault injection on real daemons and real guests (issue 9): the destination libvirtd killed, or
the destination's link cut, in the middle of a live migration run by the executor.

Every test ends by proving that the VM runs exactly once (on the source), that the failure was
reported (report, journal, metrics) and that no migration ran twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from rebalancerd.adapters.clock import SystemClock
from rebalancerd.adapters.libvirt import LibvirtHypervisor
from rebalancerd.adapters.libvirt_events import HypervisorEvent
from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.domain.plan import Migration, MigrationPlan, PlanStep, Reason, ReasonKind
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.execution.records import ExecutionReport
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Policy
from tests.fixtures.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.fault]

VM = "fault1"
VM_MIB = 128


@dataclass
class Rig:
    lab: Lab
    hv: LibvirtHypervisor
    executor: Executor
    journal: Journal
    metrics: MemoryMetrics
    events: list[HypervisorEvent]


def _policy() -> Policy:
    # capped bandwidth: the dirtying guest cannot converge, so the move is surely still running
    # when the fault hits; the time budget bounds the test if the fault went unnoticed
    return Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "limits": {"cooldown_s": 0.0, "max_concurrent": 2},
            "migration": {
                "default": {"bandwidth_mib_s": 16, "max_downtime_ms": 100, "time_budget_s": 12}
            },
        }
    )


def _snapshot(lab: Lab) -> ClusterSnapshot:
    hosts = tuple(Host(h.name, cores=4, memory_mib=8192) for h in lab.hosts)
    vms = (Vm(VM, "h1", vcpus=1, memory_mib=VM_MIB, cpu_used_mc=1000),)
    return ClusterSnapshot(hosts, vms, taken_at=time.time())


def _plan(target: str) -> MigrationPlan:
    move = Migration(VM, "h1", target, Reason(ReasonKind.DRAIN, "fault test"), memory_mib=VM_MIB)
    return MigrationPlan(steps=(PlanStep((move,)),))


@pytest.fixture
async def rig(lab: Lab, tmp_path: object) -> AsyncIterator[Rig]:
    events: list[HypervisorEvent] = []
    hv = LibvirtHypervisor(lab.inventory(), poll_interval_s=0.1, listeners=[events.append])
    journal = Journal.open(":memory:")
    metrics = MemoryMetrics()
    executor = Executor(hv, SystemClock(), metrics, journal, watchdog_grace_s=5.0)
    # a post-check that finds a host down is verified again on this (short) timer
    executor.verify_retry_first_s, executor.verify_retry_max_s = 0.5, 2.0
    lab.define_guest("h1", VM, VM_MIB, dirty=True)
    lab.wait_dirtying("h1", VM)
    yield Rig(lab, hv, executor, journal, metrics, events)
    await hv.close()


async def _run_with_fault(rig: Rig, target: str, fault: Callable[[], None]) -> ExecutionReport:
    """Execute the move and inject `fault` once the migration is really under way (the
    destination's incoming guest exists and data has flowed)."""
    task = asyncio.create_task(rig.executor.execute(_plan(target), _snapshot(rig.lab), _policy()))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not task.done():
        incoming = any(
            e.kind == "lifecycle" and e.host == target and e.migration == "incoming" and e.vm == VM
            for e in rig.events
        )
        flowing = any(
            r.progress is not None and r.progress.data_total_mib > 0
            for r in rig.executor.in_flight()
        )
        if incoming and flowing:
            break
        await asyncio.sleep(0.05)
    assert not task.done(), "the migration ended before the fault could be injected"
    await asyncio.to_thread(fault)
    return await asyncio.wait_for(task, 60)


async def _wait_gone_from(lab: Lab, host: str, timeout: float = 30.0) -> None:
    """The destination drops its half-done incoming guest once it notices the failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if VM not in lab.guests(host):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{host} still holds {VM}: {lab.guests(host)}")


async def _wait_resolved(rig: Rig, timeout: float = 30.0) -> None:
    """No move left open in the journal, none listed as unresolved."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rig.journal.open_moves() and not rig.executor.in_flight():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"still open: {rig.journal.open_moves()} {rig.executor.in_flight()}")


def _assert_exactly_once_on_source(rig: Rig, target: str) -> None:
    assert rig.lab.running_on(VM) == ["h1"]
    assert rig.lab.guests("h1")[VM]["persistent"]
    assert VM not in rig.lab.guests(target)
    started = [e for e in rig.events if e.kind == "migration-started" and e.vm == VM]
    assert len(started) == 1, "the migration ran more than once"
    moves = [e for e in rig.journal.moves() if e.vm == VM]
    assert len(moves) == 1
    assert rig.metrics.total("migrations_started_total") == 1
    assert rig.metrics.total("migrations_succeeded_total") == 0
    assert rig.metrics.total("vm_lost_total") == 0


async def test_destination_libvirtd_killed_mid_migration(rig: Rig) -> None:
    report = await _run_with_fault(rig, "h2", lambda: rig.lab.kill_libvirtd("h2"))
    assert not report.succeeded and not report.lost
    assert len(report.failed) + len(report.aborted) == 1
    record = (report.failed + report.aborted)[0]
    assert record.vm == VM and record.detail  # the failure is reported with its cause
    assert (
        rig.metrics.total("migrations_failed_total") + rig.metrics.total("migrations_aborted_total")
        == 1
    )
    # the guest kept running on the source through the fault (h2 cannot be asked yet)
    assert rig.lab.guests("h1")[VM]["running"] and not rig.lab.guests("h3")
    # the destination comes back: its half-done incoming guest is dropped, never resumed
    rig.lab.restart_libvirtd("h2")
    await _wait_gone_from(rig.lab, "h2")
    # a move left open (destination unreachable at verification) is resolved as soon as the
    # destination answers: by the executor's own timer, or by reconcile (neither migrates)
    await rig.executor.reconcile(_snapshot(rig.lab))
    await _wait_resolved(rig)
    (entry,) = rig.journal.moves()
    assert entry.state in ("failed", "aborted"), entry
    _assert_exactly_once_on_source(rig, "h2")


async def test_destination_link_cut_mid_migration(rig: Rig) -> None:
    report = await _run_with_fault(rig, "h3", lambda: rig.lab.cut_link("h3"))
    assert not report.succeeded and not report.lost
    assert len(report.failed) + len(report.aborted) == 1
    record = (report.failed + report.aborted)[0]
    assert record.vm == VM and record.detail
    assert rig.lab.running_on(VM) == ["h1"]
    rig.lab.restore_link("h3")
    await _wait_gone_from(rig.lab, "h3")
    await rig.executor.reconcile(_snapshot(rig.lab))
    await _wait_resolved(rig)
    _assert_exactly_once_on_source(rig, "h3")
