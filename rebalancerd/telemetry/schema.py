"""Telemetry wire format v2 (v1 still accepted): what an agent publishes, and the pure decoder
the collector uses.

Topics (``<cluster>`` and ``<host>`` are plain names, see ``NAME_RE``):

- ``rebalancer/v1/<cluster>/hosts/<host>/telemetry``: one JSON report per interval, QoS 1.
- ``rebalancer/v1/<cluster>/hosts/<host>/status``: retained ``online``/``offline`` JSON status;
  ``offline`` is also the agent's MQTT Last Will.

Units on the wire: CPU of a VM in millicores of the *host's own* cores (1000 = one core busy),
memory in MiB, throughput in bytes/s, pressure in percent (avg10), temperatures in degrees C.
The collector converts CPU to reference millicores with the inventory's ``speed``.

Pure: msgspec and the stdlib only, no I/O. ``decode_report`` never raises: it returns either a
``TelemetryV1`` or a ``Rejection`` naming one ``RejectReason``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION = 2
ACCEPTED_VERSIONS = (1, 2)
TOPIC_ROOT = "rebalancer/v1"
MAX_NAME_LEN = 128
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)
"""Host, cluster and VM names: letters, digits, ``_``, ``.``, ``-``; no shell/URI metacharacters."""

MAX_VMS_PER_REPORT = 2000
MAX_CORES = 4096
MAX_TAGS = 32
MAX_CPU_FEATURES = 512
MAX_VM_NETWORKS = 64
MAX_HOST_NETWORKS = 256
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}$"
NET_PATTERN = r"^(network|bridge):[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
FEATURE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class RejectReason(StrEnum):
    OVERSIZE = "oversize"
    BAD_TOPIC = "bad_topic"
    BAD_NAME = "bad_name"
    UNKNOWN_HOST = "unknown_host"
    RATE_LIMITED = "rate_limited"
    MALFORMED_JSON = "malformed_json"
    SCHEMA_VERSION = "schema_version"
    MISSING_FIELD = "missing_field"
    INVALID_VALUE = "invalid_value"
    OVER_CAPACITY = "over_capacity"
    HOST_MISMATCH = "host_mismatch"
    CLUSTER_MISMATCH = "cluster_mismatch"
    DUPLICATE_VM = "duplicate_vm"
    SEQ_REPLAYED = "seq_replayed"
    SEQ_OUT_OF_ORDER = "seq_out_of_order"
    CLOCK_SKEW = "clock_skew"
    QUEUE_FULL = "queue_full"
    """Dropped by the MQTT adapter because the collector fell behind (bounded inbox)."""
    VM_OWNED_ELSEWHERE = "vm_owned_elsewhere"
    """One VM of an accepted report, not the message: the report listed a VM running on another
    host whose fresh reports keep listing it; the VM stays there (see Collector)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str = ""


# ---------------------------------------------------------------------------------------------
# Models (msgspec: decoding + validation in C, about twice as fast as pydantic on a report; the
# JSON Schema shipped in rebalancerd/schemas/telemetry-v2.json is generated from these)


Name = Annotated[str, Meta(pattern=NAME_PATTERN, max_length=MAX_NAME_LEN)]
NonNeg = Annotated[float, Meta(ge=0, le=1e15)]
Pct = Annotated[float, Meta(ge=0, le=100.0)]
Count = Annotated[int, Meta(ge=0, le=1 << 62)]
Mib = Annotated[int, Meta(gt=0, le=1 << 40)]
Tag = Annotated[str, Meta(pattern=TAG_PATTERN, max_length=64)]
NetName = Annotated[str, Meta(pattern=NET_PATTERN, max_length=136)]
Feature = Annotated[str, Meta(pattern=FEATURE_PATTERN, max_length=64)]
CpuModel = Annotated[str, Meta(max_length=128, pattern=r"^[A-Za-z0-9_.+ -]*$")]
Features = Annotated[tuple[Feature, ...], Meta(max_length=MAX_CPU_FEATURES)]


class Pressure(Struct, frozen=True, kw_only=True, gc=False):
    """Linux pressure stall information, ``avg10`` percentages (absent when not available)."""

    cpu_some: Pct | None = None
    memory_some: Pct | None = None
    memory_full: Pct | None = None
    io_some: Pct | None = None
    io_full: Pct | None = None


class HostStats(Struct, frozen=True, kw_only=True, gc=False):
    cores: Annotated[int, Meta(gt=0, le=MAX_CORES)]
    cpu_pct: Pct
    cpu_per_core_pct: Annotated[tuple[Pct, ...], Meta(max_length=MAX_CORES)] = ()
    load: Annotated[tuple[NonNeg, ...], Meta(max_length=3)] = ()
    """1, 5 and 15 minute load averages."""
    mem_total_mib: Mib
    mem_available_mib: Annotated[int, Meta(ge=0, le=1 << 40)]
    net_rx_bytes_s: NonNeg = 0.0
    net_tx_bytes_s: NonNeg = 0.0
    disk_read_bytes_s: NonNeg = 0.0
    disk_write_bytes_s: NonNeg = 0.0
    pressure: Pressure = Pressure()
    temp_max_c: Annotated[float, Meta(ge=-100, le=300)] | None = None
    # v2
    cpu_model: CpuModel = ""
    """Host CPU model (libvirt capabilities), '' = not reported."""
    cpu_features: Features = ()
    networks: Annotated[tuple[NetName, ...], Meta(max_length=MAX_HOST_NETWORKS)] | None = None
    """Active libvirt networks and Linux bridges here; null = not reported (unknown)."""

    def __post_init__(self) -> None:
        if self.mem_available_mib > self.mem_total_mib:
            raise ValueError("mem_available_mib exceeds mem_total_mib")


class Health(Struct, frozen=True, kw_only=True, gc=False):
    degraded: bool = False
    reasons: Annotated[tuple[Annotated[str, Meta(max_length=200)], ...], Meta(max_length=16)] = ()


class VmStats(Struct, frozen=True, kw_only=True, gc=False):
    name: Name
    state: Literal["running", "paused", "other"] = "running"
    vcpus: Annotated[int, Meta(gt=0, le=MAX_CORES)]
    memory_mib: Mib
    """Memory the guest may use (current balloon target / max memory)."""
    cpu_mc: Annotated[float, Meta(ge=0, le=MAX_CORES * 1000 * 2)]
    """CPU use over the last interval, millicores of host cores (from cpu.time deltas)."""
    memory_used_mib: Annotated[int, Meta(ge=0, le=1 << 40)] | None = None
    """Memory actually used (balloon rss, else current - unused); null/absent = not measured."""
    block_rd_bytes_s: NonNeg = 0.0
    block_wr_bytes_s: NonNeg = 0.0
    net_rx_bytes_s: NonNeg = 0.0
    net_tx_bytes_s: NonNeg = 0.0
    dirty_rate_mib_s: NonNeg | None = None
    """Guest memory dirty rate when QEMU measured it, else null (never 0 for unknown)."""
    # v2
    dirty_rate_age_s: NonNeg | None = None
    """Seconds since that measurement ended; null when there is none."""
    tags: Annotated[tuple[Tag, ...], Meta(max_length=MAX_TAGS)] = ()
    cpu_model: CpuModel = ""
    """CPU model the guest needs on the target ('' = any: a host-passthrough guest only)."""
    cpu_features: Features = ()
    """CPU features the guest requires."""
    networks: Annotated[tuple[NetName, ...], Meta(max_length=MAX_VM_NETWORKS)] = ()
    local_disk_mib: Annotated[int, Meta(ge=0, le=1 << 40)] = 0
    """Non-shared disk data a migration must copy, MiB (0 = all storage shared)."""
    migratable: bool = True
    not_migratable_reason: Annotated[str, Meta(max_length=200)] = ""


class TelemetryV1(Struct, frozen=True, kw_only=True, gc=False):
    """A telemetry report, v1 or v2 (v2 only adds optional fields; ``v`` says which)."""

    v: Literal[1, 2]
    kind: Literal["telemetry"] = "telemetry"
    cluster: Name
    host: Name
    boot: Count
    """Agent start time in ms since the epoch: names the agent process; seq orders its reports."""
    seq: Count
    ts: Annotated[float, Meta(gt=0, le=1e11)]
    """Wall-clock seconds since the epoch when the sample was taken."""
    interval_s: Annotated[float, Meta(gt=0, le=86400)]
    libvirt_ok: bool = True
    host_stats: HostStats
    health: Health = Health()
    vms: Annotated[tuple[VmStats, ...], Meta(max_length=MAX_VMS_PER_REPORT)] = ()


class StatusV1(Struct, frozen=True, kw_only=True, gc=False):
    v: Literal[1]
    kind: Literal["status"] = "status"
    host: Name
    status: Literal["online", "offline"]


_REPORT = msgspec.json.Decoder(TelemetryV1)
_STATUS = msgspec.json.Decoder(StatusV1)


# ---------------------------------------------------------------------------------------------
# Topics


def telemetry_topic(cluster: str, host: str) -> str:
    return f"{TOPIC_ROOT}/{cluster}/hosts/{host}/telemetry"


def status_topic(cluster: str, host: str) -> str:
    return f"{TOPIC_ROOT}/{cluster}/hosts/{host}/status"


def subscription_topics(cluster: str) -> list[str]:
    return [
        f"{TOPIC_ROOT}/{cluster}/hosts/+/telemetry",
        f"{TOPIC_ROOT}/{cluster}/hosts/+/status",
    ]


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """(cluster, host, kind) of a telemetry or status topic, or None if it is not one."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != "rebalancer" or parts[1] != "v1" or parts[3] != "hosts":
        return None
    kind = parts[5]
    if kind not in ("telemetry", "status"):
        return None
    return parts[2], parts[4], kind


# ---------------------------------------------------------------------------------------------
# Decoding

_AT = re.compile(r" - at `\$(.*)`$")


def _classify(err: Exception, payload: bytes | str) -> Rejection:
    msg = str(err)
    detail = msg[:200]
    if isinstance(err, msgspec.DecodeError) and not isinstance(err, msgspec.ValidationError):
        raw = payload.encode() if isinstance(payload, str) else payload
        if b"NaN" in raw or b"Infinity" in raw:
            return Rejection(RejectReason.INVALID_VALUE, "NaN/Infinity is not a number here")
        return Rejection(RejectReason.MALFORMED_JSON, detail)
    m = _AT.search(msg)
    path = m.group(1) if m else ""
    if path == ".v" or (msg.startswith("Object missing required field `v`") and not path):
        return Rejection(RejectReason.SCHEMA_VERSION, detail)
    if not path and msg.startswith("Expected `object`"):
        return Rejection(RejectReason.MALFORMED_JSON, detail)
    if "matching regex" in msg:
        return Rejection(RejectReason.BAD_NAME, detail)
    if msg.startswith("Object missing required field"):
        return Rejection(RejectReason.MISSING_FIELD, detail)
    return Rejection(RejectReason.INVALID_VALUE, detail)


def decode_report(payload: bytes | str) -> TelemetryV1 | Rejection:
    """Validate one telemetry payload. Never raises."""
    try:
        report = _REPORT.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return _classify(e, payload)
    except (ValueError, RecursionError, TypeError) as e:  # pragma: no cover - defensive
        return Rejection(RejectReason.MALFORMED_JSON, str(e)[:200])
    vms = report.vms
    if len(vms) > 1 and len({vm.name for vm in vms}) != len(vms):
        return Rejection(RejectReason.DUPLICATE_VM, "a VM name appears twice in one report")
    return report


def decode_status(payload: bytes | str) -> StatusV1 | Rejection:
    try:
        return _STATUS.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return _classify(e, payload)
    except (ValueError, RecursionError, TypeError) as e:  # pragma: no cover - defensive
        return Rejection(RejectReason.MALFORMED_JSON, str(e)[:200])


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a telemetry report (shipped as rebalancerd/schemas/telemetry-v2.json)."""
    schema: dict[str, Any] = msgspec.json.schema(TelemetryV1)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://rebalancerd.example/schemas/telemetry-v2.json"
    schema["title"] = "rebalancerd telemetry report v2 (v1 accepted)"
    return schema


def encode(doc: Struct) -> bytes:
    return msgspec.json.encode(doc)


__all__ = [
    "ACCEPTED_VERSIONS",
    "NAME_RE",
    "SCHEMA_VERSION",
    "Health",
    "HostStats",
    "Pressure",
    "RejectReason",
    "Rejection",
    "StatusV1",
    "TelemetryV1",
    "VmStats",
    "decode_report",
    "decode_status",
    "json_schema",
    "parse_topic",
    "status_topic",
    "subscription_topics",
    "telemetry_topic",
]
