"""Reconciliation: journaled moves without an outcome (after a crash or restart) resolved
against the hypervisors. Never starts a migration."""

from __future__ import annotations

import structlog

from rebalancerd.domain.model import ClusterSnapshot
from rebalancerd.execution.journal import JournalEntry, JournalError
from rebalancerd.execution.postcheck import PostChecker, verify
from rebalancerd.execution.records import ReconcileReport
from rebalancerd.ports import HypervisorError

log = structlog.get_logger("rebalancerd.executor")


class Reconciler(PostChecker):
    async def reconcile(self, snapshot: ClusterSnapshot | None = None) -> ReconcileReport:
        """Resolve every journaled move without an outcome (after a crash or restart) against
        the hypervisors. Never starts a migration."""
        report = ReconcileReport()
        try:
            entries = self.journal.open_moves()
        except JournalError as err:
            log.error("reconcile_journal_unreadable", error=str(err))
            return report
        for e in entries:
            if e.id in self._running or e.id in self._unresolved:
                continue  # still ours: running, or verified again on a timer
            await self._reconcile_one(e, report)
        self.metrics.set("journal_writable", 1.0 if self.journal.probe() else 0.0)
        return report

    async def _reconcile_one(self, e: JournalEntry, report: ReconcileReport) -> None:
        ids = {"vm": e.vm, "source": e.source, "target": e.target, "migration_id": e.id}
        info = await self._job_state(e)
        aborted = False
        if info == "migrating":
            report.awaited.append(e.id)
            deadline = e.started + e.time_budget_s + self.watchdog_grace_s
            log.info("reconcile_awaiting", deadline=deadline, **ids)
            while info == "migrating" and self.clock.now() < deadline:
                await self.clock.sleep(min(self.reconcile_poll_s, deadline - self.clock.now()))
                info = await self._job_state(e)
            if info == "migrating":
                log.warning("reconcile_aborting", **ids)
                try:
                    await self.hypervisor.abort(e.vm, e.source)
                except HypervisorError as err:
                    log.error("reconcile_abort_failed", error=str(err), **ids)
                aborted = True
                end = self.clock.now() + self.watchdog_grace_s
                while info == "migrating" and self.clock.now() < end:
                    await self.clock.sleep(self.reconcile_poll_s)
                    info = await self._job_state(e)
        verdict = await verify(self.hypervisor, e.vm, e.source, e.target)
        now = self.clock.now()
        state: str | None
        if info == "migrating":
            state, detail = None, "still migrating after abort"
        elif verdict.outcome == "moved":
            state, detail = "succeeded", "reconciled: found on target"
            report.succeeded.append(e.id)
        elif verdict.outcome == "on_source":
            state = "aborted" if aborted else "failed"
            detail = "reconciled: guest still on source"
            (report.aborted if aborted else report.failed).append(e.id)
        elif verdict.outcome == "lost":
            state, detail = "lost", f"reconciled: {verdict.detail}"
            report.lost.append(e.id)
            self.metrics.inc("vm_lost_total")
            log.error("vm_lost", detail=detail, **ids)
        elif verdict.outcome == "both":
            state, detail = "conflict", verdict.detail
        else:
            state, detail = None, verdict.detail
        if state is None or state == "conflict":
            report.unresolved.append(e.id)
            self.metrics.inc("errors_total", where="reconcile_unresolved")
            log.error("reconcile_unresolved", detail=detail, **ids)
            if state == "conflict" and e.state != "conflict":
                self._try_outcome(e.id, "conflict", now, detail)
            return
        self.metrics.inc("migrations_reconciled_total", result=state)
        log.info("reconciled", result=state, detail=detail, **ids)
        self._try_outcome(e.id, state, now, detail)

    def _try_outcome(self, mid: str, state: str, now: float, detail: str) -> None:
        try:
            self.journal.record_outcome(mid, state, now, detail=detail)
        except JournalError as err:
            self._journal_down(str(err))

    async def _job_state(self, e: JournalEntry) -> str:
        """'migrating' if the source still runs a migration job of the VM, else 'settled'."""
        try:
            src = await self.hypervisor.domains(e.source)
        except HypervisorError:
            return "settled"
        d = src.get(e.vm)
        return "migrating" if d is not None and d.migrating else "settled"
