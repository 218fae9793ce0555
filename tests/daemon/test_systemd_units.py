"""The shipped unit files pass `systemd-analyze verify` and carry the required settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ["rebalancerd.service", "rebalancerd-agent.service"]


def _binary() -> str:
    exe = Path(sys.executable).parent / "rebalancerd"
    found = str(exe) if exe.exists() else shutil.which("rebalancerd")
    assert found, "the rebalancerd console script is not installed"
    return found


def _install_copies(tmp_path: Path) -> list[Path]:
    """Copies with ExecStart pointing at the rebalancerd that exists here (verify checks it)."""
    out = []
    for name in UNITS:
        text = (ROOT / "systemd" / name).read_text()
        assert "/usr/bin/rebalancerd " in text
        p = tmp_path / name
        p.write_text(text.replace("/usr/bin/rebalancerd ", _binary() + " "))
        out.append(p)
    return out


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze missing: install the Debian package systemd"
    return subprocess.run(
        [tool, "verify", *map(str, paths)], capture_output=True, text=True, timeout=60
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    r = _verify(_install_copies(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not r.stderr.strip(), r.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """Guard against a verify that passes anything: a typo'd directive must fail."""
    [daemon, _] = _install_copies(tmp_path)
    daemon.write_text(daemon.read_text().replace("Type=notify", "Type=notifyy"))
    r = _verify([daemon])
    assert r.returncode != 0 or "notifyy" in r.stderr


def _service(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for raw in (ROOT / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize("name", UNITS)
def test_required_settings(name: str) -> None:
    s = _service(name)
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] and s["WatchdogSec"][0] not in ("0", "")
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    for key, want in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert s.get(key) == [want], f"{name}: {key}"
    assert s["User"][0] not in ("root", "0")


def test_daemon_can_write_only_its_state_directory() -> None:
    s = _service("rebalancerd.service")
    assert s["ReadWritePaths"] == ["/var/lib/rebalancerd"]
    assert s["StateDirectory"] == ["rebalancerd"]
    # the stop timeout must exceed the default in-flight deadline
    from rebalancerd.daemon.config import DaemonConfig

    stop = float(s["TimeoutStopSec"][0].rstrip("s"))
    assert stop > DaemonConfig().shutdown_deadline_s
