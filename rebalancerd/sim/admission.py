"""The replay's admission: which of the moves a decider proposes start, and when.

The daemon's own pre-checks decide (`domain.checks.PRECHECKS`, as the executor runs them),
answered from the replay's state by `ReplayFacts`; the moves running at once are counted by the
executor's `limits.RunningMoves`, the VMs and load on each target by its `limits.HostLoads`.
What the replay does not model answers "no objection": there is no journal (nothing is left
unreconciled), no circuit breaker, no stop request and no 'did it help' back-off, and the
adaptive concurrency caps are the policy's limits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from rebalancerd.domain import checks
from rebalancerd.domain.checks import (
    WINDOW_REASON,
    LimitValues,
    ReasonCode,
    first_failure,
    waits,
)
from rebalancerd.domain.model import AffinityGroup, ClusterRules, Host, Vm
from rebalancerd.domain.snapshot_facts import SnapshotFacts
from rebalancerd.execution.limits import HostLoads, RunningMoves
from rebalancerd.execution.precheck import vm_anti_groups_of
from rebalancerd.execution.settings import class_spec_for
from rebalancerd.execution.windows import window_block
from rebalancerd.policy.schema import Limits, Policy
from rebalancerd.sim.cloudsim import DataCentre

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ProposedMove:
    """A migration a decider proposes, by index: VM, its source host (-1 = wherever it is) and
    target host."""

    vm: int
    source: int
    target: int
    reason: str = ""


@dataclass
class LimitState:
    """Cooldowns and the sliding-hour byte budget, kept across cycles (the replay's journal)."""

    limits: Limits
    cooldown_until: dict[int, float] = field(default_factory=dict)
    recent_mib: deque[tuple[float, float]] = field(default_factory=deque)
    blocked: dict[str, int] = field(default_factory=dict)

    def frozen(self, t: float) -> frozenset[int]:
        return frozenset(v for v, until in self.cooldown_until.items() if until > t)

    def mib_left(self, t: float) -> float | None:
        cap = self.limits.max_mib_per_hour
        if cap is None:
            return None
        while self.recent_mib and self.recent_mib[0][0] <= t - 3600.0:
            self.recent_mib.popleft()
        return cap - sum(m for _, m in self.recent_mib)

    def block(self, why: str) -> None:
        self.blocked[why] = self.blocked.get(why, 0) + 1


@dataclass
class Cycle:
    """The state of one interval's admission."""

    t0: float
    tau: float
    """Simulated time now (seconds since the trace start)."""
    frozen: frozenset[int]
    mib_left: float | None
    loads: HostLoads
    running: RunningMoves
    here: dict[int, int]
    """Where each VM admitted this interval will be."""
    started: int = 0


class ReplayFacts(SnapshotFacts):
    """`domain.checks.MoveFacts` for one proposed move, answered from the replay's state."""

    def __init__(self, adm: Admission, cycle: Cycle, mv: ProposedMove, vm: Vm, target: str) -> None:
        dc = adm.dc
        source = dc.host_names[mv.source] if mv.source >= 0 else vm.host
        super().__init__(
            vm.name,
            source,
            target,
            {vm.name: vm},
            adm.hosts,
            adm.rules.exclusions,
            adm.hard_pins,
        )
        self.adm = adm
        self.cycle = cycle
        self.index = mv.vm
        self._vm = vm

    def placed_on(self) -> str | None:
        return self._vm.host

    def local_disk_allowed(self) -> bool:
        return class_spec_for(self.adm.policy, self._vm)[1].non_shared_disk

    def unreconciled(self) -> bool:
        return False

    def in_cooldown(self) -> bool:
        return self.index in self.cycle.frozen

    def stopping(self) -> bool:
        return False

    def backing_off(self) -> bool:
        return False

    def window_block(self) -> ReasonCode | None:
        block = window_block(self.adm.policy.limits, self.adm.epoch + self.cycle.tau)
        return None if block is None else WINDOW_REASON[block]

    def circuit(self, host: str) -> ReasonCode | None:
        return None

    def anti_groups(self) -> Sequence[AffinityGroup]:
        return self.adm.anti_groups.get(self.vm_name, ())

    def vms_on_target(self) -> AbstractSet[str]:
        return self.cycle.loads.vms(self.target)

    def target_load(self) -> tuple[int, int]:
        return self.cycle.loads.load(self.target)

    def vm_load(self) -> tuple[int, int]:
        return self.cycle.loads.load_of(self.vm_name)

    def headroom(self) -> float:
        return self.adm.policy.targets.headroom

    def limits(self) -> LimitValues:
        return self.adm.policy.limits

    def started(self) -> int:
        return self.cycle.started

    def mib_used_last_hour(self) -> float | None:
        cap = self.adm.policy.limits.max_mib_per_hour
        left = self.cycle.mib_left
        return 0.0 if cap is None or left is None else cap - left

    def move_mib(self) -> int:
        return int(self.adm.dc.vm_ram[self.index])

    def running(self) -> int:
        return len(self.cycle.running)

    def running_from(self, host: str) -> int:
        return self.cycle.running.from_host(host)

    def running_to(self, host: str) -> int:
        return self.cycle.running.to_host(host)

    def touching(self, host: str) -> int:
        return self.cycle.running.touching(host)

    def vm_in_flight(self) -> bool:
        return self.cycle.running.has_vm(self.vm_name)

    def adaptive_cap(self, scope: str, policy_limit: int) -> int:
        return policy_limit


class Admission:
    """Admits proposed moves under the daemon's pre-checks, interval by interval."""

    def __init__(
        self,
        dc: DataCentre,
        policy: Policy,
        hosts: tuple[Host, ...],
        rules: ClusterRules,
        *,
        epoch: float,
        enforce_memory: bool,
    ) -> None:
        self.dc = dc
        self.policy = policy
        self.hosts: Mapping[str, Host] = {h.name: h for h in hosts}
        self.rules = rules
        self.hard_pins = rules.hard_pins()
        self.anti_groups = vm_anti_groups_of(rules)
        self.epoch = epoch
        self.enforce_memory = enforce_memory
        self.limits = LimitState(policy.limits)

    def schedule(
        self,
        steps: Sequence[Sequence[ProposedMove]],
        t0: float,
        t1: float,
        host_of: IntArray,
        cpu_mc: IntArray,
    ) -> tuple[list[tuple[float, float, ProposedMove]], int]:
        """Admit moves under the limits, step by step (a step starts when the previous one is
        done). Returns (start, end, move) of each admitted move and the most run at once."""
        dc = self.dc
        names = dc.vm_names
        hnames = dc.host_names
        block = window_block(self.policy.limits, self.epoch + t0)
        if block is not None:  # the whole interval is outside the windows: nothing starts
            if any(steps):
                self.limits.block(block)
            return [], 0
        ram = dc.vm_ram
        index = {n: i for i, n in enumerate(names)}

        def load_of(name: str) -> tuple[int, int]:
            i = index[name]
            return int(cpu_mc[i]), int(ram[i]) if self.enforce_memory else 0

        loads = HostLoads(((names[i], hnames[int(h)]) for i, h in enumerate(host_of)), load_of)
        cycle = Cycle(
            t0, t0, self.limits.frozen(t0), self.limits.mib_left(t0), loads, RunningMoves(), {}
        )
        ends: list[tuple[float, int]] = []
        admitted: list[tuple[float, float, ProposedMove]] = []
        peak = 0
        key = 0
        for step in steps:
            pending = list(step)
            while pending:
                for _, k in [e for e in ends if e[0] <= cycle.tau]:
                    cycle.running.end(k)
                ends = [e for e in ends if e[0] > cycle.tau]
                progressed = False
                for mv in list(pending):
                    here = cycle.here.get(mv.vm, int(host_of[mv.vm]))
                    vm = Vm(
                        name=names[mv.vm],
                        host=hnames[here],
                        vcpus=1,
                        memory_mib=int(ram[mv.vm]),
                        cpu_used_mc=int(cpu_mc[mv.vm]),
                    )
                    facts = ReplayFacts(self, cycle, mv, vm, hnames[mv.target])
                    failed = first_failure(checks.PRECHECKS, facts)
                    if failed is not None:
                        why = str(failed[1])
                        if waits(why) and len(cycle.running):
                            continue  # wait for a running migration to end
                        pending.remove(mv)
                        self.limits.block(why)
                        continue
                    dur = dc.migration_time_s(mv.vm, here, mv.target)
                    if cycle.tau + dur > t1:
                        pending.remove(mv)
                        self.limits.block("interval_end")
                        continue
                    move = ProposedMove(mv.vm, here, mv.target, mv.reason)
                    start, end = cycle.tau, cycle.tau + dur
                    key += 1
                    cycle.running.start(key, vm.name, hnames[here], hnames[mv.target])
                    ends.append((end, key))
                    admitted.append((start, end, move))
                    pending.remove(mv)
                    cycle.started += 1
                    cycle.here[mv.vm] = mv.target
                    loads.add(hnames[mv.target], vm.name)
                    mib = float(ram[mv.vm])
                    if cycle.mib_left is not None:
                        cycle.mib_left -= mib
                    self.limits.recent_mib.append((start, mib))
                    self.limits.cooldown_until[mv.vm] = end + self.policy.limits.cooldown_s
                    peak = max(peak, len(cycle.running))
                    progressed = True
                if pending and not progressed:
                    if not len(cycle.running):
                        for _ in pending:
                            self.limits.block(str(ReasonCode.CONCURRENCY))
                        break
                    cycle.tau = min(e for e, _ in ends)
            # the next step starts when this one is done
            if ends:
                cycle.tau = max(cycle.tau, max(e for e, _ in ends))
                for _, k in ends:
                    cycle.running.end(k)
                ends = []
        return admitted, peak
