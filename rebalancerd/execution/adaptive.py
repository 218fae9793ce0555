"""Adaptive concurrency (AIMD) for the executor: pure state machine driven by its clock.

The policy's concurrency limits are ceilings, not targets. When a completed move's measured
downtime comes close to (above ``trigger_fraction`` of) its class's limit, the hosts were most
likely starved at switch-over (too many QEMU processes and libvirtds for the cores, or a busy
link): the effective cap is cut multiplicatively, to ``decrease`` times the concurrency that move
saw while it ran, both for the whole cluster and for the two hosts it touched (moves in or out of
a host). A cut starts a cool-off; only one cut per generation (a move that started before the last
cut ran at the old concurrency and does not cut again). After the cool-off, moves that stay well
within their limit (at most ``good_fraction`` of it) raise the cap additively: one slot once a
cap's worth of them completed (like TCP's congestion window), until the policy's limit is reached
and the cap disappears. The effective cap is never above the policy's limits and never below 1.

Optional slow start (``slow_start=True``): the cluster-wide cap starts at 1 and doubles each
time a cap's worth of moves completed without coming close to their limit, until the policy's
limit or the first overshoot (then AIMD as above). It trades a few move durations at start-up
for not trusting the configured concurrency before it was seen to keep downtime within limits.

Host caps count the moves touching a host (as source or target); the policy's ``max_per_source``
and ``max_per_target`` still apply as well, so a host's cap starts at their sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TOTAL = "*"
"""Scope name of the cluster-wide cap (host caps use the host name)."""


@dataclass(frozen=True, slots=True)
class CapChange:
    scope: str
    """TOTAL or a host name."""
    old: int
    new: int
    direction: str
    """'decrease' | 'increase' | 'restore' (back at the policy's limit)."""


@dataclass
class _Scope:
    cap: int
    decreased_at: float
    good: int = 0
    slow: bool = False
    """In slow start: the cap doubles after a cap's worth of moves within the limit."""


class AdaptiveConcurrency:
    def __init__(
        self,
        *,
        decrease: float = 0.5,
        trigger_fraction: float = 0.8,
        good_fraction: float = 0.5,
        cooloff_s: float = 300.0,
        slow_start: bool = False,
    ) -> None:
        if not 0.0 < decrease < 1.0:
            raise ValueError("decrease must be in (0, 1)")
        if not 0.0 < good_fraction <= trigger_fraction:
            raise ValueError("need 0 < good_fraction <= trigger_fraction")
        self.decrease = decrease
        self.trigger_fraction = trigger_fraction
        self.good_fraction = good_fraction
        self.cooloff_s = cooloff_s
        self._scopes: dict[str, _Scope] = {}
        if slow_start:
            self._scopes[TOTAL] = _Scope(1, -math.inf, slow=True)

    # -- queries --------------------------------------------------------------------------------
    def cap(self, scope: str, policy_limit: int) -> int:
        """Effective cap of a scope: the policy's limit, or lower while throttled (never > it)."""
        s = self._scopes.get(scope)
        return policy_limit if s is None else min(policy_limit, s.cap)

    def throttled(self) -> dict[str, int]:
        """Scopes currently below the policy's limit -> their cap."""
        return {k: s.cap for k, s in self._scopes.items()}

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
        its target). `policy_limits` gives each of those scopes' policy limit."""
        if limit_ms <= 0 or not math.isfinite(downtime_ms):
            return []
        ratio = downtime_ms / limit_ms
        changes: list[CapChange] = []
        for scope, seen in peak.items():
            limit = max(1, policy_limits.get(scope, seen))
            s = self._scopes.get(scope)
            current = limit if s is None else min(limit, s.cap)
            if s is not None and s.slow and ratio <= self.trigger_fraction:
                s.good += 1
                if s.good >= s.cap:
                    s.good = 0
                    if s.cap * 2 >= limit:
                        del self._scopes[scope]
                        changes.append(CapChange(scope, current, limit, "restore"))
                    else:
                        s.cap *= 2
                        changes.append(CapChange(scope, current, s.cap, "increase"))
                continue
            if ratio > self.trigger_fraction:
                if s is not None and s.slow:
                    s.slow = False
                if s is not None and started < s.decreased_at:
                    continue  # ran at the old concurrency: that generation was already cut
                new = max(1, math.floor(min(current, max(seen, 1)) * self.decrease))
                if new >= current:  # already at the floor: restart the cool-off
                    if s is not None:
                        s.decreased_at, s.good = now, 0
                    continue
                if s is None:
                    s = self._scopes[scope] = _Scope(new, now)
                else:
                    s.cap, s.decreased_at, s.good = new, now, 0
                changes.append(CapChange(scope, current, new, "decrease"))
            elif ratio <= self.good_fraction and s is not None:
                if started < s.decreased_at or now < s.decreased_at + self.cooloff_s:
                    continue
                s.good += 1
                if s.good < s.cap:
                    continue
                s.good = 0
                if s.cap + 1 >= limit:
                    del self._scopes[scope]
                    changes.append(CapChange(scope, current, limit, "restore"))
                else:
                    s.cap += 1
                    changes.append(CapChange(scope, current, s.cap, "increase"))
        return changes
