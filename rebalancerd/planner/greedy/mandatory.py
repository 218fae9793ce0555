"""Phases 1-2 of the greedy: empty the hosts that must be emptied, then fix hard-rule
violations (pins and CPU compatibility, hard anti-affinity, hard affinity)."""

from __future__ import annotations

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner.greedy.context import GreedyContext, Mandatory
from rebalancerd.planner.greedy.scoring import best_target, unit_fits, unit_of


# -- phase 1: drains ---------------------------------------------------------------------------
def drain(ctx: GreedyContext, pack: bool) -> None:
    p, s = ctx.p, ctx.s
    for h in range(p.n_hosts):
        kind = p.empty_reason[h]
        if kind is None:
            continue
        state = "in maintenance" if kind is ReasonKind.DRAIN else "degraded"
        for v in sorted(s.on[h], key=lambda v: (-p.mem[v], v)):
            if s.where[v] != h:
                continue  # moved with its affinity unit
            if not p.movable[v]:
                ctx.notes.append(f"vm {p.vms[v].name} stays on {p.hosts[h].name}: {p.why_fixed[v]}")
                continue
            unit = unit_of(ctx, v) or [v]
            if not ctx.can_spend(unit):
                ctx.notes.append(
                    f"vm {p.vms[v].name} stays on {p.hosts[h].name}: move budget spent"
                )
                continue
            t = best_target(ctx, unit, pack=pack)
            if t is None:
                ctx.notes.append(
                    f"vm {p.vms[v].name} cannot leave {p.hosts[h].name}: no host has room "
                    f"({p.mem[v]} MiB, {p.cpu[v]} mc) within headroom and rules"
                )
                continue
            ctx.apply(unit, t, Mandatory(kind, f"host {p.hosts[h].name} {state}"))


# -- phase 2: hard rules -----------------------------------------------------------------------
def _rule_move(
    ctx: GreedyContext, v: int, pack: bool, reason: Mandatory, *, fixed: str, spent: str, full: str
) -> None:
    """Move one VM that breaks a hard rule to the best host that takes it, or note why not
    (`fixed`: it cannot move; `spent`: the budget is spent; `full`: no host has room)."""
    if not ctx.p.movable[v]:
        ctx.notes.append(fixed)
    elif not ctx.can_spend([v]):
        ctx.notes.append(spent)
    elif (t := best_target(ctx, [v], pack=pack)) is None:
        ctx.notes.append(full)
    else:
        ctx.apply([v], t, reason)


def fix_rules(ctx: GreedyContext, pack: bool) -> None:
    p, s = ctx.p, ctx.s
    # Pins and CPU compatibility.
    for v in range(p.n_vms):
        allowed = p.allowed[v]
        if allowed is None or s.where[v] in allowed or p.empty_reason[s.where[v]] is not None:
            continue
        name = p.vms[v].name
        _rule_move(
            ctx,
            v,
            pack,
            Mandatory(ReasonKind.RULE, f"vm {name} must run on a pinned/compatible host", "pin"),
            fixed=f"vm {name} breaks its pin but {p.why_fixed.get(v)}",
            spent=f"vm {name} breaks its pin: move budget spent",
            full=f"vm {name} breaks its pin and no allowed host has room",
        )
    for g in p.groups:
        if not g.hard:
            continue
        if g.anti:
            by_host: dict[int, list[int]] = {}
            for m in g.vms:
                by_host.setdefault(s.where[m], []).append(m)
            for h, members in sorted(by_host.items()):
                if len(members) < 2:
                    continue
                # Keep the member that is costliest to move (or fixed); move the others.
                members.sort(key=lambda m: (not p.movable[m], p.cost_mib[m], -m), reverse=True)
                for m in members[1:]:
                    name = p.vms[m].name
                    _rule_move(
                        ctx,
                        m,
                        pack,
                        Mandatory(
                            ReasonKind.RULE,
                            f"anti-affinity group {g.name}: shares host {p.hosts[h].name}",
                            g.name,
                        ),
                        fixed=f"anti-affinity {g.name}: {name} cannot move ({p.why_fixed.get(m)})",
                        spent=f"anti-affinity {g.name}: move budget spent",
                        full=f"anti-affinity {g.name}: no host can take {name}",
                    )
        else:
            hosts_of = [s.where[m] for m in g.vms]
            if len(set(hosts_of)) < 2:
                continue
            counts: dict[int, int] = {}
            for h in hosts_of:
                counts[h] = counts.get(h, 0) + 1
            for home, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                out = [m for m in g.vms if s.where[m] != home]
                if not all(p.movable[m] for m in out) or not ctx.can_spend(out):
                    continue
                if not unit_fits(ctx, out, home):
                    continue
                ctx.apply(
                    out,
                    home,
                    Mandatory(
                        ReasonKind.RULE,
                        f"affinity group {g.name}: join host {p.hosts[home].name}",
                        g.name,
                    ),
                )
                break
            else:
                ctx.notes.append(f"affinity group {g.name} is split and cannot be joined")
