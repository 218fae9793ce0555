"""Is the control loop doing its job? The health verdict, and the systemd watchdog it drives.

``WATCHDOG=1`` is sent only while the verdict is healthy (never from a free-running timer), so a
wedged loop gets the service restarted by systemd.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from rebalancerd.daemon.config import DaemonConfig
from rebalancerd.daemon.loop import ControlLoop
from rebalancerd.execution.executor import Executor
from rebalancerd.ports import ServiceNotifier

log = structlog.get_logger("rebalancerd.daemon")

FIRST_CYCLE_EXTRA_S = 30.0
"""The first cycle also imports and warms up the planner."""
MIGRATION_SLACK_S = 120.0
"""How long past its time budget a migration in flight still counts as progress."""
DEFAULT_TIME_BUDGET_S = 300.0


@dataclass(frozen=True, slots=True)
class Progress:
    """Where the daemon is in its life, as far as the verdict needs it."""

    phase: str
    brain_stopped: bool
    """The control-loop task has ended."""
    loop_started: float | None
    """Monotonic time planning began (None: not yet)."""


def health_verdict(
    cfg: DaemonConfig, loop: ControlLoop, executor: Executor, progress: Progress, now: float
) -> tuple[bool, str]:
    """(healthy, why) at monotonic time `now`.

    Unhealthy when the loop task died, or when no cycle finished without error for
    ``watchdog_grace_cycles + 1`` planning intervals plus twice the planner's time limit,
    except while migrations are in flight within their time budget (the executor bounds
    those). A stale-telemetry cycle is a healthy cycle: the broker being down is not a
    reason to restart the daemon.
    """
    if progress.brain_stopped:
        return False, "control loop stopped"
    if progress.phase == "reconciling":
        return True, "reconciling"
    iv = cfg.intervals
    allowed = iv.plan_s * (iv.watchdog_grace_cycles + 1) + cfg.planner.time_limit_s * 2
    # an unresolved post-check (a host not answering) is retried on a timer, not a stuck move
    flights = [f for f in executor.in_flight() if f.state == "migrating"]
    if flights:
        wall = loop.clock.now()
        for f in flights:
            budget = f.settings.time_budget_s if f.settings is not None else DEFAULT_TIME_BUDGET_S
            if wall - f.started <= budget + MIGRATION_SLACK_S:
                return True, "migrating"
        return False, "migration past its time budget"
    last = loop.state.last_ok_monotonic
    ref = last if last is not None else progress.loop_started
    if ref is None:
        return True, "starting"
    if last is None:
        allowed += FIRST_CYCLE_EXTRA_S
    if loop.busy:
        ref = max(ref, loop.cycle_started_monotonic)
    age = now - ref
    if age > allowed:
        why = loop.state.last_error or "no cycle finished"
        return False, f"no healthy cycle for {age:.0f}s ({why})"
    return True, "ok"


class Watchdog:
    """Sends ``WATCHDOG=1`` every half watchdog period while healthy; logs and reports (STATUS)
    the change to unhealthy and back."""

    def __init__(
        self,
        health: Callable[[], tuple[bool, str]],
        notifier: ServiceNotifier,
        watchdog_s: float | None,
    ) -> None:
        self.health = health
        self.notifier = notifier
        self.watchdog_s = watchdog_s
        """systemd's WatchdogSec (None: no watchdog; health is still followed and logged)."""
        self.ok = True
        """The last verdict."""
        self.ticks = 0

    @property
    def period_s(self) -> float:
        period = self.watchdog_s / 2 if self.watchdog_s else 5.0
        return max(0.05, min(period, 30.0))

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            self.ticks += 1
            ok, why = self.health()
            if ok:
                if self.watchdog_s:
                    self.notifier.watchdog()
                if not self.ok:
                    log.info("loop_healthy_again")
            elif self.ok:
                log.error("loop_unhealthy", reason=why, watchdog_s=self.watchdog_s)
                self.notifier.status(f"unhealthy: {why}")
            self.ok = ok
            await asyncio.sleep(self.period_s)
