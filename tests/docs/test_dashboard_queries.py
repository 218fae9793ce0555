"""Issue 20, dashboard: rates use Grafana's $__rate_interval (never a fixed window shorter than
a few scrapes), and migrations and policy reloads are annotations on every time series, drawn
from metrics the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rebalancerd.observability import METRICS

DASH = json.loads(
    (Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "rebalancerd.json").read_text()
)


def test_every_rate_uses_rate_interval() -> None:
    exprs = [t["expr"] for p in DASH["panels"] for t in p.get("targets", [])]
    rates = [m for e in exprs for m in re.findall(r"\b(?:i?rate)\([^()]*\[[^\]]+\]\)", e)]
    assert len(rates) >= 15
    fixed = [r for r in rates if "[$__rate_interval]" not in r]
    assert not fixed, fixed


def test_annotations_for_migrations_and_reloads() -> None:
    ann = {a["name"]: a for a in DASH["annotations"]["list"] if not a.get("builtIn")}
    assert {"Migrations started", "Policy reloads", "Migrations failed or aborted"} <= set(ann)
    for a in ann.values():
        assert a["enable"] and a["datasource"]["uid"] == "${datasource}"
        for name in re.findall(r"\brebalancerd_([a-z_]+)", a["expr"]):
            assert name in METRICS, name
