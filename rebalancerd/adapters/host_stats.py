"""Host statistics for the agent: psutil, Linux pressure stall information, temperatures and
visibly failing disks. Every reader is best effort: a missing source gives None, never an error.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    temp_degraded_c: float = 90.0
    """A sensor at or above this marks the host degraded."""
    memory_full_pressure_pct: float = 25.0
    """``/proc/pressure/memory`` full avg10 at or above this marks the host degraded."""
    failing_disks_degrade: bool = True


def read_pressure(root: Path = Path("/proc/pressure")) -> dict[str, float]:
    """``{"cpu_some": 1.2, "memory_full": 0.0, ...}`` from avg10 values; {} when absent."""
    out: dict[str, float] = {}
    for res in ("cpu", "memory", "io"):
        try:
            text = (root / res).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            if kind not in ("some", "full"):
                continue
            for part in rest.split():
                k, _, v = part.partition("=")
                if k == "avg10":
                    try:
                        val = float(v)
                    except ValueError:
                        continue
                    if 0.0 <= val <= 100.0:
                        out[f"{res}_{kind}"] = val
    # the kernel reports cpu "full" since 5.13 but it is always 0 at the system level
    out.pop("cpu_full", None)
    return out


def read_max_temperature() -> float | None:
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return None
    temps = [t.current for entries in sensors.values() for t in entries if -100 < t.current < 300]
    return max(temps) if temps else None


def read_failing_disks(root: Path = Path("/sys/block")) -> list[str]:
    """Block devices whose SCSI/ATA device state is not running (offline, blocked...), and
    degraded md arrays (``[U_]`` in /proc/mdstat)."""
    bad: list[str] = []
    try:
        devices = sorted(os.listdir(root))
    except OSError:
        devices = []
    for dev in devices:
        try:
            state = (root / dev / "device" / "state").read_text().strip()
        except OSError:
            continue
        if state not in ("running", "live"):
            bad.append(dev)
    try:
        md = Path("/proc/mdstat").read_text()
    except OSError:
        md = ""
    current = ""
    for line in md.splitlines():
        if line and not line.startswith(" ") and ":" in line:
            current = line.split(":")[0].strip()
        if "[" in line and "_" in line.split("[")[-1] and current.startswith("md"):
            bad.append(current)
    return bad


@dataclass
class HostStatsReader:
    """Rates are computed from counter deltas between calls; the first call primes them."""

    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    _prev: tuple[float, float, float, float, float] | None = None
    _prev_t: float = 0.0

    def __post_init__(self) -> None:
        psutil.cpu_percent(interval=None, percpu=True)
        psutil.cpu_percent(interval=None)
        self._counters()

    def _counters(self) -> None:
        net = psutil.net_io_counters()
        try:
            disk = psutil.disk_io_counters()
        except (OSError, RuntimeError):
            disk = None
        now = time.monotonic()
        self._prev = (
            now,
            float(net.bytes_recv) if net else 0.0,
            float(net.bytes_sent) if net else 0.0,
            float(disk.read_bytes) if disk else 0.0,
            float(disk.write_bytes) if disk else 0.0,
        )

    def read(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(host_stats, health) in the shape of telemetry.schema.HostStats / Health."""
        prev = self._prev
        self._counters()
        cur = self._prev
        assert prev is not None and cur is not None
        dt = max(cur[0] - prev[0], 1e-3)
        rates = [max(0.0, (c - p) / dt) for c, p in zip(cur[1:], prev[1:], strict=True)]
        per_core = [min(100.0, max(0.0, p)) for p in psutil.cpu_percent(interval=None, percpu=True)]
        total = min(100.0, max(0.0, psutil.cpu_percent(interval=None)))
        vm = psutil.virtual_memory()
        try:
            load = [max(0.0, x) for x in os.getloadavg()]
        except OSError:
            load = []
        pressure = read_pressure()
        temp = read_max_temperature()
        failing = read_failing_disks()
        stats: dict[str, Any] = {
            "cores": psutil.cpu_count() or 1,
            "cpu_pct": round(total, 2),
            "cpu_per_core_pct": [round(p, 2) for p in per_core],
            "load": [round(x, 3) for x in load],
            "mem_total_mib": vm.total // (1024 * 1024),
            "mem_available_mib": min(vm.available, vm.total) // (1024 * 1024),
            "net_rx_bytes_s": round(rates[0], 1),
            "net_tx_bytes_s": round(rates[1], 1),
            "disk_read_bytes_s": round(rates[2], 1),
            "disk_write_bytes_s": round(rates[3], 1),
            "pressure": pressure,
            "temp_max_c": temp,
        }
        reasons: list[str] = []
        th = self.thresholds
        if temp is not None and temp >= th.temp_degraded_c:
            reasons.append(f"temperature {temp:.0f} C >= {th.temp_degraded_c:.0f} C")
        mem_full = pressure.get("memory_full")
        if mem_full is not None and mem_full >= th.memory_full_pressure_pct:
            reasons.append(f"memory pressure full avg10 {mem_full:.1f} %")
        if failing and th.failing_disks_degrade:
            reasons.append("failing disks: " + ", ".join(failing[:8]))
        return stats, {"degraded": bool(reasons), "reasons": reasons}
