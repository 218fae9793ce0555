"""Workload traces for the replay: the PlanetLab layout and a generic CSV.

A :class:`Trace` is a table of CPU utilisation (fraction 0..1 of the VM's own capacity) per VM and
per sample, with a fixed sampling interval; optionally memory in MiB per VM and sample.

- PlanetLab (``planetlab:DIR``): one file per VM, one integer CPU percentage per line, one line
  every 300 s (288 lines a day). File names may contain spaces. Names are sorted (CloudSim takes
  the directory order, which is unsorted).
- CSV (``csv:FILE``): header ``timestamp,vm,cpu[,memory]``; ``timestamp`` in seconds (number) or
  ISO 8601; ``cpu`` in percent of the VM (0..100); ``memory`` in MiB. Samples are put in buckets of
  ``interval_s`` from the first timestamp; a missing sample repeats the VM's previous one (the
  first missing ones take the VM's first sample).

Bad input raises :class:`TraceError` with a one-line message naming the file and line.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rebalancerd.files import InputFileError, read_bounded_text

PLANETLAB_INTERVAL_S = 300.0
MAX_TRACE_FILE_BYTES = 256 * 1024 * 1024
"""Size cap of one trace file (a PlanetLab VM file, or a whole CSV trace)."""
MAX_TRACE_CELLS = 20_000_000
"""VMs x samples: the cpu table (and the memory table) are float64 arrays of this many cells."""
MAX_ABS_TIMESTAMP = 1e11
MAX_MEMORY_MIB = float(1 << 40)

FloatArray = npt.NDArray[np.float64]


class TraceError(ValueError):
    """A trace that cannot be read; the message is one line."""


@dataclass(frozen=True)
class Trace:
    name: str
    vms: tuple[str, ...]
    cpu: FloatArray
    """Shape (len(vms), samples): utilisation fraction 0..1 of each VM's capacity."""
    interval_s: float
    memory_mib: FloatArray | None = None
    """Same shape as cpu, or None when the trace has no memory column."""

    def __post_init__(self) -> None:
        if self.cpu.ndim != 2 or self.cpu.shape[0] != len(self.vms):
            raise TraceError(f"trace {self.name}: cpu table does not match the VM list")
        if self.cpu.shape[1] < 1:
            raise TraceError(f"trace {self.name}: no samples")
        if self.interval_s <= 0:
            raise TraceError(f"trace {self.name}: interval must be > 0")
        if self.memory_mib is not None and self.memory_mib.shape != self.cpu.shape:
            raise TraceError(f"trace {self.name}: memory table does not match the cpu table")

    @property
    def samples(self) -> int:
        return int(self.cpu.shape[1])

    @property
    def duration_s(self) -> float:
        return self.samples * self.interval_s

    def subset(self, max_vms: int | None = None, hours: float | None = None) -> Trace:
        """The first max_vms VMs (in name order) and the first `hours` hours of samples."""
        n = len(self.vms) if max_vms is None else max(1, min(max_vms, len(self.vms)))
        s = self.samples
        if hours is not None:
            s = max(1, min(s, math.ceil(hours * 3600.0 / self.interval_s)))
        mem = None if self.memory_mib is None else self.memory_mib[:n, :s].copy()
        return Trace(self.name, self.vms[:n], self.cpu[:n, :s].copy(), self.interval_s, mem)

    def utilisation_at(self, t: float) -> FloatArray:
        """CloudSim's rule: linear interpolation between samples, the last one repeated."""
        pos = t / self.interval_s
        last = self.samples - 1
        if pos >= last:
            return self.cpu[:, last]
        i = math.floor(pos)
        frac = pos - i
        if frac <= 1e-12:
            return self.cpu[:, i]
        return self.cpu[:, i] + (self.cpu[:, i + 1] - self.cpu[:, i]) * frac


def read_planetlab(directory: str | os.PathLike[str]) -> Trace:
    """One file per VM, one integer CPU % per line (PlanetLab layout)."""
    root = Path(directory)
    if not root.is_dir():
        raise TraceError(f"planetlab trace {root}: not a directory")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise TraceError(f"planetlab trace {root}: no files")
    rows: list[list[float]] = []
    for p in files:
        values: list[float] = []
        try:
            text = read_bounded_text(p, MAX_TRACE_FILE_BYTES)
        except InputFileError as e:
            raise TraceError(str(e)) from None
        for lineno, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s:
                continue
            try:
                v = float(s)
            except ValueError:
                raise TraceError(f"{p}:{lineno}: not a number: {s[:40]!r}") from None
            if not 0.0 <= v <= 100.0 or math.isnan(v):
                raise TraceError(f"{p}:{lineno}: cpu {v} outside 0..100")
            values.append(v / 100.0)
        if not values:
            raise TraceError(f"{p}: empty file")
        rows.append(values)
    width = max(len(r) for r in rows)
    # A short file repeats its last sample (CloudSim's rule for the end of a trace).
    table = np.array([r + [r[-1]] * (width - len(r)) for r in rows], dtype=np.float64)
    return Trace(root.name, tuple(p.name for p in files), table, PLANETLAB_INTERVAL_S)


def _parse_ts(raw: str, where: str) -> float:
    try:
        ts = float(raw)
    except ValueError:
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise TraceError(f"{where}: bad timestamp {raw[:40]!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    if not -MAX_ABS_TIMESTAMP <= ts <= MAX_ABS_TIMESTAMP:  # also refuses inf and nan
        raise TraceError(f"{where}: timestamp {raw[:40]!r} out of range")
    return ts


def read_csv(path: str | os.PathLike[str], interval_s: float = PLANETLAB_INTERVAL_S) -> Trace:
    """Generic CSV: timestamp, vm, cpu (percent of the VM), optional memory (MiB)."""
    p = Path(path)
    if not (0 < interval_s < math.inf):
        raise TraceError("csv trace: interval must be > 0")
    try:
        text = read_bounded_text(p, MAX_TRACE_FILE_BYTES)
    except InputFileError as e:
        raise TraceError(str(e)) from None
    try:
        return _parse_csv(p, text, interval_s)
    except csv.Error as e:
        raise TraceError(f"{p}: not a CSV file ({e})") from None


def _parse_csv(p: Path, text: str, interval_s: float) -> Trace:
    samples: dict[str, dict[int, tuple[float, float | None]]] = {}
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        need = {"timestamp", "vm", "cpu"}
        if not need <= set(fields):
            raise TraceError(f"{p}: header must have timestamp,vm,cpu[,memory], got {fields}")
        reader.fieldnames = fields
        has_mem = "memory" in fields
        raw: list[tuple[float, str, float, float | None]] = []
        for row in reader:
            where = f"{p}:{reader.line_num}"
            vm = (row.get("vm") or "").strip()
            if not vm:
                raise TraceError(f"{where}: empty vm name")
            ts = _parse_ts((row.get("timestamp") or "").strip(), where)
            try:
                cpu = float((row.get("cpu") or "").strip())
                mem_s = (row.get("memory") or "").strip() if has_mem else ""
                mem = float(mem_s) if mem_s else None
            except ValueError:
                raise TraceError(f"{where}: cpu/memory must be numbers") from None
            if math.isnan(cpu) or not 0.0 <= cpu <= 100.0:
                raise TraceError(f"{where}: cpu {cpu} outside 0..100")
            if mem is not None and not 0 <= mem <= MAX_MEMORY_MIB:
                raise TraceError(f"{where}: memory {mem} must be in 0..{MAX_MEMORY_MIB:.0f} MiB")
            raw.append((ts, vm, cpu / 100.0, mem))
    if not raw:
        raise TraceError(f"{p}: no samples")
    t0 = min(r[0] for r in raw)
    for ts, vm, cpu, mem in raw:
        samples.setdefault(vm, {})[int((ts - t0) // interval_s)] = (cpu, mem)
    width = max(max(d) for d in samples.values()) + 1
    names = tuple(sorted(samples))
    if width * len(names) > MAX_TRACE_CELLS:
        raise TraceError(
            f"{p}: {len(names)} VMs x {width} samples of {interval_s:g} s is more than "
            f"{MAX_TRACE_CELLS} cells (timestamps too far apart?)"
        )
    cpu_t = np.zeros((len(names), width))
    mem_t = np.zeros((len(names), width)) if has_mem else None
    for i, vm in enumerate(names):
        d = samples[vm]
        first = d[min(d)]
        prev = first
        for k in range(width):
            prev = d.get(k, prev)
            cpu_t[i, k] = prev[0]
            if mem_t is not None:
                mem_t[i, k] = prev[1] if prev[1] is not None else 0.0
    return Trace(p.stem, names, cpu_t, float(interval_s), mem_t)


def load_trace(spec: str) -> Trace:
    """``planetlab:DIR`` or ``csv:FILE`` (a bare path: a directory is PlanetLab, a file CSV)."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("planetlab", "csv"):
        return read_planetlab(rest) if kind == "planetlab" else read_csv(rest)
    p = Path(spec)
    if p.is_dir():
        return read_planetlab(p)
    if p.is_file():
        return read_csv(p)
    raise TraceError(f"trace {spec!r}: expected planetlab:DIR or csv:FILE")
