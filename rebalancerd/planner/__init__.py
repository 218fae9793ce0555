"""The planner: which VMs move where, in which order, and why.

``make_plan(snapshot, policy, *, now, ...) -> MigrationPlan`` is pure (no I/O, no clock except
perf_counter for its own wall-time statistic). See docs/planner.md.
"""

from rebalancerd.planner.core import make_plan
from rebalancerd.planner.verify import verify_plan

__all__ = ["make_plan", "verify_plan"]
