"""Cluster snapshot file: versioned JSON <-> domain ClusterSnapshot.

The file format is documented in docs/snapshot.md; its JSON Schema (generated from the models
below) ships as rebalancerd/schemas/snapshot-v1.json and a test keeps the two in sync.
CPU figures in the file are in cores (floats, easy to read); the domain uses millicores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rebalancerd.domain.model import (
    AffinityGroup,
    ClusterRules,
    ClusterSnapshot,
    Host,
    HostState,
    Pin,
    PowerCurve,
    Vm,
)

SNAPSHOT_VERSION = 1
MAX_SNAPSHOT_BYTES = 512 * 1024 * 1024


class SnapshotError(Exception):
    """A snapshot file that cannot be read; the message is one line naming the problem."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Bounds: far above any real cluster, and low enough that no sum, product or scaling the planner
# does with them can overflow a 64-bit integer or a float (1e300 cores, 2**63 MiB or a weight of
# 1e308 used to crash the solver, or print Infinity in a plan).
MAX_MIB = 1 << 40
"""1 EiB."""
MAX_CORES_USED = 1_000_000.0
MAX_DIRTY_MIB_S = 1e9
MAX_WEIGHT = 1e6
MAX_WATTS = 1e7
MAX_EPOCH_S = 1e11

Cores = Annotated[float, Field(ge=0, le=MAX_CORES_USED, allow_inf_nan=False)]
Mib = Annotated[int, Field(gt=0, le=MAX_MIB)]
Mib0 = Annotated[int, Field(ge=0, le=MAX_MIB)]
Weight = Annotated[float, Field(gt=0, le=MAX_WEIGHT, allow_inf_nan=False)]


class HostDoc(_M):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    cores: Annotated[int, Field(gt=0, le=100_000)]
    memory_mib: Mib
    state: HostState = HostState.ACTIVE
    tags: list[str] = Field(default_factory=list)
    speed: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 1.0
    power_curve: list[Annotated[float, Field(ge=0, le=MAX_WATTS, allow_inf_nan=False)]] | None = (
        Field(default=None, description="Watts at evenly spaced load steps 0..100 %.")
    )
    cpu_model: str = ""
    cpu_features: list[str] = Field(default_factory=list)
    networks: list[str] | None = Field(
        default=None, description="Networks/bridges here; null or absent = unknown."
    )
    net_capacity_bytes_s: Annotated[float, Field(gt=0, le=1e13, allow_inf_nan=False)] = 1.25e9


class VmDoc(_M):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    host: Annotated[str, Field(min_length=1)]
    vcpus: Annotated[int, Field(gt=0, le=10_000)]
    memory_mib: Mib
    cpu_used: Cores = Field(default=0.0, description="CPU in use, in reference cores.")
    memory_used_mib: Mib0 = 0
    cpu_history: list[Cores] = Field(default_factory=list, description="Recent CPU, cores.")
    dirty_rate_mib_s: (
        Annotated[float, Field(ge=0, le=MAX_DIRTY_MIB_S, allow_inf_nan=False)] | None
    ) = None
    """Measured dirty rate; null or absent = not measured (not the same as 0)."""
    tags: list[str] = Field(default_factory=list)
    local_disk_mib: Mib0 = 0
    migratable: bool = True
    cpu_model: str = ""
    required_cpu_features: list[str] = Field(default_factory=list)
    networks: list[str] = Field(default_factory=list)
    net_bytes_s: Annotated[float, Field(ge=0, le=1e13, allow_inf_nan=False)] = 0.0


class GroupDoc(_M):
    name: str
    vms: list[str]
    hard: bool = True
    weight: Weight = 1.0


class PinDoc(_M):
    vm: str
    hosts: list[str]
    hard: bool = True
    weight: Weight = 1.0


class RulesDoc(_M):
    affinity: list[GroupDoc] = Field(default_factory=list)
    anti_affinity: list[GroupDoc] = Field(default_factory=list)
    pins: list[PinDoc] = Field(default_factory=list)
    exclusions: list[str] = Field(default_factory=list)


class SnapshotDoc(_M):
    version: Literal[1]
    taken_at: (
        Annotated[float, Field(ge=-MAX_EPOCH_S, le=MAX_EPOCH_S, allow_inf_nan=False)] | None
    ) = None
    hosts: list[HostDoc]
    vms: list[VmDoc] = Field(default_factory=list)
    rules: RulesDoc = Field(default_factory=RulesDoc)


def _mc(cores: float) -> int:
    return round(cores * 1000)


def from_doc(doc: SnapshotDoc) -> ClusterSnapshot:
    hosts = tuple(
        Host(
            name=h.name,
            cores=h.cores,
            memory_mib=h.memory_mib,
            state=h.state,
            tags=frozenset(h.tags),
            speed=h.speed,
            power_curve=PowerCurve(tuple(h.power_curve)) if h.power_curve else None,
            cpu_model=h.cpu_model,
            cpu_features=frozenset(h.cpu_features),
            networks=frozenset(h.networks) if h.networks is not None else None,
            net_capacity_bytes_s=h.net_capacity_bytes_s,
        )
        for h in doc.hosts
    )
    vms = tuple(
        Vm(
            name=v.name,
            host=v.host,
            vcpus=v.vcpus,
            memory_mib=v.memory_mib,
            cpu_used_mc=_mc(v.cpu_used),
            memory_used_mib=v.memory_used_mib,
            cpu_history_mc=tuple(_mc(c) for c in v.cpu_history),
            dirty_rate_mib_s=v.dirty_rate_mib_s,
            tags=frozenset(v.tags),
            local_disk_mib=v.local_disk_mib,
            migratable=v.migratable,
            cpu_model=v.cpu_model,
            required_cpu_features=frozenset(v.required_cpu_features),
            networks=frozenset(v.networks),
            net_bytes_s=v.net_bytes_s,
        )
        for v in doc.vms
    )
    r = doc.rules
    groups = tuple(
        [AffinityGroup(g.name, frozenset(g.vms), False, g.hard, g.weight) for g in r.affinity]
        + [AffinityGroup(g.name, frozenset(g.vms), True, g.hard, g.weight) for g in r.anti_affinity]
    )
    pins = tuple(Pin(p.vm, frozenset(p.hosts), p.hard, p.weight) for p in r.pins)
    rules = ClusterRules(groups, pins, frozenset(r.exclusions))
    return ClusterSnapshot(hosts, vms, rules, doc.taken_at)


def to_dict(snap: ClusterSnapshot) -> dict[str, Any]:
    def cores(mc: int) -> float:
        return mc / 1000.0

    return {
        "version": SNAPSHOT_VERSION,
        "taken_at": snap.taken_at,
        "hosts": [
            {
                "name": h.name,
                "cores": h.cores,
                "memory_mib": h.memory_mib,
                "state": h.state.value,
                "tags": sorted(h.tags),
                "speed": h.speed,
                "power_curve": list(h.power_curve.watts) if h.power_curve else None,
                "cpu_model": h.cpu_model,
                "cpu_features": sorted(h.cpu_features),
                "networks": sorted(h.networks) if h.networks is not None else None,
                "net_capacity_bytes_s": h.net_capacity_bytes_s,
            }
            for h in snap.hosts
        ],
        "vms": [
            {
                "name": v.name,
                "host": v.host,
                "vcpus": v.vcpus,
                "memory_mib": v.memory_mib,
                "cpu_used": cores(v.cpu_used_mc),
                "memory_used_mib": v.memory_used_mib,
                "cpu_history": [cores(c) for c in v.cpu_history_mc],
                "dirty_rate_mib_s": v.dirty_rate_mib_s,
                "tags": sorted(v.tags),
                "local_disk_mib": v.local_disk_mib,
                "migratable": v.migratable,
                "cpu_model": v.cpu_model,
                "required_cpu_features": sorted(v.required_cpu_features),
                "networks": sorted(v.networks),
                "net_bytes_s": v.net_bytes_s,
            }
            for v in snap.vms
        ],
        "rules": {
            "affinity": [
                {"name": g.name, "vms": sorted(g.vms), "hard": g.hard, "weight": g.weight}
                for g in snap.rules.groups
                if not g.anti
            ],
            "anti_affinity": [
                {"name": g.name, "vms": sorted(g.vms), "hard": g.hard, "weight": g.weight}
                for g in snap.rules.groups
                if g.anti
            ],
            "pins": [
                {"vm": p.vm, "hosts": sorted(p.hosts), "hard": p.hard, "weight": p.weight}
                for p in snap.rules.pins
            ],
            "exclusions": sorted(snap.rules.exclusions),
        },
    }


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{loc}: {err['msg']}{more}"


def loads(text: str | bytes, source: str = "<snapshot>") -> ClusterSnapshot:
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{source}: not valid JSON: {e}") from None
    except RecursionError:
        raise SnapshotError(f"{source}: JSON nested too deeply") from None
    except ValueError as e:
        raise SnapshotError(f"{source}: {e}") from None
    if not isinstance(raw, dict):
        raise SnapshotError(f"{source}: top level must be a JSON object")
    if raw.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"{source}: unsupported snapshot version {raw.get('version')!r} "
            f"(expected {SNAPSHOT_VERSION})"
        )
    try:
        doc = SnapshotDoc.model_validate(raw)
    except ValidationError as e:
        raise SnapshotError(f"{source}: {_first_error(e)}") from None
    try:
        return from_doc(doc)
    except ValueError as e:
        raise SnapshotError(f"{source}: {e}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a snapshot")


def dumps(snap: ClusterSnapshot, indent: int | None = 2) -> str:
    return json.dumps(to_dict(snap), indent=indent, allow_nan=False)


def json_schema() -> dict[str, Any]:
    schema = SnapshotDoc.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rebalancerd cluster snapshot v1"
    return schema


def schema_path() -> Path:
    return Path(__file__).parent / "schemas" / "snapshot-v1.json"
