"""Discrete-event replay of a CPU trace on the CloudSim data centre, with a pluggable decider.

Each scheduling interval (300 s) the decider sees the state at the interval's start and returns
ordered steps of moves (the migrations inside a step may run together). The replay admits them
with the daemon's own pre-checks (`sim/admission.py`: rules, capacity with the policy's headroom,
cooldown, moves per cycle, concurrency overall / per source / per target, MiB per sliding hour,
time windows and blackouts; the reasons are the executor's) and runs the migrations
with CloudSim's timing: RAM / (bandwidth / 2) seconds, 10 % of the VM's MIPS lost on the source
meanwhile and 10 % of it already carried by the target. Every migration start and end is an
event: all hosts are re-evaluated (utilisation interpolated linearly between trace samples) and
a record goes to the :class:`MetricsAccumulator`, as CloudSim does.

Deterministic: the same trace, decider, policy and seed give the same result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.planner.objectives.demand import CpuDemand
from rebalancerd.planner.objectives.registry import objective_for
from rebalancerd.policy.resolve import policy_rules
from rebalancerd.policy.schema import Mode, Policy
from rebalancerd.sim.admission import Admission, ProposedMove
from rebalancerd.sim.cloudsim import (
    MIGRATION_DEGRADATION,
    TARGET_SHARE,
    DataCentre,
    build_datacentre,
    pabfd,
    power_w,
)
from rebalancerd.sim.metrics import MetricsAccumulator
from rebalancerd.sim.traces import Trace

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

ProgressFn = Callable[[int, int], None]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class View:
    """What a decider sees at the start of an interval."""

    t: float
    """Seconds since the start of the trace."""
    now: float
    """Epoch seconds (trace start + t)."""
    sample: int
    dc: DataCentre
    trace: Trace
    host_of: IntArray
    demand_mips: FloatArray
    frozen: frozenset[int]
    max_moves: int | None
    max_mib: int | None
    enforce_memory: bool = False

    def history_mips(self, window: int) -> FloatArray:
        """Demand of every VM over the last `window` samples (oldest first, current last)."""
        lo = max(0, self.sample - window + 1)
        out: FloatArray = self.trace.cpu[:, lo : self.sample + 1] * self.dc.vm_mips[:, None]
        return out


class Decider(Protocol):
    name: str

    def decide(self, view: View) -> Sequence[Sequence[ProposedMove]]: ...


class NoMigration:
    """Baseline: the initial placement is kept all day."""

    name = "no-migration"

    def decide(self, view: View) -> Sequence[Sequence[ProposedMove]]:
        return ()


def snapshot_of(view: View, hosts: tuple[Host, ...], window: int) -> ClusterSnapshot:
    """The replay state as the daemon would see it (CPU in reference millicores = MIPS)."""
    hist = np.rint(view.history_mips(window)).astype(np.int64)
    cur = np.rint(view.demand_mips).astype(np.int64)
    dc = view.dc
    vms = tuple(
        Vm(
            name=dc.vm_names[i],
            host=dc.host_names[int(view.host_of[i])],
            vcpus=1,
            memory_mib=int(dc.vm_ram[i]),
            cpu_used_mc=int(cur[i]),
            memory_used_mib=int(dc.vm_ram[i]),
            cpu_history_mc=tuple(int(x) for x in hist[i]),
        )
        for i in range(dc.n_vms)
    )
    return ClusterSnapshot(hosts=hosts, vms=vms, taken_at=view.now)


class PlannerDecider:
    """The daemon's decision code: `rebalancerd.planner.make_plan` on a snapshot each cycle."""

    def __init__(self, policy: Policy, *, time_limit_s: float = 1.0, seed: int = 0) -> None:
        from rebalancerd.planner import make_plan

        self._make_plan = make_plan
        self.policy = policy
        self.time_limit_s = time_limit_s
        self.seed = seed
        self.name = f"planner:{policy.name}"
        self._hosts: tuple[Host, ...] | None = None
        self._host_index: dict[str, int] = {}
        self._vm_index: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.plan_wall_s = 0.0
        self.wall_limited = 0
        """Cycles where the planner hit its wall-clock limit (its result may then vary)."""

    def decide(self, view: View) -> Sequence[Sequence[ProposedMove]]:
        if self._hosts is None:
            self._hosts = view.dc.domain_hosts(enforce_memory=view.enforce_memory)
            self._host_index = {n: i for i, n in enumerate(view.dc.host_names)}
            self._vm_index = {n: i for i, n in enumerate(view.dc.vm_names)}
        snap = snapshot_of(view, self._hosts, self.policy.targets.prediction.window)
        frozen = frozenset(view.dc.vm_names[i] for i in view.frozen)
        t0 = time.perf_counter()
        plan = self._make_plan(
            snap,
            self.policy,
            now=view.now,
            time_limit_s=self.time_limit_s,
            seed=self.seed,
            frozen=frozen,
            max_moves=view.max_moves,
            max_mib=view.max_mib,
        )
        self.plan_wall_s += time.perf_counter() - t0
        self.statuses[plan.stats.status] = self.statuses.get(plan.stats.status, 0) + 1
        if any("wall-clock" in n or "stopped at the time limit" in n for n in plan.stats.notes):
            self.wall_limited += 1
        steps: list[list[ProposedMove]] = []
        for step in plan.steps:
            moves = []
            for m in step.migrations:
                if m.vm not in self._vm_index or m.target not in self._host_index:
                    continue
                moves.append(
                    ProposedMove(
                        self._vm_index[m.vm],
                        self._host_index.get(m.source, -1),
                        self._host_index[m.target],
                        str(m.reason),
                    )
                )
            if moves:
                steps.append(moves)
        return steps


# -- the replay -----------------------------------------------------------------------------


@dataclass
class Timeline:
    hours: list[float] = field(default_factory=list)
    active_hosts: list[int] = field(default_factory=list)
    power_kw: list[float] = field(default_factory=list)
    overloaded_hosts: list[int] = field(default_factory=list)
    migrations: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[Any]]:
        return {
            "hours": self.hours,
            "active_hosts": self.active_hosts,
            "power_kw": self.power_kw,
            "overloaded_hosts": self.overloaded_hosts,
            "migrations": self.migrations,
        }


@dataclass
class ReplayResult:
    decider: str
    trace: str
    vms: int
    hosts: int
    duration_s: float
    summary: dict[str, Any]
    timeline: Timeline
    wall_s: float
    limit_blocks: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decider": self.decider,
            "trace": self.trace,
            "vms": self.vms,
            "hosts": self.hosts,
            "duration_s": self.duration_s,
            **self.summary,
            "wall_s": self.wall_s,
            "limit_blocks": self.limit_blocks,
            "notes": self.notes,
        }


def trace_epoch(trace: Trace) -> float:
    """Midnight UTC of a trace named YYYYMMDD, else 2000-01-01 (a fixed, documented origin)."""
    try:
        return datetime.strptime(trace.name, "%Y%m%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return datetime(2000, 1, 1, tzinfo=UTC).timestamp()


class Replay:
    def __init__(
        self,
        trace: Trace,
        decider: Decider,
        policy: Policy,
        *,
        hosts: int = 800,
        initial_placement: IntArray | None = None,
        enforce_memory: bool = False,
    ) -> None:
        """enforce_memory=False is CloudSim's behaviour: a running VM requests 0 MB (its RAM
        utilisation model is null), so RAM only counts at the initial placement and for the
        migration time. True makes host RAM a hard limit for every move."""
        self.trace = trace
        self.enforce_memory = enforce_memory
        self.decider = decider
        self.policy = policy
        self.dc = build_datacentre(trace.vms, hosts)
        self.interval = trace.interval_s
        if initial_placement is None:
            initial_placement = initial_placement_for(self.dc, trace, policy)
        self.host_of: IntArray = initial_placement.copy()
        self.mig_target: IntArray = np.full(self.dc.n_vms, -1, dtype=np.int64)
        self.acc = MetricsAccumulator(
            power_of=lambda u: power_w(self.dc.watts, u), total_mips=self.dc.total_mips
        )
        self.timeline = Timeline()
        self.epoch = trace_epoch(trace)
        domain_hosts = self.dc.domain_hosts(enforce_memory=enforce_memory)
        names = ClusterSnapshot(
            domain_hosts,
            tuple(
                Vm(n, self.dc.host_names[int(h)], 1, int(self.dc.vm_ram[i]))
                for i, (n, h) in enumerate(zip(self.dc.vm_names, self.host_of, strict=True))
            ),
        )
        self.admission = Admission(
            self.dc,
            policy,
            domain_hosts,
            policy_rules(policy, names),
            epoch=self.epoch,
            enforce_memory=enforce_memory,
        )
        self.limits = self.admission.limits

    # -- physics ------------------------------------------------------------------------------
    def _evaluate(self, t: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        dc = self.dc
        h = dc.n_hosts
        req = self.trace.utilisation_at(t) * dc.vm_mips
        mig = self.mig_target >= 0
        src = self.host_of
        cap_src = np.minimum(req, dc.pe_mips[src])
        ins = np.nonzero(mig)[0]
        dst = self.mig_target[ins]
        cap_dst = np.minimum(req[ins], dc.pe_mips[dst])
        need = np.bincount(src, cap_src, minlength=h) + np.bincount(
            dst, TARGET_SHARE * cap_dst, minlength=h
        )
        scale = np.where(need > dc.total_mips, dc.total_mips / np.maximum(need, 1e-12), 1.0)
        keep = np.where(mig, 1.0 - MIGRATION_DEGRADATION, 1.0)
        alloc_src = cap_src * keep * scale[src]
        alloc_dst = cap_dst * TARGET_SHARE * scale[dst]
        used: FloatArray = (
            np.bincount(src, alloc_src / keep, minlength=h)
            + np.bincount(dst, alloc_dst, minlength=h)
        ).astype(np.float64)
        host_req: FloatArray = (
            np.bincount(src, req, minlength=h) + np.bincount(dst, req[ins], minlength=h)
        ).astype(np.float64)
        power = self.acc.record(t, used, host_req, alloc_src, req, mig)
        return used, host_req, power

    # -- one interval -------------------------------------------------------------------------
    def _cpu_figure(self, k: int, demand_mips: FloatArray) -> IntArray:
        """The CPU (mc) the pre-checks hold each VM to: the planner's figure (current use in
        consolidate mode, else the policy's percentile of the recent history, at least current
        use), from the trace as `snapshot_of` shows it to the planner."""
        cur: IntArray = np.rint(demand_mips).astype(np.int64)
        if objective_for(Mode(self.policy.mode)).cpu_demand is CpuDemand.CURRENT:
            return cur
        pred = self.policy.targets.prediction
        lo = max(0, k - pred.window + 1)
        hist = np.rint(self.trace.cpu[:, lo : k + 1] * self.dc.vm_mips[:, None]).astype(np.int64)
        n = hist.shape[1]
        rank = max(1, min(n, -(-int(pred.percentile * n) // 100)))
        high: IntArray = np.sort(hist, axis=1)[:, rank - 1]
        return np.maximum(cur, high)

    def run(self, progress: ProgressFn | None = None) -> ReplayResult:
        started = time.perf_counter()
        n = self.trace.samples
        duration = n * self.interval
        for k in range(n):
            t0 = k * self.interval
            t1 = t0 + self.interval
            used, host_req, power = self._evaluate(t0)
            lim = self.policy.limits
            mib_left = self.limits.mib_left(t0)
            left_moves = lim.max_per_cycle
            view = View(
                t=t0,
                now=self.epoch + t0,
                sample=k,
                dc=self.dc,
                trace=self.trace,
                host_of=self.host_of.copy(),
                demand_mips=self.trace.cpu[:, k] * self.dc.vm_mips,
                frozen=self.limits.frozen(t0),
                max_moves=left_moves,
                max_mib=None if mib_left is None else max(0, int(mib_left)),
                enforce_memory=self.enforce_memory,
            )
            steps = self.decider.decide(view) if left_moves > 0 else ()
            admitted, peak = self.admission.schedule(
                steps, t0, t1, self.host_of, self._cpu_figure(k, view.demand_mips)
            )
            self.acc.peak_concurrent = max(self.acc.peak_concurrent, peak)
            self.acc.migrations += len(admitted)
            self.acc.bytes_moved += int(sum(self.dc.vm_ram[m.vm] for _, _, m in admitted)) * _MIB
            events = [(start, 0, m) for start, _, m in admitted]
            events += [(end, 1, m) for _, end, m in admitted]
            events.sort(key=lambda e: (e[0], e[1], e[2].vm))
            i = 0
            first = True
            while i < len(events):
                tau = events[i][0]
                while i < len(events) and events[i][0] == tau:
                    _, kind, mv = events[i]
                    if kind == 0:
                        self.mig_target[mv.vm] = mv.target
                    else:
                        self.host_of[mv.vm] = mv.target
                        self.mig_target[mv.vm] = -1
                    i += 1
                u2, r2, p2 = self._evaluate(tau)
                if first and tau == t0:
                    used, host_req, power = u2, r2, p2
                first = False
            on = used > 0
            self.timeline.hours.append(t0 / 3600.0)
            self.timeline.active_hosts.append(int(np.count_nonzero(on)))
            self.timeline.power_kw.append(float(np.sum(np.where(on, power, 0.0))) / 1000.0)
            self.timeline.overloaded_hosts.append(
                int(np.count_nonzero(on & (used < host_req * (1 - 1e-9) - 1e-12)))
            )
            self.timeline.migrations.append(len(admitted))
            if progress is not None:
                progress(k + 1, n)
        self._evaluate(duration)
        wall = time.perf_counter() - started
        notes: list[str] = []
        statuses = getattr(self.decider, "statuses", None)
        if statuses:
            notes.append("planner status: " + ", ".join(f"{k}={v}" for k, v in statuses.items()))
        limited = getattr(self.decider, "wall_limited", 0)
        if limited:
            notes.append(
                f"planner hit its wall-clock limit in {limited} cycles: "
                "this run may not repeat exactly (raise --time-limit)"
            )
        return ReplayResult(
            decider=self.decider.name,
            trace=self.trace.name,
            vms=self.dc.n_vms,
            hosts=self.dc.n_hosts,
            duration_s=duration,
            summary=self.acc.summary(self.dc.n_vms, duration),
            timeline=self.timeline,
            wall_s=wall,
            limit_blocks=dict(self.limits.blocked),
            notes=notes,
        )


def initial_placement_for(dc: DataCentre, trace: Trace, policy: Policy) -> IntArray:
    """PABFD on the first sample, filling hosts up to the policy's high watermark."""
    return pabfd(dc, trace.cpu[:, 0] * dc.vm_mips, max_utilisation=policy.targets.high_watermark)


class ThresholdMmt:
    """CloudSim's THR-MMT (static threshold, minimum migration time) as a reference decider.

    Written from the published algorithm (Beloglazov & Buyya 2012) to check this replay against
    the reference table; not a rebalancerd policy. Each interval: hosts whose requested MIPS
    exceed `threshold` of their capacity give up their smallest-RAM VMs until they are below it;
    those VMs go by PABFD to hosts that stay below the threshold; then hosts are taken from the
    least utilised up and emptied when every VM on them finds a place. As in CloudSim's code:
    a host's power increase is its power after the round's planned VMs minus its power at the
    interval start (`host.getPower()` is not updated while planning); underloaded hosts are
    ranked by their utilisation at the start; hosts off at the start are neither candidates nor
    targets of the underload phase; hosts already processed are not targets.
    Replay it with a policy without limits (CloudSim has none).
    """

    def __init__(self, threshold: float = 0.8) -> None:
        self.threshold = threshold
        self.name = f"THR-MMT {threshold}"

    def decide(self, view: View) -> Sequence[Sequence[ProposedMove]]:
        dc = view.dc
        thr = self.threshold
        req = view.demand_mips
        load = np.bincount(view.host_of, req, minlength=dc.n_hosts).astype(np.float64)
        start_load = load.copy()
        start_power = power_w(dc.watts, load / dc.total_mips)
        count = np.bincount(view.host_of, minlength=dc.n_hosts)
        members: list[list[int]] = [[] for _ in range(dc.n_hosts)]
        for v in range(dc.n_vms):
            members[int(view.host_of[v])].append(v)
        moves: list[ProposedMove] = []
        target_of: dict[int, int] = {}

        def find_host(v: int, excluded: BoolArray) -> int:
            after = load + req[v]
            ok = (
                ~excluded
                & (dc.pe_mips >= req[v])
                & (after <= dc.total_mips)
                & ((count == 0) | (after <= thr * dc.total_mips))
            )
            if not ok.any():
                return -1
            # CloudSim: power after (with this round's planned VMs) minus the host's power at
            # the interval start (host.getPower() is not updated while planning)
            diff = power_w(dc.watts, after / dc.total_mips) - start_power
            return int(np.argmin(np.where(ok, diff, np.inf)))

        over = load > thr * dc.total_mips
        to_move: list[int] = []
        for oh in np.nonzero(over)[0].tolist():
            vms = sorted(members[oh], key=lambda v: (dc.vm_ram[v], v))
            left = float(load[oh])
            for v in vms:
                if left <= thr * dc.total_mips[oh]:
                    break
                to_move.append(v)
                left -= req[v]
        excluded = over.copy()
        # VMs leave their hosts first (CloudSim deallocates them before placing)
        for v in to_move:
            load[view.host_of[v]] -= req[v]
            count[view.host_of[v]] -= 1
        for v in sorted(to_move, key=lambda v: (-req[v], v)):
            th = find_host(v, excluded)
            if th < 0:
                load[view.host_of[v]] += req[v]
                count[view.host_of[v]] += 1
                continue
            load[th] += req[v]
            count[th] += 1
            target_of[v] = th
            moves.append(ProposedMove(v, int(view.host_of[v]), th, "overload"))
        # underloaded hosts, ranked by their utilisation at the interval start; hosts off at the
        # start are neither candidates nor targets (CloudSim's switched-off hosts)
        util = start_load / dc.total_mips
        off = start_load <= 0
        skip_under = excluded | off
        place_excl = excluded | off
        while True:
            cand = np.where(skip_under | (util <= 0), np.inf, util)
            h = int(np.argmin(cand))
            if not np.isfinite(float(cand[h])):
                break
            skip_under[h] = True
            place_excl[h] = True
            vms = [v for v in members[h] if v not in target_of]
            if not vms:
                continue
            saved_load, saved_count = load.copy(), count.copy()
            trial: list[tuple[int, int]] = []
            for v in sorted(vms, key=lambda v: (-req[v], v)):
                t = find_host(v, place_excl)
                if t < 0:
                    trial = []
                    break
                load[h] -= req[v]
                count[h] -= 1
                load[t] += req[v]
                count[t] += 1
                trial.append((v, t))
            if not trial:
                load, count = saved_load, saved_count
                continue
            for v, t in trial:
                target_of[v] = t
                moves.append(ProposedMove(v, h, t, "underload"))
                skip_under[t] = True
        return [moves] if moves else []


def unlimited_policy(base: Policy) -> Policy:
    """The same policy without migration limits (how CloudSim's algorithms run)."""
    lim = base.limits.model_copy(
        update={
            "max_concurrent": 1000,
            "max_per_source": 100,
            "max_per_target": 100,
            "max_per_cycle": 100_000,
            "cooldown_s": 0.0,
            "max_mib_per_hour": None,
        }
    )
    return base.model_copy(update={"limits": lim})
