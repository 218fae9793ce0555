"""The migration plan: a value to print, diff, explain and replay.

A plan is an ordered list of steps; the migrations inside one step may run concurrently (the
sequencer guarantees capacity and hard rules hold after each one, in any order inside the step).
Every migration carries why it is there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class ReasonKind(StrEnum):
    HOTSPOT = "hotspot"
    """Source host above the high watermark."""
    BALANCE = "balance"
    """Spread reduction without a hotspot."""
    RULE = "rule"
    """A hard or soft rule (affinity, anti-affinity, pin) is violated."""
    DRAIN = "drain"
    """Source host is in maintenance."""
    EVACUATE = "evacuate"
    """Source host is degraded."""
    ENERGY = "energy"
    """Consolidation: empty a host so it can be switched off."""
    TEMPORARY = "temporary"
    """Hop through a temporary host to break a cycle."""


@dataclass(frozen=True, slots=True)
class Reason:
    kind: ReasonKind
    detail: str = ""
    """Human text, e.g. 'host h3 cpu 0.93 > high watermark 0.85'."""
    rule: str | None = None

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value


@dataclass(frozen=True, slots=True)
class Migration:
    vm: str
    source: str
    target: str
    reason: Reason
    memory_mib: int = 0
    """Bytes to move (allocated memory + non-shared disk), in MiB."""
    score_before: float | None = None
    """Objective (e.g. imbalance) before this migration."""
    score_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "source": self.source,
            "target": self.target,
            "reason": str(self.reason),
            "reason_kind": self.reason.kind.value,
            "reason_detail": self.reason.detail,
            "rule": self.reason.rule,
            "memory_mib": self.memory_mib,
            "score_before": self.score_before,
            "score_after": self.score_after,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Migration:
        return cls(
            vm=str(d["vm"]),
            source=str(d["source"]),
            target=str(d["target"]),
            reason=Reason(
                ReasonKind(d.get("reason_kind", "balance")),
                str(d.get("reason_detail", "")),
                d.get("rule"),
            ),
            memory_mib=int(d.get("memory_mib", 0)),
            score_before=d.get("score_before"),
            score_after=d.get("score_after"),
        )


@dataclass(frozen=True, slots=True)
class PlanStep:
    migrations: tuple[Migration, ...]


@dataclass(frozen=True, slots=True)
class Unsequenced:
    """A move the planner wanted but could not order safely, and why."""

    vm: str
    source: str
    target: str
    why: str


@dataclass(frozen=True, slots=True)
class PlanStats:
    planner: str = ""
    status: str = ""
    """Solver status (OPTIMAL, FEASIBLE, GREEDY, NOTHING_TO_DO, ...)."""
    objective: float | None = None
    bound: float | None = None
    wall_s: float = 0.0
    imbalance_before: float | None = None
    imbalance_after: float | None = None
    mode: str = ""
    policy: str = ""
    notes: tuple[str, ...] = ()
    moves_lower_bound: int | None = None
    """Target band (balance with `targets.max_gap`/`band`): moves any planner needs to bring
    every host inside the band from the snapshot (docs/planner.md, "Lower bounds")."""
    moves_ratio: float | None = None
    """Optional moves planned / moves_lower_bound (None when the bound is 0)."""
    mib_lower_bound: int | None = None
    """MiB that must leave hosts above the memory band (or reach hosts below it), at least."""
    band_met: bool | None = None
    """Every balancing host ends inside the target band."""
    overcommit_hosts: int | None = None
    """Hosts whose configured memory is above physical x memory_overcommit in the snapshot."""


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    steps: tuple[PlanStep, ...] = ()
    stats: PlanStats = field(default_factory=PlanStats)
    unsequenced: tuple[Unsequenced, ...] = ()

    @property
    def migrations(self) -> tuple[Migration, ...]:
        return tuple(m for s in self.steps for m in s.migrations)

    @property
    def empty(self) -> bool:
        return not self.steps

    @property
    def memory_mib(self) -> int:
        return sum(m.memory_mib for m in self.migrations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "migrations": [m.to_dict() for m in self.migrations],
            "steps": [[m.vm for m in s.migrations] for s in self.steps],
            "unsequenced": [asdict(u) for u in self.unsequenced],
            "stats": asdict(self.stats) | {"notes": list(self.stats.notes)},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MigrationPlan:
        # A VM may appear twice (temporary hop): rebuild steps positionally.
        migs = [Migration.from_dict(m) for m in d.get("migrations", [])]
        steps: list[PlanStep] = []
        i = 0
        for names in d.get("steps", []):
            steps.append(PlanStep(tuple(migs[i : i + len(names)])))
            i += len(names)
        st = dict(d.get("stats", {}))
        st["notes"] = tuple(st.get("notes", ()))
        return cls(
            steps=tuple(steps),
            stats=PlanStats(**st),
            unsequenced=tuple(Unsequenced(**u) for u in d.get("unsequenced", [])),
        )

    def explain(self) -> list[str]:
        """One human line per migration, in order."""
        lines = []
        for i, step in enumerate(self.steps, 1):
            for m in step.migrations:
                sc = ""
                if m.score_before is not None and m.score_after is not None:
                    sc = f" (score {m.score_before:.3f} -> {m.score_after:.3f})"
                lines.append(f"step {i}: {m.vm} {m.source} -> {m.target}: {m.reason}{sc}")
        for u in self.unsequenced:
            lines.append(f"not sequenced: {u.vm} {u.source} -> {u.target}: {u.why}")
        return lines
