"""Prometheus adapter: every catalog metric exposed with the prefix, promtool-clean on a scrape."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rebalancerd.adapters.metrics import PrometheusMetrics, parse_address, serve
from rebalancerd.observability import METRICS


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _exercise(m: PrometheusMetrics) -> None:
    """Touch every metric once with plausible labels."""
    for name, spec in METRICS.items():
        labels = {k: f"x_{k}" for k in spec.labels}
        if spec.type == "counter":
            m.inc(name, 2, **labels)
        elif spec.type == "gauge":
            m.set(name, 0.5, **labels)
        else:
            m.observe(name, 0.7, **labels)


def test_every_catalog_metric_is_registered_with_prefix() -> None:
    m = PrometheusMetrics(strict=True, process_metrics=False)
    _exercise(m)
    srv = serve(m, "127.0.0.1:0")
    try:
        text = _scrape(srv.port)
    finally:
        srv.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, spec in METRICS.items():
        base = "rebalancerd_" + (name[: -len("_total")] if name.endswith("_total") else name)
        assert base in families, f"{name} not exposed"
        assert families[base].type == spec.type
        samples = [s for s in families[base].samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples"
        if spec.type == "counter":
            assert any(s.name == f"rebalancerd_{name}" and s.value == 2 for s in samples)
        if spec.type == "histogram":
            count = [s for s in samples if s.name.endswith("_count")]
            assert count and count[0].value == 1


def test_promtool_check_metrics_is_clean_on_a_real_scrape() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus"
    m = PrometheusMetrics(strict=True)
    _exercise(m)
    srv = serve(m, "127.0.0.1:0")
    try:
        body = _scrape(srv.port)
    finally:
        srv.close()
    r = subprocess.run([promtool, "check", "metrics"], input=body.encode(), capture_output=True)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    assert not (r.stdout + r.stderr).strip(), (r.stdout + r.stderr).decode()


def test_label_values_are_escaped_and_parseable() -> None:
    m = PrometheusMetrics(strict=True, process_metrics=False)
    m.set("host_load_ratio", 0.25, host='evil"host\n{x}', resource="cpu")
    srv = serve(m, "127.0.0.1:0")
    try:
        text = _scrape(srv.port)
    finally:
        srv.close()
    fam = {f.name: f for f in text_string_to_metric_families(text)}["rebalancerd_host_load_ratio"]
    assert [s.labels["host"] for s in fam.samples] == ['evil"host\n{x}']


def test_strict_mode_rejects_misuse() -> None:
    m = PrometheusMetrics(strict=True, process_metrics=False)
    with pytest.raises(KeyError):
        m.inc("no_such_metric")
    with pytest.raises(ValueError):
        m.inc("migrations_started_total")  # missing label
    with pytest.raises(TypeError):
        m.set("migrations_started_total", 1, reason="x")


def test_lenient_mode_counts_misuse_instead_of_raising() -> None:
    m = PrometheusMetrics(strict=False, process_metrics=False)
    m.inc("no_such_metric")
    m.set("hosts", 3)  # missing label
    value = m.registry.get_sample_value("rebalancerd_errors_total", {"where": "metrics"})
    assert value == 2


def test_registries_are_independent() -> None:
    a = PrometheusMetrics(process_metrics=False)
    b = PrometheusMetrics(process_metrics=False)
    a.inc("vm_lost_total")
    assert a.registry.get_sample_value("rebalancerd_vm_lost_total") == 1
    assert b.registry.get_sample_value("rebalancerd_vm_lost_total") == 0


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        (":9100", ("127.0.0.1", 9100)),
        ("[::1]:9477", ("::1", 9477)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9477", "host.example:9477", "1.2.3.4:99999", "[::1]9"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)
