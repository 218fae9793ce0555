"""IPMI power driver: ``ipmitool -I lanplus`` against each host's BMC.

``chassis power status|on|soft|off``; the password reaches ipmitool through the environment
(``-E``, IPMI_PASSWORD), never on its command line. Every call is bounded (ipmitool's own
retries plus our deadline) and fails with a one-line PowerError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from rebalancerd.adapters.power_common import last_error_line, read_secret, run_bounded
from rebalancerd.ports import PowerError, PowerState

_STATUS = re.compile(r"chassis power is (on|off)", re.IGNORECASE)
_NOISE = ("Unable to Get Channel Cipher Suites",)


@dataclass(frozen=True, slots=True)
class IpmiTarget:
    address: str
    username: str
    password_file: str
    port: int = 623
    interface: str = "lanplus"
    ipmitool: str = "ipmitool"
    retries: int = 1
    """ipmitool's own retries (-R) per request; each waits `attempt_timeout_s` (-N)."""
    attempt_timeout_s: int = 2


class IpmiPower:
    """PowerDriver over ipmitool for the hosts in `targets`."""

    driver = "ipmi"

    def __init__(self, targets: Mapping[str, IpmiTarget], *, timeout_s: float = 20.0) -> None:
        self.targets = dict(targets)
        self.timeout_s = timeout_s

    def _target(self, host: str) -> IpmiTarget:
        t = self.targets.get(host)
        if t is None:
            raise PowerError(f"ipmi: no BMC configured for host {host}")
        return t

    async def _run(self, host: str, *args: str) -> str:
        t = self._target(host)
        password = read_secret(t.password_file)
        argv = [
            t.ipmitool,
            "-I",
            t.interface,
            "-H",
            t.address,
            "-p",
            str(t.port),
            "-U",
            t.username,
            "-E",
            "-N",
            str(t.attempt_timeout_s),
            "-R",
            str(t.retries),
            *args,
        ]
        res = await run_bounded(
            argv, self.timeout_s, env={"IPMI_PASSWORD": password}, what=f"ipmi {host}"
        )
        if res.returncode != 0:
            why = last_error_line(res.stderr, _NOISE)
            raise PowerError(f"ipmi {host} ({t.address}:{t.port}): {' '.join(args)}: {why}")
        return res.stdout

    async def power_state(self, host: str) -> PowerState:
        out = await self._run(host, "chassis", "power", "status")
        m = _STATUS.search(out)
        if m is None:
            raise PowerError(f"ipmi {host}: unexpected status answer {out.strip()[:80]!r}")
        return PowerState.ON if m.group(1).lower() == "on" else PowerState.OFF

    async def power_on(self, host: str) -> None:
        await self._run(host, "chassis", "power", "on")

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        await self._run(host, "chassis", "power", "off" if hard else "soft")
