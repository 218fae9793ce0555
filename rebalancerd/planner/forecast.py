"""Short-horizon forecast of a host's summed CPU history: least-squares trend over the window,
extrapolated `horizon` samples ahead, plus `z` standard deviations of the residuals.

Used by consolidate mode instead of the window's percentile when ``FORECAST`` is on
(planner/consolidate.py). Daily seasonality is not modelled: the planner sees only the policy's
window of history (one hour by default), not the same hour of previous days.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

HORIZON = 1.0
"""Samples ahead (one sample = one cycle of 300 s in the replay)."""
Z = 2.0
"""Residual standard deviations added to the trend (about the 97.5th percentile if normal)."""


def trend_forecast(
    vals: Sequence[int], horizon: float | None = None, z: float | None = None
) -> int:
    """Trend + z * residual sd, `horizon` samples after the last one (oldest first); the
    module's HORIZON and Z when not given."""
    horizon = HORIZON if horizon is None else horizon
    z = Z if z is None else z
    n = len(vals)
    if n == 0:
        return 0
    if n < 3:
        return max(vals)
    mx = (n - 1) / 2.0
    my = sum(vals) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    sxy = sum((i - mx) * (y - my) for i, y in enumerate(vals))
    b = sxy / sxx
    a = my - b * mx
    res = sum((y - (a + b * i)) ** 2 for i, y in enumerate(vals))
    sd = math.sqrt(res / (n - 2))
    return max(0, math.ceil(a + b * (n - 1 + horizon) + z * sd))
