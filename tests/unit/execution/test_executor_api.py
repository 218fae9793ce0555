"""The executor's API for the daemon: abort_all (shutdown), and execute/observe_snapshot told
that the caller already applied the policy / judged the snapshot."""

from __future__ import annotations

import asyncio

from rebalancerd.domain.model import HostState
from tests.unit.execution.fakes import cluster, mig, plan, policy
from tests.unit.execution.test_executor import make


async def test_abort_all_aborts_every_running_move_through_the_executor() -> None:
    ex, hv, clock, metrics, journal = make()
    hv.behaviour["vm0-0"] = "hang"
    hv.behaviour["vm2-0"] = "hang"
    moves = [mig("vm0-0", "h0", "h1"), mig("vm2-0", "h2", "h3")]
    run = asyncio.create_task(ex.execute(plan(moves), cluster(), policy()))
    await clock.sleep(5)
    assert sorted(hv.running_now) == ["vm0-0", "vm2-0"]
    aborted = await ex.abort_all("shutdown deadline")
    assert sorted(aborted) == ["vm0-0", "vm2-0"]
    rep = await run
    assert sorted(hv.aborts) == ["vm0-0", "vm2-0"]
    assert sorted(r.vm for r in rep.aborted) == ["vm0-0", "vm2-0"]
    assert all("aborted: shutdown deadline" in r.detail for r in rep.aborted)
    assert metrics.total("migrations_aborted_total") == 2
    outcomes = {e.vm: (e.state, e.detail or "") for e in journal.moves()}
    assert {vm: state for vm, (state, _) in outcomes.items()} == {
        "vm0-0": "aborted",
        "vm2-0": "aborted",
    }
    assert all("shutdown deadline" in detail for _, detail in outcomes.values())
    # no new move starts afterwards
    rep2 = await ex.execute(plan([mig("vm1-0", "h1", "h2")]), cluster(), policy())
    assert [r.reason for r in rep2.skipped] == ["stopping"]


async def test_abort_all_with_nothing_running_returns_nothing() -> None:
    ex, hv, _, _, _ = make()
    assert await ex.abort_all("shutdown deadline") == []
    assert hv.aborts == []


async def test_execute_applied_does_not_apply_the_policy_again() -> None:
    pol = policy(rules={"maintenance": [{"host": "h1"}]})
    ex, _, _, _, _ = make()
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), pol)
    assert [r.reason for r in rep.skipped] == ["target_maintenance"]
    # the caller says the snapshot already has the policy applied: h1 is taken as it is
    ex2, hv2, _, _, _ = make()
    rep2 = await ex2.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), pol, applied=True)
    assert [r.vm for r in rep2.succeeded] == ["vm0-0"] and hv2.calls == [("vm0-0", "h0", "h1")]
    # an applied snapshot with h1 in maintenance is refused as such
    snap = cluster().with_host_states({"h1": HostState.MAINTENANCE})
    ex3, _, _, _, _ = make(snap)
    rep3 = await ex3.execute(plan([mig("vm0-0", "h0", "h1")]), snap, pol, applied=True)
    assert [r.reason for r in rep3.skipped] == ["target_maintenance"]


async def test_execute_observed_leaves_the_judging_to_the_caller() -> None:
    ex, _, _, _, _ = make()
    calls: list[bool] = []
    original = ex.observe_snapshot

    def counting(*a: object, **kw: object) -> str | None:
        calls.append(True)
        return original(*a, **kw)  # type: ignore[arg-type]

    ex.observe_snapshot = counting  # type: ignore[method-assign]
    await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert len(calls) == 1  # default: execute judges the snapshot itself
    await ex.execute(plan([mig("vm1-0", "h1", "h2")]), cluster(), policy(), observed=True)
    assert len(calls) == 1


async def test_network_only_weights_use_the_shared_policy_mapping() -> None:
    """Drift fix: the executor takes its load weights from `policy_weights` (the one policy ->
    Weights mapping). A policy weighing only the network used to make execute() raise
    (Weights(0, 0)); it now counts CPU and memory equally, as the planner and loop do."""
    ex, hv, _, _, _ = make()
    pol = policy(targets={"weights": {"cpu": 0, "memory": 0, "network": 1}})
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), pol)
    assert [r.vm for r in rep.succeeded] == ["vm0-0"] and hv.calls == [("vm0-0", "h0", "h1")]
    ex.observe_snapshot(cluster(), pol)  # judging a later snapshot raises no more either
