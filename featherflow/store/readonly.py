"""The read-only queries of the screens: the dashboard and the status page (web/).

Raw SQL through a `mode=ro` connection (readconn.py: sqlite3, no peewee, for the
status page's memory), so they work where the models are bound to another database
or to none, and SQLite itself refuses any write. Every result is read to its end:
a half-read statement keeps its snapshot, and with it the WAL, alive after the
transaction ends.
"""

import json
from dataclasses import fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from featherflow.store.readconn import ReadOnlyConnection, open_plain
from featherflow.store.records import Attempt, Run, Schedule, Slot, as_backfill, as_schedule, as_slot, \
    backfill_counts, parse_times


class Reader:
    """One read-only connection and the SELECTs the screens need; nothing held between calls."""

    def __init__(self, db: ReadOnlyConnection):  # or anything with its three methods (a peewee database)
        self.db = db

    @classmethod
    def open(cls, path: Path) -> "Reader":
        return cls(open_plain(path))

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        """One short read transaction (BEGIN ... COMMIT): a refresh sees one moment."""
        return self.db.atomic()

    def _fetch(self, sql: str, params: Sequence = ()) -> List[Dict]:
        cursor = self.db.execute_sql(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def schema_version(self) -> int:
        return self.db.execute_sql("PRAGMA user_version").fetchall()[0][0]

    def scheduler(self) -> Optional[Dict]:
        rows = self._fetch("SELECT pid, pid_start, boot_id, started_at, heartbeat_at, stopped_at "
                           "FROM scheduler WHERE id = 1")
        return parse_times(rows[0], "started_at", "heartbeat_at", "stopped_at") if rows else None

    def schedules(self, flow: Optional[str], limit: int) -> List[Dict]:
        """Schedules by name, each with its newest slot and that slot's run state."""
        rows = self._fetch(
            "SELECT s.id, s.name, s.flow_name, s.cron, s.tz, s.enabled, ss.slot_at AS last_slot_at, "
            "ss.state AS last_state, ss.reason AS last_reason, ss.run_id AS last_run_id, "
            "r.state AS last_run_state "
            "FROM schedule s "
            "LEFT JOIN schedule_slot ss ON ss.id = (SELECT id FROM schedule_slot "
            "    WHERE schedule_id = s.id ORDER BY slot_at DESC LIMIT 1) "
            "LEFT JOIN flow_run r ON r.id = ss.run_id "
            "WHERE ? IS NULL OR s.flow_name = ? ORDER BY s.name LIMIT ?", (flow, flow, limit))
        return [parse_times(row, "last_slot_at") for row in rows]

    def runs(self, active: bool, flow: Optional[str], limit: int) -> List[Dict]:
        """Newest first: queued/running runs (index on state), or finished ones.

        Finished runs walk the primary key (or the flow_name index) backwards
        and stop at `limit`, so 100,000 runs in the history cost nothing.
        """
        columns = ("id, uid, flow_name, state, trigger, created_at, started_at, ended_at, pid, "
                   "pid_start, boot_id, reason, output_dir")
        where = "state IN ('queued', 'running')" if active else "state NOT IN ('queued', 'running')"
        params: List = []
        if flow is not None:
            # active: `+` keeps SQLite on the state index (the flow's whole history is on the other)
            where += " AND +flow_name = ?" if active else " AND flow_name = ?"
            params.append(flow)
        rows = self._fetch(f"SELECT {columns} FROM flow_run WHERE {where} ORDER BY id DESC LIMIT ?",
                           params + [limit])
        return [parse_times(row, "created_at", "started_at", "ended_at") for row in rows]

    def attempt_states(self, run_ids: Sequence[int]) -> List[Dict]:
        """(run_id, task_id, attempt, state) of every attempt of these runs."""
        if not run_ids:
            return []
        marks = ", ".join("?" * len(run_ids))
        return self._fetch(f"SELECT run_id, task_id, attempt, state FROM task_attempt "
                           f"WHERE run_id IN ({marks}) ORDER BY run_id, task_id, attempt", run_ids)

    def run(self, run_id: int) -> Optional[Run]:
        """The whole run (with its snapshot), or None when it is gone (pruned)."""
        names = [f"r.{f.name}" for f in fields(Run) if f.name not in ("failed_tasks", "snapshot")]
        # This connection never migrates: a database still at version 2 keeps snapshots in flow_run.
        table, key = ("run_snapshot", "run_id") if self.schema_version() >= 3 else ("flow_run", "id")
        rows = self._fetch(f"SELECT {', '.join(names)}, (SELECT snapshot FROM {table} WHERE {key} = r.id) "
                           f"AS snapshot FROM flow_run r WHERE r.id = ?", (run_id,))
        if not rows:
            return None
        row = parse_times(rows[0], "scheduled_at", "created_at", "started_at", "ended_at")
        row["params"] = json.loads(row["params"])
        row["auto_resumed"] = bool(row["auto_resumed"])
        return Run(**row)

    def attempts(self, run_id: int) -> List[Attempt]:
        rows = self._fetch("SELECT run_id, task_id, attempt, state, created_at, started_at, ended_at, "
                           "exit_code, reason FROM task_attempt WHERE run_id = ? "
                           "ORDER BY task_id, attempt", (run_id,))
        return [Attempt(**parse_times(row, "created_at", "started_at", "ended_at")) for row in rows]

    # -- whole records, for the status page's JSON (the same documents as the CLI's) --

    def run_records(self, limit: int, before: Optional[int] = None) -> List[Run]:
        """Newest first, without snapshots, failed runs with their failed tasks (as
        Store.list_runs); `before`: only ids below it (the next page). LIMITed: the
        primary key walked backwards, so the history's size costs nothing."""
        names = [f.name for f in fields(Run) if f.name not in ("failed_tasks", "snapshot")]
        rows = self._fetch(f"SELECT {', '.join(names)} FROM flow_run WHERE ? IS NULL OR id < ? "
                           f"ORDER BY id DESC LIMIT ?", (before, before, limit))
        runs = []
        for row in rows:
            row = parse_times(row, "scheduled_at", "created_at", "started_at", "ended_at")
            row["params"] = json.loads(row["params"])
            row["auto_resumed"] = bool(row["auto_resumed"])
            runs.append(Run(snapshot=None, **row))
        failed = [r.id for r in runs if r.state == "failed"]
        latest: Dict = {}
        for row in self.attempt_states(failed):
            latest[(row["run_id"], row["task_id"])] = row["state"]
        for run in runs:
            if run.state == "failed":
                run.failed_tasks = [t for (r, t), state in latest.items() if r == run.id and state == "failed"]
        return runs

    def run_count(self) -> int:
        return self._fetch("SELECT COUNT(*) AS n FROM flow_run")[0]["n"]

    def schedule_records(self, limit: int) -> List[Schedule]:
        names = [f.name for f in fields(Schedule)]
        return [as_schedule(row) for row in self._fetch(
            f"SELECT {', '.join(names)} FROM schedule ORDER BY name LIMIT ?", (limit,))]

    def schedule_record(self, name: str) -> Optional[Schedule]:
        names = [f.name for f in fields(Schedule)]
        rows = self._fetch(f"SELECT {', '.join(names)} FROM schedule WHERE name = ?", (name,))
        return as_schedule(rows[0]) if rows else None

    def slots(self, schedule_id: int, limit: int) -> List[Slot]:
        """Newest first, each with its run's state (Store.schedules.recent_slots)."""
        rows = self._fetch("SELECT ss.schedule_id AS schedule, ss.slot_at, ss.state, ss.reason, ss.run_id AS run, "
                           "ss.created_at, r.state AS run_state FROM schedule_slot ss "
                           "LEFT JOIN flow_run r ON r.id = ss.run_id WHERE ss.schedule_id = ? "
                           "ORDER BY ss.slot_at DESC LIMIT ?", (schedule_id, limit))
        return [as_slot(row) for row in rows]

    def latest_slot_at(self, schedule_id: int):
        rows = self._fetch("SELECT MAX(slot_at) AS latest FROM schedule_slot WHERE schedule_id = ?", (schedule_id,))
        return parse_times(rows[0], "latest")["latest"]

    def outbox_counts(self) -> Dict[str, int]:
        """Deliveries by state (pending, failed, ...); {} before the outbox existed (schema < 4)."""
        if self.schema_version() < 4:
            return {}
        return {row["state"]: row["n"] for row in self._fetch(
            "SELECT state, COUNT(*) AS n FROM delivery GROUP BY state")}

    def backfills(self, schedule_id: Optional[int], limit: int) -> List:
        """The newest backfills (of one schedule, or of all) with their counts
        (Store.backfills.list); [] before backfills existed."""
        if not self.has_table("backfill"):
            return []
        where = "" if schedule_id is None else "WHERE schedule_id = ? "
        found = [as_backfill(row) for row in self._fetch(
            f"SELECT *, schedule_id AS schedule FROM backfill {where}ORDER BY id DESC LIMIT ?",
            ([] if schedule_id is None else [schedule_id]) + [limit])]
        for b in found:
            b.counts = backfill_counts(
                (r["state"], r["outcome"], r["n"]) for r in self._fetch(
                    "SELECT state, outcome, COUNT(*) AS n FROM backfill_slot WHERE backfill_id = ? "
                    "GROUP BY state, outcome", (b.id,)))
        return found

    def has_table(self, name: str) -> bool:
        """For what other branches add (pools, backfills): shown only where the table exists."""
        return bool(self._fetch("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def rows_of(self, table: str, limit: int) -> List[Dict]:
        """The newest rows of a table named by the code (never by a request), for a generic listing."""
        if not table.isidentifier():
            raise ValueError(f"bad table name {table!r}")
        return self._fetch(f'SELECT * FROM "{table}" ORDER BY rowid DESC LIMIT ?', (limit,))
