"""`rebalancerd demo`: the production control loop against an embedded simulated cluster.

Time runs `--speed` times faster than real time (default 60: a 20 s demo covers 20 minutes).
The same ControlLoop, planner and Executor as `rebalancerd run`; only the hypervisor and the
telemetry are simulated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from rebalancerd.adapters.clock import ScaledClock
from rebalancerd.cli.main import CliError
from rebalancerd.daemon.loop import ControlLoop, CycleReport
from rebalancerd.domain.load import host_loads, imbalance
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.resolve import policy_weights
from rebalancerd.policy.schema import Policy
from rebalancerd.sim.cluster import SimTelemetry, demo_cluster


def demo_policy() -> Policy:
    return Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "name": "demo-balance",
            "mode": "balance",
            "targets": {"high_watermark": 0.75, "hysteresis": 0.02, "headroom": 0.05},
            "limits": {
                "max_concurrent": 3,
                "max_per_source": 1,
                "max_per_target": 1,
                "max_per_cycle": 6,
                "cooldown_s": 900,
            },
        }
    )


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run the control loop on an embedded simulated cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=20.0, help="real seconds to run (default 20)")
    p.add_argument("--hosts", type=int, default=16, help="simulated hosts (default 16)")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", action="store_true", help="end with one JSON summary line")
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="structured log lines (to stderr) at this level and above (default warning)",
    )
    p.set_defaults(func=run_demo)


def _bar(x: float, width: int = 20) -> str:
    n = max(0, min(width, round(x * width)))
    return "#" * n + "." * (width - n)


async def run_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.duration <= 3600:
        raise CliError(f"--duration must be between 1 and 3600 seconds, got {args.duration}")
    if not 2 <= args.hosts <= 500:
        raise CliError(f"--hosts must be between 2 and 500, got {args.hosts}")
    if not 1 <= args.speed <= 10_000:
        raise CliError(f"--speed must be between 1 and 10000, got {args.speed}")
    out: TextIO = sys.stderr if args.json else sys.stdout
    from rebalancerd.logging import configure

    configure(level=args.log_level, fmt="console", stream=sys.stderr)
    summary = await demo(args.duration, args.hosts, args.speed, args.seed, out)
    if args.json:
        print(json.dumps(summary, sort_keys=True), flush=True)
    return 0 if summary["migrations_failed"] == 0 or summary["migrations_succeeded"] else 1


async def demo(duration: float, hosts: int, speed: float, seed: int, out: TextIO) -> dict[str, Any]:
    from rebalancerd.execution.executor import Executor
    from rebalancerd.execution.journal import Journal

    clock = ScaledClock(speed)
    sim_duration = duration * speed
    cluster = demo_cluster(clock, hosts=hosts, seed=seed, duration_s=sim_duration)
    telemetry = SimTelemetry(cluster, interval_s=10.0)
    policy = demo_policy()
    metrics = MemoryMetrics()
    journal = Journal.open(":memory:")
    executor = Executor(cluster.hypervisor, clock, metrics, journal)
    weights = policy_weights(policy)

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    def on_cycle(r: CycleReport) -> None:
        t = clock.monotonic()
        if r.plan is not None and not r.plan.empty:
            say(
                f"[t={t:6.0f}s] cycle {r.number}: imbalance {r.imbalance:.3f}, "
                f"plan {len(r.plan.migrations)} moves in {len(r.plan.steps)} steps "
                f"({r.plan.stats.status}, {r.plan.stats.wall_s:.2f}s)"
            )
            ex = r.execution
            for m in r.plan.migrations:
                say(f"           {m.vm:7s} {m.source} -> {m.target}  {m.reason}")
            if ex is not None:
                ok = len(getattr(ex, "succeeded", ()))
                bad = len(getattr(ex, "failed", ())) + len(getattr(ex, "aborted", ()))
                skipped = getattr(ex, "skipped", ())
                say(f"           done: {ok} succeeded, {bad} failed, {len(skipped)} skipped")
                for s in skipped:
                    say(f"           skipped {getattr(s, 'vm', '?')}: {getattr(s, 'reason', '')}")
        else:
            say(
                f"[t={t:6.0f}s] cycle {r.number}: imbalance {r.imbalance or 0:.3f}, "
                f"{r.status} {r.detail}"
            )

    telemetry.tick()
    snap0 = telemetry.current()
    imb0 = imbalance(snap0, weights=weights)
    say(
        f"rebalancerd demo: {hosts} simulated hosts, {len(snap0.vms)} VMs, "
        f"{sim_duration / 60:.0f} simulated minutes in {duration:.0f}s; "
        f"throttle {policy.limits.max_concurrent} concurrent, "
        f"{policy.limits.max_per_source}/source, {policy.limits.max_per_target}/target"
    )
    _print_loads(snap0, say)
    say(f"imbalance at start: {imb0:.3f} (max - min weighted load over active hosts)")

    loop = ControlLoop(
        telemetry,
        lambda: policy,
        executor,
        clock,
        metrics,
        interval_s=60.0,
        planner_time_limit_s=2.0,
        max_data_age_s=60.0,
        seed=seed,
        on_cycle=on_cycle,
    )
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        ticker = tg.create_task(telemetry.run())
        runner = tg.create_task(loop.run(stop))
        await asyncio.sleep(duration)
        stop.set()
        executor.request_stop()
        # the wave in flight finishes: the executor never abandons a running migration
        await runner
        ticker.cancel()

    telemetry.tick()
    snap1 = telemetry.current()
    imb1 = imbalance(snap1, weights=weights)
    say("final host loads:")
    _print_loads(snap1, say)
    placement = cluster.placement()
    lost = [v for v in cluster.vms if len(cluster.hypervisor.where(v)) != 1]
    succeeded = int(metrics.total("migrations_succeeded_total"))
    failed = int(
        metrics.total("migrations_failed_total") + metrics.total("migrations_aborted_total")
    )
    summary: dict[str, Any] = {
        "hosts": hosts,
        "vms": len(placement),
        "simulated_seconds": round(clock.monotonic(), 1),
        "cycles": loop.state.cycles,
        "migrations_succeeded": succeeded,
        "migrations_failed": failed,
        "migrations_skipped": int(metrics.total("migrations_skipped_total")),
        "imbalance_before": round(imb0, 4),
        "imbalance_after": round(imb1, 4),
        "max_concurrency_seen": cluster.hypervisor.max_concurrency_seen,
        "concurrency_limit": policy.limits.max_concurrent,
        "vms_lost": len(lost),
    }
    say(
        f"summary: {succeeded} migrations succeeded, {failed} failed; imbalance "
        f"{imb0:.3f} -> {imb1:.3f}; peak concurrency {summary['max_concurrency_seen']} "
        f"(limit {policy.limits.max_concurrent}); VMs lost: {len(lost)}"
    )
    return summary


def _print_loads(snap: Any, say: Any) -> None:
    loads = host_loads(snap)
    for name in sorted(loads):
        hl = loads[name]
        say(
            f"  {name} cpu {_bar(hl.cpu)} {hl.cpu:5.2f}  mem {_bar(hl.memory)} {hl.memory:5.2f}"
            f"  vms {hl.vms}"
        )
