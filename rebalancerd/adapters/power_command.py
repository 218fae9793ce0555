"""Command hook power driver: an operator's programs, as argument lists (never a shell).

``{host}`` in any argument is replaced by the host name. A command succeeds when it exits 0
within the timeout. The status command's stdout is parsed: the first word ``on``/``off``
(case-insensitive; ``power is on`` works too); exit 0 with anything else is a bad answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rebalancerd.adapters.power_common import last_error_line, one_line, run_bounded
from rebalancerd.ports import PowerError, PowerState

_WORD = re.compile(r"\b(on|off)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CommandTarget:
    on: tuple[str, ...] = ()
    off: tuple[str, ...] = ()
    hard_off: tuple[str, ...] = ()
    """Used for off(hard=True); empty = the off command."""
    status: tuple[str, ...] = ()
    """Empty = the state is UNKNOWN."""


def expand(argv: Sequence[str], host: str) -> list[str]:
    return [a.replace("{host}", host) for a in argv]


class CommandPower:
    """PowerDriver running per-host (or shared) commands."""

    driver = "command"

    def __init__(
        self,
        targets: Mapping[str, CommandTarget],
        *,
        default: CommandTarget | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.targets = dict(targets)
        self.default = default
        self.timeout_s = timeout_s

    def _target(self, host: str) -> CommandTarget:
        t = self.targets.get(host, self.default)
        if t is None:
            raise PowerError(f"command: no power commands for host {host}")
        return t

    async def _run(self, host: str, what: str, argv: Sequence[str]) -> str:
        if not argv:
            raise PowerError(f"command {host}: no {what} command configured")
        res = await run_bounded(expand(argv, host), self.timeout_s, what=f"command {host} {what}")
        if res.returncode != 0:
            why = last_error_line(res.stderr) if res.stderr.strip() else one_line(res.stdout)
            raise PowerError(f"command {host} {what}: exit {res.returncode}: {why}")
        return res.stdout

    async def power_state(self, host: str) -> PowerState:
        t = self._target(host)
        if not t.status:
            return PowerState.UNKNOWN
        out = await self._run(host, "status", t.status)
        first = out.strip().splitlines()[0] if out.strip() else ""
        m = _WORD.search(first)
        if m is None:
            raise PowerError(f"command {host} status: unexpected answer {first[:80]!r}")
        return PowerState.ON if m.group(1).lower() == "on" else PowerState.OFF

    async def power_on(self, host: str) -> None:
        await self._run(host, "on", self._target(host).on)

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        t = self._target(host)
        await self._run(
            host,
            "hard off" if hard and t.hard_off else "off",
            t.hard_off if hard and t.hard_off else t.off,
        )
