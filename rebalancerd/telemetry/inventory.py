"""The inventory: the only source of hosts. Telemetry never adds a host or an address.

Embedded in the daemon config (``inventory:`` key) or loaded from its own YAML file::

    hosts:
      - name: hv1
        libvirt_uri: qemu+tls://hv1.example/system
        migration_uri: tcp://10.0.0.1
        cores: 32
        memory_mib: 262144
        speed: 1.0
        tags: [rack-a, ssd]
        cpu_model: Skylake-Server

Pure: pydantic only (``load_inventory`` reads a file given by the operator).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rebalancerd.domain.model import Host, HostState
from rebalancerd.files import InputFileError, read_bounded_text
from rebalancerd.telemetry.schema import NAME_PATTERN

MAX_INVENTORY_BYTES = 64 * 1024 * 1024
MAX_MEMORY_MIB = 1 << 40
"""1 EiB: far above any host, low enough that sums over a fleet stay exact 64-bit integers."""

_URI_SCHEMES = ("qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix", "qemu+libssh2", "test")
_MIGRATION_SCHEMES = ("tcp", "tls", "rdma", "unix")
_BAD_URI_CHARS = set(" \t\r\n'\"`$;|&<>\\{}()*!")


class InventoryError(ValueError):
    """An inventory that cannot be used; one line."""


def _check_uri(value: str, schemes: tuple[str, ...], what: str) -> str:
    scheme, sep, _ = value.partition("://")
    if not sep or scheme not in schemes:
        raise ValueError(f"{what} must start with one of {', '.join(s + '://' for s in schemes)}")
    if any(c in _BAD_URI_CHARS for c in value):
        raise ValueError(f"{what} contains a forbidden character")
    return value


class InventoryHost(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    libvirt_uri: str
    """How the daemon reaches the host's libvirtd (the only address it ever uses for it)."""
    migration_uri: str | None = None
    """Address QEMU migrates to on this host (e.g. ``tcp://10.0.0.1``); None = libvirt's choice."""
    cores: Annotated[int, Field(gt=0, le=100_000)]
    memory_mib: Annotated[int, Field(gt=0, le=MAX_MEMORY_MIB)]
    speed: Annotated[float, Field(gt=0, le=1000)] = 1.0
    tags: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(default_factory=list)
    cpu_model: str = ""
    cpu_features: list[str] = Field(default_factory=list)
    networks: list[str] | None = None
    """libvirt networks / bridges here ("network:NAME", "bridge:NAME"); None = take the agent's
    report (unknown until it reports)."""
    power: dict[str, Any] | None = None
    """How rebalancerd switches this host on and off (driver ipmi, redfish, wol or command; see
    docs/power.md); validated by the daemon when it builds the drivers. None = no driver."""

    @field_validator("libvirt_uri")
    @classmethod
    def _libvirt(cls, v: str) -> str:
        return _check_uri(v, _URI_SCHEMES, "libvirt_uri")

    @field_validator("migration_uri")
    @classmethod
    def _migration(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v, _MIGRATION_SCHEMES, "migration_uri")

    @model_validator(mode="after")
    def _capacity(self) -> InventoryHost:
        if self.cpu_capacity_mc < 1:
            raise ValueError(
                f"host {self.name}: CPU capacity (cores x speed) rounds to 0 millicores"
            )
        return self

    @property
    def cpu_capacity_mc(self) -> int:
        return round(self.cores * 1000 * self.speed)

    def to_host(self, state: HostState = HostState.ACTIVE) -> Host:
        return Host(
            name=self.name,
            cores=self.cores,
            memory_mib=self.memory_mib,
            state=state,
            tags=frozenset(self.tags),
            speed=self.speed,
            cpu_model=self.cpu_model,
            cpu_features=frozenset(self.cpu_features),
            networks=frozenset(self.networks) if self.networks is not None else None,
        )


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: list[InventoryHost] = Field(default_factory=list)
    _by_name: dict[str, InventoryHost] = PrivateAttr(default_factory=dict)

    @field_validator("hosts")
    @classmethod
    def _unique(cls, v: list[InventoryHost]) -> list[InventoryHost]:
        seen: set[str] = set()
        for h in v:
            if h.name in seen:
                raise ValueError(f"host {h.name!r} listed twice")
            seen.add(h.name)
        return v

    def model_post_init(self, context: Any, /) -> None:
        self._by_name = {h.name: h for h in self.hosts}

    def get(self, name: str) -> InventoryHost | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> InventoryHost:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"host {name!r} is not in the inventory") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[InventoryHost]:  # type: ignore[override]
        return iter(self.hosts)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]


def inventory_from_mapping(doc: Any) -> Inventory:
    """Validate a parsed document (``{"hosts": [...]}`` or a bare list of hosts)."""
    if isinstance(doc, list):
        doc = {"hosts": doc}
    try:
        return Inventory.model_validate(doc)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InventoryError(f"inventory: {loc}: {err['msg']}") from None


def load_inventory(path: str | Path) -> Inventory:
    """Read an inventory YAML file (at most MAX_INVENTORY_BYTES are read, whatever it is)."""
    p = Path(path)
    try:
        text = read_bounded_text(p, MAX_INVENTORY_BYTES)
    except InputFileError as e:
        raise InventoryError(f"inventory {e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InventoryError(f"inventory {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise InventoryError(f"inventory {p}: YAML nested too deeply") from None
    return inventory_from_mapping(doc)


__all__ = [
    "Inventory",
    "InventoryError",
    "InventoryHost",
    "inventory_from_mapping",
    "load_inventory",
]
