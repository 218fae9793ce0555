"""make_plan / verify_plan with applied=True take a snapshot that already has the policy
applied (the daemon applies it once per cycle) and do not apply it again."""

from __future__ import annotations

import pytest

from rebalancerd.domain.plan import ReasonKind
from rebalancerd.planner import core, make_plan, verify, verify_plan
from rebalancerd.policy.resolve import apply_policy
from rebalancerd.sim.synthetic import skewed_snapshot

from .helpers import host, loose_limits, policy, snap, vm


def test_an_applied_snapshot_plans_as_the_raw_one() -> None:
    raw = skewed_snapshot(8, 60, seed=0, maintenance_hosts=1)
    pol = policy(limits=loose_limits())
    plan = make_plan(raw, pol, now=0.0, time_limit_s=1.0)
    applied = make_plan(apply_policy(pol, raw, 0.0), pol, now=0.0, time_limit_s=1.0, applied=True)
    assert plan.migrations and applied.migrations == plan.migrations
    assert applied.steps == plan.steps
    eff = apply_policy(pol, raw, 0.0)
    assert verify_plan(eff, pol, applied, now=0.0, applied=True) == []


def test_applied_true_does_not_apply_the_policy_again(monkeypatch: pytest.MonkeyPatch) -> None:
    s = snap([host("h1"), host("h2")], [vm("a", "h1")])
    pol = policy(limits=loose_limits(), rules={"maintenance": [{"host": "h1"}]})
    # The policy puts h1 in maintenance: applied here, its VM is drained ...
    drained = make_plan(s, pol, now=0.0, time_limit_s=0.5)
    assert [m.reason.kind for m in drained.migrations] == [ReasonKind.DRAIN]
    # ... while a snapshot said to be applied already is taken as it is (h1 not in maintenance).
    calls: list[str] = []

    def counting_apply(*args: object, **kw: object) -> object:
        calls.append("apply")
        return apply_policy(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(core, "apply_policy", counting_apply)
    monkeypatch.setattr(verify, "apply_policy", counting_apply)
    as_is = make_plan(s, pol, now=0.0, time_limit_s=0.5, applied=True)
    assert as_is.migrations == ()
    assert verify_plan(s, pol, drained, now=0.0, applied=True) == []
    assert calls == []
    make_plan(s, pol, now=0.0, time_limit_s=0.5)
    verify_plan(s, pol, drained, now=0.0)
    assert calls == ["apply", "apply"]
