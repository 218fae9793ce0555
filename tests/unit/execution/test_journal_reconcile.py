"""Journal durability and start-up reconciliation (crash recovery) with a file-backed journal."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import JOURNAL_FILE, Journal, JournalError
from rebalancerd.observability import MemoryMetrics
from tests.unit.execution.fakes import FakeDomain, FakeHypervisor, cluster, mig, plan, policy


def test_intent_outcome_cooldown_and_ledger(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "state")
    j.record_intent("m1", "vm1", "a", "b", "balance", 2048, 300.0, now=1000.0)
    j.record_intent("m2", "vm2", "a", "c", "drain", 1024, 300.0, now=2000.0)
    j.record_outcome("m1", "succeeded", 1010.0, downtime_ms=40.0, duration_s=10.0)
    assert [e.id for e in j.open_moves()] == ["m2"]
    assert j.mib_since(1500.0) == 1024 and j.mib_since(0.0) == 3072
    j.set_cooldown("vm1", 5000.0)
    j.set_cooldown("vm1", 4000.0)  # never shortened
    assert j.cooldowns(4500.0) == {"vm1": 5000.0}
    assert j.cooldowns(5000.0) == {}
    with pytest.raises(JournalError):
        j.record_outcome("nope", "failed", 1.0)
    j.close()
    # everything is on disk: a new process sees the same state
    j2 = Journal.open(tmp_path / "state")
    assert [(e.id, e.state) for e in j2.moves()] == [("m1", "succeeded"), ("m2", "intent")]
    m1 = j2.move("m1")
    assert m1 is not None and m1.downtime_ms == 40.0 and not m1.open
    assert j2.cooldowns(0.0) == {"vm1": 5000.0}


def test_unwritable_journal_raises_one_line(tmp_path: Path) -> None:
    j = Journal.open(tmp_path)
    j._conn.execute("PRAGMA query_only=1")
    assert j.probe() is False
    with pytest.raises(JournalError) as ei:
        j.record_intent("m1", "vm1", "a", "b", "balance", 1, 1.0, now=1.0)
    assert "\n" not in str(ei.value) and "not writable" in str(ei.value)


def test_open_fails_cleanly_when_state_dir_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError) as ei:
        Journal.open(blocker / "state")
    assert "cannot create state directory" in str(ei.value)


async def test_intent_is_committed_before_the_hypervisor_is_asked(tmp_path: Path) -> None:
    clock = VirtualClock()
    snap = cluster()
    hv = FakeHypervisor.for_snapshot(clock, snap)
    journal = Journal.open(tmp_path)
    seen: list[tuple[str, str]] = []
    orig = hv.migrate

    async def migrate(vm, source, target, settings, progress=None):  # type: ignore[no-untyped-def]
        # another connection (another process after a crash) must already see the intent
        other = sqlite3.connect(tmp_path / JOURNAL_FILE)
        seen.extend(other.execute("SELECT vm, state FROM moves").fetchall())
        other.close()
        return await orig(vm, source, target, settings, progress)

    hv.migrate = migrate  # type: ignore[method-assign]
    ex = Executor(hv, clock, MemoryMetrics(), journal)
    await ex.execute(plan([mig("vm0-0", "h0", "h1")]), snap, policy())
    assert seen == [("vm0-0", "intent")]
    assert [e.state for e in journal.moves()] == ["succeeded"]


async def _crashed_executor(tmp_path: Path) -> tuple[FakeHypervisor, VirtualClock]:
    """Run a move whose migration hangs, then 'crash' (cancel and drop the executor)."""
    clock = VirtualClock()
    snap = cluster()
    hv = FakeHypervisor.for_snapshot(clock, snap)
    hv.behaviour["vm0-0"] = "hang"
    journal = Journal.open(tmp_path)
    ex = Executor(hv, clock, MemoryMetrics(), journal)
    task = asyncio.create_task(
        ex.execute(plan([mig("vm0-0", "h0", "h1")]), snap, policy(cooldown_s=3600))
    )
    for _ in range(15):  # less than the VirtualClock's settle rounds: no time passes
        await asyncio.sleep(0)
        if hv.calls:
            break
    assert hv.calls == [("vm0-0", "h0", "h1")]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(5):
        await asyncio.sleep(0)
    assert [e.state for e in journal.open_moves()] == ["intent"]
    journal.close()
    hv.calls.clear()
    return hv, clock


def _restart(
    tmp_path: Path, hv: FakeHypervisor, clock: VirtualClock
) -> tuple[Executor, MemoryMetrics]:
    metrics = MemoryMetrics()
    return Executor(hv, clock, metrics, Journal.open(tmp_path), watchdog_grace_s=5), metrics


async def test_reconcile_move_found_done(tmp_path: Path) -> None:
    hv, clock = await _crashed_executor(tmp_path)
    # the migration completed while the daemon was dead
    hv.hosts["h1"]["vm0-0"] = hv.hosts["h0"].pop("vm0-0")
    hv.hosts["h1"]["vm0-0"].migrating = False
    ex, metrics = _restart(tmp_path, hv, clock)
    assert "vm0-0" in ex.frozen_vms()
    rep = await ex.reconcile()
    assert len(rep.succeeded) == 1 and not rep.unresolved
    assert [e.state for e in ex.journal.moves()] == ["succeeded"]
    assert metrics.total("migrations_reconciled_total", result="succeeded") == 1
    # never migrated twice: replaying the old plan is refused (cooldown started with the
    # intent survived the crash), and after the cooldown the VM is no longer where it says
    rep2 = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert [r.reason for r in rep2.skipped] == ["cooldown"]
    assert "vm0-0" in ex.frozen_vms()
    clock.advance(3700)
    now_snap = cluster().with_placement(cluster().placement().moved("vm0-0", "h1"))
    rep3 = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), now_snap, policy())
    assert [r.reason for r in rep3.skipped] == ["vm_not_on_source"]
    assert hv.calls == []


async def test_reconcile_move_that_never_happened(tmp_path: Path) -> None:
    hv, clock = await _crashed_executor(tmp_path)
    hv.hosts["h0"]["vm0-0"].migrating = False
    ex, _ = _restart(tmp_path, hv, clock)
    rep = await ex.reconcile()
    assert len(rep.failed) == 1 and hv.where("vm0-0") == ["h0"]
    assert ex.journal.open_moves() == [] and hv.calls == []


async def test_reconcile_awaits_a_running_migration(tmp_path: Path) -> None:
    hv, clock = await _crashed_executor(tmp_path)
    hv.hosts["h0"]["vm0-0"].migrating = True  # libvirtd still runs the job

    async def finish_later() -> None:
        await clock.sleep(20)
        dom = hv.hosts["h0"].pop("vm0-0")
        dom.migrating = False
        hv.hosts["h1"]["vm0-0"] = dom

    finisher = asyncio.create_task(finish_later())
    ex, _ = _restart(tmp_path, hv, clock)
    rep = await ex.reconcile()
    await finisher
    assert len(rep.awaited) == 1 and len(rep.succeeded) == 1 and not rep.aborted
    assert hv.aborts == [] and hv.calls == []


async def test_reconcile_aborts_a_migration_past_its_budget(tmp_path: Path) -> None:
    hv, clock = await _crashed_executor(tmp_path)
    dom = hv.hosts["h0"]["vm0-0"]
    dom.migrating = True
    orig_abort = hv.abort

    async def abort(vm: str, source: str) -> None:
        await orig_abort(vm, source)
        hv.hosts[source][vm].migrating = False

    hv.abort = abort  # type: ignore[method-assign]
    clock.advance(400)  # the default 300 s budget has run out
    ex, _ = _restart(tmp_path, hv, clock)
    rep = await ex.reconcile()
    assert rep.aborted == rep.awaited and len(rep.aborted) == 1
    assert hv.aborts == ["vm0-0"] and hv.where("vm0-0") == ["h0"]
    assert [e.state for e in ex.journal.moves()] == ["aborted"]


async def test_reconcile_vm_on_neither_host_raises_alarm(tmp_path: Path) -> None:
    hv, clock = await _crashed_executor(tmp_path)
    del hv.hosts["h0"]["vm0-0"]
    ex, metrics = _restart(tmp_path, hv, clock)
    rep = await ex.reconcile()
    assert len(rep.lost) == 1 and metrics.total("vm_lost_total") == 1
    assert [e.state for e in ex.journal.moves()] == ["lost"]


async def test_reconcile_unreachable_host_leaves_move_open_and_vm_frozen(tmp_path: Path) -> None:
    hv, clock = await _crashed_executor(tmp_path)
    hv.hosts["h0"]["vm0-0"].migrating = False
    hv.unreachable.add("h1")
    ex, _ = _restart(tmp_path, hv, clock)
    rep = await ex.reconcile()
    assert len(rep.unresolved) == 1 and len(ex.journal.open_moves()) == 1
    clock.advance(4000)  # cooldown over, but the move is still unresolved
    assert "vm0-0" in ex.frozen_vms()
    hv.unreachable.clear()
    rep2 = await ex.execute(plan([mig("vm0-0", "h0", "h2")]), cluster(), policy())
    assert [r.reason for r in rep2.skipped] == ["unreconciled"] and hv.calls == []
    rep3 = await ex.reconcile()
    assert len(rep3.failed) == 1 and ex.journal.open_moves() == []


async def test_running_on_both_stays_unresolved(tmp_path: Path) -> None:
    hv, clock = await _crashed_executor(tmp_path)
    hv.hosts["h0"]["vm0-0"].migrating = False
    hv.hosts["h1"]["vm0-0"] = FakeDomain()
    ex, metrics = _restart(tmp_path, hv, clock)
    rep = await ex.reconcile()
    assert len(rep.unresolved) == 1
    assert [e.state for e in ex.journal.moves()] == ["conflict"]
    assert metrics.total("errors_total", where="reconcile_unresolved") == 1
