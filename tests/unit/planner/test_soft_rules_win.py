"""Soft rules steer which VMs move: after an undrain with move-back, the VMs asked to go home
(soft pins, weight 50) are the ones that fill the emptied host, and no later gap-only pass
(opening descent, polish) undoes that."""

from __future__ import annotations

import random

from rebalancerd.domain.model import ClusterRules, ClusterSnapshot, Host, Pin, Vm
from rebalancerd.planner import make_plan
from rebalancerd.policy.schema import Policy


def _snapshot(seed: int) -> ClusterSnapshot:
    rng = random.Random(seed)
    hosts = [Host(f"h{i + 1}", cores=16, memory_mib=65536) for i in range(4)]
    others = ["h1", "h3", "h4"]
    vms = []
    for h in hosts:
        for j in range(3):
            home = h.name
            where = others[j] if home == "h2" else home  # h2 was drained
            vms.append(
                Vm(
                    f"{home}-vm{j + 1}",
                    where,
                    vcpus=2,
                    memory_mib=2048,
                    cpu_used_mc=rng.randrange(200, 1500),
                )
            )
    pins = tuple(Pin(f"h2-vm{j}", frozenset({"h2"}), hard=False, weight=50.0) for j in (1, 2, 3))
    return ClusterSnapshot(tuple(hosts), tuple(vms), ClusterRules(pins=pins))


def _policy() -> Policy:
    return Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "mode": "balance",
            "limits": {
                "cooldown_s": 0,
                "max_concurrent": 2,
                "max_per_source": 2,
                "max_per_target": 2,
            },
        }
    )


def test_soft_pinned_vms_are_the_ones_that_go_home() -> None:
    for seed in (3, 5, 11):
        snap = _snapshot(seed)
        plan = make_plan(snap, _policy(), now=0.0, time_limit_s=2.0, seed=0)
        final = dict(snap.placement())
        for m in plan.migrations:
            assert final[m.vm] == m.source
            final[m.vm] = m.target
        assert {v for v, h in final.items() if h == "h2"} >= {"h2-vm1", "h2-vm2", "h2-vm3"}, (
            seed,
            plan.explain(),
        )
