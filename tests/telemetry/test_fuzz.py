"""Property-based fuzz of the decoder and collector: no input crashes it, every message is
either accepted or rejected-and-counted, and state stays bounded. benchmarks/fuzz_telemetry.py
runs the same strategies over >= 100,000 inputs."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebalancerd.domain.model import HostState
from rebalancerd.observability import MemoryMetrics
from rebalancerd.telemetry.collector import Collector, CollectorSettings
from rebalancerd.telemetry.schema import Rejection, RejectReason, TelemetryV1, decode_report

from .helpers import CLUSTER, ManualClock, inventory, msg, report, vm
from .strategies import as_v2, hostile_message, json_values, mutated_report

EXAMPLES = int(os.environ.get("REBALANCERD_FUZZ_EXAMPLES", "300"))


def check_collector_batch(messages: list[tuple[str, bytes]]) -> tuple[Collector, MemoryMetrics]:
    clock = ManualClock()
    metrics = MemoryMetrics()
    c = Collector(inventory(3), clock, metrics, CollectorSettings(cluster=CLUSTER))
    outcomes = []
    for topic, payload in messages:
        r = c.ingest(topic, payload)
        assert r is None or isinstance(r, RejectReason)
        outcomes.append(r)
        clock.advance(0.5)
    accepted = sum(1 for r in outcomes if r is None)
    assert metrics.total("telemetry_messages_total") == accepted
    claims = c.owners.claims_refused  # VMs refused inside accepted reports, not messages
    assert metrics.total("telemetry_rejected_total", reason="vm_owned_elsewhere") == claims
    assert metrics.total("telemetry_rejected_total") == len(outcomes) - accepted + claims
    for reason in set(outcomes) - {None}:
        assert reason is not None
        n = sum(1 for r in outcomes if r is reason)
        assert metrics.total("telemetry_rejected_total", reason=reason.value) == n
    assert metrics.total("errors_total") == 0, "the ingest safety net caught a bug"
    assert len(c._hosts) == 3
    snap = c.current()  # the model always builds a valid snapshot
    assert {h.name for h in snap.hosts} == {"h1", "h2", "h3"}
    # every VM a non-stale host lists is in the model exactly once, on a host that lists it
    fresh = {h.name for h in snap.hosts if h.state is not HostState.STALE}
    assert {v.name for v in snap.vms} == {n for h in fresh for n in c._hosts[h].vms}
    assert all(v.name in c._hosts[v.host].vms for v in snap.vms)
    return c, metrics


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_collector_never_crashes_and_counts_everything(data: st.DataObject) -> None:
    now = ManualClock().now()
    msgs = [data.draw(hostile_message(now, seq)) for seq in range(1, data.draw(st.integers(1, 8)))]
    check_collector_batch(msgs)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.one_of(st.binary(max_size=500), json_values.map(lambda v: repr(v).encode())))
def test_decoder_total_on_arbitrary_bytes(payload: bytes) -> None:
    r = decode_report(payload)
    assert isinstance(r, TelemetryV1 | Rejection)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.data())
def test_decoder_accepts_only_sane_reports(data: st.DataObject) -> None:
    r = decode_report(data.draw(mutated_report(ManualClock().now(), 1)))
    if isinstance(r, TelemetryV1):
        for v in r.vms:
            assert v.cpu_mc >= 0 and v.memory_mib > 0 and v.vcpus > 0
        assert r.host_stats.mem_available_mib <= r.host_stats.mem_total_mib


_UNKNOWN = st.sampled_from(["absent", "null"])
_MEASURED = st.one_of(st.just(0), st.integers(1, 2048))


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(
    st.one_of(_UNKNOWN, _MEASURED),
    st.one_of(_UNKNOWN, _MEASURED),
    st.sampled_from([1, 2]),
)
def test_unknown_stays_distinct_from_zero(dirty: object, used: object, version: int) -> None:
    """absent / null dirty rate is None in the model, a measured 0 is 0.0 (same for used
    memory: unknown is 0 = "not measured, use the configured size", a measured value is kept)."""
    doc = report("h1", 1, ManualClock().now(), [vm("a")])
    if version == 2:
        as_v2(doc)
    entry = doc["vms"][0]
    for field, value in (("dirty_rate_mib_s", dirty), ("memory_used_mib", used)):
        if value == "absent":
            del entry[field]
        elif value == "null":
            entry[field] = None
        else:
            entry[field] = value
    c = Collector(inventory(3), ManualClock(), MemoryMetrics(), CollectorSettings(cluster=CLUSTER))
    assert c.ingest(*msg(doc)) is None
    got = c.current().vm("a")
    assert got is not None
    if isinstance(dirty, int):
        assert got.dirty_rate_mib_s == float(dirty)
    else:
        assert got.dirty_rate_mib_s is None
    assert got.memory_used_mib == (used if isinstance(used, int) else 0)
    if version == 2:
        assert got.tags == {"db", "tier-1"} and got.local_disk_mib == 10240
