"""The executor: the one choke point through which rebalancerd ever migrates a VM.

For every planned move, right before starting it: pre-checks (VM where the plan says, host
states, rules, CPU compatibility, breaker, cooldown, windows, every limit), an intent committed to
the journal, the move with settings chosen for this VM, post-verification on both hosts, the
outcome journaled, metrics and one log line per event. Steps of a plan run in order; the moves of
one step run concurrently up to the concurrency limits (a move blocked only by a concurrency limit
waits for a slot inside its step; any other failed check skips it with a reason).

Dry-run (the executor's flag or ``policy.dry_run``) and advisory mode never call the hypervisor:
pure checks run and every move is reported as skipped with reason ``dry_run`` / ``advisory``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from rebalancerd.domain.load import Weights, imbalance
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.domain.plan import Migration, MigrationPlan, PlanStep, ReasonKind
from rebalancerd.execution.adaptive import TOTAL, AdaptiveConcurrency, CapChange
from rebalancerd.execution.guards import CircuitBreaker, HelpTracker
from rebalancerd.execution.journal import Journal, JournalEntry, JournalError
from rebalancerd.execution.settings import bytes_to_move_mib, choose_settings, class_spec_for
from rebalancerd.execution.windows import window_block
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.ports import (
    Clock,
    DomainInfo,
    Hypervisor,
    HypervisorError,
    MetricsSink,
    MigrationProgress,
    MigrationResult,
    MigrationSettings,
)

log = structlog.get_logger("rebalancerd.executor")

MIB = 1024 * 1024

DISCRETIONARY = frozenset(
    {ReasonKind.BALANCE, ReasonKind.HOTSPOT, ReasonKind.ENERGY, ReasonKind.TEMPORARY}
)
"""Reason kinds paused while backing off (drain, evacuation and rule repairs still run)."""
JUDGED = frozenset({ReasonKind.BALANCE, ReasonKind.HOTSPOT})
"""Reason kinds whose effect on the imbalance is judged by the 'did it help' tracker."""

WAIT_LIMITS = (
    "concurrency",
    "per_source",
    "per_target",
    "vm_in_flight",
    "adaptive_concurrency",
    "adaptive_host",
    "stagger",
)
"""Checks that make a move wait for a slot inside its step instead of skipping it."""


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True, slots=True)
class MoveRecord:
    vm: str
    source: str
    target: str
    reason: str
    """Skip reason, error category, or 'ok'."""
    kind: str = ""
    """Why the plan wanted the move (reason kind)."""
    migration_id: str | None = None
    detail: str = ""
    duration_s: float | None = None
    downtime_ms: float | None = None
    strategy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "source": self.source,
            "target": self.target,
            "reason": self.reason,
            "kind": self.kind,
            "migration_id": self.migration_id,
            "detail": self.detail,
            "duration_s": self.duration_s,
            "downtime_ms": self.downtime_ms,
            "strategy": self.strategy,
        }


@dataclass
class ExecutionReport:
    succeeded: list[MoveRecord] = field(default_factory=list)
    failed: list[MoveRecord] = field(default_factory=list)
    """Started and did not move (VM kept on the source), or could not be verified or was lost."""
    aborted: list[MoveRecord] = field(default_factory=list)
    """Aborted (time budget): the VM kept running on the source."""
    skipped: list[MoveRecord] = field(default_factory=list)
    lost: list[MoveRecord] = field(default_factory=list)
    """Alarm: found on neither host after the move (also counted in `failed`)."""
    max_concurrency: int = 0
    dry_run: bool = False
    concurrency_limit: int = 0
    """The policy's max_concurrent for this wave."""
    concurrency_effective: int = 0
    """The adaptive cap on concurrent moves at the end of the wave (<= concurrency_limit)."""
    concurrency_effective_min: int = 0
    """The lowest adaptive cap in force during the wave."""
    concurrency_changes: list[dict[str, Any]] = field(default_factory=list)
    """Adaptive cap changes during the wave (scope '*' = whole cluster, else a host)."""
    downtime_over_limit: int = 0
    """Succeeded moves whose measured downtime exceeded their class's limit."""

    @property
    def started(self) -> int:
        return len(self.succeeded) + len(self.failed) + len(self.aborted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "succeeded": [r.to_dict() for r in self.succeeded],
            "failed": [r.to_dict() for r in self.failed],
            "aborted": [r.to_dict() for r in self.aborted],
            "skipped": [r.to_dict() for r in self.skipped],
            "lost": [r.to_dict() for r in self.lost],
            "max_concurrency": self.max_concurrency,
            "dry_run": self.dry_run,
            "concurrency_limit": self.concurrency_limit,
            "concurrency_effective": self.concurrency_effective,
            "concurrency_effective_min": self.concurrency_effective_min,
            "concurrency_changes": self.concurrency_changes,
            "downtime_over_limit": self.downtime_over_limit,
        }


@dataclass(frozen=True, slots=True)
class InFlight:
    migration_id: str
    vm: str
    source: str
    target: str
    started: float
    """Wall time the move started."""
    progress: MigrationProgress | None = None
    settings: MigrationSettings | None = None


@dataclass
class ReconcileReport:
    succeeded: list[str] = field(default_factory=list)
    """Journaled moves found done (VM runs on the target): recorded as succeeded."""
    failed: list[str] = field(default_factory=list)
    """Journaled moves that did not happen (VM runs on the source)."""
    awaited: list[str] = field(default_factory=list)
    """Moves found still running and waited for (their final outcome is in the lists too)."""
    aborted: list[str] = field(default_factory=list)
    """Moves found still running past their time budget and aborted."""
    lost: list[str] = field(default_factory=list)
    """Alarm: VM on neither host."""
    unresolved: list[str] = field(default_factory=list)
    """Could not decide (host unreachable, VM running on both): left open, VM stays frozen."""

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "awaited": self.awaited,
            "aborted": self.aborted,
            "lost": self.lost,
            "unresolved": self.unresolved,
        }


# ---------------------------------------------------------------------------------------------
# Internal state of one execute() call


@dataclass
class _Wave:
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
    started: int = 0
    dry_planned: dict[str, list[str]] = field(default_factory=dict)
    judged_moves: dict[str, str] = field(default_factory=dict)
    compat: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    blocked_once: set[int] = field(default_factory=set)
    sharing: int = 1
    """Moves that may switch over together now: running + still pending in the step."""


@dataclass
class _Running:
    rec: InFlight
    mib: int
    cpu_mc: int
    memory_mib: int
    started_mono: float = 0.0
    peak: dict[str, int] = field(default_factory=dict)
    """Most moves seen at once while this one ran: TOTAL, and touching its source / target."""


@dataclass(frozen=True, slots=True)
class _Verdict:
    outcome: str
    """moved | on_source | both | lost | unverified"""
    detail: str = ""
    persistent: bool = True


def _weights(policy: Policy) -> Weights:
    w = policy.targets.weights
    return Weights(cpu=w.cpu, memory=w.memory)


class Executor:
    def __init__(
        self,
        hypervisor: Hypervisor,
        clock: Clock,
        metrics: MetricsSink,
        journal: Journal,
        *,
        dry_run: bool = False,
        fresh: Callable[[], ClusterSnapshot] | None = None,
        breaker_threshold: int = 3,
        breaker_open_s: float = 900.0,
        backoff_strikes: int = 2,
        backoff_s: float = 1800.0,
        watchdog_grace_s: float = 30.0,
        reconcile_poll_s: float = 2.0,
        adaptive: AdaptiveConcurrency | None = None,
        stagger_s: float = 0.0,
        share_downtime: bool = True,
    ) -> None:
        """`fresh`, if given, returns the latest telemetry snapshot: host states are re-read
        from it right before each move (a target that turned stale mid-wave is refused).
        `adaptive`: the AIMD concurrency controller (default: on, see adaptive.py).
        `stagger_s`: least time between two move starts while another move runs (0 = off).
        `share_downtime`: divide the downtime target by the effective concurrency (settings)."""
        self.hypervisor = hypervisor
        self.clock = clock
        self.metrics = metrics
        self.journal = journal
        self.dry_run = dry_run
        self.fresh = fresh
        self.breaker = CircuitBreaker(breaker_threshold, breaker_open_s)
        self.help = HelpTracker(strikes=backoff_strikes, backoff_s=backoff_s)
        self.watchdog_grace_s = watchdog_grace_s
        self.reconcile_poll_s = reconcile_poll_s
        self.adaptive = adaptive if adaptive is not None else AdaptiveConcurrency()
        self._load_adaptive()
        self.stagger_s = stagger_s
        self.share_downtime = share_downtime
        self._last_start = -float("inf")
        self._running: dict[str, _Running] = {}
        self._stop = False
        self._slot = asyncio.Event()

    # -- public queries -------------------------------------------------------------------------
    def frozen_vms(self) -> frozenset[str]:
        """VMs the planner must not move: in flight, in cooldown, or with an unresolved move."""
        out = {r.rec.vm for r in self._running.values()}
        try:
            out |= set(self.journal.cooldowns(self.clock.now()))
            out |= {e.vm for e in self.journal.open_moves()}
        except JournalError as e:
            log.error("journal_read_failed", error=str(e))
        return frozenset(out)

    def in_flight(self) -> list[InFlight]:
        return [r.rec for r in self._running.values()]

    def request_stop(self) -> None:
        """Start no new move; moves in flight finish (never abandoned)."""
        if not self._stop:
            log.info("executor_stop_requested", in_flight=len(self._running))
        self._stop = True

    async def abort_all(self, reason: str) -> list[str]:
        """Ask the hypervisor to abort every migration in flight (the VM stays on its source);
        the moves' own tasks record the outcome. Returns the migration ids asked to abort."""
        asked: list[str] = []
        for f in self.in_flight():
            try:
                await self.hypervisor.abort(f.vm, f.source)
            except Exception as e:
                log.error(
                    "migration_abort_failed", vm=f.vm, migration_id=f.migration_id, error=str(e)
                )
                continue
            log.warning(
                "migration_abort_requested",
                vm=f.vm,
                host=f.source,
                target=f.target,
                migration_id=f.migration_id,
                why=reason,
            )
            asked.append(f.migration_id)
        return asked

    def backoff_remaining(self) -> float:
        """Seconds left of the 'moves stopped helping' pause (0 = none). For the loop."""
        return self.help.remaining(self.clock.monotonic())

    def observe_snapshot(
        self, snapshot: ClusterSnapshot, policy: Policy, *, applied: bool = False
    ) -> str | None:
        """Judge whether the last wave helped, from a fresh snapshot (the loop calls this once
        every cycle; execute() calls it too unless `applied`). Returns the tracker's verdict, if
        any. `applied=True`: `snapshot` already has the policy applied."""
        eff = snapshot if applied else apply_policy(policy, snapshot, self.clock.now())
        imb = imbalance(eff, weights=_weights(policy))
        verdict = self.help.observe(imb, eff.placement(), self.clock.monotonic())
        if verdict is not None:
            log.info(
                "moves_judged",
                verdict=verdict,
                imbalance=round(imb, 4),
                backoff_s=round(self.backoff_remaining(), 1),
            )
        self.metrics.set("migration_backoff_active", 1.0 if self.backoff_remaining() > 0 else 0.0)
        return verdict

    # -- execute ----------------------------------------------------------------------------------
    async def execute(
        self,
        plan: MigrationPlan,
        snapshot: ClusterSnapshot,
        policy: Policy,
        *,
        applied: bool = False,
    ) -> ExecutionReport:
        """`applied=True`: `snapshot` already has the policy applied and the caller (the control
        loop) already showed it to `observe_snapshot` this cycle."""
        now = self.clock.now()
        mode_reason: str | None = None
        if self.dry_run or policy.dry_run:
            mode_reason = "dry_run"
        elif policy.mode is Mode.ADVISORY:
            mode_reason = "advisory"
        report = ExecutionReport(dry_run=mode_reason is not None)
        cap = self.adaptive.cap(TOTAL, policy.limits.max_concurrent)
        report.concurrency_limit = policy.limits.max_concurrent
        report.concurrency_effective = report.concurrency_effective_min = cap
        self.metrics.set("migration_concurrency_effective", float(cap))
        if plan.empty:
            return report
        if applied:
            eff = snapshot
        else:
            self.observe_snapshot(snapshot, policy)
            eff = apply_policy(policy, snapshot, now)
        try:
            cooldowns = self.journal.cooldowns(now)
            open_vms = frozenset(e.vm for e in self.journal.open_moves())
        except JournalError as e:
            log.error("journal_read_failed", error=str(e))
            cooldowns, open_vms = {}, frozenset()
            if mode_reason is None:
                self._journal_down(str(e))
                for m in plan.migrations:
                    self._skip(report, m, "journal_unwritable")
                return report
        wave = _Wave(
            snap=eff,
            policy=policy,
            placement=dict(eff.placement()),
            hosts=eff.host_map(),
            vms=eff.vm_map(),
            cooldowns=cooldowns,
            open_vms=open_vms,
            hard_pins=eff.rules.hard_pins(),
            baseline=imbalance(eff, weights=_weights(policy)),
        )
        if mode_reason is not None:
            for m in plan.migrations:
                self._dry(report, wave, m, mode_reason)
            return report
        journal_err = self.journal.probe_error()
        if journal_err is not None:
            self._journal_down(journal_err)
            for m in plan.migrations:
                self._skip(report, m, "journal_unwritable")
            return report
        self.metrics.set("journal_writable", 1.0)
        for step in plan.steps:
            await self._run_step(step, wave, report)
        if wave.judged_moves:
            self.help.moved(wave.baseline, wave.judged_moves)
        log.info(
            "wave_done",
            succeeded=len(report.succeeded),
            failed=len(report.failed),
            aborted=len(report.aborted),
            skipped=len(report.skipped),
            lost=len(report.lost),
            max_concurrency=report.max_concurrency,
            concurrency_effective=report.concurrency_effective,
            concurrency_effective_min=report.concurrency_effective_min,
            downtime_over_limit=report.downtime_over_limit,
        )
        return report

    # -- checks ---------------------------------------------------------------------------------
    def _host_state(self, wave: _Wave, name: str) -> HostState | None:
        h = wave.hosts.get(name)
        if h is None:
            return None
        state = h.state
        if self.fresh is not None:
            try:
                fresh = self.fresh().host_map().get(name)
            except Exception as e:  # a telemetry hiccup must not crash the executor
                log.warning("fresh_snapshot_failed", error=str(e))
                return HostState.STALE
            if fresh is None:
                return HostState.STALE
            if fresh.state is not HostState.ACTIVE:
                state = fresh.state
        return state

    def _static_check(self, m: Migration, wave: _Wave) -> str | None:
        """Checks that do not depend on what else runs now. None = pass."""
        vm = wave.vms.get(m.vm)
        if vm is None:
            return "unknown_vm"
        if m.source not in wave.hosts or m.target not in wave.hosts:
            return "unknown_host"
        if m.source == m.target:
            return "same_host"
        if wave.placement.get(m.vm) != m.source:
            return "vm_not_on_source"
        if m.vm in wave.open_vms:
            return "unreconciled"
        if m.vm in wave.snap.rules.exclusions:
            return "excluded"
        pins = wave.hard_pins.get(m.vm)
        if pins is not None and m.target not in pins:
            return "pinned"
        if not vm.migratable:
            return "not_migratable"
        _, spec = class_spec_for(wave.policy, vm)
        if vm.local_disk_mib > 0 and not spec.non_shared_disk:
            return "local_disk"
        src_state = self._host_state(wave, m.source)
        if src_state is None or not src_state.may_send:
            return "source_stale"
        tgt_state = self._host_state(wave, m.target)
        if tgt_state is not HostState.ACTIVE:
            return f"target_{tgt_state.value if tgt_state else 'unknown'}"
        target = wave.hosts[m.target]
        if vm.cpu_model and target.cpu_model and vm.cpu_model != target.cpu_model:
            return "cpu_incompatible"
        if (
            vm.required_cpu_features
            and target.cpu_features
            and not vm.required_cpu_features <= target.cpu_features
        ):
            return "cpu_incompatible"
        now = self.clock.now()
        # In cooldown when the wave started = frozen for the planner: not moved in this wave,
        # even if the cooldown ends while earlier steps are still running.
        if m.vm in wave.cooldowns:
            return "cooldown"
        if self._stop:
            return "stopping"
        if m.reason.kind in DISCRETIONARY and self.backoff_remaining() > 0:
            return "backoff"
        block = window_block(wave.policy.limits, now)
        if block is not None:
            return block
        mono = self.clock.monotonic()
        for host in (m.source, m.target):
            if self.breaker.is_open(host, mono):
                return "circuit_open"
            if self.breaker.tripped(host) and any(
                host in (r.rec.source, r.rec.target) for r in self._running.values()
            ):
                return "circuit_half_open"  # one trial move at a time on a recovering host
        return None

    def _incoming(self, host: str) -> list[_Running]:
        return [r for r in self._running.values() if r.rec.target == host]

    def _touching(self, host: str) -> int:
        return sum(1 for r in self._running.values() if host in (r.rec.source, r.rec.target))

    def _dynamic_check(self, m: Migration, wave: _Wave, *, dry: bool = False) -> str | None:
        """Rules, capacity and limits given what runs now. None = pass."""
        vm = wave.vms[m.vm]
        limits = wave.policy.limits
        # hard anti-affinity on the target (VMs there now and VMs on their way there)
        incoming = [r.rec.vm for r in self._running.values() if r.rec.target == m.target]
        if dry:
            incoming = incoming + wave.dry_planned.get(m.target, [])
        there = {v for v, h in wave.placement.items() if h == m.target} | set(incoming)
        for g in wave.snap.rules.groups:
            if g.anti and g.hard and m.vm in g.vms and (g.vms - {m.vm}) & there:
                return "anti_affinity"
        # capacity of the target: what is there + what is coming + this VM
        target = wave.hosts[m.target]
        cpu = sum(wave.vms[v].cpu_used_mc for v in there if v in wave.vms)
        mem = sum(wave.vms[v].memory_mib for v in there if v in wave.vms)
        if mem + vm.memory_mib > target.memory_mib or cpu + vm.cpu_used_mc > (
            target.cpu_capacity_mc
        ):
            return "capacity"
        if wave.started >= limits.max_per_cycle:
            return "per_cycle_limit"
        _, spec = class_spec_for(wave.policy, vm)
        mib = bytes_to_move_mib(vm, spec)
        if limits.max_mib_per_hour is not None:
            try:
                used = self.journal.mib_since(self.clock.now() - 3600.0)
            except JournalError:
                return "journal_unwritable"
            if dry:
                used += sum(
                    bytes_to_move_mib(wave.vms[v], class_spec_for(wave.policy, wave.vms[v])[1])
                    for vs in wave.dry_planned.values()
                    for v in vs
                )
            if used + mib > limits.max_mib_per_hour:
                return "mib_per_hour"
        if dry:
            return None
        # limits that wait for a slot
        if limits.max_concurrent == 0:
            return "concurrency_zero"
        if limits.max_per_source == 0 or limits.max_per_target == 0:
            return "host_concurrency_zero"
        if any(r.rec.vm == m.vm for r in self._running.values()):
            return "vm_in_flight"
        if len(self._running) >= limits.max_concurrent:
            return "concurrency"
        if sum(1 for r in self._running.values() if r.rec.source == m.source) >= (
            limits.max_per_source
        ):
            return "per_source"
        if len(self._incoming(m.target)) >= limits.max_per_target:
            return "per_target"
        # the adaptive caps (lowered after downtime overshoots, never above the policy's)
        if len(self._running) >= self.adaptive.cap(TOTAL, limits.max_concurrent):
            return "adaptive_concurrency"
        host_limit = limits.max_per_source + limits.max_per_target
        for host in (m.source, m.target):
            if self._touching(host) >= self.adaptive.cap(host, host_limit):
                return "adaptive_host"
        return None

    async def _compatible(self, m: Migration, wave: _Wave) -> str | None:
        key = (m.vm, m.source, m.target)
        if key not in wave.compat:
            try:
                why = await self.hypervisor.compatible(m.vm, m.source, m.target)
            except HypervisorError as e:
                log.warning(
                    "compatibility_check_failed",
                    vm=m.vm,
                    source=m.source,
                    target=m.target,
                    error=str(e),
                )
                return "hypervisor_unreachable"
            wave.compat[key] = why
            if why is not None:
                log.info(
                    "migration_incompatible",
                    vm=m.vm,
                    source=m.source,
                    target=m.target,
                    detail=why,
                )
        return "incompatible" if wave.compat[key] is not None else None

    # -- skip / dry-run -------------------------------------------------------------------------
    def _skip(self, report: ExecutionReport, m: Migration, reason: str, detail: str = "") -> None:
        report.skipped.append(
            MoveRecord(m.vm, m.source, m.target, reason, m.reason.kind.value, detail=detail)
        )
        self.metrics.inc("migrations_skipped_total", reason=reason)
        log.info(
            "migration_skipped",
            vm=m.vm,
            source=m.source,
            target=m.target,
            reason=reason,
            kind=m.reason.kind.value,
            migration_id=None,
        )

    def _dry(self, report: ExecutionReport, wave: _Wave, m: Migration, mode_reason: str) -> None:
        why = self._static_check(m, wave)
        if why is None:
            why = self._dynamic_check(m, wave, dry=True)
        if why is not None:
            self._skip(report, m, why)
            return
        # would run: account for it so later moves see its effect (nothing is executed)
        wave.started += 1
        wave.dry_planned.setdefault(m.target, []).append(m.vm)
        wave.placement[m.vm] = m.target
        self._skip(report, m, mode_reason, detail="would migrate")

    def _journal_down(self, why: str) -> None:
        self.metrics.set("journal_writable", 0.0)
        log.error("journal_unwritable", error=why)

    # -- running a step ---------------------------------------------------------------------
    async def _run_step(self, step: PlanStep, wave: _Wave, report: ExecutionReport) -> None:
        pending = list(step.migrations)
        tasks: set[asyncio.Task[None]] = set()
        while pending or tasks:
            waiting: list[Migration] = []
            hold_until: float | None = None
            wave.sharing = len(self._running) + len(pending)
            for m in pending:
                why = self._static_check(m, wave) or self._dynamic_check(m, wave)
                if why is None:
                    why = await self._compatible(m, wave)
                    if why is None:
                        # re-check after the await: other moves may have started or ended
                        why = self._static_check(m, wave) or self._dynamic_check(m, wave)
                if why is None and self.stagger_s > 0 and tasks:
                    # spread switch-overs: not two starts within stagger_s of each other
                    due = self._last_start + self.stagger_s
                    if self.clock.monotonic() < due:
                        why = "stagger"
                        hold_until = due if hold_until is None else min(hold_until, due)
                if why in WAIT_LIMITS and (tasks or self._running):
                    if id(m) not in wave.blocked_once:
                        wave.blocked_once.add(id(m))
                        self.metrics.inc("migration_limit_blocks_total", limit=why)
                        log.info(
                            "migration_waiting",
                            vm=m.vm,
                            source=m.source,
                            target=m.target,
                            limit=why,
                            migration_id=None,
                        )
                    waiting.append(m)
                    continue
                if why is not None:
                    self._skip(report, m, why)
                    continue
                task = self._start(m, wave, report)
                if task is not None:
                    tasks.add(task)
                    report.max_concurrency = max(report.max_concurrency, len(self._running))
            pending = waiting
            if not tasks:
                for m in pending:  # nothing of ours runs: a wait would never end
                    self._skip(report, m, "concurrency")
                return
            watch: set[asyncio.Future[Any]] = set(tasks)
            timer: asyncio.Future[None] | None = None
            if hold_until is not None:
                delay = max(0.0, hold_until - self.clock.monotonic())
                timer = asyncio.ensure_future(self.clock.sleep(delay))
                watch.add(timer)
            try:
                done_any, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # cancelled (daemon shutting down hard): stop watching; the journal keeps the
                # intents open and reconcile resolves them at the next start, as after a crash
                for t in tasks:
                    t.cancel()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            done = {t for t in tasks if t in done_any}
            tasks -= done
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    self.metrics.inc("errors_total", where="executor_move")
                    log.error("migration_task_error", error=repr(t.exception()))

    def _start(
        self, m: Migration, wave: _Wave, report: ExecutionReport
    ) -> asyncio.Task[None] | None:
        vm = wave.vms[m.vm]
        cls_name, spec = class_spec_for(wave.policy, vm)
        cap = self.adaptive.cap(TOTAL, wave.policy.limits.max_concurrent)
        sharing = max(1, min(cap, wave.sharing))
        settings = choose_settings(vm, spec, sharing=sharing if self.share_downtime else 1)
        mib = bytes_to_move_mib(vm, spec)
        mid = uuid.uuid4().hex[:16]
        now = self.clock.now()
        try:
            self.journal.record_intent(
                mid,
                m.vm,
                m.source,
                m.target,
                m.reason.kind.value,
                mib,
                settings.time_budget_s,
                now,
            )
            if wave.policy.limits.cooldown_s > 0:
                self.journal.set_cooldown(m.vm, now + wave.policy.limits.cooldown_s)
        except JournalError as e:
            self._journal_down(str(e))
            self._skip(report, m, "journal_unwritable")
            return None
        wave.started += 1
        rec = InFlight(mid, m.vm, m.source, m.target, now, None, settings)
        mono = self.clock.monotonic()
        self._last_start = mono
        self._running[mid] = _Running(rec, mib, vm.cpu_used_mc, vm.memory_mib, mono)
        total = len(self._running)
        for r in self._running.values():  # what each running move now shares the hosts with
            scopes = {TOTAL: total}
            for host in (r.rec.source, r.rec.target):
                scopes[host] = self._touching(host)
            for k, v in scopes.items():
                r.peak[k] = max(r.peak.get(k, 0), v)
        self.metrics.set("migrations_in_flight", float(len(self._running)))
        self.metrics.inc("migrations_started_total", reason=m.reason.kind.value)
        log.info(
            "migration_started",
            vm=m.vm,
            source=m.source,
            target=m.target,
            migration_id=mid,
            kind=m.reason.kind.value,
            reason=str(m.reason),
            migration_class=cls_name,
            strategy=settings.strategy,
            bandwidth_mib_s=settings.bandwidth_mib_s,
            max_downtime_ms=settings.max_downtime_ms,
            postcopy_after_s=settings.postcopy_after_s,
            auto_converge=settings.auto_converge,
            time_budget_s=settings.time_budget_s,
            mib=mib,
        )
        return asyncio.create_task(self._run_move(m, mid, settings, wave, report))

    def _progress(self, mid: str) -> Callable[[MigrationProgress], None]:
        def cb(p: MigrationProgress) -> None:
            r = self._running.get(mid)
            if r is None:
                return
            r.rec = InFlight(
                r.rec.migration_id,
                r.rec.vm,
                r.rec.source,
                r.rec.target,
                r.rec.started,
                p,
                r.rec.settings,
            )
            self.metrics.set("migration_remaining_bytes", p.data_remaining_mib * MIB, vm=p.vm)

        return cb

    async def _migrate_guarded(
        self, m: Migration, mid: str, settings: MigrationSettings
    ) -> MigrationResult:
        """Run the hypervisor's migrate with a watchdog: past the time budget (plus a grace)
        the job is aborted, then awaited a little longer."""
        task = asyncio.ensure_future(
            self.hypervisor.migrate(m.vm, m.source, m.target, settings, self._progress(mid))
        )
        limit = settings.time_budget_s + max(self.watchdog_grace_s, 0.1 * settings.time_budget_s)
        if await self._wait_for(task, limit):
            return task.result()
        log.warning(
            "migration_watchdog_abort",
            vm=m.vm,
            source=m.source,
            target=m.target,
            migration_id=mid,
            after_s=limit,
        )
        try:
            await self.hypervisor.abort(m.vm, m.source)
        except HypervisorError as e:
            log.error(
                "migration_abort_failed",
                vm=m.vm,
                source=m.source,
                target=m.target,
                migration_id=mid,
                error=str(e),
            )
        if await self._wait_for(task, self.watchdog_grace_s):
            return task.result()
        task.cancel()
        return MigrationResult(False, total_s=limit, aborted=True, error="watchdog: no outcome")

    async def _wait_for(self, task: asyncio.Future[MigrationResult], seconds: float) -> bool:
        """Wait for `task` at most `seconds` of the executor's clock. True if it finished."""
        if task.done():
            return True
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waiting: set[asyncio.Future[Any]] = {task, sleeper}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        return task.done()

    async def _run_move(
        self,
        m: Migration,
        mid: str,
        settings: MigrationSettings,
        wave: _Wave,
        report: ExecutionReport,
    ) -> None:
        ids = {"vm": m.vm, "source": m.source, "target": m.target, "migration_id": mid}
        t0 = self.clock.monotonic()
        try:
            try:
                result = await self._migrate_guarded(m, mid, settings)
            except HypervisorError as e:
                result = MigrationResult(False, error=f"hypervisor: {e}")
            except Exception as e:  # an adapter bug must not lose track of the move
                self.metrics.inc("errors_total", where="executor_migrate")
                log.exception("migration_adapter_error", **ids)
                result = MigrationResult(False, error=f"{type(e).__name__}: {e}")
            elapsed = self.clock.monotonic() - t0
            try:
                verdict = await self._verify(m.vm, m.source, m.target)
            except Exception as e:  # an adapter bug: leave the move open for reconcile
                self.metrics.inc("errors_total", where="executor_verify")
                log.exception("migration_verify_error", **ids)
                verdict = _Verdict("unverified", f"verification failed: {type(e).__name__}: {e}")
            self._conclude(m, mid, settings, wave, report, result, verdict, elapsed)
        finally:
            self._running.pop(mid, None)
            self.metrics.set("migrations_in_flight", float(len(self._running)))
            self.metrics.set("migration_remaining_bytes", 0.0, vm=m.vm)

    async def _verify(self, vm: str, source: str, target: str) -> _Verdict:
        src: dict[str, DomainInfo] | None
        dst: dict[str, DomainInfo] | None
        try:
            src = await self.hypervisor.domains(source)
        except HypervisorError:
            src = None
        try:
            dst = await self.hypervisor.domains(target)
        except HypervisorError:
            dst = None
        on_src = src.get(vm) if src is not None else None
        on_dst = dst.get(vm) if dst is not None else None
        src_running = on_src is not None and on_src.running
        dst_running = on_dst is not None and on_dst.running
        if src is None or dst is None:
            down = source if src is None else target
            return _Verdict("unverified", f"host {down} unreachable")
        if dst_running and not src_running:
            assert on_dst is not None
            return _Verdict("moved", persistent=on_dst.persistent)
        if src_running and not dst_running:
            return _Verdict("on_source")
        if src_running and dst_running:
            return _Verdict("both", "running on both source and target")
        where = [h for h, d in ((source, on_src), (target, on_dst)) if d is not None]
        detail = f"defined but not running on {', '.join(where)}" if where else "on neither host"
        return _Verdict("lost", detail)

    def _conclude(
        self,
        m: Migration,
        mid: str,
        settings: MigrationSettings,
        wave: _Wave,
        report: ExecutionReport,
        result: MigrationResult,
        verdict: _Verdict,
        elapsed: float,
    ) -> None:
        ids = {"vm": m.vm, "source": m.source, "target": m.target, "migration_id": mid}
        now = self.clock.now()
        mono = self.clock.monotonic()
        kind = m.reason.kind.value
        duration = result.total_s if result.total_s > 0 else elapsed
        if result.transferred_mib > 0:
            self.metrics.inc("migrated_bytes_total", result.transferred_mib * MIB)
        state: str
        rec_reason: str
        detail = result.error or ""
        ok = False
        if verdict.outcome == "moved":
            ok = True
            state, rec_reason = "succeeded", "ok"
            if not result.ok:
                detail = f"hypervisor reported failure ({result.error}) but VM runs on target"
                log.warning("migration_result_mismatch", detail=detail, **ids)
            if not verdict.persistent:
                self.metrics.inc("errors_total", where="verify_not_persistent")
                log.error("migration_not_persistent", **ids)
                detail = (detail + "; " if detail else "") + "definition not persistent on target"
            wave.placement[m.vm] = m.target
            if m.reason.kind in JUDGED:
                wave.judged_moves[m.vm] = m.target
            self.metrics.inc("migrations_succeeded_total", reason=kind)
            self.metrics.observe("migration_duration_seconds", duration)
            if result.downtime_ms is not None:
                self.metrics.observe("migration_downtime_seconds", result.downtime_ms / 1000.0)
                self._adapt(m, mid, wave, report, result.downtime_ms)
            rec = MoveRecord(
                m.vm,
                m.source,
                m.target,
                rec_reason,
                kind,
                mid,
                detail,
                duration,
                result.downtime_ms,
                settings.strategy,
            )
            report.succeeded.append(rec)
            log.info(
                "migration_succeeded",
                duration_s=round(duration, 3),
                downtime_ms=result.downtime_ms,
                postcopy=result.postcopy,
                strategy=settings.strategy,
                **ids,
            )
        elif verdict.outcome == "on_source" and result.aborted:
            state, rec_reason = "aborted", "aborted"
            self.metrics.inc("migrations_aborted_total", reason=kind)
            report.aborted.append(
                MoveRecord(
                    m.vm,
                    m.source,
                    m.target,
                    "aborted",
                    kind,
                    mid,
                    detail,
                    duration,
                    None,
                    settings.strategy,
                )
            )
            log.warning("migration_aborted", detail=detail, duration_s=round(duration, 3), **ids)
        elif verdict.outcome == "on_source":
            state = "failed"
            rec_reason = (
                "hypervisor_error"
                if detail.startswith("hypervisor:")
                else ("migration_error" if not result.ok else "verify_still_on_source")
            )
            if result.ok:
                detail = "hypervisor reported success but VM still runs on the source"
            self.metrics.inc("migrations_failed_total", error=rec_reason)
            report.failed.append(
                MoveRecord(
                    m.vm,
                    m.source,
                    m.target,
                    rec_reason,
                    kind,
                    mid,
                    detail,
                    duration,
                    None,
                    settings.strategy,
                )
            )
            log.warning("migration_failed", error=rec_reason, detail=detail, **ids)
        elif verdict.outcome == "lost":
            state, rec_reason = "lost", "vm_lost"
            detail = verdict.detail
            self.metrics.inc("vm_lost_total")
            self.metrics.inc("migrations_failed_total", error=rec_reason)
            rec = MoveRecord(m.vm, m.source, m.target, rec_reason, kind, mid, detail, duration)
            report.failed.append(rec)
            report.lost.append(rec)
            log.error("vm_lost", detail=detail, **ids)
        else:  # both running, or a host unreachable: leave the move open for reconcile
            state = "conflict" if verdict.outcome == "both" else "unverified"
            rec_reason = "running_on_both" if verdict.outcome == "both" else "unverified"
            detail = verdict.detail
            self.metrics.inc("migrations_failed_total", error=rec_reason)
            self.metrics.inc("errors_total", where=f"verify_{rec_reason}")
            report.failed.append(
                MoveRecord(m.vm, m.source, m.target, rec_reason, kind, mid, detail, duration)
            )
            log.error("migration_unverified", error=rec_reason, detail=detail, **ids)
        try:
            self.journal.record_outcome(
                mid,
                state,
                now,
                detail=detail or None,
                downtime_ms=result.downtime_ms if ok else None,
                duration_s=duration,
            )
            if wave.policy.limits.cooldown_s > 0:
                self.journal.set_cooldown(m.vm, now + wave.policy.limits.cooldown_s)
        except JournalError as e:
            # the intent stays open: reconcile resolves it at the next start; no new moves now
            self._journal_down(str(e))
        for host in (m.source, m.target):
            change = self.breaker.record(host, ok, mono)
            if change is not None:
                self.metrics.set("host_circuit_open", 1.0 if change == "opened" else 0.0, host=host)
                log.warning(f"circuit_{change}", host=host, vm=m.vm, migration_id=mid)

    def _adapt(
        self, m: Migration, mid: str, wave: _Wave, report: ExecutionReport, downtime_ms: float
    ) -> None:
        """Feed a verified move's downtime to the adaptive concurrency controller."""
        ids = {"vm": m.vm, "source": m.source, "target": m.target, "migration_id": mid}
        limit_ms = float(class_spec_for(wave.policy, wave.vms[m.vm])[1].max_downtime_ms)
        if downtime_ms > limit_ms:
            report.downtime_over_limit += 1
            self.metrics.inc("migration_downtime_over_limit_total")
            log.warning(
                "migration_downtime_over_limit",
                downtime_ms=downtime_ms,
                limit_ms=limit_ms,
                **ids,
            )
        run = self._running.get(mid)
        if run is None:
            return
        limits = wave.policy.limits
        host_limit = limits.max_per_source + limits.max_per_target
        policy_limits = {TOTAL: limits.max_concurrent, m.source: host_limit, m.target: host_limit}
        now = self.clock.now()
        changes = self.adaptive.observe(
            downtime_ms=downtime_ms,
            limit_ms=limit_ms,
            started=run.rec.started,
            now=now,
            peak=dict(run.peak),
            policy_limits=policy_limits,
        )
        for c in changes:
            self._cap_changed(c, report, downtime_ms, limit_ms, ids)
        self._save_adaptive(run.peak, now)
        cap = self.adaptive.cap(TOTAL, limits.max_concurrent)
        report.concurrency_effective = cap
        report.concurrency_effective_min = min(report.concurrency_effective_min, cap)

    def _load_adaptive(self) -> None:
        """Restore what adaptive concurrency learned before a restart (from the journal)."""
        try:
            raw = self.journal.adaptive_state()
        except JournalError as e:
            self.metrics.inc("errors_total", where="adaptive_load")
            log.error("adaptive_state_unreadable", error=str(e))
            return
        state: dict[str, Any] = {}
        bad: list[str] = []
        for scope, text in raw.items():
            try:
                state[scope] = json.loads(text)
            except ValueError:
                bad.append(scope)
        bad += self.adaptive.load(state)
        if bad:
            self.metrics.inc("errors_total", where="adaptive_load")
            log.error("adaptive_state_malformed", scopes=sorted(bad))
        if raw:
            caps = self.adaptive.throttled()
            log.info(
                "adaptive_state_loaded",
                scopes=len(raw) - len(bad),
                cluster_cap=caps.get(TOTAL),
                host_caps={k: v for k, v in caps.items() if k != TOTAL},
            )

    def _save_adaptive(self, scopes: Iterable[str], now: float) -> None:
        """Persist the learned state of the scopes a move fed (best effort: a failure is logged
        and counted; the journal's own writes decide whether moves may start)."""
        tracked = self.adaptive.throttled()
        states = {
            k: json.dumps(self.adaptive.scope_state(k), separators=(",", ":"))
            for k in scopes
            if k in tracked
        }
        try:
            self.journal.save_adaptive(states, now)
        except JournalError as e:
            self.metrics.inc("errors_total", where="adaptive_save")
            log.warning("adaptive_state_not_saved", error=str(e))

    def _cap_changed(
        self,
        c: CapChange,
        report: ExecutionReport,
        downtime_ms: float,
        limit_ms: float,
        ids: dict[str, str],
    ) -> None:
        report.concurrency_changes.append(
            {
                "scope": c.scope,
                "old": c.old,
                "new": c.new,
                "direction": c.direction,
                "downtime_ms": downtime_ms,
                "vm": ids["vm"],
            }
        )
        if c.scope == TOTAL:
            self.metrics.set("migration_concurrency_effective", float(c.new))
        else:
            self.metrics.set("migration_host_concurrency_effective", float(c.new), host=c.scope)
        emit = log.warning if c.direction == "decrease" else log.info
        emit(
            "migration_concurrency_adjusted",
            scope="cluster" if c.scope == TOTAL else "host",
            host=None if c.scope == TOTAL else c.scope,
            old=c.old,
            new=c.new,
            direction=c.direction,
            downtime_ms=downtime_ms,
            limit_ms=limit_ms,
            predicted_ratio=c.predicted,
            cooloff_s=self.adaptive.cooloff_s,
            **ids,
        )

    # -- reconcile ------------------------------------------------------------------------------
    async def reconcile(self, snapshot: ClusterSnapshot | None = None) -> ReconcileReport:
        """Resolve every journaled move without an outcome (after a crash or restart) against
        the hypervisors. Never starts a migration."""
        report = ReconcileReport()
        try:
            entries = self.journal.open_moves()
        except JournalError as err:
            log.error("reconcile_journal_unreadable", error=str(err))
            return report
        for e in entries:
            if e.id in self._running:
                continue
            await self._reconcile_one(e, report)
        self.metrics.set("journal_writable", 1.0 if self.journal.probe() else 0.0)
        return report

    async def _reconcile_one(self, e: JournalEntry, report: ReconcileReport) -> None:
        ids = {"vm": e.vm, "source": e.source, "target": e.target, "migration_id": e.id}
        info = await self._job_state(e)
        aborted = False
        if info == "migrating":
            report.awaited.append(e.id)
            deadline = e.started + e.time_budget_s + self.watchdog_grace_s
            log.info("reconcile_awaiting", deadline=deadline, **ids)
            while info == "migrating" and self.clock.now() < deadline:
                await self.clock.sleep(min(self.reconcile_poll_s, deadline - self.clock.now()))
                info = await self._job_state(e)
            if info == "migrating":
                log.warning("reconcile_aborting", **ids)
                try:
                    await self.hypervisor.abort(e.vm, e.source)
                except HypervisorError as err:
                    log.error("reconcile_abort_failed", error=str(err), **ids)
                aborted = True
                end = self.clock.now() + self.watchdog_grace_s
                while info == "migrating" and self.clock.now() < end:
                    await self.clock.sleep(self.reconcile_poll_s)
                    info = await self._job_state(e)
        verdict = await self._verify(e.vm, e.source, e.target)
        now = self.clock.now()
        state: str | None
        if info == "migrating":
            state, detail = None, "still migrating after abort"
        elif verdict.outcome == "moved":
            state, detail = "succeeded", "reconciled: found on target"
            report.succeeded.append(e.id)
        elif verdict.outcome == "on_source":
            state = "aborted" if aborted else "failed"
            detail = "reconciled: guest still on source"
            (report.aborted if aborted else report.failed).append(e.id)
        elif verdict.outcome == "lost":
            state, detail = "lost", f"reconciled: {verdict.detail}"
            report.lost.append(e.id)
            self.metrics.inc("vm_lost_total")
            log.error("vm_lost", detail=detail, **ids)
        elif verdict.outcome == "both":
            state, detail = "conflict", verdict.detail
        else:
            state, detail = None, verdict.detail
        if state is None or state == "conflict":
            report.unresolved.append(e.id)
            self.metrics.inc("errors_total", where="reconcile_unresolved")
            log.error("reconcile_unresolved", detail=detail, **ids)
            if state == "conflict" and e.state != "conflict":
                self._try_outcome(e.id, "conflict", now, detail)
            return
        self.metrics.inc("migrations_reconciled_total", result=state)
        log.info("reconciled", result=state, detail=detail, **ids)
        self._try_outcome(e.id, state, now, detail)

    def _try_outcome(self, mid: str, state: str, now: float, detail: str) -> None:
        try:
            self.journal.record_outcome(mid, state, now, detail=detail)
        except JournalError as err:
            self._journal_down(str(err))

    async def _job_state(self, e: JournalEntry) -> str:
        """'migrating' if the source still runs a migration job of the VM, else 'settled'."""
        try:
            src = await self.hypervisor.domains(e.source)
        except HypervisorError:
            return "settled"
        d = src.get(e.vm)
        return "migrating" if d is not None and d.migrating else "settled"
