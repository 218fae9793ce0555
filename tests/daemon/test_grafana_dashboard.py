"""The Grafana dashboard: yes/no stats are red at 0 and green at 1 (Grafana's default thresholds
are green below 80, so a 0 would look healthy), and every metric docs/operations.md tells
operators to watch has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "rebalancerd.json"
OPERATIONS = ROOT / "docs" / "operations.md"
GRAFANA_DEFAULT_STEPS = [{"color": "green", "value": None}, {"color": "red", "value": 80}]
"""What Grafana applies to a panel without thresholds of its own."""
BOOLEAN_METRICS = {
    "up",
    "rebalancerd_journal_writable",
    "rebalancerd_policy_reload_success",
    "rebalancerd_daemon_ready",
    "rebalancerd_telemetry_connected",
}


def _panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def _color_at(panel: dict[str, Any], value: float) -> str:
    """The colour Grafana gives ``value``: a value mapping first, else the threshold steps."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    for mapping in defaults.get("mappings", []):
        if mapping.get("type") == "value":
            hit = mapping["options"].get(f"{value:g}")
            if hit and hit.get("color"):
                return str(hit["color"])
    steps = defaults.get("thresholds", {}).get("steps") or GRAFANA_DEFAULT_STEPS
    color = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            color = step["color"]
    return str(color)


def _metric_of(panel: dict[str, Any]) -> str:
    expr = panel["targets"][0]["expr"]
    return str(re.match(r"[a-z_]+", expr).group(0))  # type: ignore[union-attr]


BOOLEAN_STATS = [p for p in _panels() if p["type"] == "stat" and _metric_of(p) in BOOLEAN_METRICS]


def test_every_boolean_metric_has_a_stat() -> None:
    assert {_metric_of(p) for p in BOOLEAN_STATS} == BOOLEAN_METRICS


@pytest.mark.parametrize("panel", BOOLEAN_STATS, ids=lambda p: p["title"])
def test_boolean_stats_are_red_at_zero_and_green_at_one(panel: dict[str, Any]) -> None:
    assert _color_at(panel, 0) == "red"
    assert _color_at(panel, 1) == "green"
    assert panel["options"]["colorMode"] == "background"


def test_safety_stats_turn_red_or_orange_when_something_is_wrong() -> None:
    by_title = {p["title"]: p for p in _panels()}
    assert _color_at(by_title["VMs lost (24 h)"], 0) == "green"
    assert _color_at(by_title["VMs lost (24 h)"], 1) == "red"
    assert _color_at(by_title["Last good cycle"], 60) == "green"
    assert _color_at(by_title["Last good cycle"], 1000) == "red"
    assert _color_at(by_title["VMs on maintenance hosts"], 3) == "orange"


def test_metrics_the_docs_name_have_panels() -> None:
    text = OPERATIONS.read_text()
    table = text[text.index("## Metrics") : text.index("## Alerts")]
    named = set(re.findall(r"`(rebalancerd_[a-z_]+)", table))
    # `rebalancerd_migrations_{planned,...}_total{reason}` expands to each family
    for group in re.findall(r"`rebalancerd_migrations_\{([a-z,]+)\}_total", table):
        named |= {f"rebalancerd_migrations_{g}_total" for g in group.split(",")}
    named = {n for n in named if not n.endswith("_")}
    used = {
        name
        for p in _panels()
        for t in p.get("targets", [])
        for name in re.findall(r"\brebalancerd_[a-z_]+", t["expr"])
    }
    used |= {n.removesuffix("_bucket") for n in used}
    assert len(named) >= 20
    assert named <= used, f"named in docs/operations.md but on no panel: {sorted(named - used)}"


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in _panels():
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
