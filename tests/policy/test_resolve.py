"""Policy -> domain rules: globs, scope, maintenance schedules."""

from __future__ import annotations

from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.planner import make_plan
from rebalancerd.policy.parse import load_policy_text
from rebalancerd.policy.resolve import apply_policy, policy_rules

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"


def snap() -> ClusterSnapshot:
    hosts = (
        Host("rack1-a", 16, 65536, tags=frozenset({"gpu"})),
        Host("rack1-b", 16, 65536),
        Host("rack2-a", 16, 65536),
    )
    vms = [Vm(f"web-{i}", "rack1-a", 4, 6144, cpu_used_mc=1800) for i in range(6)]
    vms += [Vm("db-1", "rack2-a", 2, 2048, cpu_used_mc=200), Vm("web-x", "rack2-a", 2, 2048)]
    return ClusterSnapshot(hosts, tuple(vms), taken_at=1_767_225_600.0)


def test_globs_expand_against_the_snapshot() -> None:
    p = load_policy_text(
        HEAD + "rules:\n  anti_affinity: [{name: g, vms: ['web-[0-2]', db-1]}]\n"
        "  exclusions: ['web-5']\n  pins: [{vm: 'web-4', hosts: ['rack1-*']}]\n"
    )
    r = policy_rules(p, snap())
    assert r.groups[0].vms == {"web-0", "web-1", "web-2", "db-1"} and r.groups[0].anti
    assert r.exclusions == {"web-5"}
    assert r.pins[0].hosts == {"rack1-a", "rack1-b"}


def test_vm_scope_excludes_the_others() -> None:
    r = policy_rules(load_policy_text(HEAD + "scope: {vms: ['web-*']}\n"), snap())
    assert r.exclusions == {"db-1"}


def test_host_scope_keeps_moves_inside() -> None:
    p = load_policy_text(HEAD + "scope: {hosts: ['rack1-*']}\n")
    s = snap()
    r = policy_rules(p, s)
    assert r.exclusions == {"db-1", "web-x"}  # on rack2-a, outside the scope
    assert {pin.vm for pin in r.pins} == {f"web-{i}" for i in range(6)}
    assert all(pin.hard and pin.hosts == {"rack1-a", "rack1-b"} for pin in r.pins)
    plan = make_plan(s, p, now=1_767_225_600.0, time_limit_s=1.0)
    assert plan.migrations, "the hot rack1-a must be relieved"
    assert {m.target for m in plan.migrations} == {"rack1-b"}
    # without the scope, rack2-a (the emptiest) takes VMs too
    free = make_plan(s, load_policy_text(HEAD), now=1_767_225_600.0, time_limit_s=1.0)
    assert "rack2-a" in {m.target for m in free.migrations}


def test_host_tags_scope() -> None:
    r = policy_rules(load_policy_text(HEAD + "scope: {host_tags: [gpu]}\n"), snap())
    assert all(pin.hosts == {"rack1-a"} for pin in r.pins)


def test_maintenance_schedule_marks_hosts() -> None:
    p = load_policy_text(
        HEAD + "rules:\n  maintenance:\n  - {host: 'rack1-*', start: '2026-01-01T00:00:00Z',"
        " end: '2026-01-01T06:00:00+00:00'}\n"
    )
    inside = apply_policy(p, snap(), now=1_767_225_600.0 + 3600)
    assert [h.state for h in inside.hosts] == [
        HostState.MAINTENANCE,
        HostState.MAINTENANCE,
        HostState.ACTIVE,
    ]
    after = apply_policy(p, snap(), now=1_767_225_600.0 + 6 * 3600)
    assert all(h.state is HostState.ACTIVE for h in after.hosts)
