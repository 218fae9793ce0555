"""Shared parts of the daemon-level fault tests (issue 9): `rebalancerd run` as a subprocess
(tests/daemon/helpers.DaemonProc) against the libvirt lab, a real mosquitto and one real
`rebalancerd agent` per lab host; plus independent witnesses of what happened:

- `placement` / `assert_each_runs_once`: every lab host's libvirtd is asked where each VM runs
  (running, active, defined);
- `JournalReader`: the daemon's SQLite journal read directly (read-only) from its state dir;
- `LibvirtEvents`: lifecycle events from every lab host's libvirtd, recorded in the test process
  (a completed live migration is a STOPPED/MIGRATED event on the host it left).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.daemon.helpers import REBALANCERD, DaemonProc, wait_for
from tests.fixtures.lab import Lab

__all__ = [
    "REBALANCERD",
    "DaemonProc",
    "JournalReader",
    "LabAgents",
    "LibvirtEvents",
    "assert_each_runs_once",
    "lab_daemon",
    "placement",
    "started_moves",
    "wait_for",
]


# ---------------------------------------------------------------------------------------------
# agents


class LabAgents:
    """One `rebalancerd agent` subprocess per lab host; `pause`/`resume` make one go silent
    (SIGSTOP keeps its MQTT connection open: no Last Will, just no reports)."""

    def __init__(self, workdir: Path, lab: Lab, broker_url: str, interval_s: float = 1.0) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for h in lab.hosts:
            cfg = {
                "host": h.name,
                "interval_s": interval_s,
                "libvirt_uri": h.uri,
                "broker": {"url": broker_url, "client_id": f"fault-agent-{h.name}"},
            }
            path = workdir / f"agent-{h.name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            with (workdir / f"agent-{h.name}.log").open("ab") as log:
                self.procs[h.name] = subprocess.Popen(
                    [REBALANCERD, "agent", "--config", str(path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

    def pause(self, host: str) -> None:
        os.kill(self.procs[host].pid, signal.SIGSTOP)

    def resume(self, host: str) -> None:
        os.kill(self.procs[host].pid, signal.SIGCONT)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


# ---------------------------------------------------------------------------------------------
# the daemon


def lab_daemon(
    workdir: Path,
    lab: Lab,
    broker_url: str,
    policy: str,
    *,
    plan_s: float = 2.0,
    stale_after_s: float = 15.0,
    max_data_age_s: float = 30.0,
    wrapper: list[str] | None = None,
    **extra: Any,
) -> DaemonProc:
    """A `rebalancerd run` on the lab: inventory = the lab hosts, one policy file `main.yaml`."""
    (workdir / "policies").mkdir(parents=True, exist_ok=True)
    (workdir / "policies" / "main.yaml").write_text(policy)
    inventory = [
        {
            "name": h.name,
            "libvirt_uri": h.uri,
            "migration_uri": f"tcp://{h.ip}",
            "cores": 4,
            "memory_mib": 4096,
        }
        for h in lab.hosts
    ]
    cfg: dict[str, Any] = {
        "inventory": inventory,
        "broker": {"url": broker_url, "client_id": f"rebalancerd-fault-{os.getpid()}"},
        "intervals": {
            "plan_s": plan_s,
            "stale_after_s": stale_after_s,
            "max_data_age_s": max_data_age_s,
        },
        "planner": {"time_limit_s": 2.0},
        "shutdown_deadline_s": 30.0,
        **extra,
    }
    return DaemonProc(workdir, cfg, watchdog_usec=None, wrapper=wrapper)


def sees_vms(d: DaemonProc, n: int, active: int = 3) -> bool:
    """The daemon's model holds `n` VMs and `active` active hosts, on fresh telemetry."""
    st = d.status()
    return (
        sum(h["vms"] for h in st["hosts"]) == n
        and sum(1 for h in st["hosts"] if h["state"] == "active") == active
        and st["telemetry"]["data_age_s"] is not None
    )


def started_moves(d: DaemonProc, since: int = 0) -> list[dict[str, Any]]:
    """`migration_started` log events (after log event index `since`)."""
    return [e for e in d.log_events()[since:] if e.get("event") == "migration_started"]


def skipped_reasons(d: DaemonProc) -> set[str]:
    """Skip reasons of the executions in the recent decisions (control API status)."""
    return {
        r["reason"]
        for dec in d.status()["decisions"]
        for r in (dec.get("execution") or {}).get("skipped", [])
    }


# ---------------------------------------------------------------------------------------------
# where the VMs are: ask every libvirtd


@dataclass(frozen=True)
class Where:
    running: list[str]
    active: list[str]
    defined: list[str]


def placement(lab: Lab, vms: list[str]) -> dict[str, Where]:
    guests = {h.name: lab.guests(h.name) for h in lab.hosts}
    out = {}
    for vm in vms:
        out[vm] = Where(
            running=[h for h, g in guests.items() if g.get(vm, {}).get("running")],
            active=[h for h, g in guests.items() if g.get(vm, {}).get("active")],
            defined=[h for h, g in guests.items() if vm in g],
        )
    return out


def assert_each_runs_once(lab: Lab, vms: list[str]) -> dict[str, str]:
    """Every VM runs on exactly one lab host, is active nowhere else, and is defined
    (persistently) only there. Returns {vm: host}."""
    where = placement(lab, vms)
    for vm, w in where.items():
        assert len(w.running) == 1, f"{vm} runs on {w.running} (must be exactly one host)"
        assert w.active == w.running, f"{vm} active on {w.active}, running on {w.running}"
        assert w.defined == w.running, f"{vm} defined on {w.defined}, running on {w.running}"
        guests = lab.guests(w.running[0])
        assert guests[vm]["persistent"], f"{vm} is not persistent on {w.running[0]}"
    return {vm: w.running[0] for vm, w in where.items()}


def at_most_once(lab: Lab, vms: list[str]) -> None:
    """While things are in motion (the daemon killed mid-wave): never running twice."""
    for vm, w in placement(lab, vms).items():
        assert len(w.running) <= 1, f"{vm} runs on {w.running}"


# ---------------------------------------------------------------------------------------------
# the journal, read behind the daemon's back


_READ_MOVES = """
import json, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=5)
conn.row_factory = sqlite3.Row
print(json.dumps([dict(r) for r in conn.execute("SELECT * FROM moves ORDER BY started, id")]))
"""


class JournalReader:
    """The daemon's journal, opened read-only. `ns_pid`: read it inside that process's mount
    namespace (a daemon whose state directory is a mount only it can see)."""

    def __init__(self, state_dir: Path, ns_pid: int | None = None) -> None:
        self.path = state_dir / "journal.sqlite3"
        self.ns_pid = ns_pid

    def moves(self) -> list[dict[str, Any]]:
        if self.ns_pid is not None:
            r = subprocess.run(
                [
                    *("nsenter", "--target", str(self.ns_pid), "--mount", "--"),
                    *(sys.executable, "-c", _READ_MOVES, str(self.path)),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert r.returncode == 0, r.stderr
            rows: list[dict[str, Any]] = json.loads(r.stdout)
            return rows
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM moves ORDER BY started, id").fetchall()
            return [dict(r) for r in rows]
        finally:
            conn.close()

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.moves()}

    def succeeded_per_vm(self) -> Counter[str]:
        return Counter(m["vm"] for m in self.moves() if m["state"] == "succeeded")


# ---------------------------------------------------------------------------------------------
# libvirt lifecycle events, recorded in the test process


@dataclass(frozen=True)
class LifecycleEvent:
    host: str
    vm: str
    event: int
    detail: int
    at: float


class LibvirtEvents:
    """Records domain lifecycle events from every lab host (own connections, the adapter's
    process-wide libvirt event loop thread)."""

    def __init__(self, lab: Lab) -> None:
        import libvirt

        from rebalancerd.adapters.libvirt_events import ensure_event_loop

        ensure_event_loop()
        self._lv = libvirt
        self.events: list[LifecycleEvent] = []
        self._lock = threading.Lock()
        self._conns: list[tuple[Any, int]] = []
        for h in lab.hosts:
            conn = libvirt.open(h.uri)
            conn.setKeepAlive(2, 5)
            cb_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._cb, h.name
            )
            self._conns.append((conn, cb_id))

    def _cb(self, _conn: Any, dom: Any, event: int, detail: int, host: str) -> None:
        with self._lock:
            self.events.append(LifecycleEvent(host, dom.name(), event, detail, time.time()))

    def snapshot(self) -> list[LifecycleEvent]:
        with self._lock:
            return list(self.events)

    def departures(self) -> Counter[str]:
        """Completed outgoing live migrations per VM: STOPPED/MIGRATED on the host it left."""
        lv = self._lv
        return Counter(
            e.vm
            for e in self.snapshot()
            if e.event == lv.VIR_DOMAIN_EVENT_STOPPED
            and e.detail == lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
        )

    def incoming(self) -> Counter[str]:
        """Incoming migration attempts per VM: STARTED/MIGRATED on a target (also the failed)."""
        lv = self._lv
        return Counter(
            e.vm
            for e in self.snapshot()
            if e.event == lv.VIR_DOMAIN_EVENT_STARTED
            and e.detail == lv.VIR_DOMAIN_EVENT_STARTED_MIGRATED
        )

    def close(self) -> None:
        for conn, cb_id in self._conns:
            with contextlib.suppress(Exception):
                conn.domainEventDeregisterAny(cb_id)
            with contextlib.suppress(Exception):
                conn.close()
        self._conns = []


def metric(d: DaemonProc, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist (yet)."""
    v = d.metric(name, **labels)
    return 0.0 if v is None else v


def wait_cycles(d: DaemonProc, n: int, timeout: float = 60) -> None:
    """Wait until the control loop has run `n` more cycles."""
    start = int(d.status()["daemon"]["cycles"])
    wait_for(lambda: d.status()["daemon"]["cycles"] >= start + n, timeout, f"{n} more cycles")
