"""Hostile numbers and files: every input file the program reads (snapshot, inventory, agent config,
traces) ends in the one-line ``rebalancerd: error: ...`` exit 2, never a Python exception (exit 1)
nor unbounded memory; values that used to crash the planner or print Infinity are refused at input.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from rebalancerd import snapshot as codec
from rebalancerd.cli.main import main
from rebalancerd.domain.model import ClusterSnapshot, Host, PowerCurve, Vm
from rebalancerd.files import InputFileError, read_bounded, read_bounded_text
from rebalancerd.planner import make_plan
from rebalancerd.policy.schema import default_policy
from rebalancerd.telemetry.inventory import InventoryError, inventory_from_mapping, load_inventory

BINARY = b"\xff\xfe\x00\x01\x80garbage\x00"
BASE: dict[str, Any] = {
    "version": 1,
    "hosts": [
        {"name": "h1", "cores": 8, "memory_mib": 16384},
        {"name": "h2", "cores": 8, "memory_mib": 16384},
    ],
    "vms": [
        {"name": "a", "host": "h1", "vcpus": 2, "memory_mib": 1024, "cpu_used": 1.0},
        {"name": "b", "host": "h1", "vcpus": 2, "memory_mib": 1024, "cpu_used": 1.0},
    ],
}


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("rebalancerd: error: ") and needle in lines[0], lines[0]
    assert "Error:" not in lines[0].removeprefix("rebalancerd: error: ")[:40], lines[0]


def snapshot_file(tmp_path: Path, mutate: Any) -> Path:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    p = tmp_path / "snap.json"
    p.write_text(json.dumps(doc))
    return p


# -- bounded reads ----------------------------------------------------------------------------


@pytest.mark.timeout(30)  # a hang guard: an unbounded read of /dev/zero never returns
def test_read_bounded_reads_at_most_the_cap_from_an_endless_file() -> None:
    with pytest.raises(InputFileError, match="file too large"):
        read_bounded("/dev/zero", 1 << 20)


def test_read_bounded_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert read_bounded(tmp_path / "f", 3) == b"abc"
    with pytest.raises(InputFileError, match="file too large"):
        read_bounded(tmp_path / "f", 2)
    with pytest.raises(InputFileError, match="no such file"):
        read_bounded(tmp_path / "missing", 10)
    with pytest.raises(InputFileError, match="is a directory"):
        read_bounded(tmp_path, 10)
    (tmp_path / "b").write_bytes(BINARY)
    with pytest.raises(InputFileError, match="not UTF-8 text"):
        read_bounded_text(tmp_path / "b", 100)


def test_snapshot_from_dev_zero_is_refused_without_reading_it_all(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "MAX_SNAPSHOT_BYTES", 4 << 20)
    one_line_error(capsys, ["plan", "--snapshot", "/dev/zero"], "file too large")
    one_line_error(capsys, ["snapshot", "--check", "/dev/zero"], "file too large")


def test_inventory_and_agent_config_from_dev_zero_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(InventoryError, match="file too large"):
        load_inventory("/dev/zero")
    one_line_error(capsys, ["agent", "--config", "/dev/zero", "--once"], "file too large")
    one_line_error(capsys, ["simulate", "--trace", "csv:/dev/zero"], "file too large")


# -- binary and deeply nested files -----------------------------------------------------------


def test_binary_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = tmp_path / "binary"
    b.write_bytes(BINARY)
    with pytest.raises(InventoryError, match="not UTF-8 text"):
        load_inventory(b)
    one_line_error(capsys, ["agent", "--config", str(b), "--once"], "not UTF-8 text")
    one_line_error(capsys, ["simulate", "--trace", f"csv:{b}"], "not UTF-8 text")
    one_line_error(capsys, ["snapshot", "--check", str(b)], "not valid JSON")
    pl = tmp_path / "pl"
    pl.mkdir()
    (pl / "vm1").write_bytes(BINARY)
    one_line_error(capsys, ["simulate", "--trace", f"planetlab:{pl}"], "not UTF-8 text")
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"timestamp,vm,cpu\n1,a,5\x00\n")
    one_line_error(capsys, ["simulate", "--trace", f"csv:{nul}"], str(nul))


def test_deeply_nested_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep_json = tmp_path / "deep.json"
    deep_json.write_text('{"version": 1, "hosts": ' + "[" * 200_000 + "]" * 200_000 + "}")
    one_line_error(capsys, ["plan", "--snapshot", str(deep_json)], "nested too deeply")
    deep_yaml = tmp_path / "deep.yaml"
    deep_yaml.write_text("host: " + "[" * 20_000 + "]" * 20_000 + "\n")
    one_line_error(capsys, ["agent", "--config", str(deep_yaml), "--once"], "nested too deeply")
    with pytest.raises(InventoryError, match="nested too deeply"):
        load_inventory(deep_yaml)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("timestamp,vm,cpu\n0,a,5\n1e300,a,5\n", "out of range"),
        ("timestamp,vm,cpu\n0,a,5\ninf,a,5\n", "out of range"),
        ("timestamp,vm,cpu\nnan,a,5\n", "out of range"),
        ("timestamp,vm,cpu\n0,a,5\n1e10,a,5\n", "cells"),
        ("timestamp,vm,cpu,memory\n0,a,5,inf\n", "memory inf"),
        ("timestamp,vm,cpu,memory\n0,a,5,1e300\n", "memory 1e+300"),
    ],
)
def test_hostile_numbers_in_a_csv_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    p = tmp_path / "t.csv"
    p.write_text(content)
    one_line_error(capsys, ["simulate", "--trace", f"csv:{p}", "--hosts", "2"], message)


# -- hostile numbers in a snapshot ------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d["vms"][0].update(cpu_used=1e300), "vms.0.cpu_used"),
        (lambda d: d["vms"][0].update(cpu_history=[1e300]), "vms.0.cpu_history.0"),
        (lambda d: d["vms"][0].update(memory_mib=2**63), "vms.0.memory_mib"),
        (lambda d: d["hosts"][0].update(memory_mib=2**70), "hosts.0.memory_mib"),
        (lambda d: d["vms"][0].update(dirty_rate_mib_s=1e308), "vms.0.dirty_rate_mib_s"),
        (lambda d: d["vms"][0].update(local_disk_mib=10**30), "vms.0.local_disk_mib"),
        (lambda d: d["hosts"][0].update(power_curve=[0, 1e308]), "hosts.0.power_curve.1"),
        (lambda d: d.update(taken_at=1e300), "taken_at"),
        (
            lambda d: d.update(
                rules={"pins": [{"vm": "a", "hosts": ["h2"], "hard": False, "weight": 1e308}]}
            ),
            "rules.pins.0.weight",
        ),
        (lambda d: d["hosts"][0].update(speed=1e-300), "rounds to 0 millicores"),
    ],
)
def test_hostile_numbers_in_a_snapshot_are_refused_at_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, where: str
) -> None:
    """Each of these used to crash the planner (OverflowError, ZeroDivisionError, an OR-Tools
    TypeError: exit 1) or print a plan with Infinity."""
    p = snapshot_file(tmp_path, mutate)
    one_line_error(capsys, ["plan", "--snapshot", str(p), "--json"], where)


def test_largest_accepted_numbers_plan_to_standard_json() -> None:
    """At the input bounds the planner neither overflows nor produces non-finite numbers."""
    doc = copy.deepcopy(BASE)
    doc["hosts"][0].update(cores=100_000, memory_mib=codec.MAX_MIB, power_curve=[0, 1e7])
    doc["vms"][0].update(
        vcpus=10_000,
        memory_mib=codec.MAX_MIB,
        memory_used_mib=codec.MAX_MIB,
        cpu_used=codec.MAX_CORES_USED,
        cpu_history=[codec.MAX_CORES_USED] * 20,
        dirty_rate_mib_s=codec.MAX_DIRTY_MIB_S,
        local_disk_mib=codec.MAX_MIB,
    )
    doc["taken_at"] = codec.MAX_EPOCH_S
    doc["rules"] = {
        "anti_affinity": [{"name": "g", "vms": ["a", "b"], "hard": False, "weight": 1e6}],
        "pins": [{"vm": "b", "hosts": ["h2"], "hard": False, "weight": 1e6}],
    }
    snap = codec.loads(json.dumps(doc))
    plan = make_plan(snap, default_policy(), now=0.0, time_limit_s=2.0, seed=0)
    text = json.dumps(plan.to_dict(), allow_nan=False)
    assert "Infinity" not in text and "NaN" not in text


def test_plan_json_of_a_dirty_rate_that_used_to_give_infinity(tmp_path: Path) -> None:
    """dirty_rate_mib_s 1e308 made the objective Infinity (non-standard JSON); now refused, and
    the largest accepted value plans to standard JSON."""
    with pytest.raises(codec.SnapshotError, match="dirty_rate_mib_s"):
        codec.loads(json.dumps(_with_dirty(1e308)))
    snap = codec.loads(json.dumps(_with_dirty(codec.MAX_DIRTY_MIB_S)))
    plan = make_plan(snap, default_policy(), now=0.0, time_limit_s=2.0, seed=0)
    stats = plan.to_dict()["stats"]
    assert all(math.isfinite(v) for v in stats.values() if isinstance(v, float))
    json.dumps(plan.to_dict(), allow_nan=False)


def _with_dirty(rate: float) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["vms"][0]["dirty_rate_mib_s"] = rate
    return doc


# -- domain validation ------------------------------------------------------------------------


def test_host_whose_capacity_rounds_to_zero_is_rejected() -> None:
    with pytest.raises(ValueError, match="rounds to 0 millicores"):
        Host("h", cores=1, memory_mib=1, speed=1e-4)
    assert Host("h", cores=1, memory_mib=1, speed=1e-3).cpu_capacity_mc == 1
    with pytest.raises(ValueError, match="speed must be finite"):
        Host("h", cores=1, memory_mib=1, speed=math.inf)
    with pytest.raises(ValueError, match="finite"):
        Vm("v", "h", 1, 1, dirty_rate_mib_s=math.nan)
    with pytest.raises(ValueError, match="finite"):
        PowerCurve((0.0, math.inf))
    inv = {"name": "h1", "libvirt_uri": "qemu:///system", "cores": 1, "memory_mib": 1}
    with pytest.raises(InventoryError, match="rounds to 0 millicores"):
        inventory_from_mapping([inv | {"speed": 1e-300}])
    with pytest.raises(InventoryError, match="memory_mib"):
        inventory_from_mapping([inv | {"memory_mib": 2**63}])


@pytest.mark.timeout(120)  # a hang guard, not a speed target: the old check took minutes
def test_duplicate_name_check_is_linear() -> None:
    """60,000 VMs, every name twice: the old check (list.count per name) was quadratic."""
    hosts = (Host("h1", 8, 1024),)
    vms = tuple(Vm(f"v{i % 30_000}", "h1", 1, 1) for i in range(60_000))
    with pytest.raises(ValueError, match="duplicate vm names: v0, v1, v10, v100"):
        ClusterSnapshot(hosts, vms)
    many_hosts = tuple(Host(f"h{i % 30_000}", 1, 1) for i in range(60_000))
    with pytest.raises(ValueError, match="duplicate host names"):
        ClusterSnapshot(many_hosts, ())


@pytest.mark.parametrize("kind", ["binary", "deep", "dev_zero", "tiny_speed"])
def test_hostile_inventory_file_through_run_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """`rebalancerd run --check` reads the inventory file named by the daemon config."""
    inv = tmp_path / "inventory.yaml"
    if kind == "binary":
        inv.write_bytes(BINARY)
        needle = "not UTF-8 text"
    elif kind == "deep":
        inv.write_text("hosts: " + "[" * 20_000 + "]" * 20_000 + "\n")
        needle = "nested too deeply"
    elif kind == "dev_zero":
        inv = Path("/dev/zero")
        needle = "expected a regular file"  # refused before a byte is read
    else:
        inv.write_text(
            "hosts:\n  - {name: h1, libvirt_uri: 'qemu:///system', cores: 1, memory_mib: 1,"
            " speed: 1.0e-300}\n"
        )
        needle = "rounds to 0 millicores"
    cfg = tmp_path / "rebalancerd.yaml"
    cfg.write_text(f"inventory: {inv}\nstate_dir: {tmp_path / 'state'}\n")
    one_line_error(capsys, ["run", "--check", "--config", str(cfg)], needle)
