"""`rebalancerd run --config FILE`: run the daemon (what the systemd unit starts)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


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
        hosts = None
        if not cfg.simulate:
            try:
                hosts = len(read_inventory(cfg))
            except StartupError as e:
                raise CliError(str(e)) from None
        out = {"config": args.config, "ok": True, "simulate": cfg.simulate, "hosts": hosts}
        if args.json:
            print(json.dumps(out))
        else:
            print(f"{args.config}: ok" + (f" ({hosts} inventory hosts)" if hosts else ""))
        return 0
    rlog.configure(cfg.log.level, cfg.log.format)
    daemon = Daemon(cfg, config_path=args.config, overrides=updates)
    try:
        return await daemon.run()
    except StartupError as e:
        print(f"rebalancerd: error: {e}", file=sys.stderr)
        return 1
