"""SIGHUP (or ``rebalancerd reload``): re-read the config file and the policies.

Of the config file only the live fields take effect (log, intervals, planner, shutdown deadline,
dry_run, control group); any other change is logged as needing a restart and the running value
is kept. Command-line overrides (``--dry-run``...) stay in force across reloads. A config that no
longer parses keeps the running one; a broken policy file keeps the old policies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from rebalancerd import logging as rlog
from rebalancerd.daemon.config import ConfigError, DaemonConfig, diff, load_config
from rebalancerd.daemon.policy_source import PolicyStore
from rebalancerd.daemon.wiring import Parts

log = structlog.get_logger("rebalancerd.daemon")


@dataclass(frozen=True, slots=True)
class ConfigReload:
    config: DaemonConfig
    """The config now in force (the old one if the file could not be used)."""
    report: dict[str, Any]
    """ok, and applied / needs_restart (or the error)."""


def reload_config(
    path: str, overrides: Mapping[str, Any], running: DaemonConfig, parts: Parts
) -> ConfigReload:
    """Read the config file at `path`, apply its live changes to the parts, and return the config
    in force: the running one with the new live fields (restart-only fields keep their old
    values, they are still what runs)."""
    try:
        new = load_config(path)
        if overrides:
            new = new.model_copy(update=dict(overrides))
    except ConfigError as e:
        log.error("config_reload_failed", error=str(e), kept="previous config")
        return ConfigReload(running, {"ok": False, "error": str(e)})
    live, restart = diff(running, new)
    if restart:
        log.warning("config_change_needs_restart", fields=restart)
    if live:
        apply_live(parts, running, new)
        log.info("config_reloaded", fields=live)
    in_force = running.model_copy(
        update={
            "intervals": new.intervals,
            "planner": new.planner,
            "shutdown_deadline_s": new.shutdown_deadline_s,
            "log": new.log,
            "dry_run": new.dry_run,
            "control": running.control.model_copy(update={"group": new.control.group}),
        }
    )
    return ConfigReload(in_force, {"ok": True, "applied": live, "needs_restart": restart})


def apply_live(parts: Parts, old: DaemonConfig, new: DaemonConfig) -> None:
    """Hand the live fields of `new` to the running parts."""
    loop = parts.loop
    loop.interval_s = new.intervals.plan_s
    loop.max_data_age_s = new.intervals.max_data_age_s
    loop.planner_time_limit_s = new.planner.time_limit_s
    loop.seed = new.planner.seed
    parts.executor.dry_run = new.dry_run
    if new.log != old.log:
        rlog.configure(new.log.level, new.log.format)
    if new.control.group != old.control.group:
        try:
            parts.control.set_group(new.control.group)
        except (KeyError, OSError) as e:
            log.error("control_group_change_failed", error=str(e))


def reload_summary(store: PolicyStore) -> dict[str, Any]:
    """The last policy (re)load attempt, whoever made it (start-up, SIGHUP, `rebalancerd
    reload` or the directory watcher): the store's last result is the one source of truth, the
    same the `policy_reload_success` metric is set from."""
    r = store.last_result
    if r is None:
        return {"ok": False, "summary": "never loaded"}
    return {
        "ok": r.ok,
        "summary": r.summary(),
        "files": list(r.files),
        "problems": [str(p) for p in r.problems[:20]],
        "at": r.at,
        "empty_directory_kept": r.kept_on_empty,
    }
