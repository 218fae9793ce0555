"""Issue 9 faults on the telemetry path, with the daemon on the lab and real agents:

1. mosquitto is restarted while telemetry flows. While it is down every host turns stale, each
   cycle refuses to plan (`stale`), a drain cannot even be requested, and the daemon is seen
   disconnected (`telemetry_connected` 0). When it is back the daemon reconnects by itself;
   before the agents do, old reports (20 s old, inside the clock-skew tolerance, as a client
   that buffered them during the outage would send) are published: they must not make any host
   fresh, nothing is planned on them. Fresh reports from the agents then bring the hosts back.
2. One agent goes silent (SIGSTOP: its MQTT connection stays open, so no Last Will is sent; only
   the missing reports tell). Its host turns stale (status, `rebalancerd_hosts{state="stale"}`,
   its `telemetry_staleness_seconds`). Both that host and another are drained: the VMs of the
   other host go to the third host only (never to the stale one), the stale host's VM does not
   move while it is stale; once the agent resumes, that VM is drained too (the positive control
   that the drain was pending only because of the staleness).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from rebalancerd.control.client import ControlError
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

ON_H1 = ["tel-a", "tel-b"]
ON_H2 = ["tel-s"]
STALE_AFTER_S = 4.0
PLAN_S = 1.0

POLICY = """\
apiVersion: rebalancerd/v1
kind: Policy
name: telemetry-faults
mode: drain
limits:
  cooldown_s: 0
  max_concurrent: 2
  max_per_source: 2
  max_per_target: 2
"""


class Recorder:
    """mosquitto_sub on every host's telemetry topic: the last report seen per host."""

    def __init__(self, broker: Any, path: Path) -> None:
        self.path = path
        self._out = path.open("wb")
        self.proc = subprocess.Popen(
            [
                *("mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port)),
                *("-t", "rebalancer/v1/default/hosts/+/telemetry"),
            ],
            stdout=self._out,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, dict[str, Any]]:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._out.close()
        last: dict[str, dict[str, Any]] = {}
        for line in self.path.read_text().splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                last[r["host"]] = r
        return last


def _publish(broker: Any, report: dict[str, Any]) -> None:
    topic = f"rebalancer/v1/default/hosts/{report['host']}/telemetry"
    subprocess.run(
        [
            *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1"),
            *("-t", topic, "-m", json.dumps(report)),
        ],
        check=True,
        timeout=10,
    )


def _states(d: Any) -> dict[str, str]:
    return {name: h["state"] for name, h in d.hosts().items()}


def test_broker_restart_and_silent_agent(lab: Any, mosquitto_broker: Any, workdir: Path) -> None:
    h1, h2, h3 = (h.name for h in lab.hosts[:3])
    vms = [*ON_H1, *ON_H2]
    for vm in ON_H1:
        lab.define_guest(h1, vm, 64)
    for vm in ON_H2:
        lab.define_guest(h2, vm, 64)
    events = LibvirtEvents(lab)
    agents = LabAgents(workdir, lab, mosquitto_broker.url)
    d = lab_daemon(
        workdir, lab, mosquitto_broker.url, POLICY, stale_after_s=STALE_AFTER_S, plan_s=PLAN_S
    )
    journal = JournalReader(workdir / "state")
    recorder: Recorder | None = None
    d.start()
    try:
        d.wait_ready()
        recorder = Recorder(mosquitto_broker, workdir / "recorded.jsonl")
        wait_for(lambda: sees_vms(d, 3), 60, "telemetry from all agents")
        assert metric(d, "rebalancerd_telemetry_connected") == 1
        reconnects = metric(d, "rebalancerd_telemetry_reconnects_total")

        # -- 1. broker restart -------------------------------------------------------------
        for h in (h1, h2, h3):
            agents.pause(h)
        time.sleep(0.5)
        last = recorder.stop()
        recorder = None
        assert set(last) == {h1, h2, h3}, last
        mosquitto_broker.stop()
        wait_for(lambda: set(_states(d).values()) == {"stale"}, 30, "every host stale")
        stale_from = int(d.status()["daemon"]["cycles"])
        wait_for(lambda: metric(d, "rebalancerd_telemetry_connected") == 0, 30, "disconnected")
        with pytest.raises(ControlError, match="no other active host"):
            d.control("drain", host=h1)
        wait_cycles(d, 2)
        assert d.metric("rebalancerd_hosts", state="stale") == 3

        mosquitto_broker.start()
        wait_for(lambda: metric(d, "rebalancerd_telemetry_connected") == 1, 60, "reconnected")
        assert metric(d, "rebalancerd_telemetry_reconnects_total") > reconnects
        # reports that were 20 s old when they arrive: accepted or not, never fresh
        for r in last.values():
            _publish(mosquitto_broker, {**r, "seq": r["seq"] + 1, "ts": time.time() - 20.0})
        wait_cycles(d, 3)
        assert set(_states(d).values()) == {"stale"}, _states(d)
        assert d.status()["telemetry"]["data_age_s"] is None
        stale_until = int(d.status()["daemon"]["cycles"])
        window = [
            dec for dec in d.status()["decisions"] if stale_from < dec["cycle"] <= stale_until
        ]
        assert len(window) >= 4, window
        assert {dec["status"] for dec in window} == {"stale"}, window
        assert not started_moves(d)
        assert any(e.get("event") == "plan_skipped_stale" for e in d.log_events())
        assert any(e.get("event") == "mqtt_disconnected" for e in d.log_events())

        for h in (h1, h2, h3):
            agents.resume(h)
        wait_for(lambda: sees_vms(d, 3), 90, "fresh telemetry after the broker restart")

        # -- 2. one agent silent -------------------------------------------------------------
        agents.pause(h2)
        wait_for(lambda: _states(d)[h2] == "stale", 30, f"{h2} stale")
        assert _states(d) == {h1: "active", h2: "stale", h3: "active"}
        wait_for(lambda: d.metric("rebalancerd_hosts", state="stale") == 1, 30, "stale gauge")

        def gauges_agree() -> bool:  # the gauges are refreshed every few seconds
            age = {
                h: metric(d, "rebalancerd_telemetry_staleness_seconds", host=h) for h in d.hosts()
            }
            return age[h2] > STALE_AFTER_S and age[h1] < STALE_AFTER_S and age[h3] < STALE_AFTER_S

        wait_for(gauges_agree, 30, f"staleness gauges: only {h2} stale")
        d.control("drain", host=h1)
        d.control("drain", host=h2)
        wait_for(
            lambda: all(placement(lab, [vm])[vm].running == [h3] for vm in ON_H1),
            90,
            f"{h1} drained to {h3} (never to the stale {h2})",
            interval=0.3,
        )
        wait_cycles(d, 3)
        assert _states(d)[h2] == "stale"
        assert all(placement(lab, [vm])[vm].running == [h2] for vm in ON_H2), "moved off stale"
        for e in started_moves(d):
            assert h2 not in (e["source"], e["target"]), e
        mark = len(d.log_events())

        agents.resume(h2)
        wait_for(
            lambda: all(placement(lab, [vm])[vm].running == [h3] for vm in ON_H2),
            90,
            f"{h2} drained once fresh again",
            interval=0.3,
        )
        wait_for(lambda: not d.status()["in_flight"], 30, "no migration in flight")
        late = started_moves(d, mark)
        assert [(e["vm"], e["source"], e["target"]) for e in late] == [
            (vm, h2, h3) for vm in ON_H2
        ], late

        # -- every VM exactly once, no move twice -------------------------------------------
        where = assert_each_runs_once(lab, vms)
        assert set(where.values()) == {h3}, where
        moves = journal.moves()
        assert sorted((m["vm"], m["state"], m["target"]) for m in moves) == sorted(
            (vm, "succeeded", h3) for vm in vms
        ), moves
        departures = events.departures()
        assert {vm: departures[vm] for vm in vms} == {vm: 1 for vm in vms}, events.snapshot()
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0, d.log_tail()
    finally:
        if recorder is not None:
            recorder.stop()
        d.stop()
        agents.stop()
        events.close()


def test_staleness_gauges_keep_growing_while_the_broker_is_down(
    lab: Any, mosquitto_broker: Any, workdir: Path
) -> None:
    """`rebalancerd_telemetry_staleness_seconds` is what the RebalancerdTelemetryStale alert
    watches: it must keep growing when no report arrives at all (broker down, every agent
    gone), and `rebalancerd_telemetry_data_age_seconds` must say -1 (nothing fresh). (Until
    d72adac the gauges were refreshed only when an MQTT batch arrived and froze here.)"""
    agents = LabAgents(workdir, lab, mosquitto_broker.url)
    d = lab_daemon(
        workdir, lab, mosquitto_broker.url, POLICY, stale_after_s=STALE_AFTER_S, plan_s=PLAN_S
    )
    d.start()
    try:
        d.wait_ready()
        wait_for(lambda: sees_vms(d, 0), 60, "telemetry from all agents")
        wait_for(lambda: metric(d, "rebalancerd_telemetry_data_age_seconds") >= 0, 30, "data age")
        mosquitto_broker.stop()
        wait_for(lambda: set(_states(d).values()) == {"stale"}, 30, "every host stale")
        wait_cycles(d, 7)  # 7 s: more than the gauges' 5 s refresh period
        ages = {h: metric(d, "rebalancerd_telemetry_staleness_seconds", host=h) for h in d.hosts()}
        assert all(a > STALE_AFTER_S for a in ages.values()), ages
        assert metric(d, "rebalancerd_telemetry_data_age_seconds") == -1
    finally:
        d.stop()
        agents.stop()


def test_a_host_turning_stale_is_logged(lab: Any, mosquitto_broker: Any, workdir: Path) -> None:
    """An agent that hangs (connection open, no reports) turns its host stale: nothing will move
    to or from it, so the journal of the daemon (its log) must say so, with the host's name."""
    h2 = lab.hosts[1].name
    agents = LabAgents(workdir, lab, mosquitto_broker.url)
    d = lab_daemon(
        workdir, lab, mosquitto_broker.url, POLICY, stale_after_s=STALE_AFTER_S, plan_s=PLAN_S
    )
    d.start()
    try:
        d.wait_ready()
        wait_for(lambda: sees_vms(d, 0), 60, "telemetry from all agents")
        mark = len(d.log_events())
        agents.pause(h2)
        wait_for(lambda: _states(d)[h2] == "stale", 30, f"{h2} stale")
        wait_cycles(d, 2)
        said = [
            e
            for e in d.log_events()[mark:]
            if e.get("host") == h2 and "stale" in str(e.get("event", ""))
        ]
        assert said, [e.get("event") for e in d.log_events()[mark:]]
    finally:
        d.stop()
        agents.stop()
