"""`rebalancerd plan`: plan migrations for a snapshot file under a policy, and explain them.

Human output: one line per migration (step, VM, source -> target, reason, score before -> after),
the moves that could not be sequenced, and a summary. `--json` prints one JSON object with
`migrations`, `steps`, `unsequenced` and `stats`.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rebalancerd.adapters.policy_files import load_policy_file
from rebalancerd.cli.errors import CliError, checked_seed
from rebalancerd.policy.schema import Policy, default_policy
from rebalancerd.snapshot import MAX_EPOCH_S


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "plan", help="plan (and explain) migrations for a snapshot file", description=__doc__
    )
    p.add_argument("--snapshot", required=True, metavar="FILE", help="cluster snapshot JSON")
    p.add_argument("--policy", metavar="FILE", help="policy YAML (default: built-in defaults)")
    p.add_argument(
        "--time-limit", type=float, default=5.0, metavar="S", help="planner time limit (5)"
    )
    p.add_argument("--seed", type=int, default=0, help="solver seed (0)")
    p.add_argument(
        "--now", type=float, default=None, help="epoch seconds for schedules (snapshot time)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)


def load_policy(path: str | None) -> Policy:
    """The policy file given, or the default policy."""
    return default_policy() if path is None else load_policy_file(path)


def run(args: argparse.Namespace) -> int:
    from rebalancerd.files import load_snapshot
    from rebalancerd.planner import make_plan

    if args.time_limit is None or not (0 < args.time_limit <= 3600):
        raise CliError("--time-limit must be between 0 and 3600 seconds")
    seed = checked_seed(args.seed)
    snap = load_snapshot(args.snapshot)
    policy = load_policy(args.policy)
    if args.now is not None and not (math.isfinite(args.now) and abs(args.now) <= MAX_EPOCH_S):
        raise CliError(
            f"--now must be epoch seconds (finite, |now| <= {MAX_EPOCH_S:g}), got {args.now}"
        )
    now = args.now if args.now is not None else (snap.taken_at or 0.0)
    plan = make_plan(snap, policy, now=now, time_limit_s=args.time_limit, seed=seed)
    if args.json:
        print(json.dumps(plan.to_dict(), sort_keys=True))
        return 0
    for line in plan.explain():
        print(line)
    st = plan.stats
    n = len(plan.migrations)
    gib = plan.memory_mib / 1024
    imb = ""
    if st.imbalance_before is not None and st.imbalance_after is not None:
        imb = f", imbalance {st.imbalance_before:.3f} -> {st.imbalance_after:.3f}"
    print(
        f"{n} migration(s) in {len(plan.steps)} step(s), {gib:.1f} GiB to move{imb}; "
        f"mode {st.mode}, policy {st.policy}, {st.planner} {st.status}, "
        f"objective {st.objective}, bound {st.bound}, {st.wall_s:.2f} s"
    )
    if plan.unsequenced:
        print(f"{len(plan.unsequenced)} move(s) could not be sequenced")
    for note in st.notes:
        print(f"note: {note}")
    return 0
