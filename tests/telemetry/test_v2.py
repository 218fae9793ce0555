"""Wire format v2 through the collector into the model, and from there into the rules the
planner and executor share: tags feed policy selectors, a target lacking a VM's network is never
planned or executed, a not-migratable VM never moves; v1 reports are still accepted and counted;
unknown (null/absent) stays distinct from 0."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rebalancerd.domain.checks import ReasonCode
from rebalancerd.domain.model import HostState
from rebalancerd.observability import KNOWN_LABEL_VALUES, MemoryMetrics
from rebalancerd.planner import make_plan
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.policy.schema import Policy
from rebalancerd.telemetry.collector import Collector, CollectorSettings
from rebalancerd.telemetry.inventory import inventory_from_mapping
from rebalancerd.telemetry.schema import RejectReason

from .helpers import CLUSTER, T0, ManualClock, inventory, msg, report, vm

NETS = ["bridge:br0", "network:default"]


def v2_vm(name: str, **kw: Any) -> dict[str, Any]:
    d = vm(name, cpu_mc=100.0)
    d.update(
        tags=["db", "tier-1"],
        cpu_model="",
        cpu_features=["avx2"],
        networks=["bridge:br0"],
        local_disk_mib=0,
        migratable=True,
        dirty_rate_age_s=3.0,
    )
    d.update(kw)
    return d


def v2_report(host: str, seq: int, vms: list[dict[str, Any]], **hs: Any) -> dict[str, Any]:
    r = report(host, seq, T0, vms)
    r["v"] = 2
    r["host_stats"].update(hs)
    return r


def collector(inv: Any = None) -> tuple[Collector, MemoryMetrics]:
    metrics = MemoryMetrics()
    c = Collector(
        inv or inventory(3),
        ManualClock(),
        metrics,
        CollectorSettings(cluster=CLUSTER, stale_after_s=30, max_clock_skew_s=20, rate_burst=50),
    )
    return c, metrics


def test_v2_fields_reach_vm_and_host_and_versions_are_counted() -> None:
    c, metrics = collector()
    host_stats = {"cpu_model": "Skylake", "cpu_features": ["avx2", "aes"], "networks": NETS}
    assert c.ingest(*msg(v2_report("h1", 1, [v2_vm("a")], **host_stats))) is None
    assert c.ingest(*msg(report("h2", 1, T0, [vm("b")]))) is None  # v1 still accepted
    snap = c.current()
    a, b = snap.vm("a"), snap.vm("b")
    assert a is not None and b is not None
    assert a.tags == {"db", "tier-1"} and a.networks == {"bridge:br0"}
    assert a.required_cpu_features == {"avx2"} and a.migratable
    h1, h2 = snap.host("h1"), snap.host("h2")
    assert h1.networks == frozenset(NETS) and h1.cpu_model == "Skylake"
    assert h1.cpu_features == {"avx2", "aes"}
    assert h2.networks is None  # a v1 agent says nothing: unknown, not "no networks"
    assert b.tags == frozenset() and b.networks == frozenset()
    assert metrics.total("telemetry_reports_total", version="2") == 1
    assert metrics.total("telemetry_reports_total", version="1") == 1
    assert KNOWN_LABEL_VALUES["telemetry_reports_total"] == {"version": ("1", "2")}


def test_unknown_stays_distinct_from_zero() -> None:
    c, _ = collector()
    unknown = v2_vm("u", memory_used_mib=None, dirty_rate_mib_s=None, dirty_rate_age_s=None)
    absent = {
        k: v for k, v in v2_vm("x").items() if k not in ("memory_used_mib", "dirty_rate_mib_s")
    }
    zero = v2_vm("z", memory_used_mib=0, dirty_rate_mib_s=0.0)
    assert c.ingest(*msg(v2_report("h1", 1, [unknown, absent, zero]))) is None
    snap = c.current()
    for name in ("u", "x"):
        v = snap.vm(name)
        assert v is not None and v.dirty_rate_mib_s is None and v.memory_used_mib == 0
    z = snap.vm("z")
    assert z is not None and z.dirty_rate_mib_s == 0.0


def test_inventory_values_win_over_the_report() -> None:
    inv = inventory_from_mapping(
        {
            "hosts": [
                {
                    "name": "h1",
                    "libvirt_uri": "qemu+tcp://10.0.0.1/system",
                    "cores": 16,
                    "memory_mib": 65536,
                    "cpu_model": "Icelake",
                    "networks": ["bridge:br9"],
                }
            ]
        }
    )
    c, _ = collector(inv)
    hs = {"cpu_model": "Skylake", "networks": NETS}
    assert c.ingest(*msg(v2_report("h1", 1, [v2_vm("a")], **hs))) is None
    h1 = c.current().host("h1")
    assert h1.cpu_model == "Icelake" and h1.networks == {"bridge:br9"}


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("tags", ["x"] * 33, RejectReason.INVALID_VALUE),
        ("tags", ["has space"], RejectReason.BAD_NAME),
        ("networks", ["vlan:7"], RejectReason.BAD_NAME),
        ("networks", "bridge:br0", RejectReason.INVALID_VALUE),
        ("cpu_features", ["a" * 65], RejectReason.INVALID_VALUE),
        ("local_disk_mib", -1, RejectReason.INVALID_VALUE),
        ("migratable", "no", RejectReason.INVALID_VALUE),
        ("not_migratable_reason", "x" * 201, RejectReason.INVALID_VALUE),
        ("dirty_rate_age_s", -1, RejectReason.INVALID_VALUE),
        ("memory_used_mib", -5, RejectReason.INVALID_VALUE),
    ],
)
def test_malformed_v2_field_is_rejected_and_counted(
    field: str, value: object, reason: RejectReason
) -> None:
    c, metrics = collector()
    assert c.ingest(*msg(v2_report("h1", 1, [v2_vm("a", **{field: value})]))) is reason
    assert metrics.total("telemetry_rejected_total", reason=reason.value) == 1


def test_malformed_host_networks_rejected() -> None:
    c, _ = collector()
    doc = v2_report("h1", 1, [v2_vm("a")], networks=["bridge:ok"] * 257)
    assert c.ingest(*msg(doc)) is RejectReason.INVALID_VALUE


def _two_host_cluster(vm_doc: dict[str, Any], h2_networks: list[str] | None) -> Any:
    """h1 is in maintenance (the policy drains it), h2 receives; what the collector builds."""
    c, _ = collector(inventory(2))
    assert c.ingest(*msg(v2_report("h1", 1, [vm_doc], networks=NETS))) is None
    hs2: dict[str, Any] = {"cpu_features": ["avx2", "aes"]}
    if h2_networks is not None:
        hs2["networks"] = h2_networks
    assert c.ingest(*msg(v2_report("h2", 1, [], **hs2))) is None
    snap = c.current()
    assert all(h.state is HostState.ACTIVE for h in snap.hosts)
    return snap


DRAIN = {
    "apiVersion": "rebalancerd/v1",
    "kind": "Policy",
    "rules": {"maintenance": [{"host": "h1"}]},
}


def planned(snap: Any, doc: dict[str, Any] = DRAIN) -> list[tuple[str, str]]:
    pol = Policy.model_validate(doc)
    return [(m.vm, m.target) for m in make_plan(snap, pol, now=0.0, time_limit_s=2.0).migrations]


def test_network_rule_from_real_reports_reaches_the_planner() -> None:
    assert planned(_two_host_cluster(v2_vm("a"), ["bridge:br0"])) == [("a", "h2")]
    assert planned(_two_host_cluster(v2_vm("a"), ["bridge:br1"])) == []
    assert planned(_two_host_cluster(v2_vm("a"), None)) == [("a", "h2")]  # unknown: no block
    assert planned(_two_host_cluster(v2_vm("a", migratable=False), ["bridge:br0"])) == []


def test_tags_from_reports_feed_policy_selectors() -> None:
    snap = _two_host_cluster(v2_vm("a", tags=["web"]), ["bridge:br0"])
    only_db = {**DRAIN, "scope": {"vm_tags": ["db"]}}
    only_web = {**DRAIN, "scope": {"vm_tags": ["web"]}}
    assert planned(snap, only_db) == []
    assert planned(snap, only_web) == [("a", "h2")]
    assert "a" in apply_policy(Policy.model_validate(only_db), snap, 0.0).rules.exclusions


async def test_network_rule_from_real_reports_reaches_the_executor() -> None:
    from rebalancerd.adapters.clock import VirtualClock
    from rebalancerd.execution.adaptive import AdaptiveConcurrency
    from rebalancerd.execution.executor import Executor
    from rebalancerd.execution.journal import Journal
    from tests.unit.execution.fakes import FakeHypervisor, mig, plan, policy

    async def run(snap: Any) -> tuple[list[str], list[str]]:
        clock = VirtualClock()
        ex = Executor(
            FakeHypervisor.for_snapshot(clock, snap),
            clock,
            MemoryMetrics(),
            Journal.open(":memory:"),
            adaptive=AdaptiveConcurrency(slow_start=False),
        )
        rep = await ex.execute(plan([mig("a", "h1", "h2")]), snap, policy())
        return [r.vm for r in rep.succeeded], [r.reason for r in rep.skipped]

    assert await run(_two_host_cluster(v2_vm("a"), ["bridge:br0"])) == (["a"], [])
    assert await run(_two_host_cluster(v2_vm("a"), ["bridge:br1"])) == (
        [],
        [str(ReasonCode.NETWORK_MISSING)],
    )
    not_mig = _two_host_cluster(v2_vm("a", migratable=False), ["bridge:br0"])
    assert await run(not_mig) == ([], [str(ReasonCode.NOT_MIGRATABLE)])
    cpu = _two_host_cluster(v2_vm("a", cpu_features=["avx512f"]), ["bridge:br0"])
    assert await run(cpu) == ([], [str(ReasonCode.CPU_INCOMPATIBLE)])


def test_v2_report_json_roundtrip_is_what_the_agent_sends() -> None:
    doc = v2_report("h1", 1, [v2_vm("a")], networks=NETS)
    assert json.loads(json.dumps(doc))["v"] == 2
