"""Read-only per-domain statistics from the local libvirtd, for the agent.

One ``getAllDomainStats`` call per interval (falling back to ``dom.info()`` per domain for
drivers that return few fields, like ``test:///``). CPU use comes from ``cpu.time`` deltas,
block/network throughput from byte counter deltas, memory from the balloon (``rss`` when the
driver reports it, else available - unused; null when neither), dirty rate from
``dirtyrate.*`` after the reader's ``DirtyRateSampler`` asked QEMU to measure (a couple of reads
``calc_seconds`` apart give a value; that needs a read-write connection, so the reader opens one
when dirty-rate sampling is enabled, read-only otherwise). Placement facts (tags, CPU, disks,
networks, migratability) come from the domain XML through ``MetadataCache`` (parsed when the XML
changes), the host's CPU and networks from ``host_facts`` (refreshed every ``HOST_FACTS_EVERY_S``).

Blocking (libvirt-python): the agent calls ``read()`` in a worker thread. Errors raise
``LibvirtUnavailable``; the connection is reopened on the next call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import libvirt

from rebalancerd.adapters.dirty_rate import DirtyRateSampler, DirtyRateSettings
from rebalancerd.adapters.libvirt_metadata import HostFacts, MetadataCache, host_facts
from rebalancerd.telemetry.schema import NAME_RE

HOST_FACTS_EVERY_S = 60.0

_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
_DIRTY = getattr(libvirt, "VIR_DOMAIN_STATS_DIRTYRATE", 0)


class LibvirtUnavailable(Exception):
    """libvirtd could not be read this time."""


def _silence(_ctx: object, _err: object) -> None:
    return None


libvirt.registerErrorHandler(_silence, None)


@dataclass(slots=True)
class _Prev:
    t: float
    cpu_ns: int
    counters: tuple[float, float, float, float]


def _sum(st: dict[str, Any], prefix: str, suffix: str) -> float:
    n = int(st.get(f"{prefix}.count", 0) or 0)
    return float(sum(int(st.get(f"{prefix}.{i}.{suffix}", 0) or 0) for i in range(min(n, 256))))


class LibvirtStatsReader:
    def __init__(
        self,
        uri: str,
        dirty_rate: DirtyRateSettings | None = None,
        shared_storage_paths: Sequence[str] = (),
        shared_storage_pools: Sequence[str] = (),
    ) -> None:
        self.uri = uri
        self._conn: Any = None
        self._prev: dict[str, _Prev] = {}
        self._stats_flags = _STATS | _DIRTY
        self.skipped_names = 0
        self.dirty = DirtyRateSampler(dirty_rate or DirtyRateSettings(enabled=False))
        self.meta = MetadataCache(shared_storage_paths, shared_storage_pools)
        self.host: HostFacts | None = None
        """The host's CPU and networks (None until read once)."""
        self._host_at = -HOST_FACTS_EVERY_S
        self.host_errors = 0

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _connect(self) -> Any:
        if self._conn is None:
            try:
                if self.dirty.settings.enabled:  # starting a measurement needs read-write
                    self._conn = libvirt.open(self.uri)
                else:
                    self._conn = libvirt.openReadOnly(self.uri)
            except libvirt.libvirtError as e:
                raise LibvirtUnavailable(f"cannot open {self.uri}: {e}") from None
        return self._conn

    def _all_stats(self, conn: Any) -> list[tuple[Any, dict[str, Any]]]:
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        try:
            return list(conn.getAllDomainStats(self._stats_flags, flags))
        except libvirt.libvirtError:
            if self._stats_flags & _DIRTY:  # older QEMU/libvirt: no dirty-rate group
                self._stats_flags = _STATS
                return list(conn.getAllDomainStats(self._stats_flags, flags))
            raise

    def read(self) -> list[dict[str, Any]]:
        """VM entries in the shape of telemetry.schema.VmStats."""
        conn = self._connect()
        try:
            records = self._all_stats(conn)
            now = time.monotonic()
            wall = time.time()
            self._refresh_host(conn, now)
            out = [self._vm(dom, st, now, wall) for dom, st in records]
            running = [
                (dom, v["name"], v["memory_mib"], int(st.get("dirtyrate.calc_status", 0) or 0))
                for (dom, st), v in zip(records, out, strict=True)
                if v is not None and v["state"] == "running"
            ]
            self.dirty.schedule([(d, n, m, s == 1) for d, n, m, s in running], now)
        except libvirt.libvirtError as e:
            self.close()
            raise LibvirtUnavailable(f"{self.uri}: {e}") from None
        vms = [v for v in out if v is not None]
        self.skipped_names = len(out) - len(vms)
        seen = {v["name"] for v in vms}
        for gone in set(self._prev) - seen:
            del self._prev[gone]
        self.dirty.forget_except(seen)
        self.meta.forget_except({str(v.pop("_uuid")) for v in vms})
        return vms

    def _refresh_host(self, conn: Any, now: float) -> None:
        if now - self._host_at < HOST_FACTS_EVERY_S and self.host is not None:
            return
        self._host_at = now
        try:
            self.host = host_facts(conn)
        except libvirt.libvirtError:
            raise
        except Exception:  # capabilities XML we cannot use: keep what we had
            self.host_errors += 1

    def _vm(self, dom: Any, st: dict[str, Any], now: float, wall: float) -> dict[str, Any] | None:
        name = dom.name()
        if not NAME_RE.match(name):
            return None
        cpu_ns = st.get("cpu.time")
        vcpus = st.get("vcpu.current")
        cur_kib = st.get("balloon.current")
        state_code = st.get("state.state")
        if cpu_ns is None or vcpus is None or cur_kib is None or state_code is None:
            info = dom.info()  # [state, maxMem KiB, memory KiB, nrVirtCpu, cpuTime ns]
            state_code = info[0] if state_code is None else state_code
            cur_kib = info[2] if cur_kib is None else cur_kib
            vcpus = info[3] if vcpus is None else vcpus
            cpu_ns = info[4] if cpu_ns is None else cpu_ns
        vcpus = max(1, int(vcpus))
        counters = (
            _sum(st, "block", "rd.bytes"),
            _sum(st, "block", "wr.bytes"),
            _sum(st, "net", "rx.bytes"),
            _sum(st, "net", "tx.bytes"),
        )
        prev = self._prev.get(name)
        cpu_mc = 0.0
        rates = [0.0, 0.0, 0.0, 0.0]
        if prev is not None and now > prev.t:
            dt = now - prev.t
            cpu_mc = max(0.0, (int(cpu_ns) - prev.cpu_ns) / 1e6 / dt)
            rates = [max(0.0, (c - p) / dt) for c, p in zip(counters, prev.counters, strict=True)]
        self._prev[name] = _Prev(now, int(cpu_ns), counters)
        memory_mib = max(1, int(cur_kib) // 1024)
        rss = st.get("balloon.rss")
        unused = st.get("balloon.unused")
        available = st.get("balloon.available")
        used: int | None = None
        if rss is not None and int(rss) > 0:
            used = int(rss) // 1024
        elif unused is not None and available is not None:
            used = max(0, int(available) - int(unused)) // 1024
        self.dirty.observe(name, st, wall)
        dirty, dirty_age = self.dirty.value(name, wall)
        host_model = self.host.cpu_model if self.host is not None else ""
        meta = self.meta.get(dom, host_model)
        state = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused"}.get(
            int(state_code), "other"
        )
        return {
            "name": name,
            "state": state,
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "cpu_mc": round(min(cpu_mc, vcpus * 1000.0), 1),
            "memory_used_mib": used,
            "block_rd_bytes_s": round(rates[0], 1),
            "block_wr_bytes_s": round(rates[1], 1),
            "net_rx_bytes_s": round(rates[2], 1),
            "net_tx_bytes_s": round(rates[3], 1),
            "dirty_rate_mib_s": dirty,
            "dirty_rate_age_s": dirty_age,
            "tags": list(meta.tags),
            "cpu_model": meta.cpu_model,
            "cpu_features": list(meta.cpu_features),
            "networks": list(meta.networks),
            "local_disk_mib": meta.local_disk_mib,
            "migratable": not meta.not_migratable,
            "not_migratable_reason": meta.not_migratable[:200],
            "_uuid": dom.UUIDString(),
        }
