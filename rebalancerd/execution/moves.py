"""Running one move: start it (journal intent, settings), migrate under a watchdog, verify on
both hosts (`postcheck.verify`; a host that does not answer: verified again on a timer),
conclude (journal outcome, metrics, breaker, one log line); and aborting every running move on
request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from rebalancerd.domain.plan import Migration, ReasonKind
from rebalancerd.execution.adaptive import TOTAL
from rebalancerd.execution.adaptive_feed import AdaptiveFeed
from rebalancerd.execution.base import MIB, Running
from rebalancerd.execution.journal import JournalError
from rebalancerd.execution.postcheck import PostChecker, verify
from rebalancerd.execution.precheck import Wave
from rebalancerd.execution.records import ExecutionReport, InFlight, Verdict, move_record
from rebalancerd.execution.settings import bytes_to_move_mib, choose_settings, class_spec_for
from rebalancerd.ports import (
    HypervisorError,
    MigrationProgress,
    MigrationResult,
    MigrationSettings,
)

log = structlog.get_logger("rebalancerd.executor")

JUDGED = frozenset({ReasonKind.BALANCE, ReasonKind.HOTSPOT})
"""Reason kinds whose effect on the imbalance is judged by the 'did it help' tracker."""


class MoveRunner(AdaptiveFeed, PostChecker):
    _abort_reasons: dict[str, str]
    """Migration id -> why abort_all aborted it (in the outcome's detail)."""

    async def abort_all(self, reason: str) -> list[str]:
        """Abort every running migration (the VMs keep running on their sources); starts no
        new move. Each abort is logged; each move's outcome is journaled and counted when its
        migration returns (state ``aborted``, `reason` in the detail). Returns the VM names."""
        self.request_stop()
        vms: list[str] = []
        for mid, r in list(self._running.items()):
            f = r.rec
            self._abort_reasons[mid] = reason
            try:
                await self.hypervisor.abort(f.vm, f.source)
            except Exception as e:  # one failed abort must not keep the others running
                self.metrics.inc("errors_total", where="executor_abort")
                log.error(
                    "migration_abort_failed", vm=f.vm, migration_id=mid, error=str(e), why=reason
                )
                continue
            log.warning(
                "migration_abort_requested",
                vm=f.vm,
                host=f.source,
                target=f.target,
                migration_id=mid,
                why=reason,
            )
            vms.append(f.vm)
        return vms

    def request_stop(self) -> None:
        """Start no new move; moves in flight finish (never abandoned)."""
        if not self._stop:
            log.info("executor_stop_requested", in_flight=len(self._running))
        self._stop = True

    def _start(
        self, m: Migration, wave: Wave, report: ExecutionReport
    ) -> asyncio.Task[None] | None:
        vm = wave.vms[m.vm]
        cls_name, spec = class_spec_for(wave.policy, vm)
        cap = self.adaptive.cap(TOTAL, wave.policy.limits.max_concurrent)
        sharing = max(1, min(cap, wave.sharing))
        settings = choose_settings(vm, spec, sharing=sharing if self.share_downtime else 1)
        mib = bytes_to_move_mib(vm, spec)
        mid = uuid.uuid4().hex[:16]
        now = self.clock.now()
        try:
            self.journal.record_intent(
                mid,
                m.vm,
                m.source,
                m.target,
                m.reason.kind.value,
                mib,
                settings.time_budget_s,
                now,
            )
            if wave.policy.limits.cooldown_s > 0:
                self.journal.set_cooldown(m.vm, now + wave.policy.limits.cooldown_s)
        except JournalError as e:
            self._journal_down(str(e))
            self._skip(report, m, "journal_unwritable")
            return None
        wave.started += 1
        rec = InFlight(mid, m.vm, m.source, m.target, now, None, settings)
        mono = self.clock.monotonic()
        self._last_start = mono
        self._running[mid] = Running(rec, mib, vm.cpu_used_mc, vm.memory_mib, mono)
        self.running.start(mid, m.vm, m.source, m.target)
        wave.loads.add(m.target, m.vm)
        total = len(self._running)
        for r in self._running.values():  # what each running move now shares the hosts with
            scopes = {TOTAL: total}
            for host in (r.rec.source, r.rec.target):
                scopes[host] = self.running.touching(host)
            for k, v in scopes.items():
                r.peak[k] = max(r.peak.get(k, 0), v)
        self.metrics.set("migrations_in_flight", float(len(self._running)))
        self.metrics.inc("migrations_started_total", reason=m.reason.kind.value)
        self.metrics.inc("migration_strategy_total", strategy=settings.strategy)
        log.info(
            "migration_started",
            vm=m.vm,
            source=m.source,
            target=m.target,
            migration_id=mid,
            kind=m.reason.kind.value,
            reason=str(m.reason),
            migration_class=cls_name,
            strategy=settings.strategy,
            dirty_rate_known=settings.dirty_rate_known,
            bandwidth_mib_s=settings.bandwidth_mib_s,
            max_downtime_ms=settings.max_downtime_ms,
            postcopy_after_s=settings.postcopy_after_s,
            auto_converge=settings.auto_converge,
            time_budget_s=settings.time_budget_s,
            mib=mib,
        )
        return asyncio.create_task(self._run_move(m, mid, settings, wave, report))

    def _progress(self, mid: str) -> Callable[[MigrationProgress], None]:
        def cb(p: MigrationProgress) -> None:
            r = self._running.get(mid)
            if r is None:
                return
            r.rec = InFlight(
                r.rec.migration_id,
                r.rec.vm,
                r.rec.source,
                r.rec.target,
                r.rec.started,
                p,
                r.rec.settings,
            )
            self.metrics.set("migration_remaining_bytes", p.data_remaining_mib * MIB, vm=p.vm)

        return cb

    async def _migrate_guarded(
        self, m: Migration, mid: str, settings: MigrationSettings
    ) -> MigrationResult:
        """Run the hypervisor's migrate with a watchdog: past the time budget (plus a grace)
        the job is aborted, then awaited a little longer."""
        task = asyncio.ensure_future(
            self.hypervisor.migrate(m.vm, m.source, m.target, settings, self._progress(mid))
        )
        limit = settings.time_budget_s + max(self.watchdog_grace_s, 0.1 * settings.time_budget_s)
        if await self._wait_for(task, limit):
            return task.result()
        log.warning(
            "migration_watchdog_abort",
            vm=m.vm,
            source=m.source,
            target=m.target,
            migration_id=mid,
            after_s=limit,
        )
        try:
            await self.hypervisor.abort(m.vm, m.source)
        except HypervisorError as e:
            log.error(
                "migration_abort_failed",
                vm=m.vm,
                source=m.source,
                target=m.target,
                migration_id=mid,
                error=str(e),
            )
        if await self._wait_for(task, self.watchdog_grace_s):
            return task.result()
        task.cancel()
        return MigrationResult(False, total_s=limit, aborted=True, error="watchdog: no outcome")

    async def _wait_for(self, task: asyncio.Future[MigrationResult], seconds: float) -> bool:
        """Wait for `task` at most `seconds` of the executor's clock. True if it finished."""
        if task.done():
            return True
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waiting: set[asyncio.Future[Any]] = {task, sleeper}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        return task.done()

    async def _run_move(
        self,
        m: Migration,
        mid: str,
        settings: MigrationSettings,
        wave: Wave,
        report: ExecutionReport,
    ) -> None:
        ids = {"vm": m.vm, "source": m.source, "target": m.target, "migration_id": mid}
        t0 = self.clock.monotonic()
        try:
            try:
                result = await self._migrate_guarded(m, mid, settings)
            except HypervisorError as e:
                result = MigrationResult(False, error=f"hypervisor: {e}")
            except Exception as e:  # an adapter bug must not lose track of the move
                self.metrics.inc("errors_total", where="executor_migrate")
                log.exception("migration_adapter_error", **ids)
                result = MigrationResult(False, error=f"{type(e).__name__}: {e}")
            elapsed = self.clock.monotonic() - t0
            try:
                verdict = await verify(self.hypervisor, m.vm, m.source, m.target)
            except Exception as e:  # an adapter bug: leave the move open for reconcile
                self.metrics.inc("errors_total", where="executor_verify")
                log.exception("migration_verify_error", **ids)
                verdict = Verdict("unverified", f"verification failed: {type(e).__name__}: {e}")
            self._conclude(m, mid, settings, wave, report, result, verdict, elapsed)
            if verdict.outcome == "unverified":  # a host did not answer: ask again later
                rec = self._running[mid].rec
                self._verify_later(m, rec, verdict.detail, wave.policy.limits.cooldown_s)
        finally:
            self._running.pop(mid, None)
            self.running.end(mid)
            self._abort_reasons.pop(mid, None)
            wave.loads.remove(m.target, m.vm)
            if self._wave is not None and self._wave is not wave:
                # a later wave counted this move among the target's incoming VMs
                self._wave.loads.remove(m.target, m.vm)
            self.metrics.set("migrations_in_flight", float(len(self._running)))
            self.metrics.set("migration_remaining_bytes", 0.0, vm=m.vm)

    def _conclude(
        self,
        m: Migration,
        mid: str,
        settings: MigrationSettings,
        wave: Wave,
        report: ExecutionReport,
        result: MigrationResult,
        verdict: Verdict,
        elapsed: float,
    ) -> None:
        ids = {"vm": m.vm, "source": m.source, "target": m.target, "migration_id": mid}
        now = self.clock.now()
        mono = self.clock.monotonic()
        kind = m.reason.kind.value
        duration = result.total_s if result.total_s > 0 else elapsed
        if result.transferred_mib > 0:
            self.metrics.inc("migrated_bytes_total", result.transferred_mib * MIB)
        if result.downtime_step_ups:
            self.metrics.inc("migration_downtime_step_ups_total", float(result.downtime_step_ups))
        if result.postcopy:
            self.metrics.inc("migration_postcopy_switches_total")
        detail = result.error or ""
        downtime: float | None = None
        used: MigrationSettings | None = settings
        """The settings named in the record (none when the outcome is unclear)."""
        lists = [report.failed]
        if verdict.outcome == "moved":
            state, reason, lists = "succeeded", "ok", [report.succeeded]
            downtime = result.downtime_ms
            if not result.ok:
                detail = f"hypervisor reported failure ({result.error}) but VM runs on target"
                log.warning("migration_result_mismatch", detail=detail, **ids)
            if not verdict.persistent:
                self.metrics.inc("errors_total", where="verify_not_persistent")
                log.error("migration_not_persistent", **ids)
                detail = (detail + "; " if detail else "") + "definition not persistent on target"
            wave.settle(m.vm, m.source, m.target)
            if m.reason.kind in JUDGED:
                wave.judged_moves[m.vm] = m.target
            self.metrics.inc("migrations_succeeded_total", reason=kind)
            self.metrics.observe("migration_duration_seconds", duration)
            if result.downtime_ms is not None:
                self.metrics.observe("migration_downtime_seconds", result.downtime_ms / 1000.0)
                self._adapt(m, mid, wave, report, result.downtime_ms)
            log.info(
                "migration_succeeded",
                duration_s=round(duration, 3),
                downtime_ms=result.downtime_ms,
                postcopy=result.postcopy,
                strategy=settings.strategy,
                downtime_step_ups=result.downtime_step_ups,
                final_max_downtime_ms=result.final_max_downtime_ms,
                **ids,
            )
        elif verdict.outcome == "on_source" and result.aborted:
            state, reason, lists = "aborted", "aborted", [report.aborted]
            why = self._abort_reasons.get(mid)
            if why is not None:
                detail = (detail + "; " if detail else "") + f"aborted: {why}"
            self.metrics.inc("migrations_aborted_total", reason=kind)
            log.warning("migration_aborted", detail=detail, duration_s=round(duration, 3), **ids)
        elif verdict.outcome == "on_source":
            state = "failed"
            reason = (
                "hypervisor_error"
                if detail.startswith("hypervisor:")
                else ("migration_error" if not result.ok else "verify_still_on_source")
            )
            if result.ok:
                detail = "hypervisor reported success but VM still runs on the source"
            self.metrics.inc("migrations_failed_total", error=reason)
            log.warning("migration_failed", error=reason, detail=detail, **ids)
        elif verdict.outcome == "lost":
            state, reason, used = "lost", "vm_lost", None
            lists = [report.failed, report.lost]
            detail = verdict.detail
            self.metrics.inc("vm_lost_total")
            self.metrics.inc("migrations_failed_total", error=reason)
            log.error("vm_lost", detail=detail, **ids)
        else:  # both running, or a host unreachable: leave the move open for reconcile
            state = "conflict" if verdict.outcome == "both" else "unverified"
            reason = "running_on_both" if verdict.outcome == "both" else "unverified"
            used = None
            detail = verdict.detail
            self.metrics.inc("migrations_failed_total", error=reason)
            self.metrics.inc("errors_total", where=f"verify_{reason}")
            log.error("migration_unverified", error=reason, detail=detail, **ids)
        rec = move_record(
            m,
            reason,
            migration_id=mid,
            detail=detail,
            duration_s=duration,
            downtime_ms=downtime,
            settings=used,
        )
        for out in lists:
            out.append(rec)
        ok = state == "succeeded"
        try:
            self.journal.record_outcome(
                mid,
                state,
                now,
                detail=_with_convergence(detail, settings, result) or None,
                downtime_ms=result.downtime_ms if ok else None,
                duration_s=duration,
            )
            if wave.policy.limits.cooldown_s > 0:
                self.journal.set_cooldown(m.vm, now + wave.policy.limits.cooldown_s)
        except JournalError as e:
            # the intent stays open: reconcile resolves it at the next start; no new moves now
            self._journal_down(str(e))
        for host in (m.source, m.target):
            change = self.breaker.record(host, ok, mono)
            if change is not None:
                self.metrics.set("host_circuit_open", 1.0 if change == "opened" else 0.0, host=host)
                log.warning(f"circuit_{change}", host=host, vm=m.vm, migration_id=mid)


def _with_convergence(detail: str, settings: MigrationSettings, result: MigrationResult) -> str:
    """The journal's outcome detail plus how the move converged (strategy, step-ups, post-copy)."""
    conv = f"strategy={settings.strategy}"
    if result.downtime_step_ups:
        conv += f" downtime_step_ups={result.downtime_step_ups}"
        conv += f" max_downtime_ms={result.final_max_downtime_ms}"
    if result.postcopy:
        conv += " postcopy=yes"
    return f"{detail}; {conv}" if detail else conv
