"""Policy models: what a policy file can say, with a documented default for every field.

A minimal policy is three lines::

    apiVersion: rebalancerd/v1
    kind: Policy
    mode: balance

Every field's docstring becomes its description in ``policies/schema.json`` and in
``docs/policies.md``. Pure (pydantic and stdlib only): no file or network I/O here; reading files
lives in ``adapters.policy_files``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

API_VERSION = "rebalancerd/v1"
SCHEMA_ID = "https://rebalancerd.invalid/schemas/policy-v1.json"

_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox"}


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
        strict=True,
    )
    """Strict types: a bool is not a number (``priority: true``), a number is not a bool
    (``dry_run: 1``), a string is not a number (``max_concurrent: "3"``), ``1.0`` is not an
    integer; an integer is a valid float. Enum fields take their string values (see `Mode`)."""


class Mode(StrEnum):
    """What the daemon tries to achieve."""

    BALANCE = "balance"
    """Even out the weighted load of the active hosts."""
    CONSOLIDATE = "consolidate"
    """Pack VMs onto few hosts so empty hosts can be switched off (energy)."""
    DRAIN = "drain"
    """Only empty hosts in maintenance (and degraded hosts); no balancing moves."""
    ADVISORY = "advisory"
    """Plan and explain, never act."""


def _finite(lo: float, hi: float, *, gt: bool = False) -> Any:
    if gt:
        return Field(gt=lo, le=hi, allow_inf_nan=False)
    return Field(ge=lo, le=hi, allow_inf_nan=False)


Ratio = Annotated[float, _finite(0.0, 1.0)]
Name = Annotated[str, Field(min_length=1, max_length=253)]
Weight = Annotated[float, _finite(0.0, 1000.0, gt=True)]


class Scope(_Strict):
    """Which hosts and VMs a policy governs. Empty lists mean 'all'. Names accept shell globs
    (``web-*``, ``db-[12]``)."""

    hosts: list[Name] = Field(default_factory=list, max_length=10_000)
    """Host names or globs. VMs on other hosts are not moved, and VMs only move to hosts in the
    scope. Default: [] (all hosts)."""
    host_tags: list[Name] = Field(default_factory=list, max_length=10_000)
    """Hosts carrying any of these tags. Default: []."""
    vms: list[Name] = Field(default_factory=list, max_length=10_000)
    """VM names or globs; VMs outside the scope are never moved by it. Default: [] (all)."""
    vm_tags: list[Name] = Field(default_factory=list, max_length=10_000)
    """VMs carrying any of these tags. Default: []."""


class Weights(_Strict):
    """Relative importance of each resource in a host's weighted load."""

    cpu: Annotated[float, _finite(0, 100)] = 1.0
    """Weight of CPU load. Default: 1.0."""
    memory: Annotated[float, _finite(0, 100)] = 1.0
    """Weight of memory load (allocated memory / host memory). Default: 1.0."""
    network: Annotated[float, _finite(0, 100)] = 0.0
    """Weight of network load. Default: 0.0 (not considered)."""

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if self.cpu + self.memory + self.network <= 0:
            raise ValueError("at least one weight must be > 0")
        return self


class Prediction(_Strict):
    """How CPU demand is predicted from recent samples."""

    window: Annotated[int, Field(ge=1, le=10_000)] = 12
    """Number of recent samples considered. Default: 12."""
    percentile: Annotated[float, _finite(1, 100)] = 95
    """Percentile of those samples used as the demand (never below current use). Default: 95."""


class MemoryBasis(StrEnum):
    USED = "used"
    CONFIGURED = "configured"


class Gaps(_Strict):
    """Largest acceptable spread (max - min of normalised load over active hosts) per resource;
    null = that resource has no target."""

    cpu: Annotated[float, _finite(0.001, 2.0)] | None = None
    """CPU gap target. Default: null."""
    memory: Annotated[float, _finite(0.001, 2.0)] | None = None
    """Memory gap target (on `memory_basis`). Default: null."""
    network: Annotated[float, _finite(0.001, 2.0)] | None = None
    """Network gap target. Default: null."""


class Targets(_Strict):
    """What a good placement looks like."""

    weights: Weights = Field(default_factory=Weights)
    """Resource weights. Default: cpu 1, memory 1, network 0."""
    high_watermark: Ratio = 0.85
    """A host above this weighted load is a hotspot. Default: 0.85."""
    low_watermark: Ratio = 0.20
    """A host below this is a consolidation candidate. Default: 0.20."""
    headroom: Annotated[float, _finite(0.0, 0.9)] = 0.10
    """Fraction of each host's CPU and memory never planned away. Default: 0.10."""
    prediction: Prediction = Field(default_factory=Prediction)
    """How load is predicted. Default: p95 of the last 12 samples."""
    hysteresis: Annotated[float, _finite(0.0, 1.0)] = 0.05
    """Minimum gain that justifies moving (prevents ping-pong). balance: the imbalance must drop
    by at least this much; consolidate: emptying a host must save at least this fraction of that
    host's power. Drains, evacuations and rule fixes always go ahead. Default: 0.05."""
    memory_basis: Annotated[MemoryBasis, Field(strict=False)] = MemoryBasis.USED
    """Memory load that is balanced: `used` (what the guest really uses, from the agent's
    balloon/RSS figures; configured size where not measured) or `configured` (allocated).
    Default: used."""
    memory_overcommit: Annotated[float, _finite(0.1, 100.0)] = 1.0
    """Hard limit on configured memory per host: configured <= physical x this ratio (like
    OpenStack's ram_allocation_ratio); used memory + headroom <= physical always holds too.
    Default: 1.0."""
    max_gap: Annotated[float, _finite(0.001, 2.0)] | Gaps | None = None
    """balance: the acceptable spread of each weighted resource (a number for all, or per
    resource); every host is brought inside the band mean +- max_gap / 2 with the fewest moves,
    and nothing moves once the band holds (0.10 is the value tuned on benchmarks/clusters.py).
    null = minimise the spread (no target). Default: null."""
    band: Gaps | None = None
    """Alternative to max_gap: the half-width of the band around the mean, per resource (wins
    over max_gap for the resources it names). Default: null."""

    @model_validator(mode="after")
    def _watermarks(self) -> Targets:
        if self.low_watermark >= self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must be below "
                f"high_watermark ({self.high_watermark})"
            )
        return self


class Group(_Strict):
    """An affinity group (VMs that must share a host) or anti-affinity group (VMs that must not)."""

    name: Name
    """Name shown in plans and explanations. Required."""
    vms: Annotated[list[Name], Field(min_length=2, max_length=10_000)]
    """At least two VM names or globs. Required."""
    hard: bool = True
    """hard = never violated; soft = violated only at a cost of `weight`. Default: true."""
    weight: Weight = 1.0
    """Penalty of a violation when soft. Default: 1.0."""


class PinRule(_Strict):
    """A VM that must (hard) or should (soft) run on one of some hosts."""

    vm: Name
    """VM name or glob. Required."""
    hosts: Annotated[list[Name], Field(min_length=1, max_length=10_000)]
    """Host names or globs it may run on (at least one). Required."""
    hard: bool = True
    """hard = must run on one of the hosts; soft = should. Default: true."""
    weight: Weight = 1.0
    """Penalty when a soft pin is not met. Default: 1.0."""


def _iso(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(
            f"{v!r} is not an ISO 8601 date-time (e.g. 2026-03-01T22:00:00+01:00)"
        ) from None
    return v


def iso_timestamp(v: str) -> float:
    """Epoch seconds of an ISO 8601 date-time; a naive one is read as UTC."""
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class MaintenanceWindow(_Strict):
    """A host in maintenance: it is drained and receives no VMs while the window is open."""

    host: Name
    """Host name or glob. Required."""
    start: str | None = None
    """ISO 8601 date-time (naive = UTC). Default: none (already started)."""
    end: str | None = None
    """ISO 8601 date-time (naive = UTC). Default: none (until the entry is removed)."""

    @field_validator("start", "end")
    @classmethod
    def _check_iso(cls, v: str | None) -> str | None:
        return _iso(v)

    @model_validator(mode="after")
    def _order(self) -> MaintenanceWindow:
        if (
            self.start is not None
            and self.end is not None
            and iso_timestamp(self.end) <= iso_timestamp(self.start)
        ):
            raise ValueError(f"end {self.end} is not after start {self.start}")
        return self


class Rules(_Strict):
    """Placement rules. Several policies' rules add up."""

    affinity: list[Group] = Field(default_factory=list, max_length=10_000)
    """Groups of VMs that must (hard) or should (soft) share one host. Default: []."""
    anti_affinity: list[Group] = Field(default_factory=list, max_length=10_000)
    """Groups of VMs that must (hard) or should (soft) run on different hosts. Default: []."""
    pins: list[PinRule] = Field(default_factory=list, max_length=10_000)
    """VM-to-host must/should rules. Default: []."""
    exclusions: list[Name] = Field(default_factory=list, max_length=10_000)
    """VM names or globs that never migrate. Default: []."""
    maintenance: list[MaintenanceWindow] = Field(default_factory=list, max_length=10_000)
    """Hosts in maintenance, optionally scheduled. Default: []."""
    evacuate_degraded: bool = True
    """Move VMs off hosts reported degraded. Default: true."""


class TimeWindow(_Strict):
    """A daily time window in the policy's time zone. `days` are the days the window *starts*; an
    end before the start wraps past midnight (22:00-06:00 on fri = fri 22:00 to sat 06:00)."""

    days: list[Day] = Field(default_factory=lambda: list(_DAYS), min_length=1, max_length=7)
    """Days the window starts on. Default: every day."""
    start: str = "00:00"
    """HH:MM. Default: 00:00."""
    end: str = "24:00"
    """HH:MM, or 24:00 for midnight at the end of the day. Default: 24:00."""

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if v != "24:00" and not _TIME.match(v):
            raise ValueError(f"time {v!r} must be HH:MM (00:00-24:00, quoted)")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if minutes(self.start) == minutes(self.end) or (self.start, self.end) == ("24:00", "00:00"):
            raise ValueError(f"window {self.start}-{self.end} is empty")
        return self


def minutes(hhmm: str) -> int:
    """Minutes since midnight of an HH:MM time (24:00 = 1440)."""
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class Limits(_Strict):
    """Throttles on migrations. When several policies apply, the most restrictive value wins."""

    max_concurrent: Annotated[int, Field(ge=0, le=1000)] = 2
    """Live migrations running at once in the whole cluster (0 = none). Default: 2."""
    max_per_source: Annotated[int, Field(ge=0, le=100)] = 1
    """Concurrent migrations out of one host. Default: 1."""
    max_per_target: Annotated[int, Field(ge=0, le=100)] = 1
    """Concurrent migrations into one host. Default: 1."""
    max_per_cycle: Annotated[int, Field(ge=0, le=100_000)] = 10
    """Migrations started per control cycle. Default: 10."""
    max_mib_per_hour: Annotated[int, Field(ge=0, le=10**12)] | None = None
    """Bytes budget (MiB) over a sliding hour; null = unlimited. Default: null."""
    cooldown_s: Annotated[float, _finite(0, 30 * 86400)] = 3600.0
    """A VM that moved is not moved again for this many seconds. Default: 3600."""
    return_guard_s: Annotated[float, _finite(0, 30 * 86400)] = 3600.0
    """A VM is not moved back to a host it left less than this many seconds ago (drains,
    evacuations and hosts a soft pin asks for are exempt); 0 = off. Default: 3600."""
    windows: list[TimeWindow] = Field(default_factory=list, max_length=1000)
    """Windows in which migrations may start; empty = always. Default: []."""
    blackouts: list[TimeWindow] = Field(default_factory=list, max_length=1000)
    """Windows in which no migration starts (wins over `windows`). Default: []."""
    timezone: str = "UTC"
    """IANA time zone of `windows` and `blackouts` (e.g. Europe/Paris). Default: UTC."""

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)


def check_timezone(v: str) -> str:
    """`v` if it names an IANA time zone, else ValueError with a one-line message."""
    ok = v == "UTC"  # valid even where the tz database is not installed
    if not ok and 0 < len(v) <= 64 and "\x00" not in v:
        try:
            ZoneInfo(v)
            ok = True
        except Exception:  # ZoneInfoNotFoundError, ValueError, OSError on odd keys
            ok = False
    if not ok:
        raise ValueError(f"unknown time zone {v[:64]!r} (use an IANA name like Europe/Paris)")
    return v


class MigrationSettingsSpec(_Strict):
    """How one live migration runs."""

    max_downtime_ms: Annotated[int, Field(ge=1, le=60_000)] = 300
    """Maximum guest pause at switch-over, milliseconds. Default: 300."""
    bandwidth_mib_s: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Upper bound for the bandwidth in MiB/s; null = unlimited. Default: null."""
    auto_converge: bool = True
    """Let QEMU throttle a guest that dirties memory faster than it can be sent. Default: true."""
    postcopy_after_s: Annotated[float, _finite(0, 86400)] | None = None
    """Switch to post-copy after this many seconds if not converged; null = never. Default: null."""
    time_budget_s: Annotated[float, _finite(0, 86400, gt=True)] = 300.0
    """Hard limit: when exceeded the migration is aborted (VM stays on the source). Default: 300."""
    non_shared_disk: bool = False
    """Also copy non-shared (local) storage. Default: false."""
    encrypted: bool = False
    """Use the encrypted (TLS) migration transport. Default: false."""

    @model_validator(mode="after")
    def _postcopy_in_budget(self) -> MigrationSettingsSpec:
        if self.postcopy_after_s is not None and self.postcopy_after_s >= self.time_budget_s:
            raise ValueError(
                f"postcopy_after_s ({self.postcopy_after_s}) must be below time_budget_s "
                f"({self.time_budget_s}), else post-copy never starts"
            )
        return self


class MigrationClass(_Strict):
    """Migration settings for a class of VMs (first matching class wins)."""

    name: Name
    """Class name. Required."""
    vms: list[Name] = Field(default_factory=list, max_length=10_000)
    """VM names or globs in the class. Default: []."""
    vm_tags: list[Name] = Field(default_factory=list, max_length=10_000)
    """VMs with any of these tags are in the class. Default: []."""
    settings: MigrationSettingsSpec = Field(default_factory=MigrationSettingsSpec)
    """Settings for the class. Default: the defaults of `migration.default`'s fields."""


class Migration(_Strict):
    """Live-migration settings."""

    default: MigrationSettingsSpec = Field(default_factory=MigrationSettingsSpec)
    """Settings for VMs in no class."""
    classes: list[MigrationClass] = Field(default_factory=list, max_length=1000)
    """Per-class settings; the first class a VM matches applies. Default: []."""


class PowerCurveSpec(_Strict):
    """The power draw of some hosts."""

    hosts: list[Name] = Field(default_factory=list, max_length=10_000)
    """Host names or globs; empty and no tags = every host. Default: []."""
    host_tags: list[Name] = Field(default_factory=list, max_length=10_000)
    """Hosts with any of these tags. Default: []."""
    watts: Annotated[
        list[Annotated[float, _finite(0, 100_000)]], Field(min_length=2, max_length=101)
    ]
    """Watts at evenly spaced load steps from 0 % to 100 % (2 to 101 points). Required."""


class Energy(_Strict):
    """Energy saving (used by `consolidate`)."""

    power_curves: list[PowerCurveSpec] = Field(default_factory=list, max_length=1000)
    """Host power curves; the first matching entry applies. Default: [] (host's own curve)."""
    min_active_hosts: Annotated[int, Field(ge=0, le=1_000_000)] = 1
    """Never switch off hosts below this many active ones. Default: 1."""
    spare_capacity: Ratio = 0.0
    """Fraction of the active hosts' capacity kept free when consolidating. Default: 0.0."""
    power_off: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=256
    )
    """Argument list run to switch a host off; '{host}' is replaced by its name. Never a shell
    string; hosts with an inventory power driver use that instead. Default: []."""
    power_on: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=256
    )
    """Argument list run to switch a host on; '{host}' is replaced. Default: []."""
    switch_off: bool = False
    """In consolidate mode, switch emptied hosts off through their power driver (inventory
    `power:`; the hooks above serve hosts without one) and on again ahead of demand. Giving
    `power_off`/`power_on` switches it on too. Default: false."""
    spare_hosts: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Hosts kept on beyond what the predicted demand needs. Default: 0."""
    boot_lead_s: Annotated[float, _finite(0, 86_400)] = 300.0
    """How long a host takes to come back: hosts are woken this far ahead of the demand
    predicted from the cluster's trend. Default: 300."""
    wake_timeout_s: Annotated[float, _finite(10, 86_400)] = 900.0
    """A woken host not verified back (BMC on, libvirtd reachable, agent fresh) within this
    long is FAILED_WAKE: it receives nothing and an alert fires. Default: 900."""
    max_power_actions_per_hour: Annotated[int, Field(ge=0, le=10_000)] = 4
    """Power-offs and power-ons started in any sliding hour (0 = none). Default: 4."""

    @field_validator("power_off", "power_on")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if not v:
            return v
        if any(not a for a in v):
            raise ValueError("empty argument in command list")
        prog = v[0].rsplit("/", 1)[-1]
        if prog in _SHELLS:
            raise ValueError(f"{v[0]!r}: give the program and its arguments, never a shell")
        if " " in v[0]:
            raise ValueError(
                f"{v[0]!r} contains a space: give an argument list "
                "(['ipmitool', '-H', '{host}', ...]), not a command string"
            )
        return v

    @model_validator(mode="after")
    def _on_with_off(self) -> Energy:
        if self.power_off and not self.power_on:
            raise ValueError("power_off without power_on: a host switched off could not come back")
        return self

    @property
    def switching(self) -> bool:
        """Hosts may be switched off (explicitly, or by giving the old hooks)."""
        return self.switch_off or bool(self.power_off)


class Schedule(_Strict):
    """When a policy is in force: weekly windows in a time zone. Outside them the policy does not
    count at all (mode, targets, rules and limits alike), see docs/policies.md "Schedules"."""

    windows: list[TimeWindow] = Field(min_length=1, max_length=1000)
    """Windows in which the policy is in force (days, start, end as in `limits.windows`)."""
    timezone: str = "UTC"
    """IANA time zone of the windows (e.g. Europe/Paris). Default: UTC."""

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)
class HaGroup(_Strict):
    """VMs restarted on another host when their host dies (after it is fenced)."""

    name: Name
    """Group name (shown in status and logs). Required."""
    vms: list[Name] = Field(default_factory=list, max_length=10_000)
    """VM names or globs in the group. Default: []."""
    vm_tags: list[Name] = Field(default_factory=list, max_length=10_000)
    """VMs with any of these tags are in the group. Default: []."""
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    """Restart order: higher first (then by VM name). Default: 0."""


class HighAvailability(_Strict):
    """Restarting the VMs of a dead host elsewhere, only once the host is fenced (confirmed off
    through its power driver). A VM in several groups takes the highest priority."""

    groups: list[HaGroup] = Field(default_factory=list, max_length=1000)
    """The HA VMs, by name or tag. Default: [] (no VM is restarted, dead hosts are reported)."""
    dead_after_probes: Annotated[int, Field(ge=1, le=1000)] = 3
    """A stale host is dead when its libvirtd did not answer this many consecutive cycles.
    Default: 3."""


class Policy(_Strict):
    """A rebalancerd policy file."""

    apiVersion: Literal["rebalancerd/v1"]
    """Format version. Required: rebalancerd/v1."""
    kind: Literal["Policy"]
    """Required: Policy."""
    name: Name = "default"
    """Name shown in plans, logs and metrics; unique in a policy directory. Default: default."""
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    """When several policies apply, the highest priority decides mode, targets, migration and
    energy. Default: 0."""
    mode: Annotated[Mode, Field(strict=False)] = Mode.BALANCE
    """balance, consolidate, drain or advisory. A policy that does not set `mode` never decides
    the mode when other policies apply (it adds rules and limits only). Default: balance."""
    schedule: Schedule | None = None
    """Weekly windows in which this policy is in force; null = always. Default: null."""
    dry_run: bool = False
    """Plan and log what would be done; the executor never calls the hypervisor. Default: false."""
    scope: Scope = Field(default_factory=Scope)
    """Hosts and VMs governed. Default: all."""
    targets: Targets = Field(default_factory=Targets)
    """Goals of the placement."""
    rules: Rules = Field(default_factory=Rules)
    """Placement rules. Default: none."""
    limits: Limits = Field(default_factory=Limits)
    """Migration throttles."""
    migration: Migration = Field(default_factory=Migration)
    """How live migrations run: default settings and per-class settings."""
    energy: Energy = Field(default_factory=Energy)
    """Energy saving."""
    ha: HighAvailability = Field(default_factory=HighAvailability)
    """Dead hosts: which VMs are restarted elsewhere after fencing. Default: none."""


def default_policy() -> Policy:
    return Policy(apiVersion="rebalancerd/v1", kind="Policy")


def _fill_factory_defaults(schema: dict[str, Any]) -> None:
    """pydantic leaves out defaults made by a factory; editors want to show them."""
    defs = schema.get("$defs", {})
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel], props: dict[str, Any]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, f in model.model_fields.items():
            if f.default_factory is not None and name in props and "default" not in props[name]:
                value = f.default_factory()  # type: ignore[call-arg]
                if isinstance(value, BaseModel):
                    value = value.model_dump(mode="json")
                props[name]["default"] = value
            for sub in _models_in(f.annotation):
                walk(sub, defs.get(sub.__name__, {}).get("properties", {}))

    walk(Policy, schema["properties"])


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in getattr(tp, "__args__", ()) for m in _models_in(a)]


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file (committed as policies/schema.json)."""
    schema = Policy.model_json_schema(mode="validation")
    _fill_factory_defaults(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }


def policy_json_schema_text() -> str:
    return json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"
