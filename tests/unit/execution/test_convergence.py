"""Per-move convergence: settings from a measured vs unknown dirty rate, the downtime step-up
sequence fed with job statistics, and where the memory copy goes (migration URI vs control URI)."""

from __future__ import annotations

import libvirt
import pytest

from rebalancerd.adapters.libvirt_migration import (
    ConvergenceSequence,
    migration_flags,
    migration_params,
)
from rebalancerd.daemon.wiring import hypervisor_hosts, peer_uri
from rebalancerd.domain.model import Vm
from rebalancerd.execution.settings import choose_settings
from rebalancerd.policy.schema import MigrationSettingsSpec
from rebalancerd.ports import MigrationSettings
from rebalancerd.telemetry.inventory import inventory_from_mapping

MIB = 2**20


def spec(**kw: object) -> MigrationSettingsSpec:
    return MigrationSettingsSpec.model_validate(kw)


def stats(iteration: int, remaining_mib: float) -> dict[str, float]:
    return {"memory_iteration": iteration, "memory_remaining": remaining_mib * MIB}


# -- settings from the dirty rate ------------------------------------------------------------


def test_unknown_dirty_rate_uses_the_class_default_not_a_zero_guess() -> None:
    unknown = Vm("v", "h", 2, 1024, dirty_rate_mib_s=None)
    s = choose_settings(unknown, spec(auto_converge=True))
    assert not s.dirty_rate_known and s.auto_converge and s.strategy == "default-auto-converge"
    s2 = choose_settings(unknown, spec(auto_converge=False, postcopy_after_s=20))
    assert s2.strategy == "default-precopy" and not s2.auto_converge
    assert s2.postcopy_after_s == 20  # the class's own switch time, not one derived from 0
    # measured 0 is a fact: plain pre-copy
    idle = choose_settings(Vm("v", "h", 2, 1024, dirty_rate_mib_s=0.0), spec(auto_converge=True))
    assert idle.dirty_rate_known and idle.strategy == "precopy" and not idle.auto_converge


def test_measured_dirty_rate_picks_auto_converge_or_post_copy() -> None:
    hot = Vm("v", "h", 2, 1024, dirty_rate_mib_s=60.0)
    ac = choose_settings(hot, spec(bandwidth_mib_s=40, auto_converge=True, time_budget_s=60))
    assert ac.strategy == "auto-converge" and ac.auto_converge
    pc = choose_settings(
        hot, spec(bandwidth_mib_s=40, auto_converge=False, postcopy_after_s=30, time_budget_s=60)
    )
    assert pc.strategy == "postcopy" and pc.postcopy_after_s is not None
    assert pc.downtime_limit_ms == 300  # the class's limit bounds the step-ups


# -- the step-up sequence --------------------------------------------------------------------


def test_stalled_passes_step_the_downtime_up_to_the_limit_then_post_copy() -> None:
    seq = ConvergenceSequence(
        MigrationSettings(
            max_downtime_ms=50, downtime_limit_ms=300, postcopy_after_s=100, time_budget_s=200
        )
    )
    assert seq.on_stats(0.5, stats(1, 1000)).action == "wait"  # first pass
    assert seq.on_stats(0.7, stats(1, 900)).action == "wait"  # same pass: nothing new
    assert seq.on_stats(1.0, stats(2, 400)).action == "wait"  # shrinking: converging
    steps = [seq.on_stats(2.0 + i, stats(3 + i, 400)) for i in range(4)]
    assert [(s.action, s.downtime_ms) for s in steps] == [
        ("downtime", 100),
        ("downtime", 200),
        ("downtime", 300),
        ("postcopy", 0),
    ]
    assert seq.step_ups == 3 and seq.downtime_ms == 300
    seq.finished()
    assert seq.on_stats(300.0, stats(9, 400)).action == "wait"


def test_without_post_copy_it_waits_at_the_limit_and_aborts_at_the_budget() -> None:
    seq = ConvergenceSequence(
        MigrationSettings(max_downtime_ms=100, downtime_limit_ms=150, time_budget_s=10)
    )
    seq.on_stats(0.5, stats(1, 500))
    assert seq.on_stats(1.0, stats(2, 480)).downtime_ms == 150
    assert seq.on_stats(2.0, stats(3, 480)).action == "wait"  # auto-converge / budget decide
    assert seq.on_stats(10.0, stats(3, 480)).action == "abort"


def test_no_limit_means_no_step_up_and_post_copy_after_s_still_applies() -> None:
    seq = ConvergenceSequence(MigrationSettings(max_downtime_ms=300, postcopy_after_s=5))
    seq.on_stats(0.5, stats(1, 500))
    assert seq.on_stats(1.0, stats(2, 500)).action == "postcopy"  # stalled, nothing to raise
    seq2 = ConvergenceSequence(MigrationSettings(postcopy_after_s=5))
    assert seq2.on_stats(5.0, {}).action == "postcopy"


# -- migration address and TLS ---------------------------------------------------------------


def test_migration_uri_is_the_memory_copy_destination_not_the_control_uri() -> None:
    inv = inventory_from_mapping(
        {
            "hosts": [
                {
                    "name": "hv1",
                    "libvirt_uri": "qemu+tls://hv1.example/system",
                    "migration_uri": "tcp://10.232.0.12",
                    "cores": 8,
                    "memory_mib": 8192,
                },
                {
                    "name": "lab1",
                    "libvirt_uri": "qemu+unix:///system?socket=/x/sock",
                    "migration_uri": "tcp://10.232.0.13",
                    "cores": 8,
                    "memory_mib": 8192,
                },
                {
                    "name": "hv2",
                    "libvirt_uri": "qemu+tcp://hv2/system",
                    "cores": 8,
                    "memory_mib": 8192,
                },
            ]
        }
    )
    hosts = hypervisor_hosts(inv)
    assert hosts["hv1"] == (
        "qemu+tls://hv1.example/system",
        "qemu+tls://hv1.example/system",  # the control connection stays libvirt_uri
        "tcp://10.232.0.12",
    )
    # a local-only control URI: the peers reach libvirtd at the migration address
    assert hosts["lab1"][1] == "qemu+tcp://10.232.0.13/system"
    assert hosts["hv2"] == ("qemu+tcp://hv2/system", "qemu+tcp://hv2/system", None)
    assert peer_uri("qemu+unix:///system", None) == "qemu+unix:///system"
    params = migration_params(MigrationSettings(), hosts["hv1"][2])
    assert params == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.232.0.12"}
    assert libvirt.VIR_MIGRATE_PARAM_URI not in migration_params(MigrationSettings(), None)


@pytest.mark.parametrize("encrypted", [True, False])
def test_encrypted_class_sets_the_tls_flag(encrypted: bool) -> None:
    s = choose_settings(Vm("v", "h", 2, 512, dirty_rate_mib_s=0.0), spec(encrypted=encrypted))
    assert bool(migration_flags(s) & libvirt.VIR_MIGRATE_TLS) is encrypted
