"""Property tests on random small clusters."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rebalancerd.domain.model import AffinityGroup, ClusterRules, HostState, Pin
from rebalancerd.planner import make_plan, verify_plan
from rebalancerd.sim.synthetic import skewed_snapshot

from .helpers import policy


@st.composite
def cases(draw: Any) -> tuple[Any, Any, frozenset[str], int | None, int | None]:
    hosts = draw(st.integers(2, 7))
    vms = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 10_000))
    s = skewed_snapshot(
        hosts,
        vms,
        seed,
        anti_affinity_groups=draw(st.integers(0, 2)),
        maintenance_hosts=draw(st.integers(0, 1)),
    )
    names = [v.name for v in s.vms]
    hnames = [h.name for h in s.hosts]
    excl = frozenset(draw(st.lists(st.sampled_from(names), max_size=3)))
    frozen = frozenset(draw(st.lists(st.sampled_from(names), max_size=3)))
    pins = tuple(
        Pin(v, frozenset(draw(st.lists(st.sampled_from(hnames), min_size=1, max_size=2))))
        for v in draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    )
    groups = s.rules.groups
    if draw(st.booleans()) and len(names) >= 2:
        groups = (*groups, AffinityGroup("soft", frozenset(names[:2]), anti=True, hard=False))
    if draw(st.booleans()):
        h = draw(st.sampled_from(hnames))
        s = s.with_host_states({h: draw(st.sampled_from(list(HostState)))})
    s = s.with_rules(ClusterRules(groups, pins, excl))
    mode = draw(st.sampled_from(["balance", "consolidate", "drain", "advisory"]))
    pol = policy(
        mode=mode,
        limits={
            "max_per_cycle": draw(st.integers(0, 30)),
            "max_concurrent": draw(st.integers(1, 4)),
            "max_per_source": draw(st.integers(1, 2)),
            "max_per_target": draw(st.integers(1, 2)),
        },
        targets={"hysteresis": draw(st.sampled_from([0.0, 0.02, 0.1]))},
    )
    max_moves = draw(st.none() | st.integers(0, 10))
    max_mib = draw(st.none() | st.integers(0, 200_000))
    return s, pol, frozen, max_moves, max_mib


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_plans_are_safe_and_respect_rules_and_budgets(case: Any) -> None:
    s, pol, frozen, max_moves, max_mib = case
    plan = make_plan(
        s, pol, now=0.0, time_limit_s=0.3, frozen=frozen, max_moves=max_moves, max_mib=max_mib
    )
    # no step breaks capacity or a hard rule; budgets and concurrency hold
    assert (
        verify_plan(s, pol, plan, now=0.0, frozen=frozen, max_moves=max_moves, max_mib=max_mib)
        == []
    )
    moved = {m.vm for m in plan.migrations}
    excluded = s.rules.exclusions
    stale = {h.name for h in s.hosts if h.state is HostState.STALE}
    hard_pins = s.rules.hard_pins()
    vmap = s.vm_map()
    for name in moved:
        assert name not in excluded and name not in frozen
        assert vmap[name].host not in stale
    for m in plan.migrations:
        if m.vm in hard_pins:
            assert m.target in hard_pins[m.vm]
    if pol.mode == "drain":
        kinds = {m.reason.kind.value for m in plan.migrations}
        assert kinds <= {"drain", "evacuate", "rule", "temporary"}


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 12), st.integers(1, 120), st.integers(0, 1000))
def test_same_input_same_plan(hosts: int, vms: int, seed: int) -> None:
    s = skewed_snapshot(hosts, vms, seed, anti_affinity_groups=1)
    pol = policy(limits={"max_per_cycle": 50, "max_concurrent": 4})
    a = make_plan(s, pol, now=0.0, time_limit_s=3.0, seed=7).to_dict()
    b = make_plan(s, pol, now=0.0, time_limit_s=3.0, seed=7).to_dict()
    # Deterministic limits bind first; if the wall-clock safety net fired (an overloaded
    # machine), the plan says so and may legitimately differ: such examples are discarded.
    assume(not any("wall-clock" in n for n in a["stats"]["notes"] + b["stats"]["notes"]))
    a["stats"].pop("wall_s")
    b["stats"].pop("wall_s")
    assert a == b
