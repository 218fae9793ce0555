"""Issue 14: hostile input to the CLI ends in one line `rebalancerd: error: ...` and exit 2:
binary files, special files, a seed beyond the solver's 32-bit range, `run --check` of configs
that failed only at start (every problem reported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rebalancerd.files import dump_snapshot
from rebalancerd.planner.seed import MAX_SEED, solver_seed
from rebalancerd.sim.synthetic import skewed_snapshot

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rebalancerd.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def error_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("rebalancerd: error:") for ln in lines), r.stderr
    return lines


def one_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = error_lines(r)
    assert len(lines) == 1 and needle in lines[0], lines


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    f = tmp_path / "bin.yaml"
    f.write_bytes(bytes(range(256)) * 4)
    return f


def test_policy_schema_check_of_binary_and_special_files(binary: Path, tmp_path: Path) -> None:
    one_error(cli("policy", "schema", "--check", str(binary)), "not UTF-8")
    one_error(cli("policy", "schema", "--check", "/dev/zero"), "expected a regular file")
    os.mkfifo(tmp_path / "fifo.json")
    one_error(cli("policy", "schema", "--check", str(tmp_path / "fifo.json")), "is a FIFO")


def test_validate_binary_and_special_files(binary: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    r = cli("validate", str(binary), "/dev/zero", str(tmp_path / "fifo.yaml"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    out = r.stdout.splitlines()
    assert len(out) == 3
    assert "not UTF-8" in out[0] and "device" in out[1] and "FIFO" in out[2]


@pytest.mark.parametrize("seed", [str(MAX_SEED + 1), str(10**30), "-1"])
def test_plan_refuses_a_seed_beyond_32_bits(tmp_path: Path, seed: str) -> None:
    snap = tmp_path / "snap.json"
    dump_snapshot(skewed_snapshot(4, 12, 3), snap)
    one_error(cli("plan", "--snapshot", str(snap), "--seed", seed), "--seed")
    ok = cli("plan", "--snapshot", str(snap), "--seed", str(MAX_SEED), "--time-limit", "0.5")
    assert ok.returncode == 0, ok.stderr


def test_solver_seed_is_the_identity_on_the_accepted_range() -> None:
    assert [solver_seed(s) for s in (0, 1, 12345, MAX_SEED)] == [0, 1, 12345, MAX_SEED]
    assert 0 <= solver_seed(MAX_SEED + 7) <= MAX_SEED  # an LNS round past the top stays in range


def _config(tmp_path: Path, **extra: str) -> Path:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(
        "hosts:\n  - {name: h1, libvirt_uri: 'qemu+tcp://10.0.0.1/system', cores: 8, "
        "memory_mib: 16384}\n"
    )
    lines = [f"inventory: {inv}", f"state_dir: {tmp_path / 'state'}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    f = tmp_path / "rebalancerd.yaml"
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"cluster": "''"}, "cluster: must not be empty"),
        ({"cluster": "'a/#/+'"}, "must not contain '#', '+', '/'"),
        ({"broker": "{password_file: /nonexistent/pw}"}, "broker.password_file"),
        ({"broker": "{url: 'mqtts://127.0.0.1:8883', ca_file: /tmp}"}, "broker.ca_file"),
        ({"planner": f"{{seed: {MAX_SEED + 1}}}"}, "planner.seed"),
        ({"planner": "{seed: true}"}, "planner.seed"),
    ],
)
def test_run_check_reports_what_fails_at_start(
    tmp_path: Path, extra: dict[str, str], needle: str
) -> None:
    cfg = _config(tmp_path, **extra)
    r = cli("run", "--config", str(cfg), "--check")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert any(needle in ln for ln in error_lines(r)), r.stderr


def test_run_check_reports_every_problem_at_once(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("not a certificate\n")
    cfg = _config(
        tmp_path,
        broker=f"{{url: 'mqtts://127.0.0.1:8883', password_file: {tmp_path}/pw, ca_file: {pem}}}",
    )
    r = cli("run", "--config", str(cfg), "--check")
    lines = error_lines(r)
    assert r.returncode == 2 and len(lines) == 2, lines
    assert "broker.password_file" in lines[0] and "broker.ca_file" in lines[1]
    r = cli("run", "--config", str(cfg), "--check", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["ok"] is False and len(doc["problems"]) == 2


def test_run_and_check_of_special_config_files_do_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for args in (["--check"], []):
        one_error(cli("run", "--config", str(fifo), *args, timeout=30), "is a FIFO")
        one_error(cli("run", "--config", "/dev/zero", *args, timeout=30), "regular file")


def test_fifo_inventory_or_snapshot_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"inventory: {fifo}\nstate_dir: {tmp_path / 'state'}\n")
    r = cli("run", "--config", str(cfg), "--check", timeout=30)
    assert r.returncode == 2 and any("inventory: " in ln and "FIFO" in ln for ln in error_lines(r))
    cfg.write_text(
        f"simulate: true\nsim: {{snapshot: {fifo}}}\nstate_dir: {tmp_path / 'state'}\n"
        f"policy_dir: {tmp_path}\ncontrol: {{socket: {tmp_path / 'ctl.sock'}}}\n"
        "metrics: {enabled: false}\n"
    )
    r = cli("run", "--config", str(cfg), "--check", timeout=30)
    assert r.returncode == 2 and any("sim.snapshot" in ln for ln in error_lines(r))
    r = cli("run", "--config", str(cfg), timeout=30)  # the daemon refuses at start, no hang
    assert r.returncode != 0 and "sim.snapshot" in r.stderr and "Traceback" not in r.stderr
