"""Dead hosts: the classification of a stale host, and where the HA VMs of a fenced host may be
restarted. Pure: the executor's HA part (`execution/ha.py`) asks the hypervisors and the power
drivers, then calls these.

A host is

- ``stale`` while telemetry says so (its agent is silent or published its Last Will) but its
  libvirtd answered at least once in the last ``dead_after_probes`` probes (we do not know what
  runs there; its VMs are left alone);
- ``dead`` when telemetry says stale *and* its libvirtd did not answer ``dead_after_probes``
  consecutive probes (one per cycle). A power driver's answer is shown with the verdict; a dead
  host is only ever acted on after fencing (hard power-off, then power state OFF).

Restart placement uses the placement predicates of `domain/rules.py` (capacity with the policy's
headroom, hard pins, hard affinity and anti-affinity, CPU compatibility, active target), in
priority order, each placed VM counting towards its target's load for the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from rebalancerd.domain.model import ClusterSnapshot, HostState, Vm
from rebalancerd.domain.rules import (
    affinity_ok,
    anti_affinity_ok,
    capacity_with_headroom,
    fits,
    pin_allows,
    vm_cpu_compatible,
)


class Liveness(StrEnum):
    STALE = "stale"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Verdict:
    host: str
    liveness: Liveness
    reason: str
    """One line: the agent's status, the probes, the power state."""


def classify(
    host: str,
    *,
    agent: str,
    failed_probes: int,
    dead_after: int,
    power: str | None,
) -> Verdict:
    """A stale host's verdict. `agent`: "offline" (Last Will) or "silent"; `failed_probes`:
    consecutive cycles its libvirtd did not answer; `power`: the power driver's state, its error,
    or None without a driver."""
    parts = [
        "agent offline (last will)" if agent == "offline" else f"agent {agent}",
        f"libvirtd unreachable {min(failed_probes, dead_after)}/{dead_after} probes",
        f"power {power}" if power is not None else "no power driver",
    ]
    dead = failed_probes >= dead_after
    return Verdict(host, Liveness.DEAD if dead else Liveness.STALE, ", ".join(parts))


@dataclass(frozen=True, slots=True)
class RestartChoice:
    vm: str
    target: str | None
    reason: str = ""
    """Why no target (when `target` is None)."""


def restartable(vm: Vm) -> str | None:
    """None if the VM can be restarted elsewhere from its definition, else why not."""
    if vm.local_disk_mib > 0:
        return f"local disk ({vm.local_disk_mib} MiB): not on shared storage"
    return None


def place_restarts(
    snap: ClusterSnapshot,
    candidates: Sequence[Vm],
    *,
    headroom: float,
    exclude_hosts: frozenset[str] = frozenset(),
    extra_load: Mapping[str, tuple[int, int]] | None = None,
) -> list[RestartChoice]:
    """A target for each candidate (already in restart order), or the reason there is none.
    `snap` holds the healthy hosts' VMs; `extra_load` adds (cpu_mc, memory_mib) per host (VMs
    restarted there that telemetry does not list yet). Targets: active hosts not in
    `exclude_hosts`, least loaded (memory share) first among those that fit."""
    hosts = [h for h in snap.hosts if h.state is HostState.ACTIVE and h.name not in exclude_hosts]
    used: dict[str, list[int]] = {h.name: [0, 0] for h in snap.hosts}
    on: dict[str, set[str]] = {h.name: set() for h in snap.hosts}
    placement: dict[str, str] = {}
    for v in snap.vms:
        used[v.host][0] += v.cpu_used_mc
        used[v.host][1] += v.memory_mib
        on[v.host].add(v.name)
        placement[v.name] = v.host
    for name, (cpu, mem) in (extra_load or {}).items():
        if name in used:
            used[name][0] += cpu
            used[name][1] += mem
    pins = snap.rules.hard_pins()
    groups = snap.rules.groups
    out: list[RestartChoice] = []
    for vm in candidates:
        best: str | None = None
        best_share = 2.0
        why = "no active host"
        for h in hosts:
            cap_cpu = capacity_with_headroom(h.cpu_capacity_mc, headroom)
            cap_mem = capacity_with_headroom(h.memory_mib, headroom)
            u = used[h.name]
            if not pin_allows(pins.get(vm.name), h.name):
                why = "hard pin allows no healthy host"
            elif not vm_cpu_compatible(vm, h):
                why = "no CPU-compatible host"
            elif not anti_affinity_ok(vm.name, groups, on[h.name]):
                why = "anti-affinity"
            elif not affinity_ok(vm.name, groups, placement, h.name):
                why = "affinity"
            elif not fits(u[0], u[1], vm.cpu_used_mc, vm.memory_mib, cap_cpu, cap_mem):
                why = "no host has room"
            else:
                share = (u[1] + vm.memory_mib) / h.memory_mib
                if share < best_share:
                    best, best_share = h.name, share
        if best is None:
            out.append(RestartChoice(vm.name, None, why))
            continue
        used[best][0] += vm.cpu_used_mc
        used[best][1] += vm.memory_mib
        on[best].add(vm.name)
        placement[vm.name] = best
        out.append(RestartChoice(vm.name, best))
    return out
