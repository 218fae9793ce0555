"""`rebalancerd status` against a real (simulated-cluster) daemon, the way an operator runs it:
into `head` through a real pipe (no traceback), on a terminal (colour), with NO_COLOR (none)."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.helpers import REBALANCERD, DaemonProc

POLICY = "apiVersion: rebalancerd/v1\nkind: Policy\nname: steady\nmode: balance\n"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProc]:
    d = Path(tempfile.mkdtemp(prefix="rbd-st-", dir="/tmp"))
    (d / "policies").mkdir()
    (d / "policies" / "main.yaml").write_text(POLICY)
    proc = DaemonProc(
        d,
        {
            "simulate": True,
            "sim": {"hosts": 40, "vms_per_host": 2, "speed": 10.0, "seed": 3},
            "intervals": {"plan_s": 5.0, "max_data_age_s": 60.0},
            "planner": {"time_limit_s": 1.0},
        },
    )
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(d, ignore_errors=True)


def _on_pty(argv: list[str], env: dict[str, str]) -> str:
    """Run `argv` with stdout on a pseudo-terminal; what it printed."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not b:
            break
        chunks.append(b)
    os.close(master)
    assert p.wait(timeout=60) == 0
    return b"".join(chunks).decode()


@pytest.mark.slow
def test_status_into_head_prints_no_traceback(daemon: DaemonProc) -> None:
    r = subprocess.run(
        ["bash", "-c", f"{REBALANCERD} status --socket {daemon.socket} | head -n 1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.startswith("rebalancerd "), r.stdout
    assert r.stderr == "", r.stderr
    # the reader gone before the first write: a closed pipe for certain
    p = subprocess.Popen(
        [REBALANCERD, "status", "--socket", daemon.socket],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == "", err


@pytest.mark.slow
def test_status_colour_on_a_terminal_unless_no_color(daemon: DaemonProc) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    argv = [REBALANCERD, "status", "--socket", daemon.socket]
    coloured = _on_pty(argv, env)
    assert "\x1b[32m" in coloured, coloured  # "healthy" / active hosts in green
    plain = _on_pty(argv, env | {"NO_COLOR": "1"})
    assert "\x1b[" not in plain and "hosts:" in plain
    piped = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert "\x1b[" not in piped.stdout and "hosts:" in piped.stdout
