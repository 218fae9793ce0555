"""Leader election and fenced writes against a real 3-member etcd on loopback ports.

Each test uses its own key prefix, so one module-scoped cluster serves them all."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from rebalancerd.adapters.etcd_coordinator import EtcdCoordinator, FencedWriteRejected
from rebalancerd.coordination.settings import CoordinationSettings
from tests.fixtures.etcd import EtcdCluster

pytestmark = [pytest.mark.timeout(120)]

TTL = 3


class Recorder:
    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        k = (name, tuple(sorted(labels.items())))
        self.values[k] = self.values.get(k, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self.values[(name, tuple(sorted(labels.items())))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.inc(name, value, **labels)

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)


def settings(etcd: EtcdCluster, prefix: str, member: str, **kw: Any) -> CoordinationSettings:
    return CoordinationSettings(
        backend="etcd",
        endpoints=etcd.endpoints,
        member=member,
        prefix=prefix,
        lease_ttl_s=TTL,
        safety_margin_s=0.5,
        poll_s=0.1,
        **kw,
    )


async def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def running(c: EtcdCoordinator) -> AsyncIterator[asyncio.Task[None]]:
    async with c:
        task = asyncio.create_task(c.run())
        try:
            yield task
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def prefix() -> str:
    return f"/rbl-test/{uuid.uuid4().hex[:8]}"


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def test_one_leader_and_only_its_writes_land(etcd_cluster: EtcdCluster) -> None:
    async def body() -> None:
        p = prefix()
        a = EtcdCoordinator(settings(etcd_cluster, p, "a"), ["c1"])
        b = EtcdCoordinator(settings(etcd_cluster, p, "b"), ["c1"], metrics=(rb := Recorder()))
        async with running(a), running(b):
            await until(lambda: a.led() or b.led(), 10, "a leader")
            await asyncio.sleep(0.5)  # both campaigned several times by now
            leaders = [c for c in (a, b) if c.leadership("c1")]
            assert len(leaders) == 1
            leader, other = (a, b) if leaders[0] is a else (b, a)
            rev = await leader.fenced_write("c1", {"intents/m1": b'{"vm":"v1"}'})
            assert rev > 0
            with pytest.raises(FencedWriteRejected, match="not the leader"):
                await other.fenced_write("c1", {"intents/m2": b"x"})
            state = await other.read_state("c1", "intents/")
            assert state == {"intents/m1": b'{"vm":"v1"}'}
            if other is b:
                assert rb.get("fenced_writes_rejected_total", cluster="c1") == 1
            assert leader.status()["shards"][0]["leader"] is True

    run(body())


def test_a_deposed_leader_whose_clock_lies_is_fenced_by_etcd(etcd_cluster: EtcdCluster) -> None:
    """The old leader's process stalls (its loop stops) and its clock is frozen, so its own
    deadline check passes: etcd's compare on the leader key's create_revision still refuses."""

    async def body() -> None:
        p = prefix()
        frozen = [time.monotonic()]
        old = EtcdCoordinator(settings(etcd_cluster, p, "old"), ["c1"], clock=lambda: frozen[0])
        async with old:
            await old.step()
            assert old.leadership("c1") is not None
            term = old.leadership("c1").term  # type: ignore[union-attr]
            # no keepalive from now on: the lease expires in etcd after TTL
            new = EtcdCoordinator(settings(etcd_cluster, p, "new"), ["c1"])
            async with running(new):
                await until(lambda: new.leadership("c1"), TTL + 5, "the new leader")
                assert new.leadership("c1").term > term  # type: ignore[union-attr]
                assert old.leadership("c1") is not None  # its frozen clock still says "valid"
                with pytest.raises(FencedWriteRejected, match="not ours in etcd"):
                    await old.fenced_write("c1", {"intents/stale": b"x"})
                assert await new.read_state("c1") == {}
                assert old.leadership("c1") is None  # and it stepped down on the rejection

    run(body())


def test_stopped_past_its_deadline_it_leads_nothing_before_asking_etcd(
    etcd_cluster: EtcdCluster,
) -> None:
    async def body() -> None:
        now = [time.monotonic()]
        c = EtcdCoordinator(settings(etcd_cluster, prefix(), "a"), ["c1"], clock=lambda: now[0])
        async with c:
            await c.step()
            assert c.may_start_move("c1")
            now[0] += TTL / 2 - 0.3  # less than half the lease left: no new migration
            assert c.leadership("c1") is not None and not c.may_start_move("c1")
            now[0] += TTL  # "SIGSTOP" past the deadline, then "SIGCONT"
            c._client = None  # any etcd call now would raise CoordinationError, not reject
            assert c.leadership("c1") is None
            with pytest.raises(FencedWriteRejected, match="own deadline"):
                await c.fenced_write("c1", {"k": b"v"})
            assert c.fenced_rejections == 1

    run(body())


def test_kill_minus_9_of_the_leader_process_hands_over_within_the_ttl(
    etcd_cluster: EtcdCluster,
) -> None:
    p = prefix()
    script = textwrap.dedent(
        f"""
        import asyncio
        from rebalancerd.adapters.etcd_coordinator import EtcdCoordinator
        from rebalancerd.coordination.settings import CoordinationSettings
        s = CoordinationSettings(backend="etcd", endpoints={etcd_cluster.endpoints!r},
            member="proc", prefix={p!r}, lease_ttl_s={TTL}, safety_margin_s=0.5, poll_s=0.1)
        async def main():
            async with EtcdCoordinator(s, ["c1"]) as c:
                t = asyncio.create_task(c.run())
                while not c.leadership("c1"):
                    await asyncio.sleep(0.05)
                print("LEADER", flush=True)
                await t
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert proc.stdout is not None
        lines: list[bytes] = []
        while len(lines) < 20 and (not lines or lines[-1] != b"LEADER"):  # log lines, then LEADER
            lines.append(proc.stdout.readline().strip())
        assert lines[-1] == b"LEADER", lines

        async def body() -> None:
            standby = EtcdCoordinator(settings(etcd_cluster, p, "standby"), ["c1"])
            async with running(standby):
                await asyncio.sleep(0.5)
                assert standby.leadership("c1") is None  # the process leads
                proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await until(lambda: standby.leadership("c1"), TTL + 5, "takeover")
                took = time.monotonic() - killed
                assert took <= TTL + 2, took  # the lease TTL plus a poll, not a timeout
                await standby.fenced_write("c1", {"after-failover": b"1"})

        run(body())
    finally:
        proc.kill()
        proc.wait(10)


def test_killing_etcds_own_raft_leader_does_not_move_daemon_leadership(
    etcd_cluster: EtcdCluster,
) -> None:
    async def body() -> None:
        c = EtcdCoordinator(settings(etcd_cluster, prefix(), "a"), ["c1"])
        async with running(c):
            lead = await until(lambda: c.leadership("c1"), 10, "leader")
            raft = etcd_cluster.leader()
            etcd_cluster.kill(raft)
            try:
                await asyncio.sleep(TTL + 1)  # a raft election and several keepalives
                now = await until(lambda: c.leadership("c1"), 5, "still the leader")
                assert now.term == lead.term
                await until_write(c)
            finally:
                etcd_cluster.start(raft, state="existing")
                deadline = time.monotonic() + 20
                while not etcd_cluster.healthy() and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)

    async def until_write(c: EtcdCoordinator) -> None:
        for _ in range(40):
            try:
                await c.fenced_write("c1", {"k": b"v"})
                return
            except Exception:  # a request routed to the dead member; the channel retries
                await asyncio.sleep(0.1)
        raise AssertionError("no write succeeded after etcd's leader died")

    run(body())


def test_ten_clusters_over_three_daemons_survive_losing_one(etcd_cluster: EtcdCluster) -> None:
    clusters = [f"k{i}" for i in range(10)]

    async def body() -> None:
        p = prefix()
        ds = [EtcdCoordinator(settings(etcd_cluster, p, f"d{i}"), clusters) for i in range(3)]

        def leaders() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {c: [] for c in clusters}
            for d in ds:
                for c in d.led():
                    out[c].append(d.member)
            return out

        async with AsyncExitStack() as stack:
            tasks = [await stack.enter_async_context(running(d)) for d in ds]
            await until(lambda: all(len(v) == 1 for v in leaders().values()), 15, "one leader each")
            assert {m for v in leaders().values() for m in v} == {"d0", "d1", "d2"}
            victim = ds[0]
            held = set(victim.led())
            tasks[0].cancel()  # dies without resigning: its lease has to run out
            victim._lead.clear()
            ds = ds[1:]
            await until(
                lambda: all(len(v) == 1 for v in leaders().values()), TTL + 8, "shards moved"
            )
            assert held and all(leaders()[c][0] in {"d1", "d2"} for c in held)

    run(body())
