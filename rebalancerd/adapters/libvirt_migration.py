"""Live migration with libvirt, the pure parts: flags and parameters from `MigrationSettings`,
progress from a running job's statistics, the result from the completed job's statistics."""

from __future__ import annotations

from collections.abc import Mapping
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


def migration_params(settings: MigrationSettings) -> dict[str, Any]:
    params: dict[str, Any] = {}
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
