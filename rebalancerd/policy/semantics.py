"""Rules that can never all hold, found without a snapshot: inside one policy document and across
the documents of a directory (duplicate group members, affinity vs anti-affinity, conflicting hard
pins, policy names used twice, time zones, windows that never overlap). Pure."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from rebalancerd.policy.document import Parsed
from rebalancerd.policy.issues import PolicyIssue, mark_position
from rebalancerd.policy.safe_yaml import MAX_PROBLEMS_PER_FILE
from rebalancerd.policy.schema import Policy
from rebalancerd.policy.week import common_intervals

_GLOB = re.compile(r"[*?\[]")


def _literal(name: str) -> bool:
    return not _GLOB.search(name)


@dataclass(slots=True)
class _Src:
    parsed: Parsed
    policy: Policy

    def problem(self, path: Sequence[Any], msg: str, prefer_key: bool = False) -> PolicyIssue:
        line, col = mark_position(self.parsed.marks.at(path, prefer_key))
        return PolicyIssue(self.parsed.source, line, col, msg)


def semantic_problems(parsed: Sequence[Parsed]) -> list[PolicyIssue]:
    """Rules that can never all hold, found without a snapshot (names and globs compared as
    written). Checked over the union of the rules of all given documents."""
    srcs = [_Src(p, p.policy) for p in parsed if p.policy is not None]
    out: list[PolicyIssue] = []
    out += _duplicate_members(srcs)
    out += _affinity_vs_anti(srcs)
    out += _pin_conflicts(srcs)
    return out[: MAX_PROBLEMS_PER_FILE * max(1, len(srcs))]


def _duplicate_members(srcs: list[_Src]) -> Iterator[PolicyIssue]:
    for s in srcs:
        for kind in ("affinity", "anti_affinity"):
            for i, g in enumerate(getattr(s.policy.rules, kind)):
                seen: set[str] = set()
                for j, vm in enumerate(g.vms):
                    if vm in seen:
                        yield s.problem(
                            ("rules", kind, i, "vms", j),
                            f"{kind} group {g.name!r} lists {vm!r} twice",
                        )
                    seen.add(vm)


def _affinity_vs_anti(srcs: list[_Src]) -> Iterator[PolicyIssue]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    group_of: dict[str, list[str]] = {}
    for s in srcs:
        for g in s.policy.rules.affinity:
            first = g.vms[0]
            for vm in g.vms[1:]:
                parent[find(vm)] = find(first)
            for vm in g.vms:
                group_of.setdefault(vm, []).append(g.name)
    if not parent:
        return
    for s in srcs:
        for i, g in enumerate(s.policy.rules.anti_affinity):
            seen: dict[str, str] = {}
            for j, vm in enumerate(g.vms):
                if vm not in parent:
                    continue
                root = find(vm)
                if root in seen and seen[root] != vm:
                    other = seen[root]
                    names = sorted(set(group_of.get(vm, []) + group_of.get(other, [])))
                    yield s.problem(
                        ("rules", "anti_affinity", i, "vms", j),
                        f"VMs {other!r} and {vm!r} are in anti-affinity group {g.name!r} but "
                        f"affinity group(s) {', '.join(repr(n) for n in names)} keep them together",
                    )
                seen.setdefault(root, vm)


def _pin_conflicts(srcs: list[_Src]) -> Iterator[PolicyIssue]:
    # hard pins with only literal host names, per VM pattern as written
    pins: dict[str, list[tuple[_Src, int, frozenset[str]]]] = {}
    forever: list[str] = []
    for s in srcs:
        forever += [m.host for m in s.policy.rules.maintenance if m.end is None]
        for i, p in enumerate(s.policy.rules.pins):
            if p.hard and all(_literal(h) for h in p.hosts):
                pins.setdefault(p.vm, []).append((s, i, frozenset(p.hosts)))
    effective: dict[str, frozenset[str]] = {}
    for vm, entries in pins.items():
        hosts = entries[0][2]
        for s, i, hs in entries[1:]:
            if not (hosts & hs):
                yield s.problem(
                    ("rules", "pins", i, "hosts"),
                    f"VM {vm!r} is hard-pinned to disjoint host sets "
                    f"({', '.join(sorted(hosts))} / {', '.join(sorted(hs))}): "
                    "no host satisfies both",
                )
            hosts = hosts & hs
        if not hosts:
            continue
        effective[vm] = hosts
        s, i, _ = entries[-1]
        usable = {h for h in hosts if not any(fnmatchcase(h, m) for m in forever)}
        if not usable:
            yield s.problem(
                ("rules", "pins", i, "hosts"),
                f"VM {vm!r} is hard-pinned to {', '.join(sorted(hosts))}, "
                "in maintenance with no end",
            )
        sc = s.policy.scope
        if sc.hosts and not sc.host_tags:
            outside = {h for h in hosts if not any(fnmatchcase(h, pat) for pat in sc.hosts)}
            if outside == hosts:
                yield s.problem(
                    ("rules", "pins", i, "hosts"),
                    f"VM {vm!r} is hard-pinned to {', '.join(sorted(hosts))}, outside this "
                    "policy's scope.hosts",
                )
    if not effective:
        return
    for s in srcs:
        for i, g in enumerate(s.policy.rules.anti_affinity):
            if not g.hard:
                continue
            members = [(vm, effective[vm]) for vm in dict.fromkeys(g.vms) if vm in effective]
            # every distinct pin set S: do more members fit only inside S than S has hosts?
            # (quadratic, so bounded; beyond the bound only identical pin sets are compared)
            by_set: dict[frozenset[str], list[str]] = {}
            for vm, hs in members:
                by_set.setdefault(hs, []).append(vm)
            full = len(by_set) <= 200
            for hs in by_set:
                inside = (
                    [m for t, ms in by_set.items() if t <= hs for m in ms] if full else by_set[hs]
                )
                if len(inside) > len(hs):
                    yield s.problem(
                        ("rules", "anti_affinity", i, "vms"),
                        f"anti-affinity group {g.name!r}: {', '.join(inside)} are hard-pinned to "
                        f"only {len(hs)} host(s) ({', '.join(sorted(hs))}) but must be apart",
                    )
                    break
        for i, g in enumerate(s.policy.rules.affinity):
            if not g.hard:
                continue
            sets = [effective[vm] for vm in g.vms if vm in effective]
            if len(sets) >= 2 and not frozenset.intersection(*sets):
                yield s.problem(
                    ("rules", "affinity", i, "vms"),
                    f"affinity group {g.name!r}: its VMs are hard-pinned to host sets with "
                    "no host in common",
                )


def set_problems(parsed: Sequence[Parsed]) -> list[PolicyIssue]:
    """Problems only visible when the files are read together."""
    srcs = [_Src(p, p.policy) for p in parsed if p.policy is not None]
    out: list[PolicyIssue] = []
    names: dict[str, _Src] = {}
    for s in srcs:
        if s.policy.name in names:
            out.append(
                s.problem(
                    ("name",),
                    f"policy name {s.policy.name!r} is also used by "
                    f"{names[s.policy.name].parsed.source}",
                )
            )
        names.setdefault(s.policy.name, s)
    timed = [s for s in srcs if s.policy.limits.windows or s.policy.limits.blackouts]
    for s in timed[1:]:
        if s.policy.limits.timezone != timed[0].policy.limits.timezone:
            out.append(
                s.problem(
                    ("limits", "timezone"),
                    f"limits.timezone {s.policy.limits.timezone!r} differs from "
                    f"{timed[0].policy.limits.timezone!r} in {timed[0].parsed.source}: "
                    "policies with windows or blackouts must use one time zone",
                    prefer_key=True,
                )
            )
    with_windows = [s for s in srcs if s.policy.limits.windows]
    if len(with_windows) > 1:
        overlap, n = common_intervals([s.policy.limits.windows for s in with_windows])
        if not overlap:
            s, earlier = with_windows[n - 1], with_windows[: n - 1]
            out.append(
                s.problem(
                    ("limits", "windows"),
                    "limits.windows never overlap those of "
                    f"{', '.join(w.parsed.source for w in earlier)}"
                    ": no migration could ever start",
                    prefer_key=True,
                )
            )
    if len(srcs) > 1:
        out += semantic_problems([s.parsed for s in srcs])
        # contradictions inside one file were reported already
        own = {p for s in srcs for p in semantic_problems([s.parsed])}
        out = [p for p in out if p not in own]
    return out
