"""Alert rules: promtool check + promtool unit tests, every alert tested firing, every metric
name used in rules and the dashboard declared in the catalog."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rebalancerd.observability import METRICS

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "rebalancerd.json"
REQUIRED = {
    "RebalancerdMigrationFailuresHigh",
    "RebalancerdMigrationStorm",
    "RebalancerdTelemetryStale",
    "RebalancerdPolicyReloadFailed",
    "RebalancerdImbalanceHigh",
    "RebalancerdDown",
    "RebalancerdVmLost",
    "RebalancerdJournalNotWritable",
    "RebalancerdVmRunningOnTwoHosts",
    "RebalancerdMigrationUnresolved",
    "RebalancerdControlLoopStalled",
    "RebalancerdControlLoopFailing",
    "RebalancerdRestarting",
    "RebalancerdBrokerDisconnected",
    "RebalancerdMigrationStuck",
    "RebalancerdDrainStuck",
    "RebalancerdHostCircuitOpen",
    "RebalancerdDowntimeOverLimit",
}
OPERATIONS = ROOT / "docs" / "operations.md"


def _promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: install the Debian package prometheus"
    return tool


def _known_series() -> set[str]:
    out = set()
    for name, spec in METRICS.items():
        full = "rebalancerd_" + name
        out.add(full)
        if spec.type == "histogram":
            out |= {full + "_bucket", full + "_sum", full + "_count"}
    return out


def _names_in(expr: str) -> set[str]:
    return set(re.findall(r"\brebalancerd_[a-z0-9_]+", expr))


def test_promtool_check_rules() -> None:
    r = subprocess.run(
        [_promtool(), "check", "rules", str(PROM / "alerts.yml")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    r = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yml"],
        cwd=PROM,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_rule_tests_fail_when_a_threshold_is_broken(tmp_path: Path) -> None:
    """The unit tests can fail: raise the storm threshold and they must notice."""
    rules = (PROM / "alerts.yml").read_text()
    assert "> 50" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("> 50", "> 5000"))
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    r = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "RebalancerdMigrationStorm" in r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_uses_declared_metrics() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts.keys() >= REQUIRED
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    fired = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert fired == set(alerts), f"alerts never tested firing: {set(alerts) - fired}"
    known = _known_series()
    for name, expr in alerts.items():
        unknown = _names_in(expr) - known
        assert not unknown, f"{name} uses undeclared metrics {unknown}"


def test_every_alert_is_tested_not_firing_too() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    quiet = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if not t.get("exp_alerts")
    }
    assert quiet == alerts, f"alerts never tested not firing: {alerts - quiet}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_a_runbook_section() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    headings = {
        _anchor(line.lstrip("#"))
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for g in rules["groups"]:
        for r in g["rules"]:
            url = r["annotations"].get("runbook_url", "")
            path, _, anchor = url.partition("#")
            assert path == "docs/operations.md", f"{r['alert']}: runbook_url {url!r}"
            assert anchor in headings, f"{r['alert']}: no section #{anchor} in operations.md"
            assert anchor == r["alert"].lower()


def test_failure_alert_fires_without_any_abort_series(tmp_path: Path) -> None:
    """A sum over a counter with no series is empty and `x + empty` is empty: the failure alert
    must still fire when nothing was ever aborted (the test case that proves it is in
    alerts_test.yml; dropping the `or vector(0)` guards makes it fail)."""
    rules = (PROM / "alerts.yml").read_text()
    assert "or vector(0)" in rules
    (tmp_path / "alerts.yml").write_text(
        rules.replace(" or vector(0))", ")").replace(
            "(sum(increase(rebalancerd_migrations_failed_total[30m])))",
            "sum(increase(rebalancerd_migrations_failed_total[30m]))",
        )
    )
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    r = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "alertname: RebalancerdMigrationFailuresHigh, time: 20m" in r.stdout + r.stderr


def test_grafana_dashboard_uses_declared_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"]
    assert dash["uid"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    known = _known_series()
    used: set[str] = set()
    for e in exprs:
        names = _names_in(e)
        assert names - known == set(), f"undeclared metrics in {e!r}"
        used |= names
    for must in (
        "rebalancerd_cluster_imbalance_ratio",
        "rebalancerd_host_load_ratio",
        "rebalancerd_migrations_in_flight",
        "rebalancerd_telemetry_staleness_seconds",
        "rebalancerd_solver_duration_seconds_bucket",
    ):
        assert must in used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", sorted(PROM.glob("*.yml")), ids=lambda p: p.name)
def test_prometheus_files_are_yaml(path: Path) -> None:
    assert yaml.safe_load(path.read_text())


def test_example_prometheus_config_loads_the_rules(tmp_path: Path) -> None:
    text = (PROM / "prometheus.example.yml").read_text()
    assert "/etc/prometheus/rebalancerd-alerts.yml" in text
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(text.replace("/etc/prometheus/rebalancerd-alerts.yml", str(PROM / "alerts.yml")))
    r = subprocess.run(
        [_promtool(), "check", "config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rules found" in r.stdout + r.stderr
