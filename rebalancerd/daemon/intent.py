"""Operator intent: hosts drained through the control API and VMs asked to move back home.

``apply_intent`` is a pure overlay over a telemetry snapshot (drained hosts in maintenance, soft
pins bringing VMs home after an undrain --move-back). ``DrainFile`` keeps the intent in
``<state_dir>/drained.json`` so that it survives a restart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from rebalancerd.domain.model import ClusterRules, ClusterSnapshot, HostState, Pin
from rebalancerd.execution.precheck import StatesOverlay

log = structlog.get_logger("rebalancerd.daemon")

DRAINED_FILE = "drained.json"
MOVE_BACK_TTL_S = 3600.0
"""How long after an undrain --move-back the planner is asked to bring the VMs home."""
MOVE_BACK_WEIGHT = 50.0


@dataclass
class Drain:
    since: float
    vms: dict[str, str] = field(default_factory=dict)
    """VM -> host it ran on when the drain was requested (for undrain --move-back)."""


@dataclass
class MoveBack:
    home: str
    until: float


@dataclass
class Intent:
    """What the operator asked for; changed by the control API, persisted by `DrainFile`."""

    drained: dict[str, Drain] = field(default_factory=dict)
    """Host -> its drain."""
    move_back: dict[str, MoveBack] = field(default_factory=dict)
    """VM -> where to bring it back and until when."""


def apply_intent(snap: ClusterSnapshot, intent: Intent, now: float) -> ClusterSnapshot:
    """The telemetry snapshot with operator intent applied: drained hosts in maintenance
    (a stale host stays stale), soft pins bringing VMs home after an undrain --move-back (until
    `now` passes their deadline, or once they are home)."""
    if intent.drained:
        states = {
            h.name: HostState.MAINTENANCE
            for h in snap.hosts
            if h.name in intent.drained and h.state is not HostState.STALE
        }
        if states:
            snap = snap.with_host_states(states)
    if intent.move_back:
        present = snap.vm_map()
        hosts = snap.host_map()
        pins = []
        for vm, mb in intent.move_back.items():
            v = present.get(vm)
            h = hosts.get(mb.home)
            if v is None or h is None or mb.until < now or v.host == mb.home:
                continue
            pins.append(Pin(vm, frozenset({mb.home}), hard=False, weight=MOVE_BACK_WEIGHT))
        if pins:
            snap = snap.with_rules(snap.rules.merged(ClusterRules(pins=tuple(pins))))
    return snap


def intent_host_states(states: Mapping[str, HostState], intent: Intent) -> Mapping[str, HostState]:
    """Host states with the operator's drains applied, as `apply_intent` applies them to a
    snapshot (a drained host is in maintenance; a stale one stays stale), without copying the
    states of the other hosts: what the executor's pre-checks read, O(1) per host."""
    drained = {
        h: HostState.MAINTENANCE
        for h in intent.drained
        if h in states and states[h] is not HostState.STALE
    }
    return StatesOverlay(drained, states) if drained else states


def finished_move_backs(intent: Intent, where: Mapping[str, str], now: float) -> list[str]:
    """The VMs whose move-back is over: past its deadline, or home (`where`: VM -> host)."""
    return [vm for vm, mb in intent.move_back.items() if mb.until < now or where.get(vm) == mb.home]


class DrainFile:
    """``<state_dir>/drained.json``: the operator's intent across restarts."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / DRAINED_FILE

    def load(self) -> tuple[Intent, bool]:
        """The intent saved last, and whether it was read whole. A missing file is an empty
        intent; an unreadable or invalid one is logged and keeps what was read before the
        problem."""
        intent = Intent()
        p = self.path
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            return intent, False
        except (OSError, ValueError) as e:
            log.error("drain_state_unreadable", path=str(p), error=str(e))
            return intent, False
        try:
            for host, d in doc.get("drained", {}).items():
                intent.drained[str(host)] = Drain(float(d["since"]), dict(d.get("vms", {})))
            for vm, mb in doc.get("move_back", {}).items():
                intent.move_back[str(vm)] = MoveBack(str(mb["home"]), float(mb["until"]))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            log.error("drain_state_invalid", path=str(p), error=str(e))
            return intent, False
        if intent.drained:
            log.info("drains_restored", hosts=sorted(intent.drained))
        return intent, True

    def save(self, intent: Intent) -> str | None:
        """Persist the intent (atomically); returns an error text if it could not be saved."""
        p = self.path
        doc = {
            "drained": {h: {"since": d.since, "vms": d.vms} for h, d in intent.drained.items()},
            "move_back": {
                v: {"home": m.home, "until": m.until} for v, m in intent.move_back.items()
            },
        }
        tmp = p.with_name(p.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, p)
        except OSError as e:
            log.error("drain_state_not_saved", path=str(p), error=e.strerror or str(e))
            return f"not persisted ({e.strerror or e}): it will not survive a restart"
        return None
