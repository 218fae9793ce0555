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

The pure parts live next to it: `libvirt_events` (the event loop thread, `HypervisorEvent`),
`libvirt_domains` (listing domains, domain/CPU XML), `libvirt_migration` (flags, parameters,
progress and result from job statistics) and `libvirt_errors`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt

from rebalancerd.adapters.libvirt_domains import (
    compare_cpu,
    devices_reason,
    guest_cpu,
    host_cpu_xml,
    list_domains,
    read_host_facts,
)
from rebalancerd.adapters.libvirt_errors import error_code, is_connection_error, one_line
from rebalancerd.adapters.libvirt_events import (
    LIFECYCLE_NAMES,
    MIGRATION_DETAILS,
    EventListener,
    HypervisorEvent,
    ensure_event_loop,
    silence_libvirt_stderr,
)
from rebalancerd.adapters.libvirt_migration import (
    ConvergenceSequence,
    Step,
    migration_flags,
    migration_params,
    progress_from_stats,
    result_from_stats,
)
from rebalancerd.ports import (
    DomainInfo,
    HostFacts,
    HypervisorError,
    MigrationResult,
    MigrationSettings,
    ProgressCallback,
)

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# the adapter


@dataclass
class _Host:
    name: str
    uri: str
    peer_uri: str
    """How the other hosts' libvirtd reach this one (the dconnuri of a peer-to-peer migration)."""
    migrate_uri: str | None = None
    """Where QEMU's memory/disk copy goes (``VIR_MIGRATE_PARAM_URI``); None = libvirt's choice."""
    conn: Any = None
    lock: asyncio.Lock | None = None
    callback_ids: list[int] = field(default_factory=list)


class LibvirtHypervisor:
    """`ports.Hypervisor` over libvirt. `hosts` = {inventory name: (uri, peer_uri)} or
    {name: (uri, peer_uri, migrate_uri)}: `uri` is the daemon's own control connection,
    `peer_uri` what a source libvirtd dials for a peer-to-peer migration, `migrate_uri` (or None)
    the address the memory copy goes to (``VIR_MIGRATE_PARAM_URI``)."""

    def __init__(
        self,
        hosts: Mapping[str, tuple[str, str] | tuple[str, str, str | None]],
        *,
        keepalive_interval_s: int = 5,
        keepalive_count: int = 3,
        poll_interval_s: float = 0.25,
        max_workers: int = 32,
        listeners: list[EventListener] | None = None,
    ) -> None:
        self._hosts = {name: _Host(name, *spec) for name, spec in hosts.items()}
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
        silence_libvirt_stderr()

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
                raise HypervisorError(f"host {name} unreachable: {one_line(exc)}") from None
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
                migration=MIGRATION_DETAILS.get((event, detail), ""),
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
            if is_connection_error(exc):
                await self._drop(self._host(host))
                raise HypervisorError(f"host {host} unreachable: {one_line(exc)}") from None
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
            return await self._guarded(host, list_domains, conn)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"host {host}: cannot list domains: {one_line(exc)}") from None

    async def host_facts(self, host: str) -> HostFacts:
        conn = await self._conn(host)
        try:
            return await self._guarded(host, read_host_facts, conn)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"host {host}: cannot list domains: {one_line(exc)}") from None

    async def domain_xml(self, host: str, vm: str) -> str:
        """`ports.DomainStarter`: the persistent definition, without host-local state."""
        conn = await self._conn(host)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
        try:
            dom = await self._guarded(host, conn.lookupByName, vm)
            return await self._guarded(host, dom.XMLDesc, flags)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"{vm} on {host}: no definition: {one_line(exc)}") from None

    async def start_domain(self, host: str, xml: str) -> None:
        """`ports.DomainStarter`: define persistently, then start."""
        conn = await self._conn(host)
        try:
            dom = await self._guarded(host, conn.defineXML, xml)
            await self._guarded(host, dom.create)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"start on {host} failed: {one_line(exc)}") from None

    async def abort(self, vm: str, source: str) -> None:
        conn = await self._conn(source)
        try:
            dom = await self._guarded(source, conn.lookupByName, vm)
            await self._guarded(source, dom.abortJob)
        except libvirt.libvirtError as exc:
            if error_code(exc) in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
                return  # no job to abort / not there
            raise HypervisorError(f"{vm} on {source}: abort failed: {one_line(exc)}") from None

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
            return f"{vm} not found on {source}: {one_line(exc)}"
        reason = devices_reason(xml)
        if reason:
            return reason
        try:
            other = await self._guarded(target, dst.lookupByName, vm)
            if await self._guarded(target, other.isActive):
                return f"a domain named {vm} already runs on {target}"
        except libvirt.libvirtError as exc:
            if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                return f"cannot check {target} for {vm}: {one_line(exc)}"
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
                result = await self._guarded(target, compare_cpu, dst, info, host_cpu)
            else:
                assert info.cpu_xml is not None
                result = await self._guarded(target, compare_cpu, dst, info, info.cpu_xml)
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_SUPPORT:
                return None  # the driver cannot compare; libvirt checks again when migrating
            return f"CPU of {vm} cannot be checked against {target}: {one_line(exc)}"
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
            return MigrationResult(ok=False, error=f"{vm} not found on {source}: {one_line(exc)}")
        flags = migration_flags(settings)
        try:
            params = migration_params(settings, self._hosts[target].migrate_uri)
        except ValueError as exc:
            return MigrationResult(ok=False, error=f"bad migration settings: {exc}")
        with contextlib.suppress(libvirt.libvirtError):
            await self._call(dom.migrateSetMaxDowntime, int(settings.max_downtime_ms), 0)
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        job = loop.run_in_executor(
            self._pool, dom.migrateToURI3, self._hosts[target].peer_uri, params, flags
        )
        self._emit(HypervisorEvent("migration-started", source, vm, target=target))
        postcopy = aborted = False
        downtime_set = False
        seq = ConvergenceSequence(settings)
        try:
            while True:
                done, _ = await asyncio.wait({job}, timeout=self._poll)
                if done:
                    break
                elapsed = time.monotonic() - t0
                stats = await self._job_stats(dom)
                if stats and not downtime_set:
                    with contextlib.suppress(libvirt.libvirtError):
                        await self._call(dom.migrateSetMaxDowntime, seq.downtime_ms, 0)
                    downtime_set = True
                if stats and progress is not None:
                    with contextlib.suppress(Exception):
                        progress(progress_from_stats(vm, elapsed, stats))
                if postcopy or aborted:
                    continue  # nothing left to decide: wait for the outcome
                step = seq.on_stats(elapsed, stats or {})
                if step.action == "downtime":
                    with contextlib.suppress(libvirt.libvirtError):
                        await self._call(dom.migrateSetMaxDowntime, step.downtime_ms, 0)
                elif step.action == "postcopy":
                    try:
                        await self._call(dom.migrateStartPostCopy, 0)
                        postcopy = True
                        seq.finished()
                        continue
                    except libvirt.libvirtError:
                        pass  # not possible yet: retried next poll, until the budget is spent
                    if elapsed >= settings.time_budget_s:
                        step = Step("abort")
                if step.action == "abort":
                    with contextlib.suppress(libvirt.libvirtError):
                        await self._call(dom.abortJob)
                        aborted = True
                        seq.finished()
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
                result = await self._completed(dst, vm, wall, postcopy, seq)
                self._emit(HypervisorEvent("migration-finished", source, vm, target=target))
                return result
            msg = one_line(exc)
            if aborted:
                msg = f"aborted by the time budget ({settings.time_budget_s:g}s): {msg}"
            self._emit(HypervisorEvent("migration-failed", source, vm, target=target))
            return MigrationResult(
                ok=False,
                total_s=wall,
                postcopy=postcopy,
                aborted=aborted,
                error=f"{msg} (vm on: {where})",
                downtime_step_ups=seq.step_ups,
                final_max_downtime_ms=seq.downtime_ms,
            )
        wall = time.monotonic() - t0
        result = await self._completed(dst, vm, wall, postcopy, seq)
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

    async def _completed(
        self, dst: Any, vm: str, wall: float, postcopy: bool, seq: ConvergenceSequence
    ) -> MigrationResult:
        stats: dict[str, Any] = {}
        try:
            dom = await self._call(dst.lookupByName, vm)
            flags = (
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
            )
            stats = dict(await self._call(dom.jobStats, flags) or {})
        except libvirt.libvirtError:
            pass
        return dataclasses.replace(
            result_from_stats(stats, wall, postcopy),
            downtime_step_ups=seq.step_ups,
            final_max_downtime_ms=seq.downtime_ms,
        )

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
