"""Pre-check cost per move: the executor's pre-checks against the approach they replaced.

    .venv/bin/python benchmarks/precheck.py [--hosts 2000] [--vms 25000] [--moves 2000]
        [--baseline-moves 40] [--seed 1]

One seeded, skewed snapshot (`rebalancerd.sim.synthetic.skewed_snapshot`, with anti-affinity
groups), random moves (a VM from where it runs to another host), both approaches in the same
process:

- `new`: `rebalancerd.execution.precheck.precheck`, the executor's own code: the ordered list of
  `domain.checks.PRECHECKS` answered in O(1) (host states from a per-lookup view as
  `TelemetrySource.host_states()` gives it, per-host running totals for capacity and
  anti-affinity);
- `old`: the pre-checks as they were, re-implemented here as the baseline: each host-state
  lookup rebuilds the whole telemetry snapshot (as `fresh()` did: every VM value built anew),
  anti-affinity and capacity scan the whole placement for the VMs on the target.

Both see the same moves; the verdicts are compared where both rules agree (the old capacity
rule had no headroom and counted current CPU use, so only moves both accept count as agreeing).
Prints per-move times and the ratio; the last line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rebalancerd.adapters.clock import VirtualClock  # noqa: E402
from rebalancerd.domain.model import ClusterSnapshot, HostState, Vm  # noqa: E402
from rebalancerd.domain.plan import Migration, Reason, ReasonKind  # noqa: E402
from rebalancerd.execution.executor import Executor  # noqa: E402
from rebalancerd.execution.journal import Journal  # noqa: E402
from rebalancerd.execution.precheck import Wave, new_wave, precheck  # noqa: E402
from rebalancerd.execution.settings import class_spec_for  # noqa: E402
from rebalancerd.observability import MemoryMetrics  # noqa: E402
from rebalancerd.policy.resolve import apply_policy  # noqa: E402
from rebalancerd.policy.schema import Policy  # noqa: E402
from rebalancerd.sim.hypervisor import SimHypervisor  # noqa: E402
from rebalancerd.sim.synthetic import skewed_snapshot  # noqa: E402


class StatesView(Mapping[str, HostState]):
    """Host states looked up one host at a time (what the collector's host_states() does)."""

    def __init__(self, snap: ClusterSnapshot) -> None:
        self._hosts = snap.host_map()

    def __getitem__(self, name: str) -> HostState:
        return self._hosts[name].state

    def __iter__(self) -> Any:
        return iter(self._hosts)

    def __len__(self) -> int:
        return len(self._hosts)


def rebuild(snap: ClusterSnapshot) -> Callable[[], ClusterSnapshot]:
    """The old `fresh()`: the telemetry snapshot built anew on every call."""

    def fresh() -> ClusterSnapshot:
        vms = tuple(
            Vm(
                name=v.name,
                host=v.host,
                vcpus=v.vcpus,
                memory_mib=v.memory_mib,
                cpu_used_mc=v.cpu_used_mc,
                memory_used_mib=v.memory_used_mib,
                cpu_history_mc=v.cpu_history_mc,
                dirty_rate_mib_s=v.dirty_rate_mib_s,
            )
            for v in snap.vms
        )
        return ClusterSnapshot(snap.hosts, vms, snap.rules, snap.taken_at)

    return fresh


def old_precheck(
    m: Migration, wave: Wave, fresh: Callable[[], ClusterSnapshot], policy: Policy
) -> str | None:
    """The baseline: the old executor's static and dynamic checks (nothing running, no
    journal limits), host states from a rebuilt snapshot, the placement scanned."""
    vm = wave.vms.get(m.vm)
    if vm is None:
        return "unknown_vm"
    if m.source not in wave.hosts or m.target not in wave.hosts:
        return "unknown_host"
    if m.source == m.target:
        return "same_host"
    if wave.placement.get(m.vm) != m.source:
        return "vm_not_on_source"
    if m.vm in wave.snap.rules.exclusions:
        return "excluded"
    pins = wave.hard_pins.get(m.vm)
    if pins is not None and m.target not in pins:
        return "pinned"
    if not vm.migratable:
        return "not_migratable"
    _, spec = class_spec_for(policy, vm)
    if vm.local_disk_mib > 0 and not spec.non_shared_disk:
        return "local_disk"

    def state(name: str) -> HostState | None:
        h = wave.hosts.get(name)
        if h is None:
            return None
        f = fresh().host_map().get(name)
        if f is None:
            return HostState.STALE
        return f.state if f.state is not HostState.ACTIVE else h.state

    src = state(m.source)
    if src is None or not src.may_send:
        return "source_stale"
    tgt = state(m.target)
    if tgt is not HostState.ACTIVE:
        return f"target_{tgt.value if tgt else 'unknown'}"
    target = wave.hosts[m.target]
    if vm.cpu_model and target.cpu_model and vm.cpu_model != target.cpu_model:
        return "cpu_incompatible"
    feats = vm.required_cpu_features
    if feats and target.cpu_features and not feats <= target.cpu_features:
        return "cpu_incompatible"
    there = {v for v, h in wave.placement.items() if h == m.target}
    for g in wave.snap.rules.groups:
        if g.anti and g.hard and m.vm in g.vms and (g.vms - {m.vm}) & there:
            return "anti_affinity"
    cpu = sum(wave.vms[v].cpu_used_mc for v in there if v in wave.vms)
    mem = sum(wave.vms[v].memory_mib for v in there if v in wave.vms)
    if mem + vm.memory_mib > target.memory_mib or cpu + vm.cpu_used_mc > target.cpu_capacity_mc:
        return "capacity"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=2000)
    ap.add_argument("--vms", type=int, default=25000)
    ap.add_argument("--moves", type=int, default=2000, help="moves checked the new way")
    ap.add_argument("--baseline-moves", type=int, default=40, help="moves checked the old way")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    snap = skewed_snapshot(args.hosts, args.vms, args.seed, anti_affinity_groups=args.hosts // 8)
    policy = Policy.model_validate({"apiVersion": "rebalancerd/v1", "kind": "Policy"})
    clock = VirtualClock()
    eff = apply_policy(policy, snap, clock.now())
    rng = random.Random(args.seed)
    host_names = [h.name for h in snap.hosts]
    n = max(args.moves, args.baseline_moves)
    moves = []
    for _ in range(n):
        v = snap.vms[rng.randrange(len(snap.vms))]
        target = rng.choice([h for h in rng.sample(host_names, 2) if h != v.host])
        moves.append(Migration(v.name, v.host, target, Reason(ReasonKind.BALANCE, "bench")))

    states = StatesView(snap)
    ex = Executor(
        SimHypervisor(clock),
        clock,
        MemoryMetrics(),
        Journal.open(":memory:"),
        host_states=lambda: states,
    )
    t0 = time.perf_counter()
    wave = new_wave(eff, policy, {}, frozenset(), 0.0, ex.running)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = [precheck(m, wave, ex) for m in moves[: args.moves]]
    new_s = (time.perf_counter() - t0) / args.moves

    fresh = rebuild(snap)
    t0 = time.perf_counter()
    old = [old_precheck(m, wave, fresh, policy) for m in moves[: args.baseline_moves]]
    old_s = (time.perf_counter() - t0) / args.baseline_moves

    both = list(zip(new, old, strict=False))
    agree = sum(1 for a, b in both if a == b)
    differ: dict[str, int] = {}
    for a, b in both:
        if a != b:
            k = f"{b or 'ok'}->{a or 'ok'}"
            differ[k] = differ.get(k, 0) + 1
    accepted_by_both = sum(1 for a, b in both if a is None and b is None)
    ratio = old_s / new_s if new_s > 0 else float("inf")
    print(f"{args.hosts} hosts / {args.vms} VMs, {args.moves} moves new, {args.baseline_moves} old")
    print(f"new: {new_s * 1e6:10.1f} us per move (wave set-up {setup_s * 1e3:.1f} ms, once)")
    print(f"old: {old_s * 1e6:10.1f} us per move")
    print(f"old / new: {ratio:,.0f}x")
    print(
        f"same verdict on {agree} of {len(both)} moves checked both ways "
        f"({accepted_by_both} accepted by both)"
    )
    figures = {
        "hosts": args.hosts,
        "vms": args.vms,
        "moves_new": args.moves,
        "moves_old": args.baseline_moves,
        "new_us_per_move": round(new_s * 1e6, 2),
        "old_us_per_move": round(old_s * 1e6, 2),
        "wave_setup_ms": round(setup_s * 1e3, 2),
        "ratio": round(ratio, 1),
        "same_verdict": agree,
        "compared": len(both),
        "differences_old_to_new": differ,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
