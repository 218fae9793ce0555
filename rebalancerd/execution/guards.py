"""Two safety guards of the executor, pure state machines driven by the executor's clock:

- ``CircuitBreaker``: a host whose migrations failed N times in a row is left alone for a while
  (open); after that one trial move is allowed (half-open); a success closes it again.
- ``HelpTracker``: did the last wave of balancing moves reduce the imbalance, as seen on the next
  snapshot that shows them done? After `strikes` waves in a row that did not help, discretionary
  moves pause for a back-off period (doubling up to a cap while they keep not helping).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class _HostBreaker:
    failures: int = 0
    opened_at: float | None = None


class CircuitBreaker:
    def __init__(self, threshold: int = 3, open_s: float = 900.0) -> None:
        if threshold < 1:
            raise ValueError("breaker threshold must be >= 1")
        self.threshold = threshold
        self.open_s = open_s
        self._hosts: dict[str, _HostBreaker] = {}

    def is_open(self, host: str, now: float) -> bool:
        """True while the host is refused (open and not yet due for a trial)."""
        b = self._hosts.get(host)
        if b is None or b.opened_at is None:
            return False
        return now < b.opened_at + self.open_s

    def tripped(self, host: str) -> bool:
        """True from opening until a success closes it (open or half-open)."""
        b = self._hosts.get(host)
        return b is not None and b.opened_at is not None

    def record(self, host: str, ok: bool, now: float) -> str | None:
        """Record one move's outcome on a host; returns 'opened' / 'closed' on a change."""
        b = self._hosts.setdefault(host, _HostBreaker())
        if ok:
            was = b.opened_at is not None
            b.failures = 0
            b.opened_at = None
            return "closed" if was else None
        b.failures += 1
        if b.opened_at is not None:
            # a failed trial while half-open: open again for a full period
            b.opened_at = now
            return "opened"
        if b.failures >= self.threshold:
            b.opened_at = now
            return "opened"
        return None

    def open_hosts(self, now: float) -> list[str]:
        return sorted(h for h in self._hosts if self.is_open(h, now))


@dataclass
class _Pending:
    baseline: float
    moved: dict[str, str]
    looks: int = 0


@dataclass
class HelpTracker:
    strikes: int = 2
    """Waves in a row that did not help before backing off."""
    backoff_s: float = 1800.0
    max_backoff_s: float = 6 * 3600.0
    min_gain: float = 1e-4
    """Imbalance must drop by more than this for a wave to count as helping."""
    max_looks: int = 3
    """Snapshots to wait for the moves to show up in telemetry before giving up on a wave."""
    misses: int = 0
    level: int = 0
    until: float | None = None
    pending: _Pending | None = None
    history: list[str] = field(default_factory=list)

    def moved(self, baseline: float, moved: Mapping[str, str]) -> None:
        """A wave of discretionary moves succeeded; `baseline` = imbalance before it."""
        if moved:
            self.pending = _Pending(baseline, dict(moved))

    def observe(self, imbalance: float, placement: Mapping[str, str], now: float) -> str | None:
        """Feed a fresh snapshot; returns 'helped', 'not_helped', 'backoff' or None (nothing
        to judge yet)."""
        p = self.pending
        if p is None:
            return None
        if any(placement.get(vm, target) != target for vm, target in p.moved.items()):
            p.looks += 1
            if p.looks >= self.max_looks:
                self.pending = None
            return None
        self.pending = None
        if imbalance < p.baseline - self.min_gain:
            self.misses = 0
            self.level = 0
            self.history.append("helped")
            return "helped"
        self.misses += 1
        self.history.append("not_helped")
        if self.misses >= self.strikes:
            self.misses = 0
            period = min(self.max_backoff_s, self.backoff_s * (2**self.level))
            self.level += 1
            self.until = now + period
            return "backoff"
        return "not_helped"

    def remaining(self, now: float) -> float:
        if self.until is None or now >= self.until:
            return 0.0
        return self.until - now
