"""Host power, through the executor's rules: the only code that calls a PowerDriver.

Each cycle (`PowerManager.cycle`, run by the control loop after the wave):

1. hosts switched on are verified: the BMC says on (or cannot tell, Wake-on-LAN), libvirtd
   answers, the agent reports fresh telemetry; then the host is ACTIVE again (until then it
   is WAKING and receives nothing). Not back within `energy.wake_timeout_s`: FAILED_WAKE,
   `power_wake_failed_total`, an error log and the `RebalancerdHostFailedWake` alert; it
   still receives nothing (a later successful verification brings it back);
2. `power_plan.decide` picks hosts to wake (demand projected `boot_lead_s` ahead) or one empty
   host to switch off;
3. every action goes through the same gates as a migration: dry-run and advisory only log
   (`power_actions_skipped_total{reason=dry_run|advisory}`), `max_power_actions_per_hour`
   over a sliding hour from the journal, the intent is committed to the journal before the
   driver is called (no journal, no action), and a power-off asks libvirt on that host (not
   only the model) that no guest runs there, and refuses a host a move in flight touches.

The states it holds (STANDBY, WAKING, FAILED_WAKE) are kept in the journal, so a restarted
daemon knows which hosts it switched off; `overlay()` gives them to the loop and the executor.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import structlog

from rebalancerd.domain.model import ClusterSnapshot, HostState
from rebalancerd.execution.journal import Journal, JournalError
from rebalancerd.execution.power_plan import Demand, PowerDecision, cluster_demand, decide, forecast
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.ports import (
    Clock,
    Hypervisor,
    HypervisorError,
    MetricsSink,
    PowerDriver,
    PowerError,
    PowerState,
)

log = structlog.get_logger("rebalancerd.power")

HELD = (HostState.STANDBY, HostState.WAKING, HostState.FAILED_WAKE)
TREND_WINDOW_S = 1800.0
HookFactory = Callable[[list[str], list[str]], PowerDriver]


@dataclass(slots=True)
class PowerReport:
    woken: list[str] = field(default_factory=list)
    switched_off: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    failed_wake: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """(host, action, reason)"""
    errors: list[str] = field(default_factory=list)
    decision: PowerDecision = field(default_factory=PowerDecision)


def driver_label(d: PowerDriver) -> str:
    return str(getattr(d, "driver", type(d).__name__.lower()))


class PowerManager:
    def __init__(
        self,
        drivers: Mapping[str, PowerDriver],
        hypervisor: Hypervisor,
        clock: Clock,
        metrics: MetricsSink,
        journal: Journal,
        *,
        dry_run: bool = False,
        agent_states: Callable[[], Mapping[str, HostState]] | None = None,
        hook_driver: HookFactory | None = None,
        busy_hosts: Callable[[], Collection[str]] | None = None,
    ) -> None:
        """`drivers`: host -> its driver (inventory `power:`); `hook_driver` builds a driver
        from the policy's `power_on`/`power_off` hooks for hosts without one. `agent_states`:
        telemetry's own host states (is the agent fresh?). `busy_hosts`: hosts a migration in
        flight touches."""
        self.drivers = dict(drivers)
        self.hypervisor = hypervisor
        self.clock = clock
        self.metrics = metrics
        self.journal = journal
        self.dry_run = dry_run
        self.agent_states = agent_states
        self.hook_driver = hook_driver
        self.busy_hosts = busy_hosts
        self._hooks: dict[tuple[tuple[str, ...], tuple[str, ...]], PowerDriver] = {}
        self._demand: deque[tuple[float, float]] = deque(maxlen=512)
        self.held: dict[str, tuple[HostState, float]] = {}
        """host -> (state, since wall time) for the hosts this manager switched."""
        try:
            for host, (state, since) in journal.power_hosts().items():
                self.held[host] = (HostState(state), since)
        except (JournalError, ValueError) as e:
            log.error("power_state_unreadable", error=str(e))

    # -- queries --------------------------------------------------------------------------------
    def overlay(self) -> dict[str, HostState]:
        """The states this manager holds, to put over telemetry's (a switched-off host's agent
        is silent: it is STANDBY, not STALE)."""
        return {h: s for h, (s, _) in self.held.items()}

    def apply(self, snap: ClusterSnapshot) -> ClusterSnapshot:
        held = self.overlay()
        return snap.with_host_states(held) if held else snap

    def driver(self, host: str, policy: Policy) -> PowerDriver | None:
        d = self.drivers.get(host)
        if d is not None:
            return d
        e = policy.energy
        if self.hook_driver is None or not e.power_on:
            return None
        key = (tuple(e.power_on), tuple(e.power_off))
        if key not in self._hooks:
            self._hooks[key] = self.hook_driver(list(e.power_on), list(e.power_off))
        return self._hooks[key]

    def status(self) -> dict[str, object]:
        now = self.clock.now()
        return {
            "hosts": {
                h: {"state": s.value, "for_s": round(max(0.0, now - t), 1)}
                for h, (s, t) in sorted(self.held.items())
            },
            "drivers": {h: driver_label(d) for h, d in sorted(self.drivers.items())},
        }

    # -- the cycle ------------------------------------------------------------------------------
    async def cycle(self, snap: ClusterSnapshot, policy: Policy) -> PowerReport:
        """One power cycle on the loop's effective snapshot (policy applied, overlay applied)."""
        report = PowerReport()
        now = self.clock.now()
        await self._verify(snap, policy, now, report)
        snap = self.apply(snap)
        cpu, mem = cluster_demand(snap, policy)
        self._demand.append((now, float(cpu)))
        while self._demand and self._demand[0][0] < now - TREND_WINDOW_S:
            self._demand.popleft()
        projected = forecast(list(self._demand), policy.energy.boot_lead_s)
        demand = Demand(cpu, mem, max(cpu, round(projected)))
        switchable = {h.name for h in snap.hosts if self.driver(h.name, policy) is not None}
        busy = set(self.busy_hosts()) if self.busy_hosts is not None else set()
        decision = decide(snap, policy, demand, switchable=switchable, busy=busy)
        report.decision = decision
        for host in decision.wake:
            await self._power_on(host, policy, decision.why, report)
        for host in decision.sleep:
            await self._power_off(host, policy, decision.why, report)
        self._export(snap)
        return report

    def _export(self, snap: ClusterSnapshot) -> None:
        for h in snap.hosts:
            held = self.held.get(h.name)
            current = held[0].value if held else "active"
            for s in ("active", "standby", "waking", "failed_wake"):
                self.metrics.set(
                    "host_power_state", 1.0 if s == current else 0.0, host=h.name, state=s
                )

    # -- verification ---------------------------------------------------------------------------
    async def _verify(
        self, snap: ClusterSnapshot, policy: Policy, now: float, report: PowerReport
    ) -> None:
        agents = self.agent_states() if self.agent_states is not None else None
        for host, (state, since) in list(self.held.items()):
            # a standby host switched on by someone else? Only a fresh agent makes us look.
            if state is HostState.STANDBY and (
                agents is None or agents.get(host, HostState.STALE) is HostState.STALE
            ):
                continue
            why = await self._back(host, policy, agents)
            if why is None:
                self._set(host, None, now)
                report.verified.append(host)
                if state is HostState.WAKING:
                    self.metrics.observe("power_wake_seconds", max(0.0, now - since))
                log.info("host_back", host=host, was=state.value, after_s=round(now - since, 1))
                continue
            if state is HostState.WAKING and now - since > policy.energy.wake_timeout_s:
                self._set(host, HostState.FAILED_WAKE, since)
                report.failed_wake.append(host)
                self.metrics.inc("power_wake_failed_total", host=host)
                log.error(
                    "host_failed_wake",
                    host=host,
                    waited_s=round(now - since, 1),
                    timeout_s=policy.energy.wake_timeout_s,
                    reason=why,
                )

    async def _back(
        self, host: str, policy: Policy, agents: Mapping[str, HostState] | None
    ) -> str | None:
        """None when the host is verified back, else what is still missing."""
        d = self.driver(host, policy)
        if d is not None:
            try:
                state = await d.power_state(host)
            except PowerError as e:
                self.metrics.inc("power_errors_total", driver=driver_label(d), call="state")
                return f"power state: {e}"
            if state is PowerState.OFF:
                return "BMC says off"
        try:
            await self.hypervisor.domains(host)
        except HypervisorError as e:
            return f"libvirtd: {e}"
        if agents is not None and agents.get(host, HostState.STALE) is HostState.STALE:
            return "agent telemetry not fresh"
        return None

    # -- actions --------------------------------------------------------------------------------
    def _set(self, host: str, state: HostState | None, since: float) -> None:
        if state is None:
            self.held.pop(host, None)
        else:
            self.held[host] = (state, since)
        try:
            self.journal.set_power_host(host, state.value if state else None, since)
        except JournalError as e:
            log.error("power_state_not_journaled", host=host, error=str(e))

    def _gate(self, host: str, action: str, policy: Policy, report: PowerReport) -> str | None:
        """Why the action must not be sent (also counted and logged), else None."""
        reason: str | None = None
        if self.dry_run or policy.dry_run:
            reason = "dry_run"
        elif policy.mode is Mode.ADVISORY:
            reason = "advisory"
        else:
            limit = policy.energy.max_power_actions_per_hour
            try:
                recent = self.journal.power_actions(since=self.clock.now() - 3600.0)
            except JournalError:
                reason = "journal_unwritable"
            else:
                if len(recent) >= limit:
                    reason = "limit"
        if reason is not None:
            self._skip(host, action, reason, report)
        return reason

    def _skip(self, host: str, action: str, reason: str, report: PowerReport) -> None:
        report.skipped.append((host, action, reason))
        self.metrics.inc("power_actions_skipped_total", action=action, reason=reason)
        log.info("power_action_skipped", host=host, action=action, reason=reason)

    def _intent(self, host: str, action: str, d: PowerDriver, why: str) -> str | None:
        aid = uuid.uuid4().hex
        try:
            self.journal.record_power_intent(
                aid, host, action, driver_label(d), why, self.clock.now()
            )
        except JournalError as e:
            log.error("power_intent_not_journaled", host=host, action=action, error=str(e))
            return None
        return aid

    def _outcome(self, aid: str, state: str, detail: str | None = None) -> None:
        try:
            self.journal.record_power_outcome(aid, state, self.clock.now(), detail)
        except JournalError as e:
            log.error("power_outcome_not_journaled", action_id=aid, error=str(e))

    async def _power_on(self, host: str, policy: Policy, why: str, report: PowerReport) -> None:
        d = self.driver(host, policy)
        if d is None:
            self._skip(host, "on", "no_driver", report)
            return
        if self._gate(host, "on", policy, report) is not None:
            return
        aid = self._intent(host, "on", d, why)
        if aid is None:
            self._skip(host, "on", "journal_unwritable", report)
            return
        label = driver_label(d)
        try:
            await d.power_on(host)
        except PowerError as e:
            self._outcome(aid, "error", str(e))
            self.metrics.inc("power_actions_total", driver=label, action="on", result="error")
            self.metrics.inc("power_errors_total", driver=label, call="on")
            report.errors.append(str(e))
            log.error("power_on_failed", host=host, driver=label, error=str(e))
            return
        self._outcome(aid, "sent")
        self._set(host, HostState.WAKING, self.clock.now())
        self.metrics.inc("power_actions_total", driver=label, action="on", result="ok")
        report.woken.append(host)
        log.info("host_power_on", host=host, driver=label, reason=why)

    async def _power_off(self, host: str, policy: Policy, why: str, report: PowerReport) -> None:
        d = self.driver(host, policy)
        if d is None:
            self._skip(host, "off", "no_driver", report)
            return
        if self._gate(host, "off", policy, report) is not None:
            return
        if self.busy_hosts is not None and host in set(self.busy_hosts()):
            self._skip(host, "off", "vm_on_host", report)
            return
        try:
            doms = await self.hypervisor.domains(host)
        except HypervisorError as e:
            self._skip(host, "off", "hypervisor_unreachable", report)
            log.warning(
                "power_off_refused", host=host, reason="hypervisor_unreachable", error=str(e)
            )
            return
        guests = sorted(n for n, i in doms.items() if i.running or i.migrating)
        if guests:
            self._skip(host, "off", "vm_on_host", report)
            log.warning("power_off_refused", host=host, reason="vm_on_host", vms=guests[:10])
            return
        aid = self._intent(host, "off", d, why)
        if aid is None:
            self._skip(host, "off", "journal_unwritable", report)
            return
        label = driver_label(d)
        # STANDBY before the call: nothing is planned onto a host on its way down.
        self._set(host, HostState.STANDBY, self.clock.now())
        try:
            await d.power_off(host)
        except PowerError as e:
            self._set(host, None, self.clock.now())
            self._outcome(aid, "error", str(e))
            self.metrics.inc("power_actions_total", driver=label, action="off", result="error")
            self.metrics.inc("power_errors_total", driver=label, call="off")
            report.errors.append(str(e))
            log.error("power_off_failed", host=host, driver=label, error=str(e))
            return
        self._outcome(aid, "sent")
        self.metrics.inc("power_actions_total", driver=label, action="off", result="ok")
        report.switched_off.append(host)
        log.info("host_power_off", host=host, driver=label, reason=why)

    async def wake(self, host: str, policy: Policy, why: str = "operator") -> PowerReport:
        """Switch one standby (or failed-wake) host on now, through the same gates."""
        report = PowerReport()
        await self._power_on(host, policy, why, report)
        return report
