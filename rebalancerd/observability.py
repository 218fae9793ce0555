"""The catalog of rebalancerd's metrics, and an in-memory MetricsSink for tests and the demo.

Every metric any module emits is declared here once: short name -> (type, help, label names).
The Prometheus adapter registers them as ``rebalancerd_<name>``; callers use the short name.
Units follow Prometheus conventions (seconds, bytes, ratios 0..1, ``_total`` for counters).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Literal

from rebalancerd.domain.checks import ReasonCode
from rebalancerd.domain.plan import ReasonKind

MetricType = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


METRICS: dict[str, MetricSpec] = {
    # --- migrations ---------------------------------------------------------------------------
    "migrations_planned_total": MetricSpec(
        "counter", "Migrations put in a plan, by reason kind.", ("reason",)
    ),
    "migrations_started_total": MetricSpec("counter", "Live migrations started.", ("reason",)),
    "migrations_succeeded_total": MetricSpec(
        "counter", "Live migrations verified on the target.", ("reason",)
    ),
    "migrations_failed_total": MetricSpec(
        "counter", "Live migrations that failed (VM kept on the source).", ("error",)
    ),
    "migrations_aborted_total": MetricSpec(
        "counter", "Live migrations aborted by the time budget.", ("reason",)
    ),
    "migrations_skipped_total": MetricSpec(
        "counter", "Planned migrations skipped by a pre-check or limit.", ("reason",)
    ),
    "migrations_in_flight": MetricSpec("gauge", "Live migrations running now."),
    "migration_duration_seconds": MetricSpec(
        "histogram",
        "Wall time of completed live migrations.",
        (),
        (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
    ),
    "migration_downtime_seconds": MetricSpec(
        "histogram",
        "Guest downtime of completed live migrations.",
        (),
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
    ),
    "migrated_bytes_total": MetricSpec("counter", "Bytes transferred by live migrations."),
    "migration_strategy_total": MetricSpec(
        "counter", "Live migrations started, by the convergence strategy chosen.", ("strategy",)
    ),
    "migration_downtime_step_ups_total": MetricSpec(
        "counter", "Max-downtime step-ups of pre-copy passes that did not converge."
    ),
    "migration_postcopy_switches_total": MetricSpec(
        "counter", "Live migrations that switched to post-copy."
    ),
    "migration_limit_blocks_total": MetricSpec(
        "counter", "Moves held back by a limit (concurrency, budget, window, cooldown).", ("limit",)
    ),
    "migration_remaining_bytes": MetricSpec(
        "gauge", "Data left to transfer of a running migration.", ("vm",)
    ),
    "host_circuit_open": MetricSpec(
        "gauge", "1 while a host's circuit breaker is open after repeated failures.", ("host",)
    ),
    "vm_lost_total": MetricSpec(
        "counter", "VMs found on neither source nor target after a migration (alarm)."
    ),
    "migration_backoff_active": MetricSpec(
        "gauge", "1 while discretionary moves are paused because recent moves did not help."
    ),
    "migrations_reconciled_total": MetricSpec(
        "counter", "Journaled moves resolved at start-up, by outcome.", ("result",)
    ),
    "migration_concurrency_effective": MetricSpec(
        "gauge", "Adaptive cap on concurrent migrations (<= max_concurrent; lowered on overshoots)."
    ),
    "migration_host_concurrency_effective": MetricSpec(
        "gauge", "Adaptive cap on concurrent migrations touching a host.", ("host",)
    ),
    "migration_downtime_over_limit_total": MetricSpec(
        "counter", "Verified migrations whose measured downtime exceeded their class's limit."
    ),
    # --- planner ------------------------------------------------------------------------------
    # --- dead hosts (execution/ha.py) ---------------------------------------------------------
    "host_dead": MetricSpec(
        "gauge", "1 while a stale host is classified dead (libvirtd unreachable too).", ("host",)
    ),
    "dead_host_vms": MetricSpec(
        "gauge", "VMs last seen on a stale or dead host (affected VMs).", ("host",)
    ),
    "ha_vms_pending": MetricSpec(
        "gauge", "HA VMs of a stale or dead host not yet running elsewhere.", ("host",)
    ),
    "fence_actions_total": MetricSpec(
        "counter", "Fencing attempts of dead hosts, by result.", ("result",)
    ),
    "ha_restarts_total": MetricSpec(
        "counter", "HA VM restarts on another host, by result.", ("result",)
    ),
    "plans_total": MetricSpec("counter", "Plans computed, by solver status.", ("status",)),
    "solver_duration_seconds": MetricSpec(
        "histogram", "Planner wall time.", (), (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60)
    ),
    "plan_objective": MetricSpec("gauge", "Objective value of the last plan."),
    # --- cluster ------------------------------------------------------------------------------
    "host_load_ratio": MetricSpec(
        "gauge", "Normalised host load (0..1) by resource.", ("host", "resource")
    ),
    "cluster_imbalance_ratio": MetricSpec(
        "gauge", "Max minus min weighted normalised load over active hosts."
    ),
    "hosts": MetricSpec("gauge", "Inventory hosts by state.", ("state",)),
    # --- host power ----------------------------------------------------------------------------
    "power_actions_total": MetricSpec(
        "counter",
        "Host power actions by driver, action (on, off) and result (ok, error).",
        ("driver", "action", "result"),
    ),
    "power_actions_skipped_total": MetricSpec(
        "counter", "Host power actions decided but not sent, by reason.", ("action", "reason")
    ),
    "power_errors_total": MetricSpec(
        "counter",
        "Power driver calls that failed (credentials, timeout, unreachable, bad answer).",
        ("driver", "call"),
    ),
    "host_power_state": MetricSpec(
        "gauge",
        "1 for the power state rebalancerd holds for a host (active, standby, waking, "
        "failed_wake), 0 for the others.",
        ("host", "state"),
    ),
    "power_wake_failed_total": MetricSpec(
        "counter", "Woken hosts that did not come back within the wake timeout.", ("host",)
    ),
    "power_wake_seconds": MetricSpec(
        "histogram",
        "Time from power-on to a verified host (BMC on, libvirtd reachable, agent fresh).",
        (),
        (10, 30, 60, 120, 180, 300, 600, 900, 1800),
    ),
    "vms": MetricSpec("gauge", "VMs known to the model."),
    # --- telemetry ----------------------------------------------------------------------------
    "telemetry_messages_total": MetricSpec("counter", "Telemetry messages accepted.", ()),
    "telemetry_reports_total": MetricSpec(
        "counter", "Telemetry reports accepted, by wire format version (1 or 2).", ("version",)
    ),
    "telemetry_rejected_total": MetricSpec(
        "counter", "Telemetry messages rejected, by reason.", ("reason",)
    ),
    "telemetry_staleness_seconds": MetricSpec(
        "gauge", "Seconds since the last accepted report of a host.", ("host",)
    ),
    "telemetry_data_age_seconds": MetricSpec(
        "gauge", "Age of the oldest fresh host report the model relies on (-1: none fresh)."
    ),
    "telemetry_connected": MetricSpec("gauge", "1 while subscribed to the MQTT broker, else 0."),
    "telemetry_reconnects_total": MetricSpec("counter", "MQTT (re)connection attempts.", ()),
    # --- policy -------------------------------------------------------------------------------
    "policy_reload_success": MetricSpec("gauge", "1 if the last policy reload succeeded, else 0."),
    "policy_reload_timestamp_seconds": MetricSpec(
        "gauge", "Unix time of the last policy reload attempt."
    ),
    "policy_reloads_total": MetricSpec("counter", "Policy reload attempts.", ("result",)),
    "policy_dir_empty": MetricSpec(
        "gauge", "1 if the policy directory was found empty and the last policy was kept."
    ),
    "policy_scheduled_in_force": MetricSpec(
        "gauge",
        "1 while a policy of a scheduled set is in force (its schedule covers now), else 0.",
        ("policy",),
    ),
    # --- daemon -------------------------------------------------------------------------------
    "errors_total": MetricSpec("counter", "Unexpected errors caught by a loop.", ("where",)),
    "journal_writable": MetricSpec("gauge", "1 if the state journal can be written, else 0."),
    "control_requests_total": MetricSpec(
        "counter", "Control API requests, by command and result.", ("command", "result")
    ),
    "daemon_ready": MetricSpec("gauge", "1 while the daemon serves (after start-up, before stop)."),
    "loop_last_cycle_timestamp_seconds": MetricSpec(
        "gauge", "Unix time the control loop last finished a cycle without error."
    ),
    "drain_state_entries_dropped_total": MetricSpec(
        "counter", "Invalid entries of drained.json dropped on load.", ("section",)
    ),
    "drained_hosts": MetricSpec("gauge", "Hosts put in maintenance through the control API."),
    "maintenance_vms": MetricSpec(
        "gauge", "VMs still placed on hosts in maintenance (drains not finished)."
    ),
    "build_info": MetricSpec("gauge", "Always 1; the running version as a label.", ("version",)),
}

LabelValues = Mapping[str, Mapping[str, Sequence[str]]]
"""metric short name -> label name -> every value the daemon can give that label."""

REASON_KINDS: tuple[str, ...] = tuple(k.value for k in ReasonKind)
MIGRATION_ERRORS: tuple[str, ...] = (
    "hypervisor_error",
    "migration_error",
    "verify_still_on_source",
    "vm_lost",
    "running_on_both",
    "unverified",
)
"""The ``error`` label of migrations_failed_total (execution/moves.py concludes a move)."""
PLAN_STATUSES: tuple[str, ...] = (
    "OPTIMAL",
    "FEASIBLE",
    "INFEASIBLE",
    "MODEL_INVALID",
    "UNKNOWN",
    "GREEDY",
    "LNS",
    "NOTHING_TO_DO",
    "SKIPPED",
)
ERROR_PLACES: tuple[str, ...] = (
    "cycle",
    "reconcile",
    "reconcile_unresolved",
    "telemetry_ingest",
    "metrics",
    "verify_running_on_both",
    "verify_unverified",
    "ha",
    "power",
)
"""The ``where`` label of errors_total that alerts and runbooks name."""

MIGRATION_STRATEGIES: tuple[str, ...] = (
    "precopy",
    "auto-converge",
    "postcopy",
    "precopy-unlikely",
    "default-auto-converge",
    "default-precopy",
)
"""The ``strategy`` label (`execution.settings.choose_settings`)."""

POWER_DRIVERS: tuple[str, ...] = ("ipmi", "redfish", "wol", "command")
"""The ``driver`` label of the power metrics (adapters/power_config.py)."""
POWER_SKIP_REASONS: tuple[str, ...] = (
    "dry_run",
    "advisory",
    "limit",
    "vm_on_host",
    "hypervisor_unreachable",
    "spare_capacity",
    "journal_unwritable",
    "no_driver",
)
"""The ``reason`` label of power_actions_skipped_total (execution/power.py)."""

KNOWN_LABEL_VALUES: LabelValues = {
    "migrations_planned_total": {"reason": REASON_KINDS},
    "migrations_started_total": {"reason": REASON_KINDS},
    "migrations_succeeded_total": {"reason": REASON_KINDS},
    "migrations_aborted_total": {"reason": REASON_KINDS},
    "migrations_failed_total": {"error": MIGRATION_ERRORS},
    "migrations_skipped_total": {"reason": tuple(c.value for c in ReasonCode)},
    "migrations_reconciled_total": {"result": ("succeeded", "failed", "aborted", "lost")},
    "plans_total": {"status": PLAN_STATUSES},
    "policy_reloads_total": {"result": ("ok", "error")},
    "errors_total": {"where": ERROR_PLACES},
    "telemetry_reports_total": {"version": ("1", "2")},
    "migration_strategy_total": {"strategy": MIGRATION_STRATEGIES},
    "fence_actions_total": {"result": ("confirmed", "failed", "unavailable")},
    "ha_restarts_total": {"result": ("running", "failed")},
    "power_actions_total": {
        "driver": POWER_DRIVERS,
        "action": ("on", "off"),
        "result": ("ok", "error"),
    },
    "power_errors_total": {"driver": POWER_DRIVERS, "call": ("state", "on", "off")},
}
"""Counters whose series exist at 0 from start-up, so ``increase()`` sees the first event (a
labelled counter otherwise has no series until it happens). The telemetry reject reasons are
added by the daemon, which may read ``telemetry.schema``."""


def label_sets(values: LabelValues) -> Iterator[tuple[str, dict[str, str]]]:
    """Every (metric, labels) combination of ``values``; metrics not in METRICS are an error."""
    for name, by_label in values.items():
        spec = METRICS.get(name)
        if spec is None:
            raise KeyError(f"undeclared metric {name!r}: add it to observability.METRICS")
        if set(by_label) != set(spec.labels):
            raise ValueError(f"metric {name!r} takes labels {sorted(spec.labels)}")
        keys = list(spec.labels)
        for combo in product(*(by_label[k] for k in keys)):
            yield name, dict(zip(keys, combo, strict=True))


class MemoryMetrics:
    """MetricsSink that keeps values in dicts. Thread-safe enough for tests (GIL-atomic ops)."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.observations: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(
            list
        )

    @staticmethod
    def _key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        if name not in METRICS:
            raise KeyError(f"undeclared metric {name!r}: add it to observability.METRICS")
        return name, tuple(sorted(labels.items()))

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.counters[self._key(name, labels)] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[self._key(name, labels)] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.observations[self._key(name, labels)].append(value)

    def total(self, name: str, **labels: str) -> float:
        """Sum of a counter over all label sets matching the given labels."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.counters.items() if n == name and want <= set(ls))

    def gauge(self, name: str, **labels: str) -> float | None:
        return self.gauges.get(self._key(name, labels))


class NullMetrics:
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        return None

    def set(self, name: str, value: float, **labels: str) -> None:
        return None

    def observe(self, name: str, value: float, **labels: str) -> None:
        return None
