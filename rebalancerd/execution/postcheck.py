"""Post-verification: where a VM runs after its move, as the two hosts say (`verify`), and the
moves whose verification could not be done (a host did not answer): retried on a timer with a
bounded back-off until both hosts answer, then resolved as reconciliation would (journal outcome,
metrics, one log line). Meanwhile the move stays open in the journal (the VM is frozen for the
planner) and is listed by `in_flight()` as ``unresolved`` with the reason. Never migrates."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import structlog

from rebalancerd.domain.plan import Migration
from rebalancerd.execution.base import ExecutorBase
from rebalancerd.execution.journal import JournalError
from rebalancerd.execution.records import InFlight, Verdict
from rebalancerd.ports import DomainInfo, Hypervisor, HypervisorError

log = structlog.get_logger("rebalancerd.executor")

UNRESOLVED = "unresolved"
"""`InFlight.state` of a move whose post-verification waits for a host to answer."""


async def verify(hypervisor: Hypervisor, vm: str, source: str, target: str) -> Verdict:
    """Where the VM runs after its move, as the two hosts say."""
    src: dict[str, DomainInfo] | None
    dst: dict[str, DomainInfo] | None
    try:
        src = await hypervisor.domains(source)
    except HypervisorError:
        src = None
    try:
        dst = await hypervisor.domains(target)
    except HypervisorError:
        dst = None
    on_src = src.get(vm) if src is not None else None
    on_dst = dst.get(vm) if dst is not None else None
    src_running = on_src is not None and on_src.running
    dst_running = on_dst is not None and on_dst.running
    if src is None or dst is None:
        down = source if src is None else target
        return Verdict("unverified", f"host {down} unreachable")
    if dst_running and not src_running:
        assert on_dst is not None
        return Verdict("moved", persistent=on_dst.persistent)
    if src_running and not dst_running:
        return Verdict("on_source")
    if src_running and dst_running:
        return Verdict("both", "running on both source and target")
    where = [h for h, d in ((source, on_src), (target, on_dst)) if d is not None]
    detail = f"defined but not running on {', '.join(where)}" if where else "on neither host"
    return Verdict("lost", detail)


@dataclass
class Unresolved:
    """A move waiting for its post-verification."""

    rec: InFlight
    attempts: int = 0
    task: asyncio.Task[None] | None = None


class PostChecker(ExecutorBase):
    verify_retry_first_s: float = 5.0
    """First wait before verifying an unresolved move again; doubled after every miss..."""
    verify_retry_max_s: float = 60.0
    """...up to this (so a move is resolved at most this long after both hosts answer)."""
    _unresolved: dict[str, Unresolved]
    """Migration id -> a move whose post-verification waits for a host to answer."""

    def unresolved(self) -> list[InFlight]:
        """Moves whose post-verification waits for a host (state ``unresolved``, reason in
        `detail`)."""
        return [u.rec for u in self._unresolved.values()]

    def _verify_later(self, m: Migration, rec: InFlight, detail: str, cooldown_s: float) -> None:
        """Keep verifying `m` (migration `rec.migration_id`) on a timer until both hosts
        answer; its intent stays open in the journal meanwhile."""
        mid = rec.migration_id
        u = Unresolved(replace(rec, progress=None, state=UNRESOLVED, detail=detail))
        self._unresolved[mid] = u
        u.task = asyncio.create_task(self._verify_until_resolved(m, u, cooldown_s))

    async def _verify_until_resolved(self, m: Migration, u: Unresolved, cooldown_s: float) -> None:
        mid = u.rec.migration_id
        ids = {"vm": m.vm, "source": m.source, "target": m.target, "migration_id": mid}
        delay = self.verify_retry_first_s
        try:
            while True:
                log.info("verification_pending", detail=u.rec.detail, retry_in_s=delay, **ids)
                await self.clock.sleep(delay)
                u.attempts += 1
                try:
                    verdict = await verify(self.hypervisor, m.vm, m.source, m.target)
                except Exception as e:  # an adapter bug: keep trying, never lose track
                    self.metrics.inc("errors_total", where="executor_verify")
                    verdict = Verdict("unverified", f"verification failed: {type(e).__name__}")
                if verdict.outcome != "unverified":
                    self._resolve(m, u, verdict, cooldown_s)
                    return
                u.rec = replace(u.rec, detail=verdict.detail)
                delay = min(delay * 2, self.verify_retry_max_s)
        finally:
            self._unresolved.pop(mid, None)

    def _resolve(self, m: Migration, u: Unresolved, verdict: Verdict, cooldown_s: float) -> None:
        mid = u.rec.migration_id
        ids = {"vm": m.vm, "source": m.source, "target": m.target, "migration_id": mid}
        now = self.clock.now()
        after = f"verified after {u.attempts} retries"
        if verdict.outcome == "moved":
            state, detail = "succeeded", f"{after}: found on target"
        elif verdict.outcome == "on_source":
            state, detail = "failed", f"{after}: guest still on source"
        elif verdict.outcome == "lost":
            state, detail = "lost", f"{after}: {verdict.detail}"
            self.metrics.inc("vm_lost_total")
            log.error("vm_lost", detail=detail, **ids)
        else:  # running on both: stays open for an operator / reconcile, as reconcile does
            state, detail = "conflict", f"{after}: {verdict.detail}"
            self.metrics.inc("errors_total", where="verify_running_on_both")
            log.error("verification_conflict", detail=detail, **ids)
        try:
            self.journal.record_outcome(mid, state, now, detail=detail)
            if state == "succeeded" and cooldown_s > 0:
                self.journal.set_cooldown(m.vm, now + cooldown_s)
        except JournalError as e:  # the intent stays open: reconcile resolves it at restart
            self._journal_down(str(e))
            return
        if state != "conflict":
            self.metrics.inc("migrations_reconciled_total", result=state)
            log.info("verification_resolved", result=state, detail=detail, **ids)
