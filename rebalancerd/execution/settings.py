"""Per-move live-migration settings, chosen from the VM's memory and measured dirty rate within
the bounds of the policy's migration class. Pure: no I/O, no clock.

Model (pre-copy, as QEMU does it): round 0 sends all memory at bandwidth B; each next round sends
what was dirtied meanwhile, so what is left shrinks by r = D / B per round (D = dirty rate). The
guest is paused when what is left fits in the downtime limit (left <= B * downtime). With r >= 1
pre-copy never converges: only auto-converge (throttling the guest) or post-copy finish it.

Choice:
- bandwidth: the smallest rate that converges comfortably (r <= TARGET_RATIO) and finishes the
  first full pass within a fraction of the time budget, never above the class's cap (None = no
  cap: unlimited, the link decides);
- downtime limit: 60 % of the class's maximum when pre-copy is predicted to converge comfortably
  with it (measured downtime overshoots QEMU's target on a busy host), divided by the number of
  moves that may switch over at once (``sharing``) when that still converges, else the maximum;
- strategy: ``precopy`` when pre-copy is predicted to converge well inside the budget;
  ``auto-converge`` when the dirty rate is high (r > HIGH_RATIO) and the class allows it;
  ``postcopy`` when pre-copy is predicted not to converge (or not within the budget) and the
  class allows post-copy: it switches after one full pass instead of waiting for the class's
  ``postcopy_after_s``;
- time budget: the class's;
- dirty rate not measured (``Vm.dirty_rate_mib_s is None``): the class's default strategy
  (``default-auto-converge`` when the class allows auto-converge, else ``default-precopy``;
  post-copy after the class's ``postcopy_after_s`` if set), never a prediction from an assumed 0;
- ``downtime_limit_ms`` = the class's max downtime: how far the adapter's step-up sequence
  (`adapters.libvirt_migration.ConvergenceSequence`) may raise the downtime when a pass stalls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

from rebalancerd.domain.model import Vm
from rebalancerd.policy.schema import MigrationSettingsSpec, Policy
from rebalancerd.ports import MigrationSettings

DEFAULT_LINK_MIB_S = 1180.0
"""Assumed migration link speed when the class sets no bandwidth cap (about 10 Gbit/s)."""
TARGET_RATIO = 0.5
"""Dirty rate / bandwidth the chosen bandwidth aims at: what is left halves every round."""
HIGH_RATIO = 0.5
"""Above this dirty rate / bandwidth, auto-converge is switched on when allowed."""
BUDGET_FRACTION = 0.5
"""The first full pass should take at most this fraction of the time budget."""
MIN_BANDWIDTH_MIB_S = 32
MAX_ROUNDS = 30
DOWNTIME_MARGIN = 0.6
"""Target downtime = this fraction of the class's limit when pre-copy converges with it."""
MIN_DOWNTIME_MS = 20


@dataclass(frozen=True, slots=True)
class PrecopyEstimate:
    converges: bool
    rounds: int
    total_s: float
    """Predicted wall time (inf when it does not converge)."""
    downtime_ms: float | None


@dataclass(frozen=True, slots=True)
class PrecopyTiming:
    """Outcome of the pre-copy model for one migration (pure function of its inputs)."""

    converged: bool
    total_s: float
    downtime_ms: float | None
    transferred_mib: float
    rounds: int
    postcopy: bool
    aborted: bool


def precopy_timing(
    memory_mib: float,
    dirty_rate_mib_s: float,
    bandwidth_mib_s: float,
    max_downtime_ms: float,
    *,
    time_budget_s: float = math.inf,
    local_disk_mib: float = 0.0,
    postcopy_after_s: float | None = None,
    auto_converge: bool = False,
    switchover_ms: float = 0.0,
) -> PrecopyTiming:
    """The one pre-copy model (see the module docstring), used by the settings' prediction
    (`estimate_precopy`) and by the simulated hypervisor (`sim.hypervisor.migration_timing`).

    Non-shared disk is copied first. Then round 0 sends all memory; each next round sends what
    was dirtied during the previous one (auto-converge throttles the guest: the dirty rate
    shrinks 20 % more each round from round 3 on, down to 1 % of the original). When what is
    left fits in the downtime limit the guest is paused and the rest copied (downtime = left / B
    + `switchover_ms`). If it has not converged when `postcopy_after_s` passes, the guest
    switches to the target and the rest is pulled in. If the time budget runs out first (or
    after MAX_ROUNDS rounds) the job is aborted."""
    bw = bandwidth_mib_s
    if bw <= 0:
        return PrecopyTiming(False, 0.0, None, 0.0, 0, False, True)
    budget = time_budget_s
    t = local_disk_mib / bw
    sent = float(local_disk_mib)
    if t >= budget:
        return PrecopyTiming(False, budget, None, budget * bw, 0, False, True)
    left = float(memory_mib)
    dirty = dirty_rate_mib_s
    rounds = 0
    limit_mib = bw * max_downtime_ms / 1000.0
    while True:
        if left <= limit_mib and rounds > 0:
            down_ms = left / bw * 1000.0 + switchover_ms
            return PrecopyTiming(
                True, t + left / bw, down_ms, sent + left, rounds + 1, False, False
            )
        dur = left / bw
        pc = postcopy_after_s
        if pc is not None and t + dur > pc and rounds > 0:
            # switch to post-copy at pc: the guest runs on the target from now on
            t_switch = max(t, pc)
            done = bw * (t_switch - t)
            remaining = max(0.0, left - done)
            total = t_switch + remaining / bw
            return PrecopyTiming(True, total, switchover_ms, sent + left, rounds + 1, True, False)
        if t + dur > budget or rounds >= MAX_ROUNDS:
            return PrecopyTiming(
                False, min(budget, t + dur), None, sent + bw * (budget - t), rounds, False, True
            )
        t += dur
        sent += left
        rounds += 1
        if auto_converge and rounds >= 3:
            dirty = max(dirty_rate_mib_s * 0.01, dirty * 0.8)
        left = min(float(memory_mib), dirty * dur)


def estimate_precopy(
    memory_mib: float, dirty_rate_mib_s: float, bandwidth_mib_s: float, max_downtime_ms: float
) -> PrecopyEstimate:
    """Predict a plain pre-copy migration (no budget, no disk, no auto-converge or post-copy)."""
    if bandwidth_mib_s <= 0:
        return PrecopyEstimate(False, 0, math.inf, None)
    t = precopy_timing(memory_mib, dirty_rate_mib_s, bandwidth_mib_s, max_downtime_ms)
    if not t.converged:
        return PrecopyEstimate(False, MAX_ROUNDS, math.inf, None)
    return PrecopyEstimate(True, t.rounds, t.total_s, t.downtime_ms)


def class_spec_for(policy: Policy, vm: Vm) -> tuple[str, MigrationSettingsSpec]:
    """The migration class of a VM (first class whose names or tags match), else the default."""
    for cls in policy.migration.classes:
        if any(fnmatchcase(vm.name, p) for p in cls.vms) or (vm.tags & set(cls.vm_tags)):
            return cls.name, cls.settings
    return "default", policy.migration.default


def bytes_to_move_mib(vm: Vm, spec: MigrationSettingsSpec) -> int:
    """Memory plus the non-shared disk a migration copies."""
    return vm.memory_mib + (vm.local_disk_mib if spec.non_shared_disk else 0)


def choose_settings(
    vm: Vm,
    spec: MigrationSettingsSpec,
    *,
    link_mib_s: float = DEFAULT_LINK_MIB_S,
    sharing: int = 1,
) -> MigrationSettings:
    """Settings for one move of `vm` within the bounds of `spec`. `sharing`: how many moves may
    switch over at once with this one (the executor's effective concurrency): the downtime
    target is divided by it when pre-copy still converges comfortably with the lower target
    (concurrent switch-overs starve the hosts' CPUs, and real downtime grows with them)."""
    mem = float(vm.memory_mib)
    disk = float(vm.local_disk_mib if spec.non_shared_disk else 0)
    dirty = vm.dirty_mib_s
    budget = spec.time_budget_s
    downtime = spec.max_downtime_ms
    cap = spec.bandwidth_mib_s

    bandwidth: int | None
    if cap is None:
        bandwidth = None
        effective = link_mib_s
    else:
        need = max(
            dirty / TARGET_RATIO,
            (mem + disk) / max(budget * BUDGET_FRACTION, 1e-9),
            float(MIN_BANDWIDTH_MIB_S),
        )
        bandwidth = min(cap, math.ceil(need))
        effective = min(float(bandwidth), link_mib_s)

    est = estimate_precopy(mem, dirty, effective, downtime)
    disk_s = disk / effective if effective > 0 else math.inf
    fits = est.converges and disk_s + est.total_s <= budget * 0.8
    # Real downtime overshoots QEMU's target (switch-over work, a busy host): aim below the
    # policy's limit when pre-copy still converges comfortably with the lower target.
    aims = [max(MIN_DOWNTIME_MS, math.floor(downtime * DOWNTIME_MARGIN))]
    if sharing > 1:
        aims.insert(0, max(MIN_DOWNTIME_MS, math.floor(downtime * DOWNTIME_MARGIN / sharing)))
    for aim in aims:  # the lowest target that still converges comfortably
        if fits and aim < downtime:
            low = estimate_precopy(mem, dirty, effective, aim)
            if low.converges and disk_s + low.total_s <= budget * 0.8:
                downtime = aim
                break
    ratio = dirty / effective if effective > 0 else math.inf
    postcopy_allowed = spec.postcopy_after_s is not None

    auto_converge = False
    postcopy_after: float | None = spec.postcopy_after_s
    strategy = "precopy"
    if not fits and postcopy_allowed:
        # pre-copy will not make it: switch to post-copy after one full pass
        first_pass = disk_s + mem / effective if effective > 0 else 0.0
        assert spec.postcopy_after_s is not None
        postcopy_after = min(spec.postcopy_after_s, math.floor(first_pass * 1000) / 1000)
        strategy = "postcopy"
        auto_converge = spec.auto_converge and ratio > HIGH_RATIO
    elif (not fits or ratio > HIGH_RATIO) and spec.auto_converge:
        auto_converge = True
        strategy = "auto-converge"
    elif not fits:
        strategy = "precopy-unlikely"
    known = vm.dirty_rate_mib_s is not None
    if not known:
        # not measured: the class's default, never a guess from 0 (auto-converge if allowed,
        # post-copy after the class's postcopy_after_s if set; step-ups do the rest)
        auto_converge = spec.auto_converge
        postcopy_after = spec.postcopy_after_s
        strategy = "default-auto-converge" if auto_converge else "default-precopy"
    return MigrationSettings(
        max_downtime_ms=downtime,
        bandwidth_mib_s=bandwidth,
        auto_converge=auto_converge,
        postcopy_after_s=postcopy_after,
        time_budget_s=budget,
        non_shared_disk=spec.non_shared_disk,
        tls=spec.encrypted,
        strategy=strategy,
        downtime_limit_ms=spec.max_downtime_ms,
        dirty_rate_known=known,
    )
