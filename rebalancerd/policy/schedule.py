"""Scheduled policies: which policies are in force at a wall time. Pure (time is passed in).

A policy with ``schedule`` is in force only inside its weekly windows (in the schedule's time
zone); a policy without one always is. See docs/policies.md, "Schedules".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from rebalancerd.policy.schema import Mode, Policy, Schedule, default_policy
from rebalancerd.policy.week import WEEK, week_intervals

NOTHING_SCHEDULED: Policy = default_policy().model_copy(
    update={"name": "no-policy-scheduled", "mode": Mode.ADVISORY}
)
"""In force when every policy has a schedule and none covers the time: plans, never moves."""


def minute_of_week(now: float, timezone: str) -> int:
    """Minutes since Monday 00:00 of wall time `now` (epoch seconds) in `timezone`."""
    local = datetime.fromtimestamp(now, ZoneInfo(timezone))
    return local.weekday() * 1440 + local.hour * 60 + local.minute


def scheduled(schedule: Schedule, now: float) -> bool:
    """True if `now` lies inside one of the schedule's windows."""
    m = minute_of_week(now, schedule.timezone)
    return any(a <= m < b for a, b in week_intervals(schedule.windows))


def in_force(policy: Policy, now: float) -> bool:
    return policy.schedule is None or scheduled(policy.schedule, now)


def policies_at(policies: Sequence[Policy], now: float) -> list[Policy]:
    """The policies in force at `now`, in the given order."""
    return [p for p in policies if in_force(p, now)]


def next_change(
    policies: Sequence[Policy], now: float, horizon_s: float = WEEK * 60
) -> float | None:
    """The first wall time after `now` (minute resolution) at which the set of policies in
    force changes; None if it does not change within `horizon_s` (no schedules)."""
    if not any(p.schedule is not None for p in policies):
        return None
    start = int(now // 60) * 60
    here = [p.name for p in policies_at(policies, now)]
    t = start + 60
    while t <= now + horizon_s:
        if [p.name for p in policies_at(policies, t)] != here:
            return float(t)
        t += 60
    return None
