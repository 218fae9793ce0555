"""The agent's domain-XML parser (tags, CPU, disks, networks, migratability) on XML fixtures,
and the metadata cache and host facts on libvirt's test:/// driver (a real libvirt connection)."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from rebalancerd.adapters.dirty_rate import DirtyRateSettings
from rebalancerd.adapters.libvirt_metadata import (
    RB_NS,
    MetadataCache,
    MetadataError,
    host_bridges,
    parse_domain_xml,
    parse_host_cpu,
)
from rebalancerd.adapters.libvirt_stats import LibvirtStatsReader

DOMAIN = f"""<domain type='kvm'>
  <name>db1</name>
  <memory unit='KiB'>1048576</memory>
  <metadata>
    <rb:placement xmlns:rb="{RB_NS}"><rb:tag>db</rb:tag><rb:tag>tier-1</rb:tag>
      <rb:tag>bad tag with spaces</rb:tag><rb:tag>db</rb:tag></rb:placement>
    <other:thing xmlns:other="https://example.org/x"><other:tag>ignored</other:tag></other:thing>
  </metadata>
  <cpu mode='custom' match='exact'>
    <model fallback='forbid'>Skylake-Client</model>
    <feature policy='require' name='avx2'/>
    <feature policy='disable' name='hle'/>
    <feature policy='optional' name='pcid'/>
    <feature name='aes'/>
  </cpu>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/db1.qcow2'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/mnt/nfs/vms/db1-data.qcow2'/><target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/mapper/shared-lun'/><target dev='vdc'/><shareable/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='pool/db1-log'/><target dev='vdd'/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='gluster' volume='db1-x'/><target dev='vde'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='sda'/><readonly/></disk>
    <interface type='network'><source network='default'/></interface>
    <interface type='bridge'><source bridge='br0'/></interface>
    <interface type='bridge'><source bridge='br0'/></interface>
    <interface type='user'/>
  </devices>
</domain>"""


def test_tags_cpu_disks_and_networks() -> None:
    m = parse_domain_xml(DOMAIN, shared_paths=["/mnt/nfs"], shared_pools=["gluster"])
    assert m.tags == ("db", "tier-1")  # invalid and duplicate tags dropped, other namespace ignored
    assert (m.cpu_mode, m.cpu_model) == ("custom", "Skylake-Client")
    assert m.cpu_features == ("aes", "avx2")  # require (the default policy) only
    assert m.networks == ("bridge:br0", "network:default")
    shared = {d.target: d.shared for d in m.disks}
    assert shared == {"vda": False, "vdb": True, "vdc": True, "vdd": True, "vde": True}
    assert m.not_migratable == ""


def test_shared_path_prefix_is_a_directory_boundary() -> None:
    m = parse_domain_xml(DOMAIN, shared_paths=["/mnt/nf"], shared_pools=[])
    shared = {d.target: d.shared for d in m.disks}
    assert shared["vdb"] is False  # /mnt/nfs/... is not under /mnt/nf
    assert shared["vde"] is False  # pool not declared shared


@pytest.mark.parametrize(
    ("extra", "where", "reason"),
    [
        ("<hostdev mode='subsystem' type='pci'/>", "devices", "hostdev"),
        ("<interface type='hostdev'/>", "devices", "passthrough network interface"),
        ("<memoryBacking><locked/></memoryBacking>", "domain", "locked"),
    ],
)
def test_not_migratable(extra: str, where: str, reason: str) -> None:
    if where == "devices":
        xml = DOMAIN.replace("<devices>", "<devices>" + extra)
    else:
        xml = DOMAIN.replace("</domain>", extra + "</domain>")
    assert reason in parse_domain_xml(xml).not_migratable


@pytest.mark.parametrize(
    "xml",
    [
        "<!DOCTYPE d [<!ENTITY a 'x'>]><domain>&a;</domain>",
        "<domain><name>x</name>",
        "not xml",
    ],
)
def test_refused_xml_is_one_line_error(xml: str) -> None:
    with pytest.raises(MetadataError) as e:
        parse_domain_xml(xml)
    assert "\n" not in str(e.value)


def test_host_cpu_from_capabilities_and_cpuinfo() -> None:
    caps = """<capabilities><host><cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model>
      <feature name='ss'/><feature name='vmx'/></cpu></host></capabilities>"""
    model, feats = parse_host_cpu(caps, "processor: 0\nflags\t\t: fpu avx2 sse4_2\n")
    assert model == "Skylake-Client-IBRS"
    assert {"ss", "vmx", "avx2", "sse4_2", "sse4.2"} <= set(feats)


def test_host_bridges_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "br0" / "bridge").mkdir(parents=True)
    (tmp_path / "eth0").mkdir()
    assert host_bridges(tmp_path) == ["bridge:br0"]


def test_cache_reparses_when_the_xml_changes_on_real_libvirt() -> None:
    """test:///default: a real connection; tags set through libvirt's metadata API (what
    `virsh metadata --key rb --set` does) appear in the reader's VM entries."""
    reader = LibvirtStatsReader("test:///default", DirtyRateSettings(enabled=True))
    try:
        (before,) = reader.read()
        assert before["tags"] == [] and before["networks"] == ["network:default"]
        assert before["memory_used_mib"] is None  # no balloon stats here: unknown, not 0
        assert before["dirty_rate_mib_s"] is None  # the test driver cannot measure: null
        host_net = reader.host.networks if reader.host is not None else None
        assert host_net is not None and "network:default" in host_net
        dom = reader._connect().lookupByName("test")
        cache = MetadataCache()
        first = cache.get(dom)
        assert cache.get(dom) is first  # unchanged XML: no re-parse
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            "<placement><tag>db</tag><tag>tier-1</tag></placement>",
            "rb",
            RB_NS,
            libvirt.VIR_DOMAIN_AFFECT_LIVE,
        )
        assert cache.get(dom).tags == ("db", "tier-1")
        (after,) = reader.read()
        assert after["tags"] == ["db", "tier-1"]
        dom.setMetadata(  # test:///default is shared in the process: leave it as found
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, RB_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE
        )
    finally:
        reader.close()
