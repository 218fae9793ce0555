"""Which VMs are highly available under a policy (``ha.groups``), and in which order they are
restarted. Pure."""

from __future__ import annotations

from rebalancerd.domain.model import Vm
from rebalancerd.policy.resolve import matches
from rebalancerd.policy.schema import Policy


def ha_priority(policy: Policy, vm: Vm) -> int | None:
    """The VM's restart priority (the highest of the HA groups it is in), None if it is in none."""
    best: int | None = None
    for g in policy.ha.groups:
        member = matches(vm.name, g.vms) or not vm.tags.isdisjoint(g.vm_tags)
        if member and (best is None or g.priority > best):
            best = g.priority
    return best


def restart_order(policy: Policy, vms: list[Vm]) -> list[tuple[Vm, int]]:
    """The HA VMs among `vms` with their priority, highest priority first, then by name."""
    out = [(v, p) for v in vms if (p := ha_priority(policy, v)) is not None]
    out.sort(key=lambda vp: (-vp[1], vp[0].name))
    return out
