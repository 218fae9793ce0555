"""Fixed-size smoothing helpers: bounded sample rings, EWMA and percentiles. Pure."""

from __future__ import annotations

from collections import deque

from rebalancerd.domain.model import percentile_of


class Series:
    """The last ``size`` integer samples plus an exponentially weighted moving average."""

    __slots__ = ("alpha", "ewma", "samples")

    def __init__(self, size: int, alpha: float) -> None:
        if size <= 0:
            raise ValueError("size must be > 0")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.samples: deque[int] = deque(maxlen=size)
        self.alpha = alpha
        self.ewma: float | None = None

    def add(self, value: int) -> None:
        self.samples.append(value)
        e = self.ewma
        self.ewma = float(value) if e is None else e + self.alpha * (value - e)

    @property
    def last(self) -> int:
        return self.samples[-1] if self.samples else 0

    def smoothed(self) -> int:
        return 0 if self.ewma is None else round(self.ewma)

    def percentile(self, pct: float) -> int:
        return percentile_of(self.samples, pct)

    def history(self) -> tuple[int, ...]:
        return tuple(self.samples)

    def __len__(self) -> int:
        return len(self.samples)
