"""Hypothesis strategies of hostile telemetry (used by tests/telemetry/test_fuzz.py and
benchmarks/fuzz_telemetry.py)."""

from __future__ import annotations

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
]

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


@st.composite
def hostile_message(draw: st.DrawFn, now: float, seq: int) -> tuple[str, bytes]:
    kind = draw(st.integers(0, 9))
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
    else:
        topic = telemetry_topic(CLUSTER, draw(st.sampled_from(HOSTS)))
        payload = json.dumps(draw(json_values)).encode()
    return topic, payload
