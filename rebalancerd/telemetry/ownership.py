"""Which host a VM belongs to, when several hosts' reports list it.

A VM belongs to the host whose libvirt runs it (its *owner*): the first non-stale host to report
it. A report is no proof of where a VM runs: MQTT ACLs bind a host to its topics, not to VM names,
so a host could list another host's VMs as tiny guests to make that host look empty (and have
the planner fill it), and a copied agent config with the wrong libvirt URI does the same by
accident. So, while the owner is not stale and its latest report still lists the VM, another
host listing it does not move it: the VM is left out of that host's share of the model (the
rest of its report is kept).

The owner hands the VM over when its newer report no longer lists it, when it goes stale
(silent, offline, libvirt unreadable), or when it lists the VM paused while another host lists
it running. That is what a live migration looks like: a paused incoming copy on the target (not
a claim), then the VM running there and gone from the source.

A refused claim is counted (``telemetry_rejected_total{reason="vm_owned_elsewhere"}``) and
logged (``telemetry_vm_claim_rejected``, once per VM and claimant, not every interval) only once
the owner has reported the VM again after the claim: at a migration's switchover the target's
report may arrive before the source's next one, and that is not a conflict.

Pure bookkeeping, no I/O: the collector calls ``relist`` for every accepted report and asks
``owns`` while it builds the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import structlog

from rebalancerd.ports import MetricsSink
from rebalancerd.telemetry.schema import RejectReason

log = structlog.get_logger("rebalancerd.telemetry")


class ListedVm(Protocol):
    @property
    def running(self) -> bool: ...


class HostListing(Protocol):
    """What ownership needs of a host's collector state."""

    @property
    def vms(self) -> Mapping[str, ListedVm]: ...
    @property
    def recv_mono(self) -> float | None: ...
    @property
    def boot(self) -> int: ...
    @property
    def seq(self) -> int: ...


class VmOwners:
    def __init__(
        self,
        hosts: Mapping[str, HostListing],
        is_stale: Callable[[str, float], bool],
        metrics: MetricsSink,
    ) -> None:
        self._hosts = hosts
        self._is_stale = is_stale
        self._metrics = metrics
        self.claims_refused = 0
        """Claims counted under ``vm_owned_elsewhere``."""
        self._owner: dict[str, str] = {}
        """VM -> the host it belongs to."""
        self._listed: dict[str, set[str]] = {}
        """VM -> the hosts whose latest accepted report lists it (usually one)."""
        self._claims: dict[tuple[str, str], tuple[int, int]] = {}
        """(VM, claimant) -> the owner's (boot, seq) when the claim was last refused."""
        self._claim_logged: dict[str, str] = {}
        """VM -> the claimant last logged for it."""

    def listers(self, name: str) -> frozenset[str]:
        return frozenset(self._listed.get(name, ()))

    @property
    def listed(self) -> Mapping[str, set[str]]:
        """VM -> the hosts listing it (read-only use: the collector's fast path)."""
        return self._listed

    def owns(self, host: str, name: str, now: float) -> bool:
        """Whether ``host`` (non-stale, listing ``name``) is where ``name`` belongs now."""
        if len(self._listed.get(name, ())) <= 1:
            return True  # a VM listed by one host is owned by it
        return self.owner_of(name, now) == host

    def relist(
        self,
        host: str,
        old: Mapping[str, ListedVm],
        new: Mapping[str, ListedVm],
        now: float,
    ) -> None:
        """After ``host``'s accepted report (VMs ``old`` before, ``new`` now): update the index,
        release the VMs it no longer lists, refuse (count, log) its claims to others' VMs."""
        listed = self._listed
        owner = self._owner
        for name in old.keys() - new.keys():
            hosts = listed.get(name)
            if hosts is not None:
                hosts.discard(host)
                if not hosts:
                    del listed[name]
            if owner.get(name) == host:
                del owner[name]  # handed over: the best other lister takes it
                if hosts is not None and len(hosts) == 1:
                    owner[name] = next(iter(hosts))
            self._end_claim(name, host)
        for name in new.keys() - old.keys():
            hosts = listed.get(name)
            if hosts is None:
                listed[name] = {host}
                owner[name] = host
            else:
                hosts.add(host)
        # Invariant: a VM listed by one host is owned by it; only shared VMs need a decision.
        for name, vm in new.items():
            if len(listed[name]) == 1:
                continue
            current = self.owner_of(name, now)
            if current == host or current is None or not vm.running:
                self._end_claim(name, host)  # its own, or a paused incoming migration
                continue
            self._refuse_claim(name, host, current)

    def owner_of(self, name: str, now: float) -> str | None:
        """The host ``name`` belongs to now, settling a due handover: the owner keeps it while it
        is not stale and its latest report lists it (running; paused: until another host lists
        it running); else the best non-stale lister takes it (running first, then the newest
        report). None when no non-stale host lists it."""
        listers = self._listed.get(name, ())
        cur = self._owner.get(name)
        best: str | None = None
        best_key: tuple[bool, float] | None = None
        if cur is not None and cur in listers and not self._is_stale(cur, now):
            hs = self._hosts[cur]
            if hs.vms[name].running:
                return cur
            best, best_key = cur, (False, hs.recv_mono or 0.0)
        for host in listers:
            if host == cur or self._is_stale(host, now):
                continue
            hs = self._hosts[host]
            running = hs.vms[name].running
            if best == cur and best is not None and not running:
                continue  # a paused owner yields only to a host running the VM
            key = (running, hs.recv_mono or 0.0)
            if best_key is None or key > best_key:
                best, best_key = host, key
        if best is not None and best != cur:
            self._owner[name] = best
            self._end_claim(name, best)
        return best

    def _refuse_claim(self, name: str, claimant: str, owner: str) -> None:
        ohs = self._hosts[owner]
        owner_key = (ohs.boot, ohs.seq)
        prev = self._claims.get((name, claimant))
        self._claims[(name, claimant)] = owner_key
        if prev is None or prev == owner_key:
            return  # the owner has not listed it again since: maybe a migration's switchover
        self.claims_refused += 1
        self._metrics.inc("telemetry_rejected_total", reason=RejectReason.VM_OWNED_ELSEWHERE.value)
        if self._claim_logged.get(name) != claimant:
            self._claim_logged[name] = claimant
            log.warning(
                "telemetry_vm_claim_rejected",
                vm=name,
                claimant=claimant,
                owner=owner,
                consequence=f"{name} stays on {owner}, whose reports list it too",
            )

    def _end_claim(self, name: str, claimant: str) -> None:
        had = self._claims.pop((name, claimant), None) is not None
        if had and self._claim_logged.get(name) == claimant:
            del self._claim_logged[name]


__all__ = ["HostListing", "ListedVm", "VmOwners"]
