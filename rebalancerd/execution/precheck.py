"""The executor's side of the pre-checks: the state of one wave (`Wave`) and `ExecutorFacts`,
which answers the questions of `domain.checks` from it, so that `domain.checks.PRECHECKS` runs
against what the executor knows right before a move. Every answer is O(1): host states come
from the telemetry's per-host view, loads from the wave's running totals (`limits.HostLoads`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from rebalancerd.domain import checks
from rebalancerd.domain.checks import (
    WINDOW_REASON,
    Level,
    LimitValues,
    ReasonCode,
    first_failure,
)
from rebalancerd.domain.model import (
    AffinityGroup,
    ClusterRules,
    ClusterSnapshot,
    Host,
    HostState,
    Vm,
)
from rebalancerd.domain.plan import Migration, ReasonKind
from rebalancerd.domain.snapshot_facts import SnapshotFacts
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.guards import CircuitBreaker
from rebalancerd.execution.journal import Journal, JournalError
from rebalancerd.execution.limits import HostLoads, RunningMoves
from rebalancerd.execution.settings import bytes_to_move_mib, class_spec_for
from rebalancerd.execution.windows import window_block
from rebalancerd.planner.objectives.registry import objective_for
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.ports import Clock

log = structlog.get_logger("rebalancerd.executor")

DISCRETIONARY = frozenset(
    {ReasonKind.BALANCE, ReasonKind.HOTSPOT, ReasonKind.ENERGY, ReasonKind.TEMPORARY}
)
"""Reason kinds paused while backing off (drain, evacuation and rule repairs still run)."""

HostStates = Callable[[], Mapping[str, HostState]]
"""The latest state of every known host (`ports.TelemetrySource.host_states`)."""

DRY_LEVELS = frozenset({Level.VM, Level.TARGET, Level.DYNAMIC})
"""Dry-run and advisory waves run no move: the checks on free slots do not apply."""


class StatesOverlay(Mapping[str, HostState]):
    """Host states with some overridden (operator drains), without copying the others."""

    def __init__(self, overrides: Mapping[str, HostState], base: Mapping[str, HostState]) -> None:
        self._overrides = overrides
        self._base = base

    def __getitem__(self, name: str) -> HostState:
        found = self._overrides.get(name)
        return found if found is not None else self._base[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


def vm_anti_groups_of(rules: ClusterRules) -> dict[str, list[AffinityGroup]]:
    """VM -> its hard anti-affinity groups."""
    out: dict[str, list[AffinityGroup]] = {}
    for g in rules.groups:
        if g.anti and g.hard:
            for vm in g.vms:
                out.setdefault(vm, []).append(g)
    return out


@dataclass
class Wave:
    """The state of one execute() call."""

    snap: ClusterSnapshot
    """The snapshot with the policy applied (maintenance states, rules)."""
    policy: Policy
    placement: dict[str, str]
    """Where each VM is now, updated as moves succeed."""
    hosts: dict[str, Host]
    vms: dict[str, Vm]
    cooldowns: dict[str, float]
    """Cooldowns running when the wave started (a temporary hop may move a VM twice)."""
    open_vms: frozenset[str]
    hard_pins: dict[str, frozenset[str]]
    baseline: float
    loads: HostLoads
    """Per host: VMs there + incoming, and their load (the planner's CPU figure)."""
    anti_groups: dict[str, list[AffinityGroup]]
    started: int = 0
    dry_mib: int = 0
    """MiB the moves a dry run would have made so far would move."""
    judged_moves: dict[str, str] = field(default_factory=dict)
    compat: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    blocked_once: set[int] = field(default_factory=set)
    sharing: int = 1
    """Moves that may switch over together now: running + still pending in the step."""

    def move_mib(self, vm: Vm) -> int:
        return bytes_to_move_mib(vm, class_spec_for(self.policy, vm)[1])

    def settle(self, vm: str, source: str, target: str) -> None:
        """`vm` runs on `target` now (it left `source`)."""
        self.placement[vm] = target
        self.loads.remove(source, vm)
        self.loads.add(target, vm)


def new_wave(
    eff: ClusterSnapshot,
    policy: Policy,
    cooldowns: dict[str, float],
    open_vms: frozenset[str],
    baseline: float,
    running: RunningMoves,
) -> Wave:
    vms = eff.vm_map()
    t = policy.targets
    # the CPU figure the planner held each VM to: the one its mode's objective counts
    demand = objective_for(Mode(policy.mode)).cpu_demand
    pct, win = t.prediction.percentile, t.prediction.window
    cpu_of: dict[str, int] = {}

    def load_of(name: str) -> tuple[int, int]:
        vm = vms.get(name)
        if vm is None:
            return 0, 0
        cpu = cpu_of.get(name)
        if cpu is None:
            cpu = cpu_of[name] = demand.of(vm, pct, win)
        return cpu, vm.memory_mib

    placement = dict(eff.placement())
    loads = HostLoads(placement.items(), load_of)
    for r in running.moves():
        loads.add(r.target, r.vm)
    return Wave(
        snap=eff,
        policy=policy,
        placement=placement,
        hosts=eff.host_map(),
        vms=vms,
        cooldowns=cooldowns,
        open_vms=open_vms,
        hard_pins=eff.rules.hard_pins(),
        baseline=baseline,
        loads=loads,
        anti_groups=vm_anti_groups_of(eff.rules),
    )


class ExecutorView(Protocol):
    """What of the executor the pre-checks read."""

    clock: Clock
    journal: Journal
    breaker: CircuitBreaker
    adaptive: AdaptiveConcurrency
    host_states: HostStates | None
    running: RunningMoves

    def stopping(self) -> bool: ...
    def backoff_remaining(self) -> float: ...


class ExecutorFacts(SnapshotFacts):
    """`domain.checks.MoveFacts` for one planned move, answered from the wave and the executor."""

    def __init__(self, m: Migration, wave: Wave, ex: ExecutorView, *, dry: bool) -> None:
        super().__init__(
            m.vm,
            m.source,
            m.target,
            wave.vms,
            wave.hosts,
            wave.snap.rules.exclusions,
            wave.hard_pins,
        )
        self.m = m
        self.wave = wave
        self.ex = ex
        self.dry = dry
        self._states: Mapping[str, HostState] | None = None
        self._states_failed = False

    def _latest(self) -> Mapping[str, HostState] | None:
        if self.ex.host_states is None or self._states_failed:
            return None
        if self._states is None:
            try:
                self._states = self.ex.host_states()
            except Exception as e:  # a telemetry hiccup must not crash the executor
                log.warning("host_states_failed", error=str(e))
                self._states_failed = True
                return None
        return self._states

    def host_state(self, name: str) -> HostState | None:
        h = self.wave.hosts.get(name)
        if h is None:
            return None
        if self.ex.host_states is None:
            return h.state
        latest = self._latest()
        if latest is None:
            return HostState.STALE
        fresh = latest.get(name)
        if fresh is None:
            return HostState.STALE
        return fresh if fresh is not HostState.ACTIVE else h.state

    def placed_on(self) -> str | None:
        return self.wave.placement.get(self.vm_name)

    def local_disk_allowed(self) -> bool:
        vm = self.wave.vms[self.vm_name]
        return class_spec_for(self.wave.policy, vm)[1].non_shared_disk

    def unreconciled(self) -> bool:
        return self.vm_name in self.wave.open_vms

    def in_cooldown(self) -> bool:
        # In cooldown when the wave started = frozen for the planner: not moved in this wave,
        # even if the cooldown ends while earlier steps are still running.
        return self.vm_name in self.wave.cooldowns

    def stopping(self) -> bool:
        return self.ex.stopping()

    def backing_off(self) -> bool:
        return self.m.reason.kind in DISCRETIONARY and self.ex.backoff_remaining() > 0

    def window_block(self) -> ReasonCode | None:
        block = window_block(self.wave.policy.limits, self.ex.clock.now())
        return None if block is None else WINDOW_REASON[block]

    def circuit(self, host: str) -> ReasonCode | None:
        br = self.ex.breaker
        if br.is_open(host, self.ex.clock.monotonic()):
            return ReasonCode.CIRCUIT_OPEN
        if br.tripped(host) and self.ex.running.touching(host) > 0:
            return ReasonCode.CIRCUIT_HALF_OPEN  # one trial move at a time on a recovering host
        return None

    def anti_groups(self) -> Sequence[AffinityGroup]:
        return self.wave.anti_groups.get(self.vm_name, ())

    def vms_on_target(self) -> AbstractSet[str]:
        return self.wave.loads.vms(self.target)

    def target_load(self) -> tuple[int, int]:
        return self.wave.loads.load(self.target)

    def vm_load(self) -> tuple[int, int]:
        return self.wave.loads.load_of(self.vm_name)

    def headroom(self) -> float:
        return self.wave.policy.targets.headroom

    def limits(self) -> LimitValues:
        return self.wave.policy.limits

    def started(self) -> int:
        return self.wave.started

    def mib_used_last_hour(self) -> float | None:
        try:
            used = self.ex.journal.mib_since(self.ex.clock.now() - 3600.0)
        except JournalError:
            return None
        return used + (self.wave.dry_mib if self.dry else 0)

    def move_mib(self) -> int:
        return self.wave.move_mib(self.wave.vms[self.vm_name])

    def running(self) -> int:
        return len(self.ex.running)

    def running_from(self, host: str) -> int:
        return self.ex.running.from_host(host)

    def running_to(self, host: str) -> int:
        return self.ex.running.to_host(host)

    def touching(self, host: str) -> int:
        return self.ex.running.touching(host)

    def vm_in_flight(self) -> bool:
        return self.ex.running.has_vm(self.vm_name)

    def adaptive_cap(self, scope: str, policy_limit: int) -> int:
        return self.ex.adaptive.cap(scope, policy_limit)


def precheck(m: Migration, wave: Wave, ex: ExecutorView, *, dry: bool = False) -> str | None:
    """The first pre-check `m` fails (its reason), or None. A dry run (nothing moves) skips the
    checks on free slots."""
    failed = first_failure(
        checks.PRECHECKS, ExecutorFacts(m, wave, ex, dry=dry), levels=DRY_LEVELS if dry else None
    )
    return None if failed is None else str(failed[1])
