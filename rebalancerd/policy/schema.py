"""Policy models: what a policy file can say, with a documented default for every field.

A minimal policy is three lines::

    apiVersion: rebalancerd/v1
    kind: Policy
    mode: balance

Pure (pydantic only): no file or network I/O here; loading lives in ``policy.load``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

API_VERSION = "rebalancerd/v1"

_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Mode(StrEnum):
    BALANCE = "balance"
    CONSOLIDATE = "consolidate"
    DRAIN = "drain"
    ADVISORY = "advisory"


Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
Name = Annotated[str, Field(min_length=1, max_length=253)]


class Scope(_Strict):
    """Which hosts and VMs a policy governs. Empty lists mean 'all'. Names accept shell globs."""

    hosts: list[Name] = Field(default_factory=list, description="Host names or globs.")
    host_tags: list[Name] = Field(default_factory=list, description="Hosts with any of these tags.")
    vms: list[Name] = Field(default_factory=list, description="VM names or globs.")
    vm_tags: list[Name] = Field(default_factory=list, description="VMs with any of these tags.")


class Weights(_Strict):
    cpu: Annotated[float, Field(ge=0, le=100)] = 1.0
    memory: Annotated[float, Field(ge=0, le=100)] = 1.0
    network: Annotated[float, Field(ge=0, le=100)] = 0.0

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if self.cpu + self.memory + self.network <= 0:
            raise ValueError("at least one weight must be > 0")
        return self


class Prediction(_Strict):
    """How CPU demand is predicted from recent samples."""

    window: Annotated[int, Field(ge=1, le=10_000)] = 12
    """Number of recent samples considered."""
    percentile: Annotated[float, Field(ge=1, le=100)] = 95


class Targets(_Strict):
    weights: Weights = Field(default_factory=Weights)
    high_watermark: Ratio = 0.85
    """A host above this weighted load is a hotspot."""
    low_watermark: Ratio = 0.20
    """A host below this is a consolidation candidate."""
    headroom: Annotated[float, Field(ge=0.0, le=0.9)] = 0.10
    """Fraction of each host's CPU and memory never planned away."""
    prediction: Prediction = Field(default_factory=Prediction)
    hysteresis: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    """Minimum improvement of the objective (imbalance, or power fraction) that justifies moving."""

    @model_validator(mode="after")
    def _watermarks(self) -> Targets:
        if self.low_watermark >= self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must be below "
                f"high_watermark ({self.high_watermark})"
            )
        return self


class Group(_Strict):
    name: Name
    vms: Annotated[list[Name], Field(min_length=2)]
    hard: bool = True
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0


class PinRule(_Strict):
    vm: Name
    hosts: Annotated[list[Name], Field(min_length=1)]
    hard: bool = True
    """hard = must run on one of the hosts; soft = should."""
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0


class MaintenanceWindow(_Strict):
    host: Name
    start: str | None = None
    """ISO 8601 date-time; absent = now."""
    end: str | None = None
    """ISO 8601 date-time; absent = until removed."""


class Rules(_Strict):
    affinity: list[Group] = Field(default_factory=list)
    anti_affinity: list[Group] = Field(default_factory=list)
    pins: list[PinRule] = Field(default_factory=list)
    exclusions: list[Name] = Field(default_factory=list)
    """VM names or globs that never migrate."""
    maintenance: list[MaintenanceWindow] = Field(default_factory=list)
    evacuate_degraded: bool = True


class TimeWindow(_Strict):
    days: list[Day] = Field(default_factory=lambda: list(_DAYS))
    start: str = "00:00"
    end: str = "24:00"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if v != "24:00" and not _TIME.match(v):
            raise ValueError(f"time {v!r} must be HH:MM (00:00-24:00)")
        return v


class Limits(_Strict):
    max_concurrent: Annotated[int, Field(ge=0, le=1000)] = 2
    max_per_source: Annotated[int, Field(ge=0, le=100)] = 1
    max_per_target: Annotated[int, Field(ge=0, le=100)] = 1
    max_per_cycle: Annotated[int, Field(ge=0, le=100_000)] = 10
    max_mib_per_hour: Annotated[int, Field(ge=0)] | None = None
    """Bytes budget (MiB) over a sliding hour; None = unlimited."""
    cooldown_s: Annotated[float, Field(ge=0, le=30 * 86400)] = 3600.0
    """A VM that moved is not moved again for this long."""
    windows: list[TimeWindow] = Field(default_factory=list)
    """Allowed windows; empty = always allowed."""
    blackouts: list[TimeWindow] = Field(default_factory=list)
    timezone: str = "UTC"


class MigrationSettingsSpec(_Strict):
    max_downtime_ms: Annotated[int, Field(ge=1, le=60_000)] = 300
    bandwidth_mib_s: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Upper bound for the bandwidth; None = unlimited."""
    auto_converge: bool = True
    postcopy_after_s: Annotated[float, Field(ge=0, le=86400)] | None = None
    time_budget_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    non_shared_disk: bool = False
    encrypted: bool = False


class MigrationClass(_Strict):
    name: Name
    vms: list[Name] = Field(default_factory=list)
    vm_tags: list[Name] = Field(default_factory=list)
    settings: MigrationSettingsSpec = Field(default_factory=MigrationSettingsSpec)


class Migration(_Strict):
    default: MigrationSettingsSpec = Field(default_factory=MigrationSettingsSpec)
    classes: list[MigrationClass] = Field(default_factory=list)


class PowerCurveSpec(_Strict):
    hosts: list[Name] = Field(default_factory=list)
    host_tags: list[Name] = Field(default_factory=list)
    watts: Annotated[list[Annotated[float, Field(ge=0, le=100_000)]], Field(min_length=2)]
    """Watts at evenly spaced load steps from 0 % to 100 %."""


class Energy(_Strict):
    power_curves: list[PowerCurveSpec] = Field(default_factory=list)
    min_active_hosts: Annotated[int, Field(ge=0)] = 1
    spare_capacity: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Fraction of the active hosts' capacity kept free when consolidating."""
    power_off: list[str] = Field(default_factory=list)
    """Argument list run to switch a host off; '{host}' is replaced by its name. Never a shell."""
    power_on: list[str] = Field(default_factory=list)

    @field_validator("power_off", "power_on")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if v and any(not a for a in v):
            raise ValueError("empty argument in command list")
        return v


class Policy(_Strict):
    apiVersion: Literal["rebalancerd/v1"]
    kind: Literal["Policy"]
    name: Name = "default"
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    mode: Mode = Mode.BALANCE
    dry_run: bool = False
    """Plan and log what would be done; the executor never calls the hypervisor."""
    scope: Scope = Field(default_factory=Scope)
    targets: Targets = Field(default_factory=Targets)
    rules: Rules = Field(default_factory=Rules)
    limits: Limits = Field(default_factory=Limits)
    migration: Migration = Field(default_factory=Migration)
    energy: Energy = Field(default_factory=Energy)


def default_policy() -> Policy:
    return Policy(apiVersion="rebalancerd/v1", kind="Policy")
