"""The daemon config's ``coordination:`` section.

``backend: none`` (the default) is today's single instance with its SQLite journal. ``backend:
etcd`` runs leader election per cluster shard on etcd v3: see docs/ha.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rebalancerd.telemetry.schema import NAME_PATTERN

_ENDPOINT = r"^[A-Za-z0-9.\-\[\]:]{1,253}:[0-9]{1,5}$"


class EtcdTls(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> EtcdTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate)")
        return self


class CoordinationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    backend: Literal["none", "etcd"] = "none"
    endpoints: list[Annotated[str, Field(pattern=_ENDPOINT)]] = Field(
        default_factory=lambda: ["127.0.0.1:2379"], min_length=1, max_length=16
    )
    """etcd client endpoints, host:port."""
    member: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    """This daemon's name among its peers (default: the machine's host name)."""
    clusters: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, max_length=10_000
    )
    """The clusters the peers share out; empty = the daemon's own ``cluster``."""
    prefix: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]{0,200}$")] = "/rebalancerd"
    lease_ttl_s: Annotated[int, Field(ge=2, le=300)] = 5
    """Leader lease. A dead leader is replaced after about this long."""
    safety_margin_s: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    """The leader steps down this long before its lease could expire, on its own clock."""
    poll_s: Annotated[float, Field(ge=0.05, le=60)] = 0.5
    """How often a standby looks for a free leadership and members re-read the member list."""
    call_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    tls: EtcdTls | None = None
    username: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _margin(self) -> CoordinationSettings:
        if self.safety_margin_s >= self.lease_ttl_s / 2:
            raise ValueError("safety_margin_s must be less than half of lease_ttl_s")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        return self


__all__ = ["CoordinationSettings", "EtcdTls"]
