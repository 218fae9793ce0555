"""The planner weighs CPU and memory as policy.resolve.policy_weights says (one mapping)."""

from __future__ import annotations

import pytest

from rebalancerd.planner import objective as obj
from rebalancerd.planner.problem import build_problem
from rebalancerd.policy.resolve import apply_policy, policy_weights
from rebalancerd.sim.synthetic import skewed_snapshot

from .helpers import policy


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"cpu": 2.0, "memory": 0.5}, (2.0, 0.5)),
        ({"cpu": 0.0, "memory": 1.0}, (0.0, 1.0)),
        ({"cpu": 0.0, "memory": 0.0, "network": 1.0}, (1.0, 1.0)),  # network only: both count
    ],
)
def test_problem_weights_are_the_policy_weights(
    weights: dict[str, float], expected: tuple[float, float]
) -> None:
    pol = policy(targets={"weights": weights})
    p = build_problem(apply_policy(pol, skewed_snapshot(4, 20, seed=0), 0.0), pol)
    w = policy_weights(pol)
    assert obj.weights(p) == expected
    # the spread passes need CPU or memory; the policy's own weights (incl. network) stay as set
    assert (w.cpu, w.memory, w.network) == (
        weights["cpu"],
        weights["memory"],
        weights.get("network", 0.0),
    )
