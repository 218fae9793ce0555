"""Issue 9 fault: the policy file is replaced by a broken one and SIGHUP is sent, on the lab.

The policy in force excludes one VM from migration. The file is overwritten with a policy that
drops the exclusion but has an error further down (an unknown key: the schema is strict). If
any part of the broken file took effect, the excluded VM would leave the drained host. It must
not: the old policy stays in force (status, `rebalancerd_policy_reload_success` 0, one
`policy_reload_failed` log line naming the file and the key), the daemon keeps running and
draining the other VMs. Then a valid file without the exclusion is installed and SIGHUP sent:
now the VM moves; that is what proves the exclusion (the old policy) was what held it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.faults.helpers import (
    JournalReader,
    LabAgents,
    LibvirtEvents,
    assert_each_runs_once,
    lab_daemon,
    metric,
    placement,
    sees_vms,
    started_moves,
    wait_cycles,
    wait_for,
)

pytestmark = [pytest.mark.lab, pytest.mark.fault, pytest.mark.mqtt]

KEEP = "pol-keep"
OTHERS = ["pol-a", "pol-b"]

GOOD = f"""\
apiVersion: rebalancerd/v1
kind: Policy
name: good
mode: drain
rules:
  exclusions: ["{KEEP}"]
limits:
  cooldown_s: 0
  max_concurrent: 2
  max_per_source: 2
  max_per_target: 2
"""

# valid YAML, plausible content, no exclusion... and a typo further down (strict schema)
BROKEN = """\
apiVersion: rebalancerd/v1
kind: Policy
name: broken
mode: drain
limits:
  cooldown_s: 0
  max_concurrent: 2
  max_per_source: 2
  max_per_target: 2
migraton:
  default: {time_budget_s: 30}
"""

FIXED = """\
apiVersion: rebalancerd/v1
kind: Policy
name: fixed
mode: drain
limits:
  cooldown_s: 0
  max_concurrent: 2
  max_per_source: 2
  max_per_target: 2
"""


def _sighup_and_wait_reload(d: Any) -> None:
    assert d.notify is not None
    mark = len(d.notify.snapshot())
    d.signal(signal.SIGHUP)
    i = d.notify.wait("RELOADING", "1", since=mark)
    d.notify.wait("READY", "1", since=i + 1)


def test_broken_policy_on_sighup_keeps_the_old_policy_in_force(
    lab: Any, mosquitto_broker: Any, workdir: Path
) -> None:
    h1 = lab.hosts[0].name
    vms = [KEEP, *OTHERS]
    for vm in vms:
        lab.define_guest(h1, vm, 64)
    events = LibvirtEvents(lab)
    agents = LabAgents(workdir, lab, mosquitto_broker.url)
    d = lab_daemon(workdir, lab, mosquitto_broker.url, GOOD)
    journal = JournalReader(workdir / "state")
    policy_file = workdir / "policies" / "main.yaml"
    d.start()
    try:
        d.wait_ready()
        wait_for(lambda: sees_vms(d, 3), 60, "telemetry from all agents")
        assert d.status()["policy"]["name"] == "good"
        assert metric(d, "rebalancerd_policy_reload_success") == 1
        errors_before = metric(d, "rebalancerd_policy_reloads_total", result="error")

        # -- the broken file, then SIGHUP -----------------------------------------------------
        mark = len(d.log_events())
        policy_file.write_text(BROKEN)
        _sighup_and_wait_reload(d)
        st = wait_for(
            lambda: (s := d.status()) and not s["policy"]["last_reload"]["ok"] and s,
            15,
            "the failed reload reported",
        )
        assert st["policy"]["name"] == "good"
        assert st["policy"]["policy"]["rules"]["exclusions"] == [KEEP]
        problems = " ".join(st["policy"]["last_reload"]["problems"])
        assert "migraton" in problems and "main.yaml" in problems, problems
        assert metric(d, "rebalancerd_policy_reload_success") == 0
        assert metric(d, "rebalancerd_policy_reloads_total", result="error") > errors_before
        failed = [e for e in d.log_events()[mark:] if e.get("event") == "policy_reload_failed"]
        assert failed and all(e["keeping"] == "good" for e in failed), failed
        assert "migraton" in failed[-1]["error"] or "migraton" in str(failed[-1]["problems"])
        assert not [e for e in d.log_events()[mark:] if e.get("event") == "policy_reloaded"]

        # -- the old policy governs what happens next -------------------------------------------
        d.control("drain", host=h1)
        wait_for(
            lambda: all(placement(lab, [vm])[vm].running not in ([], [h1]) for vm in OTHERS),
            90,
            f"{OTHERS} drained off {h1}",
            interval=0.3,
        )
        wait_cycles(d, 3)
        assert placement(lab, [KEEP])[KEEP].running == [h1], "the excluded VM moved"
        assert KEEP not in {e["vm"] for e in started_moves(d)}
        assert d.proc is not None and d.proc.poll() is None
        assert d.status()["policy"]["name"] == "good"
        assert metric(d, "rebalancerd_policy_reload_success") == 0

        # -- positive control: a valid policy without the exclusion frees the VM -------------
        policy_file.write_text(FIXED)
        _sighup_and_wait_reload(d)
        wait_for(lambda: d.status()["policy"]["name"] == "fixed", 15, "the fixed policy")
        assert d.status()["policy"]["last_reload"]["ok"] is True
        assert metric(d, "rebalancerd_policy_reload_success") == 1
        wait_for(
            lambda: placement(lab, [KEEP])[KEEP].running not in ([], [h1]),
            90,
            f"{KEEP} drained once the exclusion is gone",
            interval=0.3,
        )
        wait_for(lambda: not d.status()["in_flight"], 30, "no migration in flight")

        # -- every VM exactly once, no move twice -------------------------------------------
        where = assert_each_runs_once(lab, vms)
        assert h1 not in where.values()
        moves = journal.moves()
        assert sorted(m["vm"] for m in moves) == sorted(vms), moves
        assert all(m["state"] == "succeeded" for m in moves), moves
        assert {m["vm"]: m["target"] for m in moves} == where
        departures = events.departures()
        assert {vm: departures[vm] for vm in vms} == {vm: 1 for vm in vms}, events.snapshot()
        assert metric(d, "rebalancerd_migrations_succeeded_total", reason="drain") == 3
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0, d.log_tail()
    finally:
        d.stop()
        agents.stop()
        events.close()
