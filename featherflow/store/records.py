"""The plain objects Featherflow hands out for runs and attempts (no peewee),
and how a database row becomes one."""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from featherflow import clock


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
    outputs: Optional[Dict[str, str]] = None  # what a successful attempt wrote (task outputs)


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


RUN_TIMES = ("scheduled_at", "created_at", "started_at", "ended_at")
ATTEMPT_TIMES = ("created_at", "started_at", "ended_at")


@dataclass(frozen=True)
class NewRun:
    """What a new run is made of: its flow (name, task ids in order, the definition as it
    runs), its params and trigger, where it runs, and the process that holds it."""

    flow_name: str
    task_ids: Sequence[str]
    snapshot: str
    params: Dict
    trigger: str
    flows_dir: str
    tasks_dir: str
    output_dir: str
    max_parallel: int
    schedule_id: Optional[int] = None
    scheduled_at: Optional[datetime] = None
    pid: Optional[int] = None
    pid_start: Optional[int] = None
    boot_id: Optional[str] = None


def as_run(row: dict) -> Run:
    row = parse_times(dict(row), *RUN_TIMES)
    row["schedule_id"] = row.pop("schedule", None)
    row.setdefault("snapshot", None)
    row["params"] = json.loads(row["params"])
    row["auto_resumed"] = bool(row["auto_resumed"])
    return Run(**row)


def as_attempt(row: dict) -> Attempt:
    row = parse_times(dict(row), *ATTEMPT_TIMES)
    row["run_id"] = row.pop("run")
    row.pop("id", None)
    row["outputs"] = json.loads(row["outputs"]) if row.get("outputs") else None
    return Attempt(**row)


def parse_times(row: Dict, *names: str) -> Dict:
    """Stored times as aware UTC datetimes: raw SQL gives them as text, peewee as naive
    datetimes; clock.from_text reads both (and an unreadable one as None)."""
    for name in names:
        if name in row:
            row[name] = clock.from_text(row[name])
    return row


@dataclass
class Schedule:
    id: int
    name: str
    flow_name: str
    cron: str
    tz: str
    params: Dict
    catchup: str
    overlap: str
    on_interrupt: str
    enabled: bool
    description: str
    flows_dir: str
    tasks_dir: str
    output_dir: str
    created_at: datetime
    updated_at: datetime  # added, or last enabled: slots before it are never due


@dataclass
class Slot:
    schedule_id: int
    slot_at: datetime
    state: str  # fired | waiting | skipped
    reason: Optional[str]
    run_id: Optional[int]
    created_at: datetime
    run_state: Optional[str] = None


@dataclass
class SchedulerRow:
    pid: int
    pid_start: Optional[int]
    boot_id: Optional[str]
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: Optional[datetime]


def as_schedule(row: dict) -> Schedule:
    row = parse_times(dict(row), "created_at", "updated_at")
    row["params"] = json.loads(row["params"])
    row["enabled"] = bool(row["enabled"])
    return Schedule(**row)


def as_slot(row: dict) -> Slot:
    row = parse_times(dict(row), "slot_at", "created_at")
    row.pop("id", None)
    row["schedule_id"] = row.pop("schedule")
    row["run_id"] = row.pop("run")
    return Slot(**row)


# -- notifications (migration 0004) ---------------------------------------------

@dataclass
class Channel:
    id: int
    name: str
    kind: str  # command | webhook | email | ping
    target: str
    options: Dict  # format, headers, timeout, smtp_*; never a password, only where one is read
    events: List[str]
    flows: List[str]
    schedules: List[str]
    repeat_seconds: float
    every: bool
    enabled: bool
    created_at: datetime
    updated_at: datetime


@dataclass
class Event:
    id: int
    kind: str
    run_id: Optional[int]
    schedule_id: Optional[int]
    slot_at: Optional[datetime]
    detail: Dict
    created_at: datetime


@dataclass
class Delivery:
    id: int
    event_id: int
    channel_id: int
    channel: str
    kind: str
    group_key: str
    state: str  # pending | sending | sent | failed | suppressed
    payload: Dict
    key: str
    tries: int
    next_try_at: datetime
    answer: Optional[str]
    created_at: datetime
    sent_at: Optional[datetime]


def as_channel(row: dict) -> Channel:
    row = parse_times(dict(row), "created_at", "updated_at")
    for name in ("options", "flows", "schedules"):
        row[name] = json.loads(row[name])
    row["events"] = [e for e in row["events"].split(",") if e]
    row["every"], row["enabled"] = bool(row["every"]), bool(row["enabled"])
    return Channel(**row)


def as_event(row: dict) -> Event:
    row = parse_times(dict(row), "slot_at", "created_at")
    row.pop("fanned_at", None)
    row["run_id"], row["schedule_id"] = row.pop("run"), row.pop("schedule")
    row["detail"] = json.loads(row["detail"])
    return Event(**row)


def as_delivery(row: dict, channel_name: str) -> Delivery:
    row = parse_times(dict(row), "next_try_at", "created_at", "sent_at")
    for name in ("claimed_by", "claim_start", "claim_boot", "claimed_at"):
        row.pop(name, None)
    row["event_id"], row["channel_id"] = row.pop("event"), row.pop("channel")
    row["payload"] = json.loads(row["payload"])
    return Delivery(channel=channel_name, **row)


# -- backfills (store/backfills.py writes them; the status page's Reader reads them too) --

BACKFILL_PENDING, BACKFILL_LAUNCHED, BACKFILL_DONE = "pending", "launched", "done"  # a slot's progress


@dataclass
class Backfill:
    id: int
    schedule_id: int
    range_from: datetime
    range_to: datetime
    reprocess: str
    max_runs: int
    reverse: bool
    state: str
    reason: Optional[str]
    created_at: datetime
    updated_at: datetime
    ended_at: Optional[datetime] = None
    counts: Optional[Dict[str, int]] = None  # pending / launched / done, and done by outcome


def as_backfill(row: Dict) -> Backfill:
    row = dict(row)
    row["schedule_id"] = row.pop("schedule")
    for key in ("range_from", "range_to", "created_at", "updated_at", "ended_at"):
        row[key] = clock.from_text(row[key])
    row["reverse"] = bool(row["reverse"])
    return Backfill(**row)


def backfill_counts(rows: Iterable[Tuple[str, Optional[str], int]]) -> Dict[str, int]:
    """Slots by progress (pending, launched, done) and the done ones by outcome, from
    (state, outcome, count) rows."""
    counts = {BACKFILL_PENDING: 0, BACKFILL_LAUNCHED: 0, BACKFILL_DONE: 0}
    for state, outcome, count in rows:
        counts[state] = counts.get(state, 0) + count
        if state == BACKFILL_DONE:
            counts[outcome] = counts.get(outcome, 0) + count
    return counts
