"""Every query and transaction Featherflow makes; callers get plain objects.

Each write is one short BEGIN IMMEDIATE transaction (a deferred one that reads
then writes fails at once with "database is locked" under concurrency), with
no subprocess, sleep or network inside it. State changes go through
`states.apply_run` / `states.apply_attempt`, the same code `_mark` uses.
"""

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from peewee import JOIN, SqliteDatabase, fn

from featherflow import states
from featherflow.errors import ConflictError, UsageError
from featherflow.models import FlowRun, Schedule as ScheduleModel, ScheduleSlot, SchedulerState, TaskAttempt


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
    snapshot: str
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


def _run(row: dict) -> Run:
    row = dict(row)
    row["schedule_id"] = row.pop("schedule", None)
    row["params"] = json.loads(row["params"])
    row["auto_resumed"] = bool(row["auto_resumed"])
    return Run(**row)


def _attempt(row: dict) -> Attempt:
    row = dict(row)
    row["run_id"] = row.pop("run")
    row.pop("id", None)
    return Attempt(**row)


class Store:
    def __init__(self, db: SqliteDatabase):
        self.db = db

    def close(self) -> None:
        self.db.close()

    # -- runs ------------------------------------------------------------

    def create_run(self, flow_name: str, task_ids: Sequence[str], snapshot: str, params: Dict,
                   trigger: str, flows_dir: str, tasks_dir: str, output_dir: str,
                   max_parallel: int, schedule_id: Optional[int] = None,
                   scheduled_at: Optional[datetime] = None, pid: Optional[int] = None,
                   pid_start: Optional[int] = None, boot_id: Optional[str] = None) -> Run:
        """Create a queued run and one pending attempt per task, in one transaction."""
        now = states.utcnow()
        with self.db.atomic("IMMEDIATE"):
            run_id = FlowRun.insert(
                uid=uuid.uuid4().hex, flow_name=flow_name, state=states.QUEUED, trigger=trigger,
                params=json.dumps(params, sort_keys=True), snapshot=snapshot,
                flows_dir=flows_dir, tasks_dir=tasks_dir, output_dir=output_dir,
                max_parallel=max_parallel, schedule=schedule_id, scheduled_at=scheduled_at,
                created_at=now, pid=pid, pid_start=pid_start, boot_id=boot_id,
            ).execute()
            TaskAttempt.insert_many(
                [dict(run=run_id, task_id=t, attempt=1, state=states.PENDING, created_at=now)
                 for t in task_ids]
            ).execute()
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> Run:
        row = FlowRun.select().where(FlowRun.id == run_id).dicts().first()
        if row is None:
            raise UsageError(f"run {run_id} not found (see `featherflow runs list`)")
        run = _run(row)
        self._add_failed_tasks([run])
        return run

    def set_process(self, run_id: int, pid: int, pid_start: Optional[int], boot_id: Optional[str]) -> None:
        with self.db.atomic("IMMEDIATE"):
            FlowRun.update(pid=pid, pid_start=pid_start, boot_id=boot_id).where(
                FlowRun.id == run_id).execute()

    def list_runs(self, flow: Optional[str] = None, state: Optional[str] = None,
                  since: Optional[datetime] = None, limit: Optional[int] = 20,
                  states_in: Optional[Iterable[str]] = None) -> List[Run]:
        """Newest first; failed runs carry the tasks that failed."""
        query = FlowRun.select()
        if flow:
            query = query.where(FlowRun.flow_name == flow)
        if state:
            query = query.where(FlowRun.state == state)
        if states_in is not None:
            query = query.where(FlowRun.state.in_(list(states_in)))
        if since is not None:
            query = query.where(FlowRun.created_at >= states.format_time(since))
        query = query.order_by(FlowRun.id.desc())
        if limit:
            query = query.limit(limit)
        runs = [_run(row) for row in query.dicts()]
        self._add_failed_tasks(runs)
        return runs

    def _add_failed_tasks(self, runs: List[Run]) -> None:
        """Failed runs carry the tasks whose latest attempt failed."""
        failed = [r.id for r in runs if r.state == states.FAILED]
        if failed:
            rows = (TaskAttempt.select(TaskAttempt.run, TaskAttempt.task_id, TaskAttempt.state)
                    .where(TaskAttempt.run.in_(failed))
                    .order_by(TaskAttempt.run, TaskAttempt.task_id, TaskAttempt.attempt).tuples())
            latest = {(run_id, task_id): state for run_id, task_id, state in rows}
            for run in runs:
                run.failed_tasks = [task for (run_id, task), state in latest.items()
                                    if run_id == run.id and state == states.FAILED]

    def latest_run(self, flow: str, states_in: Iterable[str]) -> Optional[Run]:
        runs = self.list_runs(flow=flow, states_in=states_in, limit=1)
        return runs[0] if runs else None

    def attempts(self, run_id: int) -> List[Attempt]:
        query = (TaskAttempt.select().where(TaskAttempt.run == run_id)
                 .order_by(TaskAttempt.task_id, TaskAttempt.attempt))
        return [_attempt(row) for row in query.dicts()]

    def latest_attempts(self, run_id: int) -> Dict[str, Attempt]:
        latest: Dict[str, Attempt] = {}
        for attempt in self.attempts(run_id):
            latest[attempt.task_id] = attempt  # ordered by attempt number
        return latest

    def transition_run(self, run_id: int, new: str, reason: Optional[str] = None,
                       resume: bool = False) -> str:
        with self.db.atomic("IMMEDIATE"):
            return states.apply_run(self.db.cursor(), run_id, new, reason=reason, resume=resume)

    def transition_attempt(self, run_id: int, task_id: str, attempt: int, new: str,
                           exit_code: Optional[int] = None, reason: Optional[str] = None) -> str:
        with self.db.atomic("IMMEDIATE"):
            return states.apply_attempt(self.db.cursor(), run_id, task_id, attempt, new,
                                        exit_code=exit_code, reason=reason)

    def interrupt(self, run_id: int, expected_state: str, reason: str) -> bool:
        """Mark an orphaned run interrupted, unless it moved on meanwhile."""
        with self.db.atomic("IMMEDIATE"):
            row = FlowRun.select(FlowRun.state).where(FlowRun.id == run_id).first()
            if row is None or row.state != expected_state:
                return False
            states.apply_run(self.db.cursor(), run_id, states.INTERRUPTED, reason=reason)
            return True

    def resume(self, run_id: int, rerun: Iterable[str], snapshot: Optional[str] = None,
               auto: bool = False, pid: Optional[int] = None, pid_start: Optional[int] = None,
               boot_id: Optional[str] = None) -> Dict[str, int]:
        """Reopen a failed or interrupted run: `running` again, a new attempt per re-run task.

        Returns {task: attempt number to run}. A task whose latest attempt never
        started (still pending) keeps that attempt instead of getting another.
        """
        now = states.utcnow()
        with self.db.atomic("IMMEDIATE"):
            cur = self.db.cursor()
            row = cur.execute("SELECT state FROM flow_run WHERE id = ?", (run_id,)).fetchone()
            if row is not None and row[0] not in states.RESUMABLE:
                # Checked inside the transaction: two resumes racing (a user and the
                # scheduler's auto-resume) must not both run the same attempts.
                raise ConflictError(f"run {run_id} is {row[0]}; only failed or interrupted runs can be resumed")
            states.apply_run(cur, run_id, states.RUNNING, now, reason=None, pid=pid,
                             pid_start=pid_start, boot_id=boot_id, resume=True)
            numbers = {}
            for task_id in rerun:
                last = cur.execute(
                    "SELECT attempt, state FROM task_attempt WHERE run_id = ? AND task_id = ? "
                    "ORDER BY attempt DESC LIMIT 1", (run_id, task_id)).fetchone()
                if last is None:  # a task added to the definition (resume --force)
                    cur.execute(
                        "INSERT INTO task_attempt (run_id, task_id, attempt, state, created_at) "
                        "VALUES (?, ?, 1, ?, ?)", (run_id, task_id, states.PENDING, now))
                    numbers[task_id] = 1
                elif last[1] == states.PENDING:
                    numbers[task_id] = last[0]
                else:
                    states.apply_attempt(cur, run_id, task_id, last[0] + 1, states.PENDING, now)
                    numbers[task_id] = last[0] + 1
            updates = {FlowRun.resumes: FlowRun.resumes + 1}
            if snapshot is not None:
                updates[FlowRun.snapshot] = snapshot
            if auto:
                updates[FlowRun.auto_resumed] = True
            FlowRun.update(updates).where(FlowRun.id == run_id).execute()
        return numbers

    def delete_runs(self, run_ids: Sequence[int]) -> int:
        """Delete runs and (by cascade) their attempts; never a queued or running one."""
        deleted = 0
        for start in range(0, len(run_ids), 500):
            chunk = list(run_ids[start:start + 500])
            with self.db.atomic("IMMEDIATE"):
                deleted += FlowRun.delete().where(
                    FlowRun.id.in_(chunk), FlowRun.state.in_(list(states.RUN_FINISHED))).execute()
        return deleted

    def run_count(self) -> int:
        return FlowRun.select(fn.COUNT(FlowRun.id)).scalar()

    def attempt_count(self, run_ids: Sequence[int]) -> int:
        total = 0
        for start in range(0, len(run_ids), 500):
            chunk = list(run_ids[start:start + 500])
            total += TaskAttempt.select().where(TaskAttempt.run.in_(chunk)).count()
        return total

    def run_uids(self) -> Dict[int, str]:
        return dict(FlowRun.select(FlowRun.id, FlowRun.uid).tuples())

    def compact(self) -> None:
        """Give space back after deletions: checkpoint the WAL; VACUUM when a quarter is free."""
        pages = self.db.execute_sql("PRAGMA page_count").fetchone()[0]
        free = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
        if pages and free * 4 >= pages:
            self.db.execute_sql("VACUUM")
        self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- dashboard (read only) -------------------------------------------
    # Raw SQL through self.db, so these work on the read-only connection of
    # db.open_read_only (the models stay bound to whatever else the process
    # opened). Every result is read to its end: a half-read statement keeps its
    # snapshot, and with it the WAL, alive after the transaction ends.

    def read_transaction(self):
        """One short read transaction (BEGIN ... COMMIT): a refresh sees one moment."""
        return self.db.atomic()

    def _fetch(self, sql: str, params: Sequence = ()) -> List[Dict]:
        cursor = self.db.execute_sql(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def read_schema_version(self) -> int:
        return self.db.execute_sql("PRAGMA user_version").fetchall()[0][0]

    def dashboard_scheduler(self) -> Optional[Dict]:
        rows = self._fetch("SELECT pid, pid_start, boot_id, started_at, heartbeat_at, stopped_at "
                           "FROM scheduler WHERE id = 1")
        return _times(rows[0], "started_at", "heartbeat_at", "stopped_at") if rows else None

    def dashboard_schedules(self, flow: Optional[str], limit: int) -> List[Dict]:
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
        return [_times(row, "last_slot_at") for row in rows]

    def dashboard_runs(self, active: bool, flow: Optional[str], limit: int) -> List[Dict]:
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
        return [_times(row, "created_at", "started_at", "ended_at") for row in rows]

    def dashboard_attempt_states(self, run_ids: Sequence[int]) -> List[Dict]:
        """(run_id, task_id, attempt, state) of every attempt of these runs."""
        if not run_ids:
            return []
        marks = ", ".join("?" * len(run_ids))
        return self._fetch(f"SELECT run_id, task_id, attempt, state FROM task_attempt "
                           f"WHERE run_id IN ({marks}) ORDER BY run_id, task_id, attempt", run_ids)

    def dashboard_run(self, run_id: int) -> Optional[Run]:
        """The whole run (with its snapshot), or None when it is gone (pruned)."""
        from dataclasses import fields

        names = [f.name for f in fields(Run) if f.name != "failed_tasks"]
        rows = self._fetch(f"SELECT {', '.join(names)} FROM flow_run WHERE id = ?", (run_id,))
        if not rows:
            return None
        row = _times(rows[0], "scheduled_at", "created_at", "started_at", "ended_at")
        row["params"] = json.loads(row["params"])
        row["auto_resumed"] = bool(row["auto_resumed"])
        return Run(**row)

    def dashboard_attempts(self, run_id: int) -> List[Attempt]:
        rows = self._fetch("SELECT run_id, task_id, attempt, state, created_at, started_at, ended_at, "
                           "exit_code, reason FROM task_attempt WHERE run_id = ? "
                           "ORDER BY task_id, attempt", (run_id,))
        return [Attempt(**_times(row, "created_at", "started_at", "ended_at")) for row in rows]

    # -- schedules -------------------------------------------------------
    # Schedules, the slots they fired, queued or skipped, and the scheduler's
    # own row. UNIQUE(schedule_id, slot_at) means a slot is recorded once,
    # whatever crashes; a fired slot and its queued run are written in the
    # same transaction, so no fired slot lacks its run.

    def add_schedule(self, name: str, flow_name: str, cron: str, tz: str, params: Dict,
                     flows_dir: str, tasks_dir: str, output_dir: str, catchup: str = "latest",
                     overlap: str = "skip", on_interrupt: str = "resume", enabled: bool = True,
                     description: str = "", now: Optional[datetime] = None) -> "Schedule":
        stamp = states.format_time(now) if now else states.utcnow()
        with self.db.atomic("IMMEDIATE"):
            if ScheduleModel.select().where(ScheduleModel.name == name).exists():
                raise ConflictError(f"a schedule named {name!r} already exists "
                                    "(remove it first, or give this one another --name)")
            schedule_id = ScheduleModel.insert(
                name=name, flow_name=flow_name, cron=cron, tz=tz,
                params=json.dumps(params, sort_keys=True), catchup=catchup, overlap=overlap,
                on_interrupt=on_interrupt, enabled=enabled, description=description or "",
                flows_dir=flows_dir, tasks_dir=tasks_dir, output_dir=output_dir,
                created_at=stamp, updated_at=stamp).execute()
        return self.get_schedule(schedule_id)

    def get_schedule(self, key) -> "Schedule":
        """By id (int) or name (str)."""
        where = ScheduleModel.id == key if isinstance(key, int) else ScheduleModel.name == key
        row = ScheduleModel.select().where(where).dicts().first()
        if row is None:
            known = ", ".join(s.name for s in self.list_schedules()) or "none"
            raise UsageError(f"no schedule named {key!r} (known: {known})")
        return _schedule(row)

    def list_schedules(self, enabled_only: bool = False) -> List["Schedule"]:
        query = ScheduleModel.select().order_by(ScheduleModel.name)
        if enabled_only:
            query = query.where(ScheduleModel.enabled == True)  # noqa: E712 (peewee expression)
        return [_schedule(row) for row in query.dicts()]

    def remove_schedule(self, name: str) -> "Schedule":
        """Delete a schedule and its slots; its runs stay in the history (schedule_id NULL)."""
        schedule = self.get_schedule(name)
        with self.db.atomic("IMMEDIATE"):
            ScheduleModel.delete().where(ScheduleModel.id == schedule.id).execute()
        return schedule

    def set_schedule_enabled(self, name: str, enabled: bool, now: Optional[datetime] = None) -> "Schedule":
        """Enable (slots count from now on: none missed while disabled) or disable it.

        Disabling skips the slots it had waiting, so enabling it later does not
        run a backlog from before.
        """
        stamp = states.format_time(now) if now else states.utcnow()
        schedule = self.get_schedule(name)
        with self.db.atomic("IMMEDIATE"):
            if enabled and not schedule.enabled:
                ScheduleModel.update(enabled=True, updated_at=stamp).where(
                    ScheduleModel.id == schedule.id).execute()
            elif not enabled:
                ScheduleModel.update(enabled=False).where(ScheduleModel.id == schedule.id).execute()
                ScheduleSlot.update(state=SLOT_SKIPPED, reason="the schedule was disabled before it ran").where(
                    ScheduleSlot.schedule == schedule.id, ScheduleSlot.state == SLOT_WAITING).execute()
        return self.get_schedule(schedule.id)

    def latest_slot_at(self, schedule_id: int) -> Optional[datetime]:
        """The latest slot recorded in any state: no slot at or before it is ever due again."""
        row = (ScheduleSlot.select(ScheduleSlot.slot_at).where(ScheduleSlot.schedule == schedule_id)
               .order_by(ScheduleSlot.slot_at.desc()).first())
        return row.slot_at if row else None

    def waiting_slots(self, schedule_id: int) -> List[datetime]:
        query = (ScheduleSlot.select(ScheduleSlot.slot_at)
                 .where(ScheduleSlot.schedule == schedule_id, ScheduleSlot.state == SLOT_WAITING)
                 .order_by(ScheduleSlot.slot_at))
        return [row.slot_at for row in query]

    def record_decision(self, schedule_id: int, skip: Sequence = (), wait: Sequence = (),
                        fire: Sequence = (), now: Optional[datetime] = None,
                        before_commit: "Optional[Callable[[], None]]" = None) -> List[Run]:
        """Record skipped and waiting slots, and fire slots, all in ONE transaction.

        `skip` and `wait` are (slot, reason) pairs; `fire` is (slot, run) pairs where
        `run` holds Store.create_run's arguments. A fired slot gets its queued run
        (trigger `schedule`, scheduled_at = the slot) in the same transaction. A slot
        already recorded is left alone, except a waiting one, which may fire or be
        skipped now. Returns the runs created. `before_commit` is called just before
        the commit (fault-injection tests).
        """
        stamp = states.format_time(now) if now else states.utcnow()
        created = []
        with self.db.atomic("IMMEDIATE"):
            for slot_at, reason in skip:
                self._put_slot(schedule_id, slot_at, SLOT_SKIPPED, reason, stamp)
            for slot_at, reason in wait:
                self._put_slot(schedule_id, slot_at, SLOT_WAITING, reason, stamp)
            for slot_at, run in fire:
                if self._slot_state(schedule_id, slot_at) not in (None, SLOT_WAITING):
                    continue
                new = self.create_run(**{**run, "trigger": "schedule", "schedule_id": schedule_id,
                                         "scheduled_at": states.format_time(slot_at)})
                self._put_slot(schedule_id, slot_at, SLOT_FIRED, None, stamp, run_id=new.id)
                created.append(new)
            if before_commit is not None:
                before_commit()
        return created

    def fire_slot(self, schedule_id: int, slot_at: datetime, run: Dict, now: Optional[datetime] = None,
                  before_commit: "Optional[Callable[[], None]]" = None) -> Optional[Run]:
        """Insert the slot row and create its queued run in one transaction; None if already recorded."""
        created = self.record_decision(schedule_id, fire=[(slot_at, run)], now=now, before_commit=before_commit)
        return created[0] if created else None

    def record_slot(self, schedule_id: int, slot_at: datetime, state: str, reason: str,
                    now: Optional[datetime] = None) -> None:
        """Record a slot as skipped or waiting, with the reason."""
        if state not in (SLOT_SKIPPED, SLOT_WAITING):
            raise ValueError(f"record_slot: state must be {SLOT_SKIPPED} or {SLOT_WAITING}, not {state}")
        pairs = [(slot_at, reason)]
        self.record_decision(schedule_id, skip=pairs if state == SLOT_SKIPPED else (),
                             wait=pairs if state == SLOT_WAITING else (), now=now)

    def _slot_state(self, schedule_id: int, slot_at: datetime) -> Optional[str]:
        row = (ScheduleSlot.select(ScheduleSlot.state)
               .where(ScheduleSlot.schedule == schedule_id,
                      ScheduleSlot.slot_at == states.format_time(slot_at)).first())
        return row.state if row else None

    def _put_slot(self, schedule_id, slot_at, state, reason, stamp, run_id=None) -> bool:
        """Insert the slot, or move a waiting one on; inside the caller's transaction."""
        key = states.format_time(slot_at)
        old = self._slot_state(schedule_id, slot_at)
        if old is None:
            ScheduleSlot.insert(schedule=schedule_id, slot_at=key, state=state, reason=reason,
                                run=run_id, created_at=stamp).execute()
            return True
        if old == SLOT_WAITING and state != SLOT_WAITING:
            updates = {ScheduleSlot.state: state, ScheduleSlot.run: run_id}
            if reason is not None:
                updates[ScheduleSlot.reason] = reason
            ScheduleSlot.update(updates).where(ScheduleSlot.schedule == schedule_id,
                                               ScheduleSlot.slot_at == key).execute()
            return True
        return False

    def recent_slots(self, schedule_id: int, limit: Optional[int] = 20) -> List["Slot"]:
        """Newest first, each with the state of its run (if it still exists)."""
        query = (ScheduleSlot.select(ScheduleSlot, FlowRun.state.alias("run_state"))
                 .join(FlowRun, JOIN.LEFT_OUTER, on=(ScheduleSlot.run == FlowRun.id))
                 .where(ScheduleSlot.schedule == schedule_id)
                 .order_by(ScheduleSlot.slot_at.desc()))
        if limit:
            query = query.limit(limit)
        return [_slot(row) for row in query.dicts()]

    def slot_count(self, schedule_id: int) -> int:
        return ScheduleSlot.select().where(ScheduleSlot.schedule == schedule_id).count()

    def trim_slots(self, schedule_id: int, keep: int) -> int:
        """Delete all but the newest `keep` slots of a schedule (the latest always stays)."""
        keep = max(1, keep)
        cutoff = (ScheduleSlot.select(ScheduleSlot.slot_at).where(ScheduleSlot.schedule == schedule_id)
                  .order_by(ScheduleSlot.slot_at.desc()).offset(keep - 1).limit(1).scalar())
        if cutoff is None:
            return 0
        with self.db.atomic("IMMEDIATE"):
            return ScheduleSlot.delete().where(
                ScheduleSlot.schedule == schedule_id, ScheduleSlot.slot_at < cutoff,
                ScheduleSlot.state != SLOT_WAITING).execute()

    def schedule_runs(self, schedule_id: int, states_in: Iterable[str]) -> List[Run]:
        query = (FlowRun.select().where(FlowRun.schedule == schedule_id, FlowRun.state.in_(list(states_in)))
                 .order_by(FlowRun.id))
        return [_run(row) for row in query.dicts()]

    def runs_to_auto_resume(self) -> List[Run]:
        """Interrupted scheduled runs never auto-resumed, of enabled schedules with on_interrupt=resume."""
        query = (FlowRun.select(FlowRun).join(ScheduleModel, on=(FlowRun.schedule == ScheduleModel.id))
                 .where(FlowRun.state == states.INTERRUPTED, FlowRun.auto_resumed == False,  # noqa: E712
                        FlowRun.trigger == "schedule", ScheduleModel.on_interrupt == "resume",
                        ScheduleModel.enabled == True)  # noqa: E712
                 .order_by(FlowRun.id))
        return [_run(row) for row in query.dicts()]

    def claim_auto_resume(self, run_id: int) -> bool:
        """Mark an interrupted run auto-resumed BEFORE resuming it: at most once, whatever crashes."""
        with self.db.atomic("IMMEDIATE"):
            return FlowRun.update(auto_resumed=True).where(
                FlowRun.id == run_id, FlowRun.state == states.INTERRUPTED,
                FlowRun.auto_resumed == False).execute() == 1  # noqa: E712

    def adopt_run(self, run_id: int, expected_pid: Optional[int], pid: int, pid_start: Optional[int],
                  boot_id: Optional[str]) -> bool:
        """Hand a queued run to another process, if it is still queued and held by `expected_pid`."""
        held = FlowRun.pid.is_null() if expected_pid is None else FlowRun.pid == expected_pid
        with self.db.atomic("IMMEDIATE"):
            return FlowRun.update(pid=pid, pid_start=pid_start, boot_id=boot_id).where(
                FlowRun.id == run_id, FlowRun.state == states.QUEUED, held).execute() == 1

    def claim_queued(self, run_id: int, allowed_pids: Iterable[Optional[int]], pid: int,
                     pid_start: Optional[int], boot_id: Optional[str]) -> Run:
        """Take a queued run to start it: only if it is queued and held by one of `allowed_pids`.

        So two processes started for one run (by a scheduler that died and by the
        one that adopted its runs) never both run it.
        """
        allowed = set(allowed_pids)
        with self.db.atomic("IMMEDIATE"):
            row = FlowRun.select(FlowRun.state, FlowRun.pid).where(FlowRun.id == run_id).first()
            if row is None:
                raise UsageError(f"run {run_id} not found (see `featherflow runs list`)")
            if row.state != states.QUEUED:
                raise ConflictError(f"run {run_id} is {row.state}, not queued: it was started already")
            if row.pid not in allowed:
                raise ConflictError(f"run {run_id} is held by process {row.pid}: not starting it twice")
            FlowRun.update(pid=pid, pid_start=pid_start, boot_id=boot_id).where(FlowRun.id == run_id).execute()
        return self.get_run(run_id)

    def scheduler_row(self) -> Optional["SchedulerRow"]:
        row = SchedulerState.select().where(SchedulerState.id == 1).dicts().first()
        if row is None:
            return None
        row.pop("id")
        return SchedulerRow(**row)

    def scheduler_started(self, pid: int, pid_start: Optional[int], boot_id: Optional[str],
                          now: datetime, is_alive: "Callable[[SchedulerRow], bool]") -> Optional["SchedulerRow"]:
        """Record this process as the database's scheduler; if another live one is, return it instead."""
        stamp = states.format_time(now)
        with self.db.atomic("IMMEDIATE"):
            row = self.scheduler_row()
            if row is not None and row.stopped_at is None and row.pid != pid and is_alive(row):
                return row
            SchedulerState.replace(id=1, pid=pid, pid_start=pid_start, boot_id=boot_id, started_at=stamp,
                                   heartbeat_at=stamp, stopped_at=None).execute()
        return None

    def scheduler_heartbeat(self, pid: int, now: datetime) -> None:
        with self.db.atomic("IMMEDIATE"):
            SchedulerState.update(heartbeat_at=states.format_time(now)).where(
                SchedulerState.id == 1, SchedulerState.pid == pid).execute()

    def scheduler_stopped(self, pid: int, now: datetime) -> None:
        with self.db.atomic("IMMEDIATE"):
            SchedulerState.update(stopped_at=states.format_time(now)).where(
                SchedulerState.id == 1, SchedulerState.pid == pid).execute()


def _times(row: Dict, *names: str) -> Dict:
    """Raw SQL gives stored times as text (states.format_time); peewee would give datetimes."""
    for name in names:
        value = row.get(name)
        if isinstance(value, str):
            try:
                row[name] = datetime.fromisoformat(value)
            except ValueError:
                row[name] = None
    return row


# -- schedules (plain objects) --------------------------------------------------

SLOT_FIRED, SLOT_WAITING, SLOT_SKIPPED = "fired", "waiting", "skipped"


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


def _schedule(row: dict) -> Schedule:
    row = dict(row)
    row["params"] = json.loads(row["params"])
    row["enabled"] = bool(row["enabled"])
    return Schedule(**row)


def _slot(row: dict) -> Slot:
    row = dict(row)
    row.pop("id", None)
    row["schedule_id"] = row.pop("schedule")
    row["run_id"] = row.pop("run")
    return Slot(**row)
