"""`rebalancerd agent --config FILE`: run the per-hypervisor telemetry agent."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "agent",
        help="run the telemetry agent on a hypervisor",
        description="Publish this host's and its VMs' statistics to the MQTT broker every "
        "interval (topic rebalancer/v1/<cluster>/hosts/<host>/telemetry).",
    )
    p.add_argument("--config", required=True, help="agent YAML config file")
    p.add_argument(
        "--once",
        action="store_true",
        help="take one sample, print it and exit (no broker)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config (every problem, file:line:col) and exit",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


async def _run(args: argparse.Namespace) -> int:
    from rebalancerd import logging as rlog
    from rebalancerd.adapters.mqtt import MqttConfigError
    from rebalancerd.adapters.systemd import from_env
    from rebalancerd.agent import Agent, AgentConfigError, load_agent_config
    from rebalancerd.cli.errors import CliError

    try:
        config = load_agent_config(args.config)
        if args.check:
            print(f"{args.config}: ok (host {config.host}, cluster {config.cluster})")
            return 0
        # like the daemon's logs; with --once stdout carries the report, so logs go to stderr
        rlog.configure(config.log_level, config.log_format, sys.stderr if args.once else sys.stdout)
        out = sys.stderr if args.once else sys.stdout

        def relog(c: Any) -> None:
            rlog.configure(c.log_level, c.log_format, out)

        agent = Agent(config, notifier=from_env(), config_path=args.config, configure_logging=relog)
        if args.once:
            report = await agent.sample()
            await _sleep(min(1.0, config.interval_s))
            report = await agent.sample()  # second sample: rates from real deltas
            report["seq"] = 1
            if args.json:
                print(json.dumps(report, separators=(",", ":")))
            else:
                print(json.dumps(report, indent=2))
            agent.libvirt.close()
            return 0
        if not args.json:
            print(
                f"rebalancerd agent: host {config.host}, broker {config.broker.url}, "
                f"every {config.interval_s:g} s",
                file=sys.stderr,
            )
        await agent.run()
    except (AgentConfigError, MqttConfigError) as e:
        raise CliError(str(e)) from None
    return 0


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)
