"""Adaptive concurrency for the executor: a pure state machine driven by the times it is given.

The policy's concurrency limits are ceilings, not targets. Real downtime grows with concurrent
switch-overs when the hosts run short of CPU (QEMU processes and libvirtds at switch-over, a busy
link), which QEMU's downtime target does not see. The controller never trusts a concurrency it
has not seen keep downtime within limits:

- **slow start** (on by default): the cluster-wide cap starts at ``start_cap`` (default 2, see
  below; 1 is the strictest);
- **growth only on evidence**: every completed move's downtime, as a fraction of its class's
  limit (its *ratio*), is remembered per scope and per *level* (the most moves seen at once in
  that scope while it ran). The cap grows from c to c + 1 only when at least ``min_samples``
  moves ran at level c and the prediction for c + 1 stays at or below ``trigger_fraction``:
  the worst ratio seen at c scaled by (c + 1) / c and by ``headroom`` (a safety factor: downtime
  grows faster than linearly with concurrency on a starved host), or, when c + 1 itself has
  ``min_samples`` recent samples, the worst of those (an overshoot seen at c + 1 blocks growth
  to it for as long as it is remembered). Growth waits ``cooloff_s`` after a cut;
- **cut** (as in AIMD): when a completed move's ratio is above ``trigger_fraction``, the cap is
  cut to ``decrease`` times the concurrency that move saw (at least 1), for the whole cluster and
  for the two hosts it touched (moves in or out of a host). One cut per generation: a move that
  started before the last cut ran at the old concurrency and does not cut again.

Samples are forgotten after ``history_s`` (at most ``keep`` per level): conditions change, and an
old overshoot must not block a level forever, nor an old good run vouch for it. The effective cap
is never above the policy's limit (the cap itself may be: it is what was seen to work) and never
below 1. Host scopes are tracked from their first cut on (host caps count the moves touching a
host, as source or target; the policy's ``max_per_source`` and ``max_per_target`` still apply,
so an untracked host's cap is their sum).

``state()`` / ``load()`` give the learned state as plain JSON-able data (per scope), for the
journal: a daemon restart does not re-learn through an overshoot.

Trade-off: the first moves after a fresh start (nothing learned) run at most ``start_cap`` at
once, and a level whose samples came close to the limit is not raised for ``history_s``:
throughput is given up for downtime within limits. The default ``start_cap`` is 2, not 1: a
fresh daemon draining a host runs two moves side by side (the fault tests rely on it), and two
at once was measured within limits on the smallest lab (2 cores, 3 libvirtds). With
``slow_start=False`` an unseen cluster starts at the policy's limit (the old behaviour: the first
overshoot is the one it learns from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

TOTAL = "*"
"""Scope name of the cluster-wide cap (host caps use the host name)."""

START_CAP = 2
"""Moves at once on a fresh cluster (slow start), the default of the daemon config too."""
TRIGGER_FRACTION = 0.8
HISTORY_S = 3600.0


@dataclass(frozen=True, slots=True)
class CapChange:
    scope: str
    """TOTAL or a host name."""
    old: int
    new: int
    direction: str
    """'decrease' | 'increase' | 'restore' (back at the policy's limit)."""
    predicted: float | None = None
    """For an increase: the predicted worst downtime ratio at the new level."""


@dataclass
class _Scope:
    cap: int
    decreased_at: float = -math.inf
    history: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    """level -> [(when, downtime ratio)], oldest first."""


class AdaptiveConcurrency:
    def __init__(
        self,
        *,
        decrease: float = 0.5,
        trigger_fraction: float = TRIGGER_FRACTION,
        cooloff_s: float = 300.0,
        slow_start: bool = True,
        start_cap: int = START_CAP,
        headroom: float = 1.5,
        min_samples: int = 3,
        history_s: float = HISTORY_S,
        keep: int = 16,
    ) -> None:
        if not 0.0 < decrease < 1.0:
            raise ValueError("decrease must be in (0, 1)")
        if not trigger_fraction > 0.0:
            raise ValueError("trigger_fraction must be > 0")
        if headroom < 1.0:
            raise ValueError("headroom must be >= 1")
        if min_samples < 1 or keep < min_samples:
            raise ValueError("need 1 <= min_samples <= keep")
        if start_cap < 1:
            raise ValueError("start_cap must be >= 1")
        self.decrease = decrease
        self.trigger_fraction = trigger_fraction
        self.cooloff_s = cooloff_s
        self.slow_start = slow_start
        self.start_cap = start_cap
        self.headroom = headroom
        self.min_samples = min_samples
        self.history_s = history_s
        self.keep = keep
        self._scopes: dict[str, _Scope] = {}
        if slow_start:
            self._scopes[TOTAL] = _Scope(start_cap)

    # -- queries --------------------------------------------------------------------------------
    def cap(self, scope: str, policy_limit: int) -> int:
        """Effective cap of a scope: the policy's limit, or lower while not yet trusted or
        throttled (never above it)."""
        s = self._scopes.get(scope)
        return policy_limit if s is None else min(policy_limit, s.cap)

    def throttled(self) -> dict[str, int]:
        """Tracked scopes -> their learned cap (the policy's limit may be lower)."""
        return {k: s.cap for k, s in self._scopes.items()}

    def worst(self, scope: str, level: int, now: float) -> tuple[int, float | None]:
        """(number of recent samples, worst downtime ratio) at one level of a scope."""
        s = self._scopes.get(scope)
        if s is None:
            return 0, None
        xs = self._fresh(s, level, now)
        return len(xs), (max(xs) if xs else None)

    def predict(self, scope: str, level: int, now: float) -> float | None:
        """Predicted worst downtime ratio at `level` from what was measured (None: not enough
        evidence at level - 1 nor at `level`)."""
        s = self._scopes.get(scope)
        return None if s is None else self._predict(s, level, now)

    # -- feedback -------------------------------------------------------------------------------
    def observe(
        self,
        *,
        downtime_ms: float,
        limit_ms: float,
        started: float,
        now: float,
        peak: dict[str, int],
        policy_limits: dict[str, int],
    ) -> list[CapChange]:
        """Feed one completed move: its measured downtime against its class's limit, when it
        started, and the most moves seen at once while it ran per scope (TOTAL, its source,
        its target). `policy_limits` gives each of those scopes' policy limit. `started` and
        `now` are wall-clock seconds (the learned state survives restarts)."""
        if limit_ms <= 0 or not math.isfinite(downtime_ms) or downtime_ms < 0:
            return []
        ratio = downtime_ms / limit_ms
        changes: list[CapChange] = []
        for scope, seen in peak.items():
            limit = max(1, policy_limits.get(scope, seen))
            level = max(1, seen)
            s = self._scopes.get(scope)
            current = limit if s is None else min(limit, s.cap)
            if ratio > self.trigger_fraction:
                if s is not None:
                    self._record(s, level, now, ratio)
                    if started < s.decreased_at:
                        continue  # ran at the old concurrency: that generation was already cut
                new = max(1, math.floor(min(current, level) * self.decrease))
                if new >= current:  # already at the floor: restart the cool-off
                    if s is not None:
                        s.decreased_at = now
                    continue
                if s is None:
                    s = self._scopes[scope] = _Scope(new, now)
                    self._record(s, level, now, ratio)
                else:
                    s.cap, s.decreased_at = new, now
                changes.append(CapChange(scope, current, new, "decrease"))
                continue
            if s is None:
                continue  # untracked: at the policy's limit, nothing to learn for a cut
            self._record(s, level, now, ratio)
            if s.cap >= limit or now < s.decreased_at + self.cooloff_s:
                continue
            pred = self._predict(s, s.cap + 1, now)
            if pred is None or pred > self.trigger_fraction:
                continue
            old = current
            s.cap += 1
            direction = "restore" if s.cap >= limit else "increase"
            changes.append(CapChange(scope, old, min(limit, s.cap), direction, round(pred, 4)))
        return changes

    # -- internals ------------------------------------------------------------------------------
    def _fresh(self, s: _Scope, level: int, now: float) -> list[float]:
        return [r for t, r in s.history.get(level, ()) if now - t <= self.history_s]

    def _record(self, s: _Scope, level: int, now: float, ratio: float) -> None:
        xs = s.history.setdefault(level, [])
        xs.append((now, ratio))
        # forget what is too old, and keep at most `keep` per level
        xs[:] = [x for x in xs if now - x[0] <= self.history_s][-self.keep :]

    def _predict(self, s: _Scope, level: int, now: float) -> float | None:
        at = self._fresh(s, level, now)
        if len(at) >= self.min_samples:
            return max(at)  # measured at that level
        below = self._fresh(s, level - 1, now) if level > 1 else []
        if len(below) < self.min_samples:
            return None
        scaled = max(below) * level / (level - 1) * self.headroom
        return max([scaled, *at])

    # -- persistence ----------------------------------------------------------------------------
    def state(self) -> dict[str, dict[str, Any]]:
        """The learned state per scope, JSON-able (for the journal)."""
        return {k: self.scope_state(k) for k in self._scopes}

    def scope_state(self, scope: str) -> dict[str, Any]:
        s = self._scopes[scope]
        return {
            "cap": s.cap,
            "decreased_at": s.decreased_at if math.isfinite(s.decreased_at) else None,
            "history": {str(lv): [[t, r] for t, r in xs] for lv, xs in s.history.items() if xs},
        }

    def load(self, state: dict[str, Any]) -> list[str]:
        """Restore scopes from `state()` output. Malformed scopes are skipped; returns their
        names (the caller logs them)."""
        bad: list[str] = []
        for scope, raw in state.items():
            try:
                cap = int(raw["cap"])
                if cap < 1:
                    raise ValueError("cap < 1")
                dec = raw.get("decreased_at")
                hist: dict[int, list[tuple[float, float]]] = {}
                for lv, xs in dict(raw.get("history") or {}).items():
                    level = int(lv)
                    if level < 1:
                        raise ValueError("level < 1")
                    pairs = [(float(t), float(r)) for t, r in xs]
                    if not all(math.isfinite(t) and math.isfinite(r) for t, r in pairs):
                        raise ValueError("non-finite sample")
                    hist[level] = pairs[-self.keep :]
                self._scopes[str(scope)] = _Scope(
                    cap, -math.inf if dec is None else float(dec), hist
                )
            except (KeyError, TypeError, ValueError):
                bad.append(str(scope))
        return bad
