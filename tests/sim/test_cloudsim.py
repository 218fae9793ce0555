from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rebalancerd.sim.cloudsim import (
    G4,
    G5,
    build_datacentre,
    default_replay_policy,
    pabfd,
    power_w,
    vm_type_index,
)


def test_vm_types_follow_cloudsims_rule() -> None:
    # n = 10: ceil(10/4) = 3 -> 0,0,0,1,1,1,2,2,2,3
    assert [vm_type_index(i, 10) for i in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    dc = build_datacentre(tuple(f"v{i}" for i in range(10)), hosts=4)
    assert dc.vm_mips.tolist() == [2500] * 3 + [2000] * 3 + [1000] * 3 + [500]
    assert dc.vm_ram.tolist() == [870] * 3 + [1740] * 6 + [613]


def test_hosts_alternate_g4_g5_and_match_reference_mips() -> None:
    dc = build_datacentre(("a",), hosts=4)
    assert dc.pe_mips.tolist() == [1860, 2660, 1860, 2660]
    assert dc.total_mips.tolist() == [3720, 5320, 3720, 5320]
    hosts = dc.domain_hosts()
    assert hosts[0].cpu_capacity_mc == 3720 and hosts[1].cpu_capacity_mc == 5320
    assert hosts[1].power_curve is not None and hosts[1].power_curve.peak == 135.0
    assert dc.domain_hosts(enforce_memory=False)[0].memory_mib >= int(dc.vm_ram.sum())


def test_migration_time_is_ram_over_half_the_bandwidth() -> None:
    dc = build_datacentre(("a", "b", "c", "d"), hosts=2)
    # 870 MB over 1 Gbit/s / 2 = 62.5 MB/s -> 13.92 s
    assert dc.migration_time_s(0, 0, 1) == pytest.approx(870 / 62.5)
    assert dc.migration_time_s(3, 0, 1) == pytest.approx(613 / 62.5)


def test_specpower_is_linear_between_points() -> None:
    w = np.array([G4.watts, G5.watts])
    p = power_w(w, np.array([0.05, 1.0]))
    assert p[0] == pytest.approx((86.0 + 89.4) / 2)
    assert p[1] == pytest.approx(135.0)
    assert power_w(w, np.array([0.0, 0.25]))[1] == pytest.approx((101 + 105) / 2)


def test_pabfd_packs_by_least_power_increase_and_respects_limits() -> None:
    dc = build_datacentre(("a", "b", "c", "d"), hosts=4)
    # VM mips 2500, 2000, 1000, 500; demand at 40 % of each
    demand = dc.vm_mips * 0.4
    where = pabfd(dc, demand)
    used = np.bincount(where, demand, minlength=4)
    assert (used <= dc.total_mips).all()
    ram = np.bincount(where, dc.vm_ram, minlength=4)
    assert (ram <= dc.host_ram).all()
    # by hand, CloudSim's power increase P(after) - P(before) (idle power not counted):
    # a (1000 MIPS): empty G4 +8.95 W, empty G5 +6.8 W -> host 1 (first G5)
    # b (800): host 1 .188 -> .338 = +6.4 W, empty G5 host 3 +5.3 W -> host 3
    assert where[0] == 1 and where[1] == 3
    # a cap of 30 % of a host's MIPS forces spreading
    where2 = pabfd(dc, demand, max_utilisation=0.3)
    used2 = np.bincount(where2, demand, minlength=4)
    for h in range(4):
        n = int((where2 == h).sum())
        assert n <= 1 or used2[h] <= 0.3 * dc.total_mips[h] + 1e-9


def test_pabfd_refuses_a_vm_that_fits_nowhere() -> None:
    dc = build_datacentre(("a",), hosts=2)
    with pytest.raises(ValueError, match="no host can take"):
        pabfd(dc, np.array([3000.0]))  # above any single core


def test_default_policy_is_consolidate_with_cooldown() -> None:
    p = default_replay_policy()
    assert p.mode.value == "consolidate"
    assert p.limits.cooldown_s > 0


def test_documented_yaml_is_the_default_policy(tmp_path: Path) -> None:
    from rebalancerd.adapters.policy_files import load_policy_file

    doc = (Path(__file__).resolve().parents[2] / "docs" / "simulation.md").read_text()
    yaml_text = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    p = tmp_path / "p.yaml"
    p.write_text(yaml_text)
    assert load_policy_file(p) == default_replay_policy()
