"""SIGHUP re-reads the config file, but command-line overrides (--dry-run) stay in force: a
daemon started with --dry-run never starts acting because of a reload."""

from __future__ import annotations

from pathlib import Path

import yaml

from rebalancerd.adapters.systemd import NullNotifier
from rebalancerd.daemon.config import load_config
from rebalancerd.daemon.daemon import Daemon


async def test_dry_run_override_survives_a_reload(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    doc = {
        "simulate": True,
        "sim": {"hosts": 2, "vms_per_host": 1},
        "state_dir": str(tmp_path / "state"),
        "policy_dir": str(tmp_path / "policies"),
        "metrics": {"enabled": False},
        "control": {"socket": str(tmp_path / "ctl.sock")},
        "intervals": {"plan_s": 30},
        "dry_run": False,
    }
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path).model_copy(update={"dry_run": True})
    daemon = Daemon(
        cfg, config_path=str(path), notifier=NullNotifier(), overrides={"dry_run": True}
    )
    await daemon.start()
    try:
        assert daemon.parts.executor.dry_run is True
        doc["intervals"] = {"plan_s": 7}
        path.write_text(yaml.safe_dump(doc))
        out = await daemon.reload()
        assert out["config"]["ok"] is True
        assert out["config"]["applied"] == ["intervals.plan_s"]
        assert daemon.parts.loop.interval_s == 7
        assert daemon.parts.executor.dry_run is True
        assert daemon.cfg.dry_run is True
        # a change that needs a restart is reported, not applied
        doc["state_dir"] = str(tmp_path / "elsewhere")
        path.write_text(yaml.safe_dump(doc))
        out = await daemon.reload()
        assert out["config"]["needs_restart"] == ["state_dir"]
        assert daemon.cfg.state_dir == str(tmp_path / "state")
        # a config that no longer parses keeps the running one
        path.write_text("intervals: {plan_s: -5}\nsimulate: true\n")
        out = await daemon.reload()
        assert out["config"]["ok"] is False and "plan_s" in out["config"]["error"]
        assert daemon.parts.loop.interval_s == 7
    finally:
        await daemon.close()
