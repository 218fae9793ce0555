"""Tiny clusters for planner tests."""

from __future__ import annotations

from typing import Any

from rebalancerd.domain.model import AffinityGroup, ClusterRules, ClusterSnapshot, Host, Pin, Vm
from rebalancerd.policy.schema import Policy, default_policy

GIB = 1024


def host(name: str, cores: int = 10, mem_gib: int = 10, **kw: Any) -> Host:
    return Host(name=name, cores=cores, memory_mib=mem_gib * GIB, **kw)


def vm(name: str, on: str, mem_gib: int = 1, cpu_mc: int = 500, **kw: Any) -> Vm:
    return Vm(name=name, host=on, vcpus=1, memory_mib=mem_gib * GIB, cpu_used_mc=cpu_mc, **kw)


def snap(
    hosts: list[Host],
    vms: list[Vm],
    groups: tuple[AffinityGroup, ...] = (),
    pins: tuple[Pin, ...] = (),
    exclusions: frozenset[str] = frozenset(),
) -> ClusterSnapshot:
    return ClusterSnapshot(tuple(hosts), tuple(vms), ClusterRules(groups, pins, exclusions))


def policy(**over: Any) -> Policy:
    """default_policy with (nested) overrides, validated like a policy file."""
    doc = default_policy().model_dump(mode="json")

    def merge(d: dict[str, Any], u: dict[str, Any]) -> None:
        for k, v in u.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                merge(d[k], v)
            else:
                d[k] = v

    merge(doc, over)
    return Policy.model_validate(doc)


def loose_limits() -> dict[str, Any]:
    return {"max_per_cycle": 1000, "max_concurrent": 10, "max_per_source": 3, "max_per_target": 3}
