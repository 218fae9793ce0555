"""libvirt domains: listing them with their state (running, migrating, an incoming half), what a
host really runs with its memory (`read_host_facts`), and reading domain and capabilities XML
(passthrough devices, the guest CPU, CPU comparison)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import libvirt

from rebalancerd.adapters.libvirt_errors import error_code, is_connection_error
from rebalancerd.ports import DomainInfo, HostFacts

KIB = 1024


def devices_reason(domain_xml: str) -> str | None:
    """Why a domain's devices cannot be live-migrated (host passthrough), or None."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        return f"unreadable domain XML: {exc}"
    name = root.findtext("name") or "domain"
    devices = root.find("devices")
    if devices is None:
        return None
    for hostdev in devices.findall("hostdev"):
        kind = hostdev.get("type", "?")
        return f"{name} has a host device passed through ({kind} hostdev): cannot live-migrate"
    for iface in devices.findall("interface"):
        if iface.get("type") == "hostdev":
            return f"{name} has a passthrough network interface (hostdev): cannot live-migrate"
    return None


@dataclass(frozen=True, slots=True)
class GuestCpu:
    mode: str
    model: str | None
    cpu_xml: str | None
    arch: str | None
    machine: str | None
    virttype: str | None
    emulator: str | None


def guest_cpu(domain_xml: str) -> GuestCpu:
    root = ET.fromstring(domain_xml)
    cpu = root.find("cpu")
    os_type = root.find("os/type")
    mode = cpu.get("mode", "custom") if cpu is not None else "default"
    model = cpu.findtext("model") if cpu is not None else None
    cpu_xml = None
    if cpu is not None and (model or mode in ("host-model",)):
        cpu_xml = ET.tostring(cpu, encoding="unicode")
    return GuestCpu(
        mode=mode,
        model=model,
        cpu_xml=cpu_xml,
        arch=os_type.get("arch") if os_type is not None else None,
        machine=os_type.get("machine") if os_type is not None else None,
        virttype=root.get("type"),
        emulator=root.findtext("devices/emulator"),
    )


def host_cpu_xml(capabilities_xml: str) -> str | None:
    cpu = ET.fromstring(capabilities_xml).find("host/cpu")
    return ET.tostring(cpu, encoding="unicode") if cpu is not None else None


def compare_cpu(conn: Any, info: GuestCpu, cpu_xml: str) -> int:
    """compareHypervisorCPU (what this hypervisor can offer), else compareCPU (host CPU)."""
    try:
        return int(
            conn.compareHypervisorCPU(
                info.emulator, info.arch, info.machine, info.virttype, cpu_xml, 0
            )
        )
    except libvirt.libvirtError as exc:
        if error_code(exc) != libvirt.VIR_ERR_NO_SUPPORT:
            raise
    return int(conn.compareCPU(cpu_xml, 0))


def list_domains(conn: Any) -> dict[str, DomainInfo]:
    out: dict[str, DomainInfo] = {}
    for dom in conn.listAllDomains(0):
        try:
            name = dom.name()
            state, reason = dom.state()
            running = state in (
                libvirt.VIR_DOMAIN_RUNNING,
                libvirt.VIR_DOMAIN_PAUSED,
                libvirt.VIR_DOMAIN_BLOCKED,
            )
            migrating = _is_migrating(dom, state, reason)
            if (
                state == libvirt.VIR_DOMAIN_PAUSED
                and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION
                and _is_incoming(dom)
            ):
                running = False  # an incoming guest that has not taken over yet
            out[name] = DomainInfo(
                name=name, running=running, persistent=bool(dom.isPersistent()), migrating=migrating
            )
        except libvirt.libvirtError as exc:
            if is_connection_error(exc):
                raise
            continue  # the domain vanished while listing
    return out


def read_host_facts(conn: Any) -> HostFacts:
    """The active domains of a host with their memory (the larger of the current and the
    maximum balloon size: what the guest may take), those that run here, and the node's free
    memory (None where the driver does not report it). Blocking: run it off the event loop."""
    memory: dict[str, int] = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            info = dom.info()
            memory[dom.name()] = -(-max(int(info[1]), int(info[2])) // KIB)
        except libvirt.libvirtError as exc:
            if is_connection_error(exc):
                raise
            continue  # the domain vanished while listing
    running = frozenset(n for n, d in list_domains(conn).items() if d.running and n in memory)
    free: int | None
    try:
        free = int(conn.getFreeMemory()) // (KIB * KIB)
    except libvirt.libvirtError as exc:
        if is_connection_error(exc):
            raise
        free = None
    return HostFacts(memory, running, free)


def _is_incoming(dom: Any) -> bool:
    """A guest paused for migration that is the destination's half (not yet taken over)."""
    try:
        stats = dom.jobStats(0)
    except libvirt.libvirtError as exc:
        # libvirt 9: "migration statistics are available only on the source host"
        return bool(error_code(exc) == libvirt.VIR_ERR_OPERATION_UNSUPPORTED)
    op = stats.get("operation") if stats else None
    return bool(op == getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN", -1))


def _is_migrating(dom: Any, state: int, reason: int) -> bool:
    if state == libvirt.VIR_DOMAIN_PAUSED and reason in (
        libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED,
    ):
        return True
    if state != libvirt.VIR_DOMAIN_RUNNING:
        return False
    try:
        info = dom.jobInfo()
    except libvirt.libvirtError:
        return False
    return bool(info) and info[0] not in (
        libvirt.VIR_DOMAIN_JOB_NONE,
        libvirt.VIR_DOMAIN_JOB_COMPLETED,
    )
