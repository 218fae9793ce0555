"""From start-up the daemon exports its labelled counters at 0 for every known label value (so
``increase()`` sees the first event) and ``rebalancerd_build_info{version}`` = 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rebalancerd import __version__
from rebalancerd.adapters.metrics import PrometheusMetrics
from rebalancerd.adapters.systemd import NullNotifier
from rebalancerd.daemon.config import parse
from rebalancerd.daemon.daemon import Daemon
from rebalancerd.domain.checks import ReasonCode
from rebalancerd.observability import KNOWN_LABEL_VALUES, MemoryMetrics, label_sets
from rebalancerd.telemetry.schema import RejectReason


def _samples(m: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _daemon(tmp_path: Path) -> Daemon:
    cfg = parse(
        {
            "simulate": True,
            "sim": {"hosts": 2, "vms_per_host": 1, "seed": 1},
            "state_dir": str(tmp_path / "state"),
            "policy_dir": str(tmp_path / "policies"),
            "metrics": {"enabled": False},
            "control": {"socket": str(tmp_path / "ctl.sock")},
        }
    )
    return Daemon(cfg, notifier=NullNotifier())


def test_a_new_daemon_exports_known_counter_series_at_zero(tmp_path: Path) -> None:
    samples = _samples(_daemon(tmp_path).metrics)
    for code in ReasonCode:
        key = ("rebalancerd_migrations_skipped_total", (("reason", code.value),))
        assert samples.get(key) == 0.0, f"no skipped series for {code.value}"
    for reason in RejectReason:
        key = ("rebalancerd_telemetry_rejected_total", (("reason", reason.value),))
        assert samples.get(key) == 0.0, f"no rejected series for {reason.value}"
    for status in ("OPTIMAL", "FEASIBLE", "GREEDY", "NOTHING_TO_DO"):
        assert samples.get(("rebalancerd_plans_total", (("status", status),))) == 0.0
    for error in ("running_on_both", "vm_lost", "migration_error"):
        key = ("rebalancerd_migrations_failed_total", (("error", error),))
        assert samples.get(key) == 0.0
    assert samples.get(("rebalancerd_errors_total", (("where", "cycle"),))) == 0.0
    assert samples.get(("rebalancerd_build_info", (("version", __version__),))) == 1.0


def test_a_bare_adapter_has_no_labelled_series_until_initialised() -> None:
    """What the initialisation fixes: without it a labelled counter has no series at all."""
    m = PrometheusMetrics(strict=True, process_metrics=False)
    names = {n for n, _ in _samples(m)}
    assert "rebalancerd_migrations_skipped_total" not in names
    m.initialise(KNOWN_LABEL_VALUES)
    assert ("rebalancerd_migrations_skipped_total", (("reason", "capacity"),)) in _samples(m)


def test_label_sets_are_checked_against_the_catalog() -> None:
    with pytest.raises(KeyError, match="undeclared"):
        list(label_sets({"no_such_total": {"reason": ("x",)}}))
    with pytest.raises(ValueError, match="takes labels"):
        list(label_sets({"plans_total": {"reason": ("x",)}}))
    with pytest.raises(TypeError, match="only counters"):
        PrometheusMetrics(process_metrics=False).initialise({"hosts": {"state": ("active",)}})
    # every initialised label set is one the in-memory sink accepts too
    mem = MemoryMetrics()
    for name, labels in label_sets(KNOWN_LABEL_VALUES):
        mem.inc(name, 0, **labels)
