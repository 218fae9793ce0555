"""What the executor's parts share: its collaborators, its running moves and the two things
every part may do (skip a move with a reason, report the journal down)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from rebalancerd.domain.plan import Migration
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.guards import CircuitBreaker, HelpTracker
from rebalancerd.execution.journal import Journal, JournalError
from rebalancerd.execution.limits import RunningMoves
from rebalancerd.execution.precheck import HostStates, Wave, recent_departures
from rebalancerd.execution.records import ExecutionReport, InFlight, move_record
from rebalancerd.policy.schema import Policy
from rebalancerd.ports import Clock, Hypervisor, MetricsSink

log = structlog.get_logger("rebalancerd.executor")

MIB = 1024 * 1024


@dataclass
class Running:
    """One move in flight."""

    rec: InFlight
    mib: int
    cpu_mc: int
    memory_mib: int
    started_mono: float = 0.0
    peak: dict[str, int] = field(default_factory=dict)
    """Most moves seen at once while this one ran: TOTAL, and touching its source / target."""


class ExecutorBase:
    hypervisor: Hypervisor
    clock: Clock
    metrics: MetricsSink
    journal: Journal
    dry_run: bool
    host_states: HostStates | None
    breaker: CircuitBreaker
    help: HelpTracker
    watchdog_grace_s: float
    reconcile_poll_s: float
    adaptive: AdaptiveConcurrency
    stagger_s: float
    share_downtime: bool
    _last_start: float
    _running: dict[str, Running]
    """Moves in flight by migration id."""
    running: RunningMoves
    """The same moves, counted per source / target (what the pre-checks read)."""
    _wave: Wave | None
    """The wave of the latest execute() call."""
    _stop: bool
    _slot: asyncio.Event

    def stopping(self) -> bool:
        return self._stop

    def backoff_remaining(self) -> float:
        """Seconds left of the 'moves stopped helping' pause (0 = none). For the loop."""
        return self.help.remaining(self.clock.monotonic())

    def recent_departures(self, policy: Policy) -> dict[str, frozenset[str]]:
        """VM -> hosts it left within `policy`'s return guard (for the planner: it does not
        plan a move back either). Empty when the journal cannot be read."""
        try:
            return recent_departures(self.journal, self.clock.now(), policy.limits.return_guard_s)
        except JournalError as e:
            log.error("journal_read_failed", error=str(e))
            return {}

    def _skip(self, report: ExecutionReport, m: Migration, reason: str, detail: str = "") -> None:
        report.skipped.append(move_record(m, reason, detail=detail))
        self.metrics.inc("migrations_skipped_total", reason=reason)
        log.info(
            "migration_skipped",
            vm=m.vm,
            source=m.source,
            target=m.target,
            reason=reason,
            kind=m.reason.kind.value,
            migration_id=None,
        )

    def _journal_down(self, why: str) -> None:
        self.metrics.set("journal_writable", 0.0)
        log.error("journal_unwritable", error=why)
