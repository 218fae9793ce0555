"""Several policies in force at once: the one policy they add up to, by priority. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from rebalancerd.policy.schedule import NOTHING_SCHEDULED, policies_at
from rebalancerd.policy.schema import (
    HighAvailability,
    Limits,
    Migration,
    Policy,
    Rules,
    Scope,
    default_policy,
)
from rebalancerd.policy.week import common_intervals, to_windows


def _dedup(items: Iterable[Any]) -> list[Any]:
    """Items in order, repeats dropped (linear: models are compared by their JSON)."""
    seen: set[Any] = set()
    out: list[Any] = []
    for x in items:
        key = x.model_dump_json() if isinstance(x, BaseModel) else x
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


def _scope_union(scopes: Sequence[Scope]) -> Scope:
    all_hosts = any(not s.hosts and not s.host_tags for s in scopes)
    all_vms = any(not s.vms and not s.vm_tags for s in scopes)
    return Scope(
        hosts=[] if all_hosts else _dedup(h for s in scopes for h in s.hosts),
        host_tags=[] if all_hosts else _dedup(h for s in scopes for h in s.host_tags),
        vms=[] if all_vms else _dedup(v for s in scopes for v in s.vms),
        vm_tags=[] if all_vms else _dedup(v for s in scopes for v in s.vm_tags),
    )


def ordered(policies: Sequence[Policy]) -> list[Policy]:
    """Highest priority first; equal priorities by name."""
    return sorted(policies, key=lambda p: (-p.priority, p.name))


def sets_mode(policy: Policy) -> bool:
    """True if the policy's file (or constructor) gave ``mode`` explicitly."""
    return "mode" in policy.model_fields_set


def primary_of(ordered_policies: Sequence[Policy]) -> Policy:
    """The policy that decides mode, targets, migration and energy: the highest-priority one
    that sets ``mode``; if none does, the highest-priority one."""
    for p in ordered_policies:
        if sets_mode(p):
            return p
    return ordered_policies[0]


def combine(policies: Sequence[Policy]) -> Policy:
    """The one policy in force when several apply (see docs/policies.md, "Several policies").

    - The primary policy (highest ``priority``, then name, among those that set ``mode``; if
      none does, among all) decides ``mode``, ``targets``,
      ``migration.default``, ``energy`` and ``rules.evacuate_degraded``.
    - ``dry_run`` is on if any policy says so.
    - ``scope`` is the union of the scopes (a policy with an empty scope covers everything).
    - Rules add up: affinity, anti-affinity, pins, exclusions and maintenance of all policies.
    - Limits: the most restrictive wins: the smallest ``max_*`` and byte budget, the longest
      cooldown and return guard, every blackout, and migrations only where the allowed windows
      of *all* policies that define windows overlap. Windows and blackouts must share one time zone.
    - Migration classes are concatenated in priority order (the first matching class wins).
    - HA groups add up (a VM in several takes the highest priority); the primary decides
      ``ha.dead_after_probes``.
    """
    if not policies:
        return default_policy()
    pol = ordered(policies)
    primary = primary_of(pol)
    if len(pol) == 1:
        return primary
    budgets = [p.limits.max_mib_per_hour for p in pol if p.limits.max_mib_per_hour is not None]
    with_windows = [p for p in pol if p.limits.windows]
    windows = list(with_windows[0].limits.windows) if with_windows else []
    if len(with_windows) > 1:
        windows = to_windows(common_intervals([p.limits.windows for p in with_windows])[0])
    tz_from = [p for p in pol if p.limits.windows or p.limits.blackouts]
    limits = Limits(
        max_concurrent=min(p.limits.max_concurrent for p in pol),
        max_per_source=min(p.limits.max_per_source for p in pol),
        max_per_target=min(p.limits.max_per_target for p in pol),
        max_per_cycle=min(p.limits.max_per_cycle for p in pol),
        max_mib_per_hour=min(budgets) if budgets else None,
        cooldown_s=max(p.limits.cooldown_s for p in pol),
        return_guard_s=max(p.limits.return_guard_s for p in pol),
        windows=windows,
        blackouts=_dedup(b for p in pol for b in p.limits.blackouts),
        timezone=(tz_from[0] if tz_from else primary).limits.timezone,
    )
    rules = Rules(
        affinity=_dedup(g for p in pol for g in p.rules.affinity),
        anti_affinity=_dedup(g for p in pol for g in p.rules.anti_affinity),
        pins=_dedup(x for p in pol for x in p.rules.pins),
        exclusions=_dedup(x for p in pol for x in p.rules.exclusions),
        maintenance=_dedup(x for p in pol for x in p.rules.maintenance),
        evacuate_degraded=primary.rules.evacuate_degraded,
    )
    name = "+".join(p.name for p in pol)
    if len(name) > 253:
        name = f"{primary.name}+{len(pol) - 1} more"[:253]
    return primary.model_copy(
        update={
            "name": name,
            "dry_run": any(p.dry_run for p in pol),
            "scope": _scope_union([p.scope for p in pol]),
            "rules": rules,
            "limits": limits,
            "migration": Migration(
                default=primary.migration.default,
                classes=[c for p in pol for c in p.migration.classes],
            ),
            "ha": HighAvailability(
                groups=_dedup(g for p in pol for g in p.ha.groups),
                dead_after_probes=primary.ha.dead_after_probes,
            ),
        }
    )


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The policies of a directory (or given programmatically), in file-name order."""

    policies: tuple[Policy, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def scheduled(self) -> bool:
        """True if some policy has a schedule (the policy in force then depends on the time)."""
        return any(p.schedule is not None for p in self.policies)

    def in_force(self, now: float | None = None) -> list[Policy]:
        """The policies in force at wall time `now` (None: all, schedules ignored)."""
        return list(self.policies) if now is None else policies_at(self.policies, now)

    def effective(self, now: float | None = None) -> Policy:
        """The policy in force at wall time `now`: ``combine`` of the policies whose schedule
        covers `now` (None: of all, schedules ignored). No policy at all = ``default_policy()``;
        policies that all have schedules, none covering `now` = ``NOTHING_SCHEDULED``
        (advisory: plans, never moves)."""
        if not self.policies:
            return default_policy()
        live = self.in_force(now)
        if not live:
            return NOTHING_SCHEDULED
        return combine(live)
