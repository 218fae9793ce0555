"""Pure domain model: value types for hosts, VMs, rules, placements and plans."""

from rebalancerd.domain.model import (
    AffinityGroup,
    ClusterRules,
    ClusterSnapshot,
    Host,
    HostState,
    Pin,
    Placement,
    PowerCurve,
    Vm,
)
from rebalancerd.domain.plan import (
    Migration,
    MigrationPlan,
    PlanStats,
    PlanStep,
    Reason,
    ReasonKind,
    Unsequenced,
)

__all__ = [
    "AffinityGroup",
    "ClusterRules",
    "ClusterSnapshot",
    "Host",
    "HostState",
    "Migration",
    "MigrationPlan",
    "Pin",
    "Placement",
    "PlanStats",
    "PlanStep",
    "PowerCurve",
    "Reason",
    "ReasonKind",
    "Unsequenced",
    "Vm",
]
