"""Leader election per cluster shard and fenced writes on etcd v3 (client: etcd3aio, grpc.aio).

Keys (``P`` = ``coordination.prefix``):

- ``P/members/<member>``: this daemon is alive; bound to its lease.
- ``P/leaders/<cluster>``: the cluster's leader (value = member name); bound to the leader's
  lease, created only if absent. Its ``create_revision`` is the **term**, the fencing token.
- ``P/clusters/<cluster>/...``: the shard's state (intents, drained hosts, cooldowns); no lease,
  so it outlives a leader. Every write is a transaction that compares the leader key's
  create_revision with our term and its value with our name: a deposed leader cannot write.

Own deadline: a leadership is valid only until ``sent_at + TTL - safety_margin`` of the last
keepalive etcd answered, measured on this process's monotonic clock. A process stopped past
that (SIGSTOP, a long GC pause, a partition) finds, when it runs again, that it leads nothing,
before it asks etcd; and a fenced write is refused locally after the deadline.

Which clusters this member campaigns for is decided by rendezvous hashing over the live
members (rebalancerd.domain.shards), so N daemons share many clusters and a dead
daemon's shards move to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end

from rebalancerd.coordination.settings import CoordinationSettings
from rebalancerd.domain.shards import owned_by
from rebalancerd.ports import MetricsSink

log = structlog.get_logger("rebalancerd.coordination")

_FAILURES: tuple[type[BaseException], ...] = (EtcdError, grpc.RpcError, TimeoutError)
"""What an etcd call may raise: the client's errors, raw gRPC errors, our call timeout."""


class CoordinationError(Exception):
    """etcd could not be used (unreachable, refused, bad credentials); one line."""


_LOOP_FAILURES: tuple[type[BaseException], ...] = (*_FAILURES, CoordinationError)


class FencedWriteRejected(Exception):
    """A write refused because this daemon no longer leads the cluster (or its deadline
    passed); nothing was written."""


@dataclass(frozen=True, slots=True)
class Leadership:
    cluster: str
    member: str
    term: int
    """The leader key's create_revision: the fencing token of every write of this term."""
    since_mono: float


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class EtcdCoordinator:
    """Campaigns for the clusters this member should own and fences writes with the term.

    Use as an async context manager, then ``await run()`` in a task (it never returns until
    cancelled)."""

    def __init__(
        self,
        settings: CoordinationSettings,
        clusters: Iterable[str],
        *,
        metrics: MetricsSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = settings
        self.member = settings.member or socket.gethostname().split(".")[0]
        self.clusters = tuple(sorted(set(clusters)))
        self.metrics = metrics
        self.clock = clock
        self._client: Etcd3Client | None = None
        self._lease_id = 0
        self._deadline = 0.0
        """Own-clock end of the current lease, minus the safety margin."""
        self._expiry = 0.0
        """Own-clock time after which the server has surely expired our lease."""
        self._lead: dict[str, Leadership] = {}
        self.members: frozenset[str] = frozenset()
        self.leader_changes = 0
        self.fenced_rejections = 0
        self.last_error: str | None = None
        for c in self.clusters:
            self._gauge(c, 0)

    # -- keys -----------------------------------------------------------------------------------
    def leader_key(self, cluster: str) -> str:
        return f"{self.s.prefix}/leaders/{cluster}"

    def member_key(self, member: str) -> str:
        return f"{self.s.prefix}/members/{member}"

    def state_key(self, cluster: str, sub: str) -> str:
        return f"{self.s.prefix}/clusters/{cluster}/{sub}"

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> EtcdCoordinator:
        kwargs: dict[str, Any] = {}
        if self.s.tls is not None:
            kwargs["ca_cert"] = self.s.tls.ca_file.read_bytes()
            if self.s.tls.cert_file is not None and self.s.tls.key_file is not None:
                kwargs["cert_chain"] = self.s.tls.cert_file.read_bytes()
                kwargs["cert_key"] = self.s.tls.key_file.read_bytes()
        self._client = Etcd3Client(
            list(self.s.endpoints),
            rpc_max_attempts=1,
            tls_server_name=self.s.tls.server_name if self.s.tls else None,
            **kwargs,
        )
        await self._client.connect()
        if self.s.username is not None and self.s.password_file is not None:
            password = self.s.password_file.read_text(encoding="utf-8").splitlines()[0]
            try:
                auth = await self._api().auth.authenticate(
                    self.s.username, password, timeout=self.s.call_timeout_s
                )
            except _FAILURES as e:
                raise CoordinationError(f"etcd authentication failed: {_one_line(e)}") from None
            self._client.set_token(auth.token)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.resign_all()
        if self._client is not None:
            if self._lease_id:
                with contextlib.suppress(*_FAILURES):
                    await self._api().lease.revoke(self._lease_id, timeout=self.s.call_timeout_s)
            await self._client.close()
            self._client = None

    def _api(self) -> Any:
        if self._client is None:
            raise CoordinationError("not connected to etcd")
        return self._client

    # -- what callers ask -----------------------------------------------------------------------
    def leadership(self, cluster: str) -> Leadership | None:
        """Our leadership of ``cluster`` if it is still valid by our own clock, else None."""
        lead = self._lead.get(cluster)
        if lead is None:
            return None
        if self.clock() >= self._deadline:
            self._lose(cluster, "own deadline passed")
            return None
        return lead

    def led(self) -> dict[str, Leadership]:
        return {c: lead for c in list(self._lead) if (lead := self.leadership(c)) is not None}

    def lease_left_s(self) -> float:
        """Seconds of valid leadership left (0 when none): a migration starts only with at least
        half the lease left."""
        return max(0.0, self._deadline - self.clock()) if self._lead else 0.0

    def may_start_move(self, cluster: str) -> bool:
        lead = self.leadership(cluster)
        return lead is not None and self.lease_left_s() >= self.s.lease_ttl_s / 2

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep the lease alive and campaign until cancelled; errors are logged, never raised."""
        ka = asyncio.create_task(self._keepalive_loop(), name="etcd-keepalive")
        try:
            while True:
                try:
                    await self.step()
                except _LOOP_FAILURES as e:
                    self._problem(e)
                await asyncio.sleep(self.s.poll_s)
        finally:
            ka.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ka

    async def _keepalive_loop(self) -> None:
        # three tries per TTL, each bounded well inside its slot: a keepalive routed to a dead
        # etcd member must not eat the lease (the channel moves to a live member on the retry)
        period = max(0.1, self.s.lease_ttl_s / 3)
        timeout = min(self.s.call_timeout_s, self.s.lease_ttl_s / 4)
        while True:
            started = self.clock()
            try:
                await self.renew(timeout)
            except _LOOP_FAILURES as e:
                self._problem(e)
            await asyncio.sleep(max(0.0, period - (self.clock() - started)))

    async def step(self) -> None:
        """One turn: a lease, the member list, then campaign for / resign from clusters."""
        await self._ensure_lease()
        api = self._api()
        t = self.s.call_timeout_s
        prefix = f"{self.s.prefix}/members/"
        resp = await api.kv.get(prefix, range_end=prefix_range_end(prefix.encode()), timeout=t)
        self.members = frozenset(kv.key.decode()[len(prefix) :] for kv in resp.kvs)
        mine = owned_by(self.member, self.clusters, self.members | {self.member})
        lprefix = f"{self.s.prefix}/leaders/"
        resp = await api.kv.get(lprefix, range_end=prefix_range_end(lprefix.encode()), timeout=t)
        leaders = {kv.key.decode()[len(lprefix) :]: kv for kv in resp.kvs}
        for c in self.clusters:
            kv = leaders.get(c)
            lead = self._lead.get(c)
            if lead is not None and (
                kv is None or kv.create_revision != lead.term or kv.value.decode() != self.member
            ):
                self._lose(c, "leader key changed in etcd")
                lead = None
            if c not in mine:
                if lead is not None:
                    await self.resign(c)
                continue
            if lead is None and kv is None:
                await self._campaign(c)
        self.last_error = None

    async def _ensure_lease(self) -> None:
        if self._lease_id and self.clock() < self._expiry:
            return
        if self._lead:
            for c in list(self._lead):
                self._lose(c, "lease lost")
        api = self._api()
        sent = self.clock()
        grant = await api.lease.grant(ttl=self.s.lease_ttl_s, timeout=self.s.call_timeout_s)
        self._lease_id = int(grant.ID)
        self._set_deadline(sent, int(grant.TTL))
        await api.kv.put(
            self.member_key(self.member),
            self.member,
            lease=self._lease_id,
            timeout=self.s.call_timeout_s,
        )
        log.info("coordination_lease_granted", member=self.member, ttl_s=int(grant.TTL))

    def _set_deadline(self, sent: float, ttl: int) -> None:
        self._expiry = sent + ttl
        self._deadline = sent + ttl - self.s.safety_margin_s

    async def renew(self, timeout: float | None = None) -> None:
        """One keepalive; moves the deadline only when etcd confirms the lease."""
        if not self._lease_id:
            return
        api = self._api()
        sent = self.clock()
        call = api.lease.keep_alive(self._lease_id)
        try:
            resp = await asyncio.wait_for(call.read(), timeout or self.s.call_timeout_s)
        finally:
            call.cancel()
        ttl = int(getattr(resp, "TTL", 0) or 0)
        if ttl <= 0:  # etcd says the lease is gone: every leadership of this lease ended
            for c in list(self._lead):
                self._lose(c, "lease expired in etcd")
            self._lease_id = 0
            return
        self._set_deadline(sent, ttl)

    async def _campaign(self, cluster: str) -> None:
        if self.clock() + self.s.lease_ttl_s / 2 > self._deadline + self.s.safety_margin_s:
            return  # too little lease left to lead: renew first
        api = self._api()
        key = self.leader_key(cluster)
        resp = await api.kv.txn(
            compare=[api.kv.txn_compare_create_revision(key, 0)],
            success=[api.kv.txn_op_put(key, self.member, lease=self._lease_id)],
            timeout=self.s.call_timeout_s,
            max_attempts=1,
        )
        if not resp.succeeded:
            return
        term = int(resp.header.revision)
        self._lead[cluster] = Leadership(cluster, self.member, term, self.clock())
        self.leader_changes += 1
        self._gauge(cluster, 1)
        self._inc("leader_changes_total", cluster=cluster)
        log.info("coordination_leader", cluster=cluster, member=self.member, term=term)

    async def resign(self, cluster: str) -> None:
        lead = self._lead.get(cluster)
        if lead is None:
            return
        self._lose(cluster, "resigned")
        api = self._api()
        key = self.leader_key(cluster)
        with contextlib.suppress(*_FAILURES):
            await api.kv.txn(
                compare=[
                    api.kv.txn_compare_create_revision(key, lead.term),
                    api.kv.txn_compare_value(key, self.member),
                ],
                success=[api.kv.txn_op_delete(key)],
                timeout=self.s.call_timeout_s,
                max_attempts=1,
            )

    async def resign_all(self) -> None:
        for c in list(self._lead):
            await self.resign(c)

    def _lose(self, cluster: str, why: str) -> None:
        if self._lead.pop(cluster, None) is not None:
            self.leader_changes += 1
            self._gauge(cluster, 0)
            self._inc("leader_changes_total", cluster=cluster)
            log.warning("coordination_stepped_down", cluster=cluster, member=self.member, why=why)

    # -- fenced state ---------------------------------------------------------------------------
    async def fenced_write(
        self,
        cluster: str,
        puts: Mapping[str, str | bytes] | None = None,
        deletes: Iterable[str] = (),
    ) -> int:
        """Write shard state (keys relative to ``P/clusters/<cluster>/``) in one transaction that
        holds only while we lead with our term. Returns the revision written; raises
        FencedWriteRejected (nothing written) when we do not lead, our own deadline passed, or
        etcd's leader key is no longer ours."""
        lead = self.leadership(cluster)
        if lead is None:
            self._rejected(cluster, "not the leader (or own deadline passed)")
        assert lead is not None
        api = self._api()
        key = self.leader_key(cluster)
        ops = [api.kv.txn_op_put(self.state_key(cluster, k), v) for k, v in (puts or {}).items()]
        ops += [api.kv.txn_op_delete(self.state_key(cluster, k)) for k in deletes]
        left = self._deadline - self.clock()
        if left <= 0:
            self._lose(cluster, "own deadline passed")
            self._rejected(cluster, "own deadline passed")
        resp = await api.kv.txn(
            compare=[
                api.kv.txn_compare_create_revision(key, lead.term),
                api.kv.txn_compare_value(key, self.member),
            ],
            success=ops,
            timeout=min(self.s.call_timeout_s, left),
            max_attempts=1,
        )
        if not resp.succeeded:
            self._lose(cluster, "fenced write rejected by etcd")
            self._rejected(cluster, "leader key is not ours in etcd")
        return int(resp.header.revision)

    async def read_state(self, cluster: str, sub: str = "") -> dict[str, bytes]:
        """Shard state under ``P/clusters/<cluster>/<sub>``, relative key -> value
        (linearizable read)."""
        api = self._api()
        base = self.state_key(cluster, "")
        prefix = base + sub
        resp = await api.kv.get(
            prefix, range_end=prefix_range_end(prefix.encode()), timeout=self.s.call_timeout_s
        )
        return {kv.key.decode()[len(base) :]: bytes(kv.value) for kv in resp.kvs}

    def _rejected(self, cluster: str, why: str) -> None:
        self.fenced_rejections += 1
        self._inc("fenced_writes_rejected_total", cluster=cluster)
        raise FencedWriteRejected(f"cluster {cluster}: write refused: {why}")

    # -- observability --------------------------------------------------------------------------
    def _gauge(self, cluster: str, value: int) -> None:
        if self.metrics is not None:
            self.metrics.set("leader", value, cluster=cluster)

    def _inc(self, name: str, **labels: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, 1.0, **labels)

    def _problem(self, e: BaseException) -> None:
        msg = _one_line(e)
        if msg != self.last_error:
            log.warning("coordination_etcd_error", error=msg, member=self.member)
        self.last_error = msg
        self._inc("errors_total", where="coordination")

    def status(self) -> dict[str, Any]:
        led = self.led()
        return {
            "backend": "etcd",
            "member": self.member,
            "members": sorted(self.members),
            "lease_left_s": round(self.lease_left_s(), 2),
            "shards": [
                {"cluster": c, "leader": c in led, "term": led[c].term if c in led else None}
                for c in self.clusters
            ],
            "last_error": self.last_error,
        }


__all__ = ["CoordinationError", "EtcdCoordinator", "FencedWriteRejected", "Leadership"]
