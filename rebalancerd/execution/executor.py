"""The executor: the one choke point through which rebalancerd ever migrates a VM.

For every planned move, right before starting it: pre-checks (VM where the plan says, host
states, rules, CPU compatibility, breaker, cooldown, return guard, windows, every limit, then
what libvirt itself runs on both hosts: the VM on the source, room on the target), an intent
committed to the journal, the move with settings chosen for this VM, post-verification on both
hosts, the outcome journaled, metrics and one log line per event. Steps of a plan run in order;
the moves of one step run concurrently up to the concurrency limits (a move blocked only by a
concurrency limit waits for a slot inside its step; any other failed check skips it with a
reason).

Dry-run (the executor's flag or ``policy.dry_run``) and advisory mode never call the hypervisor:
pure checks run and every move is reported as skipped with reason ``dry_run`` / ``advisory``.

A policy change reaches a wave in flight: with a ``policy_provider`` (the daemon's policy store),
the policy in force is read again right before each move starts, not only at wave start. If it
changed, the wave follows it: advisory or dry-run now -> the move (and every later one) is
skipped with reason ``advisory`` / ``dry_run`` (detail "policy changed during the wave");
otherwise the new policy is applied on top of the wave's snapshot (its exclusions, scope,
maintenance, pins add to the old ones for the rest of the wave: a change can only make the wave
more careful), and its windows and limits are what the pre-checks of the next moves read.

This module orchestrates; the parts live beside it: the pre-checks in `precheck.py` (the list is
`domain/checks.py`), one move in `moves.py`, reconciliation in `reconcile.py`, the adaptive
controller's feed in `adaptive_feed.py`, the reports in `records.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from rebalancerd.domain.checks import LiveFacts, waits
from rebalancerd.domain.load import imbalance
from rebalancerd.domain.model import ClusterSnapshot
from rebalancerd.domain.plan import Migration, MigrationPlan, PlanStep
from rebalancerd.execution.adaptive import TOTAL, AdaptiveConcurrency
from rebalancerd.execution.confirm import live_facts
from rebalancerd.execution.guards import CircuitBreaker, HelpTracker
from rebalancerd.execution.ha import HaRecovery
from rebalancerd.execution.journal import Journal, JournalError
from rebalancerd.execution.limits import RunningMoves
from rebalancerd.execution.moves import MoveRunner
from rebalancerd.execution.precheck import (
    HostStates,
    Wave,
    new_wave,
    precheck,
    vm_anti_groups_of,
)
from rebalancerd.execution.reconcile import Reconciler
from rebalancerd.execution.records import ExecutionReport, InFlight
from rebalancerd.policy.resolve import apply_policy, policy_weights
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.ports import Clock, Hypervisor, HypervisorError, MetricsSink, PowerDriver

log = structlog.get_logger("rebalancerd.executor")

POLICY_CHANGED = "policy changed during the wave"


def follow_policy(wave: Wave, policy: Policy, now: float) -> None:
    """The wave under a policy that changed while it ran: `policy` applied on top of the wave's
    snapshot (its exclusions, scope, maintenance and pins add to the old ones)."""
    eff = apply_policy(policy, wave.snap, now)
    wave.snap = eff
    wave.policy = policy
    wave.hosts = eff.host_map()
    wave.hard_pins = eff.rules.hard_pins()
    wave.anti_groups = vm_anti_groups_of(eff.rules)


class Executor(MoveRunner, Reconciler):
    def __init__(
        self,
        hypervisor: Hypervisor,
        clock: Clock,
        metrics: MetricsSink,
        journal: Journal,
        *,
        dry_run: bool = False,
        host_states: HostStates | None = None,
        breaker_threshold: int = 3,
        breaker_open_s: float = 900.0,
        backoff_strikes: int = 2,
        backoff_s: float = 1800.0,
        watchdog_grace_s: float = 30.0,
        reconcile_poll_s: float = 2.0,
        adaptive: AdaptiveConcurrency | None = None,
        stagger_s: float = 0.0,
        share_downtime: bool = True,
        policy_provider: Callable[[], Policy] | None = None,
        power: Mapping[str, PowerDriver] | None = None,
        agent_status: Callable[[str], str] | None = None,
    ) -> None:
        """`host_states`, if given, returns the latest state of every host (the telemetry's
        `host_states()`, operator drains applied): host states are re-read from it right before
        each move (a target that turned stale mid-wave is refused).
        `adaptive`: the AIMD concurrency controller (default: on, see adaptive.py).
        `stagger_s`: least time between two move starts while another move runs (0 = off).
        `share_downtime`: divide the downtime target by the effective concurrency (settings).
        `policy_provider`: the policy in force now (the daemon's policy store), read before each
        move of a wave (see the module docstring); None = the wave keeps the policy passed to
        execute().
        `power`: host -> its power driver (fencing dead hosts); `agent_status`: host ->
        "offline" (Last Will) or "silent" (see execution/ha.py)."""
        self.hypervisor = hypervisor
        self.clock = clock
        self.metrics = metrics
        self.journal = journal
        self.dry_run = dry_run
        self.host_states = host_states
        self.breaker = CircuitBreaker(breaker_threshold, breaker_open_s)
        self.help = HelpTracker(strikes=backoff_strikes, backoff_s=backoff_s)
        self.watchdog_grace_s = watchdog_grace_s
        self.reconcile_poll_s = reconcile_poll_s
        self.adaptive = adaptive if adaptive is not None else AdaptiveConcurrency()
        self._load_adaptive()
        self.stagger_s = stagger_s
        self.share_downtime = share_downtime
        self.policy_provider = policy_provider
        self._last_start = -float("inf")
        self._running = {}
        self.running = RunningMoves()
        self._abort_reasons = {}
        self._unresolved = {}
        self._wave = None
        self._stop = False
        self._slot = asyncio.Event()
        self.ha = HaRecovery(
            hypervisor, clock, metrics, journal, power=power, agent_status=agent_status
        )

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
        """Moves migrating now, then those whose post-verification waits for a host."""
        return [r.rec for r in self._running.values()] + self.unresolved()

    def observe_snapshot(
        self, snapshot: ClusterSnapshot, policy: Policy, *, applied: bool = False
    ) -> str | None:
        """Judge whether the last wave helped, from a fresh snapshot (the loop calls this once
        every cycle; execute() calls it too unless told the caller did). `applied`: the snapshot
        already has the policy applied. Returns the tracker's verdict, if any."""
        eff = snapshot if applied else apply_policy(policy, snapshot, self.clock.now())
        imb = imbalance(eff, weights=policy_weights(policy))
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

    async def recover_dead_hosts(self, snapshot: ClusterSnapshot, policy: Policy) -> None:
        """Classify stale hosts, fence dead ones, restart their HA VMs elsewhere
        (execution/ha.py). `snapshot`: the cycle's effective snapshot."""
        states = self.host_states() if self.host_states is not None else None
        if states is None:
            states = {h.name: h.state for h in snapshot.hosts}
        try:
            await self.ha.cycle(snapshot, policy, states, dry_run=self.dry_run)
        except Exception as e:  # planning goes on; the next cycle tries again
            self.metrics.inc("errors_total", where="ha")
            log.error("ha_cycle_failed", error=f"{type(e).__name__}: {e}")

    # -- execute ----------------------------------------------------------------------------------
    async def execute(
        self,
        plan: MigrationPlan,
        snapshot: ClusterSnapshot,
        policy: Policy,
        *,
        applied: bool = False,
        observed: bool = False,
    ) -> ExecutionReport:
        """Run `plan` (see the module docstring). `applied`: `snapshot` already has the policy
        applied (it is not applied again). `observed`: the caller already passed this snapshot
        to `observe_snapshot` (the loop does, once per cycle), so it is not judged twice."""
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
        if not observed:
            self.observe_snapshot(snapshot, policy, applied=applied)
        eff = snapshot if applied else apply_policy(policy, snapshot, now)
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
        baseline = imbalance(eff, weights=policy_weights(policy))
        wave = new_wave(eff, policy, cooldowns, open_vms, baseline, self.running)
        self._wave = wave
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
    async def _compatible(self, m: Migration, wave: Wave) -> str | None:
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

    def _dry(self, report: ExecutionReport, wave: Wave, m: Migration, mode_reason: str) -> None:
        why = precheck(m, wave, self, dry=True)
        if why is not None:
            self._skip(report, m, why)
            return
        # would run: account for it so later moves see its effect (nothing is executed)
        wave.started += 1
        wave.dry_mib += wave.move_mib(wave.vms[m.vm])
        wave.settle(m.vm, m.source, m.target)
        self._skip(report, m, mode_reason, detail="would migrate")

    def _follow_policy(self, wave: Wave) -> str | None:
        """Bring the wave to the policy in force now (see the module docstring): "dry_run" or
        "advisory" if no move may start any more, else None (the wave's policy is current)."""
        new = wave.policy
        if self.policy_provider is not None:
            try:
                new = self.policy_provider()
            except Exception as e:  # no policy to check against: start nothing
                log.error("policy_provider_failed", error=f"{type(e).__name__}: {e}")
                return "policy_unavailable"
        if new is not wave.policy and new != wave.policy:
            log.info(
                "wave_policy_changed",
                old=wave.policy.name,
                new=new.name,
                mode=new.mode.value,
                dry_run=new.dry_run,
            )
            follow_policy(wave, new, self.clock.now())
        wave.policy = new
        if self.dry_run or new.dry_run:
            return "dry_run"
        if new.mode is Mode.ADVISORY:
            return "advisory"
        return None

    # -- running a step ---------------------------------------------------------------------
    async def _run_step(self, step: PlanStep, wave: Wave, report: ExecutionReport) -> None:
        pending = list(step.migrations)
        tasks: set[asyncio.Task[None]] = set()
        while pending or tasks:
            waiting: list[Migration] = []
            hold_until: float | None = None
            wave.sharing = len(self._running) + len(pending)
            for m in pending:
                halted = self._follow_policy(wave)
                if halted is not None:
                    self._skip(report, m, halted, detail=POLICY_CHANGED)
                    continue
                why = precheck(m, wave, self)
                if why is None:
                    why = await self._compatible(m, wave)
                    live: LiveFacts | None = None
                    if why is None:  # what libvirt itself runs on both hosts, just now
                        why, live = await live_facts(self.hypervisor, m, self._running.values())
                    # re-read after the awaits: the policy may have changed, other moves may
                    # have started or ended
                    halted = self._follow_policy(wave)
                    if halted is not None:
                        self._skip(report, m, halted, detail=POLICY_CHANGED)
                        continue
                    if why is None:
                        # re-check, this time with the hypervisors' own word
                        why = precheck(m, wave, self, live=live)
                if why is None and self.stagger_s > 0 and tasks:
                    # spread switch-overs: not two starts within stagger_s of each other
                    due = self._last_start + self.stagger_s
                    if self.clock.monotonic() < due:
                        why = "stagger"
                        hold_until = due if hold_until is None else min(hold_until, due)
                if why is not None and waits(why) and (tasks or self._running):
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
