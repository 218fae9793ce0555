"""Allowed time windows and blackouts of a policy, in the policy's time zone. Pure.

A window lists days (the day the window *starts*), a start and an end (HH:MM, end may be 24:00).
An end before the start wraps past midnight (22:00-06:00 on fri covers fri 22:00 to sat 06:00).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rebalancerd.policy.schema import Limits, TimeWindow

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def in_window(window: TimeWindow, local: datetime) -> bool:
    """True if local time `local` (aware, in the policy's zone) lies in the window."""
    start = _minutes(window.start)
    end = _minutes(window.end)
    minute = local.hour * 60 + local.minute
    today = _DAYS[local.weekday()]
    yesterday = _DAYS[(local - timedelta(days=1)).weekday()]
    if start == end:
        return False
    if start < end:
        return today in window.days and start <= minute < end
    # wraps past midnight
    return (today in window.days and minute >= start) or (yesterday in window.days and minute < end)


def window_block(limits: Limits, now: float) -> str | None:
    """None if moves are allowed at wall time `now` (epoch seconds), else the reason:
    ``invalid_timezone``, ``blackout`` or ``outside_window``."""
    if not limits.windows and not limits.blackouts:
        return None
    try:
        tz = ZoneInfo(limits.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return "invalid_timezone"
    local = datetime.fromtimestamp(now, tz)
    if any(in_window(b, local) for b in limits.blackouts):
        return "blackout"
    if limits.windows and not any(in_window(w, local) for w in limits.windows):
        return "outside_window"
    return None
