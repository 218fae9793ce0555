"""What the executor reports: one record per planned move, the report of a wave, the moves in
flight and the report of a reconciliation; `move_record` is the one way a record is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rebalancerd.domain.plan import Migration
from rebalancerd.ports import MigrationProgress, MigrationSettings


@dataclass(frozen=True, slots=True)
class MoveRecord:
    vm: str
    source: str
    target: str
    reason: str
    """Skip reason, error category, or 'ok'."""
    kind: str = ""
    """Why the plan wanted the move (reason kind)."""
    migration_id: str | None = None
    detail: str = ""
    duration_s: float | None = None
    downtime_ms: float | None = None
    strategy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "source": self.source,
            "target": self.target,
            "reason": self.reason,
            "kind": self.kind,
            "migration_id": self.migration_id,
            "detail": self.detail,
            "duration_s": self.duration_s,
            "downtime_ms": self.downtime_ms,
            "strategy": self.strategy,
        }


@dataclass
class ExecutionReport:
    succeeded: list[MoveRecord] = field(default_factory=list)
    failed: list[MoveRecord] = field(default_factory=list)
    """Started and did not move (VM kept on the source), or could not be verified or was lost."""
    aborted: list[MoveRecord] = field(default_factory=list)
    """Aborted (time budget): the VM kept running on the source."""
    skipped: list[MoveRecord] = field(default_factory=list)
    lost: list[MoveRecord] = field(default_factory=list)
    """Alarm: found on neither host after the move (also counted in `failed`)."""
    max_concurrency: int = 0
    dry_run: bool = False
    concurrency_limit: int = 0
    """The policy's max_concurrent for this wave."""
    concurrency_effective: int = 0
    """The adaptive cap on concurrent moves at the end of the wave (<= concurrency_limit)."""
    concurrency_effective_min: int = 0
    """The lowest adaptive cap in force during the wave."""
    concurrency_changes: list[dict[str, Any]] = field(default_factory=list)
    """Adaptive cap changes during the wave (scope '*' = whole cluster, else a host)."""
    downtime_over_limit: int = 0
    """Succeeded moves whose measured downtime exceeded their class's limit."""

    @property
    def started(self) -> int:
        return len(self.succeeded) + len(self.failed) + len(self.aborted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "succeeded": [r.to_dict() for r in self.succeeded],
            "failed": [r.to_dict() for r in self.failed],
            "aborted": [r.to_dict() for r in self.aborted],
            "skipped": [r.to_dict() for r in self.skipped],
            "lost": [r.to_dict() for r in self.lost],
            "max_concurrency": self.max_concurrency,
            "dry_run": self.dry_run,
            "concurrency_limit": self.concurrency_limit,
            "concurrency_effective": self.concurrency_effective,
            "concurrency_effective_min": self.concurrency_effective_min,
            "concurrency_changes": self.concurrency_changes,
            "downtime_over_limit": self.downtime_over_limit,
        }


@dataclass(frozen=True, slots=True)
class InFlight:
    migration_id: str
    vm: str
    source: str
    target: str
    started: float
    """Wall time the move started."""
    progress: MigrationProgress | None = None
    settings: MigrationSettings | None = None
    state: str = "migrating"
    """migrating | unresolved (migrated; its post-verification waits for a host to answer)"""
    detail: str = ""
    """Why it is unresolved (the host that does not answer)."""


@dataclass
class ReconcileReport:
    succeeded: list[str] = field(default_factory=list)
    """Journaled moves found done (VM runs on the target): recorded as succeeded."""
    failed: list[str] = field(default_factory=list)
    """Journaled moves that did not happen (VM runs on the source)."""
    awaited: list[str] = field(default_factory=list)
    """Moves found still running and waited for (their final outcome is in the lists too)."""
    aborted: list[str] = field(default_factory=list)
    """Moves found still running past their time budget and aborted."""
    lost: list[str] = field(default_factory=list)
    """Alarm: VM on neither host."""
    unresolved: list[str] = field(default_factory=list)
    """Could not decide (host unreachable, VM running on both): left open, VM stays frozen."""

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "awaited": self.awaited,
            "aborted": self.aborted,
            "lost": self.lost,
            "unresolved": self.unresolved,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """What post-verification found on the two hosts."""

    outcome: str
    """moved | on_source | both | lost | unverified"""
    detail: str = ""
    persistent: bool = True


def move_record(
    m: Migration,
    reason: str,
    *,
    migration_id: str | None = None,
    detail: str = "",
    duration_s: float | None = None,
    downtime_ms: float | None = None,
    settings: MigrationSettings | None = None,
) -> MoveRecord:
    """The record of planned move `m` with outcome or skip `reason`."""
    return MoveRecord(
        m.vm,
        m.source,
        m.target,
        reason,
        m.reason.kind.value,
        migration_id,
        detail,
        duration_s,
        downtime_ms,
        None if settings is None else settings.strategy,
    )
