"""Band tightening (a per-host potential around the mean), its repairs (moves, swaps, chains),
and the longer band run after CP-SAT (reband)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rebalancerd.planner import objective as obj
from rebalancerd.planner.greedy.context import GreedyContext
from rebalancerd.planner.greedy.view import TOL, HostLoadView, smallest
from rebalancerd.planner.state import State

# -- phase 4a'': band tightening ------------------------------------------------------------
BAND_SHRINK = 0.005
"""Each band pass asks every host to sit within (worst gap / 2 - this) of the mean."""
BAND_PASSES = 12
BAND_VM_MOVES = 2
"""A VM moves at most this many times across the band passes."""
REBAND_PASSES = 40
REBAND_VM_MOVES = 4
"""Band passes and moves per VM after CP-SAT (repolish): the LNS rounds leave a few hosts
out of the band that longer chains of band repairs bring in (2,000 hosts, one in
maintenance: memory gap 0.102 -> 0.090, then the polish 0.078)."""
REBAND_MIN_HOSTS = 256
"""Only above this many balancing hosts (ties at the extremes are a large-cluster effect; on
small clusters CP-SAT's placement already weighs each move's cost, and the band's extra moves
would only buy spread)."""


def _phi_fn(w_n: tuple[float, float], mean: list[float]) -> Any:
    """The band potential of hosts with `c` / `m` used out of `rc` / `rm` raw capacity: the
    weighted sum of squared excursions outside (mean +- t). Elementwise, so evaluating it on
    any subset of candidates gives bit-identical values."""

    def phi(c: Any, m: Any, rc: Any, rm: Any, t: float) -> Any:
        out = 0.0
        for q, used_q, raw_q in ((0, c, rc), (1, m, rm)):
            if w_n[q] > 0:
                x = np.maximum(np.abs(used_q / raw_q - mean[q]) - t, 0.0)
                out = out + w_n[q] * x * x
        return out

    return phi


class _BandVms:
    """Per-VM copies of the band pass's per-host figures (the VM's host: used, raw, capacity,
    potential, and the used/potential once the VM has left), kept up to date for the VMs of the
    two hosts each move touches instead of being gathered across all VMs for every repair."""

    def __init__(
        self,
        ctx: GreedyContext,
        env: HostLoadView,
        vpos: Any,
        phi: Any,
        w_n: tuple[float, float],
        mean: list[float],
    ) -> None:
        self.p, self.s, self.env, self.vpos, self.phi = ctx.p, ctx.s, env, vpos, phi
        self.w_n, self.mean = w_n, mean
        n = ctx.p.n_vms
        self.size = (np.array(ctx.p.cpu, dtype=np.int64), np.array(ctx.p.mem, dtype=np.int64))
        self.rem = (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
        """Used on the VM's host without the VM."""
        self.raw = (np.ones(n, dtype=np.float64), np.ones(n, dtype=np.float64))
        self.cap = (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
        self.cphi = np.zeros(n, dtype=np.float64)
        """Potential of the VM's host now."""
        self.nc = np.zeros(n, dtype=np.float64)
        """Potential of the VM's host once the VM has left."""
        self.by_size = [np.argsort(self.size[q], kind="stable") for q in (0, 1)]
        # as floats (exact for any size) so that bisection with a float key does not
        # convert the whole array on every call
        self.sorted_size = [self.size[q][self.by_size[q]].astype(np.float64) for q in (0, 1)]

    def candidates(
        self, elig: Any, base: tuple[int, int], win: list[tuple[float, float] | None]
    ) -> Any:
        """The eligible VMs, in index order, whose size added to `base` may fall inside the
        window, found by bisection on the sizes of the resource whose window holds fewer VMs
        (the other resource's window is left to the caller)."""
        pick: tuple[int, int, int] | None = None
        for q in (0, 1):
            lim = win[q]
            if lim is None:
                continue
            lo = int(np.searchsorted(self.sorted_size[q], lim[0] - base[q], side="right"))
            hi = int(np.searchsorted(self.sorted_size[q], lim[1] - base[q], side="left"))
            if pick is None or hi - lo < pick[2] - pick[1]:
                pick = (q, lo, hi)
        if pick is None:
            return np.nonzero(elig)[0]
        q, lo, hi = pick
        c = self.by_size[q][lo:hi]
        return np.sort(c[elig[c]])

    def reset(self, cur_phi: Any, t: float) -> None:
        """Everything from scratch (each pass: new band, moves undone)."""
        on = self.vpos >= 0
        idx = np.nonzero(on)[0]
        self._fill(idx, self.vpos[idx], cur_phi, t)

    def update(self, hosts: tuple[int, ...], cur_phi: Any, t: float) -> None:
        """After a move: the VMs now on the given host positions."""
        vs = [v for y in hosts for v in self.s.on[self.env.hs[y]]]
        if vs:
            idx = np.array(vs, dtype=np.int64)
            self._fill(idx, self.vpos[idx], cur_phi, t)

    def _fill(self, idx: Any, hp: Any, cur_phi: Any, t: float) -> None:
        env = self.env
        for q in (0, 1):
            self.rem[q][idx] = env.used[q][hp] - self.size[q][idx]
            self.raw[q][idx] = env.raw[q][hp]
            self.cap[q][idx] = env.cap[q][hp]
        self.cphi[idx] = cur_phi[hp]
        self.nc[idx] = self.phi(
            self.rem[0][idx], self.rem[1][idx], self.raw[0][idx], self.raw[1][idx], t
        )


def _band_window(
    w_n: tuple[float, float], mean: list[float], t: float, raw_a: Any, bound: float
) -> list[tuple[float, float] | None]:
    """Per resource, the used amounts (exclusive bounds, widened by a safety margin) that a
    host with raw capacity raw_a may reach while its potential stays below `bound`: each
    resource's term alone must stay below it. None where the resource has no weight. A
    conservative pre-filter: the exact potential is still computed for what passes."""
    out: list[tuple[float, float] | None] = []
    for q in (0, 1):
        if w_n[q] <= 0:
            out.append(None)
            continue
        r = math.sqrt(max(bound, 0.0) / w_n[q]) * (1 + 1e-6) + 1e-9
        out.append(
            (float(raw_a[q]) * (mean[q] - t - r) - 1.0, float(raw_a[q]) * (mean[q] + t + r) + 1.0)
        )
    return out


def _in_window(amount: tuple[Any, Any], win: list[tuple[float, float] | None]) -> Any:
    ok: Any = True
    for q in (0, 1):
        lim = win[q]
        if lim is not None:
            ok = ok & (amount[q] > lim[0]) & (amount[q] < lim[1])
    return ok


def band(ctx: GreedyContext, passes: int = BAND_PASSES, vm_moves: int = BAND_VM_MOVES) -> None:
    """Tighten the gaps with a per-host potential instead of the global max - min: each pass
    sets a band around the mean, a little narrower than the worst gap, and repairs the hosts
    outside it worst first (single moves out or in, then swaps), each action lowering the sum
    of squared excursions outside the band. Hosts tied at an extreme no longer block each
    other (every host that gets inside counts at once), and one stuck host does not end the
    pass. A pass is kept only if the score (worst gap, then weighted spread) improves.

    Candidate VMs are scored from per-VM copies of their host's figures (_BandVms), updated
    for the two hosts a move touches, so a repair does no gathering across all VMs; the
    choices are exactly those of scoring every VM afresh (same arithmetic per candidate, same
    order and ties)."""
    p, s = ctx.p, ctx.s
    hs = obj.balancing(p)
    if len(hs) < 3:
        return
    env = HostLoadView(ctx, hs)
    pos = env.pos
    w_n = (env.weight[0] / env.wmax, env.weight[1] / env.wmax)
    vpos = np.array([pos.get(s.where[v], -1) for v in range(p.n_vms)], dtype=np.int64)
    okv = np.array([ctx.may_move(v) and v not in p.aff_of for v in range(p.n_vms)], dtype=bool)
    home = np.array(
        [pos.get(p.origin[v], -1) if v in ctx.mandatory else -2 for v in range(p.n_vms)],
        dtype=np.int64,
    )
    times = np.zeros(p.n_vms, dtype=np.int64)
    mean = [float(env.used[q].sum() / env.raw[q].sum()) for q in (0, 1)]
    phi = _phi_fn(w_n, mean)
    vms = _BandVms(ctx, env, vpos, phi, w_n, mean)

    env.refresh()
    shrink = BAND_SHRINK
    for _ in range(passes):
        if ctx.out_of_time("band tightening"):
            break
        t = env.primary / 2 - shrink
        if t <= 0:
            break
        start = (env.primary, env.spread)
        log: list[tuple[int, int]] = []
        used, raw = env.used, env.raw
        cur_phi = phi(used[0], used[1], raw[0], raw[1], t)
        vms.reset(cur_phi, t)
        # VMs that may move in this pass (not yet excluded per attacked host)
        free = okv & (vpos >= 0) & (times < vm_moves)
        stuck: set[int] = set()
        while s.n_moves_cached < p.max_moves and not ctx.out_of_time("band tightening"):
            order = smallest(-cur_phi, 64)
            i = next((int(j) for j in order[:64] if int(j) not in stuck), -1)
            if i < 0 or cur_phi[i] <= 0:
                break
            best = _band_repair(ctx, env, vms, phi, t, cur_phi, free, vpos, home, i)
            if best is None:
                stuck.add(i)
                continue
            for v, b in best[1]:
                x = s.where[v]
                log.append((v, x))
                ctx.apply([v], b)
                times[v] += 1
                env.move(x, b, p.cpu[v], p.mem[v])
                vpos[v] = pos[b]
                free[v] = okv[v] and times[v] < vm_moves
                for y in (pos[x], pos[b]):
                    stuck.discard(y)
                    cur_phi[y] = phi(used[0][y], used[1][y], raw[0][y], raw[1][y], t)
                vms.update((pos[x], pos[b]), cur_phi, t)
        env.refresh()
        after = (env.primary, env.spread)
        if not (
            after[0] < start[0] - TOL or (after[0] <= start[0] + TOL and after[1] < start[1] - TOL)
        ):
            for v, x in reversed(log):
                b = s.where[v]
                ctx.apply([v], x)
                times[v] -= 1
                env.move(b, x, p.cpu[v], p.mem[v])
                vpos[v] = pos[x]
            env.refresh()
            if not log or shrink <= BAND_SHRINK / 4:
                break
            shrink /= 2  # a narrower step may still go through


def _band_repair(
    ctx: GreedyContext,
    env: HostLoadView,
    vms: _BandVms,
    phi: Any,
    t: float,
    cur_phi: Any,
    free: Any,
    vpos: Any,
    home: Any,
    i: int,
) -> tuple[float, list[tuple[int, int]]] | None:
    """The band pass's best action for the host at position i (outside the band): a single
    move out or in, else a swap, else a chain; (potential change, moves) or None."""
    p, s = ctx.p, ctx.s
    hs = env.hs
    used, raw, cap = env.used, env.raw, env.cap
    size = vms.size
    a = hs[i]
    on_a = sorted(s.on[a])
    best: tuple[float, list[tuple[int, int]]] | None = None
    # single moves out of a: one row per VM of a, one column per host
    outs = [v for v in on_a if free[v] and ctx.can_spend([v])]
    if outs:
        ov = np.array(outs, dtype=np.int64)
        osz = (size[0][ov], size[1][ov])
        na_all = phi(used[0][i] - osz[0], used[1][i] - osz[1], raw[0][i], raw[1][i], t)
        nused = (used[0][None, :] + osz[0][:, None], used[1][None, :] + osz[1][:, None])
        nb_all = phi(nused[0], nused[1], raw[0][None, :], raw[1][None, :], t)
        d_all = (na_all - cur_phi[i])[:, None] + nb_all - cur_phi[None, :]
        fit_all = (nused[0] <= cap[0][None, :]) & (nused[1] <= cap[1][None, :])
        d_all = np.where(fit_all, d_all, np.inf)
        d_all[:, i] = np.inf
        for row, v in enumerate(outs):
            if home[v] >= 0:
                d_all[row, home[v]] = np.inf
        gains: Any = (d_all < -1e-12).any(axis=1)
    for row, v in enumerate(outs):
        if not gains[row]:
            continue  # no host takes v with a lower potential
        d = d_all[row]
        for j in smallest(d, 3, below=-1e-12):
            if d[j] >= -1e-12:
                break
            if s.can_move(v, hs[int(j)]):
                if best is None or d[j] < best[0]:
                    best = (float(d[j]), [(v, hs[int(j)])])
                break
    # single moves into a from anywhere; every candidate list below is in VM order
    elig = free & (vpos != i) & (home != i)
    if not elig.any():
        return best
    u_a = (int(used[0][i]), int(used[1][i]))
    c_a = (cap[0][i], cap[1][i])
    r_a = (raw[0][i], raw[1][i])
    phi_a = cur_phi[i]
    # A candidate can only lower the potential if a's new potential stays below its own plus
    # the largest one its partner host can give up (every potential is >= 0).
    phi_max = float(cur_phi.max())
    win = _band_window(vms.w_n, vms.mean, t, r_a, float(phi_a) + phi_max + 1e-9)
    k_in = vms.candidates(elig, u_a, win)
    ain = (u_a[0] + size[0][k_in], u_a[1] + size[1][k_in])
    k_in = k_in[(ain[0] <= c_a[0]) & (ain[1] <= c_a[1]) & _in_window(ain, win)]
    if k_in.size:
        na = phi(u_a[0] + size[0][k_in], u_a[1] + size[1][k_in], r_a[0], r_a[1], t)
        d = na - phi_a + vms.nc[k_in] - vms.cphi[k_in]
        for k in smallest(d, 6, below=-1e-12):
            if d[k] >= -1e-12 or (best is not None and d[k] >= best[0]):
                break
            w = int(k_in[k])
            if ctx.can_spend([w]) and s.can_move(w, a):
                best = (float(d[k]), [(w, a)])
                break
    if best is not None:
        return best
    us = [u for u in on_a if free[u]]
    if not us:
        return None
    # swaps: one of a's VMs for one elsewhere (half the gain per move counts)
    for u in us:
        su = (int(size[0][u]), int(size[1][u]))
        base = (u_a[0] - su[0], u_a[1] - su[1])
        ws = vms.candidates(elig, base, win)
        an = (base[0] + size[0][ws], base[1] + size[1][ws])
        bn = (vms.rem[0][ws] + su[0], vms.rem[1][ws] + su[1])
        w_pos = vpos[ws]
        fit = (an[0] <= c_a[0]) & (an[1] <= c_a[1])
        fit &= (bn[0] <= vms.cap[0][ws]) & (bn[1] <= vms.cap[1][ws])
        fit &= w_pos != home[u]
        fit &= _in_window(an, win)
        k_sw = np.nonzero(fit)[0]
        if k_sw.size == 0:
            continue
        ws = ws[k_sw]
        na = phi(an[0][k_sw], an[1][k_sw], r_a[0], r_a[1], t)
        nb = phi(bn[0][k_sw], bn[1][k_sw], vms.raw[0][ws], vms.raw[1][ws], t)
        d = na - phi_a + nb - vms.cphi[ws]
        for k in smallest(d, 3, below=-1e-12):
            if d[k] >= -1e-12 or (best is not None and d[k] >= best[0]):
                break
            w = int(ws[k])
            b = hs[int(w_pos[k_sw[k]])]
            if not (ctx.can_spend([u, w]) and p.may_host(u, b) and p.may_host(w, a)):
                continue
            pair = feasible_pair(s, (u, b), (w, a))
            if pair:
                best = (float(d[k]), pair)
                break
    if best is not None:
        return best
    # chains: one of a's VMs to the host that minds it least, one VM from a third host in
    # (the trial moves below are undone at once, so all rows can be scored up front)
    chain_us = [u for u in us if ctx.can_spend([u])]
    if not chain_us:
        return None
    cu = np.array(chain_us, dtype=np.int64)
    nused = (used[0][None, :] + size[0][cu][:, None], used[1][None, :] + size[1][cu][:, None])
    db_all = phi(nused[0], nused[1], raw[0][None, :], raw[1][None, :], t) - cur_phi[None, :]
    fit_all = (nused[0] <= cap[0][None, :]) & (nused[1] <= cap[1][None, :])
    db_all = np.where(fit_all, db_all, np.inf)
    db_all[:, i] = np.inf
    for row, u in enumerate(chain_us):
        db = db_all[row]
        if home[u] >= 0:
            db[home[u]] = np.inf
        bi = -1
        for j in smallest(db, 3, below=np.inf):
            if np.isfinite(db[j]) and s.can_move(u, hs[int(j)]):
                bi = int(j)
                break
        if bi < 0:
            continue
        su = (int(size[0][u]), int(size[1][u]))
        base = (u_a[0] - su[0], u_a[1] - su[1])
        bound = float(phi_a) + phi_max + max(0.0, -float(db[bi])) + 1e-9
        win_ch = _band_window(vms.w_n, vms.mean, t, r_a, bound)
        ws = vms.candidates(elig, base, win_ch)
        an = (base[0] + size[0][ws], base[1] + size[1][ws])
        fit = (vpos[ws] != bi) & (ws != u) & (an[0] <= c_a[0]) & (an[1] <= c_a[1])
        fit &= _in_window(an, win_ch)
        k_ch = np.nonzero(fit)[0]
        if k_ch.size == 0:
            continue
        ws = ws[k_ch]
        na = phi(an[0][k_ch], an[1][k_ch], r_a[0], r_a[1], t)
        d = na - phi_a + vms.nc[ws] - vms.cphi[ws] + db[bi]
        for k in smallest(d, 3, below=-1e-12):
            if d[k] >= -1e-12 or (best is not None and d[k] >= best[0]):
                break
            w = int(ws[k])
            b = hs[bi]
            if not (ctx.can_spend([u, w]) and p.may_host(w, a)):
                continue
            s.move(u, b)
            good = s.can_move(w, a)
            s.move(u, a)
            if good:
                best = (float(d[k]), [(u, b), (w, a)])
                break
    return best


def feasible_pair(s: State, one: tuple[int, int], two: tuple[int, int]) -> list[tuple[int, int]]:
    """The two moves in an order that is feasible one at a time, or []."""
    for first, second in ((one, two), (two, one)):
        if not s.can_move(*first):
            continue
        src = s.where[first[0]]
        s.move(*first)
        good = s.can_move(*second)
        s.move(first[0], src)
        if good:
            return [first, second]
    return []


def reband(ctx: GreedyContext) -> None:
    """Longer band tightening (REBAND_PASSES, REBAND_VM_MOVES), kept only if it lowers the
    worse gap."""
    p, s = ctx.p, ctx.s
    before = list(s.where)
    worst = obj.worst_gap(p, s)
    band(ctx, REBAND_PASSES, REBAND_VM_MOVES)
    if obj.worst_gap(p, s) >= worst - TOL:
        # Kept only if it lowers the worse gap: a better spread alone does not pay its moves.
        for v in [v for v, h in enumerate(s.where) if h != before[v]]:
            ctx.apply([v], before[v])
