"""A mutable placement with per-host loads and rule counters: O(1) "may v go to h now?"."""

from __future__ import annotations

from rebalancerd.domain.rules import anti_affinity_count_ok, configured_fits, fits
from rebalancerd.planner.problem import Problem


class State:
    __slots__ = ("anti_count", "cfg", "cpu", "mem", "on", "p", "where")

    def __init__(self, p: Problem, where: list[int] | None = None) -> None:
        self.p = p
        self.where: list[int] = list(where if where is not None else p.origin)
        self.cpu = [0] * p.n_hosts
        self.mem = [0] * p.n_hosts
        self.cfg = [0] * p.n_hosts
        self.on: list[set[int]] = [set() for _ in range(p.n_hosts)]
        self.anti_count: dict[tuple[int, int], int] = {}
        for v, h in enumerate(self.where):
            self._add(v, h)

    def copy(self) -> State:
        return State(self.p, self.where)

    def _add(self, v: int, h: int) -> None:
        p = self.p
        self.cpu[h] += p.cpu[v]
        self.mem[h] += p.mem[v]
        self.cfg[h] += p.cfg[v]
        self.on[h].add(v)
        for g in p.anti_of.get(v, ()):
            k = (g, h)
            self.anti_count[k] = self.anti_count.get(k, 0) + 1

    def _remove(self, v: int, h: int) -> None:
        p = self.p
        self.cpu[h] -= p.cpu[v]
        self.mem[h] -= p.mem[v]
        self.cfg[h] -= p.cfg[v]
        self.on[h].discard(v)
        for g in p.anti_of.get(v, ()):
            self.anti_count[(g, h)] -= 1

    def move(self, v: int, h: int) -> None:
        old = self.where[v]
        if old == h:
            return
        self._remove(v, old)
        self._add(v, h)
        self.where[v] = h

    # -- checks ------------------------------------------------------------------------------
    def fits(
        self, v: int, h: int, extra_cpu: int = 0, extra_mem: int = 0, extra_cfg: int = 0
    ) -> bool:
        p = self.p
        return fits(
            self.cpu[h] + extra_cpu,
            self.mem[h] + extra_mem,
            p.cpu[v],
            p.mem[v],
            p.cap_cpu[h],
            p.cap_mem[h],
        ) and configured_fits(self.cfg[h] + extra_cfg, p.cfg[v], p.cap_cfg[h])

    def anti_ok(self, v: int, h: int) -> bool:
        """No other member of v's hard anti-affinity groups is on h."""
        for g in self.p.anti_of.get(v, ()):
            n = self.anti_count.get((g, h), 0)
            if self.where[v] == h:
                n -= 1
            if not anti_affinity_count_ok(n):
                return False
        return True

    def can_move(self, v: int, h: int) -> bool:
        """v may move to h now: static rules, capacity with headroom, anti-affinity."""
        return (
            h != self.where[v] and self.p.may_host(v, h) and self.fits(v, h) and self.anti_ok(v, h)
        )

    def moves(self) -> list[tuple[int, int, int]]:
        """(vm, origin host, current host) for every VM not on its origin."""
        return [
            (v, o, h)
            for v, (o, h) in enumerate(zip(self.p.origin, self.where, strict=False))
            if o != h
        ]

    def n_moves(self) -> int:
        return sum(1 for o, h in zip(self.p.origin, self.where, strict=False) if o != h)

    def over_capacity(self, h: int) -> bool:
        p = self.p
        return (
            self.cpu[h] > p.cap_cpu[h] or self.mem[h] > p.cap_mem[h] or self.cfg[h] > p.cap_cfg[h]
        )
