"""The lab script itself: up, status, guests, fault helpers, and a teardown that leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import libvirt
import pytest

from tests.fixtures.lab import LAB_SCRIPT, Lab, load_lab_module, start_lab

pytestmark = pytest.mark.lab


def _lab_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, str(LAB_SCRIPT), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else {})


def _processes_of(prefix: str) -> list[int]:
    """PIDs in any cgroup of the lab (the lab's processes are exactly those)."""
    mod = load_lab_module()
    pids: set[int] = set()
    for cg in mod.leftovers(prefix)["cgroups"]:
        pids |= mod.cgroup_procs(Path(cg))
    return sorted(pids)


@pytest.fixture
def own_lab(libvirt_lab: Lab) -> Lab:
    """A second, short-lived 2-host lab next to the session one (they must not collide)."""
    try:
        return start_lab(2)
    except RuntimeError as exc:  # the session lab started, so this is a real failure
        pytest.fail(str(exc))


def test_up_status_guest_and_clean_teardown(own_lab: Lab, libvirt_lab: Lab) -> None:
    lab = own_lab
    try:
        assert lab.prefix != libvirt_lab.prefix
        assert [h.name for h in lab.hosts] == ["h1", "h2"]
        assert len({h.ip for h in lab.hosts}) == 2
        assert all(h.uri.startswith("qemu+unix:///system?socket=") for h in lab.hosts)
        assert all(h.migration_uri == f"qemu+tcp://{h.ip}/system" for h in lab.hosts)
        code, status = _lab_cli("status", "--dir", str(lab.dir))
        assert code == 0
        hosts = status["hosts"]
        assert isinstance(hosts, list)
        assert all(h["init_alive"] and h["libvirtd_pid"] and h["link_up"] for h in hosts)
        # a guest through the CLI, then a migration between the two daemons over their TCP link
        code, out = _lab_cli("define-guest", "--dir", str(lab.dir), "--host", "h2", "--name", "g1")
        assert code == 0, out
        assert lab.running_on("g1") == ["h2"]
        res = subprocess.run(
            ["virsh", "-c", lab.host("h2").uri, "migrate", "--live", "--p2p", "--persistent",
             "--undefinesource", "g1", lab.host("h1").migration_uri],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert lab.running_on("g1") == ["h1"]
        # each host sees only its own cgroup subtree and hostname
        leftovers = lab.leftovers()
        assert len(leftovers["netns"]) == 4  # two hosts + the bridge + the migration bridge
        assert _processes_of(lab.prefix)
    finally:
        problems = lab.teardown()
    assert problems == []
    assert lab.leftovers() == {"netns": [], "cgroups": []}
    assert _processes_of(lab.prefix) == []
    assert not lab.dir.exists()
    # the session lab is untouched
    assert all(libvirt_lab.libvirtd_running(h.name) for h in libvirt_lab.hosts)


def test_failed_up_cleans_up_after_itself(libvirt_lab: Lab) -> None:
    lab_dir = tempfile.mkdtemp(prefix="rbl-", dir="/tmp")
    before = load_lab_module().leftovers()
    code, out = _lab_cli(
        "up",
        "--hosts",
        "2",
        "--dir",
        lab_dir,
        env={"REBALANCERD_LAB_INJECT_FAILURE": "after-ready"},
    )
    assert code == 2 and "injected failure" in str(out.get("error"))
    assert load_lab_module().leftovers() == before  # only the session lab's names remain
    assert not Path(lab_dir).exists()


def test_refuses_a_lab_dir_in_use(libvirt_lab: Lab) -> None:
    code, out = _lab_cli("up", "--hosts", "2", "--dir", str(libvirt_lab.dir))
    assert code == 2 and "already exists" in str(out.get("error"))
    code, out = _lab_cli("status", "--dir", "/nonexistent/rbl")
    assert code == 2 and "no lab" in str(out.get("error"))


def test_fault_helpers(lab: Lab) -> None:
    lab.define_guest("h2", "f1", 64)
    pid = lab.kill_libvirtd("h2")
    assert pid > 1 and not lab.libvirtd_running("h2")
    with pytest.raises(libvirt.libvirtError):
        lab.guests("h2")  # the daemon is gone
    lab.restart_libvirtd("h2")
    assert lab.libvirtd_running("h2")
    assert lab.running_on("f1") == ["h2"]  # QEMU survived its daemon and is re-attached
    lab.cut_link("h2")
    code, status = _lab_cli("status", "--dir", str(lab.dir))
    hosts = {h["name"]: h for h in status["hosts"]}  # type: ignore[union-attr]
    assert code == 0 and not hosts["h2"]["link_up"] and hosts["h1"]["link_up"]
    lab.restore_link("h2")
