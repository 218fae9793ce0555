"""Independent replay of a plan: every way it could break capacity, hard rules or budgets."""

from __future__ import annotations

from rebalancerd.domain.model import ClusterSnapshot
from rebalancerd.domain.plan import MigrationPlan
from rebalancerd.planner.problem import build_problem
from rebalancerd.planner.state import State
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.policy.schema import Policy


def verify_plan(
    snapshot: ClusterSnapshot,
    policy: Policy,
    plan: MigrationPlan,
    *,
    now: float,
    frozen: frozenset[str] = frozenset(),
    max_moves: int | None = None,
    max_mib: int | None = None,
    applied: bool = False,
) -> list[str]:
    """Violations, one line each (empty = the plan is safe in any order inside each step).
    With applied=True the snapshot already has the policy applied (as make_plan's)."""
    snap = snapshot if applied else apply_policy(policy, snapshot, now)
    p = build_problem(snap, policy, frozen=frozen, max_moves=max_moves, max_mib=max_mib)
    cur = State(p)
    out: list[str] = []
    migs = plan.migrations
    if len(migs) > p.max_moves:
        out.append(f"{len(migs)} migrations > budget {p.max_moves}")
    if p.max_mib is not None and plan.memory_mib > p.max_mib:
        out.append(f"{plan.memory_mib} MiB moved > budget {p.max_mib}")
    for i, step in enumerate(plan.steps, 1):
        if len(step.migrations) > max(1, p.max_concurrent):
            out.append(f"step {i}: {len(step.migrations)} migrations > max_concurrent")
        src: dict[int, int] = {}
        dst: dict[int, int] = {}
        inc_c: dict[int, int] = {}
        inc_m: dict[int, int] = {}
        inc_cfg: dict[int, int] = {}
        inc_g: dict[tuple[int, int], int] = {}
        moves: list[tuple[int, int]] = []
        for m in step.migrations:
            v = p.vm_index.get(m.vm)
            a = p.host_index.get(m.source)
            b = p.host_index.get(m.target)
            if v is None or a is None or b is None:
                out.append(f"step {i}: unknown vm or host in {m.vm} {m.source}->{m.target}")
                continue
            if cur.where[v] != a:
                out.append(f"step {i}: {m.vm} is not on {m.source}")
            if not p.movable[v]:
                out.append(f"step {i}: {m.vm} must not move ({p.why_fixed[v]})")
            if not p.may_host(v, b) or b == a:
                out.append(f"step {i}: {m.vm} may not go to {m.target}")
            src[a] = src.get(a, 0) + 1
            dst[b] = dst.get(b, 0) + 1
            inc_c[b] = inc_c.get(b, 0) + p.cpu[v]
            inc_m[b] = inc_m.get(b, 0) + p.mem[v]
            inc_cfg[b] = inc_cfg.get(b, 0) + p.cfg[v]
            for g in p.anti_of.get(v, ()):
                if cur.anti_count.get((g, b), 0) + inc_g.get((g, b), 0) > 0:
                    out.append(
                        f"step {i}: {m.vm} joins an anti-affinity peer ({p.groups[g].name}) "
                        f"on {m.target}"
                    )
                inc_g[(g, b)] = inc_g.get((g, b), 0) + 1
            moves.append((v, b))
        for a, n in src.items():
            if n > max(1, p.max_per_source):
                out.append(f"step {i}: {n} migrations from {p.hosts[a].name} > max_per_source")
        for b, n in dst.items():
            if n > max(1, p.max_per_target):
                out.append(f"step {i}: {n} migrations to {p.hosts[b].name} > max_per_target")
            if cur.cpu[b] + inc_c[b] > p.cap_cpu[b] or cur.mem[b] + inc_m[b] > p.cap_mem[b]:
                out.append(f"step {i}: {p.hosts[b].name} over capacity with headroom")
            if cur.cfg[b] + inc_cfg[b] > p.cap_cfg[b]:
                out.append(f"step {i}: {p.hosts[b].name} configured memory over the overcommit")
        for v, b in moves:
            cur.move(v, b)
    return out
