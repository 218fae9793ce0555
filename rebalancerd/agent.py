"""The per-hypervisor agent: samples host and VM statistics every interval and publishes a
telemetry v1 report (QoS 1) plus a retained online/offline status with a Last Will.

It logs like the daemon (JSON lines, or console on a TTY; ``log_level`` / ``log_format`` in its
config) and reports a lasting problem once when it starts or changes and once when it ends
(``agent_libvirt_unavailable`` ... ``agent_libvirt_reachable_again``), not every interval.

It never crashes on a libvirt hiccup (the report then carries no VMs and ``libvirt_ok: false``,
which the collector treats as "we do not know what runs there": the host turns stale) and it
reconnects to the broker with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import aiomqtt
import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    def __init__(self, config: AgentConfig, notifier: ServiceNotifier | None = None) -> None:
        self.config = config
        self.notifier: ServiceNotifier = notifier if notifier is not None else NullNotifier()
        """systemd: READY=1 once connected, WATCHDOG=1 on every turn of the loop that makes
        progress (a report published, or a broker retry scheduled), STOPPING=1 on exit."""
        h = config.health
        self.host_stats = HostStatsReader(
            HealthThresholds(h.temp_degraded_c, h.memory_full_pressure_pct, h.failing_disks_degrade)
        )
        self.libvirt = LibvirtStatsReader(config.libvirt_uri)
        self.boot = int(time.time() * 1000)
        self.seq = 0
        self.published = 0
        self._libvirt_task: asyncio.Future[list[dict[str, Any]]] | None = None
        self.telemetry_topic = telemetry_topic(config.cluster, config.host)
        self.status_topic = status_topic(config.cluster, config.host)
        self.problems = ProblemLog(log)

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
        interval = self.config.interval_s
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
                            next_at += interval
                            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                            if time.monotonic() - next_at > interval:
                                next_at = time.monotonic()  # fell behind: do not burst
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
                    await asyncio.sleep(delay)
        finally:
            self.notifier.stopping()
            self.libvirt.close()


__all__ = [
    "Agent",
    "AgentConfig",
    "AgentConfigError",
    "MqttConfigError",
    "ProblemLog",
    "load_agent_config",
]
