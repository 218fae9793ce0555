"""`rebalancerd run` as a subprocess against the simulated cluster (no lab needed): the notify
protocol on a real NOTIFY_SOCKET, /metrics, the control API, drain, SIGHUP, SIGTERM, and the
daemon-level faults of issue 9 that do not need real hypervisors (broken policy on reload,
unusable state directory)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.helpers import DaemonProc, promtool, wait_for

POLICY = """\
apiVersion: rebalancerd/v1
kind: Policy
name: {name}
mode: balance
limits:
  cooldown_s: 0
  max_concurrent: 2
  max_per_source: 2
  max_per_target: 2
"""


def sim_config(**extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "simulate": True,
        "sim": {"hosts": 4, "vms_per_host": 3, "speed": 10.0, "seed": 3},
        "intervals": {"plan_s": 5.0, "max_data_age_s": 60.0},
        "planner": {"time_limit_s": 2.0},
        "shutdown_deadline_s": 20.0,
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rbd-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _daemon(workdir: Path, policy_name: str = "steady", **extra: Any) -> DaemonProc:
    (workdir / "policies").mkdir(parents=True, exist_ok=True)
    (workdir / "policies" / "main.yaml").write_text(POLICY.format(name=policy_name))
    return DaemonProc(workdir, sim_config(**extra))


@pytest.mark.slow
def test_lifecycle_notify_metrics_drain_reload_stop(workdir: Path) -> None:
    d = _daemon(workdir)
    d.start()
    try:
        d.wait_ready()
        assert d.notify is not None
        # WATCHDOG=1 keeps coming while the loop is healthy; STATUS= lines describe it
        d.notify.wait("WATCHDOG", "1", timeout=30)
        wait_for(lambda: d.status()["daemon"]["cycles"] >= 1, 30, "a first cycle")
        assert d.notify.count("STATUS") >= 1

        # /metrics: every family prefixed, promtool-clean, and it reflects the model
        body = d.scrape()
        r = subprocess.run(
            [promtool(), "check", "metrics"], input=body.encode(), capture_output=True
        )
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), (
            r.stdout + r.stderr
        ).decode()
        assert d.metric("rebalancerd_daemon_ready") == 1
        assert d.metric("rebalancerd_vms") == 12
        assert d.metric("rebalancerd_journal_writable") == 1

        # drain: the host is emptied by (simulated) migrations, nothing lost
        before = d.hosts()
        assert before["sim02"]["vms"] == 3
        res = d.control("drain", host="sim02")
        assert res["drained"] is True and len(res["vms"]) == 3
        vms_before = res["vms"]
        wait_for(lambda: d.hosts()["sim02"]["vms"] == 0, 60, "sim02 emptied")
        hosts = d.hosts()
        assert hosts["sim02"]["state"] == "maintenance" and hosts["sim02"]["drained"]
        assert sum(h["vms"] for h in hosts.values()) == 12

        def moved_off() -> set[str]:
            return {
                r["vm"]
                for dec in d.status()["decisions"]
                for r in (dec.get("execution") or {}).get("succeeded", [])
                if r["source"] == "sim02"
            }

        # the host empties as the migrations end; the cycle's decision is recorded when the
        # wave is done, a moment later
        wait_for(lambda: moved_off() == set(res["vms"]), 30, "the drain recorded as decisions")
        st = d.status()
        kinds = {
            m["reason_kind"]
            for dec in st["decisions"]
            for m in dec.get("moves", [])
            if m["source"] == "sim02"
        }
        assert "drain" in kinds
        assert (d.metric("rebalancerd_migrations_succeeded_total", reason="drain") or 0) >= 1
        assert d.metric("rebalancerd_drained_hosts") == 1
        with pytest.raises(Exception, match="unknown host"):
            d.control("drain", host="nope")

        # `rebalancerd snapshot` dumps the live model through the control API
        from tests.daemon.helpers import REBALANCERD

        r = subprocess.run(
            [REBALANCERD, "snapshot", "--socket", d.socket], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        dumped = json.loads(r.stdout)
        assert len(dumped["hosts"]) == 4 and len(dumped["vms"]) == 12
        assert {h["name"]: h["state"] for h in dumped["hosts"]}["sim02"] == "maintenance"

        # `rebalancerd policy diff --live`: a policy edit tried on the live model, offline
        edited = workdir / "edited.yaml"
        edited.write_text(POLICY.format(name="edited").replace("mode: balance", "mode: drain"))
        r = subprocess.run(
            [REBALANCERD, "policy", "diff", "--old", str(workdir / "policies"), "--new",
             str(edited), "--live", "--socket", d.socket, "--time-limit", "1", "--json"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert (out["old"]["mode"], out["new"]["mode"]) == ("balance", "drain")
        assert out["new"]["policy"] == "edited"
        # planned on the live model: the drained host is in maintenance there, nothing on it
        assert not [m for m in out["added"] + out["unchanged"] if m["target"] == "sim02"]

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1; the new policy is in force
        (workdir / "policies" / "main.yaml").write_text(POLICY.format(name="reloaded"))
        mark = len(d.notify.snapshot())
        d.signal(signal.SIGHUP)
        i = d.notify.wait("RELOADING", "1", since=mark)
        assert int(d.notify.snapshot()[i]["MONOTONIC_USEC"]) > 0
        d.notify.wait("READY", "1", since=i + 1)
        wait_for(lambda: d.status()["policy"]["name"] == "reloaded", 10, "new policy")

        # undrain --move-back: the host receives again and its former VMs come home
        res = d.control("undrain", host="sim02", move_back=True)
        assert res["drained"] is False and sorted(res["move_back"]) == sorted(vms_before)
        assert d.hosts()["sim02"]["state"] == "active"

        def on_sim02() -> set[str]:
            snap = d.control("snapshot")["snapshot"]
            return {v["name"] for v in snap["vms"] if v["host"] == "sim02"}

        wait_for(lambda: on_sim02() >= set(vms_before), 60, "VMs moved back home")
        assert sum(h["vms"] for h in d.hosts().values()) == 12

        # the human status output and its --json twin
        r = subprocess.run(
            [REBALANCERD, "status", "--socket", d.socket], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        assert "healthy" in r.stdout and "policy: reloaded" in r.stdout
        assert all(f"sim0{i}" in r.stdout for i in range(1, 5))
        r = subprocess.run(
            [REBALANCERD, "status", "--json", "--socket", d.socket], capture_output=True, text=True
        )
        assert json.loads(r.stdout)["policy"]["name"] == "reloaded"

        # SIGTERM: STOPPING=1 and exit 0
        mark = len(d.notify.snapshot())
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
        assert d.notify.count("STOPPING", "1", since=mark) == 1
        assert d.events("daemon_stopped")[-1]["exit_code"] == 0
    finally:
        d.stop()


@pytest.mark.slow
def test_drain_survives_a_restart(workdir: Path) -> None:
    d = _daemon(workdir)
    d.start()
    try:
        d.wait_ready()
        d.control("drain", host="sim01")
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
        d.start()
        d.wait_ready()
        hosts = d.hosts()
        assert hosts["sim01"]["drained"] is True
        assert hosts["sim01"]["state"] == "maintenance"
    finally:
        d.stop()


@pytest.mark.fault
def test_broken_policy_on_reload_keeps_the_old_one(workdir: Path) -> None:
    d = _daemon(workdir, policy_name="good")
    d.start()
    try:
        d.wait_ready()
        assert d.status()["policy"]["name"] == "good"
        (workdir / "policies" / "main.yaml").write_text(
            "apiVersion: rebalancerd/v1\nkind: Policy\nname: broken\nlimits: {max_concurrent: -3}\n"
        )
        assert d.notify is not None
        mark = len(d.notify.snapshot())
        d.signal(signal.SIGHUP)
        i = d.notify.wait("RELOADING", "1", since=mark)
        d.notify.wait("READY", "1", since=i + 1)

        def failed_reload() -> dict[str, Any] | None:
            st = d.status()
            return None if st["policy"]["last_reload"]["ok"] else st

        st = wait_for(failed_reload, 10, "failed reload reported")
        assert st["policy"]["name"] == "good"
        assert "max_concurrent" in " ".join(st["policy"]["last_reload"]["problems"])
        assert d.metric("rebalancerd_policy_reload_success") == 0
        assert d.metric("rebalancerd_policy_reloads_total", result="error") >= 1
        assert d.proc is not None and d.proc.poll() is None
        # the loop keeps running on the old policy, and the daemon still stops cleanly
        n = d.status()["daemon"]["cycles"]
        wait_for(lambda: d.status()["daemon"]["cycles"] > n, 30, "cycles continue")
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
    finally:
        d.stop()


@pytest.mark.fault
def test_unusable_state_directory_refuses_to_act(workdir: Path) -> None:
    """state_dir cannot even be created (a file is in the way): the daemon starts, says so,
    and refuses to migrate a drained host's VMs."""
    (workdir / "blocker").write_text("not a directory")
    d = _daemon(workdir, state_dir=str(workdir / "blocker" / "state"))
    d.start()
    try:
        d.wait_ready()
        st = d.status()
        assert st["daemon"]["journal_writable"] is False
        assert "state directory" in st["daemon"]["journal_error"]
        assert d.metric("rebalancerd_journal_writable") == 0
        d.control("drain", host="sim03")
        wait_for(
            lambda: any(
                r["reason"] == "journal_unwritable"
                for dec in d.status()["decisions"]
                for r in (dec.get("execution") or {}).get("skipped", [])
            ),
            60,
            "moves skipped for journal_unwritable",
        )
        assert d.hosts()["sim03"]["vms"] == 3
        assert (d.metric("rebalancerd_migrations_started_total", reason="drain") or 0) == 0
        assert d.events("journal_unwritable")
    finally:
        d.stop()


def _can_mount() -> bool:
    return shutil.which("unshare") is not None and shutil.which("mount") is not None


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.skipif(not _can_mount(), reason="needs unshare and mount")
def test_read_only_state_directory_refuses_to_act(workdir: Path) -> None:
    """A journal on a file system mounted read-only (in a private mount namespace)."""
    state = workdir / "state"
    first = _daemon(workdir)
    first.start()
    try:
        first.wait_ready()
    finally:
        first.stop()
    assert (state / "journal.sqlite3").exists() or any(state.iterdir())
    wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "{state}" "{state}" && mount -o remount,ro,bind "{state}" "{state}" '
        '&& exec "$0" "$@"',
    ]
    d = DaemonProc(workdir, sim_config(), wrapper=wrapper)
    d.start()
    try:
        d.wait_ready()
        assert d.metric("rebalancerd_journal_writable") == 0
        d.control("drain", host="sim04")
        wait_for(
            lambda: any(
                r["reason"] == "journal_unwritable"
                for dec in d.status()["decisions"]
                for r in (dec.get("execution") or {}).get("skipped", [])
            ),
            60,
            "moves skipped for journal_unwritable",
        )
        assert d.hosts()["sim04"]["vms"] == 3
        assert d.status()["daemon"]["journal_writable"] is False
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
    finally:
        d.stop()


def test_config_errors_are_one_line(workdir: Path) -> None:
    bad = workdir / "bad.yaml"
    bad.write_text("simulate: true\nmetrics: {address: nowhere}\n")
    from tests.daemon.helpers import REBALANCERD

    r = subprocess.run([REBALANCERD, "run", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "metrics.address" in r.stderr
    r = subprocess.run(
        [REBALANCERD, "run", "--config", str(bad.with_name("missing.yaml"))],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no such file" in r.stderr
    r = subprocess.run(
        [REBALANCERD, "status", "--socket", str(workdir / "nobody-here.sock")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "is rebalancerd running" in r.stderr


def test_second_daemon_on_the_same_socket_refuses_to_start(workdir: Path) -> None:
    d = _daemon(workdir)
    d.start()
    try:
        d.wait_ready()
        other = DaemonProc(workdir / "b", {**sim_config(), "control": {"socket": d.socket}})
        (workdir / "b" / "policies").mkdir(parents=True, exist_ok=True)
        other.start()
        assert other.wait_exit(30) == 1
        assert "another rebalancerd" in other.log_tail()
        assert d.control("ping")["pong"] is True
    finally:
        d.stop()


def _big_vm_snapshot(path: Path, memory_mib: int) -> None:
    from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
    from rebalancerd.files import dump_snapshot as dump

    hosts = tuple(Host(f"big{i}", cores=32, memory_mib=256 * 1024) for i in (1, 2, 3))
    vms = (
        Vm("huge", "big1", vcpus=4, memory_mib=memory_mib, cpu_used_mc=500),
        Vm("small", "big2", vcpus=1, memory_mib=1024, cpu_used_mc=100),
    )
    dump(ClusterSnapshot(hosts, vms), path)


def _events_in_order(d: DaemonProc, *names: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") in names]


@pytest.mark.slow
def test_sigterm_lets_an_in_flight_migration_finish(workdir: Path) -> None:
    snap = workdir / "snap.json"
    _big_vm_snapshot(snap, 20 * 1024)  # ~17 simulated seconds at 1180 MiB/s
    d = _daemon(
        workdir,
        sim={"snapshot": str(snap), "speed": 5.0},
        shutdown_deadline_s=60.0,
    )
    d.start()
    try:
        d.wait_ready()
        d.control("drain", host="big1")
        wait_for(lambda: d.status()["in_flight"], 30, "migration in flight")
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0
        seq = [
            e["event"]
            for e in _events_in_order(
                d,
                "daemon_stopping",
                "migration_succeeded",
                "daemon_stopped",
                "shutdown_deadline_reached",
            )
        ]
        assert seq == ["daemon_stopping", "migration_succeeded", "daemon_stopped"], seq
    finally:
        d.stop()


@pytest.mark.slow
@pytest.mark.fault
def test_sigterm_deadline_aborts_migrations_vm_stays_on_source(workdir: Path) -> None:
    snap = workdir / "snap.json"
    _big_vm_snapshot(snap, 200 * 1024)  # ~170 simulated seconds
    d = _daemon(workdir, sim={"snapshot": str(snap), "speed": 1.0}, shutdown_deadline_s=1.0)
    d.start()
    try:
        d.wait_ready()
        d.control("drain", host="big1")
        flight = wait_for(lambda: d.status()["in_flight"], 30, "migration in flight")[0]
        assert flight["vm"] == "huge" and flight["source"] == "big1"
        wait_for(lambda: d.status()["in_flight"][0].get("progress", 0) > 0, 30, "progress")
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0
        seq = [
            e["event"]
            for e in _events_in_order(
                d,
                "daemon_stopping",
                "shutdown_deadline_reached",
                "migration_abort_requested",
                "migration_aborted",
                "migration_succeeded",
                "daemon_stopped",
            )
        ]
        assert seq == [
            "daemon_stopping",
            "shutdown_deadline_reached",
            "migration_abort_requested",
            "migration_aborted",
            "daemon_stopped",
        ], seq
        aborted = d.events("migration_aborted")[0]
        assert aborted["vm"] == "huge" and aborted["migration_id"] == flight["migration_id"]
    finally:
        d.stop()


@pytest.mark.fault
@pytest.mark.skipif(
    not _can_mount() or shutil.which("nsenter") is None, reason="needs unshare, mount, nsenter"
)
def test_state_directory_becomes_full_refuses_to_act(workdir: Path) -> None:
    """The state directory is a small tmpfs (private mount namespace) that fills up while the
    daemon runs: it notices at the next wave and starts no migration."""
    state = workdir / "state"
    state.mkdir()
    wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs -o size=512k tmpfs "{state}" && exec "$0" "$@"',
    ]
    (workdir / "policies").mkdir()
    (workdir / "policies" / "main.yaml").write_text(POLICY.format(name="p"))
    d = DaemonProc(workdir, sim_config(), wrapper=wrapper)
    d.start()
    try:
        d.wait_ready()
        assert d.metric("rebalancerd_journal_writable") == 1
        assert d.proc is not None
        ns = f"/proc/{d.proc.pid}/ns/mnt"
        fill = subprocess.run(
            ["nsenter", f"--mount={ns}", "dd", "if=/dev/zero", f"of={state}/fill", "bs=4k"],
            capture_output=True,
            text=True,
        )
        assert "No space left" in fill.stderr, fill.stderr
        d.control("drain", host="sim01")
        wait_for(
            lambda: any(
                r["reason"] == "journal_unwritable"
                for dec in d.status()["decisions"]
                for r in (dec.get("execution") or {}).get("skipped", [])
            ),
            60,
            "moves skipped for journal_unwritable",
        )
        assert d.hosts()["sim01"]["vms"] == 3
        assert d.metric("rebalancerd_journal_writable") == 0
        assert (d.metric("rebalancerd_migrations_started_total", reason="drain") or 0) == 0
        # space comes back: the next wave acts again
        subprocess.run(["nsenter", f"--mount={ns}", "rm", "-f", f"{state}/fill"], check=True)
        wait_for(lambda: d.hosts()["sim01"]["vms"] == 0, 60, "drain proceeds after cleanup")
        assert d.metric("rebalancerd_journal_writable") == 1
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
    finally:
        d.stop()
