"""The planning problem in integer-indexed form: hosts and VMs as list positions, loads as ints.

Built once per plan from the policy-applied snapshot. Everything the greedy, the CP-SAT model,
the sequencer and the verifier need to decide "may VM v run on host h?" lives here, so they all
agree on the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from rebalancerd.domain import checks
from rebalancerd.domain.checks import Check, Level, ReasonCode
from rebalancerd.domain.load import vm_memory
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.domain.plan import ReasonKind
from rebalancerd.domain.rules import capacity_with_headroom, overcommit_capacity
from rebalancerd.domain.snapshot_facts import SnapshotFacts, guarded_departures
from rebalancerd.planner.objectives.demand import cpu_demand_for
from rebalancerd.policy.resolve import policy_bands, policy_weights
from rebalancerd.policy.schema import MemoryBasis, Mode, Policy

_BAND_MODES = (Mode.BALANCE, Mode.ADVISORY)
"""Modes whose plan aims at the target band (the others have their own goal)."""

# Migration cost: a dirty page rate makes a migration resend memory; count this many seconds.
DIRTY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    vms: tuple[int, ...]
    anti: bool
    hard: bool
    weight: float


@dataclass(slots=True)
class Problem:
    snapshot: ClusterSnapshot
    """The snapshot after apply_policy."""
    mode: Mode
    policy_name: str
    hosts: list[Host]
    vms: list[Vm]
    host_index: dict[str, int]
    vm_index: dict[str, int]
    raw_cpu: list[int]
    """Host CPU capacity (mc), no headroom: the denominator of normalised load."""
    raw_mem: list[int]
    cap_cpu: list[int]
    """Capacity with headroom: planned demand must stay at or below this."""
    cap_mem: list[int]
    receive: list[bool]
    """Host is ACTIVE and may receive VMs."""
    empty_reason: list[ReasonKind | None]
    """DRAIN / EVACUATE when the host must be emptied."""
    cpu: list[int]
    """Predicted CPU demand (mc) per VM."""
    mem: list[int]
    """Memory (MiB) per VM on the policy's memory basis: used (configured where not measured)
    or configured. Loads and the headroom rule (mem + headroom <= physical) count it."""
    cfg: list[int]
    """Configured memory (MiB) per VM: the overcommit rule counts it (<= cap_cfg)."""
    cap_cfg: list[int]
    """Configured memory a host may hold: physical x memory_overcommit."""
    net: list[int]
    """Network throughput per VM, kB/s."""
    raw_net: list[int]
    """Host NIC capacity, kB/s."""
    origin: list[int]
    """Host index of each VM in the snapshot."""
    movable: list[bool]
    why_fixed: dict[int, str]
    allowed: list[frozenset[int] | None]
    """Hosts a VM may run on (hard pins, CPU model/features); None = any receiving host."""
    soft_pins: list[tuple[int, frozenset[int], float, str]]
    cost_mib: list[float]
    """Migration cost in MiB-equivalents (memory + local disk + dirty rate x DIRTY_SECONDS)."""
    move_mib: list[int]
    """What a migration transfers (MiB): allocated memory + non-shared disk."""
    groups: list[Group]
    anti_of: dict[int, list[int]]
    """VM -> indexes of hard anti-affinity groups it belongs to."""
    aff_of: dict[int, int]
    """VM -> index of the hard affinity group it belongs to (first one)."""
    w_cpu: float
    w_mem: float
    w_net: float
    bands: tuple[float | None, float | None, float | None]
    """Half-width of the target band around the mean for CPU, memory, network (None: no target;
    all None: no target at all, the balance passes minimise the spread)."""
    high: float
    low: float
    headroom: float
    hysteresis: float
    max_moves: int
    max_mib: int | None
    max_concurrent: int
    max_per_source: int
    max_per_target: int
    min_active_hosts: int
    spare_capacity: float
    notes: list[str] = field(default_factory=list)
    percentile: float = 95.0
    """The policy's prediction percentile and window (consolidate predicts per host)."""
    window: int = 12

    @property
    def n_hosts(self) -> int:
        return len(self.hosts)

    @property
    def n_vms(self) -> int:
        return len(self.vms)

    def may_host(self, v: int, h: int) -> bool:
        """Static part of 'v may run on h' (receiving host, pins, CPU compatibility)."""
        if h == self.origin[v] and self.empty_reason[h] is None:
            allowed = self.allowed[v]
            return allowed is None or h in allowed
        if not self.receive[h] or self.empty_reason[h] is not None:
            return False
        allowed = self.allowed[v]
        return allowed is None or h in allowed

    def load_cpu_norm(self, h: int, cpu: int) -> float:
        return cpu / self.raw_cpu[h]

    def load_mem_norm(self, h: int, mem: int) -> float:
        return mem / self.raw_mem[h]


_WHY_FIXED = {
    ReasonCode.EXCLUDED: "excluded by policy (never-migrate or out of scope)",
    ReasonCode.NOT_MIGRATABLE: "not migratable (devices that cannot move)",
    ReasonCode.SOURCE_STALE: "host {host} is stale",
}
"""How the plan explains a VM the pre-checks keep in place (others: the check's name)."""


def _planner_checks() -> tuple[list[Check], list[Check], list[Check]]:
    """The pre-checks the planner evaluates from the snapshot alone: VM-level ones (may the VM
    move at all), host-level ones (may the host receive) and VM-and-host ones (cached per
    signature)."""
    evaluable = [c for c in checks.PRECHECKS if c.planner_evaluable]
    vm_level = [c for c in evaluable if c.level is Level.VM]
    host_level = [c for c in evaluable if c.level is Level.TARGET and c.signature is None]
    pair_level = [c for c in evaluable if c.level is Level.TARGET and c.signature is not None]
    return vm_level, host_level, pair_level


def _allowed_hosts(
    vms: list[Vm], hosts: list[Host], facts_of: SnapshotFacts, pair_level: list[Check]
) -> list[frozenset[int] | None]:
    """Per VM, the hosts every VM-and-host check allows (None = any): each check evaluated once
    per distinct signature and host (a VM with no CPU needs, no pin: no evaluation at all)."""
    cache: dict[tuple[int, object], frozenset[int]] = {}
    allowed: list[frozenset[int] | None] = []
    for v in vms:
        facts_of.reset(v.name, v.host)
        a: frozenset[int] | None = None
        for ci, c in enumerate(pair_level):
            assert c.signature is not None
            sig = c.signature(facts_of)
            if sig is None:
                continue
            key = (ci, sig)
            ok = cache.get(key)
            if ok is None:
                ok_hosts: list[int] = []
                for i, h in enumerate(hosts):
                    facts_of.target_name = h.name
                    if c.test(facts_of) is None:
                        ok_hosts.append(i)
                ok = cache[key] = frozenset(ok_hosts)
            a = ok if a is None else a & ok
        allowed.append(a)
    return allowed


def build_problem(
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    frozen: frozenset[str] = frozenset(),
    departed: Mapping[str, AbstractSet[str]] | None = None,
    max_moves: int | None = None,
    max_mib: int | None = None,
) -> Problem:
    """`snapshot` must already have the policy applied (apply_policy). `departed`: VM -> hosts
    it left within the policy's return guard (the executor's `recent_departures`): the
    return-guard pre-check keeps those hosts out of the VM's allowed hosts."""
    hosts = list(snapshot.hosts)
    vms = list(snapshot.vms)
    host_index = {h.name: i for i, h in enumerate(hosts)}
    vm_index = {v.name: i for i, v in enumerate(vms)}
    t = policy.targets
    headroom = t.headroom
    pct, win = t.prediction.percentile, t.prediction.window

    raw_cpu = [h.cpu_capacity_mc for h in hosts]
    raw_mem = [h.memory_mib for h in hosts]
    cap_cpu = [capacity_with_headroom(c, headroom) for c in raw_cpu]
    cap_mem = [capacity_with_headroom(m, headroom) for m in raw_mem]
    cap_cfg = [overcommit_capacity(m, t.memory_overcommit) for m in raw_mem]
    empty_reason: list[ReasonKind | None] = []
    for h in hosts:
        if h.state is HostState.MAINTENANCE:
            empty_reason.append(ReasonKind.DRAIN)
        elif h.state is HostState.DEGRADED and policy.rules.evacuate_degraded:
            empty_reason.append(ReasonKind.EVACUATE)
        else:
            empty_reason.append(None)

    rules = snapshot.rules
    hard_pins = rules.hard_pins()
    vm_level, host_level, pair_level = _planner_checks()
    facts = SnapshotFacts(
        "",
        "",
        "",
        snapshot.vm_map(),
        snapshot.host_map(),
        rules.exclusions,
        hard_pins,
        departed=guarded_departures(departed or {}, rules),
    )
    receive: list[bool] = []
    for h in hosts:  # the host may receive VMs (active)
        facts.target_name = h.name
        receive.append(all(c.test(facts) is None for c in host_level))
    origin = [host_index[v.host] for v in vms]
    movable: list[bool] = []
    why_fixed: dict[int, str] = {}
    for i, v in enumerate(vms):
        why = ""
        facts.reset(v.name, v.host)
        for c in vm_level:
            code = c.test(facts)
            if code is not None:
                why = _WHY_FIXED.get(code, f"pre-check {c.name}: {code}").format(host=v.host)
                break
        if not why and v.name in frozen:
            why = "frozen this cycle (cooldown or in flight)"
        movable.append(not why)
        if why:
            why_fixed[i] = why

    # Allowed hosts: hard pins and CPU compatibility; computed once per distinct signature.
    allowed = _allowed_hosts(vms, hosts, facts, pair_level)

    soft_pins = [
        (
            vm_index[p.vm],
            frozenset(host_index[n] for n in p.hosts if n in host_index),
            p.weight,
            p.vm,
        )
        for p in rules.pins
        if not p.hard and p.vm in vm_index
    ]

    groups: list[Group] = []
    anti_of: dict[int, list[int]] = {}
    aff_of: dict[int, int] = {}
    for g in rules.groups:
        members = tuple(sorted(vm_index[n] for n in g.vms if n in vm_index))
        if len(members) < 2:
            continue
        gi = len(groups)
        groups.append(Group(g.name, members, g.anti, g.hard, g.weight))
        if g.hard:
            for m in members:
                if g.anti:
                    anti_of.setdefault(m, []).append(gi)
                else:
                    aff_of.setdefault(m, gi)

    # The CPU figure the mode's objective counts (planner/objectives/demand.py): consolidate
    # counts current use, the others the predicted demand.
    cpu_demand = cpu_demand_for(Mode(policy.mode))
    cpu = [cpu_demand.of(v, pct, win) for v in vms]
    used = t.memory_basis is MemoryBasis.USED
    mem = [vm_memory(v, used) for v in vms]
    cfg = [v.memory_mib for v in vms]
    net = [int(v.net_bytes_s / 1000) for v in vms]
    raw_net = [max(1, int(h.net_capacity_bytes_s / 1000)) for h in hosts]
    cost = [v.memory_mib + v.local_disk_mib + v.dirty_mib_s * DIRTY_SECONDS for v in vms]
    move_mib = [v.memory_mib + v.local_disk_mib for v in vms]

    budget = policy.limits.max_per_cycle
    if max_moves is not None:
        budget = min(budget, max_moves)
    weights = policy_weights(policy)  # the one policy -> weights mapping
    w_cpu, w_mem = weights.cpu, weights.memory
    if w_cpu + w_mem <= 0:  # the spread passes need CPU or memory: network-only counts both
        w_cpu = w_mem = 1.0
    return Problem(
        snapshot=snapshot,
        mode=Mode(policy.mode),
        policy_name=policy.name,
        hosts=hosts,
        vms=vms,
        host_index=host_index,
        vm_index=vm_index,
        raw_cpu=raw_cpu,
        raw_mem=raw_mem,
        cap_cpu=cap_cpu,
        cap_mem=cap_mem,
        receive=receive,
        empty_reason=empty_reason,
        cpu=cpu,
        mem=mem,
        origin=origin,
        movable=movable,
        why_fixed=why_fixed,
        allowed=allowed,
        soft_pins=soft_pins,
        cost_mib=cost,
        move_mib=move_mib,
        groups=groups,
        anti_of=anti_of,
        aff_of=aff_of,
        w_cpu=w_cpu,
        w_mem=w_mem,
        w_net=weights.network,
        bands=policy_bands(policy) if Mode(policy.mode) in _BAND_MODES else (None, None, None),
        cfg=cfg,
        cap_cfg=cap_cfg,
        net=net,
        raw_net=raw_net,
        high=t.high_watermark,
        low=t.low_watermark,
        headroom=headroom,
        hysteresis=t.hysteresis,
        max_moves=max(0, budget),
        max_mib=max_mib,
        max_concurrent=policy.limits.max_concurrent,
        max_per_source=policy.limits.max_per_source,
        max_per_target=policy.limits.max_per_target,
        min_active_hosts=policy.energy.min_active_hosts,
        spare_capacity=policy.energy.spare_capacity,
        percentile=pct,
        window=win,
    )
