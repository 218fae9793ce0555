"""LibvirtHypervisor: pure parts against literal XML and libvirt's test:///default driver, and real
live migrations between the hosts of the libvirt lab (@pytest.mark.lab)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import libvirt
import pytest

from rebalancerd.adapters.libvirt import LibvirtHypervisor
from rebalancerd.adapters.libvirt_domains import devices_reason, guest_cpu
from rebalancerd.adapters.libvirt_events import HypervisorEvent
from rebalancerd.adapters.libvirt_migration import (
    migration_flags,
    migration_params,
    progress_from_stats,
    result_from_stats,
)
from rebalancerd.ports import Hypervisor, HypervisorError, MigrationProgress, MigrationSettings
from tests.fixtures.lab import Lab

HOSTDEV_XML = """<domain type='kvm'><name>gpu1</name><memory>65536</memory>
<os><type arch='x86_64'>hvm</type></os>
<devices><hostdev mode='subsystem' type='pci' managed='yes'><source>
<address domain='0' bus='0x06' slot='0x12' function='0x5'/></source></hostdev></devices></domain>"""

SRIOV_XML = """<domain type='kvm'><name>nic1</name><memory>65536</memory>
<os><type arch='x86_64'>hvm</type></os>
<devices><interface type='hostdev'><source><address type='pci' domain='0' bus='2' slot='0'
function='1'/></source></interface></devices></domain>"""

PLAIN_XML = """<domain type='kvm'><name>vm1</name><memory>65536</memory>
<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'>
<source file='/x'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


# --------------------------------------------------------------------------------------------
# pure helpers


def test_flags_always_live_p2p_persistent_undefine_source() -> None:
    base = migration_flags(MigrationSettings())
    for flag in (
        libvirt.VIR_MIGRATE_LIVE,
        libvirt.VIR_MIGRATE_PEER2PEER,
        libvirt.VIR_MIGRATE_PERSIST_DEST,
        libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
    ):
        assert base & flag
    for flag in (
        libvirt.VIR_MIGRATE_AUTO_CONVERGE,
        libvirt.VIR_MIGRATE_POSTCOPY,
        libvirt.VIR_MIGRATE_TLS,
        libvirt.VIR_MIGRATE_NON_SHARED_DISK,
    ):
        assert not base & flag


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        (MigrationSettings(auto_converge=True), libvirt.VIR_MIGRATE_AUTO_CONVERGE),
        (MigrationSettings(postcopy_after_s=5.0), libvirt.VIR_MIGRATE_POSTCOPY),
        (MigrationSettings(tls=True), libvirt.VIR_MIGRATE_TLS),
        (MigrationSettings(non_shared_disk=True), libvirt.VIR_MIGRATE_NON_SHARED_DISK),
    ],
)
def test_optional_flags_follow_settings(settings: MigrationSettings, flag: int) -> None:
    assert migration_flags(settings) & flag


def test_params_bandwidth_only_when_capped() -> None:
    assert migration_params(MigrationSettings()) == {}
    params = migration_params(MigrationSettings(bandwidth_mib_s=40))
    assert params == {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 40}
    post = migration_params(MigrationSettings(bandwidth_mib_s=40, postcopy_after_s=1.0))
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY not in post  # post-copy at full speed
    with pytest.raises(ValueError):
        migration_params(MigrationSettings(bandwidth_mib_s=0))


def test_progress_and_result_from_job_stats() -> None:
    p = progress_from_stats(
        "vm1",
        1.5,
        {
            "data_total": 128 * 2**20,
            "data_remaining": 32 * 2**20,
            "memory_dirty_rate": 2560,
            "memory_page_size": 4096,
            "memory_iteration": 3,
        },
    )
    assert p == MigrationProgress("vm1", 1.5, 128.0, 32.0, 10.0, 3)
    r = result_from_stats(
        {"time_elapsed": 850, "downtime": 42, "data_processed": 3 * 2**20}, 2.0, False
    )
    assert r.ok and r.total_s == pytest.approx(0.85) and r.downtime_ms == 42.0
    assert r.transferred_mib == pytest.approx(3.0)
    fallback = result_from_stats({}, 2.0, True)
    assert fallback.total_s == 2.0 and fallback.downtime_ms is None and fallback.postcopy


def test_devices_reason_refuses_passthrough() -> None:
    reason = devices_reason(HOSTDEV_XML)
    assert reason is not None and "gpu1" in reason and "hostdev" in reason
    sriov = devices_reason(SRIOV_XML)
    assert sriov is not None and "nic1" in sriov
    assert devices_reason(PLAIN_XML) is None
    assert devices_reason("<domain") is not None  # unreadable XML is refused, not crashed on


def test_guest_cpu_reads_model_and_emulator() -> None:
    cpu = guest_cpu(PLAIN_XML)
    assert cpu.mode == "custom" and cpu.model == "qemu64"
    assert cpu.cpu_xml is not None and "qemu64" in cpu.cpu_xml
    assert (cpu.arch, cpu.machine, cpu.virttype) == ("x86_64", "pc-i440fx-7.2", "kvm")
    assert cpu.emulator == "/usr/bin/qemu-system-x86_64"
    passthrough = guest_cpu(
        HOSTDEV_XML.replace("<devices>", "<cpu mode='host-passthrough'/><devices>")
    )
    assert passthrough.mode == "host-passthrough" and passthrough.cpu_xml is None


# --------------------------------------------------------------------------------------------
# against libvirt's test driver


@pytest.fixture
async def test_driver() -> AsyncIterator[LibvirtHypervisor]:
    hv = LibvirtHypervisor(
        {
            "t1": ("test:///default", "test:///default"),
            "t2": ("test:///default", "test:///default"),
            "down": (
                "qemu+unix:///system?socket=/nonexistent/rbl-sock",
                "qemu+tcp://127.0.0.9/system",
            ),
        }
    )
    yield hv
    await hv.close()


def test_implements_the_port() -> None:
    hv = LibvirtHypervisor({})
    assert isinstance(hv, Hypervisor)


async def test_domains_lists_the_test_driver(test_driver: LibvirtHypervisor) -> None:
    doms = await test_driver.domains("t1")
    assert set(doms) == {"test"}
    assert doms["test"].running and doms["test"].persistent and not doms["test"].migrating


async def test_unreachable_and_unknown_hosts_raise(test_driver: LibvirtHypervisor) -> None:
    with pytest.raises(HypervisorError, match="down unreachable"):
        await test_driver.domains("down")
    with pytest.raises(HypervisorError, match="not in the inventory"):
        await test_driver.domains("elsewhere")
    with pytest.raises(HypervisorError, match="unreachable"):
        await test_driver.migrate("test", "down", "t1", MigrationSettings())


async def test_failed_migration_is_a_result_not_an_exception(
    test_driver: LibvirtHypervisor,
) -> None:
    events: list[HypervisorEvent] = []
    test_driver.add_listener(events.append)
    result = await test_driver.migrate("test", "t1", "t2", MigrationSettings())
    assert not result.ok and result.error and "not supported" in result.error
    assert [e.kind for e in events if e.vm == "test"] == ["migration-started", "migration-failed"]
    # unknown guest, unknown target, unreachable target, same host: results, never exceptions
    assert "not found" in (
        (await test_driver.migrate("nope", "t1", "t2", MigrationSettings())).error or ""
    )
    assert "not in the inventory" in (
        (await test_driver.migrate("test", "t1", "10.0.0.1", MigrationSettings())).error or ""
    )
    assert "unreachable" in (
        (await test_driver.migrate("test", "t1", "down", MigrationSettings())).error or ""
    )
    assert not (await test_driver.migrate("test", "t1", "t1", MigrationSettings())).ok
    bad = await test_driver.migrate("test", "t1", "t2", MigrationSettings(bandwidth_mib_s=0))
    assert not bad.ok and "bandwidth" in (bad.error or "")


async def test_compatible_refuses_hostdev_and_accepts_plain(test_driver: LibvirtHypervisor) -> None:
    def define() -> None:
        # through the adapter's own connection to t1
        conn = test_driver._hosts["t1"].conn
        conn.defineXML(HOSTDEV_XML.replace("type='kvm'", "type='test'"))

    await test_driver.domains("t1")  # opens the connection
    await asyncio.to_thread(define)
    reason = await test_driver.compatible("gpu1", "t1", "t2")
    assert reason is not None and "hostdev" in reason
    # every test:// connection has its own running "test" domain: the name is taken on t2
    assert "already runs on t2" in (await test_driver.compatible("test", "t1", "t2") or "")
    await test_driver.domains("t2")
    # test:///default is one state shared by every connection of this process: whatever this
    # test changes there is put back, or later tests (the agent's) would see no "test" domain
    test_dom = test_driver._hosts["t2"].conn.lookupByName("test")
    await asyncio.to_thread(test_dom.destroy)
    try:
        # the test driver cannot compare CPUs: no reason invented, libvirt checks while migrating
        assert await test_driver.compatible("test", "t1", "t2") is None
        assert await test_driver.compatible("test", "t1", "t1") is not None
        assert "not found" in (await test_driver.compatible("nope", "t1", "t2") or "")
    finally:
        await asyncio.to_thread(test_dom.create)
        await asyncio.to_thread(
            lambda: test_driver._hosts["t1"].conn.lookupByName("gpu1").undefine()
        )


async def test_blocking_calls_stay_off_the_event_loop(test_driver: LibvirtHypervisor) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    orig = test_driver._call

    async def spy(fn, *args):  # type: ignore[no-untyped-def]
        def wrapped(*a):  # type: ignore[no-untyped-def]
            seen.append(threading.get_ident())
            return fn(*a)

        return await orig(wrapped, *args)

    test_driver._call = spy  # type: ignore[method-assign]
    await test_driver.domains("t1")
    await test_driver.migrate("test", "t1", "t2", MigrationSettings())
    assert seen and loop_thread not in seen


# --------------------------------------------------------------------------------------------
# real live migrations in the lab


@pytest.fixture
async def hv(lab: Lab) -> AsyncIterator[LibvirtHypervisor]:
    adapter = LibvirtHypervisor(lab.inventory(), poll_interval_s=0.1)
    yield adapter
    await adapter.close()


@pytest.mark.lab
async def test_live_migration_is_verified_on_the_target(lab: Lab, hv: LibvirtHypervisor) -> None:
    lab.define_guest("h1", "mig1", 64)
    events = hv.subscribe()
    progress: list[MigrationProgress] = []
    assert await hv.compatible("mig1", "h1", "h2") is None
    result = await hv.migrate(
        "mig1", "h1", "h2", MigrationSettings(max_downtime_ms=300), progress.append
    )
    assert result.ok, result.error
    assert result.downtime_ms is not None and result.downtime_ms > 0
    assert 0 < result.total_s < 60 and not result.postcopy and not result.aborted
    # verified by asking libvirt, not the adapter: on the target, persistent, gone from the source
    assert lab.running_on("mig1") == ["h2"]
    assert lab.guests("h2")["mig1"]["persistent"]
    assert "mig1" not in lab.guests("h1")
    doms = await hv.domains("h2")
    assert doms["mig1"].running and doms["mig1"].persistent and not doms["mig1"].migrating
    # lifecycle events from both daemons
    seen: list[HypervisorEvent] = []
    while True:
        try:
            seen.append(await asyncio.wait_for(events.get(), 2.0))
        except TimeoutError:
            break
        if any(e.host == "h1" and e.migration == "migrated" for e in seen) and any(
            e.host == "h2" and e.migration == "resumed" for e in seen
        ):
            break
    kinds = {(e.kind, e.host, e.migration or e.event) for e in seen if e.vm == "mig1"}
    assert ("migration-started", "h1", "") in kinds
    assert ("lifecycle", "h2", "incoming") in kinds  # started (migrated) on the destination
    assert ("lifecycle", "h2", "resumed") in kinds
    assert ("lifecycle", "h1", "migrated") in kinds  # stopped (migrated) on the source


@pytest.mark.lab
async def test_compatible_in_the_lab(lab: Lab, hv: LibvirtHypervisor) -> None:
    lab.define_guest("h1", "cpu1", 64)
    assert await hv.compatible("cpu1", "h1", "h3") is None  # same CPU everywhere: compared for real
    # a guest defined with a CPU of the other vendor: the target cannot run it
    vendor = _host_vendor(lab, "h3")
    foreign = "Skylake-Client" if vendor == "AMD" else "EPYC"
    lab.define_guest("h1", "alien", 64, start=False)
    _set_cpu(lab, "h1", "alien", f"<cpu mode='custom' match='exact'><model>{foreign}</model></cpu>")
    reason = await hv.compatible("alien", "h1", "h3")
    assert reason is not None and "CPU of alien" in reason and foreign in reason
    lab.define_guest("h1", "twin", 64)
    lab.define_guest("h3", "twin", 64)
    assert "already runs" in (await hv.compatible("twin", "h1", "h3") or "")


@pytest.mark.lab
async def test_dirty_guest_capped_without_postcopy_is_aborted_and_stays(
    lab: Lab, hv: LibvirtHypervisor
) -> None:
    lab.define_guest("h1", "dirty1", 128, dirty=True)
    lab.wait_dirtying("h1", "dirty1")
    progress: list[MigrationProgress] = []
    settings = MigrationSettings(max_downtime_ms=100, bandwidth_mib_s=16, time_budget_s=2.0)
    result = await hv.migrate("dirty1", "h1", "h2", settings, progress.append)
    assert not result.ok and result.aborted and result.error and "time budget" in result.error
    assert lab.running_on("dirty1") == ["h1"]
    assert lab.guests("h1")["dirty1"]["persistent"]
    assert progress and progress[-1].data_remaining_mib > 0
    doms = await hv.domains("h1")
    assert doms["dirty1"].running and not doms["dirty1"].migrating


@pytest.mark.lab
async def test_dirty_guest_capped_with_postcopy_completes(lab: Lab, hv: LibvirtHypervisor) -> None:
    lab.define_guest("h1", "dirty2", 128, dirty=True)
    lab.wait_dirtying("h1", "dirty2")
    settings = MigrationSettings(
        max_downtime_ms=100, bandwidth_mib_s=16, postcopy_after_s=1.0, time_budget_s=30.0
    )
    result = await hv.migrate("dirty2", "h1", "h2", settings)
    assert result.ok and result.postcopy, result.error
    assert lab.running_on("dirty2") == ["h2"]
    assert lab.guests("h2")["dirty2"]["persistent"] and "dirty2" not in lab.guests("h1")


@pytest.mark.lab
async def test_concurrent_migrations_overlap_in_events(lab: Lab, hv: LibvirtHypervisor) -> None:
    for i in range(3):
        lab.define_guest("h1", f"par{i}", 64)
    events: list[HypervisorEvent] = []
    hv.add_listener(events.append)
    results = await asyncio.gather(
        *(
            hv.migrate(f"par{i}", "h1", "h2" if i % 2 else "h3", MigrationSettings())
            for i in range(3)
        )
    )
    assert all(r.ok for r in results), [r.error for r in results]
    # concurrency observed from the destinations' own lifecycle events
    in_flight = peak = 0
    for e in sorted((e for e in events if e.kind == "lifecycle"), key=lambda e: e.at):
        if e.migration == "incoming":
            in_flight += 1
        elif e.migration == "resumed" and e.host != "h1":
            in_flight -= 1
        peak = max(peak, in_flight)
    assert peak >= 2
    assert sorted(h for i in range(3) for h in lab.running_on(f"par{i}")) == ["h2", "h3", "h3"]


def _host_vendor(lab: Lab, host: str) -> str:
    conn = libvirt.open(lab.host(host).uri)
    try:
        caps = conn.getCapabilities()
    finally:
        conn.close()
    return "AMD" if "<vendor>AMD</vendor>" in caps else "Intel"


def _set_cpu(lab: Lab, host: str, vm: str, cpu_xml: str) -> None:
    conn = libvirt.open(lab.host(host).uri)
    try:
        xml = conn.lookupByName(vm).XMLDesc(0)
        conn.defineXML(
            xml.replace("<vcpu>", cpu_xml + "<vcpu>", 1).replace("<vcpu ", cpu_xml + "<vcpu ", 1)
        )
    finally:
        conn.close()


@pytest.mark.lab
async def test_reconnects_after_the_daemon_comes_back(lab: Lab, hv: LibvirtHypervisor) -> None:
    lab.define_guest("h2", "rc1", 64)
    lost: list[HypervisorEvent] = []
    hv.add_listener(lambda e: lost.append(e) if e.kind == "connection-lost" else None)
    assert (await hv.domains("h2"))["rc1"].running
    lab.kill_libvirtd("h2")
    with pytest.raises(HypervisorError, match="h2 unreachable"):
        await hv.domains("h2")
    with pytest.raises(HypervisorError, match="h2 unreachable"):
        await hv.migrate("rc1", "h2", "h1", MigrationSettings())
    # a dead target is a failed migration (a result), and nothing was started
    lab.define_guest("h1", "rc2", 64)
    result = await hv.migrate("rc2", "h1", "h2", MigrationSettings())
    assert not result.ok and "unreachable" in (result.error or "")
    assert lab.guests("h1")["rc2"]["running"] and "rc2" not in lab.guests("h3")
    lab.restart_libvirtd("h2")
    doms = await hv.domains("h2")  # the same adapter, a new connection
    assert doms["rc1"].running
    assert any(e.host == "h2" for e in lost)
