"""Wake-on-LAN: a magic packet (6 x 0xFF, then the MAC 16 times) over UDP broadcast.

Power on only: the state is UNKNOWN (a NIC says nothing back) and switching off needs another
driver (the command hook) or is refused.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from rebalancerd.ports import PowerError, PowerState

_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-]?)[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


def parse_mac(mac: str) -> bytes:
    """The 6 bytes of a MAC written aa:bb:cc:dd:ee:ff, aa-bb-... or aabbccddeeff."""
    if not _MAC.match(mac):
        raise ValueError(f"{mac[:40]!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return bytes.fromhex(re.sub("[:-]", "", mac))


def magic_packet(mac: str) -> bytes:
    return b"\xff" * 6 + parse_mac(mac) * 16


@dataclass(frozen=True, slots=True)
class WolTarget:
    mac: str
    broadcast: str = "255.255.255.255"
    port: int = 9


class WakeOnLan:
    """PowerDriver that can only wake hosts."""

    driver = "wol"

    def __init__(self, targets: Mapping[str, WolTarget], *, timeout_s: float = 5.0) -> None:
        for t in targets.values():
            parse_mac(t.mac)
        self.targets = dict(targets)
        self.timeout_s = timeout_s

    async def power_state(self, host: str) -> PowerState:
        return PowerState.UNKNOWN

    def _send(self, t: WolTarget) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.settimeout(self.timeout_s)
            s.sendto(magic_packet(t.mac), (t.broadcast, t.port))

    async def power_on(self, host: str) -> None:
        t = self.targets.get(host)
        if t is None:
            raise PowerError(f"wol: no MAC configured for host {host}")
        try:
            await asyncio.wait_for(asyncio.to_thread(self._send, t), self.timeout_s)
        except TimeoutError:
            raise PowerError(f"wol {host}: send did not finish in {self.timeout_s:g}s") from None
        except OSError as e:
            raise PowerError(f"wol {host} ({t.broadcast}:{t.port}): {e.strerror or e}") from None

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        raise PowerError(f"wol {host}: Wake-on-LAN cannot switch a host off (add an off command)")
