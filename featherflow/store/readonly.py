"""The read-only queries of the screens: the dashboard now, a status page later.

Raw SQL through a `mode=ro` connection (db.open_read_only), so they work where
the models are bound to another database or to none, and SQLite itself refuses
any write. Every result is read to its end: a half-read statement keeps its
snapshot, and with it the WAL, alive after the transaction ends.
"""

import json
from dataclasses import fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from peewee import SqliteDatabase

from featherflow.store.db import open_read_only
from featherflow.store.records import Attempt, Run, parse_times


class Reader:
    """One read-only connection and the SELECTs the screens need; nothing held between calls."""

    def __init__(self, db: SqliteDatabase):
        self.db = db

    @classmethod
    def open(cls, path: Path) -> "Reader":
        return cls(open_read_only(path))

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
