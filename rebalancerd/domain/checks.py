"""The pre-checks of one move, written once: every reason a move may be refused, in order.

`PRECHECKS` is one ordered list of named checks (the shape of the Kubernetes descheduler's
default-evictor constraints). Each check has its `ReasonCode`, says whether a failure *waits*
(retry for a slot later in the step) or *skips* the move, at what `Level` it decides and what it
`Needs` to know:

- ``VM`` level: may this VM move at all (excluded, not migratable, stale source, cooldown...);
- ``TARGET`` level: may it go to that host (pins, CPU compatibility, target state, breakers);
- ``DYNAMIC`` level: given what runs now (anti-affinity, capacity with headroom, budgets);
- ``SLOT`` level: a free slot among the moves running at this instant (concurrency limits);
- ``CONFIRMED`` level: what the hypervisors themselves say right before the start (the VM runs on
  the source and not on the target; the target really has room): only the executor asks them,
  after the other checks passed (`MoveFacts.live` is None for everyone else: no objection).

Three callers evaluate the list, each through its own `MoveFacts` (the questions a check may
ask, answered from the caller's own representation of the cluster):

- the planner evaluates the VM- and TARGET-level checks that need only the policy-applied
  snapshot and the recent moves (`Need.SNAPSHOT`, `Need.HISTORY`) once per VM (TARGET checks
  once per distinct `signature`) to build `movable` / `allowed` / `receive`
  (`planner/problem.py`);
- the executor runs the whole list before every move (`execution/precheck.py`);
- the replay's admission runs it too (`sim/replay.py`), answering what it does not model (the
  journal, breakers) with "no objection".

Pure: no I/O, no clock (time-dependent answers come from the facts).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Protocol

from rebalancerd.domain.model import AffinityGroup, Host, HostState, Vm
from rebalancerd.domain.rules import (
    anti_affinity_ok,
    capacity_with_headroom,
    cpu_compatible,
    fits,
    networks_available,
    pin_allows,
)


class ReasonCode(StrEnum):
    """Every reason the executor reports for a move it skips or holds back (metric labels and
    log fields carry these strings)."""

    UNKNOWN_VM = "unknown_vm"
    UNKNOWN_HOST = "unknown_host"
    SAME_HOST = "same_host"
    VM_NOT_ON_SOURCE = "vm_not_on_source"
    UNRECONCILED = "unreconciled"
    EXCLUDED = "excluded"
    PINNED = "pinned"
    NOT_MIGRATABLE = "not_migratable"
    LOCAL_DISK = "local_disk"
    SOURCE_STALE = "source_stale"
    TARGET_MAINTENANCE = "target_maintenance"
    TARGET_DEGRADED = "target_degraded"
    TARGET_STANDBY = "target_standby"
    TARGET_WAKING = "target_waking"
    TARGET_FAILED_WAKE = "target_failed_wake"
    TARGET_STALE = "target_stale"
    TARGET_UNKNOWN = "target_unknown"
    CPU_INCOMPATIBLE = "cpu_incompatible"
    NETWORK_MISSING = "network_missing"
    COOLDOWN = "cooldown"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    INVALID_TIMEZONE = "invalid_timezone"
    BLACKOUT = "blackout"
    OUTSIDE_WINDOW = "outside_window"
    CIRCUIT_OPEN = "circuit_open"
    CIRCUIT_HALF_OPEN = "circuit_half_open"
    ANTI_AFFINITY = "anti_affinity"
    CAPACITY = "capacity"
    PER_CYCLE_LIMIT = "per_cycle_limit"
    MIB_PER_HOUR = "mib_per_hour"
    JOURNAL_UNWRITABLE = "journal_unwritable"
    CONCURRENCY_ZERO = "concurrency_zero"
    HOST_CONCURRENCY_ZERO = "host_concurrency_zero"
    VM_IN_FLIGHT = "vm_in_flight"
    CONCURRENCY = "concurrency"
    PER_SOURCE = "per_source"
    PER_TARGET = "per_target"
    ADAPTIVE_CONCURRENCY = "adaptive_concurrency"
    ADAPTIVE_HOST = "adaptive_host"
    RETURN_TRIP = "return_trip"
    CONFIRMED_NOT_ON_SOURCE = "confirmed_not_on_source"
    CONFIRMED_NO_ROOM = "confirmed_no_room"
    # decided outside the list: the hypervisor's own compatibility verdict, the start stagger,
    # and the modes that never move
    INCOMPATIBLE = "incompatible"
    HYPERVISOR_UNREACHABLE = "hypervisor_unreachable"
    STAGGER = "stagger"
    DRY_RUN = "dry_run"
    ADVISORY = "advisory"


TARGET_STATE_REASON = {
    HostState.MAINTENANCE: ReasonCode.TARGET_MAINTENANCE,
    HostState.DEGRADED: ReasonCode.TARGET_DEGRADED,
    HostState.STANDBY: ReasonCode.TARGET_STANDBY,
    HostState.WAKING: ReasonCode.TARGET_WAKING,
    HostState.FAILED_WAKE: ReasonCode.TARGET_FAILED_WAKE,
    HostState.STALE: ReasonCode.TARGET_STALE,
}
WINDOW_REASON = {
    "invalid_timezone": ReasonCode.INVALID_TIMEZONE,
    "blackout": ReasonCode.BLACKOUT,
    "outside_window": ReasonCode.OUTSIDE_WINDOW,
}
"""`execution.windows.window_block`'s answers as reason codes."""


class Level(Enum):
    VM = "vm"
    TARGET = "target"
    DYNAMIC = "dynamic"
    SLOT = "slot"
    CONFIRMED = "confirmed"


class Need(Enum):
    SNAPSHOT = "snapshot"
    """The policy-applied snapshot: VMs, hosts and their states, rules."""
    MOVE = "move"
    """The move as requested (its source, whether the VM is still there)."""
    MIGRATION = "migration"
    """The policy's migration classes (how the VM would be moved)."""
    RUNTIME = "runtime"
    """What only the mover knows: journal, breakers, cooldowns, stop, back-off, clock."""
    LOAD = "load"
    """What runs where right now, and the moves already started."""
    HISTORY = "history"
    """The hosts each VM left recently (the executor's journal; the planner is given them)."""
    LIVE = "live"
    """What the source's and the target's hypervisors say right before the start."""


FREE_MEMORY_MARGIN_MIB = 256
"""Memory a target must keep free beyond the VM and the moves on their way there (the node's
free memory, where its hypervisor reports it)."""


@dataclass(frozen=True, slots=True)
class LiveFacts:
    """What the two hypervisors say about one move right before it starts (not telemetry)."""

    on_source: bool
    """The VM runs on the source."""
    on_target: bool
    """The VM is active on the target (running, or an incoming half)."""
    vm_mib: int | None
    """The VM's memory as the source's hypervisor has it (None = not found there)."""
    target_domains_mib: int
    """Memory of the domains active on the target (this VM excluded)."""
    incoming_mib: int
    """Memory of the moves on their way to the target that are not active there yet."""
    target_free_mib: int | None
    """The target node's free memory (None = its hypervisor does not say)."""


class LimitValues(Protocol):
    """The policy's migration limits a check reads (`policy.schema.Limits` has them)."""

    @property
    def max_concurrent(self) -> int: ...
    @property
    def max_per_source(self) -> int: ...
    @property
    def max_per_target(self) -> int: ...
    @property
    def max_per_cycle(self) -> int: ...
    @property
    def max_mib_per_hour(self) -> int | None: ...
    @property
    def return_guard_s(self) -> float: ...


class MoveFacts(Protocol):
    """The questions a check may ask about moving `vm_name` from `source` to `target`."""

    @property
    def vm_name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def target(self) -> str: ...

    # Need.SNAPSHOT
    def vm(self) -> Vm | None: ...
    def host(self, name: str) -> Host | None: ...
    def host_state(self, name: str) -> HostState | None:
        """The latest known state of a host (None = unknown host)."""
        ...

    def excluded(self) -> bool: ...
    def hard_pins(self) -> AbstractSet[str] | None: ...

    # Need.MOVE
    def placed_on(self) -> str | None:
        """Where the VM runs now."""
        ...

    # Need.MIGRATION
    def local_disk_allowed(self) -> bool:
        """The VM's migration class copies non-shared disks."""
        ...

    # Need.RUNTIME
    def unreconciled(self) -> bool: ...
    def in_cooldown(self) -> bool: ...
    def stopping(self) -> bool: ...
    def backing_off(self) -> bool:
        """A discretionary move while the 'moves stopped helping' pause runs."""
        ...

    def window_block(self) -> ReasonCode | None: ...
    def circuit(self, host: str) -> ReasonCode | None: ...

    # Need.LOAD
    def anti_groups(self) -> Sequence[AffinityGroup]:
        """The VM's hard anti-affinity groups."""
        ...

    def vms_on_target(self) -> AbstractSet[str]:
        """VMs on the target now and those on their way there."""
        ...

    def target_load(self) -> tuple[int, int]:
        """(CPU mc, memory MiB) of `vms_on_target`."""
        ...

    def vm_load(self) -> tuple[int, int]:
        """(CPU mc, memory MiB) the VM brings (the figures the planner plans with)."""
        ...

    def headroom(self) -> float: ...
    def limits(self) -> LimitValues: ...
    def started(self) -> int:
        """Moves started this cycle."""
        ...

    def mib_used_last_hour(self) -> float | None:
        """MiB moved over the sliding hour (None = cannot tell: the journal is unreadable)."""
        ...

    def move_mib(self) -> int: ...
    def running(self) -> int: ...
    def running_from(self, host: str) -> int: ...
    def running_to(self, host: str) -> int: ...
    def touching(self, host: str) -> int:
        """Running moves out of or into `host`."""
        ...

    def vm_in_flight(self) -> bool: ...
    def adaptive_cap(self, scope: str, policy_limit: int) -> int: ...

    # Need.HISTORY
    def recently_left(self) -> AbstractSet[str]:
        """Hosts the VM left within the policy's return guard (`limits.return_guard_s`)."""
        ...

    def empties_source(self) -> bool:
        """The move empties its source (a drain or an evacuation): exempt from the guard."""
        ...

    # Need.LIVE
    def live(self) -> LiveFacts | None:
        """What the hypervisors say right before the start; None = nobody asked them (the
        planner, the replay, the executor's checks before it asks): the CONFIRMED checks pass."""
        ...


PLANNER_NEEDS = frozenset({Need.SNAPSHOT, Need.HISTORY})
"""What the planner knows: the snapshot, and the recent moves the executor gives it."""

TestFn = Callable[[MoveFacts], ReasonCode | None]
SignatureFn = Callable[[MoveFacts], Hashable | None]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    reason: ReasonCode
    """The reason a failure reports (some checks name a more precise one: `test` returns it)."""
    level: Level
    needs: frozenset[Need]
    test: TestFn
    """None = pass, else the reason."""
    waits: bool = False
    """A failure waits for a slot later in the step (if other moves run) instead of skipping."""
    signature: SignatureFn | None = None
    """TARGET checks: what of the VM the verdict depends on (the planner evaluates the check
    once per distinct signature and host); None from it = the check passes on every host for
    this VM. Without a signature the verdict depends on the host alone."""

    @property
    def planner_evaluable(self) -> bool:
        return self.level in (Level.VM, Level.TARGET) and self.needs <= PLANNER_NEEDS


def first_failure(
    checks: Sequence[Check], facts: MoveFacts, *, levels: AbstractSet[Level] | None = None
) -> tuple[Check, ReasonCode] | None:
    """The first check of `checks` (in order; only those of `levels` if given) that fails."""
    for c in checks:
        if levels is not None and c.level not in levels:
            continue
        why = c.test(facts)
        if why is not None:
            return c, why
    return None


# -- the checks -------------------------------------------------------------------------------
_S = frozenset({Need.SNAPSHOT})
_M = frozenset({Need.SNAPSHOT, Need.MOVE})
_R = frozenset({Need.RUNTIME})
_L = frozenset({Need.SNAPSHOT, Need.LOAD})
_LIM = frozenset({Need.LOAD})
_H = frozenset({Need.HISTORY})
_LIVE = frozenset({Need.SNAPSHOT, Need.LIVE})


def _unknown_vm(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.UNKNOWN_VM if f.vm() is None else None


def _unknown_host(f: MoveFacts) -> ReasonCode | None:
    if f.host(f.source) is None or f.host(f.target) is None:
        return ReasonCode.UNKNOWN_HOST
    return None


def _same_host(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.SAME_HOST if f.source == f.target else None


def _on_source(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.VM_NOT_ON_SOURCE if f.placed_on() != f.source else None


def _unreconciled(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.UNRECONCILED if f.unreconciled() else None


def _excluded(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.EXCLUDED if f.excluded() else None


def _pinned(f: MoveFacts) -> ReasonCode | None:
    return None if pin_allows(f.hard_pins(), f.target) else ReasonCode.PINNED


def _pin_signature(f: MoveFacts) -> Hashable | None:
    pins = f.hard_pins()
    return None if pins is None else frozenset(pins)


def _migratable(f: MoveFacts) -> ReasonCode | None:
    vm = f.vm()
    return ReasonCode.NOT_MIGRATABLE if vm is not None and not vm.migratable else None


def _local_disk(f: MoveFacts) -> ReasonCode | None:
    vm = f.vm()
    if vm is not None and vm.local_disk_mib > 0 and not f.local_disk_allowed():
        return ReasonCode.LOCAL_DISK
    return None


def _source_state(f: MoveFacts) -> ReasonCode | None:
    state = f.host_state(f.source)
    return ReasonCode.SOURCE_STALE if state is None or not state.may_send else None


def _target_state(f: MoveFacts) -> ReasonCode | None:
    state = f.host_state(f.target)
    if state is HostState.ACTIVE:
        return None
    return ReasonCode.TARGET_UNKNOWN if state is None else TARGET_STATE_REASON[state]


def _cpu(f: MoveFacts) -> ReasonCode | None:
    vm, host = f.vm(), f.host(f.target)
    if vm is None or host is None:
        return None
    ok = cpu_compatible(vm.cpu_model, vm.required_cpu_features, host.cpu_model, host.cpu_features)
    return None if ok else ReasonCode.CPU_INCOMPATIBLE


def _cpu_signature(f: MoveFacts) -> Hashable | None:
    vm = f.vm()
    if vm is None or (not vm.cpu_model and not vm.required_cpu_features):
        return None
    return (vm.cpu_model, vm.required_cpu_features)


def _networks(f: MoveFacts) -> ReasonCode | None:
    vm, host = f.vm(), f.host(f.target)
    if vm is None or host is None or networks_available(vm.networks, host.networks):
        return None
    return ReasonCode.NETWORK_MISSING


def _networks_signature(f: MoveFacts) -> Hashable | None:
    vm = f.vm()
    return None if vm is None or not vm.networks else vm.networks


def _cooldown(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.COOLDOWN if f.in_cooldown() else None


def _stopping(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.STOPPING if f.stopping() else None


def _backoff(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.BACKOFF if f.backing_off() else None


def _window(f: MoveFacts) -> ReasonCode | None:
    return f.window_block()


def _circuit(f: MoveFacts) -> ReasonCode | None:
    return f.circuit(f.source) or f.circuit(f.target)


def _return_trip(f: MoveFacts) -> ReasonCode | None:
    if f.target in f.recently_left() and not f.empties_source():
        return ReasonCode.RETURN_TRIP
    return None


def _return_signature(f: MoveFacts) -> Hashable | None:
    left = f.recently_left()
    return None if not left or f.empties_source() else frozenset(left)


def _confirmed_on_source(f: MoveFacts) -> ReasonCode | None:
    live = f.live()
    if live is None or (live.on_source and not live.on_target):
        return None
    return ReasonCode.CONFIRMED_NOT_ON_SOURCE


def _confirmed_room(f: MoveFacts) -> ReasonCode | None:
    live, host = f.live(), f.host(f.target)
    if live is None or host is None:
        return None
    mem = live.vm_mib if live.vm_mib is not None else f.vm_load()[1]
    cap = capacity_with_headroom(host.memory_mib, f.headroom())
    if live.target_domains_mib + live.incoming_mib + mem > cap:
        return ReasonCode.CONFIRMED_NO_ROOM
    free = live.target_free_mib
    if free is not None and live.incoming_mib + mem > free - FREE_MEMORY_MARGIN_MIB:
        return ReasonCode.CONFIRMED_NO_ROOM
    return None


def _anti_affinity(f: MoveFacts) -> ReasonCode | None:
    groups = f.anti_groups()
    if groups and not anti_affinity_ok(f.vm_name, groups, f.vms_on_target()):
        return ReasonCode.ANTI_AFFINITY
    return None


def _capacity(f: MoveFacts) -> ReasonCode | None:
    host = f.host(f.target)
    if host is None:
        return None
    used_cpu, used_mem = f.target_load()
    cpu, mem = f.vm_load()
    h = f.headroom()
    cap_cpu = capacity_with_headroom(host.cpu_capacity_mc, h)
    cap_mem = capacity_with_headroom(host.memory_mib, h)
    return None if fits(used_cpu, used_mem, cpu, mem, cap_cpu, cap_mem) else ReasonCode.CAPACITY


def _per_cycle(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.PER_CYCLE_LIMIT if f.started() >= f.limits().max_per_cycle else None


def _mib_per_hour(f: MoveFacts) -> ReasonCode | None:
    cap = f.limits().max_mib_per_hour
    if cap is None:
        return None
    used = f.mib_used_last_hour()
    if used is None:
        return ReasonCode.JOURNAL_UNWRITABLE
    return ReasonCode.MIB_PER_HOUR if used + f.move_mib() > cap else None


def _concurrency_zero(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.CONCURRENCY_ZERO if f.limits().max_concurrent == 0 else None


def _host_concurrency_zero(f: MoveFacts) -> ReasonCode | None:
    lim = f.limits()
    if lim.max_per_source == 0 or lim.max_per_target == 0:
        return ReasonCode.HOST_CONCURRENCY_ZERO
    return None


def _vm_in_flight(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.VM_IN_FLIGHT if f.vm_in_flight() else None


def _concurrency(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.CONCURRENCY if f.running() >= f.limits().max_concurrent else None


def _per_source(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.PER_SOURCE if f.running_from(f.source) >= f.limits().max_per_source else None


def _per_target(f: MoveFacts) -> ReasonCode | None:
    return ReasonCode.PER_TARGET if f.running_to(f.target) >= f.limits().max_per_target else None


TOTAL_SCOPE = "*"
"""The adaptive controller's scope for the whole cluster (`execution.adaptive.TOTAL`)."""


def _adaptive_total(f: MoveFacts) -> ReasonCode | None:
    cap = f.adaptive_cap(TOTAL_SCOPE, f.limits().max_concurrent)
    return ReasonCode.ADAPTIVE_CONCURRENCY if f.running() >= cap else None


def _adaptive_host(f: MoveFacts) -> ReasonCode | None:
    lim = f.limits()
    host_limit = lim.max_per_source + lim.max_per_target
    for host in (f.source, f.target):
        if f.touching(host) >= f.adaptive_cap(host, host_limit):
            return ReasonCode.ADAPTIVE_HOST
    return None


_V, _T, _D, _SL, _C = Level.VM, Level.TARGET, Level.DYNAMIC, Level.SLOT, Level.CONFIRMED
RC = ReasonCode

PRECHECKS: list[Check] = [
    Check("known_vm", RC.UNKNOWN_VM, _V, _S, _unknown_vm),
    Check("known_hosts", RC.UNKNOWN_HOST, _T, _M, _unknown_host),
    Check("other_host", RC.SAME_HOST, _T, _M, _same_host),
    Check("on_source", RC.VM_NOT_ON_SOURCE, _V, _M, _on_source),
    Check("reconciled", RC.UNRECONCILED, _V, _R, _unreconciled),
    Check("not_excluded", RC.EXCLUDED, _V, _S, _excluded),
    Check("pin", RC.PINNED, _T, _S, _pinned, signature=_pin_signature),
    Check("migratable", RC.NOT_MIGRATABLE, _V, _S, _migratable),
    Check("local_disk", RC.LOCAL_DISK, _V, frozenset({Need.MIGRATION}), _local_disk),
    Check("source_fresh", RC.SOURCE_STALE, _V, _S, _source_state),
    Check("target_active", RC.TARGET_UNKNOWN, _T, _S, _target_state),
    Check("cpu_compatible", RC.CPU_INCOMPATIBLE, _T, _S, _cpu, signature=_cpu_signature),
    Check("networks", RC.NETWORK_MISSING, _T, _S, _networks, signature=_networks_signature),
    Check("cooldown", RC.COOLDOWN, _V, _R, _cooldown),
    Check("return_guard", RC.RETURN_TRIP, _T, _H, _return_trip, signature=_return_signature),
    Check("stopping", RC.STOPPING, _V, _R, _stopping),
    Check("backoff", RC.BACKOFF, _V, _R, _backoff),
    Check("window", RC.OUTSIDE_WINDOW, _V, _R, _window),
    Check("circuit", RC.CIRCUIT_OPEN, _T, _R, _circuit),
    Check("anti_affinity", RC.ANTI_AFFINITY, _D, _L, _anti_affinity),
    Check("capacity", RC.CAPACITY, _D, _L, _capacity),
    Check("per_cycle", RC.PER_CYCLE_LIMIT, _D, _LIM, _per_cycle),
    Check("mib_per_hour", RC.MIB_PER_HOUR, _D, _LIM, _mib_per_hour),
    Check("concurrency_zero", RC.CONCURRENCY_ZERO, _SL, _LIM, _concurrency_zero),
    Check("host_concurrency_zero", RC.HOST_CONCURRENCY_ZERO, _SL, _LIM, _host_concurrency_zero),
    Check("vm_in_flight", RC.VM_IN_FLIGHT, _SL, _LIM, _vm_in_flight, waits=True),
    Check("concurrency", RC.CONCURRENCY, _SL, _LIM, _concurrency, waits=True),
    Check("per_source", RC.PER_SOURCE, _SL, _LIM, _per_source, waits=True),
    Check("per_target", RC.PER_TARGET, _SL, _LIM, _per_target, waits=True),
    Check("adaptive_concurrency", RC.ADAPTIVE_CONCURRENCY, _SL, _LIM, _adaptive_total, waits=True),
    Check("adaptive_host", RC.ADAPTIVE_HOST, _SL, _LIM, _adaptive_host, waits=True),
    Check("confirmed_on_source", RC.CONFIRMED_NOT_ON_SOURCE, _C, _LIVE, _confirmed_on_source),
    Check("confirmed_room", RC.CONFIRMED_NO_ROOM, _C, _LIVE, _confirmed_room),
]
"""Every pre-check of a move, in the order the executor runs them (the first failure is the
reason reported). Append to it (or monkeypatch it) and the planner, executor and replay all
honour the new check."""


def waits(why: str) -> bool:
    """A failure with this reason waits (read from the current list, so that a check added to
    it counts too)."""
    return why == ReasonCode.STAGGER or any(c.waits and c.reason == why for c in PRECHECKS)
