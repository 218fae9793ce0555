"""Guest memory dirty-rate sampling for the agent's libvirt reader.

libvirt measures a guest's dirty rate only when asked (``virDomainStartDirtyRateCalc``; QEMU
then samples for ``calc_seconds``) and reports the result through the ``dirtyrate.*`` domain
stats. ``DirtyRateSampler`` asks for a bounded number of guests per interval (running ones only;
never-measured first, then the oldest measurement, larger guests first among equals), reads the
results back from the stats of the following reads and keeps the last value with its age.
A value older than ``max_age_s`` is forgotten: unknown is reported as null, never as 0.

Blocking (libvirt-python), called from ``LibvirtStatsReader.read`` in the agent's worker thread.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import libvirt

_MEASURED = getattr(libvirt, "VIR_DOMAIN_DIRTYRATE_MEASURED", 2)
_MEASURING = getattr(libvirt, "VIR_DOMAIN_DIRTYRATE_MEASURING", 1)
MODES: dict[str, int] = {
    "page-sampling": getattr(libvirt, "VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING", 0),
    "dirty-bitmap": getattr(libvirt, "VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_BITMAP", 1),
    "dirty-ring": getattr(libvirt, "VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_RING", 2),
}


@dataclass(frozen=True, slots=True)
class DirtyRateSettings:
    enabled: bool = True
    per_interval: int = 2
    """At most this many measurements started per read."""
    calc_seconds: int = 1
    """How long QEMU samples one guest (libvirt: 1..60 s)."""
    max_age_s: float = 300.0
    """A measurement older than this is dropped (reported as null) until re-measured."""
    calc_mode: str = "page-sampling"


@dataclass(slots=True)
class _Rate:
    value: float | None = None
    measured_at: float = 0.0
    """Wall-clock end of the measurement (seconds since the epoch)."""
    started_at: float | None = None
    """Monotonic time we last asked for a measurement (None: not pending)."""
    failures: int = 0


@dataclass(slots=True)
class DirtyRateSampler:
    settings: DirtyRateSettings = field(default_factory=DirtyRateSettings)
    started_total: int = 0
    start_errors: int = 0
    _rates: dict[str, _Rate] = field(default_factory=dict)
    _flags: int | None = None

    def observe(self, name: str, st: dict[str, Any], now_wall: float) -> None:
        """Take a finished measurement from one domain's stats record."""
        status = st.get("dirtyrate.calc_status")
        mbps = st.get("dirtyrate.megabytes_per_second")
        rate = self._rates.setdefault(name, _Rate())
        if status is None or int(status) != _MEASURED or mbps is None or int(mbps) < 0:
            return
        start = st.get("dirtyrate.calc_start_time")
        period = st.get("dirtyrate.calc_period")
        end = float(start) + float(period or 0) if start is not None else now_wall
        if end >= rate.measured_at or rate.value is None:
            rate.value, rate.measured_at = float(mbps), min(end, now_wall)
            rate.started_at = None

    def value(self, name: str, now_wall: float) -> tuple[float | None, float | None]:
        """(MiB/s, age in seconds) of the last measurement, or (None, None) if there is none
        recent enough."""
        rate = self._rates.get(name)
        if rate is None or rate.value is None:
            return None, None
        age = max(0.0, now_wall - rate.measured_at)
        if age > self.settings.max_age_s:
            return None, None
        return rate.value, round(age, 1)

    def schedule(self, running: list[tuple[Any, str, int, bool]], now_mono: float) -> None:
        """Start measurements on up to ``per_interval`` running guests, given as
        (domain, name, memory MiB, measuring now)."""
        s = self.settings
        if not s.enabled or s.per_interval <= 0:
            return
        wall = time.time()
        pending_for = s.calc_seconds + 5.0
        candidates: list[tuple[int, float, int, Any, str]] = []
        for dom, name, mib, measuring in running:
            rate = self._rates.setdefault(name, _Rate())
            since = now_mono - rate.started_at if rate.started_at is not None else float("inf")
            if measuring or since < pending_for:
                continue
            if rate.failures and since < 60.0 * min(rate.failures, 10):
                continue  # this guest refused: retry later, not every interval
            age = wall - rate.measured_at if rate.value is not None else float("inf")
            if age < s.max_age_s / 2:
                continue  # fresh enough
            candidates.append((0 if rate.value is None else 1, -age, -mib, dom, name))
        candidates.sort(key=lambda c: c[:3])
        for _, _, _, dom, name in candidates[: s.per_interval]:
            self._start(dom, self._rates[name], now_mono)

    def _start(self, dom: Any, rate: _Rate, now_mono: float) -> None:
        secs = max(1, min(60, int(self.settings.calc_seconds)))
        rate.started_at = now_mono
        flags = MODES.get(self.settings.calc_mode, 0) if self._flags is None else self._flags
        try:
            dom.startDirtyRateCalc(secs, flags)
        except libvirt.libvirtError:
            if flags == 0:
                rate.failures += 1
                self.start_errors += 1
                return
            try:  # this QEMU/libvirt lacks the mode: fall back to the default (page sampling)
                dom.startDirtyRateCalc(secs, 0)
            except libvirt.libvirtError:
                rate.failures += 1
                self.start_errors += 1
                return
            self._flags = 0
        except AttributeError:  # libvirt-python without the call
            rate.failures += 1
            self.start_errors += 1
            return
        rate.failures = 0
        self.started_total += 1

    def forget_except(self, names: set[str]) -> None:
        for gone in set(self._rates) - names:
            with contextlib.suppress(KeyError):
                del self._rates[gone]
