"""Feeding verified downtimes to the adaptive concurrency controller (`adaptive.py`), and
keeping what it learned in the journal across restarts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import structlog

from rebalancerd.domain.plan import Migration
from rebalancerd.execution.adaptive import TOTAL, CapChange
from rebalancerd.execution.base import ExecutorBase
from rebalancerd.execution.journal import JournalError
from rebalancerd.execution.precheck import Wave
from rebalancerd.execution.records import ExecutionReport
from rebalancerd.execution.settings import class_spec_for

log = structlog.get_logger("rebalancerd.executor")


class AdaptiveFeed(ExecutorBase):
    def _adapt(
        self, m: Migration, mid: str, wave: Wave, report: ExecutionReport, downtime_ms: float
    ) -> None:
        """Feed a verified move's downtime to the adaptive concurrency controller."""
        ids = {"vm": m.vm, "source": m.source, "target": m.target, "migration_id": mid}
        limit_ms = float(class_spec_for(wave.policy, wave.vms[m.vm])[1].max_downtime_ms)
        if downtime_ms > limit_ms:
            report.downtime_over_limit += 1
            self.metrics.inc("migration_downtime_over_limit_total")
            log.warning(
                "migration_downtime_over_limit",
                downtime_ms=downtime_ms,
                limit_ms=limit_ms,
                **ids,
            )
        run = self._running.get(mid)
        if run is None:
            return
        limits = wave.policy.limits
        host_limit = limits.max_per_source + limits.max_per_target
        policy_limits = {TOTAL: limits.max_concurrent, m.source: host_limit, m.target: host_limit}
        now = self.clock.now()
        changes = self.adaptive.observe(
            downtime_ms=downtime_ms,
            limit_ms=limit_ms,
            started=run.rec.started,
            now=now,
            peak=dict(run.peak),
            policy_limits=policy_limits,
        )
        for c in changes:
            self._cap_changed(c, report, downtime_ms, limit_ms, ids)
        self._save_adaptive(run.peak, now)
        cap = self.adaptive.cap(TOTAL, limits.max_concurrent)
        report.concurrency_effective = cap
        report.concurrency_effective_min = min(report.concurrency_effective_min, cap)

    def _load_adaptive(self) -> None:
        """Restore what adaptive concurrency learned before a restart (from the journal)."""
        try:
            raw = self.journal.adaptive_state()
        except JournalError as e:
            self.metrics.inc("errors_total", where="adaptive_load")
            log.error("adaptive_state_unreadable", error=str(e))
            return
        state: dict[str, Any] = {}
        bad: list[str] = []
        for scope, text in raw.items():
            try:
                state[scope] = json.loads(text)
            except ValueError:
                bad.append(scope)
        bad += self.adaptive.load(state)
        if bad:
            self.metrics.inc("errors_total", where="adaptive_load")
            log.error("adaptive_state_malformed", scopes=sorted(bad))
        if raw:
            caps = self.adaptive.throttled()
            log.info(
                "adaptive_state_loaded",
                scopes=len(raw) - len(bad),
                cluster_cap=caps.get(TOTAL),
                host_caps={k: v for k, v in caps.items() if k != TOTAL},
            )

    def _save_adaptive(self, scopes: Iterable[str], now: float) -> None:
        """Persist the learned state of the scopes a move fed (best effort: a failure is logged
        and counted; the journal's own writes decide whether moves may start)."""
        tracked = self.adaptive.throttled()
        states = {
            k: json.dumps(self.adaptive.scope_state(k), separators=(",", ":"))
            for k in scopes
            if k in tracked
        }
        try:
            self.journal.save_adaptive(states, now)
        except JournalError as e:
            self.metrics.inc("errors_total", where="adaptive_save")
            log.warning("adaptive_state_not_saved", error=str(e))

    def _cap_changed(
        self,
        c: CapChange,
        report: ExecutionReport,
        downtime_ms: float,
        limit_ms: float,
        ids: dict[str, str],
    ) -> None:
        report.concurrency_changes.append(
            {
                "scope": c.scope,
                "old": c.old,
                "new": c.new,
                "direction": c.direction,
                "downtime_ms": downtime_ms,
                "vm": ids["vm"],
            }
        )
        if c.scope == TOTAL:
            self.metrics.set("migration_concurrency_effective", float(c.new))
        else:
            self.metrics.set("migration_host_concurrency_effective", float(c.new), host=c.scope)
        emit = log.warning if c.direction == "decrease" else log.info
        emit(
            "migration_concurrency_adjusted",
            scope="cluster" if c.scope == TOTAL else "host",
            host=None if c.scope == TOTAL else c.scope,
            old=c.old,
            new=c.new,
            direction=c.direction,
            downtime_ms=downtime_ms,
            limit_ms=limit_ms,
            predicted_ratio=c.predicted,
            cooloff_s=self.adaptive.cooloff_s,
            **ids,
        )
