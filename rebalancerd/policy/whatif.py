"""What would change: compare the plans made under two policies for the same snapshot. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rebalancerd.domain.plan import MigrationPlan


@dataclass(frozen=True, slots=True)
class NetMove:
    """Where a VM ends up under a plan (a temporary hop is folded into one move)."""

    vm: str
    source: str
    target: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "source": self.source, "target": self.target, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.vm} {self.source} -> {self.target} ({self.reason})"


def net_moves(plan: MigrationPlan) -> dict[str, NetMove]:
    """VM -> its first source and last target; VMs that come back where they were are dropped."""
    out: dict[str, NetMove] = {}
    for m in plan.migrations:
        first = out.get(m.vm)
        src = first.source if first is not None else m.source
        out[m.vm] = NetMove(m.vm, src, m.target, str(m.reason))
    return {vm: mv for vm, mv in out.items() if mv.source != mv.target}


@dataclass(frozen=True, slots=True)
class Changed:
    old: NetMove
    new: NetMove

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.new.vm, "old": self.old.to_dict(), "new": self.new.to_dict()}

    def __str__(self) -> str:
        return f"{self.new} (was -> {self.old.target})"


def plan_scores(plan: MigrationPlan) -> dict[str, Any]:
    s = plan.stats
    return {
        "policy": s.policy,
        "mode": s.mode,
        "status": s.status,
        "objective": s.objective,
        "imbalance_before": s.imbalance_before,
        "imbalance_after": s.imbalance_after,
        "migrations": len(plan.migrations),
        "memory_mib": plan.memory_mib,
        "unsequenced": len(plan.unsequenced),
    }


@dataclass(frozen=True, slots=True)
class PlanDiff:
    added: tuple[NetMove, ...]
    """Moves only the new policy makes."""
    removed: tuple[NetMove, ...]
    """Moves only the old policy makes."""
    changed: tuple[Changed, ...]
    """VMs both move, to different hosts."""
    unchanged: tuple[NetMove, ...]
    old: dict[str, Any]
    new: dict[str, Any]

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "added": [m.to_dict() for m in self.added],
            "removed": [m.to_dict() for m in self.removed],
            "changed": [c.to_dict() for c in self.changed],
            "unchanged": [m.to_dict() for m in self.unchanged],
            "old": self.old,
            "new": self.new,
        }

    def lines(self) -> list[str]:
        def f(x: Any) -> str:
            return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)

        rows = [
            ("policy", "policy"),
            ("mode", "mode"),
            ("status", "status"),
            ("migrations", "migrations"),
            ("MiB to move", "memory_mib"),
            ("imbalance before", "imbalance_before"),
            ("imbalance after", "imbalance_after"),
            ("objective", "objective"),
        ]
        out = [f"{'':18} {'old':>24} {'new':>24}"]
        out += [f"{label:18} {f(self.old[k]):>24} {f(self.new[k]):>24}" for label, k in rows]
        out.append("")
        if self.same:
            out.append(f"same moves under both policies ({len(self.unchanged)} moves)")
        out += [f"+ {m}" for m in self.added]
        out += [f"- {m}" for m in self.removed]
        out += [f"~ {c}" for c in self.changed]
        if not self.same:
            out.append(
                f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} "
                f"changed, {len(self.unchanged)} unchanged"
            )
        return out


def diff_plans(old: MigrationPlan, new: MigrationPlan) -> PlanDiff:
    a, b = net_moves(old), net_moves(new)
    return PlanDiff(
        added=tuple(b[v] for v in sorted(b.keys() - a.keys())),
        removed=tuple(a[v] for v in sorted(a.keys() - b.keys())),
        changed=tuple(
            Changed(a[v], b[v]) for v in sorted(a.keys() & b.keys()) if a[v].target != b[v].target
        ),
        unchanged=tuple(b[v] for v in sorted(a.keys() & b.keys()) if a[v].target == b[v].target),
        old=plan_scores(old),
        new=plan_scores(new),
    )
