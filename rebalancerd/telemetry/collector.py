"""Daemon-side telemetry collector: validated reports in, ClusterSnapshot out.

The collector is transport-agnostic: ``ingest``/``ingest_batch`` take ``(topic, payload)`` pairs
and are pure bookkeeping (no I/O), so tests, benchmarks and the simulation feed it directly, and
``adapters/mqtt.py`` feeds it from a broker. ``run()`` pumps a ``ports.MessageStream`` until
cancelled.

Rules (docs/telemetry.md):

- Hosts come only from the inventory. A report for any other host is dropped before it is decoded
  (``unknown_host``); nothing in a report is ever used as an address.
- Memory is bounded: one state object per inventory host, at most ``max_vms_per_host`` VMs per
  host, fixed-size sample rings. A flood from one host is cut by a token bucket *before* decoding.
- A host is STALE when never heard from, when its last report is older than ``stale_after_s``,
  when its agent published ``offline`` (Last Will) after it, or when its agent cannot read libvirt
  (we do not know what runs there). DEGRADED when the agent's health signals say so.
- Reports are ordered per agent process (``boot`` names it, ``seq`` orders its reports); a host
  silent for ``stale_after_s`` accepts its next valid report whatever its seq (see ``_order``).
- A VM belongs to the host whose libvirt runs it: another host listing it does not move it
  while its owner's fresh reports list it (``telemetry/ownership.py``).
- The snapshot's VMs are those reported by non-stale hosts, each on its owner; CPU in reference
  millicores (host millicores x inventory speed), ``cpu_used_mc`` is the EWMA,
  ``cpu_history_mc`` the last samples.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm
from rebalancerd.ports import Clock, Message, MessageStream, MetricsSink
from rebalancerd.telemetry.inventory import Inventory, InventoryHost
from rebalancerd.telemetry.ownership import VmOwners
from rebalancerd.telemetry.schema import (
    NAME_RE,
    Rejection,
    RejectReason,
    StatusV1,
    TelemetryV1,
    VmStats,
    decode_report,
    decode_status,
    parse_topic,
)
from rebalancerd.telemetry.smoothing import Series

log = structlog.get_logger("rebalancerd.telemetry")


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    cluster: str = "default"
    stale_after_s: float = 30.0
    """A host whose last report is older than this is STALE (no moves to or from it)."""
    max_clock_skew_s: float = 30.0
    """Reports whose timestamp differs from our clock by more are rejected (clock_skew)."""
    history_len: int = 60
    ewma_alpha: float = 0.3
    max_payload_bytes: int = 256 * 1024
    max_vms_per_host: int = 1000
    rate_per_s: float = 2.0
    """Sustained messages per second accepted from one host (token bucket)."""
    rate_burst: float = 20.0
    capacity_tolerance: float = 1.2
    """A VM using more than this x its vCPUs (or its host's cores) is an absurd report."""
    reject_log_interval_s: float = 10.0
    """At most one log line per reject reason per this many seconds."""

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.cluster):
            raise ValueError(f"cluster name {self.cluster!r} is not a plain name")
        if self.stale_after_s <= 0 or self.max_clock_skew_s <= 0:
            raise ValueError("stale_after_s and max_clock_skew_s must be > 0")
        if self.history_len <= 0 or self.max_vms_per_host <= 0 or self.max_payload_bytes <= 0:
            raise ValueError("history_len, max_vms_per_host and max_payload_bytes must be > 0")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        if self.rate_per_s <= 0 or self.rate_burst < 1:
            raise ValueError("rate_per_s must be > 0 and rate_burst >= 1")


class _VmState:
    __slots__ = ("cpu", "dirty", "memory_mib", "memory_used_mib", "report", "running", "vcpus")

    def __init__(self, history_len: int, alpha: float) -> None:
        self.cpu = Series(history_len, alpha)
        self.vcpus = 1
        self.memory_mib = 1
        self.memory_used_mib = 0
        self.dirty: float | None = None
        self.running = True
        self.report: VmStats | None = None
        """The VM's entry in the last accepted report (its v2 placement facts)."""


class _HostState:
    __slots__ = (
        "boot",
        "degraded",
        "inv",
        "lag",
        "last_report",
        "libvirt_ok",
        "noted_state",
        "offline",
        "recv_mono",
        "retired_boots",
        "seq",
        "tokens",
        "tokens_at",
        "vms",
    )

    def __init__(self, inv: InventoryHost, burst: float) -> None:
        self.inv = inv
        self.boot = -1
        self.seq = -1
        self.retired_boots: deque[int] = deque(maxlen=8)
        """Boot ids of this host's earlier agent processes (their late reports are refused)."""
        self.recv_mono: float | None = None
        self.lag = 0.0
        self.offline = False
        self.degraded = False
        self.libvirt_ok = True
        self.noted_state: HostState | None = None
        """The state last logged (a change is logged once, when first seen)."""
        self.vms: dict[str, _VmState] = {}
        self.tokens = burst
        self.tokens_at: float | None = None
        self.last_report: TelemetryV1 | None = None


@dataclass(frozen=True, slots=True)
class HostView:
    name: str
    state: HostState
    age_s: float
    last_report: TelemetryV1 | None


@dataclass(frozen=True, slots=True)
class VmView:
    name: str
    host: str
    cpu_last_mc: int
    cpu_ewma_mc: int
    cpu_p95_mc: int
    samples: int


class _HostStates(Mapping[str, HostState]):
    """A collector's host states as a mapping: each lookup reads that host only."""

    def __init__(self, collector: Collector) -> None:
        self._c = collector

    def __getitem__(self, name: str) -> HostState:
        c = self._c
        return c._state(c._hosts[name], c.clock.monotonic())[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._c._hosts)

    def __len__(self) -> int:
        return len(self._c._hosts)


class Collector:
    """Implements ports.TelemetrySource."""

    def __init__(
        self,
        inventory: Inventory,
        clock: Clock,
        metrics: MetricsSink,
        settings: CollectorSettings | None = None,
        stream: MessageStream | None = None,
    ) -> None:
        self.settings = settings or CollectorSettings()
        self.inventory = inventory
        self.clock = clock
        self.metrics = metrics
        self.stream = stream
        self._hosts: dict[str, _HostState] = {
            h.name: _HostState(h, self.settings.rate_burst) for h in inventory.hosts
        }
        self.accepted = 0
        self.rejected: dict[RejectReason, int] = {}
        """Rejected messages by reason (a refused VM claim is not a message: see owners)."""
        self.owners = VmOwners(self._hosts, self._is_stale, metrics)
        """Which host each VM belongs to; counts refused claims (``owners.claims_refused``)."""
        self._log_at: dict[RejectReason, float] = {}
        self._log_suppressed: dict[RejectReason, int] = {}

    # -- TelemetrySource ----------------------------------------------------------------------
    async def run(self) -> None:
        """Ingest batches from the stream until cancelled (without a stream: refresh metrics)."""
        if self.stream is None:
            while True:
                self.refresh_metrics()
                await self.clock.sleep(5.0)
        last_refresh = -math.inf
        async for batch in self.stream.batches():
            self.ingest_batch(batch)
            mono = self.clock.monotonic()
            if mono - last_refresh >= 5.0:
                self.refresh_metrics()
                last_refresh = mono

    def current(self) -> ClusterSnapshot:
        now = self.clock.monotonic()
        hosts: list[Host] = []
        chosen: list[Vm] = []
        ages: list[float] = []
        set_gauge = self.metrics.set
        for name, hs in self._hosts.items():
            state, age = self._state(hs, now)
            self._note(hs, state, age)
            set_gauge("telemetry_staleness_seconds", min(age, 1e9), host=name)
            hosts.append(_merged_host(hs, state))
            if state is HostState.STALE:
                continue
            ages.append(age)
            owns = self.owners.owns
            listed = self.owners.listed
            for vm_name, vs in hs.vms.items():
                if len(listed.get(vm_name, ())) > 1 and not owns(name, vm_name, now):
                    continue  # another host's VM
                hist = vs.cpu.samples
                rep = vs.report
                vm = Vm(
                    name=vm_name,
                    host=name,
                    vcpus=vs.vcpus,
                    memory_mib=vs.memory_mib,
                    cpu_used_mc=round(vs.cpu.ewma or 0.0),
                    memory_used_mib=vs.memory_used_mib,
                    cpu_history_mc=tuple(hist),
                    dirty_rate_mib_s=vs.dirty,
                    **(_placement(rep) if rep is not None else {}),
                )
                chosen.append(vm)
        set_gauge("telemetry_data_age_seconds", max(ages) if ages else -1.0)
        taken = self.clock.now() - (max(ages) if ages else 0.0)
        return ClusterSnapshot(
            hosts=tuple(hosts),
            vms=tuple(chosen),
            taken_at=taken if ages else None,
        )

    def host_states(self) -> Mapping[str, HostState]:
        """Every inventory host's state now (as `current()` reports it), computed per lookup."""
        return _HostStates(self)

    def data_age_s(self) -> float:
        now = self.clock.monotonic()
        worst = -1.0
        for hs in self._hosts.values():
            state, age = self._state(hs, now)
            if state is not HostState.STALE:
                worst = max(worst, age)
        return math.inf if worst < 0 else worst

    # -- views --------------------------------------------------------------------------------
    def host_view(self, name: str) -> HostView:
        hs = self._hosts[name]
        state, age = self._state(hs, self.clock.monotonic())
        return HostView(name, state, age, hs.last_report)

    def vm_view(self, name: str) -> VmView | None:
        """The VM as its owner reports it (or, while no fresh host has it, the first lister)."""
        listers = self.owners.listers(name)
        if not listers:
            return None
        owner = self.owners.owner_of(name, self.clock.monotonic())
        host = owner if owner in listers else next(h for h in self._hosts if h in listers)
        vs = self._hosts[host].vms[name]
        return VmView(
            name, host, vs.cpu.last, vs.cpu.smoothed(), vs.cpu.percentile(95), len(vs.cpu)
        )

    def agent_status(self, name: str) -> str:
        """Return "offline" when the host's agent published its Last Will after its last report,
        else "silent" (for the dead-host classification, execution/ha.py)."""
        return "offline" if self._hosts[name].offline else "silent"

    def report_lag_s(self, name: str) -> float:
        """How old the host's last accepted report was when it was ingested (seconds)."""
        return self._hosts[name].lag

    def vm_count(self) -> int:
        return sum(len(hs.vms) for hs in self._hosts.values())

    def refresh_metrics(self) -> None:
        now = self.clock.monotonic()
        for name, hs in self._hosts.items():
            state, age = self._state(hs, now)
            self._note(hs, state, age)
            self.metrics.set("telemetry_staleness_seconds", min(age, 1e9), host=name)
        age = self.data_age_s()
        self.metrics.set("telemetry_data_age_seconds", age if math.isfinite(age) else -1.0)

    # -- ingest -------------------------------------------------------------------------------
    def ingest_batch(self, batch: Iterable[Message]) -> int:
        """Ingest messages received together; returns how many were accepted."""
        now_mono = self.clock.monotonic()
        now_wall = self.clock.now()
        ok = 0
        for topic, payload in batch:
            if self._ingest(topic, payload, now_mono, now_wall) is None:
                ok += 1
        if ok:
            self.accepted += ok
            self.metrics.inc("telemetry_messages_total", ok)
        return ok

    def ingest(self, topic: str, payload: bytes) -> RejectReason | None:
        """Ingest one message; returns None if accepted, else the reason it was dropped."""
        reason = self._ingest(topic, payload, self.clock.monotonic(), self.clock.now())
        if reason is None:
            self.accepted += 1
            self.metrics.inc("telemetry_messages_total")
        return reason

    def _ingest(
        self, topic: str, payload: bytes, now_mono: float, now_wall: float
    ) -> RejectReason | None:
        try:
            return self._ingest_unsafe(topic, payload, now_mono, now_wall)
        except Exception as e:  # a bug must not stop ingestion; count it and go on
            self.metrics.inc("errors_total", where="telemetry_ingest")
            return self._reject(RejectReason.INVALID_VALUE, f"internal error {type(e).__name__}")

    def _ingest_unsafe(
        self, topic: str, payload: bytes, now_mono: float, now_wall: float
    ) -> RejectReason | None:
        s = self.settings
        if len(payload) > s.max_payload_bytes:
            return self._reject(RejectReason.OVERSIZE, f"{len(payload)} bytes")
        parsed = parse_topic(topic)
        if parsed is None:
            return self._reject(RejectReason.BAD_TOPIC, _printable(topic))
        cluster, host, kind = parsed
        if not NAME_RE.match(host) or not NAME_RE.match(cluster):
            return self._reject(RejectReason.BAD_NAME, _printable(topic))
        if cluster != s.cluster:
            return self._reject(RejectReason.CLUSTER_MISMATCH, _printable(topic))
        hs = self._hosts.get(host)
        if hs is None:
            return self._reject(RejectReason.UNKNOWN_HOST, host)
        if not self._take_token(hs, now_mono):
            return self._reject(RejectReason.RATE_LIMITED, host)
        if kind == "status":
            status = decode_status(payload)
            if isinstance(status, Rejection):
                return self._reject(status.reason, f"{host} status: {status.detail}")
            return self._apply_status(hs, status)
        report = decode_report(payload)
        if isinstance(report, Rejection):
            return self._reject(report.reason, f"{host}: {report.detail}")
        return self._apply_report(hs, report, now_mono, now_wall)

    def _take_token(self, hs: _HostState, now: float) -> bool:
        s = self.settings
        if hs.tokens_at is not None:
            hs.tokens = min(s.rate_burst, hs.tokens + (now - hs.tokens_at) * s.rate_per_s)
        hs.tokens_at = now
        if hs.tokens < 1.0:
            return False
        hs.tokens -= 1.0
        return True

    def _apply_status(self, hs: _HostState, status: StatusV1) -> RejectReason | None:
        if status.host != hs.inv.name:
            return self._reject(RejectReason.HOST_MISMATCH, f"{hs.inv.name} status")
        if status.status == "offline":
            if not hs.offline:
                log.info("telemetry_host_offline", host=hs.inv.name)
            hs.offline = True
        return None

    def _apply_report(
        self, hs: _HostState, r: TelemetryV1, now_mono: float, now_wall: float
    ) -> RejectReason | None:
        s = self.settings
        inv = hs.inv
        if r.host != inv.name:
            return self._reject(RejectReason.HOST_MISMATCH, f"topic {inv.name}, payload {r.host}")
        if r.cluster != s.cluster:
            return self._reject(RejectReason.CLUSTER_MISMATCH, f"{inv.name}: {r.cluster}")
        skew = r.ts - now_wall
        if abs(skew) > s.max_clock_skew_s:
            return self._reject(RejectReason.CLOCK_SKEW, f"{inv.name}: {skew:+.1f} s")
        order, resync = self._order(hs, r, now_mono)
        if order is not None:
            return order
        if len(r.vms) > s.max_vms_per_host:
            return self._reject(RejectReason.OVER_CAPACITY, f"{inv.name}: {len(r.vms)} VMs")
        tol1000 = s.capacity_tolerance * 1000
        tol = s.capacity_tolerance
        cores = inv.cores
        host_mem = inv.memory_mib
        total = 0.0
        for vm in r.vms:
            cpu = vm.cpu_mc
            total += cpu
            vcpus = vm.vcpus
            if cpu > (vcpus if vcpus < cores else cores) * tol1000:
                return self._reject(
                    RejectReason.OVER_CAPACITY, f"{inv.name}/{vm.name}: cpu {cpu:.0f} mc"
                )
            mem = vm.memory_mib
            used = vm.memory_used_mib or 0
            if mem > host_mem or used > mem * tol + 1024:
                return self._reject(RejectReason.OVER_CAPACITY, f"{inv.name}/{vm.name}: memory")
        if total > cores * tol1000:
            return self._reject(RejectReason.OVER_CAPACITY, f"{inv.name}: cpu {total:.0f} mc")

        # accepted: update state
        if resync:
            log.warning(
                "telemetry_order_resync", host=inv.name, boot=r.boot, seq=r.seq, last_seq=hs.seq
            )
        if r.boot != hs.boot:
            if hs.boot >= 0:
                hs.retired_boots.append(hs.boot)
            hs.boot = r.boot
        hs.seq = r.seq
        hs.recv_mono = now_mono
        hs.lag = -skew if skew < 0 else 0.0
        hs.offline = False
        hs.libvirt_ok = r.libvirt_ok
        hs.degraded = r.health.degraded
        hs.last_report = r
        old = hs.vms
        new: dict[str, _VmState] = {}
        speed = inv.speed
        for vm in r.vms:
            name = vm.name
            vs = old.get(name)
            if vs is None:
                vs = _VmState(s.history_len, s.ewma_alpha)
            vs.cpu.add(int(vm.cpu_mc * speed + 0.5))
            vs.vcpus = vm.vcpus
            vs.memory_mib = vm.memory_mib
            vs.memory_used_mib = vm.memory_used_mib or 0
            vs.dirty = vm.dirty_rate_mib_s
            vs.report = vm
            vs.running = vm.state == "running"
            new[name] = vs
        hs.vms = new
        self.owners.relist(inv.name, old, new, now_mono)
        self.metrics.inc("telemetry_reports_total", version=str(r.v))
        return None

    def _order(
        self, hs: _HostState, r: TelemetryV1, now_mono: float
    ) -> tuple[RejectReason | None, bool]:
        """(rejection or None, whether ordering restarts although the report is late).

        Reports are ordered per agent process: ``boot`` names the process (an opaque id, not
        compared as a number: a clock stepped back gives a restarted agent a lower one), ``seq``
        orders its reports. A report from a process seen before the current one is late.
        Nothing can wedge a host: after ``stale_after_s`` without an accepted report (the host is
        stale anyway) the next valid report is accepted and ordering restarts from it; its
        timestamp is still bounded by our own clock (``max_clock_skew_s``)."""
        name = hs.inv.name
        if r.boot == hs.boot and r.seq == hs.seq:
            return self._reject(RejectReason.SEQ_REPLAYED, f"{name}: seq {r.seq}"), False
        late = r.seq < hs.seq if r.boot == hs.boot else r.boot in hs.retired_boots
        if not late:
            return None, False
        if hs.recv_mono is not None and now_mono - hs.recv_mono > self.settings.stale_after_s:
            return None, True
        reason = RejectReason.SEQ_OUT_OF_ORDER
        return self._reject(reason, f"{name}: boot {r.boot} seq {r.seq}"), False

    def _note(self, hs: _HostState, state: HostState, age: float) -> None:
        """Log a host's state change once, when the model first sees it (a host goes stale by
        silence without any message arriving, so this runs whenever states are computed)."""
        prev = hs.noted_state
        if prev is state:
            return
        hs.noted_state = state
        if prev is None and hs.recv_mono is None:
            return  # never heard from yet: start-up, not news
        if state is HostState.STALE:
            why = (
                "offline" if hs.offline else "libvirt_unreadable" if not hs.libvirt_ok else "silent"
            )
            log.warning(
                "telemetry_host_stale",
                host=hs.inv.name,
                previous=prev.value if prev else None,
                why=why,
                age_s=round(age, 1) if math.isfinite(age) else None,
                consequence="no migration to or from this host until it reports again",
            )
        else:
            log.info(
                "telemetry_host_state_changed",
                host=hs.inv.name,
                state=state.value,
                previous=prev.value if prev else None,
            )

    def _is_stale(self, host: str, now: float) -> bool:
        return self._state(self._hosts[host], now)[0] is HostState.STALE

    def _state(self, hs: _HostState, now: float) -> tuple[HostState, float]:
        if hs.recv_mono is None:
            return HostState.STALE, math.inf
        age = now - hs.recv_mono + hs.lag
        if hs.offline or not hs.libvirt_ok or age > self.settings.stale_after_s:
            return HostState.STALE, age
        if hs.degraded:
            return HostState.DEGRADED, age
        return HostState.ACTIVE, age

    def _reject(self, reason: RejectReason, detail: str) -> RejectReason:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.metrics.inc("telemetry_rejected_total", reason=reason.value)
        now = self.clock.monotonic()
        last = self._log_at.get(reason)
        if last is None or now - last >= self.settings.reject_log_interval_s:
            suppressed = self._log_suppressed.pop(reason, 0)
            log.warning(
                "telemetry_rejected", reason=reason.value, detail=detail, suppressed=suppressed
            )
            self._log_at[reason] = now
        else:
            self._log_suppressed[reason] = self._log_suppressed.get(reason, 0) + 1
        return reason


def _placement(r: VmStats) -> dict[str, Any]:
    """A report's v2 placement facts as Vm fields (v1 reports leave the defaults)."""
    return {
        "tags": frozenset(r.tags),
        "local_disk_mib": r.local_disk_mib,
        "migratable": r.migratable,
        "cpu_model": r.cpu_model,
        "required_cpu_features": frozenset(r.cpu_features),
        "networks": frozenset(r.networks),
        "net_bytes_s": r.net_rx_bytes_s + r.net_tx_bytes_s,
    }


def _merged_host(hs: _HostState, state: HostState) -> Host:
    """The inventory host with the agent's CPU and networks where the inventory sets none
    (inventory values win when set)."""
    host = hs.inv.to_host(state)
    r = hs.last_report
    if r is None:
        return host
    st = r.host_stats
    changes: dict[str, Any] = {}
    if not host.cpu_model and st.cpu_model:
        changes["cpu_model"] = st.cpu_model
    if not host.cpu_features and st.cpu_features:
        changes["cpu_features"] = frozenset(st.cpu_features)
    if host.networks is None and st.networks is not None:
        changes["networks"] = frozenset(st.networks)
    return replace(host, **changes) if changes else host


def _printable(text: str, limit: int = 120) -> str:
    """Inert rendering of untrusted text for a log line."""
    return text[:limit].encode("unicode_escape", "replace").decode("ascii", "replace")


__all__ = ["Collector", "CollectorSettings", "HostView", "VmView"]
