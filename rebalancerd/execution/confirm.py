"""Confirming a move from the hypervisors themselves right before it starts: the source's and
the target's `host_facts` (what libvirt runs there, with its memory, and the node's free
memory), summed up as the `domain.checks.LiveFacts` the CONFIRMED pre-checks read. Telemetry
can lie or lag; the hypervisors are the truth the executor acts on."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from rebalancerd.domain.checks import LiveFacts, ReasonCode
from rebalancerd.domain.plan import Migration
from rebalancerd.execution.base import Running
from rebalancerd.ports import Hypervisor, HypervisorError

log = structlog.get_logger("rebalancerd.executor")


async def live_facts(
    hypervisor: Hypervisor, m: Migration, running: Iterable[Running]
) -> tuple[str | None, LiveFacts | None]:
    """(None, what the two hosts say about `m`), or (the reason, None) when one of them does
    not answer. `running`: the moves in flight (those on their way to the target that are not
    active there yet count as its incoming memory)."""
    try:
        src = await hypervisor.host_facts(m.source)
        dst = await hypervisor.host_facts(m.target)
    except HypervisorError as e:
        log.warning("confirm_failed", vm=m.vm, source=m.source, target=m.target, error=str(e))
        return str(ReasonCode.HYPERVISOR_UNREACHABLE), None
    there = dst.domain_memory_mib
    incoming = sum(
        r.memory_mib
        for r in running
        if r.rec.target == m.target and r.rec.vm != m.vm and r.rec.vm not in there
    )
    facts = LiveFacts(
        on_source=m.vm in src.running,
        on_target=m.vm in there,
        vm_mib=src.domain_memory_mib.get(m.vm),
        target_domains_mib=sum(mib for vm, mib in there.items() if vm != m.vm),
        incoming_mib=incoming,
        target_free_mib=dst.free_memory_mib,
    )
    return None, facts
