"""The per-hypervisor agent: samples host and VM statistics every interval and publishes a
telemetry v1 report (QoS 1) plus a retained online/offline status with a Last Will.

It logs like the daemon (JSON lines, or console on a TTY; ``log_level`` / ``log_format`` in its
config) and reports a lasting problem once when it starts or changes and once when it ends
(``agent_libvirt_unavailable`` ... ``agent_libvirt_reachable_again``), not every interval.

SIGHUP (``systemctl reload``) re-reads the config file: interval, log level/format, health
thresholds and dirty-rate settings apply at once; a changed host, cluster, broker or libvirt URI
reconnects. A config that does not load keeps the running one (``agent_config_reload_failed``
with a one-line error).

It never crashes on a libvirt hiccup (the report then carries no VMs and ``libvirt_ok: false``,
which the collector treats as "we do not know what runs there": the host turns stale) and it
reconnects to the broker with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import aiomqtt
import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rebalancerd.adapters.dirty_rate import MODES, DirtyRateSettings
from rebalancerd.adapters.host_stats import HealthThresholds, HostStatsReader
from rebalancerd.adapters.libvirt_stats import LibvirtStatsReader, LibvirtUnavailable
from rebalancerd.adapters.mqtt import Backoff, BrokerSettings, MqttConfigError, Publisher
from rebalancerd.adapters.systemd import NullNotifier
from rebalancerd.config_marks import Positions, validation_lines, yaml_error_line
from rebalancerd.files import InputFileError, read_bounded_text
from rebalancerd.ports import ServiceNotifier
from rebalancerd.telemetry.schema import (
    NAME_PATTERN,
    SCHEMA_VERSION,
    status_topic,
    telemetry_topic,
)

log = structlog.get_logger("rebalancerd.agent")


MAX_AGENT_CONFIG_BYTES = 1024 * 1024


class AgentConfigError(ValueError):
    """An agent config that cannot be used: one line per problem, ``file:line:col: ...``."""


class HealthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    temp_degraded_c: float = 90.0
    memory_full_pressure_pct: float = 25.0
    failing_disks_degrade: bool = True


class DirtyRateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = True
    """Ask QEMU to measure guests' dirty rate (needs a read-write libvirt connection)."""
    per_interval: Annotated[int, Field(ge=0, le=1000)] = 2
    calc_seconds: Annotated[int, Field(ge=1, le=60)] = 1
    max_age_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    calc_mode: Literal["page-sampling", "dirty-bitmap", "dirty-ring"] = "page-sampling"

    def settings(self) -> DirtyRateSettings:
        assert self.calc_mode in MODES
        return DirtyRateSettings(
            self.enabled, self.per_interval, self.calc_seconds, self.max_age_s, self.calc_mode
        )


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    host: Annotated[str, Field(pattern=NAME_PATTERN)]
    """This hypervisor's name, exactly as in the daemon's inventory."""
    cluster: Annotated[str, Field(pattern=NAME_PATTERN)] = "default"
    interval_s: Annotated[float, Field(ge=0.05, le=3600)] = 10.0
    libvirt_uri: str = "qemu:///system"
    libvirt_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    health: HealthConfig = Field(default_factory=HealthConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    """auto: JSON lines (journald) unless stderr/stdout is a terminal, like the daemon."""
    dirty_rate: DirtyRateConfig = Field(default_factory=DirtyRateConfig)
    shared_storage_paths: Annotated[list[str], Field(max_length=256)] = Field(default_factory=list)
    """Disk paths (prefixes) on shared storage (NFS, cluster FS): not copied by a migration."""
    shared_storage_pools: Annotated[list[str], Field(max_length=256)] = Field(default_factory=list)
    """libvirt storage pools on shared storage (``<disk type='volume'>``)."""


RECONNECT_FIELDS = (
    "host",
    "cluster",
    "broker",
    "libvirt_uri",
    "shared_storage_paths",
    "shared_storage_pools",
)
"""Config fields whose change makes a reloading agent reconnect (and reopen libvirt)."""


class _Reconnect(Exception):
    """A reloaded config needs a new broker session."""


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent config (at most MAX_AGENT_CONFIG_BYTES are read)."""
    p = Path(path)
    try:
        text = read_bounded_text(p, MAX_AGENT_CONFIG_BYTES)
        doc = yaml.safe_load(text)
    except InputFileError as e:
        raise AgentConfigError(f"agent config {e}") from None
    except yaml.YAMLError as e:
        raise AgentConfigError(f"agent config {yaml_error_line(str(p), e)}") from None
    except RecursionError:
        raise AgentConfigError(f"agent config {p}: YAML nested too deeply") from None
    try:
        return AgentConfig.model_validate(doc)
    except ValidationError as e:
        lines = validation_lines(e, str(p), Positions(text))
        raise AgentConfigError("\n".join(f"agent config {ln}" for ln in lines)) from None


class ProblemLog:
    """A lasting problem logged once when it starts or changes, and once when it ends.

    ``problem(key, event, detail)`` warns only when ``key``'s (event, detail) differs from the
    last one; ``resolved(key, event)`` logs ``event`` at info, with how many times the problem
    was seen, if ``key`` had a problem."""

    def __init__(self, logger: Any) -> None:
        self.log = logger
        self._active: dict[str, tuple[str, str]] = {}
        self._seen: dict[str, int] = {}

    def problem(self, key: str, event: str, detail: str, **fields: Any) -> None:
        self._seen[key] = self._seen.get(key, 0) + 1
        if self._active.get(key) == (event, detail):
            return
        self._active[key] = (event, detail)
        self.log.warning(event, error=detail, **fields)

    def resolved(self, key: str, event: str, **fields: Any) -> None:
        if self._active.pop(key, None) is not None:
            self.log.info(event, failures=self._seen.pop(key, 0), **fields)

    def active(self, key: str) -> bool:
        return key in self._active


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        notifier: ServiceNotifier | None = None,
        *,
        config_path: str | Path | None = None,
        configure_logging: Callable[[AgentConfig], None] | None = None,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        """Re-read on SIGHUP (None: SIGHUP is ignored with a warning)."""
        self.configure_logging = configure_logging
        self.reloads = 0
        self._hup: asyncio.Event | None = None
        self.notifier: ServiceNotifier = notifier if notifier is not None else NullNotifier()
        """systemd: READY=1 once connected, WATCHDOG=1 on every turn of the loop that makes
        progress (a report published, or a broker retry scheduled), STOPPING=1 on exit."""
        h = config.health
        self.host_stats = HostStatsReader(
            HealthThresholds(h.temp_degraded_c, h.memory_full_pressure_pct, h.failing_disks_degrade)
        )
        self.libvirt = self._reader(config)
        self.boot = int(time.time() * 1000)
        self.seq = 0
        self.published = 0
        self._libvirt_task: asyncio.Future[list[dict[str, Any]]] | None = None
        self.telemetry_topic = telemetry_topic(config.cluster, config.host)
        self.status_topic = status_topic(config.cluster, config.host)
        self.problems = ProblemLog(log)

    @staticmethod
    def _reader(config: AgentConfig) -> LibvirtStatsReader:
        return LibvirtStatsReader(
            config.libvirt_uri,
            config.dirty_rate.settings(),
            config.shared_storage_paths,
            config.shared_storage_pools,
        )

    def request_reload(self) -> None:
        """SIGHUP handler: reload at the next turn of the loop (wakes its sleep)."""
        if self._hup is not None:
            self._hup.set()

    def reload(self) -> bool:
        """Re-read the config file; apply it, or keep the running one. True if it needs a new
        broker session (host, cluster, broker or libvirt changed)."""
        if self.config_path is None:
            log.warning("agent_config_reload_failed", error="no config file to reload")
            return False
        try:
            new = load_agent_config(self.config_path)
            if self.configure_logging is not None:
                self.configure_logging(new)
        except (AgentConfigError, ValueError) as e:
            log.error("agent_config_reload_failed", error=str(e).splitlines()[0][:300])
            return False
        old = self.config
        changed = [k for k in AgentConfig.model_fields if getattr(old, k) != getattr(new, k)]
        self.config = new
        self.reloads += 1
        h = new.health
        self.host_stats.thresholds = HealthThresholds(
            h.temp_degraded_c, h.memory_full_pressure_pct, h.failing_disks_degrade
        )
        self.libvirt.dirty.settings = new.dirty_rate.settings()
        reconnect = any(k in RECONNECT_FIELDS for k in changed)
        log.info("agent_config_reloaded", changed=changed, reconnect=reconnect)
        if reconnect:
            self.telemetry_topic = telemetry_topic(new.cluster, new.host)
            self.status_topic = status_topic(new.cluster, new.host)
            if self._libvirt_task is None or self._libvirt_task.done():
                self.libvirt.close()
                self.libvirt = self._reader(new)
        return reconnect

    async def _sleep_until(self, deadline: float) -> None:
        delay = max(0.0, deadline - time.monotonic())
        if self._hup is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hup.wait(), delay)

    def _take_reload(self) -> None:
        if self._hup is not None and self._hup.is_set():
            self._hup.clear()
            if self.reload():
                raise _Reconnect

    async def _read_vms(self) -> list[dict[str, Any]] | None:
        """VM entries, or None when libvirt cannot be read (error, or slower than the timeout:
        the slow call keeps running in its thread and is not started twice)."""
        if self._libvirt_task is None or self._libvirt_task.done():
            self._libvirt_task = asyncio.ensure_future(asyncio.to_thread(self.libvirt.read))
        uri = self.config.libvirt_uri
        try:
            vms = await asyncio.wait_for(
                asyncio.shield(self._libvirt_task), self.config.libvirt_timeout_s
            )
        except (LibvirtUnavailable, TimeoutError) as e:
            detail = str(e) or f"no answer within {self.config.libvirt_timeout_s:g} s"
            self.problems.problem("libvirt", "agent_libvirt_unavailable", detail, uri=uri)
            return None
        except Exception as e:  # any libvirt-python surprise is a hiccup, not a crash
            self.problems.problem("libvirt", "agent_libvirt_error", f"{type(e).__name__}: {e}")
            return None
        self.problems.resolved("libvirt", "agent_libvirt_reachable_again", uri=uri)
        return vms

    async def sample(self) -> dict[str, Any]:
        """One report (without seq); never raises for a libvirt or host-stats problem."""
        vms = await self._read_vms()
        try:
            host_stats, health = self.host_stats.read()
        except Exception as e:  # psutil surprises must not stop telemetry
            self.problems.problem(
                "host_stats", "agent_host_stats_error", f"{type(e).__name__}: {e}"
            )
            host_stats = {"cores": 1, "cpu_pct": 0.0, "mem_total_mib": 1, "mem_available_mib": 0}
            health = {"degraded": False, "reasons": []}
        else:
            self.problems.resolved("host_stats", "agent_host_stats_readable_again")
        facts = getattr(self.libvirt, "host", None)  # a reader may not know the host facts
        if facts is not None and vms is not None:
            host_stats["cpu_model"] = facts.cpu_model
            host_stats["cpu_features"] = list(facts.cpu_features)
            host_stats["networks"] = list(facts.networks) if facts.networks is not None else None
        if self.libvirt.skipped_names:
            health["reasons"].append(
                f"{self.libvirt.skipped_names} domain(s) with unsupported names not reported"
            )
        return {
            "v": SCHEMA_VERSION,
            "kind": "telemetry",
            "cluster": self.config.cluster,
            "host": self.config.host,
            "boot": self.boot,
            "ts": time.time(),
            "interval_s": self.config.interval_s,
            "libvirt_ok": vms is not None,
            "host_stats": host_stats,
            "health": health,
            "vms": vms or [],
        }

    def encode(self, report: dict[str, Any]) -> bytes:
        self.seq += 1
        report["seq"] = self.seq
        return json.dumps(report, separators=(",", ":"), allow_nan=False).encode()

    async def run(self, *, max_reports: int | None = None) -> None:
        """Publish until cancelled (or after ``max_reports``)."""
        backoff = Backoff(0.5, 30.0)
        loop = asyncio.get_running_loop()
        self._hup = asyncio.Event()
        hup_installed = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            hup_installed = True
        try:
            while max_reports is None or self.published < max_reports:
                try:
                    async with Publisher(
                        self.config.broker, self.status_topic, self.config.host
                    ) as pub:
                        self.problems.resolved(
                            "broker", "agent_broker_reachable_again", broker=self.config.broker.url
                        )
                        log.info(
                            "agent_connected", broker=self.config.broker.url, host=self.config.host
                        )
                        backoff.reset()
                        self.notifier.ready()
                        self.notifier.status(f"publishing to {self.config.broker.url}")
                        next_at = time.monotonic()
                        while max_reports is None or self.published < max_reports:
                            report = await self.sample()
                            await pub.publish(self.telemetry_topic, self.encode(report))
                            self.published += 1
                            self.notifier.watchdog()
                            next_at += self.config.interval_s
                            await self._sleep_until(next_at)
                            self._take_reload()
                            if time.monotonic() - next_at > self.config.interval_s:
                                next_at = time.monotonic()  # fell behind: do not burst
                except _Reconnect:
                    log.info("agent_reconnecting", broker=self.config.broker.url)
                    continue
                except aiomqtt.MqttError as e:
                    delay = backoff.next()
                    self.problems.problem(
                        "broker",
                        "agent_broker_unavailable",
                        str(e),
                        broker=self.config.broker.url,
                        retry_in_s=round(delay, 2),
                    )
                    log.debug("agent_broker_retry", retry_in_s=round(delay, 2))
                    self.notifier.status(f"broker unavailable, retrying in {delay:.0f}s")
                    self.notifier.watchdog()
                    await self._sleep_until(time.monotonic() + delay)
                    with contextlib.suppress(_Reconnect):
                        self._take_reload()
        finally:
            if hup_installed:
                loop.remove_signal_handler(signal.SIGHUP)
            self.notifier.stopping()
            self.libvirt.close()


__all__ = [
    "Agent",
    "AgentConfig",
    "AgentConfigError",
    "DirtyRateConfig",
    "MqttConfigError",
    "ProblemLog",
    "load_agent_config",
]
