"""The executor's persistent state: an intent journal, outcomes, per-VM cooldowns, the
bytes-per-hour ledger and what adaptive concurrency learned (per scope), in SQLite under the state
directory (``<state_dir>/journal.sqlite3``).

Rules:
- an intent is committed (fsynced: rollback journal, synchronous=FULL) BEFORE a migration starts;
  its outcome is written after the migration has been verified;
- an intent without an outcome after a restart is an *open* move: ``Executor.reconcile`` resolves
  it against the hypervisors and never re-runs it;
- every write raises ``JournalError`` (one line) when the database cannot be written (read-only
  file system, full disk): the executor then refuses to act.

Times are wall-clock epoch seconds (they must survive a restart). Calls are synchronous and short
(a few small transactions per migration).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import astuple, dataclass
from pathlib import Path

JOURNAL_FILE = "journal.sqlite3"
SCHEMA_VERSION = 1

OPEN_STATES = ("intent", "unverified", "conflict")
"""Outcomes that leave a move to be resolved by reconcile."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS moves (
    id TEXT PRIMARY KEY,
    vm TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    mib INTEGER NOT NULL,
    time_budget_s REAL NOT NULL,
    started REAL NOT NULL,
    state TEXT NOT NULL,
    ended REAL,
    detail TEXT,
    downtime_ms REAL,
    duration_s REAL
);
CREATE INDEX IF NOT EXISTS moves_state ON moves(state);
CREATE INDEX IF NOT EXISTS moves_started ON moves(started);
CREATE TABLE IF NOT EXISTS cooldowns (vm TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ha_steps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    incident TEXT NOT NULL,
    host TEXT NOT NULL,
    vm TEXT,
    step TEXT NOT NULL,
    at REAL NOT NULL,
    target TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS ha_steps_incident ON ha_steps(incident);
CREATE TABLE IF NOT EXISTS vm_seen (
    vm TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    cpu_mc INTEGER NOT NULL,
    local_disk_mib INTEGER NOT NULL,
    tags TEXT NOT NULL,
    xml TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS power_actions (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    action TEXT NOT NULL,
    driver TEXT NOT NULL,
    reason TEXT NOT NULL,
    started REAL NOT NULL,
    state TEXT NOT NULL,
    ended REAL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS power_actions_started ON power_actions(started);
CREATE TABLE IF NOT EXISTS power_hosts (
    host TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS adaptive (
    scope TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


class JournalError(Exception):
    """The journal could not be opened or written. One line."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    id: str
    vm: str
    source: str
    target: str
    reason: str
    mib: int
    time_budget_s: float
    started: float
    state: str
    ended: float | None = None
    detail: str | None = None
    downtime_ms: float | None = None
    duration_s: float | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True, slots=True)
class HaStep:
    seq: int
    incident: str
    host: str
    vm: str | None
    step: str
    at: float
    target: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class SeenVm:
    """Where a VM was last seen, its size, and (for an HA VM) its persistent definition."""

    vm: str
    host: str
    vcpus: int
    memory_mib: int
    cpu_mc: int
    local_disk_mib: int
    tags: str
    """Comma-separated."""
    xml: str | None


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class Journal:
    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: str | Path) -> Journal:
        """Open (creating if needed) the journal in `state_dir`; ``":memory:"`` for tests."""
        if str(state_dir) == ":memory:":
            path = ":memory:"
        else:
            d = Path(state_dir)
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise JournalError(f"cannot create state directory {d}: {_one_line(e)}") from e
            path = str(d / JOURNAL_FILE)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as e:
            raise JournalError(f"cannot open journal {path}: {_one_line(e)}") from e
        j = cls(conn, path)
        try:
            with j._tx() as c:
                c.executescript(_SCHEMA)
                c.execute(
                    "INSERT OR IGNORE INTO meta(k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        except JournalError:
            # An existing journal on a read-only file system still opens (reads work); the
            # executor finds out it cannot write and refuses to act.
            if not j._has_schema():
                raise
        return j

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _has_schema(self) -> bool:
        try:
            row = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='moves'"
            ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    # -- transactions -------------------------------------------------------------------------
    class _Tx:
        def __init__(self, j: Journal) -> None:
            self.j = j

        def __enter__(self) -> sqlite3.Connection:
            self.j._lock.acquire()
            try:
                self.j._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                self.j._lock.release()
                raise JournalError(f"journal {self.j.path} not writable: {_one_line(e)}") from e
            return self.j._conn

        def __exit__(self, et: object, ev: BaseException | None, tb: object) -> None:
            conn = self.j._conn
            try:
                if ev is None:
                    try:
                        conn.execute("COMMIT")
                    except sqlite3.Error as e:
                        _rollback(conn)
                        raise JournalError(
                            f"journal {self.j.path} not writable: {_one_line(e)}"
                        ) from e
                else:
                    _rollback(conn)
                    if isinstance(ev, sqlite3.Error):
                        raise JournalError(
                            f"journal {self.j.path} not writable: {_one_line(ev)}"
                        ) from ev
            finally:
                self.j._lock.release()

    def _tx(self) -> Journal._Tx:
        return Journal._Tx(self)

    def probe_error(self) -> str | None:
        """None if a write can be committed right now, else why not (one line naming the file)."""
        try:
            with self._tx() as c:
                c.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('probe', '1')")
        except JournalError as e:
            return str(e)
        return None

    def probe(self) -> bool:
        """True if a write can be committed right now."""
        return self.probe_error() is None

    # -- moves --------------------------------------------------------------------------------
    def record_intent(
        self,
        move_id: str,
        vm: str,
        source: str,
        target: str,
        reason: str,
        mib: int,
        time_budget_s: float,
        now: float,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO moves(id, vm, source, target, reason, mib, time_budget_s, started,"
                " state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'intent')",
                (move_id, vm, source, target, reason, mib, time_budget_s, now),
            )

    def record_outcome(
        self,
        move_id: str,
        state: str,
        now: float,
        *,
        detail: str | None = None,
        downtime_ms: float | None = None,
        duration_s: float | None = None,
    ) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE moves SET state=?, ended=?, detail=?, downtime_ms=?, duration_s=?"
                " WHERE id=?",
                (state, now, detail, downtime_ms, duration_s, move_id),
            )
            if cur.rowcount != 1:
                raise JournalError(f"journal has no move {move_id!r}")

    def _rows(self, where: str, args: tuple[object, ...]) -> list[JournalEntry]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, vm, source, target, reason, mib, time_budget_s, started, state, ended,"
                f" detail, downtime_ms, duration_s FROM moves {where}",
                args,
            ).fetchall()
        return [JournalEntry(*r) for r in rows]

    def open_moves(self) -> list[JournalEntry]:
        """Moves with an intent and no final outcome (oldest first)."""
        marks = ",".join("?" for _ in OPEN_STATES)
        return self._rows(f"WHERE state IN ({marks}) ORDER BY started, id", OPEN_STATES)

    def move(self, move_id: str) -> JournalEntry | None:
        rows = self._rows("WHERE id=?", (move_id,))
        return rows[0] if rows else None

    def moves(self, since: float | None = None) -> list[JournalEntry]:
        if since is None:
            return self._rows("ORDER BY started, id", ())
        return self._rows("WHERE started >= ? ORDER BY started, id", (since,))

    def mib_since(self, since: float) -> int:
        """MiB of every move started at or after `since` (the bytes-per-hour ledger: an
        attempt counts whether or not it succeeded, since its bytes crossed the network)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COALESCE(SUM(mib), 0) FROM moves WHERE started >= ?", (since,)
            ).fetchone()
        return int(row[0])

    def departures(self, since: float, exempt: tuple[str, ...] = ()) -> dict[str, set[str]]:
        """VM -> the hosts it left by a move that succeeded at or after `since` (moves whose
        reason is in `exempt` aside): what the return guard reads."""
        marks = ",".join("?" for _ in exempt) or "''"
        with self._lock:
            rows = self._conn.execute(
                "SELECT vm, source FROM moves WHERE state='succeeded' AND ended >= ?"
                f" AND reason NOT IN ({marks})",
                (since, *exempt),
            ).fetchall()
        out: dict[str, set[str]] = {}
        for vm, source in rows:
            out.setdefault(str(vm), set()).add(str(source))
        return out

    # -- cooldowns ----------------------------------------------------------------------------
    def set_cooldown(self, vm: str, until: float) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO cooldowns(vm, until) VALUES (?, ?)"
                " ON CONFLICT(vm) DO UPDATE SET until=max(until, excluded.until)",
                (vm, until),
            )

    def cooldowns(self, now: float) -> dict[str, float]:
        """VM -> wall time its cooldown ends, for cooldowns still running at `now`."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT vm, until FROM cooldowns WHERE until > ?", (now,)
            ).fetchall()
        return {str(vm): float(u) for vm, u in rows}

    # -- dead hosts (execution/ha.py) ---------------------------------------------------------
    def record_ha_step(
        self,
        incident: str,
        host: str,
        step: str,
        now: float,
        *,
        vm: str | None = None,
        target: str | None = None,
        detail: str | None = None,
    ) -> None:
        """One step of a dead-host incident (fence_requested, fence_confirmed, fence_failed,
        restart_started, restart_running, restart_failed, host_back), committed before the
        caller goes on."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO ha_steps(incident, host, vm, step, at, target, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (incident, host, vm, step, now, target, detail),
            )

    def ha_steps(self, incident: str | None = None) -> list[HaStep]:
        """Steps in order (of one incident, or all)."""
        where, args = ("WHERE incident=?", (incident,)) if incident is not None else ("", ())
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, incident, host, vm, step, at, target, detail FROM ha_steps"
                f" {where} ORDER BY seq",
                args,
            ).fetchall()
        return [HaStep(*r) for r in rows]

    def save_seen(self, rows: list[SeenVm], now: float) -> None:
        """Remember where VMs were last seen (and the definitions of HA VMs)."""
        if not rows:
            return
        with self._tx() as c:
            c.executemany(
                "INSERT INTO vm_seen(vm, host, vcpus, memory_mib, cpu_mc, local_disk_mib, tags,"
                " xml, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(vm) DO UPDATE SET"
                " host=excluded.host, vcpus=excluded.vcpus, memory_mib=excluded.memory_mib,"
                " cpu_mc=excluded.cpu_mc, local_disk_mib=excluded.local_disk_mib,"
                " tags=excluded.tags, xml=excluded.xml, updated=excluded.updated",
                [(*astuple(r), now) for r in rows],
            )

    def seen(self) -> list[SeenVm]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT vm, host, vcpus, memory_mib, cpu_mc, local_disk_mib, tags, xml"
                " FROM vm_seen ORDER BY vm"
            ).fetchall()
        return [SeenVm(*r) for r in rows]

    # -- adaptive concurrency -----------------------------------------------------------------
    def save_adaptive(self, states: dict[str, str], now: float) -> None:
        """Store the learned adaptive-concurrency state of some scopes (scope -> JSON text)."""
        if not states:
            return
        with self._tx() as c:
            c.executemany(
                "INSERT INTO adaptive(scope, state, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(scope) DO UPDATE SET state=excluded.state, updated=excluded.updated",
                [(k, v, now) for k, v in states.items()],
            )

    def adaptive_state(self) -> dict[str, str]:
        """Scope -> JSON text of what adaptive concurrency learned (empty for a new journal)."""
        try:
            with self._lock:
                rows = self._conn.execute("SELECT scope, state FROM adaptive").fetchall()
        except sqlite3.Error as e:
            raise JournalError(f"journal {self.path} unreadable: {_one_line(e)}") from e
        return {str(k): str(v) for k, v in rows}

    # -- power actions ------------------------------------------------------------------------
    def record_power_intent(
        self, action_id: str, host: str, action: str, driver: str, reason: str, now: float
    ) -> None:
        """A power action about to be sent to a driver (committed before the driver is called)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO power_actions(id, host, action, driver, reason, started, state)"
                " VALUES (?, ?, ?, ?, ?, ?, 'intent')",
                (action_id, host, action, driver, reason, now),
            )

    def record_power_outcome(
        self, action_id: str, state: str, now: float, detail: str | None = None
    ) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE power_actions SET state=?, ended=?, detail=? WHERE id=?",
                (state, now, detail, action_id),
            )
            if cur.rowcount != 1:
                raise JournalError(f"journal has no power action {action_id!r}")

    def power_actions(self, since: float | None = None) -> list[dict[str, object]]:
        """Power actions started at or after `since` (all if None), oldest first."""
        q = "SELECT id, host, action, driver, reason, started, state, ended, detail"
        q += " FROM power_actions"
        args: tuple[object, ...] = ()
        if since is not None:
            q += " WHERE started >= ?"
            args = (since,)
        try:
            with self._lock:
                rows = self._conn.execute(q + " ORDER BY started, rowid", args).fetchall()
        except sqlite3.Error as e:
            raise JournalError(f"journal {self.path} unreadable: {_one_line(e)}") from e
        keys = ("id", "host", "action", "driver", "reason", "started", "state", "ended", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def set_power_host(self, host: str, state: str | None, now: float) -> None:
        """The power state rebalancerd holds for a host (standby, waking, failed_wake); None
        forgets it (the host is back in telemetry's hands)."""
        with self._tx() as c:
            if state is None:
                c.execute("DELETE FROM power_hosts WHERE host=?", (host,))
            else:
                c.execute(
                    "INSERT INTO power_hosts(host, state, since) VALUES (?, ?, ?)"
                    " ON CONFLICT(host) DO UPDATE SET state=excluded.state, since=excluded.since",
                    (host, state, now),
                )

    def power_hosts(self) -> dict[str, tuple[str, float]]:
        """host -> (state, since) of the hosts rebalancerd switched off or on."""
        try:
            with self._lock:
                rows = self._conn.execute("SELECT host, state, since FROM power_hosts").fetchall()
        except sqlite3.Error as e:
            raise JournalError(f"journal {self.path} unreadable: {_one_line(e)}") from e
        return {str(h): (str(s), float(t)) for h, s, t in rows}
