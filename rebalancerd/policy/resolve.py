"""Apply a policy to a snapshot: resolve globs and tags into concrete domain rules and states.

Pure: the time used for maintenance schedules is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from rebalancerd.domain.load import Weights
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
from rebalancerd.policy.schema import Gaps, MemoryBasis, Policy, Scope


def policy_weights(policy: Policy) -> Weights:
    """The load weights a policy asks for: the one mapping from policy to `domain.load.Weights`,
    used by planner, executor, loop and replay alike (memory on the policy's `memory_basis`)."""
    w = policy.targets.weights
    used = policy.targets.memory_basis is MemoryBasis.USED
    return Weights(cpu=w.cpu, memory=w.memory, network=w.network, used_memory=used)


def policy_bands(policy: Policy) -> tuple[float | None, float | None, float | None]:
    """Half-width of the target band around the mean for (CPU, memory, network), None where the
    policy sets no target: `targets.band` wins, then `targets.max_gap` / 2 (a number applies to
    every resource of weight > 0)."""
    t = policy.targets
    w = t.weights
    out: list[float | None] = [None, None, None]
    if isinstance(t.max_gap, Gaps):
        out = [
            None if g is None else g / 2
            for g in (t.max_gap.cpu, t.max_gap.memory, t.max_gap.network)
        ]
    elif t.max_gap is not None:
        out = [t.max_gap / 2 if wt > 0 else None for wt in (w.cpu, w.memory, w.network)]
    if t.band is not None:
        for i, b in enumerate((t.band.cpu, t.band.memory, t.band.network)):
            if b is not None:
                out[i] = b
    return out[0], out[1], out[2]


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def host_in_scope(scope: Scope, host: Host) -> bool:
    if not scope.hosts and not scope.host_tags:
        return True
    return matches(host.name, scope.hosts) or bool(host.tags & set(scope.host_tags))


def vm_in_scope(scope: Scope, vm: Vm) -> bool:
    if not scope.vms and not scope.vm_tags:
        return True
    return matches(vm.name, scope.vms) or bool(vm.tags & set(scope.vm_tags))


def _parse_time(s: str) -> float:
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def maintenance_hosts(policy: Policy, now: float) -> set[str]:
    """Host names (or globs) in maintenance at wall time `now` (epoch seconds)."""
    out: set[str] = set()
    for m in policy.rules.maintenance:
        if m.start is not None and now < _parse_time(m.start):
            continue
        if m.end is not None and now >= _parse_time(m.end):
            continue
        out.add(m.host)
    return out


def policy_rules(policy: Policy, snapshot: ClusterSnapshot) -> ClusterRules:
    """Policy rules as domain rules, globs expanded against the snapshot's VMs and hosts."""
    vm_names = [v.name for v in snapshot.vms]
    host_names = [h.name for h in snapshot.hosts]

    def expand(patterns: Iterable[str], names: list[str]) -> frozenset[str]:
        pats = list(patterns)
        return frozenset(n for n in names if matches(n, pats))

    groups: list[AffinityGroup] = []
    for g in policy.rules.affinity:
        groups.append(AffinityGroup(g.name, expand(g.vms, vm_names), False, g.hard, g.weight))
    for g in policy.rules.anti_affinity:
        groups.append(AffinityGroup(g.name, expand(g.vms, vm_names), True, g.hard, g.weight))
    pins: list[Pin] = []
    for p in policy.rules.pins:
        for vm in expand([p.vm], vm_names):
            pins.append(Pin(vm, expand(p.hosts, host_names), p.hard, p.weight))
    excl = expand(policy.rules.exclusions, vm_names)
    # VMs outside the policy's scope are not moved by it.
    out_of_scope = frozenset(v.name for v in snapshot.vms if not vm_in_scope(policy.scope, v))
    if policy.scope.hosts or policy.scope.host_tags:
        # Host scope: VMs on hosts outside it are not moved, and VMs only move to hosts inside.
        inside = frozenset(h.name for h in snapshot.hosts if host_in_scope(policy.scope, h))
        out_of_scope |= frozenset(v.name for v in snapshot.vms if v.host not in inside)
        pins += [Pin(v.name, inside, True, 1.0) for v in snapshot.vms if v.name not in out_of_scope]
    return ClusterRules(tuple(groups), tuple(pins), excl | out_of_scope)


def power_curve_for(policy: Policy, host: Host) -> PowerCurve | None:
    for spec in policy.energy.power_curves:
        if (
            (not spec.hosts and not spec.host_tags)
            or matches(host.name, spec.hosts)
            or (host.tags & set(spec.host_tags))
        ):
            return PowerCurve(tuple(spec.watts))
    return host.power_curve


def apply_policy(policy: Policy, snapshot: ClusterSnapshot, now: float) -> ClusterSnapshot:
    """The snapshot as the planner should see it under this policy:
    maintenance hosts marked, power curves filled in, policy rules merged with snapshot rules."""
    maint = maintenance_hosts(policy, now)
    hosts = []
    for h in snapshot.hosts:
        state = h.state
        if state is HostState.ACTIVE and matches(h.name, maint):
            state = HostState.MAINTENANCE
        curve = power_curve_for(policy, h)
        if state is not h.state or curve is not h.power_curve:
            h = replace(h, state=state, power_curve=curve)  # every other field kept
        hosts.append(h)
    rules = snapshot.rules.merged(policy_rules(policy, snapshot))
    return ClusterSnapshot(tuple(hosts), snapshot.vms, rules, snapshot.taken_at)
