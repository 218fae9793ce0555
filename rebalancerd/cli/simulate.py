"""`rebalancerd simulate`: replay a workload trace through the planner in accelerated time.

    rebalancerd simulate --trace planetlab:DIR --setup cloudsim [--policy FILE] [--json]
                         [--report FILE.html] [--seed N] [--hours H] [--max-vms N]

Each 300 s interval the real planner (`make_plan`, the daemon's decision code) plans on a snapshot
of the simulated data centre; the policy's limits and cooldowns are applied as the executor does;
migrations take CloudSim's time and cost CloudSim's 10 % MIPS. The same trace is also replayed
with no migration (the baseline) for the report. Metrics are CloudSim's: energy (kWh), SLATAH,
PDM, SLAV, ESV, migrations; plus migrations per VM per day, bytes moved and peak concurrent
migrations. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from rebalancerd.adapters.policy_files import load_policy_file
from rebalancerd.cli.errors import CliError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "simulate",
        help="replay a CPU trace (PlanetLab, CSV) through the planner and report CloudSim metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trace", required=True, help="planetlab:DIR (one file per VM) or csv:FILE")
    p.add_argument("--setup", choices=["cloudsim"], default="cloudsim", help="data centre setup")
    p.add_argument("--policy", metavar="FILE", help="policy file (default: built-in consolidate)")
    p.add_argument(
        "--decider",
        choices=["planner", "none", "thr-mmt"],
        default="planner",
        help="planner (default); none: the no-migration baseline alone; thr-mmt: our "
        "re-implementation of CloudSim's THR-MMT 0.8 without limits (a cross-check)",
    )
    p.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report")
    p.add_argument("--seed", type=int, default=0, help="planner seed (default 0)")
    p.add_argument(
        "--time-limit", type=float, default=1.0, help="planner wall-clock limit per cycle (s)"
    )
    p.add_argument("--hosts", type=int, default=800, help="hosts (default 800, as CloudSim)")
    p.add_argument("--hours", type=float, help="replay only the first H hours")
    p.add_argument("--max-vms", type=int, help="replay only the first N VMs (name order)")
    p.add_argument(
        "--enforce-memory",
        action="store_true",
        help="make host RAM a hard limit (CloudSim ignores RAM after the initial placement)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
    p.set_defaults(func=run_simulate)


class _Progress:
    """A one-line progress bar on a TTY; silent otherwise."""

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.tty = out.isatty()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        pct = done * 100 // max(total, 1)
        if pct == self._last:
            return
        self._last = pct
        n = pct * 30 // 100
        self.out.write(f"\r{self.label:<14} [{'#' * n}{'.' * (30 - n)}] {pct:3d}%")
        if done >= total:
            self.out.write("\n")
        self.out.flush()


def _fmt_summary(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name:<22} energy {s['energy_kwh']:8.2f} kWh  SLATAH {s['slatah']:7.2%}  "
        f"PDM {s['pdm']:.4%}  SLAV {s['slav']:.2e}  ESV {s['esv']:.2e}  "
        f"migrations {s['migrations']:,} ({s['migrations_per_vm_day']:.3f}/VM/day)  "
        f"peak concurrent {s['peak_concurrent_migrations']}"
    )


def run_simulate(args: argparse.Namespace) -> int:
    from rebalancerd.sim.cloudsim import default_replay_policy
    from rebalancerd.sim.replay import (
        NoMigration,
        PlannerDecider,
        Replay,
        ReplayResult,
        ThresholdMmt,
        unlimited_policy,
    )
    from rebalancerd.sim.traces import TraceError, load_trace

    if not 1 <= args.hosts <= 100_000:
        raise CliError(f"--hosts must be between 1 and 100000, got {args.hosts}")
    if args.hours is not None and not 0 < args.hours <= 24 * 366:
        raise CliError(f"--hours must be > 0 and at most a year of hours, got {args.hours}")
    if args.max_vms is not None and args.max_vms < 1:
        raise CliError(f"--max-vms must be >= 1, got {args.max_vms}")
    if not 0.01 <= args.time_limit <= 600:
        raise CliError(f"--time-limit must be between 0.01 and 600 s, got {args.time_limit}")
    if args.report and not args.report.lower().endswith((".html", ".htm")):
        raise CliError(f"--report {args.report}: only .html reports are supported")
    try:
        trace = load_trace(args.trace).subset(args.max_vms, args.hours)
    except TraceError as e:
        raise CliError(str(e)) from None
    policy = load_policy_file(args.policy) if args.policy else default_replay_policy()

    out: TextIO = sys.stderr
    kw: dict[str, Any] = {"hosts": args.hosts, "enforce_memory": args.enforce_memory}
    try:
        if args.decider == "planner":
            decider: Any = PlannerDecider(policy, time_limit_s=args.time_limit, seed=args.seed)
            result = Replay(trace, decider, policy, **kw).run(_Progress(out, "planner"))
        elif args.decider == "thr-mmt":
            result = Replay(trace, ThresholdMmt(0.8), unlimited_policy(policy), **kw).run(
                _Progress(out, "THR-MMT")
            )
        else:
            result = Replay(trace, NoMigration(), policy, **kw).run(_Progress(out, "baseline"))
        baseline: ReplayResult | None = None
        if args.decider != "none":
            baseline = Replay(trace, NoMigration(), policy, **kw).run(_Progress(out, "baseline"))
    except ValueError as e:
        raise CliError(str(e)) from None

    if args.report:
        from rebalancerd.sim.report import write_report

        try:
            write_report(args.report, result, baseline)
        except (OSError, ValueError) as e:
            raise CliError(f"cannot write report: {e}") from None

    if args.json:
        doc = result.to_dict()
        if baseline is not None:
            doc["baseline"] = {k: baseline.summary[k] for k in ("energy_kwh", "slatah", "pdm")}
        print(json.dumps(doc, sort_keys=True))
    else:
        print(
            f"trace {trace.name}: {len(trace.vms)} VMs, {trace.duration_s / 3600:.1f} h, "
            f"{args.hosts} hosts, policy {policy.name}"
        )
        print(_fmt_summary(result.decider, result.summary))
        if baseline is not None:
            print(_fmt_summary(baseline.decider, baseline.summary))
        if result.limit_blocks:
            held = ", ".join(f"{k} {v}" for k, v in sorted(result.limit_blocks.items()))
            print(f"held back by limits: {held}")
        for n in result.notes:
            print(n)
        print(f"replay wall time {result.wall_s:.1f} s")
        if args.report:
            print(f"report written to {args.report}")
    return 0
