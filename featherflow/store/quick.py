"""`runs list` in the common case, through the standard library's sqlite3 alone.

Loading peewee and the store's queries costs a `runs list` more than the rest of it
together (some 40-60 ms of a Python start). When the database is there, current, in
WAL mode, private, on a writable disk, and no queued or running run in it has lost its
process (nothing for the reconcile to do), the list is read here, read only, with
the same SELECTs RunStore.list_runs makes. In any other case `list_runs` answers None
and the command takes the usual way (open and migrate, reconcile, the read-only note).
"""

import json
import os
import sqlite3
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple
from urllib.parse import quote

from featherflow import clock, proc, states
from featherflow.errors import filesystem_state
from featherflow.store.records import RUN_TIMES, Run, parse_times

_COLUMNS = ", ".join(f.name for f in fields(Run) if f.name not in ("snapshot", "failed_tasks"))


def list_runs(path: Path, private_dir: Optional[Path] = None, flow: Optional[str] = None,
              state: Optional[str] = None, since: Optional[datetime] = None, limit: Optional[int] = 20,
              current_boot: Optional[str] = None, trigger: Optional[str] = None) -> Optional[Tuple[List[Run], Optional[int]]]:
    """(runs newest first, the number of runs when none matched), or None: then the usual store."""
    path = Path(path).absolute()
    try:
        if path.stat().st_mode & 0o077 or not _private(private_dir, path) or filesystem_state(path):
            return None  # opening it the usual way makes it private, or says what is wrong
        # (The file is never opened here but by SQLite: closing a descriptor of it would drop
        # the POSIX locks of every other connection this process has to it.)
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=2, isolation_level=None)
    except (OSError, sqlite3.Error):
        return None
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # a read: it changes nothing
            return None
        conn.execute("BEGIN")  # one snapshot for every SELECT below
        if conn.execute("PRAGMA user_version").fetchone()[0] != states.SCHEMA_VERSION:
            return None
        current_boot = proc.boot_id() if current_boot is None else current_boot
        for pid, pid_start, boot_id in conn.execute(
                "SELECT pid, pid_start, boot_id FROM flow_run WHERE state IN (?, ?)",
                (states.QUEUED, states.RUNNING)).fetchall():
            if not proc.is_alive(pid, pid_start, boot_id, current_boot):
                return None  # an orphan: the reconcile marks it interrupted first
        runs = _select(conn, flow, state, since, limit, trigger)
        total = None if runs else conn.execute("SELECT COUNT(id) FROM flow_run").fetchone()[0]
        conn.execute("COMMIT")
        return runs, total
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _select(conn, flow, state, since, limit, trigger=None) -> List[Run]:
    """RunStore.list_runs's query and its failed tasks, in raw SQL."""
    where, params = [], []
    for column, value in (("flow_name", flow), ("state", state), ("trigger", trigger)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        stamp = clock.to_text(since)
        # As in RunStore.list_runs: from the window's lowest id, found in the created_at index.
        where.append("created_at >= ? AND id >= (SELECT MIN(id) FROM flow_run INDEXED BY flow_run_created "
                     "WHERE created_at >= ?)")
        params += [stamp, stamp]
    sql = f"SELECT {_COLUMNS} FROM flow_run" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY id DESC"
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    runs = []
    for values in cursor.fetchall():
        row = parse_times(dict(zip(names, values)), *RUN_TIMES)
        row["params"] = json.loads(row["params"])
        row["auto_resumed"] = bool(row["auto_resumed"])
        runs.append(Run(snapshot=None, **row))
    failed = [r.id for r in runs if r.state == states.FAILED]
    latest = {}
    for start in range(0, len(failed), 500):  # SQLite before 3.32 allows 999 variables a statement
        chunk = failed[start:start + 500]
        latest.update({(run_id, task_id): task_state for run_id, task_id, task_state in conn.execute(
            f"SELECT run_id, task_id, state FROM task_attempt WHERE run_id IN ({', '.join('?' * len(chunk))}) "
            "ORDER BY run_id, task_id, attempt", chunk).fetchall()})
    by_run = {}
    for (run_id, task_id), task_state in latest.items():
        if task_state == states.FAILED:
            by_run.setdefault(run_id, []).append(task_id)
    for run in runs:
        if run.state == states.FAILED:
            run.failed_tasks = by_run.get(run.id, [])
    return runs


def _private(private_dir: Optional[Path], path: Path) -> bool:
    """The config dir is 0700 (open_database would make it so) when the database is in it."""
    if private_dir is None or path.parent != Path(private_dir).absolute():
        return True
    return os.stat(path.parent).st_mode & 0o777 == 0o700
