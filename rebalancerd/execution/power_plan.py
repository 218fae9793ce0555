"""Which hosts to switch on or off this cycle (pure: no I/O, no clock).

Capacity that counts is each host's CPU and memory minus the policy's `headroom` and
`spare_capacity`. Demand is the VMs' predicted CPU (the policy's percentile and window) and
their configured memory, CPU projected `boot_lead_s` ahead from the cluster's recent trend
(`forecast`), so a host is woken while there is still time for it to boot.

- wake: in consolidate mode with switching on, when the projected demand does not fit on the
  active and waking hosts, or fewer than `min_active_hosts + spare_hosts` are on: standby
  hosts, largest first, until it fits; in any other mode (or switching off): every standby
  host, one per cycle (they are no use to a balance or a drain switched off);
- sleep: in consolidate mode with switching on, at most one empty active host per cycle (the
  highest idle power first, then the smallest) whose removal still leaves the projected demand
  fitting with a 10 % margin (no flapping) and enough hosts on.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from rebalancerd.domain.model import ClusterSnapshot, Host, HostState
from rebalancerd.policy.schema import Mode, Policy

SLEEP_MARGIN = 1.10
"""Capacity left after a power-off must exceed the projected demand by this factor."""


@dataclass(frozen=True, slots=True)
class Demand:
    cpu_mc: int
    memory_mib: int
    forecast_cpu_mc: int


@dataclass(frozen=True, slots=True)
class PowerDecision:
    wake: tuple[str, ...] = ()
    sleep: tuple[str, ...] = ()
    why: str = ""


def cluster_demand(snap: ClusterSnapshot, policy: Policy) -> tuple[int, int]:
    """(predicted CPU in millicores, configured memory in MiB) of every VM."""
    p = policy.targets.prediction
    cpu = sum(v.cpu_demand_mc(p.percentile, p.window) for v in snap.vms)
    mem = sum(v.memory_mib for v in snap.vms)
    return cpu, mem


def forecast(samples: Sequence[tuple[float, float]], lead_s: float) -> float:
    """The last sample's value projected `lead_s` ahead along the least-squares trend of
    `samples` ((time, value), oldest first); never below the last value (a falling trend does
    not switch hosts off early)."""
    if not samples:
        return 0.0
    last = samples[-1][1]
    if len(samples) < 2 or lead_s <= 0:
        return last
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var <= 0:
        return last
    slope = sum((t - mt) * (v - mv) for t, v in samples) / var
    return last + max(0.0, slope) * lead_s


def _usable(hosts: Collection[Host], policy: Policy) -> tuple[float, float]:
    keep = min(0.95, policy.targets.headroom + policy.energy.spare_capacity)
    cpu = sum(h.cpu_capacity_mc for h in hosts) * (1 - keep)
    mem = sum(h.memory_mib for h in hosts) * (1 - keep)
    return cpu, mem


def _fits(hosts: Collection[Host], demand: Demand, policy: Policy, margin: float = 1.0) -> bool:
    cpu, mem = _usable(hosts, policy)
    need_hosts = policy.energy.min_active_hosts + policy.energy.spare_hosts
    return (
        len(hosts) >= need_hosts
        and cpu >= demand.forecast_cpu_mc * margin
        and mem >= demand.memory_mib * margin
    )


def _idle_watts(h: Host) -> float:
    return h.power_curve.idle if h.power_curve is not None else 0.0


def decide(
    snap: ClusterSnapshot,
    policy: Policy,
    demand: Demand,
    *,
    switchable: Collection[str],
    busy: Collection[str] = (),
) -> PowerDecision:
    """What to switch (see the module docstring). `switchable`: hosts with a power driver;
    `busy`: hosts a move in flight touches (never switched off)."""
    by_state: dict[HostState, list[Host]] = {}
    for h in snap.hosts:
        by_state.setdefault(h.state, []).append(h)
    active = by_state.get(HostState.ACTIVE, [])
    waking = by_state.get(HostState.WAKING, [])
    standby = [h for h in by_state.get(HostState.STANDBY, []) if h.name in switchable]
    consolidating = policy.mode is Mode.CONSOLIDATE and policy.energy.switching
    if not consolidating:
        if standby:
            return PowerDecision(wake=(standby[0].name,), why="not consolidating")
        return PowerDecision()
    on = active + waking
    if not _fits(on, demand, policy):
        chosen: list[str] = []
        pool = sorted(standby, key=lambda h: (-h.cpu_capacity_mc, h.name))
        for h in pool:
            chosen.append(h.name)
            on = [*on, h]
            if _fits(on, demand, policy):
                break
        if chosen:
            return PowerDecision(wake=tuple(chosen), why="demand ahead")
        return PowerDecision(why="demand ahead, no standby host")
    if waking:
        return PowerDecision(why="a host is waking")
    used = {v.host for v in snap.vms}
    empty = [
        h for h in active if h.name in switchable and h.name not in used and h.name not in busy
    ]
    empty.sort(key=lambda h: (-_idle_watts(h), h.cpu_capacity_mc, h.name))
    for h in empty:
        rest = [a for a in active if a.name != h.name]
        if _fits(rest, demand, policy, SLEEP_MARGIN):
            return PowerDecision(sleep=(h.name,), why="empty host")
    return PowerDecision()
