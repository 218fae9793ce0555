"""The control loop shared by the daemon, the demo and the tests.

Each cycle: take the telemetry snapshot (with the operator's overlay) -> refuse to plan on stale
data -> apply the policy once (``apply_policy``) -> let the executor judge its last wave on that
effective snapshot -> plan on it (in a worker thread, so CP-SAT never blocks the event loop) ->
hand the plan and the same effective snapshot to the executor, the only code that acts. The
loop never touches a hypervisor itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from rebalancerd.domain.load import host_loads, imbalance
from rebalancerd.domain.model import ClusterSnapshot, HostState
from rebalancerd.domain.plan import MigrationPlan
from rebalancerd.policy.resolve import apply_policy, policy_weights
from rebalancerd.policy.schema import Policy
from rebalancerd.ports import Clock, MetricsSink, TelemetrySource

log = structlog.get_logger("rebalancerd.loop")

Planner = Callable[..., MigrationPlan]
SnapshotOverlay = Callable[[ClusterSnapshot], ClusterSnapshot]


class ExecutorLike(Protocol):
    async def execute(
        self,
        plan: MigrationPlan,
        snapshot: ClusterSnapshot,
        policy: Policy,
        *,
        applied: bool,
        observed: bool,
    ) -> Any:
        """`applied=True`: `snapshot` already has the policy applied (the loop did it);
        `observed=True`: the loop already passed it to `observe_snapshot` this cycle."""
        ...

    def frozen_vms(self) -> frozenset[str]: ...


class PowerLike(Protocol):
    async def cycle(self, snap: ClusterSnapshot, policy: Policy) -> Any:
        """One power cycle on the cycle's effective snapshot (execution/power.py)."""
        ...


@dataclass(frozen=True, slots=True)
class CycleReport:
    number: int
    at: float
    """Wall time the cycle started."""
    status: str
    """planned | nothing_to_do | stale | no_hosts | backoff | error"""
    detail: str = ""
    plan: MigrationPlan | None = None
    execution: Any = None
    imbalance: float | None = None
    policy: str = ""


@dataclass
class LoopState:
    cycles: int = 0
    last_ok_monotonic: float | None = None
    last_error: str | None = None
    history: deque[CycleReport] = field(default_factory=lambda: deque(maxlen=50))


class ControlLoop:
    def __init__(
        self,
        telemetry: TelemetrySource,
        policy_provider: Callable[[], Policy],
        executor: ExecutorLike,
        clock: Clock,
        metrics: MetricsSink,
        *,
        interval_s: float = 60.0,
        planner_time_limit_s: float = 5.0,
        max_data_age_s: float = 120.0,
        seed: int = 0,
        planner: Planner | None = None,
        overlay: SnapshotOverlay | None = None,
        on_cycle: Callable[[CycleReport], None] | None = None,
        backoff: Callable[[], float] | None = None,
        plan_in_thread: bool = True,
        power: PowerLike | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.policy_provider = policy_provider
        self.executor = executor
        self.clock = clock
        self.metrics = metrics
        self.interval_s = interval_s
        self.planner_time_limit_s = planner_time_limit_s
        self.max_data_age_s = max_data_age_s
        self.seed = seed
        self._planner = planner
        self.overlay = overlay
        self.on_cycle = on_cycle
        self.backoff = backoff
        """Returns seconds of back-off still to wait (0 = none), e.g. the executor's 'moves
        stopped helping' pause."""
        self.plan_in_thread = plan_in_thread
        """False runs the planner inline (deterministic replays on a VirtualClock)."""
        self.state = LoopState()
        self._wake = asyncio.Event()
        self._busy = False
        self.cycle_started_monotonic = 0.0
        """Monotonic time the current (or last) cycle started; 0 before the first one."""
        self.current_plan: MigrationPlan | None = None
        self.power = power
        """Runs after each cycle that planned (or found nothing to do, or no active host):
        verify woken hosts, wake ahead of demand, switch an empty host off."""
        self.last_power: Any = None
        self._power_input: tuple[ClusterSnapshot, Policy] | None = None

    # ------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Plan early (a drain request, a hotspot)."""
        self._wake.set()

    @property
    def busy(self) -> bool:
        return self._busy

    def planner(self) -> Planner:
        if self._planner is None:
            from rebalancerd.planner import make_plan

            self._planner = make_plan
        return self._planner

    def _observe_cluster(self, snap: ClusterSnapshot, policy: Policy) -> float:
        loads = host_loads(snap)
        for name, hl in loads.items():
            self.metrics.set("host_load_ratio", hl.cpu, host=name, resource="cpu")
            self.metrics.set("host_load_ratio", hl.memory, host=name, resource="memory")
        for state in HostState:
            self.metrics.set(
                "hosts", sum(1 for h in snap.hosts if h.state is state), state=state.value
            )
        self.metrics.set("vms", len(snap.vms))
        in_maintenance = {h.name for h in snap.hosts if h.state is HostState.MAINTENANCE}
        self.metrics.set(
            "maintenance_vms", sum(hl.vms for n, hl in loads.items() if n in in_maintenance)
        )
        imb = imbalance(snap, weights=policy_weights(policy))
        self.metrics.set("cluster_imbalance_ratio", imb)
        return imb

    def _finish(self, report: CycleReport) -> CycleReport:
        self.state.history.append(report)
        if report.status != "error":
            self.state.last_ok_monotonic = self.clock.monotonic()
        if self.on_cycle is not None:
            self.on_cycle(report)
        return report

    async def cycle(self) -> CycleReport:
        self._power_input = None
        report = await self._cycle()
        if self.power is not None and self._power_input is not None:
            try:
                self.last_power = await self.power.cycle(*self._power_input)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop survives a power cycle that throws
                self.metrics.inc("errors_total", where="power")
                log.exception("power_cycle_failed", cycle=report.number)
        return report

    async def _cycle(self) -> CycleReport:
        self.state.cycles += 1
        n = self.state.cycles
        at = self.clock.now()
        self.cycle_started_monotonic = self.clock.monotonic()
        self._busy = True
        try:
            policy = self.policy_provider()
            snap = self.telemetry.current()
            if self.overlay is not None:
                snap = self.overlay(snap)
            imb = self._observe_cluster(snap, policy)
            age = self.telemetry.data_age_s()
            if not math.isfinite(age) or age > self.max_data_age_s:
                log.warning("plan_skipped_stale", cycle=n, data_age_s=age)
                return self._finish(
                    CycleReport(n, at, "stale", f"telemetry {age:.0f}s old", imbalance=imb)
                )
            if not any(h.state is HostState.ACTIVE for h in snap.hosts):
                self._power_input = (apply_policy(policy, snap, at), policy)
                return self._finish(CycleReport(n, at, "no_hosts", "no active host", imbalance=imb))
            # The policy is applied once per cycle; planner and executor get the result.
            eff = apply_policy(policy, snap, at)
            self._power_input = (eff, policy)
            # Judge the last wave on every fresh snapshot, not only when the next plan has moves.
            observe = getattr(self.executor, "observe_snapshot", None)
            if observe is not None:
                observe(eff, policy, applied=True)
            # dead hosts: fence, then restart their HA VMs elsewhere (through the executor)
            recover = getattr(self.executor, "recover_dead_hosts", None)
            if recover is not None:
                await recover(eff, policy)
            wait = self.backoff() if self.backoff is not None else 0.0
            if wait > 0:
                log.info("plan_backoff", cycle=n, wait_s=wait)
                return self._finish(
                    CycleReport(
                        n, at, "backoff", f"moves stopped helping; {wait:.0f}s left", imbalance=imb
                    )
                )
            frozen = self.executor.frozen_vms()
            t0 = time.perf_counter()
            kwargs: dict[str, Any] = dict(
                now=at,
                time_limit_s=self.planner_time_limit_s,
                seed=self.seed,
                frozen=frozen,
                applied=True,
            )
            # the hosts each VM left recently: the planner does not plan a return trip either
            departures = getattr(self.executor, "recent_departures", None)
            if departures is not None:
                kwargs["departed"] = departures(policy)
            if self.plan_in_thread:
                plan = await asyncio.to_thread(self.planner(), eff, policy, **kwargs)
            else:
                plan = self.planner()(eff, policy, **kwargs)
            self.metrics.observe("solver_duration_seconds", time.perf_counter() - t0)
            self.metrics.inc("plans_total", status=plan.stats.status or "unknown")
            if plan.stats.objective is not None:
                self.metrics.set("plan_objective", plan.stats.objective)
            self.current_plan = plan
            if plan.empty:
                return self._finish(
                    CycleReport(
                        n,
                        at,
                        "nothing_to_do",
                        plan.stats.status,
                        plan=plan,
                        imbalance=imb,
                        policy=policy.name,
                    )
                )
            for m in plan.migrations:
                self.metrics.inc("migrations_planned_total", reason=m.reason.kind.value)
            log.info(
                "plan_ready",
                cycle=n,
                migrations=len(plan.migrations),
                steps=len(plan.steps),
                status=plan.stats.status,
                imbalance_before=plan.stats.imbalance_before,
                imbalance_after=plan.stats.imbalance_after,
                policy=policy.name,
                mode=policy.mode.value,
            )
            execution = await self.executor.execute(
                plan, eff, policy, applied=True, observed=observe is not None
            )
            return self._finish(
                CycleReport(
                    n,
                    at,
                    "planned",
                    plan.stats.status,
                    plan=plan,
                    execution=execution,
                    imbalance=imb,
                    policy=policy.name,
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a loop must survive anything a cycle throws
            self.state.last_error = f"{type(e).__name__}: {e}"
            self.metrics.inc("errors_total", where="cycle")
            log.exception("cycle_failed", cycle=n)
            return self._finish(CycleReport(n, at, "error", self.state.last_error))
        finally:
            self._busy = False

    async def _wait(self, seconds: float, stop: asyncio.Event) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, waker, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waker, stopper):
                t.cancel()
            self._wake.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle every interval_s (or early on wake()) until `stop` is set."""
        while not stop.is_set():
            await self.cycle()
            if stop.is_set():
                break
            await self._wait(self.interval_s, stop)


def hot_hosts(snap: ClusterSnapshot, policy: Policy) -> set[str]:
    """Active hosts above the policy's high watermark (weighted load): a reason to plan early."""
    w = policy_weights(policy)
    high = policy.targets.high_watermark
    states = {h.name: h.state for h in snap.hosts}
    return {
        name
        for name, hl in host_loads(snap).items()
        if states.get(name) is HostState.ACTIVE and hl.weighted(w) > high
    }
