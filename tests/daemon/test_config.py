"""Daemon config: defaults, path resolution, one-line errors, reload diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from rebalancerd.daemon.config import ConfigError, DaemonConfig, diff, load_config, parse

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    cfg = parse({"simulate": True})
    assert cfg.metrics.address == "127.0.0.1:9477"
    assert cfg.control.socket == "/run/rebalancerd/control.sock"
    assert cfg.state_dir == "/var/lib/rebalancerd"
    assert cfg.control.group is None
    assert cfg.shutdown_deadline_s == 120.0


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "d.yaml"
    f.write_text(
        "inventory: inv.yaml\nstate_dir: ../state\npolicy_dir: /abs/policies\n"
        "control: {socket: ctl.sock}\nbroker: {url: 'mqtts://b:8883', ca_file: ca.pem}\n"
    )
    cfg = load_config(f)
    assert cfg.inventory == str(tmp_path / "etc" / "inv.yaml")
    assert cfg.state_dir == str(tmp_path / "state")
    assert cfg.policy_dir == "/abs/policies"
    assert cfg.control.socket == str(tmp_path / "etc" / "ctl.sock")
    assert cfg.broker.ca_file == tmp_path / "etc" / "ca.pem"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("inventory: x\nmetrics: {address: 'nope'}\n", "metrics.address"),
        ("inventory: x\nintervals: {plan_s: -1}\n", "intervals.plan_s"),
        ("inventory: x\nbogus: 1\n", "bogus"),
        ("state_dir: /x\n", "inventory: required"),
        ("inventory: x\ncontrol: {group: no-such-group-here}\n", "no such group"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("inventory: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_config_gives_one_line_error(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    msg = str(ei.value)
    assert needle in msg
    assert "\n" not in msg
    assert str(f) in msg


def test_inline_inventory_is_kept() -> None:
    cfg = parse({"inventory": {"hosts": [{"name": "hv1"}]}}, "<t>", Path("/etc"))
    assert cfg.inventory == {"hosts": [{"name": "hv1"}]}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "deploy" / "config" / "rebalancerd.example.yaml")
    assert isinstance(cfg, DaemonConfig)
    assert cfg.metrics.address.startswith("127.0.0.1:")


def test_reload_diff_separates_live_and_restart_fields() -> None:
    a = parse({"simulate": True})
    b = parse(
        {
            "simulate": True,
            "intervals": {"plan_s": 5},
            "log": {"level": "debug"},
            "metrics": {"address": "127.0.0.1:9999"},
            "broker": {"url": "mqtt://127.0.0.1:1884"},
        }
    )
    live, restart = diff(a, b)
    assert live == ["intervals.plan_s", "log.level"]
    assert restart == ["broker.url", "metrics.address"]
    assert diff(a, a) == ([], [])


def test_adaptive_concurrency_settings_reach_the_controller() -> None:
    from rebalancerd.daemon.wiring import adaptive_concurrency
    from rebalancerd.execution.adaptive import TOTAL

    section = {"start_cap": 1, "trigger_fraction": 0.5, "history_s": 60}
    adaptive = adaptive_concurrency(parse({"simulate": True, "adaptive": section}))
    assert adaptive.cap(TOTAL, 10) == 1  # a fresh cluster starts at start_cap
    assert (adaptive.trigger_fraction, adaptive.history_s) == (0.5, 60.0)
    assert adaptive_concurrency(parse({"simulate": True})).cap(TOTAL, 10) == 2
    off = adaptive_concurrency(parse({"simulate": True, "adaptive": {"slow_start": False}}))
    assert off.cap(TOTAL, 10) == 10


def test_adaptive_start_cap_must_be_positive() -> None:
    with pytest.raises(ConfigError) as ei:
        parse({"simulate": True, "adaptive": {"start_cap": 0}})
    assert "adaptive.start_cap" in str(ei.value)


def test_telemetry_settings_reach_the_collector() -> None:
    from rebalancerd.daemon.wiring import collector_settings

    section = {"history_len": 240, "ewma_alpha": 1.0, "rate_per_s": 5, "rate_burst": 50}
    cfg = parse({"inventory": "x", "telemetry": {**section, "max_vms_per_host": 64}})
    s = collector_settings(cfg)
    assert (s.history_len, s.ewma_alpha, s.rate_per_s, s.rate_burst) == (240, 1.0, 5.0, 50.0)
    assert s.max_vms_per_host == 64 and s.stale_after_s == cfg.intervals.stale_after_s
    assert collector_settings(parse({"inventory": "x"})).history_len == 60
    with pytest.raises(ConfigError) as ei:
        parse({"inventory": "x", "telemetry": {"rate_burst": 0.5}})
    assert "telemetry.rate_burst" in str(ei.value)
