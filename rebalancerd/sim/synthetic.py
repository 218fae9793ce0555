"""Seeded, skewed synthetic cluster snapshots for benchmarks, property tests and the demo.

Three host types (different cores, memory, speed and SPECpower-like power curves), VM flavours
from 1 vCPU / 2 GiB to 16 vCPU / 128 GiB (small ones common), CPU histories, dirty rates, some
local disks. Skew: about 15 % of hosts are "hot" (three times the share of VMs, often near full),
5 % nearly empty, the rest average. Deterministic for (hosts, vms, seed, options).
"""

from __future__ import annotations

import random

from rebalancerd.domain.model import (
    AffinityGroup,
    ClusterRules,
    ClusterSnapshot,
    Host,
    HostState,
    PowerCurve,
    Vm,
)

GIB = 1024

# (cores, memory GiB, speed, power curve watts 0..100 %)
HOST_TYPES: tuple[tuple[int, int, float, tuple[float, ...]], ...] = (
    (32, 256, 1.0, (95, 130, 150, 170, 190, 212, 235, 258, 283, 310, 340)),
    (48, 384, 1.1, (110, 150, 175, 200, 225, 252, 280, 310, 342, 375, 410)),
    (64, 512, 1.2, (120, 165, 195, 225, 255, 287, 320, 355, 392, 430, 470)),
)
# (vcpus, memory GiB, relative frequency)
FLAVOURS: tuple[tuple[int, int, int], ...] = (
    (1, 2, 14),
    (2, 4, 16),
    (2, 8, 14),
    (4, 8, 12),
    (4, 16, 12),
    (8, 16, 8),
    (8, 32, 10),
    (16, 64, 6),
    (16, 128, 2),
)
HISTORY = 12


def skewed_snapshot(
    hosts: int,
    vms: int,
    seed: int,
    *,
    anti_affinity_groups: int = 0,
    maintenance_hosts: int = 0,
) -> ClusterSnapshot:
    if hosts < 1 or vms < 0:
        raise ValueError("need at least one host and a non-negative VM count")
    rng = random.Random(f"skewed/{hosts}/{vms}/{seed}")
    host_list: list[Host] = []
    for i in range(hosts):
        cores, mem, speed, watts = HOST_TYPES[rng.randrange(len(HOST_TYPES))]
        host_list.append(
            Host(
                name=f"h{i:04d}",
                cores=cores,
                memory_mib=mem * GIB,
                speed=speed,
                power_curve=PowerCurve(tuple(float(w) for w in watts)),
                tags=frozenset({f"rack{i % 8}"}),
            )
        )
    # Skew: share of VMs each host attracts.
    share = []
    for _ in range(hosts):
        r = rng.random()
        share.append(3.0 if r < 0.15 else (0.1 if r < 0.20 else 1.0))
    cum: list[float] = []
    acc = 0.0
    for s in share:
        acc += s
        cum.append(acc)

    flav_weights = [f[2] for f in FLAVOURS]
    used_mem = [0] * hosts
    vm_list: list[Vm] = []
    for j in range(vms):
        vcpus, mem_gib, _ = rng.choices(FLAVOURS, weights=flav_weights)[0]
        mem = mem_gib * GIB
        util = min(0.95, rng.betavariate(2.0, 4.0))
        # Hot hosts lean on its VMs: pick a host by share, falling back to any that fits.
        h = _pick(rng, cum, acc)
        tries = 0
        while used_mem[h] + mem > host_list[h].memory_mib * 0.97 and tries < 20:
            h = _pick(rng, cum, acc) if tries < 10 else rng.randrange(hosts)
            tries += 1
        if used_mem[h] + mem > host_list[h].memory_mib * 0.97:
            h = min(range(hosts), key=lambda k: used_mem[k] / host_list[k].memory_mib)
        used_mem[h] += mem
        base = vcpus * 1000 * util
        hist = tuple(max(0, round(base * (0.7 + 0.6 * rng.random()))) for _ in range(HISTORY))
        disk = rng.choice((10, 20, 40)) * GIB if rng.random() < 0.1 else 0
        vm_list.append(
            Vm(
                name=f"vm{j:05d}",
                host=host_list[h].name,
                vcpus=vcpus,
                memory_mib=mem,
                cpu_used_mc=hist[-1],
                memory_used_mib=int(mem * (0.4 + 0.5 * rng.random())),
                cpu_history_mc=hist,
                dirty_rate_mib_s=round(rng.random() * 40.0, 1),
                local_disk_mib=disk,
                tags=frozenset({rng.choice(("web", "db", "batch", "cache"))}),
            )
        )

    groups: list[AffinityGroup] = []
    if anti_affinity_groups and vm_list:
        by_host: dict[str, list[int]] = {}
        for j, v in enumerate(vm_list):
            by_host.setdefault(v.host, []).append(j)
        host_names = sorted(by_host)
        taken: set[int] = set()
        for g in range(anti_affinity_groups):
            size = rng.randint(3, 5)
            picks = rng.sample(host_names, min(size, len(host_names)))
            members = []
            for hn in picks:
                free = [j for j in by_host[hn] if j not in taken]
                if free:
                    j = rng.choice(free)
                    taken.add(j)
                    members.append(vm_list[j].name)
            if len(members) >= 2:
                groups.append(AffinityGroup(f"aa{g:03d}", frozenset(members), anti=True))

    if maintenance_hosts:
        for i in rng.sample(range(hosts), min(maintenance_hosts, hosts)):
            host_list[i] = host_list[i].with_state(HostState.MAINTENANCE)

    return ClusterSnapshot(
        hosts=tuple(host_list),
        vms=tuple(vm_list),
        rules=ClusterRules(groups=tuple(groups)),
        taken_at=1_700_000_000.0,
    )


def _pick(rng: random.Random, cum: list[float], total: float) -> int:
    import bisect

    return min(len(cum) - 1, bisect.bisect_right(cum, rng.random() * total))


__all__ = ["skewed_snapshot"]
