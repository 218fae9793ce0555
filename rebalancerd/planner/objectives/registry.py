"""Which objective each mode plans with: a dict Mode -> Objective.

Adding an objective: a module in planner/objectives/ and one `register` line below.
"""

from __future__ import annotations

from rebalancerd.planner.objectives import balance, consolidate, drain
from rebalancerd.planner.objectives.base import Objective
from rebalancerd.planner.objectives.demand import record
from rebalancerd.policy.schema import Mode

_OBJECTIVES: dict[Mode, Objective] = {}


def register(mode: Mode, objective: Objective) -> Objective | None:
    """Plan `mode` with `objective` from now on; returns the one it replaces, if any."""
    previous = _OBJECTIVES.get(mode)
    _OBJECTIVES[mode] = objective
    record(mode, objective.cpu_demand)
    return previous


def objective_for(mode: Mode) -> Objective:
    """The objective registered for `mode`."""
    try:
        return _OBJECTIVES[mode]
    except KeyError:
        raise LookupError(f"no objective registered for mode {mode.value}") from None


register(Mode.BALANCE, balance.OBJECTIVE)
register(Mode.ADVISORY, balance.OBJECTIVE)
register(Mode.CONSOLIDATE, consolidate.OBJECTIVE)
register(Mode.DRAIN, drain.OBJECTIVE)
