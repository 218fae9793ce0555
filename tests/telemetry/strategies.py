"""Hypothesis strategies of hostile telemetry (used by tests/telemetry/test_fuzz.py and
benchmarks/fuzz_telemetry.py)."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import strategies as st

from rebalancerd.telemetry.schema import status_topic, telemetry_topic

from .helpers import CLUSTER, report, vm

HOSTS = ["h1", "h2", "h3"]
NASTY_NAMES = [
    "h1;rm -rf /",
    "$(reboot)",
    "`id`",
    "h1 && curl x",
    "../../etc/passwd",
    "qemu+ssh://evil/system",
    "h1\n",
    "h1\x00",
    "-rf",
    "%s%s%n",
    "ünïcode",
    "a" * 300,
    "",
    "h1/h2",
    "+",
    "#",
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(NASTY_NAMES),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

_PATHS: list[tuple[Any, ...]] = [
    ("v",),
    ("kind",),
    ("cluster",),
    ("host",),
    ("boot",),
    ("seq",),
    ("ts",),
    ("interval_s",),
    ("libvirt_ok",),
    ("host_stats",),
    ("host_stats", "cores"),
    ("host_stats", "cpu_pct"),
    ("host_stats", "mem_total_mib"),
    ("host_stats", "mem_available_mib"),
    ("host_stats", "pressure"),
    ("host_stats", "pressure", "cpu_some"),
    ("host_stats", "cpu_per_core_pct"),
    ("host_stats", "temp_max_c"),
    ("health",),
    ("health", "degraded"),
    ("health", "reasons"),
    ("vms",),
    ("vms", 0),
    ("vms", 0, "name"),
    ("vms", 0, "vcpus"),
    ("vms", 0, "memory_mib"),
    ("vms", 0, "cpu_mc"),
    ("vms", 0, "memory_used_mib"),
    ("vms", 0, "state"),
    ("vms", 0, "dirty_rate_mib_s"),
    # v2
    ("host_stats", "cpu_model"),
    ("host_stats", "cpu_features"),
    ("host_stats", "cpu_features", 0),
    ("host_stats", "networks"),
    ("host_stats", "networks", 0),
    ("vms", 0, "dirty_rate_age_s"),
    ("vms", 0, "tags"),
    ("vms", 0, "tags", 0),
    ("vms", 0, "cpu_model"),
    ("vms", 0, "cpu_features"),
    ("vms", 0, "cpu_features", 0),
    ("vms", 0, "networks"),
    ("vms", 0, "networks", 0),
    ("vms", 0, "local_disk_mib"),
    ("vms", 0, "migratable"),
    ("vms", 0, "not_migratable_reason"),
]

V2_VM_FIELDS: dict[str, Any] = {
    "dirty_rate_age_s": 2.5,
    "tags": ["db", "tier-1"],
    "cpu_model": "",
    "cpu_features": ["avx2"],
    "networks": ["bridge:br0", "network:default"],
    "local_disk_mib": 10240,
    "migratable": True,
    "not_migratable_reason": "",
}
V2_HOST_FIELDS: dict[str, Any] = {
    "cpu_model": "Skylake-Client-IBRS",
    "cpu_features": ["avx2", "aes"],
    "networks": ["bridge:br0", "network:default"],
}


def as_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """A v1 report made v2: every new field set on the host and on each VM."""
    doc["v"] = 2
    doc["host_stats"].update(copy.deepcopy(V2_HOST_FIELDS))  # mutations must not leak
    for v in doc["vms"]:
        v.update(copy.deepcopy(V2_VM_FIELDS))
    return doc

_DELETE = object()


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    cur: Any = doc
    for p in path[:-1]:
        try:
            cur = cur[p]
        except (KeyError, IndexError, TypeError):
            return
    try:
        if value is _DELETE:
            del cur[path[-1]]
        else:
            cur[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return


@st.composite
def mutated_report(draw: st.DrawFn, now: float, seq: int) -> bytes:
    host = draw(st.sampled_from([*HOSTS, "h9"]))
    n_vms = draw(st.integers(0, 4))
    vms = [
        vm(draw(st.sampled_from(["a", "b", "c", "d", "e"])) + str(i), draw(st.floats(0, 3000)))
        for i in range(n_vms)
    ]
    doc = report(host, seq, now + draw(st.floats(-60, 60)), vms)
    if draw(st.booleans()):
        as_v2(doc)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_PATHS))
        value = draw(st.one_of(json_values, st.just(_DELETE)))
        _set(doc, path, value)
    text = json.dumps(doc)
    mode = draw(st.integers(0, 9))
    if mode == 0:  # truncate (a fraction: the draw must not depend on the text's length)
        text = text[: int(draw(st.floats(0.0, 1.0)) * len(text))]
    elif mode == 1:  # JSON extensions Python accepts but JSON forbids
        text = text.replace(
            "25.0", draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400"]))
        )
    return text.encode()


HUGE_NUMBERS = [
    "1e300",
    "-1e300",
    "1e-320",
    "1e400",
    str(2**63),
    str(2**64),
    str(-(2**63)),
    "9" * 400,
    "0.0000000000000000000000001",
]
_NUMERIC_PATHS = [p for p in _PATHS if p[-1] not in ("name", "state", "host", "cluster", "kind")]
SHARED_VMS = ["shared0", "shared1", "shared2", "shared3"]


@st.composite
def deeply_nested(draw: st.DrawFn, now: float, seq: int) -> bytes:
    """A report whose field (or an unknown extra field) holds arrays/objects nested 10..40,000
    deep."""
    depth = draw(st.integers(10, 40_000))  # up to ~240 KB: under the payload cap, decoded
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = "1" if opener != "[" else ""
    nest = opener * depth + inner + closer * depth
    doc = json.dumps(report(draw(st.sampled_from(HOSTS)), seq, now))
    field = draw(st.sampled_from(["vms", "health", "extra", "host_stats"]))
    return (doc[:-1] + f', "{field}": {nest}}}').encode()


@st.composite
def huge_numbers(draw: st.DrawFn, now: float, seq: int) -> bytes:
    """A valid report with numeric fields replaced by 1e300, 2^63, 400-digit integers..."""
    doc = report(draw(st.sampled_from(HOSTS)), seq, now, [vm("a"), vm("b")])
    text = json.dumps(doc)
    for _ in range(draw(st.integers(1, 3))):
        marker = "__HUGE__"
        _set(doc, draw(st.sampled_from(_NUMERIC_PATHS)), marker)
        text = json.dumps(doc).replace(f'"{marker}"', draw(st.sampled_from(HUGE_NUMBERS)))
    return text.encode()


@st.composite
def ownership_claim(draw: st.DrawFn, now: float, seq: int) -> tuple[str, bytes]:
    """A valid report from any host listing VMs from a pool every host may list (running or
    paused): claims to other hosts' VMs, live-migration overlaps, handovers."""
    host = draw(st.sampled_from(HOSTS))
    names = draw(st.lists(st.sampled_from(SHARED_VMS), max_size=4, unique=True))
    vms = [
        vm(n, draw(st.floats(0, 2000)), state=draw(st.sampled_from(["running", "paused"])))
        for n in names
    ]
    doc = report(host, seq, now + draw(st.floats(-5, 5)), vms)
    return telemetry_topic(CLUSTER, host), json.dumps(doc).encode()


@st.composite
def hostile_message(draw: st.DrawFn, now: float, seq: int) -> tuple[str, bytes]:
    kind = draw(st.integers(0, 12))
    host = draw(st.sampled_from([*HOSTS, *NASTY_NAMES[:6]]))
    if kind <= 5:
        topic = telemetry_topic(CLUSTER, draw(st.sampled_from([*HOSTS, host])))
        payload = draw(mutated_report(now, seq))
    elif kind == 6:
        topic = status_topic(CLUSTER, host)
        payload = draw(
            st.one_of(
                st.binary(max_size=64),
                st.builds(
                    lambda h, s: json.dumps(
                        {"v": 1, "kind": "status", "host": h, "status": s}
                    ).encode(),
                    st.sampled_from([*HOSTS, host]),
                    st.sampled_from(["online", "offline", "rebooting", ""]),
                ),
            )
        )
    elif kind == 7:
        topic = draw(st.text(max_size=60))
        payload = draw(st.binary(max_size=200))
    elif kind == 8:
        topic = telemetry_topic(CLUSTER, draw(st.sampled_from(HOSTS)))
        payload = draw(st.binary(max_size=300))
    elif kind == 9:
        topic = telemetry_topic(CLUSTER, draw(st.sampled_from(HOSTS)))
        payload = json.dumps(draw(json_values)).encode()
    elif kind == 10:
        topic = telemetry_topic(CLUSTER, draw(st.sampled_from(HOSTS)))
        payload = draw(deeply_nested(now, seq))
    elif kind == 11:
        topic = telemetry_topic(CLUSTER, draw(st.sampled_from(HOSTS)))
        payload = draw(huge_numbers(now, seq))
    else:
        topic, payload = draw(ownership_claim(now, seq))
    return topic, payload
