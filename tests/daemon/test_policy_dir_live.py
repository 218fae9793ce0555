"""Issue 14, the daemon process against the simulated cluster: what happens in the policy
directory while it runs. An emptied directory keeps the last policy (the built-in default used to
take over and migrate); a FIFO named x.yaml is refused without blocking the event loop (it hung
the control API, planning and the watchdog; at start it hung before READY); and the failures the
file watcher finds are what `status` shows."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rebalancerd.control.client import request
from rebalancerd.files import dump_snapshot
from rebalancerd.sim.synthetic import skewed_snapshot
from tests.daemon.helpers import DaemonProc, wait_for

HOLD = """\
apiVersion: rebalancerd/v1
kind: Policy
name: hold
mode: advisory
rules:
  exclusions: ["*"]
limits: {cooldown_s: 0, max_concurrent: 4, max_per_source: 4, max_per_target: 4}
"""


def sim_config(workdir: Path) -> dict[str, Any]:
    snap = workdir / "skewed.json"
    # a skewed cluster: the built-in default (balance, no exclusions) migrates at once
    dump_snapshot(skewed_snapshot(4, 24, 3), snap)
    return {
        "simulate": True,
        "sim": {"snapshot": str(snap), "speed": 10.0},
        "intervals": {"plan_s": 2.0, "max_data_age_s": 60.0},
        "planner": {"time_limit_s": 1.0},
        "shutdown_deadline_s": 10.0,
    }


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rbd-", dir="/tmp"))
    (d / "policies").mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def started(d: DaemonProc) -> float:
    return sum(
        float(v)
        for line in d.scrape().splitlines()
        if line.startswith("rebalancerd_migrations_started_total{")
        for v in [line.rsplit(" ", 1)[1]]
    )


def last_reload(d: DaemonProc) -> dict[str, Any]:
    lr: dict[str, Any] = d.status()["policy"]["last_reload"]
    return lr


@pytest.mark.slow
def test_emptied_policy_directory_keeps_the_last_policy(workdir: Path) -> None:
    (workdir / "policies" / "hold.yaml").write_text(HOLD)
    d = DaemonProc(workdir, sim_config(workdir))
    d.start()
    try:
        d.wait_ready()
        assert d.status()["policy"]["name"] == "hold"
        (workdir / "policies" / "hold.yaml").unlink()  # `rm *.yaml && cp ...`, between the two
        lr = wait_for(
            lambda: (r := last_reload(d)).get("empty_directory_kept") and r, 15, "empty dir seen"
        )
        assert lr["ok"] is False and "keeping 'hold'" in lr["summary"]
        st = d.status()
        assert st["policy"]["name"] == "hold" and st["policy"]["mode"] == "advisory"
        assert d.metric("rebalancerd_policy_dir_empty") == 1
        assert d.metric("rebalancerd_policy_reload_success") == 0
        cycles = st["daemon"]["cycles"]
        wait_for(lambda: d.status()["daemon"]["cycles"] >= cycles + 3, 60, "three more cycles")
        assert started(d) == 0, "a migration started while the directory was empty"
        assert d.events("policy_dir_empty_kept")
        (workdir / "policies" / "hold.yaml").write_text(HOLD.replace("name: hold", "name: back"))
        wait_for(lambda: d.status()["policy"]["name"] == "back", 15, "new policy in force")
        assert last_reload(d)["ok"] is True and d.metric("rebalancerd_policy_dir_empty") == 0
    finally:
        d.stop()


@pytest.mark.slow
def test_fifo_in_the_policy_directory_blocks_nothing(workdir: Path) -> None:
    os.mkfifo(workdir / "policies" / "x.yaml")  # present at start: READY must still come
    d = DaemonProc(workdir, sim_config(workdir))
    d.start()
    try:
        d.wait_ready(timeout=60)
        lr = last_reload(d)
        assert lr["ok"] is False and "is a FIFO" in " ".join(lr["problems"])
        assert d.status()["policy"]["name"] == "fallback-no-valid-policy"
        os.unlink(workdir / "policies" / "x.yaml")
        (workdir / "policies" / "hold.yaml").write_text(HOLD)
        wait_for(lambda: d.status()["policy"]["name"] == "hold", 15, "policy loaded")
        # a FIFO appears while running: the watcher finds it (no SIGHUP), status says so
        os.mkfifo(workdir / "policies" / "y.yaml")
        lr = wait_for(lambda: (r := last_reload(d))["ok"] is False and r, 15, "watcher failure")
        assert "y.yaml" in " ".join(lr["problems"]) and d.status()["policy"]["name"] == "hold"
        assert d.metric("rebalancerd_policy_reload_success") == 0
        # the event loop is free: the control socket answers promptly, cycles go on
        cycles = d.status()["daemon"]["cycles"]
        for _ in range(10):  # a blocked event loop would miss this 2 s deadline: ControlError
            assert isinstance(request(d.socket, "ping", timeout_s=2.0), dict)
            time.sleep(0.3)
        wait_for(lambda: d.status()["daemon"]["cycles"] > cycles, 30, "planning goes on")
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.stop()


DRAIN_ONE_AT_A_TIME = """\
apiVersion: rebalancerd/v1
kind: Policy
name: {name}
mode: {mode}
limits: {{cooldown_s: 0, max_concurrent: 1, max_per_source: 1, max_per_target: 1}}
"""


@pytest.mark.slow
def test_policy_flip_to_advisory_reaches_the_wave_in_flight(workdir: Path) -> None:
    from rebalancerd.domain.model import ClusterSnapshot, Host, Vm

    snap = workdir / "big.json"
    hosts = tuple(Host(f"big{i}", cores=32, memory_mib=256 * 1024) for i in (1, 2, 3))
    # three 40 GiB VMs to drain one at a time: ~35 simulated seconds each
    vms = tuple(
        Vm(f"huge{i}", "big1", vcpus=4, memory_mib=40 * 1024, cpu_used_mc=500) for i in (1, 2, 3)
    )
    dump_snapshot(ClusterSnapshot(hosts, vms), snap)
    pol = workdir / "policies" / "main.yaml"
    pol.write_text(DRAIN_ONE_AT_A_TIME.format(name="act", mode="balance"))
    cfg = sim_config(workdir) | {"sim": {"snapshot": str(snap), "speed": 5.0}}
    d = DaemonProc(workdir, cfg)
    d.start()
    try:
        d.wait_ready()
        d.control("drain", host="big1")
        wait_for(lambda: d.status()["in_flight"], 30, "first migration in flight")
        pol.write_text(DRAIN_ONE_AT_A_TIME.format(name="stop", mode="advisory"))
        wait_for(lambda: d.status()["policy"]["name"] == "stop", 15, "advisory policy in force")
        wait_for(lambda: d.events("migration_succeeded"), 60, "the move in flight finishes")
        time.sleep(3.0)  # time for a next move of the wave to start, if it would
        assert len(d.events("migration_started")) == 1, d.events("migration_started")
        skipped = [e for e in d.events("migration_skipped") if e.get("reason") == "advisory"]
        assert skipped, "the wave's remaining moves were not skipped as advisory"
        assert not d.status()["in_flight"]
    finally:
        d.stop()
