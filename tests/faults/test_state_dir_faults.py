"""Issue 9 fault: the state directory fills up, then turns read-only, under a running daemon on
the lab. The daemon must refuse to migrate rather than migrate without its journal.

The daemon runs in its own mount namespace (`unshare --mount`, private propagation: nothing
leaks into the machine's mounts, and everything vanishes with the process) where its state
directory is a 2 MiB tmpfs created for it; a second, writable view of the same tmpfs lets the
test fill and free it. Faults, while a drain is pending:

1. the tmpfs is filled to ENOSPC: no migration starts, `journal_writable` 0, a
   `journal_unwritable` log line saying the disk is full, moves skipped as `journal_unwritable`;
2. the space is freed but the state directory is bind-mounted read-only over itself (new files
   cannot be created there, as on a file system remounted read-only: SQLite cannot create its
   rollback journal): still no migration;
3. the read-only mount is removed: the drain proceeds, each VM moves exactly once, the journal
   records every move and `journal_writable` returns to 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.faults.helpers import (
    DaemonProc,
    JournalReader,
    LabAgents,
    LibvirtEvents,
    assert_each_runs_once,
    lab_daemon,
    metric,
    placement,
    sees_vms,
    skipped_reasons,
    started_moves,
    wait_cycles,
    wait_for,
)

pytestmark = [pytest.mark.fault]

VMS = ["sd-a", "sd-b"]

POLICY = """\
apiVersion: rebalancerd/v1
kind: Policy
name: state-dir
mode: drain
limits:
  cooldown_s: 0
  max_concurrent: 2
  max_per_source: 2
  max_per_target: 2
"""


def _in_ns(pid: int, script: str) -> None:
    """Run a shell snippet in the daemon's mount namespace."""
    r = subprocess.run(
        ["nsenter", "--target", str(pid), "--mount", "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, f"{script}: {r.stderr}"


def _fill(path: Path) -> int:
    """Write zeros to `path` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                n = f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
            written += n or 0
            if not n:
                break
    return written


def _refusals(d: Any, since: int) -> list[dict[str, Any]]:
    return [e for e in d.log_events()[since:] if e.get("event") == "journal_unwritable"]


@pytest.mark.lab
@pytest.mark.mqtt
def test_full_then_read_only_state_dir_refuses_to_act(
    lab: Any, mosquitto_broker: Any, workdir: Path
) -> None:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.fail("unshare/nsenter (util-linux) missing")
    h1 = lab.hosts[0].name
    for vm in VMS:
        lab.define_guest(h1, vm, 64)
    state = workdir / "state"
    rw = workdir / "state-rw"
    wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-ec",
        f'mkdir -p "{state}" "{rw}"; mount -t tmpfs -o size=2m rbd-fault-state "{state}"; '
        f'mount --bind "{state}" "{rw}"; exec "$0" "$@"',
    ]
    events = LibvirtEvents(lab)
    agents = LabAgents(workdir, lab, mosquitto_broker.url)
    d = lab_daemon(workdir, lab, mosquitto_broker.url, POLICY, wrapper=wrapper)
    d.start()
    try:
        d.wait_ready()
        assert d.proc is not None
        pid = d.proc.pid
        view = Path(f"/proc/{pid}/root") / str(rw).lstrip("/")  # the daemon's tmpfs, from here
        journal = JournalReader(rw, ns_pid=pid)
        wait_for(lambda: sees_vms(d, 2), 60, "telemetry from all agents")
        assert (view / "journal.sqlite3").exists()
        assert not (state / "journal.sqlite3").exists(), "the tmpfs leaked out of the namespace"
        assert d.status()["daemon"]["journal_writable"] is True
        assert metric(d, "rebalancerd_journal_writable") == 1

        # -- 1. disk full --------------------------------------------------------------------
        filled = _fill(view / "filler")
        assert filled > 0
        mark = len(d.log_events())
        res = d.control("drain", host=h1)
        assert sorted(res["vms"]) == VMS
        assert "not persisted" in res.get("warning", ""), res  # drained.json could not be saved
        wait_for(lambda: _refusals(d, mark), 30, "a journal_unwritable log line")
        wait_for(lambda: "journal_unwritable" in skipped_reasons(d), 30, "moves skipped: journal")
        wait_cycles(d, 2)
        # the line is there and says what is refused (its cause: see the sim test below)
        assert all(e.get("error") for e in _refusals(d, mark)), _refusals(d, mark)
        assert metric(d, "rebalancerd_journal_writable") == 0
        assert d.status()["daemon"]["journal_writable"] is False
        assert metric(d, "rebalancerd_migrations_skipped_total", reason="journal_unwritable") > 0
        assert not started_moves(d)
        assert metric(d, "rebalancerd_migrations_started_total", reason="drain") == 0
        assert all(placement(lab, [vm])[vm].running == [h1] for vm in VMS)
        assert d.proc.poll() is None

        # -- 2. space back, but read-only ------------------------------------------------------
        _in_ns(pid, f'mount --bind "{state}" "{state}"; mount -o remount,bind,ro "{state}"')
        (view / "filler").unlink()
        mark = len(d.log_events())
        wait_cycles(d, 3)
        assert _refusals(d, mark), "no journal_unwritable line while read-only"
        assert metric(d, "rebalancerd_journal_writable") == 0
        assert d.status()["daemon"]["journal_writable"] is False
        assert not started_moves(d)
        assert all(placement(lab, [vm])[vm].running == [h1] for vm in VMS)
        assert journal.moves() == [], "a move was journaled while the journal was unwritable"

        # -- 3. healed: the drain proceeds, exactly once per VM ----------------------------------
        _in_ns(pid, f'umount "{state}"')
        wait_for(
            lambda: all(placement(lab, [vm])[vm].running not in ([], [h1]) for vm in VMS),
            90,
            f"{h1} drained once the journal is writable",
            interval=0.3,
        )
        wait_for(lambda: not d.status()["in_flight"], 30, "no migration in flight")
        where = assert_each_runs_once(lab, VMS)
        moves = journal.moves()
        assert {m["vm"]: (m["state"], m["target"]) for m in moves} == {
            vm: ("succeeded", where[vm]) for vm in VMS
        }, moves
        assert len(moves) == len(VMS)
        departures = events.departures()
        assert {vm: departures[vm] for vm in VMS} == {vm: 1 for vm in VMS}
        assert metric(d, "rebalancerd_journal_writable") == 1
        assert d.status()["daemon"]["journal_writable"] is True
        assert metric(d, "rebalancerd_migrations_started_total", reason="drain") == len(VMS)
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0, d.log_tail()
    finally:
        d.stop()
        agents.stop()
        events.close()
        with contextlib.suppress(OSError):
            os.rmdir(rw)


SIM_POLICY = POLICY.replace("name: state-dir", "name: state-dir-sim")


def test_journal_refusal_log_line_says_why_and_where(workdir: Path) -> None:
    """Same full tmpfs state directory, against the simulated cluster (no lab needed): the
    refusal must be a clear log line an operator can act on: what (the journal path) and why
    (the disk is full), and `status` must show the cause while it lasts."""
    state = workdir / "state"
    rw = workdir / "state-rw"
    wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-ec",
        f'mkdir -p "{state}" "{rw}"; mount -t tmpfs -o size=2m rbd-fault-state "{state}"; '
        f'mount --bind "{state}" "{rw}"; exec "$0" "$@"',
    ]
    (workdir / "policies").mkdir()
    (workdir / "policies" / "main.yaml").write_text(SIM_POLICY)
    cfg = {
        "simulate": True,
        "sim": {"hosts": 3, "vms_per_host": 2, "speed": 10.0, "seed": 1},
        "intervals": {"plan_s": 1.0, "max_data_age_s": 60.0},
        "planner": {"time_limit_s": 1.0},
    }
    d = DaemonProc(workdir, cfg, watchdog_usec=None, wrapper=wrapper)
    d.start()
    try:
        d.wait_ready()
        assert d.proc is not None
        view = Path(f"/proc/{d.proc.pid}/root") / str(rw).lstrip("/")
        _fill(view / "filler")
        mark = len(d.log_events())
        d.control("drain", host="sim02")
        wait_for(lambda: _refusals(d, mark), 30, "a journal_unwritable log line")
        assert d.hosts()["sim02"]["vms"] == 2  # refused: nothing moved
        line = _refusals(d, mark)[0]
        assert "full" in line["error"], line
        assert "journal.sqlite3" in line["error"] or "state" in str(line), line
        assert "full" in (d.status()["daemon"]["journal_error"] or ""), d.status()["daemon"]
    finally:
        d.stop()
