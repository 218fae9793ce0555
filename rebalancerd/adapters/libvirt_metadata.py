"""Per-domain and per-host placement facts from libvirt XML, for the agent.

``parse_domain_xml`` is pure (domain XML text in, ``DomainMeta`` out); ``MetadataCache`` keeps
one parsed result per domain UUID and re-parses only when the XML changes, and adds what the XML
does not say (disk sizes from ``blockInfo``, the snapshot count). ``host_facts`` reads the host
CPU (``getCapabilities``), the active libvirt networks and the Linux bridges.

The rebalancerd metadata element (see docs/vm-metadata.md)::

    <metadata>
      <rb:placement xmlns:rb="https://rebalancerd.dev/xmlns/1">
        <rb:tag>db</rb:tag><rb:tag>tier-1</rb:tag>
      </rb:placement>
    </metadata>

XML safety: libvirt's XML never has a DOCTYPE, so a document with ``<!DOCTYPE`` / ``<!ENTITY``
is refused (no entity expansion at all); documents are bounded in size; every list is capped.
"""

from __future__ import annotations

import contextlib
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rebalancerd.adapters.libvirt_domains import devices_reason

RB_NS = "https://rebalancerd.dev/xmlns/1"
MAX_XML_CHARS = 4 * 1024 * 1024
MAX_TAGS = 32
MAX_TAG_LEN = 64
MAX_FEATURES = 256
MAX_NETWORKS = 64
MAX_DISKS = 64
MAX_NAME_LEN = 128
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}$")
"""A tag: a plain label (``db``, ``tier-1``, ``team=payments``)."""
NET_RE = re.compile(r"^(network|bridge):[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class MetadataError(ValueError):
    """Domain XML that cannot be used; one line."""


@dataclass(frozen=True, slots=True)
class Disk:
    target: str
    source: str
    shared: bool


@dataclass(frozen=True, slots=True)
class DomainMeta:
    tags: tuple[str, ...] = ()
    cpu_mode: str = ""
    cpu_model: str = ""
    cpu_features: tuple[str, ...] = ()
    """CPU features the guest requires (``<feature policy='require'>``)."""
    networks: tuple[str, ...] = ()
    disks: tuple[Disk, ...] = ()
    local_disk_mib: int = 0
    not_migratable: str = ""
    """Why the guest cannot be live-migrated ('' = it can)."""


def _safe_root(xml: str) -> ET.Element:
    if len(xml) > MAX_XML_CHARS:
        raise MetadataError(f"domain XML larger than {MAX_XML_CHARS} characters")
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise MetadataError("domain XML with a DOCTYPE/ENTITY is refused")
    try:
        return ET.fromstring(xml)
    except ET.ParseError as e:
        raise MetadataError(f"domain XML: {e}") from None


def _under(path: str, prefixes: Sequence[str]) -> bool:
    p = os.path.normpath(path)
    for pre in prefixes:
        q = os.path.normpath(pre)
        if p == q or p.startswith(q.rstrip("/") + "/"):
            return True
    return False


def _disk(el: ET.Element, shared_paths: Sequence[str], shared_pools: Sequence[str]) -> Disk | None:
    src = el.find("source")
    if src is None or el.find("readonly") is not None:
        return None  # empty CD-ROM, or read-only media: nothing a migration copies
    dtype = el.get("type", "file")
    tgt = el.find("target")
    target = (tgt.get("dev", "") if tgt is not None else "")[:MAX_NAME_LEN]
    if dtype == "network":
        return Disk(target, f"{src.get('protocol', '')}:{src.get('name', '')}"[:256], True)
    if dtype == "volume":
        pool = src.get("pool", "")
        return Disk(target, f"{pool}/{src.get('volume', '')}"[:256], pool in shared_pools)
    path = src.get("file") or src.get("dev") or src.get("dir") or ""
    shared = el.find("shareable") is not None or (bool(path) and _under(path, shared_paths))
    return Disk(target, path[:256], shared)


def _nic(el: ET.Element) -> str | None:
    src = el.find("source")
    if src is None:
        return None
    kind = el.get("type", "")
    if kind == "network" and src.get("network"):
        name = f"network:{src.get('network')}"
    elif kind == "bridge" and src.get("bridge"):
        name = f"bridge:{src.get('bridge')}"
    else:
        return None
    return name if NET_RE.match(name) else None


def parse_domain_xml(
    xml: str, shared_paths: Sequence[str] = (), shared_pools: Sequence[str] = ()
) -> DomainMeta:
    """Placement facts of one domain from its XML (``local_disk_mib`` is filled in later from
    ``blockInfo``). Raises ``MetadataError`` for XML it refuses."""
    root = _safe_root(xml)
    tags: list[str] = []
    for el in root.iterfind(f"metadata/{{{RB_NS}}}placement/{{{RB_NS}}}tag"):
        t = (el.text or "").strip()
        if TAG_RE.match(t) and t not in tags and len(tags) < MAX_TAGS:
            tags.append(t)
    cpu = root.find("cpu")
    mode = model = ""
    features: list[str] = []
    if cpu is not None:
        mode = cpu.get("mode", "custom")[:32]
        m = cpu.find("model")
        model = (m.text or "").strip()[:MAX_NAME_LEN] if m is not None else ""
        for f in cpu.iterfind("feature"):
            name = f.get("name", "")
            needed = f.get("policy", "require") in ("require", "force") and bool(name)
            if needed and len(features) < MAX_FEATURES and name[:MAX_TAG_LEN] not in features:
                features.append(name[:MAX_TAG_LEN])
    devices = root.find("devices")
    nets: list[str] = []
    disks: list[Disk] = []
    reasons: list[str] = []
    if devices is not None:
        for nic in devices.iterfind("interface"):
            n = _nic(nic)
            if n is not None and n not in nets and len(nets) < MAX_NETWORKS:
                nets.append(n)
        for d in devices.iterfind("disk"):
            disk = _disk(d, shared_paths, shared_pools)
            if disk is not None and len(disks) < MAX_DISKS:
                disks.append(disk)
    devices_why = devices_reason(xml)  # the executor's own verdict on the devices
    if devices_why:
        reasons.append(devices_why)
    mb = root.find("memoryBacking")
    if mb is not None and mb.find("locked") is not None:
        reasons.append("locked memory (<memoryBacking><locked/>)")
    return DomainMeta(
        tags=tuple(sorted(tags)),
        cpu_mode=mode,
        cpu_model=model,
        cpu_features=tuple(sorted(features)),
        networks=tuple(sorted(nets)),
        disks=tuple(disks),
        not_migratable="; ".join(reasons),
    )


def _text_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            # libvirt spells a few features with dots where Linux uses underscores
            return flags | {f.replace("_", ".") for f in flags if f.startswith("sse4_")}
    return set()


@dataclass(frozen=True, slots=True)
class HostFacts:
    cpu_model: str = ""
    cpu_features: tuple[str, ...] = ()
    networks: tuple[str, ...] | None = None


def parse_host_cpu(capabilities_xml: str, cpuinfo: str = "") -> tuple[str, tuple[str, ...]]:
    """Host CPU model and features: the capabilities' ``<host><cpu>`` (model + listed extras)
    plus /proc/cpuinfo flags (the model's own features, which capabilities do not list)."""
    root = _safe_root(capabilities_xml)
    cpu = root.find("host/cpu")
    model = ""
    feats = _text_flags(cpuinfo)
    if cpu is not None:
        m = cpu.find("model")
        model = (m.text or "").strip()[:MAX_NAME_LEN] if m is not None else ""
        feats |= {f.get("name", "") for f in cpu.iterfind("feature")} - {""}
    return model, tuple(sorted(f[:MAX_TAG_LEN] for f in feats)[: MAX_FEATURES * 2])


def host_bridges(sys_class_net: Path = Path("/sys/class/net")) -> list[str]:
    """Linux bridges present on this host (``/sys/class/net/<dev>/bridge`` exists)."""
    out: list[str] = []
    with contextlib.suppress(OSError):
        for dev in sorted(sys_class_net.iterdir()):
            if (dev / "bridge").is_dir():
                out.append(f"bridge:{dev.name}")
    return out


def host_facts(conn: Any, sys_class_net: Path = Path("/sys/class/net")) -> HostFacts:
    """CPU, active libvirt networks and bridges of the host behind ``conn``."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")[: 1 << 20]
    except OSError:
        cpuinfo = ""
    model, feats = parse_host_cpu(conn.getCapabilities(), cpuinfo)
    nets: list[str] = []
    try:
        active = conn.listAllNetworks(2)  # VIR_CONNECT_LIST_NETWORKS_ACTIVE
    except Exception:  # a driver without networks (test:///, or no network driver)
        active = []
    for n in active:
        name = f"network:{n.name()}"
        if NET_RE.match(name):
            nets.append(name)
        with contextlib.suppress(Exception):
            br = f"bridge:{n.bridgeName()}"
            if NET_RE.match(br):
                nets.append(br)
    nets.extend(host_bridges(sys_class_net))
    return HostFacts(model, feats, tuple(sorted(set(nets))[: MAX_NETWORKS * 4]))


class MetadataCache:
    """One parsed ``DomainMeta`` per domain UUID, re-parsed when the domain's XML changes; disk
    sizes and the snapshot count are read then too (not every interval)."""

    def __init__(self, shared_paths: Sequence[str] = (), shared_pools: Sequence[str] = ()) -> None:
        self.shared_paths = tuple(shared_paths)
        self.shared_pools = tuple(shared_pools)
        self._by_uuid: dict[str, tuple[str, DomainMeta]] = {}
        self.errors = 0

    def get(self, dom: Any, host_cpu_model: str = "") -> DomainMeta:
        uuid = dom.UUIDString()
        xml = dom.XMLDesc(0)
        hit = self._by_uuid.get(uuid)
        if hit is not None and hit[0] == xml:
            return hit[1]
        try:
            meta = parse_domain_xml(xml, self.shared_paths, self.shared_pools)
        except MetadataError:
            self.errors += 1
            meta = DomainMeta()
        local = 0
        for d in meta.disks:
            if d.shared or not d.target:
                continue
            try:
                _cap, alloc, phys = dom.blockInfo(d.target)
            except Exception:  # a disk libvirt cannot size: count its path as unknown (0)
                continue
            local += max(int(alloc), 0) or max(int(phys), 0)
        reason = meta.not_migratable
        if local:
            with contextlib.suppress(Exception):
                if dom.snapshotNum(0) > 0:
                    reason = "; ".join(x for x in (reason, "snapshots with local disks") if x)
        # host-passthrough needs the very same CPU model on the target; a custom or host-model
        # guest model is a baseline many host CPUs run, so its required features decide
        model = host_cpu_model if meta.cpu_mode == "host-passthrough" else ""
        meta = replace(
            meta, local_disk_mib=-(-local // (1024 * 1024)), not_migratable=reason, cpu_model=model
        )
        self._by_uuid[uuid] = (xml, meta)
        return meta

    def forget_except(self, uuids: set[str]) -> None:
        for gone in set(self._by_uuid) - uuids:
            del self._by_uuid[gone]
