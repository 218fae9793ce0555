"""Imbalance as the planner measures it under a policy: the policy applied to the snapshot
(maintenance hosts left out), the policy's load weights and its predicted CPU demand
(`targets.prediction`). `rebalancerd plan` reports this as ``imbalance_before``;
`rebalancerd snapshot --check` prints the same figure (a test holds the two equal). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from rebalancerd.domain.load import imbalance, resource_gap
from rebalancerd.domain.model import ClusterSnapshot, Vm
from rebalancerd.policy.resolve import apply_policy, policy_weights
from rebalancerd.policy.schema import Policy


@dataclass(frozen=True, slots=True)
class Measured:
    imbalance: float
    cpu_gap: float
    memory_gap: float
    basis: str
    """How it was measured, in words (weights and CPU demand)."""


def measure(snapshot: ClusterSnapshot, policy: Policy, now: float) -> Measured:
    snap = apply_policy(policy, snapshot, now)
    weights = policy_weights(policy)
    pct, win = policy.targets.prediction.percentile, policy.targets.prediction.window

    def demand(vm: Vm) -> int:
        return vm.cpu_demand_mc(percentile=pct, window=win)

    basis = (
        f"policy {policy.name}: weights cpu {weights.cpu:g} / memory {weights.memory:g}, "
        f"CPU demand p{pct:g} of the last {win} samples, as `plan` measures it"
    )
    return Measured(
        imbalance=imbalance(snap, None, weights, demand),
        cpu_gap=resource_gap(snap, "cpu", None, demand),
        memory_gap=resource_gap(snap, "memory", None, demand),
        basis=basis,
    )
