"""Live migrations through the executor in the libvirt lab (real libvirtd + QEMU guests).

For each concurrency level (default 1, 2 and 4) and each guest kind (idle 64 MiB guests, and
128 MiB guests whose boot sector keeps dirtying RAM at about 98 MB/s), N migrations run through
`Executor.execute` in rounds (every guest moves to the next host, h1 -> h2 -> h3 -> h1), with
max_concurrent = max_per_source = max_per_target = the level and a downtime limit (default 300 ms).
After every round each guest must run exactly once, on the host the executor says. Moves are
labelled DRAIN: a ring of balance moves does not reduce the imbalance, and the executor's "did it
help" back-off would (rightly) pause them after two rounds.

Prints per level: wall time, migrations per minute (and the ratio against concurrency 1 of the
same kind, run in the same process: the baseline), downtime p50/p99 against the limit, failures,
lost VMs, concurrency observed in libvirt's lifecycle events, how many converging (completed)
moves exceeded the downtime limit, and the concurrency the adaptive controller allowed (its cap
in force at the start and after each change). Not a timed test: figures depend on the machine
(2 shared cores here).

Each level is run by a new Executor, as after a daemon restart, on one journal (state directory)
shared by the whole run: what the controller learned at one level (per-level downtimes, caps) is
kept, as it is by the daemon. `--fresh-state` gives every level an empty in-memory journal instead
(every level starts from scratch: slow start at `--start-cap`, default 2).

    .venv/bin/python benchmarks/migration_lab.py [--n 8] [--dirty-n 4] [--levels 1,2,4]

Last line: one JSON object with migrations, failures, lost_vms, downtime_p50_ms,
downtime_p99_ms, downtime_limit_ms, max_concurrency_seen, concurrency_limit, over_limit (converging
moves over the downtime limit; target 0) and more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from rebalancerd.adapters.clock import SystemClock  # noqa: E402
from rebalancerd.adapters.libvirt import LibvirtHypervisor  # noqa: E402
from rebalancerd.adapters.libvirt_events import HypervisorEvent  # noqa: E402
from rebalancerd.domain.model import ClusterSnapshot, Host, Vm  # noqa: E402
from rebalancerd.domain.plan import (  # noqa: E402
    Migration,
    MigrationPlan,
    PlanStep,
    Reason,
    ReasonKind,
)
from rebalancerd.execution.adaptive import TOTAL, AdaptiveConcurrency  # noqa: E402
from rebalancerd.execution.executor import Executor  # noqa: E402
from rebalancerd.execution.journal import Journal  # noqa: E402
from rebalancerd.observability import MemoryMetrics  # noqa: E402
from rebalancerd.policy.schema import Policy  # noqa: E402
from tests.fixtures.lab import Lab, start_lab  # noqa: E402

KINDS = {"idle": (64, False, 0.0), "dirty": (128, True, 98.0)}


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    k = max(0, min(len(data) - 1, math.ceil(p / 100 * len(data)) - 1))
    return data[k]


def observed_concurrency(events: list[HypervisorEvent]) -> int:
    """Max migrations at once from libvirt lifecycle events (incoming start -> resumed/stopped)."""
    edges: list[tuple[float, int]] = []
    open_at: dict[str, float] = {}
    for e in sorted((e for e in events if e.kind == "lifecycle"), key=lambda e: e.at):
        if e.migration == "incoming":
            open_at[e.vm] = e.at
        elif e.vm in open_at and (
            e.migration in ("resumed", "failed") or e.event in ("stopped", "resumed")
        ):
            edges += [(open_at.pop(e.vm), 1), (e.at, -1)]
    edges += [(t, 1) for t in open_at.values()]
    now = peak = 0
    for _, d in sorted(edges):
        now += d
        peak = max(peak, now)
    return peak


def wait_idle(
    lab: Lab, where: dict[str, str], *, below: float = 0.05, window_s: float = 0.5
) -> float | None:
    """Wait until freshly started idle guests are idle: each uses less than `below` of a CPU
    over `window_s`. SeaBIOS's POST keeps a new guest busy for several seconds (4 booting guests
    take both cores of this machine); migrating them then measures booting guests, not idle
    ones. Returns the seconds waited (None: not idle within 60 s)."""
    import libvirt

    conns = {h.name: libvirt.open(h.uri) for h in lab.hosts}
    try:
        doms = [conns[host].lookupByName(vm) for vm, host in where.items()]
        t0 = time.monotonic()
        prev = [d.info()[4] for d in doms]
        while time.monotonic() - t0 < 60.0:
            time.sleep(window_s)
            cur = [d.info()[4] for d in doms]
            if all((c - p) / 1e9 / window_s < below for c, p in zip(cur, prev, strict=True)):
                return time.monotonic() - t0
            prev = cur
        return None
    finally:
        for c in conns.values():
            c.close()


async def run_level(
    lab: Lab, level: int, kind: str, n: int, downtime_ms: int, args: argparse.Namespace
) -> dict[str, Any]:
    mib, dirty, rate = KINDS[kind]
    hosts = [h.name for h in lab.hosts]
    names = [f"b{kind[0]}{level}-{i}" for i in range(level)]
    where = {vm: hosts[i % len(hosts)] for i, vm in enumerate(names)}
    lab.remove_all_guests()
    for vm, host in where.items():
        lab.define_guest(host, vm, mib, dirty=dirty)
    if dirty:
        for vm, host in where.items():
            lab.wait_dirtying(host, vm)
    else:
        settle = wait_idle(lab, where)
        if settle is None:
            print(f"    warning: {kind} guests still busy after 60 s", flush=True)
    events: list[HypervisorEvent] = []
    hv = LibvirtHypervisor(lab.inventory(), poll_interval_s=0.1, listeners=[events.append])
    metrics = MemoryMetrics()
    journal = Journal.open(":memory:" if args.fresh_state else args.state_dir)
    ex = Executor(
        hv,
        SystemClock(),
        metrics,
        journal,
        adaptive=AdaptiveConcurrency(
            slow_start=args.slow_start, start_cap=args.start_cap, headroom=args.headroom
        )
        if args.adaptive
        else AdaptiveConcurrency(slow_start=False, trigger_fraction=math.inf),
        stagger_s=args.stagger_s,
        share_downtime=args.share_downtime,
    )
    allowed = [ex.adaptive.cap(TOTAL, level)]
    policy = Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "limits": {
                "max_concurrent": level,
                "max_per_source": level,
                "max_per_target": level,
                "max_per_cycle": 1000,
                "cooldown_s": 0,
            },
            "migration": {
                "default": {
                    "max_downtime_ms": downtime_ms,
                    "time_budget_s": 120,
                    "bandwidth_mib_s": args.bandwidth_mib_s,
                }
            },
        }
    )
    downtimes: list[float] = []
    failures = lost = done = 0
    reasons: Counter[str] = Counter()
    max_conc = 0
    eff_min = level
    over = 0
    changes: list[str] = []
    rounds = math.ceil(n / level)
    t0 = time.perf_counter()
    try:
        for _ in range(rounds):
            moves = []
            for vm in names[: min(level, n - done)]:
                src = where[vm]
                tgt = hosts[(hosts.index(src) + 1) % len(hosts)]
                moves.append(Migration(vm, src, tgt, Reason(ReasonKind.DRAIN, "bench"), mib))
            snap = ClusterSnapshot(
                tuple(Host(h, cores=4, memory_mib=8192) for h in hosts),
                tuple(
                    Vm(vm, h, 1, mib, cpu_used_mc=100, dirty_rate_mib_s=rate)
                    for vm, h in where.items()
                ),
                taken_at=time.time(),
            )
            report = await ex.execute(MigrationPlan((PlanStep(tuple(moves)),)), snap, policy)
            done += len(moves)
            max_conc = max(max_conc, report.max_concurrency)
            eff_min = min(eff_min, report.concurrency_effective_min)
            over += report.downtime_over_limit
            changes += [
                f"{c['scope']}:{c['old']}->{c['new']}@{c['downtime_ms']:.0f}ms"
                for c in report.concurrency_changes
            ]
            allowed += [c["new"] for c in report.concurrency_changes if c["scope"] == TOTAL]
            failures += len(report.failed) + len(report.aborted) + len(report.skipped)
            for r in report.failed + report.aborted + report.skipped:
                reasons[f"{r.reason}: {r.detail}"[:160]] += 1
            for r in report.succeeded:
                where[r.vm] = r.target
                if r.downtime_ms is not None:
                    downtimes.append(r.downtime_ms)
            for vm in names:  # every guest exactly once, where the executor says
                runs = lab.running_on(vm)
                if len(runs) != 1:
                    lost += 1
                elif runs[0] != where[vm]:
                    failures += 1
                    where[vm] = runs[0]
    finally:
        await hv.close()
        journal.close()
    wall = time.perf_counter() - t0
    return {
        "level": level,
        "kind": kind,
        "migrations": done,
        "wall_s": round(wall, 2),
        "per_min": round(done / wall * 60, 1) if wall > 0 else 0.0,
        "downtimes": downtimes,
        "failures": failures,
        "lost": lost,
        "max_concurrency_executor": max_conc,
        "max_concurrency_events": observed_concurrency(events),
        "concurrency_effective_min": eff_min,
        "downtime_over_limit_executor": over,
        "over_limit": sum(1 for d in downtimes if d > downtime_ms),
        "allowed_caps": allowed,
        "concurrency_changes": changes,
        "failure_reasons": dict(reasons),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(x) for x in args.levels.split(",")]
    lab = start_lab(3)
    results: list[dict[str, Any]] = []
    try:
        for kind, n in (("idle", args.n), ("dirty", args.dirty_n)):
            if n <= 0:
                continue
            base: float | None = None
            for level in levels:
                r = await run_level(lab, level, kind, n, args.downtime_ms, args)
                base = base or r["per_min"]
                r["ratio_vs_c1"] = round(r["per_min"] / base, 2) if base else None
                results.append(r)
                p50, p99 = pct(r["downtimes"], 50), pct(r["downtimes"], 99)
                print(
                    f"{kind:5s} c={level}: {r['migrations']:3d} migrations in {r['wall_s']:6.1f} s"
                    f" = {r['per_min']:6.1f}/min (x{r['ratio_vs_c1']} vs c=1)"
                    f"  downtime p50 {p50} ms p99 {p99} ms (limit {args.downtime_ms})"
                    f"  failures {r['failures']} lost {r['lost']}"
                    f"  concurrency seen {r['max_concurrency_events']}"
                    f" (executor {r['max_concurrency_executor']}, limit {level})"
                    f"  effective cap min {r['concurrency_effective_min']}",
                    flush=True,
                )
                print(
                    f"    over limit: {r['over_limit']} of {len(r['downtimes'])} converging moves;"
                    f" controller allowed {'->'.join(map(str, r['allowed_caps']))}"
                    f" (policy {level}); downtimes {sorted(round(d) for d in r['downtimes'])}",
                    flush=True,
                )
                if r["concurrency_changes"]:
                    print(f"    cap changes: {' '.join(r['concurrency_changes'])}", flush=True)
                for why, count in r["failure_reasons"].items():
                    print(f"    failure x{count}: {why}", flush=True)
    finally:
        lab.remove_all_guests()
        problems = lab.teardown()
        if problems:
            print(f"lab teardown problems: {problems}", file=sys.stderr)
    all_down = [d for r in results for d in r["downtimes"]]
    over = sum(1 for r in results for d in r["downtimes"] if d > args.downtime_ms)
    throttle_ok = all(
        r["max_concurrency_events"] <= r["level"] and r["max_concurrency_executor"] <= r["level"]
        for r in results
    )
    return {
        "migrations": sum(r["migrations"] for r in results),
        "failures": sum(r["failures"] for r in results),
        "lost_vms": sum(r["lost"] for r in results),
        "downtime_p50_ms": pct(all_down, 50),
        "downtime_p99_ms": pct(all_down, 99),
        "downtime_max_ms": max(all_down) if all_down else None,
        "downtime_limit_ms": args.downtime_ms,
        "downtime_over_limit": over,
        "over_limit": over,
        "max_concurrency_seen": max((r["max_concurrency_events"] for r in results), default=0),
        "concurrency_limit": max(levels),
        "concurrency_effective_min": min(
            (r["concurrency_effective_min"] for r in results), default=0
        ),
        "adaptive": args.adaptive,
        "stagger_s": args.stagger_s,
        "slow_start": args.slow_start,
        "headroom": args.headroom,
        "start_cap": args.start_cap,
        "fresh_state": args.fresh_state,
        "bandwidth_mib_s": args.bandwidth_mib_s,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "share_downtime": args.share_downtime,
        "throttle_held": throttle_ok,
        "per_level": [
            {k: v for k, v in r.items() if k != "downtimes"}
            | {
                "downtime_p50_ms": pct(r["downtimes"], 50),
                "downtime_p99_ms": pct(r["downtimes"], 99),
            }
            for r in results
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=8, help="idle-guest migrations per level")
    ap.add_argument("--dirty-n", type=int, default=4, help="dirtying-guest migrations per level")
    ap.add_argument("--levels", default="1,2,4")
    ap.add_argument("--downtime-ms", type=int, default=300)
    ap.add_argument(
        "--no-adaptive",
        dest="adaptive",
        action="store_false",
        help="never lower the concurrency cap after an overshoot (the baseline)",
    )
    ap.add_argument(
        "--no-slow-start",
        dest="slow_start",
        action="store_false",
        help="an unseen cluster starts at the policy's limit (the old behaviour)",
    )
    ap.add_argument(
        "--headroom", type=float, default=1.5, help="safety factor of the growth prediction"
    )
    ap.add_argument(
        "--start-cap", type=int, default=2, help="slow start: the cap with nothing learned"
    )
    ap.add_argument(
        "--fresh-state",
        action="store_true",
        help="every level starts from an empty journal (nothing learned)",
    )
    ap.add_argument(
        "--state-dir", default=None, help="journal directory shared by the levels (default: tmp)"
    )
    ap.add_argument(
        "--bandwidth-mib-s", type=int, default=None, help="class bandwidth cap (default none)"
    )
    ap.add_argument("--stagger-s", type=float, default=0.0, help="least time between starts")
    ap.add_argument(
        "--no-share-downtime",
        dest="share_downtime",
        action="store_false",
        help="do not divide the downtime target by the concurrent switch-overs",
    )
    args = ap.parse_args()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="rebalancerd-bench-")
        args.state_dir = tmp.name
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out = asyncio.run(main_async(args))
    if tmp is not None:
        tmp.cleanup()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
