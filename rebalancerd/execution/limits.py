"""Running totals the pre-checks read in O(1): the moves running now (overall, per source, per
target, per host touched) and, per host, the VMs there plus those on their way there with their
summed load. Kept up to date as moves start and end instead of scanning the placement; the
executor and the replay both drive them, so their limits are counted the same way. Pure."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunningMove:
    vm: str
    source: str
    target: str


class RunningMoves:
    """The moves running now, counted overall, per source, per target and per host touched."""

    def __init__(self) -> None:
        self._moves: dict[Hashable, RunningMove] = {}
        self._from: dict[str, int] = {}
        self._to: dict[str, int] = {}
        self._vms: dict[str, int] = {}

    def start(self, key: Hashable, vm: str, source: str, target: str) -> None:
        self._moves[key] = RunningMove(vm, source, target)
        self._from[source] = self._from.get(source, 0) + 1
        self._to[target] = self._to.get(target, 0) + 1
        self._vms[vm] = self._vms.get(vm, 0) + 1

    def end(self, key: Hashable) -> RunningMove | None:
        mv = self._moves.pop(key, None)
        if mv is not None:
            self._from[mv.source] -= 1
            self._to[mv.target] -= 1
            self._vms[mv.vm] -= 1
        return mv

    def __len__(self) -> int:
        return len(self._moves)

    def moves(self) -> Iterable[RunningMove]:
        return self._moves.values()

    def from_host(self, host: str) -> int:
        return self._from.get(host, 0)

    def to_host(self, host: str) -> int:
        return self._to.get(host, 0)

    def touching(self, host: str) -> int:
        """Moves out of or into `host` (a move from a host to itself counts once)."""
        n = self._from.get(host, 0) + self._to.get(host, 0)
        return n - sum(1 for m in self._moves.values() if m.source == host == m.target)

    def has_vm(self, vm: str) -> bool:
        return self._vms.get(vm, 0) > 0


class HostLoads:
    """Per host, the VMs there now and those on their way there (each counted once), with their
    summed (CPU mc, memory MiB). A host's totals are computed on first use and then kept."""

    def __init__(
        self, placement: Iterable[tuple[str, str]], load_of: Callable[[str], tuple[int, int]]
    ) -> None:
        self._load_of = load_of
        self._refs: dict[str, dict[str, int]] = {}
        for vm, host in placement:
            self._refs.setdefault(host, {})[vm] = 1
        self._totals: dict[str, list[int]] = {}

    def load_of(self, vm: str) -> tuple[int, int]:
        """(CPU mc, memory MiB) of one VM."""
        return self._load_of(vm)

    def _total(self, host: str) -> list[int]:
        tot = self._totals.get(host)
        if tot is None:
            cpu = mem = 0
            for vm in self._refs.get(host, {}):
                c, m = self._load_of(vm)
                cpu += c
                mem += m
            tot = self._totals[host] = [cpu, mem]
        return tot

    def add(self, host: str, vm: str) -> None:
        """`vm` is on `host` now, or on its way there."""
        refs = self._refs.setdefault(host, {})
        n = refs.get(vm, 0)
        refs[vm] = n + 1
        if n == 0 and host in self._totals:
            c, m = self._load_of(vm)
            self._totals[host][0] += c
            self._totals[host][1] += m

    def remove(self, host: str, vm: str) -> None:
        """One reason for `vm` to count on `host` is gone (it left, or its move ended)."""
        refs = self._refs.get(host)
        if refs is None or vm not in refs:
            return
        if refs[vm] > 1:
            refs[vm] -= 1
            return
        del refs[vm]
        if host in self._totals:
            c, m = self._load_of(vm)
            self._totals[host][0] -= c
            self._totals[host][1] -= m

    def vms(self, host: str) -> AbstractSet[str]:
        return self._refs.get(host, {}).keys()

    def load(self, host: str) -> tuple[int, int]:
        tot = self._total(host)
        return tot[0], tot[1]
