"""Weekly time windows as intervals of the week's minutes (Monday 00:00 = 0), and their overlap.

Used to combine the ``limits.windows`` of several policies (migrations only where all of them
allow) and to report policies whose windows never overlap. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence

from rebalancerd.policy.schema import _DAYS, Day, TimeWindow, minutes

WEEK = 7 * 1440
Interval = tuple[int, int]


def week_intervals(windows: Sequence[TimeWindow]) -> list[Interval]:
    """The minutes of the week inside any of ``windows``: sorted, disjoint half-open intervals."""
    raw: list[Interval] = []
    for w in windows:
        s, e = minutes(w.start), minutes(w.end)
        for d in w.days:
            a = _DAYS.index(d) * 1440 + s
            b = a - s + (e if e > s else 1440 + e)
            if b <= WEEK:
                raw.append((a, b))
            else:
                raw += [(a, WEEK), (0, b - WEEK)]
    raw.sort()
    out: list[Interval] = []
    for a, b in raw:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _intersect(x: list[Interval], y: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def common_intervals(window_sets: Sequence[Sequence[TimeWindow]]) -> tuple[list[Interval], int]:
    """The minutes of the week inside the windows of every set, and how many sets it took to get
    there: ``len(window_sets)`` when some minutes remain, else the 1-based count of the set at
    which none were left (the sets after it are not looked at: the overlap stays empty)."""
    if not window_sets:
        return [], 0
    iv = week_intervals(window_sets[0])
    for n, windows in enumerate(window_sets[1:], start=2):
        iv = _intersect(iv, week_intervals(windows))
        if not iv:
            return [], n
    return iv, len(window_sets)


def _hhmm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def to_windows(intervals: list[Interval]) -> list[TimeWindow]:
    """Intervals of the week back to windows: one window per (start, end) time, with its days."""
    by_time: dict[tuple[str, str], list[Day]] = {}
    for a, b in intervals:
        while a < b:
            d = a // 1440
            end = min(b, (d + 1) * 1440)
            key = (_hhmm(a - d * 1440), _hhmm(end - d * 1440))
            by_time.setdefault(key, []).append(_DAYS[d])
            a = end
    return [TimeWindow(days=days, start=s, end=e) for (s, e), days in by_time.items()]
