"""Real migrations in the lab: the memory copy over the dedicated migration link (the inventory's
migration URI, `VIR_MIGRATE_PARAM_URI`), checked on both links' byte counters; and the downtime
step-up sequence on a pre-copy that does not converge (a RAM-dirtying guest at a bandwidth cap)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rebalancerd.adapters.libvirt import LibvirtHypervisor
from rebalancerd.ports import MigrationSettings
from tests.fixtures.lab import Lab

pytestmark = pytest.mark.lab

MIB = 2**20
DIRTY_MIB = 128


@pytest.fixture
async def hv(lab: Lab) -> AsyncIterator[LibvirtHypervisor]:
    h = LibvirtHypervisor(lab.inventory_migration_link(), poll_interval_s=0.1)
    yield h
    await h.close()


def _tx(lab: Lab, host: str, ifname: str) -> int:
    return lab.link_bytes(host, ifname)["tx"]


@pytest.mark.slow
async def test_memory_copy_goes_over_the_dedicated_migration_link(
    lab: Lab, hv: LibvirtHypervisor
) -> None:
    assert lab.host("h2").mig_uri and lab.host("h2").mig_uri != lab.host("h2").ip
    lab.define_guest("h1", "lk1", DIRTY_MIB, dirty=True)  # dirty: real pages, not zero pages
    lab.wait_dirtying("h1", "lk1")
    before = {i: _tx(lab, "h1", i) for i in ("eth0", "mig0")}
    res = await hv.migrate(
        "lk1",
        "h1",
        "h2",
        MigrationSettings(max_downtime_ms=300, postcopy_after_s=3.0, time_budget_s=60.0),
    )
    assert res.ok, res
    assert lab.running_on("lk1") == ["h2"]
    grew = {i: _tx(lab, "h1", i) - before[i] for i in ("eth0", "mig0")}
    # the dirtied RAM went over mig0; eth0 carried only libvirtd's control traffic
    assert grew["mig0"] >= 0.9 * res.transferred_mib * MIB and grew["mig0"] >= 32 * MIB, grew
    assert grew["eth0"] < grew["mig0"] / 20, grew


@pytest.mark.slow
async def test_stalled_precopy_steps_the_downtime_up_then_switches_to_post_copy(
    lab: Lab, hv: LibvirtHypervisor
) -> None:
    lab.define_guest("h1", "su1", DIRTY_MIB, dirty=True)
    lab.wait_dirtying("h1", "su1")
    settings = MigrationSettings(
        max_downtime_ms=50,
        downtime_limit_ms=400,
        bandwidth_mib_s=40,  # below the guest's dirty rate: pre-copy never converges
        postcopy_after_s=120.0,  # far away: only the sequence's own switch can finish it soon
        time_budget_s=150.0,
        strategy="postcopy",
    )
    res = await hv.migrate("su1", "h1", "h2", settings)
    assert res.ok and res.postcopy, res
    assert res.downtime_step_ups == 3 and res.final_max_downtime_ms == 400, res
    assert res.total_s < settings.postcopy_after_s  # switched by the sequence, not the timer
    assert lab.running_on("su1") == ["h2"]


DISK_MIB = 32


@pytest.mark.slow
async def test_copy_storage_moves_a_local_disk_and_its_content(
    lab: Lab, hv: LibvirtHypervisor
) -> None:
    lab.define_guest("h1", "ld1", 64, local_disk_mib=DISK_MIB)
    want = lab.disk_checksum("h1", "ld1")
    assert want is not None and lab.disk_checksum("h2", "ld1") is None
    lab.precreate_disk("h2", "ld1", DISK_MIB)
    assert lab.disk_checksum("h2", "ld1") != want  # empty until the copy
    res = await hv.migrate(
        "ld1", "h1", "h2", MigrationSettings(non_shared_disk=True, time_budget_s=60.0)
    )
    assert res.ok, res
    assert lab.running_on("ld1") == ["h2"]
    assert lab.disk_checksum("h2", "ld1") == want  # the pattern arrived on h2's own disk
