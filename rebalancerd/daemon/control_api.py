"""The control socket's commands (ping, status, drain, undrain, snapshot, reload) and the status
document they serve.

Drains and move-backs change the operator's intent (``daemon/intent.py``), are saved to
``drained.json`` at once and wake the loop.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from rebalancerd import __version__
from rebalancerd.control.protocol import json_safe
from rebalancerd.control.server import ControlRequestError, Handler
from rebalancerd.daemon.config import DaemonConfig
from rebalancerd.daemon.intent import MOVE_BACK_TTL_S, Drain, MoveBack, apply_intent
from rebalancerd.daemon.wiring import Parts
from rebalancerd.domain.load import host_loads
from rebalancerd.domain.model import HostState
from rebalancerd.snapshot import to_dict as snapshot_to_dict

log = structlog.get_logger("rebalancerd.daemon")


class DaemonView(Protocol):
    """What the control API reads of the running daemon."""

    @property
    def parts(self) -> Parts: ...

    @property
    def cfg(self) -> DaemonConfig: ...

    @property
    def phase(self) -> str: ...

    @property
    def started_at(self) -> float: ...

    @property
    def reconcile_report(self) -> dict[str, Any] | None: ...

    @property
    def last_reload(self) -> dict[str, Any]: ...

    @property
    def decisions(self) -> deque[dict[str, Any]]: ...

    def health(self) -> tuple[bool, str]: ...

    async def reload(self) -> dict[str, Any]: ...


def finite(x: float) -> float | None:
    return round(x, 3) if math.isfinite(x) else None


class ControlApi:
    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon

    def handlers(self) -> Mapping[str, Handler]:
        return {
            "ping": self.ping,
            "status": self.status,
            "drain": self.drain,
            "undrain": self.undrain,
            "snapshot": self.snapshot,
            "reload": self.reload,
        }

    async def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    async def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.daemon.reload()

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        return status_document(self.daemon)

    async def snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        parts = self.daemon.parts
        return {
            "snapshot": snapshot_to_dict(parts.operator_view()),
            "data_age_s": finite(parts.telemetry.data_age_s()),
        }

    def _host_arg(self, args: dict[str, Any]) -> str:
        host = args.get("host")
        if not isinstance(host, str) or not host:
            raise ControlRequestError("missing host name")
        names = {h.name for h in self.daemon.parts.telemetry.current().hosts}
        if host not in names:
            raise ControlRequestError(f"unknown host {host[:100]!r}: not in the inventory")
        return host

    async def drain(self, args: dict[str, Any]) -> dict[str, Any]:
        parts = self.daemon.parts
        intent = parts.intent
        host = self._host_arg(args)
        if host in intent.drained:
            return {"host": host, "drained": True, "already": True}
        snap = parts.telemetry.current()
        view = apply_intent(snap, intent, parts.clock.now())
        others = [h for h in view.hosts if h.name != host and h.state is HostState.ACTIVE]
        if not others:
            raise ControlRequestError(f"refusing to drain {host}: no other active host")
        vms = {v.name: host for v in snap.vms if v.host == host}
        intent.drained[host] = Drain(parts.clock.now(), vms)
        for vm in vms:
            intent.move_back.pop(vm, None)
        warning = parts.drain_file.save(intent)
        parts.metrics.set("drained_hosts", len(intent.drained))
        log.info("host_drain_requested", host=host, vms=len(vms))
        parts.loop.wake()
        out: dict[str, Any] = {"host": host, "drained": True, "vms": sorted(vms)}
        if warning:
            out["warning"] = warning
        return out

    async def undrain(self, args: dict[str, Any]) -> dict[str, Any]:
        parts = self.daemon.parts
        intent = parts.intent
        host = self._host_arg(args)
        move_back = bool(args.get("move_back", False))
        d = intent.drained.pop(host, None)
        if d is None:
            return {"host": host, "drained": False, "already": True}
        homes: list[str] = []
        if move_back:
            until = parts.clock.now() + MOVE_BACK_TTL_S
            for vm in d.vms:
                intent.move_back[vm] = MoveBack(host, until)
                homes.append(vm)
        warning = parts.drain_file.save(intent)
        parts.metrics.set("drained_hosts", len(intent.drained))
        log.info("host_undrained", host=host, move_back=move_back, vms=len(homes))
        parts.loop.wake()
        out: dict[str, Any] = {"host": host, "drained": False, "move_back": sorted(homes)}
        if warning:
            out["warning"] = warning
        return out


def status_document(daemon: DaemonView) -> dict[str, Any]:
    """What `rebalancerd status` shows: the daemon, telemetry, policy, hosts, drains, the plan in
    force, the migrations in flight and the last decisions."""
    parts = daemon.parts
    clock = parts.clock
    snap = parts.operator_view()
    loads = host_loads(snap)
    hosts = []
    for h in snap.hosts:
        hl = loads.get(h.name)
        hosts.append(
            {
                "name": h.name,
                "state": h.state.value,
                "drained": h.name in parts.intent.drained,
                "vms": hl.vms if hl else 0,
                "cpu_load": round(hl.cpu, 4) if hl else None,
                "memory_load": round(hl.memory, 4) if hl else None,
            }
        )
    flights = []
    for f in parts.executor.in_flight():
        p = f.progress
        item: dict[str, Any] = {
            "migration_id": f.migration_id,
            "vm": f.vm,
            "source": f.source,
            "target": f.target,
            "elapsed_s": round(clock.now() - f.started, 1),
            "strategy": f.settings.strategy if f.settings else None,
            "state": f.state,
        }
        if f.detail:
            item["detail"] = f.detail
        if p is not None and p.data_total_mib > 0:
            done = 1.0 - p.data_remaining_mib / p.data_total_mib
            item["progress"] = round(min(max(done, 0.0), 1.0), 3)
            item["remaining_mib"] = round(p.data_remaining_mib, 1)
            item["iteration"] = p.iteration
        flights.append(item)
    policy = parts.store.current()
    plan = parts.loop.current_plan
    journal_error = parts.journal_error or parts.journal.probe_error()
    healthy, health = daemon.health()
    doc: dict[str, Any] = {
        "daemon": {
            "version": __version__,
            "pid": os.getpid(),
            "phase": daemon.phase,
            "started_at": daemon.started_at,
            "uptime_s": round(time.time() - daemon.started_at, 1),
            "simulate": daemon.cfg.simulate,
            "dry_run": daemon.cfg.dry_run,
            "healthy": healthy,
            "health": health,
            "journal_writable": journal_error is None,
            "journal_error": journal_error,
            "cycles": parts.loop.state.cycles,
            "reconcile": daemon.reconcile_report,
        },
        "telemetry": {"data_age_s": finite(parts.telemetry.data_age_s())},
        "policy": {
            "name": policy.name,
            "mode": policy.mode.value,
            "dry_run": policy.dry_run,
            "last_reload": daemon.last_reload,
            "policy": policy.model_dump(mode="json"),
        },
        "hosts": hosts,
        "drained": {
            h: {"since": d.since, "vms": len(d.vms)} for h, d in parts.intent.drained.items()
        },
        "plan": (plan.to_dict() | {"explain": plan.explain()}) if plan is not None else None,
        "in_flight": flights,
        "dead_hosts": parts.executor.ha.report(),
        "power": parts.power.status(),
        "decisions": list(daemon.decisions),
    }
    # strict JSON whatever a value turned out to be (a NaN from a state file, a model...)
    safe: dict[str, Any] = json_safe(doc)
    return safe
