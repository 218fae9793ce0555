"""Placement rules: the one definition of "may this VM run on that host".

Written once, here, and used by the planner (`planner/problem.py`, `planner/state.py`, on
integer-indexed arrays), the executor's pre-checks and the replay's admission. Each predicate
takes plain values so that each caller can keep its own fast representation of the cluster.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet

from rebalancerd.domain.model import AffinityGroup, Host, Vm


def capacity_with_headroom(raw: int, headroom: float) -> int:
    """What planned load may reach on a host of `raw` capacity when `headroom` (0..1) stays free."""
    return int((1.0 - headroom) * raw)


def overcommit_capacity(raw: int, ratio: float) -> int:
    """Configured memory a host of `raw` MiB may hold under `memory_overcommit` = `ratio`."""
    return int(raw * ratio)


def configured_fits(used_cfg: int, cfg: int, cap_cfg: int) -> bool:
    """A VM configured with `cfg` MiB fits a host already holding `used_cfg` MiB configured
    under the overcommit limit `cap_cfg` (physical x ratio)."""
    return used_cfg + cfg <= cap_cfg


def fits(used_cpu: int, used_mem: int, cpu: int, mem: int, cap_cpu: int, cap_mem: int) -> bool:
    """A VM of (`cpu`, `mem`) fits on a host that already holds (`used_cpu`, `used_mem`) under
    the capacities (`cap_cpu`, `cap_mem`), which already have the headroom taken off. Memory
    here is the policy's memory basis (used, or configured); the overcommit limit on configured
    memory is `configured_fits`."""
    return used_cpu + cpu <= cap_cpu and used_mem + mem <= cap_mem


def cpu_compatible(
    vm_model: str,
    vm_features: AbstractSet[str],
    host_model: str,
    host_features: AbstractSet[str],
) -> bool:
    """The host's CPU can run the guest: the same model where both name one, and every CPU
    feature the guest requires. A host that lists no features offers none: a guest that needs
    features is incompatible with it (unknown is not taken as yes)."""
    if vm_model and host_model and vm_model != host_model:
        return False
    return vm_features <= host_features


def vm_cpu_compatible(vm: Vm, host: Host) -> bool:
    return cpu_compatible(vm.cpu_model, vm.required_cpu_features, host.cpu_model, host.cpu_features)


def networks_available(
    vm_networks: AbstractSet[str], host_networks: AbstractSet[str] | None
) -> bool:
    """The host has every network/bridge the guest's NICs attach to. Unknown host networks
    (None: no agent report with them and none in the inventory) do not block: libvirt refuses
    such a migration cleanly before the guest leaves its source (the target cannot start QEMU
    without the NIC's network), whereas blocking would freeze every host of a cluster whose
    agents are older than the networks field."""
    return host_networks is None or vm_networks <= host_networks


def vm_networks_available(vm: Vm, host: Host) -> bool:
    return networks_available(vm.networks, host.networks)


def pin_allows(pins: AbstractSet[str] | None, host: str) -> bool:
    """A hard pin (the set of hosts a VM may run on; None = not pinned) allows `host`."""
    return pins is None or host in pins


def anti_affinity_ok(vm: str, groups: Iterable[AffinityGroup], on_target: AbstractSet[str]) -> bool:
    """No other member of `vm`'s hard anti-affinity groups is among `on_target` (the VMs on the
    target host, and those on their way there)."""
    for g in groups:
        if g.anti and g.hard and vm in g.vms and not (g.vms - {vm}).isdisjoint(on_target):
            return False
    return True


def anti_affinity_count_ok(others_on_target: int) -> bool:
    """The counter form of `anti_affinity_ok` (the planner keeps, per group and host, how many
    members are there): no other member of the group on the target."""
    return others_on_target <= 0


def affinity_ok(
    vm: str, groups: Iterable[AffinityGroup], placement_of: dict[str, str], host: str
) -> bool:
    """Every other member of `vm`'s hard affinity groups runs on `host` (members not in the
    placement are ignored)."""
    for g in groups:
        if not g.anti and g.hard and vm in g.vms:
            for other in g.vms - {vm}:
                where = placement_of.get(other)
                if where is not None and where != host:
                    return False
    return True
