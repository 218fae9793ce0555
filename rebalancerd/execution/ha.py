"""Dead hosts, through the executor: classify, fence, restart the HA VMs elsewhere exactly once.

Once per cycle the control loop calls `Executor.recover_dead_hosts` (this class's `cycle`):

1. *Remember.* Every VM of the (fresh) snapshot is remembered where it runs, in the journal
   (`vm_seen`), with the persistent definition of each HA VM (``DomainStarter.domain_xml``,
   fetched once per VM and host): a dead host's libvirt cannot be asked for it any more.
2. *Classify* (`domain/ha.py`). A host telemetry calls stale is probed through the Hypervisor
   port (``domains(host)``); ``policy.ha.dead_after_probes`` consecutive failures make it dead.
3. *Fence.* For a dead host with HA VMs: without a power driver, or in dry-run / advisory, it
   is only reported. Otherwise ``fence_requested`` is journaled, the driver powers the host off
   hard, its power state is polled until OFF (``fence_confirmed``) or the attempt fails
   (``fence_failed``, reason; retried next cycle). Nothing is restarted unless the state is OFF,
   asked again right before each start.
4. *Restart*, in priority order, at most ``limits.max_per_cycle`` per cycle: every other
   inventory host's libvirt is asked whether the VM runs anywhere (found -> ``restart_running``,
   no start); if a host that is not fenced does not answer, nothing starts (we could not tell).
   Then a target by the rules (`domain/ha.place_restarts`), confirmed with the target's own
   memory count, ``restart_started`` journaled, the definition started there, checked running
   (``restart_running``) or ``restart_failed``.

After a crash the incidents and their steps are read back from the journal; a VM whose
``restart_started`` has no outcome is looked for on every live host before anything else, so a
VM is never started twice. A host whose telemetry turns fresh again closes its incident
(``host_back``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from rebalancerd.domain.ha import Liveness, classify, place_restarts, restartable
from rebalancerd.domain.model import ClusterSnapshot, HostState, Vm
from rebalancerd.domain.rules import capacity_with_headroom
from rebalancerd.execution.journal import Journal, JournalError, SeenVm
from rebalancerd.policy.ha import ha_priority, restart_order
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.ports import (
    Clock,
    DomainStarter,
    Hypervisor,
    HypervisorError,
    MetricsSink,
    PowerDriver,
    PowerError,
    PowerState,
)

log = structlog.get_logger("rebalancerd.ha")

PROBE_TIMEOUT_S = 10.0
FENCE_POLLS = 5
FENCE_POLL_S = 2.0


@dataclass
class VmRecovery:
    vm: str
    priority: int | None
    state: str = "pending"
    """pending | starting | running | blocked | not_ha | local_disk"""
    target: str | None = None
    reason: str = ""


@dataclass
class DeadHost:
    host: str
    liveness: Liveness
    reason: str
    since: float
    incident: str
    fence: str = "not_requested"
    """not_requested | requested | confirmed | failed | unavailable"""
    fence_reason: str = ""
    vms: dict[str, VmRecovery] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "state": self.liveness.value,
            "reason": self.reason,
            "since": self.since,
            "incident": self.incident,
            "fence": self.fence,
            "fence_reason": self.fence_reason,
            "affected_vms": sorted(self.vms),
            "vms": [
                {
                    "vm": r.vm,
                    "ha": r.priority is not None,
                    "priority": r.priority,
                    "state": r.state,
                    "target": r.target,
                    "reason": r.reason,
                }
                for r in sorted(self.vms.values(), key=lambda r: r.vm)
            ],
        }


def _seen_vm(s: SeenVm) -> Vm:
    tags = frozenset(t for t in s.tags.split(",") if t)
    return Vm(
        s.vm,
        s.host,
        vcpus=max(1, s.vcpus),
        memory_mib=max(1, s.memory_mib),
        cpu_used_mc=max(0, s.cpu_mc),
        tags=tags,
        local_disk_mib=max(0, s.local_disk_mib),
    )


class HaRecovery:
    def __init__(
        self,
        hypervisor: Hypervisor,
        clock: Clock,
        metrics: MetricsSink,
        journal: Journal,
        *,
        power: Mapping[str, PowerDriver] | None = None,
        agent_status: Callable[[str], str] | None = None,
        fence_poll_s: float = FENCE_POLL_S,
    ) -> None:
        self.hypervisor = hypervisor
        self.clock = clock
        self.metrics = metrics
        self.journal = journal
        self.power = dict(power or {})
        self.agent_status = agent_status
        """host -> "offline" (Last Will seen) or "silent"; None = telemetry cannot tell."""
        self.fence_poll_s = fence_poll_s
        self._failed: dict[str, int] = {}
        self._hosts: dict[str, DeadHost] = {}
        self._seen: dict[str, SeenVm] = {}
        self._loaded = False

    # -- queries ---------------------------------------------------------------------------
    def report(self) -> list[dict[str, Any]]:
        """Stale and dead hosts with their affected VMs (for `status`)."""
        return [d.to_dict() for d in sorted(self._hosts.values(), key=lambda d: d.host)]

    # -- the cycle -------------------------------------------------------------------------
    async def cycle(
        self,
        snap: ClusterSnapshot,
        policy: Policy,
        states: Mapping[str, HostState],
        *,
        dry_run: bool,
    ) -> None:
        """One pass (see the module docstring). `snap`: the effective snapshot (VMs of fresh
        hosts); `states`: telemetry's host states."""
        try:
            self._load()
            await self._remember(snap, policy)
        except JournalError as e:
            log.error("journal_unwritable", error=str(e), where="ha")
            self.metrics.set("journal_writable", 0.0)
            return
        for host in states:
            if states[host] is not HostState.STALE:
                self._failed.pop(host, None)
                self._close(host)
                continue
            await self._probe(host, policy)
        act = not dry_run and not policy.dry_run and policy.mode is not Mode.ADVISORY
        budget = policy.limits.max_per_cycle
        for d in sorted(self._hosts.values(), key=lambda d: d.host):
            if d.liveness is Liveness.DEAD:
                budget = await self._recover(d, snap, policy, act=act, budget=budget)
        self._export()

    # -- remembering -----------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._seen = {s.vm: s for s in self.journal.seen()}
        self._loaded = True

    async def _remember(self, snap: ClusterSnapshot, policy: Policy) -> None:
        states = {h.name: h.state for h in snap.hosts}
        rows: list[SeenVm] = []
        for v in snap.vms:
            if states.get(v.host) is HostState.STALE:
                continue
            old = self._seen.get(v.name)
            xml = old.xml if old is not None and old.host == v.host else None
            if xml is None and ha_priority(policy, v) is not None:
                xml = await self._definition(v.host, v.name)
            row = SeenVm(
                v.name,
                v.host,
                v.vcpus,
                v.memory_mib,
                v.cpu_used_mc,
                v.local_disk_mib,
                ",".join(sorted(v.tags)),
                xml,
            )
            if row != old:
                rows.append(row)
        self.journal.save_seen(rows, self.clock.now())
        for r in rows:
            self._seen[r.vm] = r

    async def _definition(self, host: str, vm: str) -> str | None:
        if not isinstance(self.hypervisor, DomainStarter):
            return None
        try:
            return await asyncio.wait_for(
                self.hypervisor.domain_xml(host, vm), timeout=PROBE_TIMEOUT_S
            )
        except (HypervisorError, TimeoutError) as e:
            log.warning("ha_definition_unavailable", vm=vm, host=host, error=str(e))
            return None

    # -- classification --------------------------------------------------------------------
    async def _probe(self, host: str, policy: Policy) -> None:
        try:
            await asyncio.wait_for(self.hypervisor.domains(host), timeout=PROBE_TIMEOUT_S)
            self._failed[host] = 0
        except (HypervisorError, TimeoutError):
            self._failed[host] = self._failed.get(host, 0) + 1
        power: str | None = None
        driver = self.power.get(host)
        if driver is not None:
            try:
                power = (await driver.power_state(host)).value
            except PowerError as e:
                power = f"error: {e}"
        agent = self.agent_status(host) if self.agent_status is not None else "silent"
        v = classify(
            host,
            agent=agent,
            failed_probes=self._failed[host],
            dead_after=policy.ha.dead_after_probes,
            power=power,
        )
        d = self._hosts.get(host)
        if d is None:
            d = self._hosts[host] = self._incident(host, v.liveness, v.reason)
        elif d.liveness is Liveness.DEAD and v.liveness is Liveness.STALE:
            # libvirtd answers again: not dead (any step already journaled stays)
            log.warning("host_no_longer_dead", host=host, reason=v.reason)
        if d.liveness is not v.liveness and v.liveness is Liveness.DEAD:
            log.error("host_dead", host=host, reason=v.reason, vms=sorted(d.vms))
        d.liveness, d.reason = v.liveness, v.reason
        self._affected(d, policy)

    def _incident(self, host: str, liveness: Liveness, reason: str) -> DeadHost:
        """The host's open incident from the journal (after a restart), or a new one."""
        now = self.clock.now()
        incident, since = f"{host}@{now:.0f}", now
        steps = [s for s in self.journal.ha_steps() if s.host == host]
        if steps and steps[-1].step != "host_back":
            incident = steps[-1].incident
            since = min(s.at for s in steps if s.incident == incident)
        d = DeadHost(host, liveness, reason, since, incident)
        for s in steps:
            if s.incident != incident:
                continue
            if s.step == "fence_confirmed":
                d.fence = "confirmed"
            elif s.step in ("fence_requested", "fence_failed") and d.fence != "confirmed":
                d.fence = "requested" if s.step == "fence_requested" else "failed"
                d.fence_reason = s.detail or ""
            elif s.vm is not None:
                r = d.vms.setdefault(s.vm, VmRecovery(s.vm, None))
                r.target = s.target
                r.state = {"restart_started": "starting", "restart_running": "running"}.get(
                    s.step, "pending"
                )
                r.reason = s.detail or ""
        return d

    def _affected(self, d: DeadHost, policy: Policy) -> None:
        for s in self._seen.values():
            if s.host != d.host:
                continue
            vm = _seen_vm(s)
            prio = ha_priority(policy, vm)
            r = d.vms.setdefault(s.vm, VmRecovery(s.vm, prio))
            r.priority = prio
            if r.state in ("running", "starting"):
                continue
            if prio is None:
                r.state, r.reason = "not_ha", "not in an HA group: reported only"
            elif (why := restartable(vm)) is not None:
                r.state, r.reason = "local_disk", why
            elif r.state in ("not_ha", "local_disk"):
                r.state, r.reason = "pending", ""

    def _close(self, host: str) -> None:
        d = self._hosts.pop(host, None)
        if d is None:
            return
        log.info("host_back", host=host, incident=d.incident)
        if d.fence != "not_requested" or any(r.state != "not_ha" for r in d.vms.values()):
            try:
                self.journal.record_ha_step(d.incident, host, "host_back", self.clock.now())
            except JournalError as e:
                log.error("journal_unwritable", error=str(e), where="ha")
        self.metrics.set("host_dead", 0.0, host=host)
        self.metrics.set("dead_host_vms", 0.0, host=host)
        self.metrics.set("ha_vms_pending", 0.0, host=host)

    # -- fencing ---------------------------------------------------------------------------
    async def _power_off_confirmed(self, d: DeadHost) -> bool:
        driver = self.power.get(d.host)
        if driver is None:
            return False
        try:
            return await driver.power_state(d.host) is PowerState.OFF
        except PowerError:
            return False

    async def _fence(self, d: DeadHost) -> bool:
        """True once the host is confirmed off (journaled)."""
        if d.fence == "confirmed":
            if await self._power_off_confirmed(d):
                return True
            d.fence, d.fence_reason = "failed", "power state no longer OFF"
        driver = self.power.get(d.host)
        if driver is None:
            d.fence, d.fence_reason = "unavailable", "no power driver: fencing cannot be confirmed"
            self.metrics.inc("fence_actions_total", result="unavailable")
            return False
        now = self.clock.now()
        self.journal.record_ha_step(d.incident, d.host, "fence_requested", now)
        d.fence = "requested"
        log.warning("fence_requested", host=d.host, incident=d.incident)
        why = "power state never OFF"
        try:
            await driver.power_off(d.host, hard=True)
            for _ in range(FENCE_POLLS):
                state = await driver.power_state(d.host)
                if state is PowerState.OFF:
                    break
                why = f"power state {state.value} after hard off"
                await self.clock.sleep(self.fence_poll_s)
            else:
                state = None
        except PowerError as e:
            state, why = None, f"power driver: {e}"
        if state is PowerState.OFF:
            self.journal.record_ha_step(d.incident, d.host, "fence_confirmed", self.clock.now())
            d.fence, d.fence_reason = "confirmed", ""
            self.metrics.inc("fence_actions_total", result="confirmed")
            log.warning("fence_confirmed", host=d.host, incident=d.incident)
            return True
        self.journal.record_ha_step(
            d.incident, d.host, "fence_failed", self.clock.now(), detail=why
        )
        d.fence, d.fence_reason = "failed", why
        self.metrics.inc("fence_actions_total", result="failed")
        log.error("fence_failed", host=d.host, incident=d.incident, reason=why)
        return False

    # -- restarting ------------------------------------------------------------------------
    async def _recover(
        self, d: DeadHost, snap: ClusterSnapshot, policy: Policy, *, act: bool, budget: int
    ) -> int:
        todo = [
            r
            for r in d.vms.values()
            if r.priority is not None and r.state in ("pending", "blocked", "starting")
        ]
        if not todo:
            return budget
        if not act:
            for r in todo:
                if r.state != "starting":
                    r.state, r.reason = "blocked", "dry_run/advisory: would fence and restart"
            return budget
        if not await self._fence(d):
            for r in todo:
                if r.state != "starting":
                    r.state = "blocked"
                    r.reason = f"not fenced: {d.fence_reason}"
            return budget
        # resolve restarts a crash interrupted, and anything already running elsewhere
        where = await self._where_running(d, snap)
        if where is None:
            for r in todo:
                r.state, r.reason = "blocked", "a live host did not answer: cannot rule out a copy"
            return budget
        pending: list[VmRecovery] = []
        for r in todo:
            host = where.get(r.vm)
            if host is not None:
                self._running(d, r, host, "found running")
            elif r.vm in self._seen and self._seen[r.vm].xml:
                pending.append(r)
            else:
                r.state, r.reason = "blocked", "no stored definition"
        if not pending or budget <= 0:
            return budget
        order = restart_order(policy, [_seen_vm(self._seen[r.vm]) for r in pending])
        dead = frozenset(h for h, x in self._hosts.items() if x.liveness is Liveness.DEAD)
        extra: dict[str, tuple[int, int]] = {}
        for x in self._hosts.values():
            for r in x.vms.values():
                if r.state == "running" and r.target and r.vm not in snap.vm_map():
                    s = self._seen.get(r.vm)
                    if s is not None:
                        c, m = extra.get(r.target, (0, 0))
                        extra[r.target] = (c + s.cpu_mc, m + s.memory_mib)
        choices = place_restarts(
            snap,
            [v for v, _ in order],
            headroom=policy.targets.headroom,
            exclude_hosts=dead,
            extra_load=extra,
        )
        for ch in choices:
            r = d.vms[ch.vm]
            if ch.target is None:
                r.state, r.reason = "blocked", ch.reason
                continue
            if budget <= 0:
                r.state, r.reason = "blocked", "max_per_cycle: next cycle"
                continue
            if not await self._power_off_confirmed(d):  # asked again right before each start
                r.state, r.reason = "blocked", "power state no longer OFF"
                d.fence = "failed"
                break
            budget -= 1
            await self._start(d, r, ch.target, snap, policy)
        return budget

    async def _where_running(self, d: DeadHost, snap: ClusterSnapshot) -> dict[str, str] | None:
        """VM -> a live host running it (asked of every inventory host not fenced off), or None
        when such a host does not answer."""
        out: dict[str, str] = {}
        fenced = {h for h, x in self._hosts.items() if x.fence == "confirmed"}
        for h in snap.hosts:
            if h.name in fenced:
                continue
            try:
                doms = await asyncio.wait_for(
                    self.hypervisor.domains(h.name), timeout=PROBE_TIMEOUT_S
                )
            except (HypervisorError, TimeoutError) as e:
                log.warning("ha_host_unanswered", host=h.name, dead_host=d.host, error=str(e))
                return None
            for name, info in doms.items():
                if info.running:
                    out[name] = h.name
        return out

    def _running(self, d: DeadHost, r: VmRecovery, host: str, how: str) -> None:
        self.journal.record_ha_step(
            d.incident,
            d.host,
            "restart_running",
            self.clock.now(),
            vm=r.vm,
            target=host,
            detail=how,
        )
        r.state, r.target, r.reason = "running", host, how
        self.metrics.inc("ha_restarts_total", result="running")
        log.info("ha_vm_running", vm=r.vm, host=host, dead_host=d.host, how=how)

    async def _start(
        self, d: DeadHost, r: VmRecovery, target: str, snap: ClusterSnapshot, policy: Policy
    ) -> None:
        s = self._seen[r.vm]
        assert s.xml is not None
        hv = self.hypervisor
        if not isinstance(hv, DomainStarter):
            r.state, r.reason = "blocked", "hypervisor cannot start domains"
            return
        try:  # the target's own count of memory (telemetry may lag)
            facts = await hv.host_facts(target)
        except HypervisorError as e:
            r.state, r.reason = "blocked", f"target {target}: {e}"
            return
        cap = capacity_with_headroom(snap.host(target).memory_mib, policy.targets.headroom)
        if sum(facts.domain_memory_mib.values()) + s.memory_mib > cap:
            r.state, r.reason = "blocked", f"target {target} full by libvirt's count"
            return
        self.journal.record_ha_step(
            d.incident, d.host, "restart_started", self.clock.now(), vm=r.vm, target=target
        )
        r.state, r.target = "starting", target
        log.warning("ha_restart_started", vm=r.vm, target=target, dead_host=d.host)
        try:
            await hv.start_domain(target, s.xml)
            doms = await hv.domains(target)
        except HypervisorError as e:
            self.journal.record_ha_step(
                d.incident,
                d.host,
                "restart_failed",
                self.clock.now(),
                vm=r.vm,
                target=target,
                detail=str(e),
            )
            r.state, r.reason = "pending", f"start failed: {e}"
            self.metrics.inc("ha_restarts_total", result="failed")
            log.error("ha_restart_failed", vm=r.vm, target=target, error=str(e))
            return
        info = doms.get(r.vm)
        if info is not None and info.running:
            self._running(d, r, target, "restarted")
        else:
            r.reason = "started, not yet seen running"

    def _export(self) -> None:
        for d in self._hosts.values():
            self.metrics.set("host_dead", 1.0 if d.liveness is Liveness.DEAD else 0.0, host=d.host)
            self.metrics.set("dead_host_vms", float(len(d.vms)), host=d.host)
            pending = sum(
                1
                for r in d.vms.values()
                if r.priority is not None and r.state not in ("running", "local_disk")
            )
            self.metrics.set("ha_vms_pending", float(pending), host=d.host)
