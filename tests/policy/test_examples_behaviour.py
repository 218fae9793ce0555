"""Each example policy changes the plan the way its comments say (real planner, small
hand-made clusters whose names match the examples)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rebalancerd.adapters.policy_files import load_policy_file
from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.domain.plan import MigrationPlan, ReasonKind
from rebalancerd.planner import make_plan
from rebalancerd.policy.parse import load_policy_text
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.policy.whatif import net_moves

EX = Path(__file__).resolve().parents[2] / "policies"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z: before hv04's scheduled maintenance
IN_HV04_WINDOW = 1_796_158_800.0  # 2026-12-02T00:00:00+01:00


def example(name: str) -> Policy:
    return load_policy_file(EX / name)


def host(name: str, cores: int = 16, mem: int = 65536) -> Host:
    return Host(name=name, cores=cores, memory_mib=mem)


def vm(name: str, on: str, cpu_cores: float, mem: int = 4096, vcpus: int = 4) -> Vm:
    mc = round(cpu_cores * 1000)
    return Vm(
        name=name,
        host=on,
        vcpus=vcpus,
        memory_mib=mem,
        cpu_used_mc=mc,
        memory_used_mib=mem // 2,
        cpu_history_mc=(mc,) * 12,
    )


HOSTS = tuple(host(f"hv0{i}") for i in range(1, 7))


def snap(*vms: Vm, hosts: tuple[Host, ...] = HOSTS) -> ClusterSnapshot:
    return ClusterSnapshot(hosts, tuple(vms), taken_at=NOW)


def plan(s: ClusterSnapshot, p: Policy, now: float = NOW) -> MigrationPlan:
    return make_plan(s, p, now=now, time_limit_s=1.0, seed=0)


def final_hosts(s: ClusterSnapshot, pl: MigrationPlan) -> dict[str, str]:
    where = {v.name: v.host for v in s.vms}
    for mv in net_moves(pl).values():
        where[mv.vm] = mv.target
    return where


def even_cluster() -> list[Vm]:
    return [vm(f"even-{h.name}-{j}", h.name, 4.0) for h in HOSTS for j in range(2)]


# -- balance.yaml ------------------------------------------------------------------------------


def skewed() -> ClusterSnapshot:
    hot = [vm(f"hot-{j}", "hv01", 1.7, mem=6144) for j in range(8)]
    return snap(*hot, *even_cluster())


def test_balance_moves_from_the_busiest_host_and_cuts_imbalance() -> None:
    pol = example("balance.yaml")
    s = skewed()
    pl = plan(s, pol)
    moves = net_moves(pl)
    assert moves, "a skewed cluster must get moves under balance.yaml"
    assert all(m.source == "hv01" for m in moves.values())
    assert all(m.target != "hv01" for m in moves.values())
    assert len(moves) <= pol.limits.max_per_cycle
    assert {m.reason.kind for m in pl.migrations} <= {ReasonKind.BALANCE, ReasonKind.HOTSPOT}
    before, after = pl.stats.imbalance_before, pl.stats.imbalance_after
    assert before is not None and after is not None
    assert after <= before - pol.targets.hysteresis


def test_balance_leaves_an_even_cluster_alone() -> None:
    assert plan(snap(*even_cluster()), example("balance.yaml")).empty


def test_balance_hysteresis_blocks_small_gains() -> None:
    # one host slightly busier: a move would gain less than a huge hysteresis
    s = snap(vm("extra", "hv01", 2.0), *even_cluster())
    lazy = example("balance.yaml").model_copy(
        update={"targets": example("balance.yaml").targets.model_copy(update={"hysteresis": 0.5})}
    )
    assert plan(s, lazy).empty


# -- consolidate-nightly.yaml ------------------------------------------------------------------


def light_cluster() -> ClusterSnapshot:
    return snap(*[vm(f"l-{h.name}-{j}", h.name, 0.8) for h in HOSTS for j in range(2)])


def test_consolidate_empties_hosts_with_energy_moves() -> None:
    pol = example("consolidate-nightly.yaml")
    s = light_cluster()
    pl = plan(s, pol)
    assert pl.migrations, "lightly loaded hosts must be emptied"
    assert {m.reason.kind for m in pl.migrations} <= {ReasonKind.ENERGY, ReasonKind.TEMPORARY}
    used_before = len({v.host for v in s.vms})
    used_after = len(set(final_hosts(s, pl).values()))
    assert used_after < used_before
    assert used_after >= pol.energy.min_active_hosts


def test_balance_does_not_consolidate_the_same_cluster() -> None:
    pl = plan(light_cluster(), example("balance.yaml"))
    assert not any(m.reason.kind is ReasonKind.ENERGY for m in pl.migrations)


# -- maintenance.yaml --------------------------------------------------------------------------


def maint_cluster() -> ClusterSnapshot:
    return snap(
        vm("m-1", "hv03", 1.0),
        vm("m-2", "hv03", 1.0),
        vm("license-server", "hv03", 0.5),
        vm("w-1", "hv04", 1.0),
        vm("hot-1", "hv01", 6.0),
        vm("hot-2", "hv01", 6.0),
        vm("hot-3", "hv01", 2.0),
        vm("e-1", "hv02", 0.5),
    )


def test_maintenance_drains_only_the_open_window_hosts() -> None:
    # the example sets no mode (it never decides the mode next to other policies); with
    # `mode: drain` added it drains and does nothing else
    pol = example("maintenance.yaml").model_copy(update={"mode": Mode.DRAIN})
    s = maint_cluster()
    pl = plan(s, pol)
    moves = net_moves(pl)
    assert set(moves) == {"m-1", "m-2"}  # not license-server (excluded), not hv01's (drain mode)
    assert all(m.reason.kind is ReasonKind.DRAIN for m in pl.migrations)
    assert not {m.target for m in moves.values()} & {"hv03", "hv04"}


def test_maintenance_example_drains_in_the_mode_of_the_others() -> None:
    pol = example("maintenance.yaml")
    assert "mode" not in pol.model_fields_set
    s = maint_cluster()
    pl = plan(s, pol)  # alone: the default mode, balance
    moves = net_moves(pl)
    assert {"m-1", "m-2"} <= set(moves) and "license-server" not in moves
    assert {m.vm for m in pl.migrations if m.reason.kind is ReasonKind.DRAIN} == {"m-1", "m-2"}
    assert "hv03" not in {m.target for m in moves.values()}  # hv04's window is not open yet


def test_maintenance_schedule_opens_hv04() -> None:
    s = maint_cluster()
    moves = net_moves(plan(s, example("maintenance.yaml"), now=IN_HV04_WINDOW))
    assert {"m-1", "m-2", "w-1"} <= set(moves)
    assert "license-server" not in moves
    assert not {m.target for m in moves.values()} & {"hv03", "hv04"}


def test_without_the_maintenance_file_nothing_drains() -> None:
    pl = plan(maint_cluster(), example("balance.yaml"))
    assert not any(m.reason.kind is ReasonKind.DRAIN for m in pl.migrations)
    # balance.yaml does move the hot VMs of hv01 instead
    assert any(m.source == "hv01" for m in pl.migrations)


# -- anti-affinity.yaml ------------------------------------------------------------------------


def replicas_together() -> ClusterSnapshot:
    """An even cluster (two units of load per host) except that db-1 and db-2 share hv01."""
    return snap(
        vm("db-1", "hv01", 1.0, mem=8192),
        vm("db-2", "hv01", 1.0, mem=8192),
        vm("db-3", "hv02", 1.0, mem=8192),
        vm("f-hv02", "hv02", 1.0, mem=8192),
        vm("app-1", "hv03", 0.5),
        vm("cache-1", "hv03", 0.5),
        vm("f-hv03", "hv03", 1.0, mem=8192),
        *[vm(f"f-{h}-{j}", h, 1.0, mem=8192) for h in ("hv04", "hv05", "hv06") for j in (1, 2)],
    )


def test_anti_affinity_separates_the_replicas() -> None:
    s = replicas_together()
    pl = plan(s, example("anti-affinity.yaml"))
    where = final_hosts(s, pl)
    assert len({where["db-1"], where["db-2"], where["db-3"]}) == 3
    assert any(m.reason.kind is ReasonKind.RULE and m.vm in {"db-1", "db-2"} for m in pl.migrations)
    assert where["app-1"] == where["cache-1"]  # the soft affinity pair stays together


def test_without_the_rule_the_replicas_stay_together() -> None:
    s = replicas_together()
    pl = plan(s, example("balance.yaml"))
    where = final_hosts(s, pl)
    assert where["db-1"] == where["db-2"] == "hv01"
    assert not any(m.reason.kind is ReasonKind.RULE for m in pl.migrations)


def test_the_build_pin_moves_build_vms_to_hv05_or_hv06() -> None:
    s = snap(vm("build-1", "hv01", 0.1, mem=512), *even_cluster())
    pl = plan(s, example("anti-affinity.yaml"))
    assert final_hosts(s, pl)["build-1"] in {"hv05", "hv06"}
    assert [m.reason.kind for m in pl.migrations if m.vm == "build-1"][-1] is ReasonKind.RULE
    assert final_hosts(s, plan(s, example("balance.yaml")))["build-1"] == "hv01"


@pytest.mark.parametrize("name", sorted(p.name for p in EX.glob("*.yaml")))
def test_dry_run_copy_of_each_example_plans_the_same(name: str) -> None:
    # dry_run only affects the executor: the plan itself must not change
    pol = example(name)
    s = replicas_together()
    a = net_moves(plan(s, pol))
    b = net_moves(plan(s, pol.model_copy(update={"dry_run": True})))
    assert a == b


def test_minimal_policy_plans() -> None:
    pol = load_policy_text("apiVersion: rebalancerd/v1\nkind: Policy\nmode: balance\n")
    assert net_moves(plan(skewed(), pol))


def _paris(iso: str) -> float:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo("Europe/Paris")).timestamp()


def test_consolidate_nightly_window_and_balance_blackout_as_the_executor_reads_them() -> None:
    from rebalancerd.execution.windows import window_block
    from rebalancerd.policy.schedule import in_force

    # consolidate-nightly is in force only at night (its schedule), with no window of its own
    night = example("consolidate-nightly.yaml")
    assert in_force(night, _paris("2026-03-04T23:30:00"))
    assert in_force(night, _paris("2026-03-05T05:59:00"))  # wraps past midnight
    assert not in_force(night, _paris("2026-03-05T12:00:00"))
    assert window_block(night.limits, _paris("2026-03-05T12:00:00")) is None
    day = example("balance.yaml").limits
    assert window_block(day, _paris("2026-03-02T02:00:00")) == "blackout"  # a Monday
    assert window_block(day, _paris("2026-03-03T02:00:00")) is None  # Tuesday
