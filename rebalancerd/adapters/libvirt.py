"""libvirt adapter: `ports.Hypervisor` on real libvirtd hosts.

- One connection per inventory host, opened from the URI of the inventory (never from telemetry or
  domain data), with keepalive; a dead connection is dropped and reopened on next use.
- Every blocking libvirt call runs in a worker thread of the adapter's own executor; the asyncio
  event loop never blocks on libvirt.
- One process-wide libvirt event loop thread (`virEventRegisterDefaultImpl` +
  `virEventRunDefaultImpl`) drives keepalive and delivers domain lifecycle events, which the
  adapter republishes as `HypervisorEvent`s (listener callbacks and asyncio queues), next to its
  own migration-started/finished/failed events.
- Live migration is peer-to-peer `migrateToURI3` to the target's migration URI, with progress from
  `jobStats()`, a time budget (post-copy if allowed, else `abortJob()`: the VM keeps running on the
  source) and the result from the destination's completed job statistics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt

from rebalancerd.ports import (
    DomainInfo,
    HypervisorError,
    MigrationProgress,
    MigrationResult,
    MigrationSettings,
    ProgressCallback,
)

T = TypeVar("T")
MIB = 1024 * 1024

# --------------------------------------------------------------------------------------------
# events

LIFECYCLE_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}

# (event, detail) pairs that concern migration
_MIGRATION_DETAILS = {
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED): "incoming",
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED): "paused",
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY): "postcopy",
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED): "resumed",
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY): "postcopy",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): "migrated",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED): "failed",
}


@dataclass(frozen=True, slots=True)
class HypervisorEvent:
    """Something that happened on a host.

    kind: "lifecycle" (from libvirt: `event` is started/suspended/resumed/stopped/..., `detail`
    libvirt's detail code, `migration` a label when the event concerns a migration), or the
    adapter's own "migration-started" / "migration-finished" / "migration-failed" /
    "connection-lost".
    """

    kind: str
    host: str
    vm: str
    event: str = ""
    detail: int = 0
    migration: str = ""
    target: str = ""
    at: float = field(default_factory=time.monotonic)


EventListener = Callable[[HypervisorEvent], None]

_event_loop_lock = threading.Lock()
_event_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Start the process-wide libvirt event loop thread (once). Must run before connections are
    opened for keepalive and domain events to work."""
    global _event_loop_thread
    with _event_loop_lock:
        if _event_loop_thread is not None and _event_loop_thread.is_alive():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:
                    time.sleep(0.01)

        _event_loop_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_loop_thread.start()


def _silence_libvirt_stderr() -> None:
    # libvirt prints every error to stderr by default; errors reach us as exceptions anyway.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _err_code(exc: BaseException) -> int | None:
    if isinstance(exc, libvirt.libvirtError):
        code = exc.get_error_code()
        return int(code) if code is not None else None
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# the adapter


@dataclass
class _Host:
    name: str
    uri: str
    migration_uri: str
    conn: Any = None
    lock: asyncio.Lock | None = None
    callback_ids: list[int] = field(default_factory=list)


class LibvirtHypervisor:
    """`ports.Hypervisor` over libvirt. `hosts` = {inventory name: (uri, migration_uri)}."""

    def __init__(
        self,
        hosts: Mapping[str, tuple[str, str]],
        *,
        keepalive_interval_s: int = 5,
        keepalive_count: int = 3,
        poll_interval_s: float = 0.25,
        max_workers: int = 32,
        listeners: list[EventListener] | None = None,
    ) -> None:
        self._hosts = {name: _Host(name, uri, muri) for name, (uri, muri) in hosts.items()}
        self._keepalive = (keepalive_interval_s, keepalive_count)
        self._poll = poll_interval_s
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers, thread_name_prefix="libvirt"
        )
        self._listeners: list[EventListener] = list(listeners or [])
        self._queues: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[HypervisorEvent]]] = []
        self._closed = False
        self._seq = itertools.count(1)
        ensure_event_loop()
        _silence_libvirt_stderr()

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def add_listener(self, listener: EventListener) -> None:
        """`listener(event)` runs for every event, in the libvirt event thread or the loop."""
        self._listeners.append(listener)

    def subscribe(self) -> asyncio.Queue[HypervisorEvent]:
        """A queue receiving every event from now on, on the calling event loop."""
        q: asyncio.Queue[HypervisorEvent] = asyncio.Queue()
        self._queues.append((asyncio.get_running_loop(), q))
        return q

    def _emit(self, ev: HypervisorEvent) -> None:
        for listener in list(self._listeners):
            with contextlib.suppress(Exception):
                listener(ev)
        for loop, q in list(self._queues):
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(q.put_nowait, ev)

    def _host(self, name: str) -> _Host:
        h = self._hosts.get(name)
        if h is None:
            raise HypervisorError(f"host {name!r} is not in the inventory")
        return h

    async def _conn(self, name: str) -> Any:
        """The live connection to an inventory host, (re)opened if needed."""
        h = self._host(name)
        if h.lock is None:
            h.lock = asyncio.Lock()
        async with h.lock:
            if h.conn is not None:
                try:
                    alive = await self._call(h.conn.isAlive)
                except libvirt.libvirtError:
                    alive = False
                if alive:
                    return h.conn
                await self._drop(h)
            try:
                h.conn = await self._call(self._open, h)
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"host {name} unreachable: {_one_line(exc)}") from None
            return h.conn

    def _open(self, h: _Host) -> Any:
        conn = libvirt.open(h.uri)
        with contextlib.suppress(libvirt.libvirtError):  # test:// has no keepalive
            conn.setKeepAlive(*self._keepalive)
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._on_close, h.name)
        with contextlib.suppress(libvirt.libvirtError):
            h.callback_ids = [
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, h.name
                )
            ]
        return conn

    def _on_close(self, _conn: Any, reason: int, host: str) -> None:
        self._emit(HypervisorEvent("connection-lost", host, "", detail=int(reason)))

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, host: str) -> None:
        self._emit(
            HypervisorEvent(
                "lifecycle",
                host,
                dom.name(),
                event=LIFECYCLE_NAMES.get(event, str(event)),
                detail=int(detail),
                migration=_MIGRATION_DETAILS.get((event, detail), ""),
            )
        )

    async def _drop(self, h: _Host) -> None:
        conn, h.conn = h.conn, None
        if conn is None:
            return

        def close() -> None:
            for cid in h.callback_ids:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cid)
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

        h.callback_ids = []
        await self._call(close)

    async def _guarded(self, host: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call on a host; a connection-level failure becomes HypervisorError
        (and the connection is dropped so the next call reconnects)."""
        try:
            return await self._call(fn, *args)
        except libvirt.libvirtError as exc:
            if _is_connection_error(exc):
                await self._drop(self._host(host))
                raise HypervisorError(f"host {host} unreachable: {_one_line(exc)}") from None
            raise

    async def close(self) -> None:
        self._closed = True
        for h in self._hosts.values():
            with contextlib.suppress(Exception):
                await self._drop(h)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- Hypervisor port --------------------------------------------------------------------

    async def domains(self, host: str) -> dict[str, DomainInfo]:
        conn = await self._conn(host)
        try:
            return await self._guarded(host, _list_domains, conn)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"host {host}: cannot list domains: {_one_line(exc)}") from None

    async def abort(self, vm: str, source: str) -> None:
        conn = await self._conn(source)
        try:
            dom = await self._guarded(source, conn.lookupByName, vm)
            await self._guarded(source, dom.abortJob)
        except libvirt.libvirtError as exc:
            if _err_code(exc) in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
                return  # no job to abort / not there
            raise HypervisorError(f"{vm} on {source}: abort failed: {_one_line(exc)}") from None

    async def compatible(self, vm: str, source: str, target: str) -> str | None:
        if source == target:
            return "source and target are the same host"
        for name in (source, target):
            if name not in self._hosts:
                return f"host {name!r} is not in the inventory"
        src = await self._conn(source)
        dst = await self._conn(target)
        try:
            dom = await self._guarded(source, src.lookupByName, vm)
            # the live definition: for a running guest its CPU is the one it really got
            xml = await self._guarded(source, dom.XMLDesc, 0)
        except libvirt.libvirtError as exc:
            return f"{vm} not found on {source}: {_one_line(exc)}"
        reason = devices_reason(xml)
        if reason:
            return reason
        try:
            other = await self._guarded(target, dst.lookupByName, vm)
            if await self._guarded(target, other.isActive):
                return f"a domain named {vm} already runs on {target}"
        except libvirt.libvirtError as exc:
            if _err_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                return f"cannot check {target} for {vm}: {_one_line(exc)}"
        return await self._cpu_reason(vm, xml, source, src, target, dst)

    async def _cpu_reason(
        self, vm: str, xml: str, source: str, src: Any, target: str, dst: Any
    ) -> str | None:
        info = guest_cpu(xml)
        if info.cpu_xml is None and info.mode != "host-passthrough":
            return None  # the hypervisor default model: any x86 KVM host runs it
        try:
            if info.mode == "host-passthrough":
                # the guest sees the source's host CPU: the target must offer the same
                src_caps = await self._guarded(source, src.getCapabilities)
                host_cpu = host_cpu_xml(src_caps)
                if host_cpu is None:
                    return None
                result = await self._guarded(target, _compare_cpu, dst, info, host_cpu)
            else:
                assert info.cpu_xml is not None
                result = await self._guarded(target, _compare_cpu, dst, info, info.cpu_xml)
        except libvirt.libvirtError as exc:
            if _err_code(exc) == libvirt.VIR_ERR_NO_SUPPORT:
                return None  # the driver cannot compare; libvirt checks again when migrating
            return f"CPU of {vm} cannot be checked against {target}: {_one_line(exc)}"
        if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
            return f"CPU of {vm} ({info.model or info.mode}) is not compatible with {target}"
        return None

    async def migrate(
        self,
        vm: str,
        source: str,
        target: str,
        settings: MigrationSettings,
        progress: ProgressCallback | None = None,
    ) -> MigrationResult:
        if source == target:
            return MigrationResult(ok=False, error="source and target are the same host")
        if target not in self._hosts:
            return MigrationResult(ok=False, error=f"target {target!r} is not in the inventory")
        src = await self._conn(source)  # HypervisorError if the source is unreachable
        try:
            dst = await self._conn(target)
        except HypervisorError as exc:
            return MigrationResult(ok=False, error=str(exc))
        try:
            dom = await self._guarded(source, src.lookupByName, vm)
        except libvirt.libvirtError as exc:
            return MigrationResult(ok=False, error=f"{vm} not found on {source}: {_one_line(exc)}")
        flags = migration_flags(settings)
        try:
            params = migration_params(settings)
        except ValueError as exc:
            return MigrationResult(ok=False, error=f"bad migration settings: {exc}")
        with contextlib.suppress(libvirt.libvirtError):
            await self._call(dom.migrateSetMaxDowntime, int(settings.max_downtime_ms), 0)
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        job = loop.run_in_executor(
            self._pool, dom.migrateToURI3, self._hosts[target].migration_uri, params, flags
        )
        self._emit(HypervisorEvent("migration-started", source, vm, target=target))
        postcopy = aborted = False
        downtime_set = False
        try:
            while True:
                done, _ = await asyncio.wait({job}, timeout=self._poll)
                if done:
                    break
                elapsed = time.monotonic() - t0
                stats = await self._job_stats(dom)
                if stats and not downtime_set:
                    with contextlib.suppress(libvirt.libvirtError):
                        await self._call(
                            dom.migrateSetMaxDowntime, int(settings.max_downtime_ms), 0
                        )
                    downtime_set = True
                if stats and progress is not None:
                    with contextlib.suppress(Exception):
                        progress(progress_from_stats(vm, elapsed, stats))
                if postcopy or aborted:
                    continue  # nothing left to decide: wait for the outcome
                over_budget = elapsed >= settings.time_budget_s
                if settings.postcopy_after_s is not None and (
                    elapsed >= settings.postcopy_after_s or over_budget
                ):
                    try:
                        await self._call(dom.migrateStartPostCopy, 0)
                        postcopy = True
                        continue
                    except libvirt.libvirtError:
                        pass  # not possible yet: retried next poll, until the budget is spent
                if over_budget:
                    with contextlib.suppress(libvirt.libvirtError):
                        await self._call(dom.abortJob)
                        aborted = True
            job.result()
        except asyncio.CancelledError:
            # the caller gave up: do not leave an unbounded migration behind
            with contextlib.suppress(Exception):
                await asyncio.shield(self._call(dom.abortJob))
            raise
        except libvirt.libvirtError as exc:
            wall = time.monotonic() - t0
            where = await self._where(vm, source, target)
            if where == "target":
                # the job reported an error but the guest did arrive (e.g. lost the source
                # connection while finishing): the truth is on the hosts, not in the exception
                result = await self._completed(dst, vm, wall, postcopy)
                self._emit(HypervisorEvent("migration-finished", source, vm, target=target))
                return result
            msg = _one_line(exc)
            if aborted:
                msg = f"aborted by the time budget ({settings.time_budget_s:g}s): {msg}"
            self._emit(HypervisorEvent("migration-failed", source, vm, target=target))
            return MigrationResult(
                ok=False,
                total_s=wall,
                postcopy=postcopy,
                aborted=aborted,
                error=f"{msg} (vm on: {where})",
            )
        wall = time.monotonic() - t0
        result = await self._completed(dst, vm, wall, postcopy)
        self._emit(HypervisorEvent("migration-finished", source, vm, target=target))
        return result

    # -- migration helpers ------------------------------------------------------------------

    async def _job_stats(self, dom: Any) -> dict[str, Any] | None:
        try:
            stats = await self._call(dom.jobStats, 0)
        except libvirt.libvirtError:
            return None
        if not stats or stats.get("type") != libvirt.VIR_DOMAIN_JOB_UNBOUNDED:
            return None  # no job, or already completed / failed / cancelled
        if not stats.get("data_total"):
            return None  # still setting up
        return dict(stats)

    async def _completed(self, dst: Any, vm: str, wall: float, postcopy: bool) -> MigrationResult:
        stats: dict[str, Any] = {}
        try:
            dom = await self._call(dst.lookupByName, vm)
            flags = (
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
            )
            stats = dict(await self._call(dom.jobStats, flags) or {})
        except libvirt.libvirtError:
            pass
        return result_from_stats(stats, wall, postcopy)

    async def _where(self, vm: str, source: str, target: str) -> str:
        """Where the guest runs now: "source", "target", "both", "neither" or "unknown"."""
        found = []
        for host in (source, target):
            try:
                doms = await self.domains(host)
            except HypervisorError:
                return "unknown"
            info = doms.get(vm)
            if info is not None and info.running:
                found.append(host)
        if found == [source]:
            return "source"
        if found == [target]:
            return "target"
        return "both" if found else "neither"


# --------------------------------------------------------------------------------------------
# pure helpers (unit-tested against test:///default and literal XML)


def migration_flags(settings: MigrationSettings) -> int:
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    if settings.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if settings.postcopy_after_s is not None:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if settings.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if settings.non_shared_disk:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    return int(flags)


def migration_params(settings: MigrationSettings) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if settings.bandwidth_mib_s is not None:
        if settings.bandwidth_mib_s <= 0:
            raise ValueError("bandwidth_mib_s must be positive (None = unlimited)")
        # the cap applies to pre-copy; once switched, post-copy pulls pages at full speed so the
        # guest (already running on the target) is not slowed down by remote page faults
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(settings.bandwidth_mib_s)
    return params


def progress_from_stats(vm: str, elapsed_s: float, stats: Mapping[str, Any]) -> MigrationProgress:
    page = float(stats.get("memory_page_size", 4096) or 4096)
    return MigrationProgress(
        vm=vm,
        elapsed_s=elapsed_s,
        data_total_mib=float(stats.get("data_total", 0)) / MIB,
        data_remaining_mib=float(stats.get("data_remaining", 0)) / MIB,
        dirty_rate_mib_s=float(stats.get("memory_dirty_rate", 0)) * page / MIB,
        iteration=int(stats.get("memory_iteration", 0)),
    )


def result_from_stats(stats: Mapping[str, Any], wall_s: float, postcopy: bool) -> MigrationResult:
    """A successful result from completed job statistics (wall time if they are missing)."""
    elapsed_ms = stats.get("time_elapsed")
    downtime = stats.get("downtime")
    transferred = stats.get("data_processed", stats.get("memory_processed", 0))
    return MigrationResult(
        ok=True,
        total_s=float(elapsed_ms) / 1000.0 if elapsed_ms is not None else wall_s,
        downtime_ms=float(downtime) if downtime is not None else None,
        transferred_mib=float(transferred or 0) / MIB,
        postcopy=postcopy,
    )


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


def _compare_cpu(conn: Any, info: GuestCpu, cpu_xml: str) -> int:
    """compareHypervisorCPU (what this hypervisor can offer), else compareCPU (host CPU)."""
    try:
        return int(
            conn.compareHypervisorCPU(
                info.emulator, info.arch, info.machine, info.virttype, cpu_xml, 0
            )
        )
    except libvirt.libvirtError as exc:
        if _err_code(exc) != libvirt.VIR_ERR_NO_SUPPORT:
            raise
    return int(conn.compareCPU(cpu_xml, 0))


def _list_domains(conn: Any) -> dict[str, DomainInfo]:
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
            if _is_connection_error(exc):
                raise
            continue  # the domain vanished while listing
    return out


def _is_incoming(dom: Any) -> bool:
    """A guest paused for migration that is the destination's half (not yet taken over)."""
    try:
        stats = dom.jobStats(0)
    except libvirt.libvirtError as exc:
        # libvirt 9: "migration statistics are available only on the source host"
        return bool(_err_code(exc) == libvirt.VIR_ERR_OPERATION_UNSUPPORTED)
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


_CONNECTION_ERRORS = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_AUTH_FAILED,
}


def _is_connection_error(exc: BaseException) -> bool:
    code = _err_code(exc)
    if code in _CONNECTION_ERRORS:
        return True
    return "client socket is closed" in str(exc) or "keepalive timeout" in str(exc)
