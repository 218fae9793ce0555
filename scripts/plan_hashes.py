"""Plan equivalence: hash the ordered plan of each reference case, to prove a refactor keeps plans.

    .venv/bin/python scripts/plan_hashes.py [--max-hosts N] --write FILE
    .venv/bin/python scripts/plan_hashes.py [--max-hosts N] --check FILE

A case is a snapshot (the planner benchmark's seeded skewed snapshots, 8 to 2,000 hosts, plain /
anti-affinity / maintenance, and the shipped `examples/` snapshot) under a policy (the
benchmark's default and memory-only policies, consolidate mode, and each example policy in
`policies/` on the example snapshot). The hash covers every migration in plan order (VM, source,
target, reason kind), how the moves group into steps, and the moves left unsequenced. The time
limit is the CLI's default (5 s; CP-SAT's budget is deterministic and derived from it); on a
quiet machine no wall-clock safety net cuts a pass, so the result depends on the input only.
`--check` exits 1 and names each case whose hash changed. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from planner_scale import bench_policy  # noqa: E402

from rebalancerd.adapters.policy_files import load_policy_file  # noqa: E402
from rebalancerd.domain.model import ClusterSnapshot  # noqa: E402
from rebalancerd.files import load_snapshot  # noqa: E402
from rebalancerd.planner import make_plan  # noqa: E402
from rebalancerd.policy.schema import Mode, Policy  # noqa: E402
from rebalancerd.sim.synthetic import skewed_snapshot  # noqa: E402

SIZES = [(8, 60), (32, 400), (128, 1600), (512, 6400), (2000, 25000)]
VARIANTS = ["plain", "anti-affinity", "maintenance"]
TIME_LIMIT_S = 5.0
EXAMPLE = REPO / "examples" / "snapshot-small.json"


def consolidate_policy() -> Policy:
    pol = bench_policy()
    return pol.model_copy(update={"mode": Mode.CONSOLIDATE})


def synthetic(hosts: int, vms: int, variant: str) -> ClusterSnapshot:
    return skewed_snapshot(
        hosts,
        vms,
        seed=0,
        anti_affinity_groups=max(1, hosts // 8) if variant == "anti-affinity" else 0,
        maintenance_hosts=1 if variant == "maintenance" else 0,
    )


def cases(max_hosts: int) -> Iterator[tuple[str, ClusterSnapshot, Policy]]:
    example = load_snapshot(EXAMPLE)
    yield "example/default", example, bench_policy()
    for f in sorted((REPO / "policies").glob("*.yaml")):
        yield f"example/{f.stem}", example, load_policy_file(f)
    for h, v in SIZES:
        if h > max_hosts:
            continue
        for variant in VARIANTS:
            snap = synthetic(h, v, variant)
            yield f"{h}x{v}/{variant}/default", snap, bench_policy()
            yield f"{h}x{v}/{variant}/memory-only", snap, bench_policy(memory_only=True)
            if h <= 512:
                yield f"{h}x{v}/{variant}/consolidate", snap, consolidate_policy()


def plan_digest(snap: ClusterSnapshot, policy: Policy) -> tuple[str, int]:
    plan = make_plan(snap, policy, now=snap.taken_at or 0.0, time_limit_s=TIME_LIMIT_S, seed=0)
    doc: dict[str, Any] = {
        "migrations": [[m.vm, m.source, m.target, m.reason.kind.value] for m in plan.migrations],
        "steps": [[m.vm for m in step.migrations] for step in plan.steps],
        "unsequenced": [[u.vm, u.source, u.target] for u in plan.unsequenced],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16], len(plan.migrations)


def compute(max_hosts: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, snap, policy in cases(max_hosts):
        t0 = time.perf_counter()
        digest, n = plan_digest(snap, policy)
        out[name] = {"hash": digest, "migrations": n}
        print(f"{name:<40} {digest} {n:>6} moves {time.perf_counter() - t0:6.2f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-hosts", type=int, default=2000)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="FILE")
    g.add_argument("--check", metavar="FILE")
    args = ap.parse_args()
    got = compute(args.max_hosts)
    if args.write:
        Path(args.write).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(json.dumps({"cases": len(got), "written": args.write}))
        return 0
    want = json.loads(Path(args.check).read_text())
    changed = sorted(k for k in got if k in want and want[k]["hash"] != got[k]["hash"])
    missing = sorted(k for k in got if k not in want)
    for k in changed:
        print(f"CHANGED {k}: {want[k]} -> {got[k]}")
    print(json.dumps({"cases": len(got), "changed": changed, "missing": missing}))
    return 1 if changed or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
