"""Operator intent: hosts drained through the control API and VMs asked to move back home.

``apply_intent`` is a pure overlay over a telemetry snapshot (drained hosts in maintenance, soft
pins bringing VMs home after an undrain --move-back). ``DrainFile`` keeps the intent in
``<state_dir>/drained.json`` so that it survives a restart.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from rebalancerd.domain.model import ClusterRules, ClusterSnapshot, HostState, Pin
from rebalancerd.execution.precheck import StatesOverlay
from rebalancerd.files import InputFileError, read_bounded
from rebalancerd.ports import MetricsSink

log = structlog.get_logger("rebalancerd.daemon")

DRAINED_FILE = "drained.json"
MOVE_BACK_TTL_S = 3600.0
"""How long after an undrain --move-back the planner is asked to bring the VMs home."""
MOVE_BACK_WEIGHT = 50.0
MAX_DRAINED_BYTES = 16 * 1024 * 1024


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


def _finite_time(raw: object, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"{what}: not a number")
    t = float(raw)
    if not math.isfinite(t):
        raise ValueError(f"{what}: not finite")
    return t


def _drain_entry(raw: object) -> Drain:
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    vms = raw.get("vms", {})
    if not isinstance(vms, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in vms.items()
    ):
        raise ValueError("vms: not an object of VM name -> host name")
    return Drain(_finite_time(raw.get("since"), "since"), dict(vms))


def _move_back_entry(raw: object) -> MoveBack:
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    home = raw.get("home")
    if not isinstance(home, str) or not home:
        raise ValueError("home: not a host name")
    return MoveBack(home, _finite_time(raw.get("until"), "until"))


def finished_move_backs(intent: Intent, where: Mapping[str, str], now: float) -> list[str]:
    """The VMs whose move-back is over: past its deadline, or home (`where`: VM -> host)."""
    return [vm for vm, mb in intent.move_back.items() if mb.until < now or where.get(vm) == mb.home]


class DrainFile:
    """``<state_dir>/drained.json``: the operator's intent across restarts."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / DRAINED_FILE

    def load(self, metrics: MetricsSink | None = None) -> tuple[Intent, bool]:
        """The intent saved last, and whether it was read whole. A missing file is an empty
        intent; an unreadable one is logged (``drain_state_unreadable``) and empty; an entry that
        is not valid (a non-finite or non-number time, a non-string host...) is dropped with a log
        line (``drain_state_entry_dropped``) and counted in ``drain_state_entries_dropped_total``,
        and the valid entries are kept."""
        intent = Intent()
        p = self.path
        try:
            doc = json.loads(read_bounded(p, MAX_DRAINED_BYTES, regular_only=True))
        except InputFileError as e:
            if not p.exists() and not p.is_symlink():
                return intent, False
            log.error("drain_state_unreadable", path=str(p), error=str(e))
            return intent, False
        except ValueError as e:
            log.error("drain_state_unreadable", path=str(p), error=f"not JSON: {e}")
            return intent, False
        whole = True
        if not isinstance(doc, dict):
            log.error("drain_state_unreadable", path=str(p), error="top level is not an object")
            return intent, False

        def dropped(section: str, key: object, why: str) -> None:
            nonlocal whole
            whole = False
            log.error(
                "drain_state_entry_dropped",
                path=str(p),
                section=section,
                key=str(key)[:200],
                error=why,
            )
            if metrics is not None:
                metrics.inc("drain_state_entries_dropped_total", section=section)

        def entries(section: str) -> dict[str, object]:
            found = doc.get(section, {})
            if isinstance(found, dict):
                return found
            dropped(section, section, "not an object")
            return {}

        for host, raw in entries("drained").items():
            try:
                intent.drained[host] = _drain_entry(raw)
            except ValueError as e:
                dropped("drained", host, str(e))
        for vm, raw in entries("move_back").items():
            try:
                intent.move_back[vm] = _move_back_entry(raw)
            except ValueError as e:
                dropped("move_back", vm, str(e))
        if intent.drained:
            log.info("drains_restored", hosts=sorted(intent.drained))
        return intent, whole

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
