"""A second, independent cluster generator (issue 16's distribution, written from its text).

Hosts of three types, 64 CPUs / 256 GiB, 96 / 384 and 128 / 512. Ten VM flavours from
1 vCPU / 2 GiB to 32 / 128 GiB, weighted towards small (mean ~20 GiB). Used memory uniform
40-90 % of configured; CPU used = vCPUs x Beta(2, 5). Skewed placement: 15 % of hosts hot
(weight 3), 10 % cold (weight 0.2), the rest weight 1; a VM only goes where used memory stays
at or below 92 % of the host (so hot hosts end far above 100 % configured). Variants: `plain`,
`anti-affinity` (groups of 2-4 VMs over ~10 % of VMs, ~20 % of groups broken at start),
`affinity` (pairs over ~2 % of VMs, placed together), `pins` (~3 % of VMs pinned to 2-3 hosts
including the current one), `maintenance` (the fullest host in maintenance). Pure and
deterministic for (hosts, vms, variant, seed).
"""

from __future__ import annotations

import random

from rebalancerd.domain.model import (
    AffinityGroup,
    ClusterRules,
    ClusterSnapshot,
    Host,
    HostState,
    Pin,
    Vm,
)

GIB = 1024
HOST_TYPES = ((64, 256), (96, 384), (128, 512))
FLAVOURS = (  # (vcpus, GiB, weight)
    (1, 2, 15),
    (1, 4, 13),
    (2, 4, 12),
    (2, 8, 11),
    (4, 8, 10),
    (4, 16, 9),
    (8, 16, 9),
    (8, 32, 9),
    (16, 64, 7),
    (32, 128, 5),
)
USED_CAP = 0.92
VARIANTS = ("plain", "anti-affinity", "affinity", "pins", "maintenance")


def independent_snapshot(
    hosts: int, vms: int, seed: int, variant: str = "plain"
) -> ClusterSnapshot:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    rng = random.Random(f"independent-{hosts}-{vms}-{seed}")
    hs = []
    for i in range(hosts):
        cores, gib = HOST_TYPES[rng.randrange(3)]
        hs.append(Host(name=f"n{i:04d}", cores=cores, memory_mib=gib * GIB))
    kinds = [3.0] * round(0.15 * hosts) + [0.2] * round(0.10 * hosts)
    weights = kinds + [1.0] * (hosts - len(kinds))
    rng.shuffle(weights)
    flav = [f for f in FLAVOURS]
    fw = [f[2] for f in FLAVOURS]
    specs = []
    for _ in range(vms):
        vc, gib, _w = rng.choices(flav, fw)[0]
        used = int(gib * GIB * rng.uniform(0.40, 0.90))
        cpu = int(vc * 1000 * rng.betavariate(2, 5))
        specs.append((vc, gib * GIB, used, cpu))
    order = sorted(range(vms), key=lambda i: (-specs[i][2], i))
    used_on = [0] * hosts
    cpu_on = [0] * hosts
    place = [0] * vms
    for i in order:
        vc, _mem, used, cpu = specs[i]
        ok = [
            h
            for h in range(hosts)
            if used_on[h] + used <= USED_CAP * hs[h].memory_mib
            and cpu_on[h] + cpu <= 0.9 * hs[h].cpu_capacity_mc
        ]
        if ok:
            h = rng.choices(ok, [weights[h] for h in ok])[0]
        else:
            h = min(range(hosts), key=lambda x: (used_on[x] / hs[x].memory_mib, x))
        place[i] = h
        used_on[h] += used
        cpu_on[h] += cpu
    vm_list = [
        Vm(
            name=f"g{i:05d}",
            host=hs[place[i]].name,
            vcpus=specs[i][0],
            memory_mib=specs[i][1],
            memory_used_mib=specs[i][2],
            cpu_used_mc=specs[i][3],
            dirty_rate_mib_s=round(rng.uniform(0.0, 20.0), 2),
        )
        for i in range(vms)
    ]
    groups: list[AffinityGroup] = []
    pins: list[Pin] = []
    by_host: dict[int, list[int]] = {}
    for i, h in enumerate(place):
        by_host.setdefault(h, []).append(i)
    if variant == "anti-affinity":
        pool = list(range(vms))
        rng.shuffle(pool)
        budget, g = int(0.10 * vms), 0
        while budget >= 2 and pool:
            size = min(rng.randint(2, 4), budget)
            broken = rng.random() < 0.20
            first = pool.pop()
            members = [first]
            if broken:  # a peer on the same host
                peers = [x for x in by_host[place[first]] if x != first and x in pool]
                if peers:
                    members.append(peers[0])
                    pool.remove(peers[0])
            for x in list(pool):
                if len(members) >= size:
                    break
                if place[x] not in {place[m] for m in members}:
                    members.append(x)
                    pool.remove(x)
            budget -= len(members)
            groups.append(
                AffinityGroup(f"anti{g:04d}", frozenset(vm_list[m].name for m in members), True)
            )
            g += 1
    elif variant == "affinity":
        pairs, used_vms = int(0.01 * vms), set()
        cand = [h for h in by_host if len(by_host[h]) >= 2]
        for k in range(pairs):
            if not cand:
                break
            h = rng.choice(cand)
            free = [x for x in by_host[h] if x not in used_vms]
            if len(free) < 2:
                cand.remove(h)
                continue
            a, b = rng.sample(free, 2)
            used_vms |= {a, b}
            groups.append(
                AffinityGroup(f"aff{k:04d}", frozenset({vm_list[a].name, vm_list[b].name}), False)
            )
    elif variant == "pins":
        for i in rng.sample(range(vms), int(0.03 * vms)):
            others = rng.sample(
                [h for h in range(hosts) if h != place[i]], min(hosts - 1, rng.randint(1, 2))
            )
            names = frozenset(hs[h].name for h in [place[i], *others])
            pins.append(Pin(vm_list[i].name, names, True))
    if variant == "maintenance":
        full = max(range(hosts), key=lambda h: (used_on[h] / hs[h].memory_mib, -h))
        hs[full] = hs[full].with_state(HostState.MAINTENANCE)
    return ClusterSnapshot(tuple(hs), tuple(vm_list), ClusterRules(tuple(groups), tuple(pins)))
