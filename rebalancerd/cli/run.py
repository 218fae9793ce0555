"""`rebalancerd run --config FILE`: run the daemon (what the systemd unit starts)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rebalancerd.daemon.config import DaemonConfig
    from rebalancerd.telemetry.inventory import Inventory


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the rebalancer daemon",
        description="Run rebalancerd: collect telemetry, plan and migrate under the policies, "
        "serve /metrics and the control socket. SIGHUP reloads, SIGTERM stops (in-flight "
        "migrations get shutdown_deadline_s to finish).",
    )
    p.add_argument("--config", required=True, help="daemon YAML config file")
    p.add_argument(
        "--check", action="store_true", help="validate the config and its inventory, then exit"
    )
    p.add_argument("--simulate", action="store_true", help="run against a simulated cluster")
    p.add_argument("--dry-run", action="store_true", help="plan and log, never migrate")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    p.add_argument(
        "--log-format", choices=["auto", "json", "console"], default=None, help="default: auto"
    )
    p.add_argument("--json", action="store_true", help="with --check: machine-readable output")
    p.set_defaults(func=_run)


async def _run(args: argparse.Namespace) -> int:
    from rebalancerd import logging as rlog
    from rebalancerd.cli.main import CliError
    from rebalancerd.daemon.config import ConfigError, load_config
    from rebalancerd.daemon.daemon import Daemon
    from rebalancerd.daemon.wiring import StartupError, read_inventory

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        if args.check and args.json:
            print(json.dumps({"config": args.config, "ok": False, "problems": e.problems}))
            return 2
        raise CliError(str(e)) from None
    updates: dict[str, Any] = {}
    if args.simulate:
        updates["simulate"] = True
    if args.dry_run:
        updates["dry_run"] = True
    log_updates: dict[str, Any] = {}
    if args.log_level:
        log_updates["level"] = args.log_level
    if args.log_format:
        log_updates["format"] = args.log_format
    if log_updates:
        updates["log"] = cfg.log.model_copy(update=log_updates)
    if updates:
        cfg = cfg.model_copy(update=updates)
    if args.check:
        return _check(args, cfg, read_inventory, StartupError)
    rlog.configure(cfg.log.level, cfg.log.format)
    daemon = Daemon(cfg, config_path=args.config, overrides=updates)
    try:
        return await daemon.run()
    except StartupError as e:
        print(f"rebalancerd: error: {e}", file=sys.stderr)
        return 1


def _check(
    args: argparse.Namespace,
    cfg: DaemonConfig,
    read_inventory: Callable[[DaemonConfig], Inventory],
    startup_error: type[Exception],
) -> int:
    """`run --check`: every problem the daemon would meet at start, one line each (exit 2)."""
    from rebalancerd.daemon.config import preflight_problems

    problems = preflight_problems(cfg)
    hosts = None
    if not cfg.simulate and not any(p.startswith("inventory:") for p in problems):
        try:
            inventory = read_inventory(cfg)
            hosts = len(inventory)
            if hosts == 0:
                problems.append("inventory: no hosts")
            from rebalancerd.daemon.wiring import power_drivers

            power_drivers(cfg, inventory)
        except startup_error as e:
            problems.append(str(e))
    out = {
        "config": args.config,
        "ok": not problems,
        "simulate": cfg.simulate,
        "hosts": hosts,
        "problems": problems,
    }
    if args.json:
        print(json.dumps(out))
    elif problems:
        for p in problems:
            print(f"rebalancerd: error: {args.config}: {p}", file=sys.stderr)
    else:
        print(f"{args.config}: ok" + (f" ({hosts} inventory hosts)" if hosts else ""))
    return 2 if problems else 0
