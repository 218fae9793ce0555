"""`rebalancerd plan` end to end on a snapshot file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rebalancerd.cli.main import main
from rebalancerd.files import dump_snapshot
from rebalancerd.sim.synthetic import skewed_snapshot


@pytest.fixture
def snap_file(tmp_path: Path) -> Path:
    path = tmp_path / "snap.json"
    dump_snapshot(skewed_snapshot(6, 50, 3, maintenance_hosts=1), path)
    return path


def test_plan_json_has_ordered_migrations_steps_and_stats(
    snap_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["plan", "--snapshot", str(snap_file), "--time-limit", "0.5", "--json"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    doc = json.loads(out[0])
    assert doc["migrations"], doc["stats"]
    for m in doc["migrations"]:
        assert {"vm", "source", "target", "reason"} <= set(m)
    assert sum(len(s) for s in doc["steps"]) == len(doc["migrations"])
    for key in ("objective", "bound", "status", "wall_s"):
        assert key in doc["stats"]
    # the maintenance host is drained first
    assert doc["migrations"][0]["reason_kind"] == "drain"


def test_plan_human_output_explains_and_summarises(
    snap_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text("apiVersion: rebalancerd/v1\nkind: Policy\nmode: drain\n")
    rc = main(["plan", "--snapshot", str(snap_file), "--policy", str(pol), "--time-limit", "0.5"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("step 1: ") and "drain: host" in lines[0]
    assert any("migration(s) in" in line and "mode drain" in line for line in lines)


def test_plan_bad_inputs_are_one_line_errors(
    snap_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--snapshot", str(tmp_path / "missing.json")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rebalancerd/v1\nkind: Policy\nmode: sideways\n")
    assert main(["plan", "--snapshot", str(snap_file), "--policy", str(bad)]) == 2
    assert main(["plan", "--snapshot", str(snap_file), "--time-limit", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("rebalancerd: error: ") for e in err)
