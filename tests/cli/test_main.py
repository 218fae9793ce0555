"""The command line as a user meets it: one-line errors and exit codes, and the demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rebalancerd.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["snapshot", "--check", "/does/not/exist.json"], "no such file"),
        (["snapshot", "--check", "pyproject.toml"], "not valid JSON"),
        (["demo", "--duration", "0"], "--duration must be between"),
        (["demo", "--hosts", "1"], "--hosts must be between"),
    ],
)
def test_bad_input_gives_one_line_error_no_traceback(args: list[str], needle: str) -> None:
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rebalancerd: error:") and needle in lines[0]


def test_malformed_snapshot_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "hosts": [{"name": "h", "cores": "x"}]}))
    r = cli("snapshot", "--check", str(bad))
    assert r.returncode == 2 and "hosts.0.cores" in r.stderr and "Traceback" not in r.stderr


def test_snapshot_check_json_summary() -> None:
    r = cli("snapshot", "--check", "examples/snapshot-small.json", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["ok"] and doc["hosts"] == 4 and doc["vms"] == 24
    assert doc["hosts_by_state"] == {"active": 3, "maintenance": 1}


def test_no_command_prints_help_and_fails() -> None:
    r = cli()
    assert r.returncode == 2 and "usage: rebalancerd" in r.stderr


@pytest.mark.slow
def test_demo_balances_through_throttled_migrations() -> None:
    r = cli("demo", "--duration", "6", "--speed", "150", "--json", timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("migrations_succeeded", "migrations_failed", "imbalance_before", "imbalance_after"):
        assert key in summary
    assert summary["migrations_succeeded"] >= 1
    assert summary["imbalance_after"] < summary["imbalance_before"]
    assert summary["max_concurrency_seen"] <= summary["concurrency_limit"]
    assert summary["vms_lost"] == 0
    # progress went to stderr, so stdout is exactly the JSON line
    assert len(r.stdout.strip().splitlines()) == 1
    assert "cycle" in r.stderr
