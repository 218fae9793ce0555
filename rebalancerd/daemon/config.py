"""Daemon configuration (``rebalancerd run --config FILE``): a YAML file, validated by pydantic.

Every field has a documented default; see ``deploy/config/rebalancerd.example.yaml``. Relative
paths are resolved against the directory of the config file.

On SIGHUP the daemon re-reads this file and applies what can change live (``RELOADABLE``: log
level, intervals, planner time limit, shutdown deadline, control group); a change to any other
field is reported as needing a restart and otherwise ignored. Policies are always re-read.
"""

from __future__ import annotations

import grp
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rebalancerd.adapters.mqtt import BrokerSettings
from rebalancerd.config_marks import Positions, validation_lines, yaml_error_line
from rebalancerd.execution import adaptive
from rebalancerd.files import (
    InputFileError,
    check_regular_file,
    read_bounded,
    read_bounded_text,
)
from rebalancerd.planner.seed import MAX_SEED
from rebalancerd.telemetry.collector import CollectorSettings

DEFAULT_METRICS_ADDRESS = "127.0.0.1:9477"
DEFAULT_CONTROL_SOCKET = "/run/rebalancerd/control.sock"
DEFAULT_STATE_DIR = "/var/lib/rebalancerd"
DEFAULT_POLICY_DIR = "/etc/rebalancerd/policies"
MAX_CONFIG_BYTES = 1024 * 1024


class ConfigError(Exception):
    """A daemon config that cannot be used: one line per problem (``file:line:col: ...`` when
    the place is known); ``problems`` holds the lines."""

    def __init__(self, *problems: str) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=True)
    """Strict types, as in policies: `dry_run: 1` or `plan_s: true` are refused, not coerced."""


class MetricsConfig(_Strict):
    enabled: bool = True
    address: str = DEFAULT_METRICS_ADDRESS
    """host:port of /metrics; loopback by default. Put a reverse proxy in front to expose it."""

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        from rebalancerd.adapters.metrics import parse_address

        parse_address(v)
        return v


class ControlConfig(_Strict):
    socket: str = DEFAULT_CONTROL_SOCKET
    group: str | None = None
    """Members of this group may use the control API besides root (None = root only)."""
    mode: Annotated[int, Field(ge=0, le=0o777)] = 0o660
    """Socket file mode; write it as an octal string ("0660") in YAML."""

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, v: object) -> object:
        if isinstance(v, str):
            try:
                return int(v.removeprefix("0o"), 8)
            except ValueError:
                raise ValueError(f"mode {v!r}: expected an octal number like '0660'") from None
        return v


class Intervals(_Strict):
    plan_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    """Planning cycle period (earlier on a hotspot or a drain request)."""
    stale_after_s: Annotated[float, Field(gt=0, le=86400)] = 30.0
    """A host without a telemetry report for this long is stale (no moves to or from it)."""
    max_data_age_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    """Planning never starts on data older than this."""
    watchdog_grace_cycles: Annotated[float, Field(ge=1, le=100)] = 3.0
    """The loop is unhealthy (no WATCHDOG=1) once it missed this many cycles."""


class PlannerConfig(_Strict):
    time_limit_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    seed: Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)] = 0
    """Solver seed, 0..2**31-1 (the solver's seed is 32-bit)."""


_COLLECTOR = CollectorSettings()
"""The collector's defaults (its dataclass has slots: no class-level defaults to read)."""


class TelemetryConfig(_Strict):
    """How the collector treats agent reports (telemetry/collector.py)."""

    history_len: Annotated[int, Field(ge=1, le=100_000)] = _COLLECTOR.history_len
    """Samples of CPU use kept per VM (for the policies' prediction percentile and window)."""
    ewma_alpha: Annotated[float, Field(gt=0, le=1)] = _COLLECTOR.ewma_alpha
    """Smoothing of CPU use (1 = no smoothing)."""
    rate_per_s: Annotated[float, Field(gt=0, le=10_000)] = _COLLECTOR.rate_per_s
    """Sustained messages per second accepted from one host; more are rejected and counted."""
    rate_burst: Annotated[float, Field(ge=1, le=100_000)] = _COLLECTOR.rate_burst
    max_vms_per_host: Annotated[int, Field(ge=1, le=1_000_000)] = _COLLECTOR.max_vms_per_host
    max_payload_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = (
        _COLLECTOR.max_payload_bytes
    )


class AdaptiveConfig(_Strict):
    """Adaptive concurrency (execution/adaptive.py): the policy's concurrency limits are
    ceilings; the executor only runs as many moves at once as it has seen keep downtime within
    the limits. What it learned is kept in the journal across restarts."""

    slow_start: bool = True
    """Start a fresh cluster (nothing learned yet) at `start_cap` moves at once; false: at the
    policy's max_concurrent (the first overshoot is what it learns from)."""
    start_cap: Annotated[int, Field(ge=1, le=1000)] = adaptive.START_CAP
    """Moves at once before anything was learned (1 is the strictest)."""
    trigger_fraction: Annotated[float, Field(gt=0, le=1)] = adaptive.TRIGGER_FRACTION
    """A move whose downtime passes this fraction of its limit cuts the cap; growth needs the
    predicted downtime at the next level to stay under it."""
    history_s: Annotated[float, Field(gt=0, le=30 * 86400)] = adaptive.HISTORY_S
    """How long a measured downtime counts (an old overshoot must not block a level forever)."""


class PowerConfig(_Strict):
    """Host power drivers given here instead of in the inventory (docs/power.md)."""

    hosts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """host name -> its `power:` mapping (driver: ipmi | redfish | wol | command, ...); an
    inventory host's own `power:` wins."""


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class SimConfig(_Strict):
    """Run against the simulated cluster instead of libvirt + MQTT (demos and fast tests)."""

    snapshot: str | None = None
    """Snapshot file of the simulated cluster (None = a small generated cluster)."""
    hosts: Annotated[int, Field(ge=1, le=100_000)] = 4
    vms_per_host: Annotated[int, Field(ge=0, le=1000)] = 4
    speed: Annotated[float, Field(gt=0, le=1_000_000)] = 1.0
    """Simulated seconds per real second."""
    seed: int = 0


class DaemonConfig(_Strict):
    inventory: str | list[Any] | dict[str, Any] | None = None
    """Inventory: a YAML file path, or the hosts inline (see telemetry/inventory.py). Required
    unless simulate is true. The daemon only ever contacts the addresses listed here."""
    cluster: str = "default"
    """Cluster name in the telemetry topics (rebalancer/v1/<cluster>/hosts/<host>/...)."""
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    telemetry_max_clock_skew_s: Annotated[float, Field(gt=0, le=86400)] = 30.0
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    state_dir: str = DEFAULT_STATE_DIR
    """Holds the migration journal; the daemon refuses to act when it cannot write it."""
    policy_dir: str = DEFAULT_POLICY_DIR
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    intervals: Intervals = Field(default_factory=Intervals)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    power: PowerConfig = Field(default_factory=PowerConfig)
    shutdown_deadline_s: Annotated[float, Field(ge=0, le=86400)] = 120.0
    """On SIGTERM: how long in-flight migrations may take to finish before they are aborted
    (an aborted live migration leaves the VM running on its source)."""
    dry_run: bool = False
    """Plan and log, never migrate (overrides every policy)."""
    simulate: bool = False
    sim: SimConfig = Field(default_factory=SimConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("cluster")
    @classmethod
    def _topic_segment(cls, v: str) -> str:
        why = topic_segment_problem(v)
        if why is not None:
            raise ValueError(why)
        return v

    @field_validator("state_dir", "policy_dir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        return v


def topic_segment_problem(name: str) -> str | None:
    """Why `name` cannot be one level of an MQTT topic (the cluster in
    ``rebalancer/v1/<cluster>/hosts/+/telemetry``), or None."""
    if not name:
        return "must not be empty (it is a level of the telemetry topics)"
    bad = sorted({c for c in name if c in "/#+" or ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        return (
            f"{name[:64]!r}: must not contain {', '.join(repr(c) for c in bad)} (MQTT topic level)"
        )
    if len(name.encode()) > 200:
        return "longer than 200 bytes"
    return None


MAX_SECRET_FILE_BYTES = 64 * 1024


def _path(p: str | None) -> Path | None:
    return None if p is None or p.startswith("@") else Path(p)


def _regular_file_problem(what: str, path: Path | None, *, read: bool = True) -> str | None:
    """Why `path` is not a readable regular file (of at most MAX_SECRET_FILE_BYTES if `read`),
    or None. Never blocks: a FIFO would hang the loader that reads it next."""
    if path is None:
        return None
    try:
        if read:
            read_bounded(path, MAX_SECRET_FILE_BYTES, regular_only=True)
        else:
            check_regular_file(path)
    except InputFileError as e:
        return f"{what}: {e}"
    return None


def preflight_problems(cfg: DaemonConfig) -> list[str]:
    """Every problem the daemon would hit at start (or at its first connection) that can be seen
    without starting it: what ``run --check`` reports and ``Daemon.start`` refuses, all of them,
    one line each. (The inventory is checked by the caller: ``wiring.read_inventory``.)"""
    if cfg.simulate:
        why = _regular_file_problem("sim.snapshot", _path(cfg.sim.snapshot), read=False)
        return [why] if why else []
    out: list[str] = []
    if isinstance(cfg.inventory, str):
        why = _regular_file_problem("inventory", _path(cfg.inventory), read=False)
        out += [why] if why else []
    b = cfg.broker
    if b.password_file is not None:
        why = _regular_file_problem("broker.password_file", b.password_file)
        if why is None:
            text = read_bounded_text(b.password_file, MAX_SECRET_FILE_BYTES, regular_only=True)
            if not text.splitlines() or not text.splitlines()[0]:
                why = f"broker.password_file: {b.password_file}: first line is empty"
        if why is not None:
            out.append(why)
    files = {"broker.ca_file": b.ca_file, "broker.cert_file": b.cert_file}
    files["broker.key_file"] = b.key_file
    file_problems = [p for k, f in files.items() if (p := _regular_file_problem(k, f))]
    out += file_problems
    if b.key_file is not None and b.cert_file is None:
        out.append("broker.key_file: given without cert_file")
    elif b.tls and not file_problems:
        out += _tls_problems(b.ca_file, b.cert_file, b.key_file)
    return out


def _tls_problems(ca: Path | None, cert: Path | None, key: Path | None) -> list[str]:
    """Load the TLS files the way the MQTT client will (a bad certificate failed every connect)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    out: list[str] = []
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as e:
            out.append(f"broker.ca_file: {ca}: not usable as CA certificates ({_ssl_reason(e)})")
    if cert is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
        except (ssl.SSLError, OSError) as e:
            out.append(f"broker.cert_file: {cert}: certificate/key not usable ({_ssl_reason(e)})")
    return out


def _ssl_reason(e: Exception) -> str:
    return str(getattr(e, "reason", None) or getattr(e, "strerror", None) or e)


RELOADABLE: frozenset[str] = frozenset(
    {"intervals", "planner", "shutdown_deadline_s", "log", "control.group"}
)


def _resolve(base: Path, p: str | None) -> str | None:
    if p is None or p.startswith("@"):
        return p
    path = Path(p)
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_path(base: Path, p: Path | None) -> Path | None:
    if p is None or p.is_absolute():
        return p
    return (base / p).resolve()


def parse(
    data: Any, source: str = "<config>", base: Path | None = None, pos: Positions | None = None
) -> DaemonConfig:
    """Validate a config document; every problem is reported at once (ConfigError)."""
    where = pos or Positions("")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1:1: top level must be a mapping")
    problems: list[str] = []
    try:
        cfg = DaemonConfig.model_validate(data)
    except ValidationError as e:
        problems = validation_lines(e, source, where)
        cfg = None
    # the checks below see the raw values too, so they join the schema's problems
    simulate = data.get("simulate") is True if cfg is None else cfg.simulate
    if not simulate and not data.get("inventory"):
        problems.append(f"{source}:1:1: inventory: required unless simulate: true")
    control = data.get("control")
    group = control.get("group") if isinstance(control, dict) else None
    if isinstance(group, str):
        try:
            grp.getgrnam(group)
        except KeyError:
            line, col = where.at(("control", "group"))
            problems.append(f"{source}:{line}:{col}: control.group: no such group {group!r}")
    if problems or cfg is None:
        raise ConfigError(*problems)
    if base is None:
        return cfg
    b = cfg.broker
    broker = b.model_copy(
        update={
            k: _resolve_path(base, getattr(b, k))
            for k in ("ca_file", "cert_file", "key_file", "password_file")
        }
    )
    sim = cfg.sim.model_copy(update={"snapshot": _resolve(base, cfg.sim.snapshot)})
    return cfg.model_copy(
        update={
            "inventory": _resolve(base, cfg.inventory)
            if isinstance(cfg.inventory, str)
            else cfg.inventory,
            "state_dir": _resolve(base, cfg.state_dir),
            "policy_dir": _resolve(base, cfg.policy_dir),
            "control": cfg.control.model_copy(
                update={"socket": _resolve(base, cfg.control.socket)}
            ),
            "broker": broker,
            "sim": sim,
        }
    )


def load_config(path: str | Path) -> DaemonConfig:
    """The daemon config read from a YAML file (raises ConfigError, one line)."""
    p = Path(path)
    try:
        # regular files only, never more than the cap: /dev/zero or a FIFO must not hang `run`
        text = read_bounded_text(p, MAX_CONFIG_BYTES, regular_only=True)
    except InputFileError as e:
        raise ConfigError(str(e)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(str(p), e)) from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply") from None
    try:
        return parse(data, str(p), p.parent.resolve(), Positions(text))
    except RecursionError:
        raise ConfigError(f"{p}: config nested too deeply") from None


def _flatten(cfg: DaemonConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", cfg.model_dump())
    return out


def diff(old: DaemonConfig, new: DaemonConfig) -> tuple[list[str], list[str]]:
    """Changed fields (dotted) between two configs: (reloadable, needing a restart)."""
    a, b = _flatten(old), _flatten(new)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    live: list[str] = []
    restart: list[str] = []
    for k in changed:
        if any(k == r or k.startswith(r + ".") for r in RELOADABLE):
            live.append(k)
        else:
            restart.append(k)
    return live, restart
