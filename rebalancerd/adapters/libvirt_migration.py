"""Live migration with libvirt, the pure parts: flags and parameters from `MigrationSettings`,
progress from a running job's statistics, the result from the completed job's statistics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import libvirt

from rebalancerd.ports import MigrationProgress, MigrationResult, MigrationSettings

MIB = 1024 * 1024


def migration_flags(settings: MigrationSettings) -> int:
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    if settings.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if settings.postcopy_after_s is not None:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if settings.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if settings.non_shared_disk:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    return int(flags)


def migration_params(settings: MigrationSettings, migrate_uri: str | None = None) -> dict[str, Any]:
    """Typed parameters of `migrateToURI3`. `migrate_uri` (the target's inventory
    ``migration_uri``, e.g. ``tcp://10.232.0.12``) is where the memory (and disk) copy goes:
    ``VIR_MIGRATE_PARAM_URI``, separate from the libvirtd control connection (dconnuri)."""
    params: dict[str, Any] = {}
    if migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = migrate_uri
    if settings.bandwidth_mib_s is not None:
        if settings.bandwidth_mib_s <= 0:
            raise ValueError("bandwidth_mib_s must be positive (None = unlimited)")
        # the cap applies to pre-copy; once switched, post-copy pulls pages at full speed so the
        # guest (already running on the target) is not slowed down by remote page faults
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(settings.bandwidth_mib_s)
    return params


def progress_from_stats(vm: str, elapsed_s: float, stats: Mapping[str, Any]) -> MigrationProgress:
    page = float(stats.get("memory_page_size", 4096) or 4096)
    return MigrationProgress(
        vm=vm,
        elapsed_s=elapsed_s,
        data_total_mib=float(stats.get("data_total", 0)) / MIB,
        data_remaining_mib=float(stats.get("data_remaining", 0)) / MIB,
        dirty_rate_mib_s=float(stats.get("memory_dirty_rate", 0)) * page / MIB,
        iteration=int(stats.get("memory_iteration", 0)),
    )


def result_from_stats(stats: Mapping[str, Any], wall_s: float, postcopy: bool) -> MigrationResult:
    """A successful result from completed job statistics (wall time if they are missing)."""
    elapsed_ms = stats.get("time_elapsed")
    downtime = stats.get("downtime")
    transferred = stats.get("data_processed", stats.get("memory_processed", 0))
    return MigrationResult(
        ok=True,
        total_s=float(elapsed_ms) / 1000.0 if elapsed_ms is not None else wall_s,
        downtime_ms=float(downtime) if downtime is not None else None,
        transferred_mib=float(transferred or 0) / MIB,
        postcopy=postcopy,
    )


# --------------------------------------------------------------------------------------------
# the convergence sequence of a running migration

STALL_FRACTION = 0.9
"""A pass that leaves more than this fraction of the previous pass's remaining memory stalls."""
STEP_FACTOR = 2.0
"""Each downtime step-up multiplies the max downtime by this (capped at the class's limit)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What to do now: ``wait``, ``downtime`` (call `migrateSetMaxDowntime(downtime_ms)`),
    ``postcopy`` (`migrateStartPostCopy`) or ``abort`` (`abortJob`: the VM stays on the source)."""

    action: str
    downtime_ms: int = 0
    why: str = ""


@dataclass
class ConvergenceSequence:
    """Decides, from each `jobStats()` poll, how a pre-copy that does not converge is helped along:

    1. a pass (``memory_iteration`` advanced) whose remaining memory did not shrink below
       `STALL_FRACTION` of the previous pass's stalls: raise the max downtime by `STEP_FACTOR`,
       up to the class's limit (`MigrationSettings.downtime_limit_ms`);
    2. stalled at the limit: switch to post-copy if the class allows it;
    3. else let auto-converge throttle the guest (if on), and wait;
    4. post-copy is also started when `postcopy_after_s` passes; at the time budget: post-copy if
       allowed, else abort.
    Pure: fed the elapsed time and the statistics, no I/O."""

    settings: MigrationSettings
    downtime_ms: int = 0
    step_ups: int = 0
    _iteration: int = -1
    _remaining: float | None = None
    _done: bool = False

    def __post_init__(self) -> None:
        self.downtime_ms = int(self.settings.max_downtime_ms)

    @property
    def limit_ms(self) -> int:
        lim = self.settings.downtime_limit_ms
        return max(self.downtime_ms, int(lim)) if lim is not None else self.downtime_ms

    def finished(self) -> None:
        """A post-copy or abort was started: nothing more to decide."""
        self._done = True

    def on_stats(self, elapsed_s: float, stats: Mapping[str, Any]) -> Step:
        if self._done:
            return Step("wait")
        s = self.settings
        postcopy_ok = s.postcopy_after_s is not None
        if elapsed_s >= s.time_budget_s:
            if postcopy_ok:
                return Step("postcopy", why="time budget")
            return Step("abort", why="time budget")
        if postcopy_ok and s.postcopy_after_s is not None and elapsed_s >= s.postcopy_after_s:
            return Step("postcopy", why="postcopy_after_s")
        iteration = int(stats.get("memory_iteration", 0) or 0)
        remaining = float(stats.get("memory_remaining", stats.get("data_remaining", 0)) or 0)
        if iteration <= self._iteration:
            return Step("wait")
        prev, self._iteration, self._remaining = self._remaining, iteration, remaining
        if iteration < 2 or prev is None or remaining < prev * STALL_FRACTION:
            return Step("wait")  # first pass, or still shrinking
        if self.downtime_ms < self.limit_ms:
            self.downtime_ms = min(
                self.limit_ms, max(self.downtime_ms + 1, round(self.downtime_ms * STEP_FACTOR))
            )
            self.step_ups += 1
            return Step("downtime", self.downtime_ms, why=f"pass {iteration} did not converge")
        if postcopy_ok:
            return Step("postcopy", why=f"pass {iteration} did not converge at the limit")
        return Step("wait", why="at the downtime limit: auto-converge or the budget decides")
