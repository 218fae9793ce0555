"""Issue 9 fault: the daemon dies in the middle of a migration wave and is restarted.

`rebalancerd run` drains lab host h1, two moves at a time: a memory-dirtying guest that cannot
converge under its class's 16 MiB/s cap and an idle guest move side by side. The daemon is
frozen (SIGSTOP, as a hung process) right after it started the idle guest's move, libvirtd
finishes that move while the daemon cannot record it, and the daemon is SIGKILLed (as systemd's
watchdog would).

After the restart its journal holds two open intents and reconcile must resolve them against
libvirt without migrating anything itself: the idle move is found done and recorded as
succeeded; the dirty move, still running in libvirtd past its time budget, is awaited, then
aborted, and the guest keeps running on its source. Two more idle guests, started on the drained
host while the daemon was dead, are drained after the restart. Witnesses: every libvirtd
(placement), the journal file, libvirt lifecycle events, /metrics and the JSON log.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.helpers import (
    JournalReader,
    LabAgents,
    LibvirtEvents,
    assert_each_runs_once,
    at_most_once,
    lab_daemon,
    metric,
    placement,
    sees_vms,
    started_moves,
    wait_for,
)

pytestmark = [pytest.mark.lab, pytest.mark.fault, pytest.mark.mqtt]

HOT = "crash-hot"
IDLE = ["crash-idle0", "crash-idle1", "crash-idle2"]
HOT_BUDGET_S = 12.0
"""Longer than the daemon stays frozen: its adapter must not abort the move before the kill."""

POLICY = f"""\
apiVersion: rebalancerd/v1
kind: Policy
name: crash-test
mode: drain
limits:
  cooldown_s: 3600        # a VM is attempted at most once in this test
  max_concurrent: 2
  max_per_source: 2
  max_per_target: 2
migration:
  default:
    time_budget_s: 60
  classes:
    - name: hot
      vms: ["{HOT}"]
      settings:
        bandwidth_mib_s: 16
        max_downtime_ms: 50
        auto_converge: false
        time_budget_s: {HOT_BUDGET_S}
"""


def _source_job_active(lab: Any, host: str, vm: str) -> bool:
    """libvirt has a migration job of `vm` on `host` (asked on our own connection)."""
    import libvirt

    conn = libvirt.open(lab.host(host).uri)
    try:
        dom = conn.lookupByName(vm)
        return bool(dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE)
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def _under_way(lab: Any, vm: str, source: str, target: str) -> bool:
    w = placement(lab, [vm])[vm]
    return target in w.active or _source_job_active(lab, source, vm)


def test_daemon_sigkilled_mid_wave_reconciles_and_never_migrates_twice(
    lab: Any, mosquitto_broker: Any, workdir: Path
) -> None:
    h1, h2, h3 = (h.name for h in lab.hosts[:3])
    vms = [HOT, *IDLE]
    lab.define_guest(h1, HOT, 128, dirty=True)
    lab.define_guest(h1, IDLE[0], 64)  # the wave: exactly these two, side by side
    lab.wait_dirtying(h1, HOT, timeout=90)  # SeaBIOS is slow on a loaded machine
    events = LibvirtEvents(lab)
    agents = LabAgents(workdir, lab, mosquitto_broker.url)
    d = lab_daemon(workdir, lab, mosquitto_broker.url, POLICY)
    journal = JournalReader(workdir / "state")
    d.start()
    try:
        d.wait_ready()
        wait_for(lambda: sees_vms(d, 2), 60, "telemetry from all agents")

        # -- the wave: h1 drained, the dirty guest and an idle one move side by side --------
        d.control("drain", host=h1)

        def both_started() -> list[dict[str, Any]] | None:
            st = started_moves(d)
            hot = [e for e in st if e["vm"] == HOT]
            idle = [e for e in st if e["vm"] in IDLE]
            return [hot[0], idle[0]] if hot and idle else None

        hot_start, idle_start = wait_for(both_started, 60, "the first step started", 0.01)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGSTOP)  # hung: libvirtd goes on, the daemon records nothing
        assert not d.events("wave_done"), "the dirty and an idle guest must be in one step"
        idle_vm, idle_target = idle_start["vm"], idle_start["target"]
        assert idle_target in (h2, h3), idle_start
        # the log lines come right before the adapter's worker threads call libvirt: let the
        # daemon run in 10 ms slices until libvirtd has both migrations under way
        for _ in range(500):
            if _under_way(lab, idle_vm, h1, idle_target) and _source_job_active(lab, h1, HOT):
                break
            d.proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
            d.proc.send_signal(signal.SIGSTOP)
        wait_for(
            lambda: placement(lab, [idle_vm])[idle_vm].running == [idle_target],
            30,
            f"libvirtd finishing {idle_vm} -> {idle_target} while the daemon is frozen",
            interval=0.1,
        )
        assert _source_job_active(lab, h1, HOT), (
            "the dirty move should still be running: "
            f"{placement(lab, [HOT])}, {[e for e in d.log_events() if e.get('vm') == HOT]}"
        )
        d.proc.send_signal(signal.SIGKILL)
        assert d.wait_exit(30) == -signal.SIGKILL
        killed_at = len(d.log_events())

        # -- while it is dead: intents are on disk, nothing runs twice ---------------------
        at_most_once(lab, vms[:2])
        for vm in IDLE[1:]:  # more guests land on the drained host meanwhile
            lab.define_guest(h1, vm, 64)
        rows = journal.by_id()
        for start in (hot_start, idle_start):
            assert rows[start["migration_id"]]["state"] == "intent", rows
        assert len(rows) == 2, rows
        assert placement(lab, [HOT])[HOT].running == [h1]

        # -- restart: reconcile before any planning ----------------------------------------
        d.start()
        d.wait_ready()
        wait_for(
            lambda: d.status()["daemon"]["reconcile"] is not None,
            HOT_BUDGET_S + 90,
            "reconcile finished",
            interval=0.5,
        )
        rec = d.status()["daemon"]["reconcile"]
        assert rec["succeeded"] == [idle_start["migration_id"]], rec
        assert rec["aborted"] == [hot_start["migration_id"]], rec
        assert rec["awaited"] == [hot_start["migration_id"]], rec
        assert not rec["lost"] and not rec["unresolved"] and not rec["failed"], rec

        # the drain finishes with the other idle guests; the dirty one stays on h1 (cooldown)
        wait_for(
            lambda: all(placement(lab, [vm])[vm].running in ([h2], [h3]) for vm in IDLE),
            90,
            f"the idle guests drained off {h1}",
            interval=0.5,
        )
        wait_for(lambda: not d.status()["in_flight"], 30, "no migration in flight")
        where = assert_each_runs_once(lab, vms)
        assert where[HOT] == h1, where

        # -- no migration ran twice --------------------------------------------------------
        after = d.log_events()[killed_at:]
        restarted = [e["vm"] for e in after if e.get("event") == "migration_started"]
        assert HOT not in restarted and idle_vm not in restarted, restarted
        assert sorted(restarted) == sorted(set(IDLE) - {idle_vm}), restarted
        moves = journal.moves()
        assert not [m for m in moves if m["state"] in ("intent", "unverified", "conflict")], moves
        per_vm = {vm: [m["state"] for m in moves if m["vm"] == vm] for vm in vms}
        assert per_vm[HOT] == ["aborted"], per_vm
        assert all(per_vm[vm] == ["succeeded"] for vm in IDLE), per_vm
        # each idle guest runs where its one succeeded journal row sent it
        assert {m["vm"]: m["target"] for m in moves if m["vm"] in IDLE} == {
            vm: where[vm] for vm in IDLE
        }
        rows = journal.by_id()
        assert rows[idle_start["migration_id"]]["detail"] == "reconciled: found on target"
        assert rows[hot_start["migration_id"]]["detail"] == "reconciled: guest still on source"
        # libvirt's own account: each idle guest left h1 exactly once, the dirty one never left
        departures = events.departures()
        assert {vm: departures[vm] for vm in vms} == {HOT: 0, **{vm: 1 for vm in IDLE}}, (
            events.snapshot()
        )

        # -- metrics and logs tell what happened --------------------------------------------
        assert metric(d, "rebalancerd_migrations_reconciled_total", result="succeeded") == 1
        assert metric(d, "rebalancerd_migrations_reconciled_total", result="aborted") == 1
        assert metric(d, "rebalancerd_vm_lost_total") == 0
        assert metric(d, "rebalancerd_migrations_started_total", reason="drain") == len(IDLE) - 1
        names = [e.get("event") for e in after]
        for name in ("reconcile_awaiting", "reconcile_aborting", "journal_reconciled"):
            assert name in names, name
        reconciled = {
            e["migration_id"]: (e["result"], e["vm"])
            for e in after
            if e.get("event") == "reconciled"
        }
        assert reconciled == {
            idle_start["migration_id"]: ("succeeded", idle_vm),
            hot_start["migration_id"]: ("aborted", HOT),
        }, reconciled
        # reconcile ran before the first plan of the new process
        first_plan = names.index("plan_ready") if "plan_ready" in names else len(names)
        assert names.index("journal_reconciled") < first_plan
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0, d.log_tail()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.send_signal(signal.SIGCONT)  # a failure while frozen: let it stop cleanly
        d.stop()
        agents.stop()
        events.close()
