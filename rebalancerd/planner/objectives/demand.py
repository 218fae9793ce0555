"""The per-VM CPU demand an objective counts, and which one each registered mode uses.

Kept apart from the objectives themselves (which need the Problem) so that building the
Problem (planner/problem.py) can ask for it without importing them; `registry.register`
records each objective's basis here.
"""

from __future__ import annotations

from enum import Enum

from rebalancerd.domain.model import Vm
from rebalancerd.policy.schema import Mode


class CpuDemand(Enum):
    """Which CPU figure of a VM the problem holds (its `cpu` list)."""

    PREDICTED = "predicted"
    """The policy's prediction percentile of the VM's history over the window, at least its
    current use."""
    CURRENT = "current"
    """Current use (consolidate: capacity with headroom must hold at every step; it predicts
    per host from the summed history of the VMs on it, planner/consolidate.py)."""

    def of(self, vm: Vm, percentile: float | None, window: int | None) -> int:
        """The VM's CPU demand (mc) on this basis."""
        if self is CpuDemand.CURRENT:
            return vm.cpu_used_mc
        return vm.cpu_demand_mc(percentile=percentile, window=window)


_BY_MODE: dict[Mode, CpuDemand] = {}


def record(mode: Mode, demand: CpuDemand) -> None:
    """Remember the CPU demand basis of the objective registered for `mode`."""
    _BY_MODE[mode] = demand


def cpu_demand_for(mode: Mode) -> CpuDemand:
    """The CPU demand basis of the objective registered for `mode`."""
    try:
        return _BY_MODE[mode]
    except KeyError:
        raise LookupError(f"no objective registered for mode {mode.value}") from None
