"""Collector rules on directly-fed messages (pure: no broker)."""

from __future__ import annotations

import json
import math

import pytest

from rebalancerd.domain.model import HostState
from rebalancerd.observability import MemoryMetrics
from rebalancerd.ports import TelemetrySource
from rebalancerd.telemetry.collector import Collector, CollectorSettings
from rebalancerd.telemetry.schema import RejectReason, telemetry_topic

from .helpers import CLUSTER, ManualClock, inventory, msg, report, status, vm


@pytest.fixture
def env() -> tuple[Collector, ManualClock, MemoryMetrics]:
    clock = ManualClock()
    metrics = MemoryMetrics()
    c = Collector(
        inventory(3, speed=1.5),
        clock,
        metrics,
        CollectorSettings(cluster=CLUSTER, stale_after_s=30, max_clock_skew_s=20, rate_burst=50),
    )
    return c, clock, metrics


def test_implements_port(env: tuple[Collector, ManualClock, MemoryMetrics]) -> None:
    assert isinstance(env[0], TelemetrySource)


def test_hosts_come_only_from_inventory_and_start_stale(env) -> None:
    c, _clock, _ = env
    snap = c.current()
    assert [h.name for h in snap.hosts] == ["h1", "h2", "h3"]
    assert all(h.state is HostState.STALE for h in snap.hosts)
    assert snap.vms == ()
    assert math.isinf(c.data_age_s())


def test_accepted_report_builds_snapshot(env) -> None:
    c, clock, metrics = env
    doc = report("h1", 1, clock.now(), [vm("web1", 1000.0), vm("db1", 200.0, vcpus=4)])
    assert c.ingest(*msg(doc)) is None
    snap = c.current()
    h1 = snap.host("h1")
    assert h1.state is HostState.ACTIVE
    assert h1.cores == 16 and h1.memory_mib == 65536 and h1.tags == frozenset({"rack-a"})
    assert snap.host("h2").state is HostState.STALE
    web = snap.vm("web1")
    assert web.host == "h1"
    assert web.cpu_used_mc == 1500  # 1000 host millicores x speed 1.5
    assert web.cpu_history_mc == (1500,)
    assert web.memory_used_mib == 1024 and web.dirty_rate_mib_s == 3.5
    assert snap.vm("db1").vcpus == 4
    assert metrics.total("telemetry_messages_total") == 1
    assert c.data_age_s() == 0.0


def test_history_is_bounded_and_ewma_smooths(env) -> None:
    c, clock, _ = env
    for seq in range(1, 101):
        clock.advance(1)
        cpu = 1000.0 if seq % 2 else 0.0
        assert c.ingest(*msg(report("h1", seq, clock.now(), [vm("a", cpu)]))) is None
    snap = c.current()
    a = snap.vm("a")
    assert len(a.cpu_history_mc) == c.settings.history_len == 60
    assert set(a.cpu_history_mc) == {0, 1500}
    assert 300 < a.cpu_used_mc < 1200  # smoothed, not the last raw sample
    view = c.vm_view("a")
    assert view is not None and view.cpu_p95_mc == 1500 and view.samples == 60


def test_host_turns_stale_when_reports_stop(env) -> None:
    c, clock, metrics = env
    c.ingest(*msg(report("h1", 1, clock.now())))
    clock.advance(29)
    assert c.current().host("h1").state is HostState.ACTIVE
    assert c.data_age_s() == pytest.approx(29)
    clock.advance(2)
    snap = c.current()
    assert snap.host("h1").state is HostState.STALE
    assert snap.vms == ()  # no VMs from stale hosts
    c.refresh_metrics()
    assert metrics.gauge("telemetry_staleness_seconds", host="h1") == pytest.approx(31)


def test_report_lag_counts_towards_age(env) -> None:
    c, clock, _ = env
    c.ingest(*msg(report("h1", 1, clock.now() - 15)))
    assert c.data_age_s() == pytest.approx(15)
    clock.advance(16)
    assert c.current().host("h1").state is HostState.STALE


def test_degraded_and_libvirt_failure(env) -> None:
    c, clock, _ = env
    c.ingest(*msg(report("h1", 1, clock.now(), degraded=True)))
    c.ingest(*msg(report("h2", 1, clock.now(), [], libvirt_ok=False)))
    snap = c.current()
    assert snap.host("h1").state is HostState.DEGRADED
    assert snap.vm("h1-vm1").host == "h1"  # VMs on degraded hosts stay visible (to evacuate)
    assert snap.host("h2").state is HostState.STALE  # we do not know what runs there


def test_last_will_offline_marks_stale_until_next_report(env) -> None:
    c, clock, _ = env
    c.ingest(*msg(report("h1", 1, clock.now())))
    assert c.ingest(*status("h1", "offline")) is None
    assert c.current().host("h1").state is HostState.STALE
    c.ingest(*status("h1", "online"))
    assert c.current().host("h1").state is HostState.STALE
    clock.advance(1)
    c.ingest(*msg(report("h1", 2, clock.now())))
    assert c.current().host("h1").state is HostState.ACTIVE


def test_live_migration_hands_the_vm_over_without_counting_a_claim(env) -> None:
    """The VM is briefly on both hosts: paused incoming on the target, then running there while
    the source's last report still lists it; it moves when the source's report drops it. (It
    used to move to the target as soon as the target reported it running.)"""
    c, clock, metrics = env
    c.ingest(*msg(report("h1", 1, clock.now(), [vm("mig", 800.0, state="running")])))
    clock.advance(1)
    c.ingest(*msg(report("h2", 1, clock.now(), [vm("mig", 0.0, state="paused")])))
    assert c.current().vm("mig").host == "h1"
    clock.advance(1)
    c.ingest(*msg(report("h1", 2, clock.now(), [vm("mig", 800.0, state="running")])))
    clock.advance(1)
    c.ingest(*msg(report("h2", 2, clock.now(), [vm("mig", 700.0, state="running")])))
    assert c.current().vm("mig").host == "h1"  # switchover: the source has not reported yet
    assert c.vm_view("mig") is not None and c.vm_view("mig").host == "h1"
    clock.advance(1)
    c.ingest(*msg(report("h1", 3, clock.now(), [])))
    snap = c.current()
    assert snap.vm("mig").host == "h2" and snap.vm("mig").cpu_history_mc == (0, 1050)
    assert [v.name for v in snap.vms] == ["mig"]
    assert metrics.total("telemetry_rejected_total", reason="vm_owned_elsewhere") == 0
    assert c.owners.claims_refused == 0


def test_a_paused_owner_yields_to_a_host_running_the_vm(env) -> None:
    """Switchover seen from the source first (paused there) or post-copy: running wins."""
    c, clock, metrics = env
    c.ingest(*msg(report("h1", 1, clock.now(), [vm("mig", state="running")])))
    c.ingest(*msg(report("h2", 1, clock.now(), [vm("mig", state="paused")])))
    clock.advance(1)
    c.ingest(*msg(report("h1", 2, clock.now(), [vm("mig", state="paused")])))
    assert c.current().vm("mig").host == "h1"  # both paused: the owner keeps it
    c.ingest(*msg(report("h2", 2, clock.now(), [vm("mig", state="running")])))
    assert c.current().vm("mig").host == "h2"
    clock.advance(1)
    c.ingest(*msg(report("h1", 3, clock.now(), [vm("mig", state="paused")])))
    assert c.current().vm("mig").host == "h2"
    assert metrics.total("telemetry_rejected_total", reason="vm_owned_elsewhere") == 0


def test_a_host_claiming_another_hosts_vms_cannot_empty_it(env) -> None:
    """h2 lists h1's VMs as tiny guests (hostile, or an agent reading h1's libvirt by mistake):
    they stay on h1 with h1's figures, h2 keeps its own VM, the claims are counted once the
    owner has listed the VMs again, and logged once per VM, not every interval."""
    from structlog.testing import capture_logs

    c, clock, metrics = env
    with capture_logs() as logs:
        for seq in range(1, 6):
            mine = [vm("web1", 4000.0, vcpus=8), vm("db1", 3000.0, vcpus=4)]
            c.ingest(*msg(report("h1", seq, clock.now(), mine)))
            clock.advance(1)
            fake = [vm("h2-own", 500.0), vm("web1", 1.0, vcpus=1), vm("db1", 1.0, vcpus=1)]
            assert c.ingest(*msg(report("h2", seq, clock.now(), fake))) is None
            clock.advance(4)
    snap = c.current()
    assert {v.name: v.host for v in snap.vms} == {"web1": "h1", "db1": "h1", "h2-own": "h2"}
    assert snap.vm("web1").cpu_used_mc == 6000 and snap.vm("web1").vcpus == 8
    refused = metrics.total("telemetry_rejected_total", reason="vm_owned_elsewhere")
    assert refused == 2 * 4  # rounds 2..5, both VMs (round 1 could be a migration switchover)
    assert c.owners.claims_refused == 8
    assert metrics.total("telemetry_messages_total") == 10  # the reports themselves are kept
    lines = [e for e in logs if e["event"] == "telemetry_vm_claim_rejected"]
    assert sorted((e["vm"], e["claimant"], e["owner"]) for e in lines) == [
        ("db1", "h2", "h1"),
        ("web1", "h2", "h1"),
    ]
    # the claimant stops listing them: the next claim is news again, logged again
    c.ingest(*msg(report("h2", 6, clock.now(), [vm("h2-own", 500.0)])))
    with capture_logs() as logs:
        for seq in range(7, 9):
            c.ingest(*msg(report("h1", seq, clock.now(), [vm("web1", 4000.0, vcpus=8)])))
            clock.advance(1)
            c.ingest(*msg(report("h2", seq, clock.now(), [vm("web1", 1.0, vcpus=1)])))
    assert [e["vm"] for e in logs if e["event"] == "telemetry_vm_claim_rejected"] == ["web1"]


def test_vm_is_handed_over_when_its_owner_goes_stale_or_offline(env) -> None:
    c, clock, metrics = env
    c.ingest(*msg(report("h1", 1, clock.now(), [vm("a")])))
    c.ingest(*msg(report("h2", 1, clock.now(), [vm("a"), vm("b")])))
    c.ingest(*msg(report("h3", 1, clock.now(), [vm("b")])))
    assert c.current().vm("a").host == "h1" and c.current().vm("b").host == "h2"
    assert c.ingest(*status("h2", "offline")) is None
    assert c.current().vm("b").host == "h3"  # h2 offline: b's other lister takes it
    clock.advance(25)
    c.ingest(*msg(report("h2", 2, clock.now(), [vm("a")])))
    clock.advance(10)  # h1 silent for 35 s: stale
    snap = c.current()
    assert snap.host("h1").state is HostState.STALE
    assert snap.vm("a").host == "h2"
    # h1 comes back still listing a: a now belongs to h2, whose fresh reports list it
    c.ingest(*msg(report("h1", 2, clock.now(), [vm("a")])))
    c.ingest(*msg(report("h2", 3, clock.now(), [vm("a")])))
    c.ingest(*msg(report("h1", 3, clock.now(), [vm("a")])))
    assert c.current().vm("a").host == "h2"
    assert metrics.total("telemetry_rejected_total", reason="vm_owned_elsewhere") == 1


def test_vms_gone_from_a_report_are_forgotten(env) -> None:
    c, clock, _ = env
    c.ingest(*msg(report("h1", 1, clock.now(), [vm("a"), vm("b")])))
    c.ingest(*msg(report("h1", 2, clock.now(), [vm("b")])))
    assert [v.name for v in c.current().vms] == ["b"]
    assert c.vm_count() == 1


def _one(c: Collector, topic: str, payload: bytes) -> RejectReason | None:
    return c.ingest(topic, payload)


def test_every_bad_kind_is_rejected_and_counted(env) -> None:
    c, clock, metrics = env
    now = clock.now()
    # an earlier agent process (boot 0), then the current one (boot 1)
    assert c.ingest(*msg(report("h1", 99, now, boot=0))) is None
    good = report("h1", 5, now)
    assert c.ingest(*msg(good)) is None
    t1 = telemetry_topic(CLUSTER, "h1")
    cases: list[tuple[RejectReason, str, bytes]] = [
        (RejectReason.MALFORMED_JSON, t1, b'{"v": 1, "host": '),
        (RejectReason.MALFORMED_JSON, t1, b"[1, 2, 3]"),
        (RejectReason.SCHEMA_VERSION, t1, json.dumps({**good, "v": 3, "seq": 6}).encode()),
        (
            RejectReason.SCHEMA_VERSION,
            t1,
            json.dumps({k: v for k, v in good.items() if k != "v"}).encode(),
        ),
        (
            RejectReason.MISSING_FIELD,
            t1,
            json.dumps({k: v for k, v in good.items() if k != "seq"}).encode(),
        ),
        (RejectReason.INVALID_VALUE, *msg(report("h1", 6, now, [vm("a", -5.0)]))),
        (
            RejectReason.INVALID_VALUE,
            t1,
            msg(report("h1", 6, now, [vm("a", 1.0)]))[1].replace(b"1.0", b"NaN", 1),
        ),
        (RejectReason.INVALID_VALUE, *msg(report("h1", 6, now, [vm("a", memory_used_mib=-1)]))),
        (RejectReason.OVER_CAPACITY, *msg(report("h1", 6, now, [vm("a", 5000.0, vcpus=2)]))),
        (RejectReason.OVER_CAPACITY, *msg(report("h1", 6, now, [vm("a", memory_mib=10**7)]))),
        (
            RejectReason.OVER_CAPACITY,
            *msg(report("h1", 6, now, [vm(f"v{i}", 2000.0) for i in range(12)])),
        ),
        (RejectReason.SEQ_REPLAYED, *msg(good)),
        (RejectReason.SEQ_OUT_OF_ORDER, *msg(report("h1", 4, now))),
        (RejectReason.SEQ_OUT_OF_ORDER, *msg(report("h1", 99, now, boot=0))),
        (RejectReason.CLOCK_SKEW, *msg(report("h1", 6, now + 3600))),
        (RejectReason.CLOCK_SKEW, *msg(report("h1", 6, now - 3600))),
        (RejectReason.UNKNOWN_HOST, *msg(report("h9", 1, now))),
        (RejectReason.HOST_MISMATCH, *msg(report("h2", 1, now), host="h1")),
        (RejectReason.CLUSTER_MISMATCH, *msg(report("h1", 6, now, cluster="other"))),
        (RejectReason.BAD_NAME, t1.replace("h1", "h1;rm"), json.dumps(good).encode()),
        (RejectReason.BAD_NAME, *msg(report("h1", 6, now, [vm("$(reboot)")]))),
        (RejectReason.BAD_NAME, *msg(report("h1", 6, now, [vm("a/../b")]))),
        (RejectReason.BAD_TOPIC, "rebalancer/v1/c1/hosts/h1/telemetry/extra", b"{}"),
        (RejectReason.DUPLICATE_VM, *msg(report("h1", 6, now, [vm("a"), vm("a")]))),
        (RejectReason.OVERSIZE, t1, b" " * (c.settings.max_payload_bytes + 1)),
        (
            RejectReason.INVALID_VALUE,
            t1,
            msg(report("h1", 6, now))[1].replace(
                b'"mem_available_mib": 30000', b'"mem_available_mib": 99999999'
            ),
        ),
    ]
    for want, topic, payload in cases:
        assert c.ingest(topic, payload) is want, (want, payload[:200])
    for reason in RejectReason:
        expected = sum(1 for w, _, _ in cases if w is reason)
        assert metrics.total("telemetry_rejected_total", reason=reason.value) == expected, reason
    # the host model was not touched by any rejected message
    snap = c.current()
    assert [v.name for v in snap.vms] == ["h1-vm1"]
    assert metrics.total("telemetry_messages_total") == 2
    assert c.ingest(*msg(report("h1", 6, now))) is None


def test_flood_from_one_host_is_rate_limited_with_bounded_memory(env) -> None:
    c, clock, metrics = env
    accepted = 0
    for seq in range(1, 2001):
        if c.ingest(*msg(report("h1", seq, clock.now(), [vm(f"x{seq}")]))) is None:
            accepted += 1
    assert accepted == int(c.settings.rate_burst)
    assert metrics.total("telemetry_rejected_total", reason="rate_limited") == 2000 - accepted
    assert c.vm_count() == 1  # only the last accepted report's VM is kept
    # other hosts are unaffected by the flood
    assert c.ingest(*msg(report("h2", 1, clock.now()))) is None
    # tokens come back with time
    clock.advance(10)
    assert c.ingest(*msg(report("h1", 5000, clock.now()))) is None


def test_unknown_hosts_never_grow_state(env) -> None:
    c, clock, metrics = env
    for i in range(5000):
        c.ingest(*msg(report(f"intruder{i}", 1, clock.now())))
    assert len(c._hosts) == 3
    assert metrics.total("telemetry_rejected_total", reason="unknown_host") == 5000
    assert [h.name for h in c.current().hosts] == ["h1", "h2", "h3"]


def test_agent_restart_new_boot_is_accepted(env) -> None:
    c, clock, _ = env
    assert c.ingest(*msg(report("h1", 500, clock.now(), boot=1))) is None
    assert c.ingest(*msg(report("h1", 1, clock.now(), boot=2))) is None
    assert c.ingest(*msg(report("h1", 499, clock.now(), boot=1))) is RejectReason.SEQ_OUT_OF_ORDER


def test_one_huge_boot_value_cannot_wedge_a_host(env) -> None:
    """One accepted report with an absurd boot used to make every later report out of order."""
    c, clock, _ = env
    assert c.ingest(*msg(report("h1", 1, clock.now(), boot=(1 << 62) - 1))) is None
    clock.advance(1)
    assert c.ingest(*msg(report("h1", 2, clock.now(), boot=1))) is None
    clock.advance(1)
    assert c.ingest(*msg(report("h1", 3, clock.now(), boot=1))) is None
    assert c.current().host("h1").state is HostState.ACTIVE
    # the superseded process's late reports are refused
    late = report("h1", 2, clock.now(), boot=(1 << 62) - 1)
    assert c.ingest(*msg(late)) is RejectReason.SEQ_OUT_OF_ORDER


def test_agent_restarted_after_a_clock_step_back_is_accepted(env) -> None:
    """An agent whose clock ran 15 s ahead is corrected (clock stepped back) and restarts: its
    new boot id (start time in ms) is lower than the old one. It used to stay stale."""
    c, clock, _ = env
    ahead = clock.now() + 15
    boot1 = int(ahead * 1000)
    for seq in range(1, 4):
        clock.advance(1)
        assert c.ingest(*msg(report("h1", seq, ahead + seq, boot=boot1))) is None
    clock.advance(1)
    boot2 = int(clock.now() * 1000)
    assert boot2 < boot1
    assert c.ingest(*msg(report("h1", 1, clock.now(), boot=boot2))) is None
    clock.advance(10)
    assert c.ingest(*msg(report("h1", 2, clock.now(), boot=boot2))) is None
    assert c.current().host("h1").state is HostState.ACTIVE
    assert c.host_view("h1").last_report is not None
    assert c.host_view("h1").last_report.boot == boot2
    # a clock step back without a restart: same process, seq goes on, ts goes back
    clock.advance(1)
    assert c.ingest(*msg(report("h1", 3, clock.now() - 10, boot=boot2))) is None


def test_a_bad_seq_jump_recovers_once_the_host_is_stale(env) -> None:
    """Within one agent process a single absurd seq makes the next reports out of order, but
    only until the host would be stale: then the next valid report restarts the ordering."""
    from structlog.testing import capture_logs

    c, clock, metrics = env
    assert c.ingest(*msg(report("h1", 1, clock.now()))) is None
    assert c.ingest(*msg(report("h1", 1 << 61, clock.now()))) is None
    seq = 2
    for _ in range(3):
        clock.advance(10)
        seq += 1
        assert c.ingest(*msg(report("h1", seq, clock.now()))) is RejectReason.SEQ_OUT_OF_ORDER
    clock.advance(10)  # 40 s since the last accepted report: past stale_after_s=30
    assert c.current().host("h1").state is HostState.STALE
    with capture_logs() as logs:
        assert c.ingest(*msg(report("h1", seq + 1, clock.now()))) is None
    assert [e["event"] for e in logs if e["event"] == "telemetry_order_resync"] == [
        "telemetry_order_resync"
    ]
    assert c.current().host("h1").state is HostState.ACTIVE
    assert c.ingest(*msg(report("h1", seq + 1, clock.now()))) is RejectReason.SEQ_REPLAYED
    assert metrics.total("telemetry_rejected_total", reason="seq_out_of_order") == 3
    # a stale host still only takes reports whose timestamp our own clock vouches for
    clock.advance(60)
    old = report("h1", seq + 2, clock.now() - 3600)
    assert c.ingest(*msg(old)) is RejectReason.CLOCK_SKEW


def test_reject_log_lines_are_rate_limited(env, capsys) -> None:
    c, clock, metrics = env
    import structlog.testing

    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            c.ingest(telemetry_topic(CLUSTER, "h1"), b"not json")
        clock.advance(c.settings.reject_log_interval_s + 1)
        c.ingest(telemetry_topic(CLUSTER, "h1"), b"not json")
    lines = [e for e in logs if e["event"] == "telemetry_rejected"]
    assert len(lines) == 2
    assert lines[1]["suppressed"] == 49
    assert metrics.total("telemetry_rejected_total", reason="malformed_json") == 51


def test_batch_ingest_counts(env) -> None:
    c, clock, metrics = env
    batch = [msg(report("h1", i, clock.now())) for i in range(1, 6)] + [("bad", b"x")]
    assert c.ingest_batch(batch) == 5
    assert metrics.total("telemetry_messages_total") == 5
    assert metrics.total("telemetry_rejected_total") == 1


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        CollectorSettings(cluster="a/b")
    with pytest.raises(ValueError):
        CollectorSettings(stale_after_s=0)


def test_current_refreshes_staleness_gauges_without_traffic(env) -> None:
    c, clock, metrics = env
    c.ingest(*msg(report("h1", 1, clock.now())))
    clock.advance(12)
    c.current()
    assert metrics.gauge("telemetry_staleness_seconds", host="h1") == pytest.approx(12)
    assert metrics.gauge("telemetry_staleness_seconds", host="h2") == 1e9  # never heard from
    assert metrics.gauge("telemetry_data_age_seconds") == pytest.approx(12)


def test_state_changes_are_logged_once_with_why(env) -> None:
    from structlog.testing import capture_logs

    c, clock, _ = env
    with capture_logs() as logs:
        c.current()  # start-up: hosts never heard from are stale, but that is not news
        assert not [e for e in logs if e["event"].startswith("telemetry_host")]
        c.ingest(*msg(report("h1", 1, clock.now())))
        c.current()
        c.current()
        clock.advance(31)  # silence past stale_after_s=30: no message arrives to say so
        c.current()
        c.current()
    events = [
        (e["event"], e.get("host"), e.get("state"), e.get("why"))
        for e in logs
        if e["event"].startswith("telemetry_host")
    ]
    assert events == [
        ("telemetry_host_state_changed", "h1", "active", None),
        ("telemetry_host_stale", "h1", None, "silent"),
    ]
    with capture_logs() as logs:
        c.ingest(*msg(report("h1", 2, clock.now())))
        c.current()  # fresh again
        c.ingest(*status("h1", "offline"))
        c.current()
    assert [(e["event"], e.get("why")) for e in logs if e["event"] == "telemetry_host_stale"] == [
        ("telemetry_host_stale", "offline")
    ]
