"""Power driver configuration (per host, in the inventory or the daemon config) and the router
that sends each host's calls to its driver.

    power:
      driver: ipmi          # ipmi | redfish | wol | command
      address: 10.0.0.5     # ipmi: BMC address (port: 623)
      username: admin
      password_file: /etc/rebalancerd/bmc-hv1.pass

    power: {driver: redfish, url: https://10.0.0.5, username: admin, password_file: ...}
    power: {driver: wol, mac: "52:54:00:12:34:56", broadcast: 10.0.0.255, off: [...]}
    power: {driver: command, on: [...], off: [...], status: [...]}

Errors are one line (``PowerConfigError``), naming the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from rebalancerd.adapters.power_command import CommandPower, CommandTarget
from rebalancerd.adapters.power_ipmi import IpmiPower, IpmiTarget
from rebalancerd.adapters.power_redfish import RedfishPower, RedfishTarget
from rebalancerd.adapters.power_wol import WakeOnLan, WolTarget, parse_mac
from rebalancerd.ports import PowerDriver, PowerError, PowerState

_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox"}
_BAD_HOST_CHARS = set(" \t\r\n'\"`$;|&<>\\{}()*!")

Argv = list[Annotated[str, Field(min_length=1, max_length=4096)]]


class PowerConfigError(ValueError):
    """A power configuration that cannot be used; one line."""


def _check_argv(v: list[str]) -> list[str]:
    if not v:
        return v
    if v[0].rsplit("/", 1)[-1] in _SHELLS:
        raise ValueError(f"{v[0]!r}: give the program and its arguments, never a shell")
    if " " in v[0]:
        raise ValueError(f"{v[0]!r} contains a space: give an argument list, not a string")
    return v


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 20.0
    """Deadline of one call to the driver."""


class IpmiSpec(_Spec):
    driver: Literal["ipmi"]
    address: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] = 623
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password_file: Annotated[str, Field(min_length=1)]
    interface: Literal["lanplus", "lan"] = "lanplus"
    ipmitool: str = "ipmitool"
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    attempt_timeout_s: Annotated[int, Field(ge=1, le=60)] = 2

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        if any(c in _BAD_HOST_CHARS for c in v) or v.startswith("-"):
            raise ValueError("address contains a forbidden character")
        return v


class RedfishSpec(_Spec):
    driver: Literal["redfish"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(:\d+)?/?$")]
    username: Annotated[str, Field(min_length=1, max_length=256)]
    password_file: Annotated[str, Field(min_length=1)]
    system: Annotated[str, Field(pattern=r"^(/[A-Za-z0-9._~%-]+)*$")] = ""
    verify_tls: bool = True
    ca_file: str | None = None


class WolSpec(_Spec):
    driver: Literal["wol"]
    mac: str
    broadcast: str = "255.255.255.255"
    port: Annotated[int, Field(ge=1, le=65535)] = 9
    off: Argv = Field(default_factory=list)
    """Optional command that switches the host off (Wake-on-LAN cannot)."""

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        parse_mac(v)
        return v

    @field_validator("off")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        return _check_argv(v)


class CommandSpec(_Spec):
    driver: Literal["command"]
    on: Argv
    off: Argv
    hard_off: Argv = Field(default_factory=list)
    status: Argv = Field(default_factory=list)
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0

    @field_validator("on", "off", "hard_off", "status")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        return _check_argv(v)

    @field_validator("on", "off")
    @classmethod
    def _required(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must not be empty")
        return v


PowerSpec = Annotated[IpmiSpec | RedfishSpec | WolSpec | CommandSpec, Field(discriminator="driver")]
_ADAPTER: TypeAdapter[IpmiSpec | RedfishSpec | WolSpec | CommandSpec] = TypeAdapter(PowerSpec)


def parse_power_spec(host: str, data: Any) -> IpmiSpec | RedfishSpec | WolSpec | CommandSpec:
    """One host's `power:` mapping, validated (PowerConfigError, one line)."""
    if not isinstance(data, dict):
        raise PowerConfigError(f"host {host}: power: must be a mapping with a driver")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(p) for p in err["loc"][1:] if p) or "driver"
            parts.append(f"{loc}: {err['msg']}")
        raise PowerConfigError(f"host {host}: power: {'; '.join(parts)}") from None


def driver_for(host: str, spec: IpmiSpec | RedfishSpec | WolSpec | CommandSpec) -> PowerDriver:
    """The driver of one host, built from its spec."""
    if isinstance(spec, IpmiSpec):
        return IpmiPower(
            {
                host: IpmiTarget(
                    spec.address,
                    spec.username,
                    spec.password_file,
                    port=spec.port,
                    interface=spec.interface,
                    ipmitool=spec.ipmitool,
                    retries=spec.retries,
                    attempt_timeout_s=spec.attempt_timeout_s,
                )
            },
            timeout_s=spec.timeout_s,
        )
    if isinstance(spec, RedfishSpec):
        return RedfishPower(
            {
                host: RedfishTarget(
                    spec.url.rstrip("/"),
                    spec.username,
                    spec.password_file,
                    system=spec.system,
                    verify_tls=spec.verify_tls,
                    ca_file=spec.ca_file,
                )
            },
            timeout_s=spec.timeout_s,
        )
    if isinstance(spec, WolSpec):
        wol = WakeOnLan({host: WolTarget(spec.mac, spec.broadcast, spec.port)})
        if not spec.off:
            return wol
        return WolWithOff(wol, CommandPower({host: CommandTarget(off=tuple(spec.off))}))
    return CommandPower(
        {
            host: CommandTarget(
                on=tuple(spec.on),
                off=tuple(spec.off),
                hard_off=tuple(spec.hard_off),
                status=tuple(spec.status),
            )
        },
        timeout_s=spec.timeout_s,
    )


class WolWithOff:
    """Wake-on-LAN to switch on, a command to switch off."""

    driver = "wol"

    def __init__(self, wol: WakeOnLan, off: CommandPower) -> None:
        self.wol = wol
        self.off = off

    async def power_state(self, host: str) -> PowerState:
        return PowerState.UNKNOWN

    async def power_on(self, host: str) -> None:
        await self.wol.power_on(host)

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        await self.off.power_off(host, hard=hard)


def driver_name(driver: object) -> str:
    """The metric label of a driver ('ipmi', 'redfish', 'wol', 'command', else its class)."""
    return str(getattr(driver, "driver", type(driver).__name__.lower()))


class PowerRouter:
    """One PowerDriver for the fleet: each host's calls go to the driver configured for it."""

    driver = "router"

    def __init__(self, drivers: Mapping[str, PowerDriver]) -> None:
        self.drivers = dict(drivers)

    def hosts(self) -> frozenset[str]:
        return frozenset(self.drivers)

    def driver_of(self, host: str) -> str | None:
        d = self.drivers.get(host)
        return None if d is None else driver_name(d)

    def _get(self, host: str) -> PowerDriver:
        d = self.drivers.get(host)
        if d is None:
            raise PowerError(f"no power driver configured for host {host}")
        return d

    async def power_state(self, host: str) -> PowerState:
        return await self._get(host).power_state(host)

    async def power_on(self, host: str) -> None:
        await self._get(host).power_on(host)

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        await self._get(host).power_off(host, hard=hard)


def build_router(specs: Mapping[str, Any]) -> PowerRouter:
    """A router from host -> raw `power:` mapping (PowerConfigError on the first bad one)."""
    return PowerRouter({h: driver_for(h, parse_power_spec(h, d)) for h, d in specs.items()})


def hook_driver(on: list[str], off: list[str], timeout_s: float = 60.0) -> CommandPower:
    """The policy's `energy.power_on` / `power_off` hooks as a command driver for every host."""
    return CommandPower(
        {}, default=CommandTarget(on=tuple(on), off=tuple(off)), timeout_s=timeout_s
    )
