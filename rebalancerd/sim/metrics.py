"""The benchmark's metrics, accumulated exactly the way CloudSim 3.0.3 computes them.

CloudSim updates every host at each event (scheduling interval, migration end) and keeps, per
host, a state history entry (time, allocated MIPS, requested MIPS, active) and, per VM, (time,
allocated MIPS, requested MIPS, in migration). A state holds from its time to the next entry's
time; a second entry at the same time replaces the first. From those:

- Energy (``PowerDatacenter``): between two events, per host, the trapezoid of the power at the
  previous and the current utilisation, times the time elapsed; 0 when the previous utilisation
  is 0 (the host is off). Joules / 3.6e6 = kWh.
- SLATAH (``getSlaTimePerActiveHost``): sum over hosts of the time during which an active host had
  allocated < requested MIPS, divided by the sum over hosts of their active time.
- PDM (``getSlaMetrics`` 'underallocated_migration'): sum over VMs of (requested - allocated) x
  time while in migration and under-allocated, divided by the sum of requested x time.
- SLAV = SLATAH x PDM; ESV = energy x SLAV.

`allocated < requested` is compared with a relative tolerance of 1e-9 (CloudSim compares raw
doubles, where 0.9 x r / 0.9 may come out a hair below r; we do not count that rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_REL_TOL = 1e-9


def _under(alloc: FloatArray, req: FloatArray) -> BoolArray:
    out: BoolArray = alloc < req * (1.0 - _REL_TOL) - 1e-12
    return out


@dataclass
class MetricsAccumulator:
    """Feed it one record per event time, in time order; read `summary()` at the end."""

    power_of: Callable[[FloatArray], FloatArray]
    """Host utilisation array (0..1) -> watts array."""
    total_mips: FloatArray
    energy_j: float = 0.0
    active_time_s: float = 0.0
    violation_time_s: float = 0.0
    requested_mips_s: float = 0.0
    allocated_mips_s: float = 0.0
    migration_loss_mips_s: float = 0.0
    migrations: int = 0
    bytes_moved: int = 0
    peak_concurrent: int = 0
    _t: float | None = None
    _host_used: FloatArray | None = None
    _host_req: FloatArray | None = None
    _vm_alloc: FloatArray | None = None
    _vm_req: FloatArray | None = None
    _vm_mig: BoolArray | None = None
    _power_prev: FloatArray | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def record(
        self,
        t: float,
        host_used_mips: FloatArray,
        host_requested_mips: FloatArray,
        vm_allocated_mips: FloatArray,
        vm_requested_mips: FloatArray,
        vm_in_migration: BoolArray,
    ) -> FloatArray:
        """Close the span since the previous record and open a new one. Returns host watts."""
        util = np.clip(host_used_mips / self.total_mips, 0.0, 1.0)
        power: FloatArray = np.asarray(self.power_of(util), dtype=np.float64)
        if self._t is not None and t < self._t:
            raise ValueError(f"records must be in time order ({t} < {self._t})")
        if self._t is not None and t > self._t:
            assert self._host_used is not None and self._host_req is not None
            assert self._vm_alloc is not None and self._vm_req is not None
            assert self._vm_mig is not None and self._power_prev is not None
            dt = t - self._t
            on = self._host_used > 0
            # CloudSim's getEnergyLinearInterpolation: 0 when the host was off (utilisation 0).
            span_w = np.where(on, (self._power_prev + power) / 2.0, 0.0)
            self.energy_j += dt * float(np.sum(span_w))
            self.active_time_s += dt * int(np.count_nonzero(on))
            self.violation_time_s += dt * int(
                np.count_nonzero(on & _under(self._host_used, self._host_req))
            )
            self.requested_mips_s += dt * float(np.sum(self._vm_req))
            self.allocated_mips_s += dt * float(np.sum(self._vm_alloc))
            lost = np.where(
                self._vm_mig & _under(self._vm_alloc, self._vm_req),
                self._vm_req - self._vm_alloc,
                0.0,
            )
            self.migration_loss_mips_s += dt * float(np.sum(lost))
        self._t = t
        self._host_used = host_used_mips.copy()
        self._host_req = host_requested_mips.copy()
        self._vm_alloc = vm_allocated_mips.copy()
        self._vm_req = vm_requested_mips.copy()
        self._vm_mig = vm_in_migration.copy()
        self._power_prev = power
        return power

    # -- results ------------------------------------------------------------------------------
    @property
    def energy_kwh(self) -> float:
        return self.energy_j / 3.6e6

    @property
    def slatah(self) -> float:
        return self.violation_time_s / self.active_time_s if self.active_time_s > 0 else 0.0

    @property
    def pdm(self) -> float:
        if self.requested_mips_s <= 0:
            return 0.0
        return self.migration_loss_mips_s / self.requested_mips_s

    @property
    def slav(self) -> float:
        return self.slatah * self.pdm

    @property
    def esv(self) -> float:
        return self.energy_kwh * self.slav

    def summary(self, n_vms: int, duration_s: float) -> dict[str, Any]:
        days = duration_s / 86_400.0 if duration_s > 0 else 1.0
        return {
            "energy_kwh": self.energy_kwh,
            "slatah": self.slatah,
            "pdm": self.pdm,
            "slav": self.slav,
            "esv": self.esv,
            "migrations": self.migrations,
            "migrations_per_vm_day": (self.migrations / n_vms / days) if n_vms else 0.0,
            "bytes_moved": self.bytes_moved,
            "peak_concurrent_migrations": self.peak_concurrent,
            "overall_sla_shortfall": (
                (self.requested_mips_s - self.allocated_mips_s) / self.requested_mips_s
                if self.requested_mips_s > 0
                else 0.0
            ),
        }
