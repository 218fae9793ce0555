"""Clocks (implementations of ports.Clock).

- SystemClock: real time.
- ScaledClock: simulated time running `speed` times faster than real time (the demo).
- VirtualClock: discrete-event time for tests and replays: `sleep` returns as soon as every other
  task is waiting, with the clock jumped to the earliest wake-up. Only for code that does no real
  I/O while it sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    def __init__(self, speed: float, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._real0 = time.monotonic()
        self._wall0 = time.time() if start is None else start

    def monotonic(self) -> float:
        return (time.monotonic() - self._real0) * self.speed

    def now(self) -> float:
        return self._wall0 + self.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class VirtualClock:
    def __init__(self, start: float = 1_767_225_600.0, settle_rounds: int = 20) -> None:
        """start: wall time at t=0 (default 2026-01-01T00:00:00Z)."""
        self._t = 0.0
        self._wall0 = start
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._driver: asyncio.Task[None] | None = None
        self._settle = settle_rounds

    def monotonic(self) -> float:
        return self._t

    def now(self) -> float:
        return self._wall0 + self._t

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (wakes nothing by itself; sleepers wake on the next drive)."""
        self._t += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (self._t + seconds, next(self._seq), fut))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await fut

    async def _drive(self) -> None:
        while self._heap:
            for _ in range(self._settle):
                await asyncio.sleep(0)
            if not self._heap:
                return
            wake, _, fut = heapq.heappop(self._heap)
            if fut.done():
                continue
            self._t = max(self._t, wake)
            fut.set_result(None)
