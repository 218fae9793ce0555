from __future__ import annotations

import pytest

from rebalancerd.domain.load import Weights, host_loads, imbalance, resource_gap
from rebalancerd.domain.model import (
    AffinityGroup,
    ClusterRules,
    ClusterSnapshot,
    Host,
    HostState,
    Pin,
    Placement,
    PowerCurve,
    Vm,
    percentile_of,
)
from rebalancerd.domain.plan import (
    Migration,
    MigrationPlan,
    PlanStats,
    PlanStep,
    Reason,
    ReasonKind,
    Unsequenced,
)


def snap() -> ClusterSnapshot:
    hosts = (
        Host("a", cores=4, memory_mib=8192),
        Host("b", cores=4, memory_mib=8192),
        Host("m", cores=4, memory_mib=8192, state=HostState.MAINTENANCE),
    )
    vms = (
        Vm("v1", "a", vcpus=2, memory_mib=4096, cpu_used_mc=2000),
        Vm("v2", "a", vcpus=1, memory_mib=2048, cpu_used_mc=1000),
        Vm("v3", "m", vcpus=1, memory_mib=1024, cpu_used_mc=4000),
    )
    return ClusterSnapshot(hosts, vms)


def test_host_loads_and_imbalance_by_hand() -> None:
    s = snap()
    loads = host_loads(s)
    assert loads["a"].cpu == pytest.approx(0.75)
    assert loads["a"].memory == pytest.approx(0.75)
    assert loads["b"].cpu == 0 and loads["b"].vms == 0
    # maintenance host is not counted in the imbalance
    assert imbalance(s) == pytest.approx(0.75)
    assert imbalance(s, weights=Weights(cpu=1, memory=0)) == pytest.approx(0.75)
    moved = s.placement().moved("v2", "b")
    # a: cpu .5 mem .5 ; b: cpu .25 mem .25
    assert imbalance(s, moved) == pytest.approx(0.25)
    assert resource_gap(s, "memory", moved) == pytest.approx(0.25)


def test_snapshot_rejects_bad_references() -> None:
    h = Host("a", cores=1, memory_mib=1)
    with pytest.raises(ValueError, match="unknown host"):
        ClusterSnapshot((h,), (Vm("v", "zz", vcpus=1, memory_mib=1),))
    with pytest.raises(ValueError, match="duplicate host"):
        ClusterSnapshot((h, h), ())
    with pytest.raises(ValueError, match="duplicate vm"):
        v = Vm("v", "a", vcpus=1, memory_mib=1)
        ClusterSnapshot((h,), (v, v))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(cores=0, memory_mib=1),
        dict(cores=1, memory_mib=0),
        dict(cores=1, memory_mib=1, speed=0),
    ],
)
def test_host_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Host("h", **kwargs)  # type: ignore[arg-type]


def test_vm_validation_and_demand() -> None:
    with pytest.raises(ValueError):
        Vm("v", "a", vcpus=1, memory_mib=1, cpu_used_mc=-1)
    v = Vm("v", "a", vcpus=2, memory_mib=1, cpu_used_mc=100, cpu_history_mc=(100, 900, 300, 200))
    assert v.cpu_demand_mc() == 100
    assert v.cpu_demand_mc(percentile=100) == 900
    assert v.cpu_demand_mc(percentile=50) == 200
    assert v.cpu_demand_mc(percentile=100, window=2) == 300


def test_percentile_nearest_rank() -> None:
    assert percentile_of([], 95) == 0
    assert percentile_of(range(1, 101), 95) == 95
    assert percentile_of([5], 1) == 5


def test_power_curve_interpolates() -> None:
    c = PowerCurve((86, 89.4, 92.6, 96, 99.5, 102, 106, 108, 112, 114, 117))
    assert c.at(0) == 86 and c.at(1) == 117
    assert c.at(0.05) == pytest.approx((86 + 89.4) / 2)
    assert c.at(2) == 117
    with pytest.raises(ValueError):
        PowerCurve((1.0,))


def test_placement_is_immutable_value() -> None:
    p = Placement({"v1": "a", "v2": "b"})
    q = p.moved("v1", "b")
    assert p["v1"] == "a" and q["v1"] == "b"
    assert p.diff(q) == {"v1": ("a", "b")}
    assert p == Placement({"v2": "b", "v1": "a"}) and hash(p) == hash(Placement(p))


def test_rules_merge_and_hard_pins() -> None:
    r1 = ClusterRules(pins=(Pin("v", frozenset({"a", "b"})),), exclusions=frozenset({"x"}))
    r2 = ClusterRules(
        groups=(AffinityGroup("g", frozenset({"v", "w"}), anti=True),),
        pins=(Pin("v", frozenset({"b", "c"})), Pin("w", frozenset({"a"}), hard=False)),
    )
    m = r1.merged(r2)
    assert m.exclusions == {"x"} and len(m.groups) == 1
    assert m.hard_pins() == {"v": frozenset({"b"})}


def test_with_placement_and_states() -> None:
    s = snap()
    s2 = s.with_placement(s.placement().moved("v1", "b"))
    assert s2.vm("v1").host == "b" and s.vm("v1").host == "a"
    s3 = s.with_host_states({"b": HostState.STALE})
    assert s3.host("b").state is HostState.STALE
    assert not HostState.STALE.may_send and not HostState.MAINTENANCE.may_receive


def test_plan_round_trips_through_dict_and_explains() -> None:
    m1 = Migration("v1", "a", "b", Reason(ReasonKind.HOTSPOT, "a cpu 0.9 > 0.85"), 4096, 0.75, 0.25)
    m2 = Migration("v3", "m", "b", Reason(ReasonKind.DRAIN, "m in maintenance"), 1024)
    plan = MigrationPlan(
        steps=(PlanStep((m1,)), PlanStep((m2,))),
        stats=PlanStats(planner="t", status="OPTIMAL", objective=1.5, notes=("x",)),
        unsequenced=(Unsequenced("v2", "a", "b", "no room"),),
    )
    d = plan.to_dict()
    assert [m["vm"] for m in d["migrations"]] == ["v1", "v3"]
    assert d["steps"] == [["v1"], ["v3"]]
    back = MigrationPlan.from_dict(d)
    assert back == plan
    lines = plan.explain()
    assert lines[0].startswith("step 1: v1 a -> b: hotspot: a cpu 0.9 > 0.85")
    assert "0.750 -> 0.250" in lines[0]
    assert lines[-1].startswith("not sequenced: v2")
    assert plan.memory_mib == 5120
