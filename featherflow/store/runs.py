"""Every query and transaction on runs and attempts; callers get plain objects
(records.py). `Store` (store/__init__.py) composes this with the schedules' queries.

Each write is one short BEGIN IMMEDIATE transaction (a deferred one that reads
then writes fails at once with "database is locked" under concurrency), with
no subprocess, sleep or network inside it. State changes go through
`states.apply_run` / `states.apply_attempt`, the same code `_mark` uses.
"""

import json
import uuid
from datetime import datetime
from typing import Dict, Iterable, List, Optional, Sequence

from peewee import SQL, SqliteDatabase, fn

from featherflow import clock, states
from featherflow.errors import ConflictError, UsageError
from featherflow.store.db import chunks
from featherflow.store.models import FlowRun, RunSnapshot, TaskAttempt
from featherflow.store.records import Attempt, NewRun, Run, as_attempt, as_run


class RunStore:
    """Runs and their attempts in one database."""

    def __init__(self, db: SqliteDatabase):
        self.db = db

    def create_run(self, new: NewRun, now: Optional[datetime] = None) -> Run:
        """Create a queued run and one pending attempt per task, in one transaction (a
        savepoint inside the caller's, when a slot fires it); `now` stamps them."""
        stamp = _stamp(now)
        scheduled = clock.to_text(new.scheduled_at) if new.scheduled_at is not None else None
        with self.db.atomic("IMMEDIATE"):
            run_id = FlowRun.insert(
                uid=uuid.uuid4().hex, flow_name=new.flow_name, state=states.QUEUED, trigger=new.trigger,
                params=json.dumps(new.params, sort_keys=True),
                flows_dir=new.flows_dir, tasks_dir=new.tasks_dir, output_dir=new.output_dir,
                max_parallel=new.max_parallel, schedule=new.schedule_id, scheduled_at=scheduled,
                created_at=stamp, pid=new.pid, pid_start=new.pid_start, boot_id=new.boot_id,
            ).execute()
            RunSnapshot.insert(run=run_id, snapshot=new.snapshot).execute()
            TaskAttempt.insert_many(
                [dict(run=run_id, task_id=t, attempt=1, state=states.PENDING, created_at=stamp)
                 for t in new.task_ids]
            ).execute()
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> Run:
        """The run with its snapshot (the lists of runs leave it out: see list_runs)."""
        row = FlowRun.select().where(FlowRun.id == run_id).dicts().first()
        if row is None:
            raise UsageError(f"run {run_id} not found (see `featherflow runs list`)")
        row["snapshot"] = self.snapshot(run_id)
        run = as_run(row)
        self._add_failed_tasks([run])
        return run

    def snapshot(self, run_id: int) -> Optional[str]:
        """The flow definition the run runs, kept apart from its row (migration 0003)."""
        return (RunSnapshot.select(RunSnapshot.snapshot).where(RunSnapshot.run == run_id)
                .scalar())

    def list_runs(self, flow: Optional[str] = None, state: Optional[str] = None,
                  since: Optional[datetime] = None, limit: Optional[int] = 20,
                  states_in: Optional[Iterable[str]] = None, trigger: Optional[str] = None) -> List[Run]:
        """Newest first; failed runs carry the tasks that failed. Without their snapshots
        (Run.snapshot is None): a list of runs never reads flow definitions."""
        query = FlowRun.select()
        if trigger:
            query = query.where(FlowRun.trigger == trigger)
        if flow:
            query = query.where(FlowRun.flow_name == flow)
        if state:
            query = query.where(FlowRun.state == state)
        if states_in is not None:
            query = query.where(FlowRun.state.in_(list(states_in)))
        if since is not None:
            stamp = clock.to_text(since)
            # Also from the window's lowest id, found in the created_at index (migration
            # 0002): the newest-first walk stops there even when the window holds fewer
            # runs than the limit, instead of reading every run. Exact whatever the clock
            # did: every run in the window has an id >= that one (none: NULL, no rows).
            query = query.where(FlowRun.created_at >= stamp, FlowRun.id >= SQL(
                "(SELECT MIN(id) FROM flow_run INDEXED BY flow_run_created WHERE created_at >= ?)", [stamp]))
        query = query.order_by(FlowRun.id.desc())
        if limit:
            query = query.limit(limit)
        runs = [as_run(row) for row in query.dicts()]
        self._add_failed_tasks(runs)
        return runs

    def _add_failed_tasks(self, runs: List[Run]) -> None:
        """Failed runs carry the tasks whose latest attempt failed."""
        failed = [r.id for r in runs if r.state == states.FAILED]
        latest = {}
        for chunk in chunks(failed):
            rows = (TaskAttempt.select(TaskAttempt.run, TaskAttempt.task_id, TaskAttempt.state)
                    .where(TaskAttempt.run.in_(chunk))
                    .order_by(TaskAttempt.run, TaskAttempt.task_id, TaskAttempt.attempt).tuples())
            latest.update({(run_id, task_id): state for run_id, task_id, state in rows})
        by_run: Dict[int, List[str]] = {}  # one pass: 100,000 runs listed at once stay linear
        for (run_id, task), state in latest.items():
            if state == states.FAILED:
                by_run.setdefault(run_id, []).append(task)
        for run in runs:
            if run.state == states.FAILED:
                run.failed_tasks = by_run.get(run.id, [])

    def latest_run(self, flow: str, states_in: Iterable[str]) -> Optional[Run]:
        runs = self.list_runs(flow=flow, states_in=states_in, limit=1)
        return runs[0] if runs else None

    def attempts(self, run_id: int) -> List[Attempt]:
        query = (TaskAttempt.select().where(TaskAttempt.run == run_id)
                 .order_by(TaskAttempt.task_id, TaskAttempt.attempt))
        return [as_attempt(row) for row in query.dicts()]

    def latest_attempts(self, run_id: int) -> Dict[str, Attempt]:
        latest: Dict[str, Attempt] = {}
        for attempt in self.attempts(run_id):
            latest[attempt.task_id] = attempt  # ordered by attempt number
        return latest

    def transition_run(self, run_id: int, new: str, reason: Optional[str] = None,
                       resume: bool = False, now: Optional[datetime] = None) -> str:
        """Move a run through the state machine (states.apply_run), stamped `now`."""
        with self.db.atomic("IMMEDIATE"):
            return states.apply_run(self.db.cursor(), run_id, new, now=_stamp(now), reason=reason, resume=resume)

    def transition_attempt(self, run_id: int, task_id: str, attempt: int, new: str,
                           exit_code: Optional[int] = None, reason: Optional[str] = None,
                           now: Optional[datetime] = None) -> str:
        """Move an attempt through the state machine (states.apply_attempt), stamped `now`."""
        with self.db.atomic("IMMEDIATE"):
            return states.apply_attempt(self.db.cursor(), run_id, task_id, attempt, new, now=_stamp(now),
                                        exit_code=exit_code, reason=reason)

    def interrupt(self, run_id: int, expected_state: str, reason: str,
                  new: str = states.INTERRUPTED, now: Optional[datetime] = None) -> bool:
        """Mark an orphaned run interrupted (or `new`), unless it moved on meanwhile."""
        with self.db.atomic("IMMEDIATE"):
            row = FlowRun.select(FlowRun.state).where(FlowRun.id == run_id).first()
            if row is None or row.state != expected_state:
                return False
            states.apply_run(self.db.cursor(), run_id, new, now=_stamp(now), reason=reason)
            return True

    def resume(self, run_id: int, rerun: Iterable[str], snapshot: Optional[str] = None,
               auto: bool = False, pid: Optional[int] = None, pid_start: Optional[int] = None,
               boot_id: Optional[str] = None, now: Optional[datetime] = None, finished: bool = False,
               expect_resumes: Optional[int] = None) -> Dict[str, int]:
        """Reopen a failed or interrupted run: `running` again, a new attempt per re-run task.

        Returns {task: attempt number to run}. A task whose latest attempt never
        started (still pending) keeps that attempt instead of getting another.
        `finished` also reopens a finished run (states.RERUNNABLE: a backfill's
        --reprocess all); `expect_resumes` refuses unless the run was resumed exactly
        that many times before (a backfill's launch that came late never runs it twice).
        """
        now = _stamp(now)
        allowed = states.RESUMABLE + (states.RERUNNABLE if finished else ())
        with self.db.atomic("IMMEDIATE"):
            cur = self.db.cursor()
            row = cur.execute("SELECT state, resumes FROM flow_run WHERE id = ?", (run_id,)).fetchone()
            if row is not None and row[0] not in allowed:
                # Checked inside the transaction: two resumes racing (a user and the
                # scheduler's auto-resume) must not both run the same attempts.
                raise ConflictError(f"run {run_id} is {row[0]}; only failed or interrupted runs can be resumed")
            if row is not None and expect_resumes is not None and row[1] != expect_resumes:
                raise ConflictError(f"run {run_id} was resumed meanwhile ({row[1]} resumes, not {expect_resumes})")
            states.apply_run(cur, run_id, states.RUNNING, now, reason=None, pid=pid,
                             pid_start=pid_start, boot_id=boot_id, resume=True, rerun=finished)
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
                RunSnapshot.update(snapshot=snapshot).where(RunSnapshot.run == run_id).execute()
            if auto:
                updates[FlowRun.auto_resumed] = True
            FlowRun.update(updates).where(FlowRun.id == run_id).execute()
        return numbers

    def delete_runs(self, run_ids: Sequence[int]) -> int:
        """Delete runs and (by cascade) their attempts; never a queued or running one."""
        deleted = 0
        for chunk in chunks(run_ids):
            with self.db.atomic("IMMEDIATE"):
                deleted += FlowRun.delete().where(
                    FlowRun.id.in_(chunk), FlowRun.state.in_(list(states.RUN_FINISHED))).execute()
        return deleted

    def run_count(self) -> int:
        return FlowRun.select(fn.COUNT(FlowRun.id)).scalar()

    def attempt_count(self, run_ids: Sequence[int]) -> int:
        total = 0
        for chunk in chunks(run_ids):
            total += TaskAttempt.select().where(TaskAttempt.run.in_(chunk)).count()
        return total

    def run_uids(self) -> Dict[int, str]:
        return dict(FlowRun.select(FlowRun.id, FlowRun.uid).tuples())

    def output_dirs(self) -> List[str]:
        """Every output dir a run of this database was started with."""
        return [d for (d,) in FlowRun.select(FlowRun.output_dir).distinct().tuples()]

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


def _stamp(now: Optional[datetime]) -> str:
    """The stored text of `now`, or of the clock's now."""
    return clock.to_text(now or clock.now())
