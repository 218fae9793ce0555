"""`SnapshotFacts`: the questions of `domain.checks.MoveFacts` answered from a snapshot's
lookups (and the hosts each VM left recently, if given), the base of every caller's facts (the
planner uses it as it is). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

from rebalancerd.domain.checks import LimitValues, LiveFacts, ReasonCode
from rebalancerd.domain.model import AffinityGroup, ClusterRules, Host, HostState, Vm


def guarded_departures(
    departed: Mapping[str, AbstractSet[str]], rules: ClusterRules
) -> dict[str, frozenset[str]]:
    """VM -> the hosts the return guard keeps it from: the hosts it left recently (`departed`)
    minus those a soft pin asks for (a policy's preference, an operator's move-back): going
    there is what someone wants, not a flapping host."""
    if not departed:
        return {}
    wanted: dict[str, set[str]] = {}
    for p in rules.pins:
        if not p.hard and p.vm in departed:
            wanted.setdefault(p.vm, set()).update(p.hosts)
    out: dict[str, frozenset[str]] = {}
    for vm, hosts in departed.items():
        left = frozenset(hosts) - wanted.get(vm, set())
        if left:
            out[vm] = left
    return out


class SnapshotFacts:
    """`MoveFacts` answered from a snapshot's lookups: the `Need.SNAPSHOT` questions (and where
    the VM runs), the `Need.HISTORY` ones from `departed` (VM -> hosts it left within the return
    guard; none given = no VM has), and `live()` = None (nobody asked the hypervisors). The
    other questions raise `LookupError`: callers that know the answers (the executor, the
    replay) subclass this."""

    def __init__(
        self,
        vm_name: str,
        source: str,
        target: str,
        vms: Mapping[str, Vm],
        hosts: Mapping[str, Host],
        exclusions: AbstractSet[str],
        hard_pins: Mapping[str, frozenset[str]],
        *,
        departed: Mapping[str, AbstractSet[str]] | None = None,
    ) -> None:
        self._vm_name = vm_name
        self._source = source
        self.target_name = target
        self._vms = vms
        self._hosts = hosts
        self._exclusions = exclusions
        self._hard_pins = hard_pins
        self._departed: Mapping[str, AbstractSet[str]] = departed or {}

    def reset(self, vm_name: str, source: str) -> None:
        """Ask about another VM (the planner reuses one instance over all VMs)."""
        self._vm_name = vm_name
        self._source = source

    @property
    def vm_name(self) -> str:
        return self._vm_name

    @property
    def source(self) -> str:
        return self._source

    @property
    def target(self) -> str:
        return self.target_name

    def vm(self) -> Vm | None:
        return self._vms.get(self._vm_name)

    def host(self, name: str) -> Host | None:
        return self._hosts.get(name)

    def host_state(self, name: str) -> HostState | None:
        h = self._hosts.get(name)
        return None if h is None else h.state

    def excluded(self) -> bool:
        return self._vm_name in self._exclusions

    def hard_pins(self) -> AbstractSet[str] | None:
        return self._hard_pins.get(self._vm_name)

    def placed_on(self) -> str | None:
        vm = self.vm()
        return None if vm is None else vm.host

    def recently_left(self) -> AbstractSet[str]:
        return self._departed.get(self._vm_name, frozenset())

    def empties_source(self) -> bool:
        """From a snapshot: the source is in maintenance (drained) or degraded (evacuated)."""
        return self.host_state(self._source) in (HostState.MAINTENANCE, HostState.DEGRADED)

    def live(self) -> LiveFacts | None:
        return None

    def _unknown(self, what: str) -> LookupError:
        return LookupError(f"{what} is not known from a snapshot")

    def local_disk_allowed(self) -> bool:
        raise self._unknown("the migration class")

    def unreconciled(self) -> bool:
        raise self._unknown("the journal")

    def in_cooldown(self) -> bool:
        raise self._unknown("a cooldown")

    def stopping(self) -> bool:
        raise self._unknown("a stop request")

    def backing_off(self) -> bool:
        raise self._unknown("the back-off")

    def window_block(self) -> ReasonCode | None:
        raise self._unknown("the time")

    def circuit(self, host: str) -> ReasonCode | None:
        raise self._unknown("a breaker")

    def anti_groups(self) -> Sequence[AffinityGroup]:
        raise self._unknown("the load")

    def vms_on_target(self) -> AbstractSet[str]:
        raise self._unknown("the load")

    def target_load(self) -> tuple[int, int]:
        raise self._unknown("the load")

    def vm_load(self) -> tuple[int, int]:
        raise self._unknown("the load")

    def headroom(self) -> float:
        raise self._unknown("the headroom")

    def limits(self) -> LimitValues:
        raise self._unknown("the limits")

    def started(self) -> int:
        raise self._unknown("the moves started")

    def mib_used_last_hour(self) -> float | None:
        raise self._unknown("the bytes moved")

    def move_mib(self) -> int:
        raise self._unknown("the migration class")

    def running(self) -> int:
        raise self._unknown("the running moves")

    def running_from(self, host: str) -> int:
        raise self._unknown("the running moves")

    def running_to(self, host: str) -> int:
        raise self._unknown("the running moves")

    def touching(self, host: str) -> int:
        raise self._unknown("the running moves")

    def vm_in_flight(self) -> bool:
        raise self._unknown("the running moves")

    def adaptive_cap(self, scope: str, policy_limit: int) -> int:
        raise self._unknown("the adaptive caps")
