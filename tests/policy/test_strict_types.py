"""Issue 14: policy fields take their own type only: a bool is not a number (`priority: true`,
`max_concurrent: true`), a number is not a bool (`dry_run: 1`), a string is not a number, 1.0 is
not an integer. An integer is still a valid float, and enums take their strings."""

from __future__ import annotations

import pytest

from rebalancerd.policy.parse import parse_policy_text
from rebalancerd.policy.schema import Mode

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"


@pytest.mark.parametrize(
    "body",
    [
        "priority: true\n",
        "priority: 1.0\n",
        "priority: '5'\n",
        "dry_run: 1\n",
        "dry_run: 'yes'\n",
        "limits: {max_concurrent: true}\n",
        "limits: {max_concurrent: '3'}\n",
        "limits: {max_mib_per_hour: false}\n",
        "targets: {weights: {cpu: true}}\n",
        "targets: {high_watermark: '0.9'}\n",
        "targets: {prediction: {window: true}}\n",
        "rules: {evacuate_degraded: 0}\n",
        "rules: {pins: [{vm: a, hosts: [b], hard: 1}]}\n",
        "migration: {default: {auto_converge: 'on'}}\n",
        "migration: {default: {max_downtime_ms: 300.0}}\n",
        "energy: {min_active_hosts: true}\n",
        "name: true\n",
    ],
)
def test_coercions_are_refused_with_a_located_issue(body: str) -> None:
    p = parse_policy_text((HEAD + body).encode(), "p.yaml")
    assert p.policy is None, f"accepted {body!r}"
    (issue,) = p.problems
    assert issue.line == 3 and "\n" not in str(issue)


def test_proper_types_still_parse() -> None:
    body = (
        "mode: consolidate\npriority: 5\ndry_run: true\n"
        "targets: {headroom: 0, high_watermark: 1, weights: {cpu: 2}}\n"
        "limits: {max_concurrent: 3, max_mib_per_hour: 1000}\n"
    )
    p = parse_policy_text((HEAD + body).encode(), "p.yaml")
    assert p.policy is not None, p.problems
    assert p.policy.mode is Mode.CONSOLIDATE and p.policy.targets.headroom == 0.0
    assert isinstance(p.policy.targets.headroom, float)
