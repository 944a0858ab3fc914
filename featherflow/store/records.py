"""The plain objects Featherflow hands out for runs and attempts (no peewee),
and how a database row becomes one."""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional


@dataclass
class Attempt:
    run_id: int
    task_id: str
    attempt: int
    state: str
    created_at: datetime
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    exit_code: Optional[int] = None
    reason: Optional[str] = None


@dataclass
class Run:
    id: int
    uid: str
    flow_name: str
    state: str
    trigger: str
    params: Dict
    snapshot: Optional[str]  # None in lists of runs (Store.list_runs): only get_run reads it
    flows_dir: str
    tasks_dir: str
    output_dir: str
    max_parallel: int
    created_at: datetime
    schedule_id: Optional[int] = None
    scheduled_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    pid: Optional[int] = None
    pid_start: Optional[int] = None
    boot_id: Optional[str] = None
    reason: Optional[str] = None
    resumes: int = 0
    auto_resumed: bool = False
    failed_tasks: List[str] = field(default_factory=list)


def as_run(row: dict) -> Run:
    row = dict(row)
    row["schedule_id"] = row.pop("schedule", None)
    row.setdefault("snapshot", None)
    row["params"] = json.loads(row["params"])
    row["auto_resumed"] = bool(row["auto_resumed"])
    return Run(**row)


def as_attempt(row: dict) -> Attempt:
    row = dict(row)
    row["run_id"] = row.pop("run")
    row.pop("id", None)
    return Attempt(**row)


def parse_times(row: Dict, *names: str) -> Dict:
    """Raw SQL gives stored times as text (states.format_time); peewee would give datetimes."""
    for name in names:
        value = row.get(name)
        if isinstance(value, str):
            try:
                row[name] = datetime.fromisoformat(value)
            except ValueError:
                row[name] = None
    return row
