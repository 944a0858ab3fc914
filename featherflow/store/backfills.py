"""The backfills' part of the store: backfills, their slots, and firing a slot exactly once.

A backfill fires a slot through the scheduler's own key: the schedule_slot row
(UNIQUE schedule_id, slot_at) and the queued run (trigger `backfill`,
scheduled_at = the slot) are written in the same BEGIN IMMEDIATE transaction as
the backfill's slot row, after checking that no run holds that slot already (a
slot row, or a run of the schedule at that time whose slot row was trimmed). So
no slot ever gets two runs, whether the scheduler or a backfill, or two
backfills, get there first. Policy (what to do with each slot, when) lives in
scheduler/backfill.py.
"""

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from peewee import JOIN, SqliteDatabase, fn

from featherflow import clock
from featherflow.errors import UsageError
from featherflow.store.models import Backfill as BackfillModel, BackfillSlot, FlowRun, ScheduleSlot
from featherflow.store.records import BACKFILL_DONE, BACKFILL_LAUNCHED, BACKFILL_PENDING, Backfill, NewRun, Run, \
    as_backfill, backfill_counts
from featherflow.store.runs import RunStore

RUNNING, SUCCESS, FAILED, CANCELLED = "running", "success", "failed", "cancelled"
STATES = (RUNNING, SUCCESS, FAILED, CANCELLED)
PENDING, LAUNCHED, DONE = BACKFILL_PENDING, BACKFILL_LAUNCHED, BACKFILL_DONE  # a slot's progress
RUN, RESUME, RERUN, LEAVE = "run", "resume", "rerun", "leave"  # what a backfill does with a slot
LEFT = "left"  # the outcome of a slot left alone (it has a run, or the backfill was cancelled first)


@dataclass
class SlotRow:
    id: int
    backfill_id: int
    slot_at: datetime
    action: str
    state: str
    run_id: Optional[int]
    resumes: Optional[int]
    launcher_pid: Optional[int]
    launcher_start: Optional[int]
    launcher_boot: Optional[str]
    tries: int
    outcome: Optional[str]
    reason: Optional[str]
    run_state: Optional[str] = None
    run_resumes: Optional[int] = None
    run_pid: Optional[int] = None
    run_pid_start: Optional[int] = None
    run_boot_id: Optional[str] = None
    run_auto_resumed: Optional[bool] = None


def _slot(row: Dict) -> SlotRow:
    row = dict(row)
    row["backfill_id"] = row.pop("backfill")
    row["run_id"] = row.pop("run")
    row["slot_at"] = clock.from_text(row["slot_at"])
    return SlotRow(**row)


class BackfillStore:
    """Backfills and their slots; a slot's run is created through `runs` in the slot's transaction."""

    def __init__(self, db: SqliteDatabase, runs: RunStore):
        self.db = db
        self.runs = runs

    # -- what the slots of a range hold already --

    def slot_holders(self, schedule_id: int, slot_times: Sequence[datetime]) -> Dict[datetime, Tuple]:
        """{slot: (slot state or None, run id or None, run state or None)} for the slots that
        already have a slot row or a run of the schedule (a run's slot row may have been trimmed)."""
        found: Dict[datetime, Tuple] = {}
        keys = [clock.to_text(t) for t in slot_times]
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = (ScheduleSlot.select(ScheduleSlot.slot_at, ScheduleSlot.state, ScheduleSlot.run, FlowRun.state)
                    .join(FlowRun, JOIN.LEFT_OUTER, on=(ScheduleSlot.run == FlowRun.id))
                    .where(ScheduleSlot.schedule == schedule_id, ScheduleSlot.slot_at.in_(chunk)).tuples())
            for slot_at, state, run_id, run_state in rows:
                found[clock.from_text(slot_at)] = (state, run_id, run_state)
            runs = (FlowRun.select(FlowRun.scheduled_at, FlowRun.id, FlowRun.state)
                    .where(FlowRun.schedule == schedule_id, FlowRun.scheduled_at.in_(chunk))
                    .order_by(FlowRun.id).tuples())
            for scheduled_at, run_id, run_state in runs:
                at = clock.from_text(scheduled_at)
                state, held, held_state = found.get(at, (None, None, None))
                found[at] = (state or "fired", held or run_id, held_state or run_state)
        return found

    # -- backfills --

    def create(self, schedule_id: int, range_from: datetime, range_to: datetime, reprocess: str,
               max_runs: int, reverse: bool, slots: Iterable[Tuple], now: datetime) -> Backfill:
        """A running backfill and its slots, in one transaction. `slots` are (slot, action, run id,
        reason); a slot left alone is done at once (outcome `left`)."""
        stamp = clock.to_text(now)
        with self.db.atomic("IMMEDIATE"):
            backfill_id = BackfillModel.insert(
                schedule=schedule_id, range_from=clock.to_text(range_from), range_to=clock.to_text(range_to),
                reprocess=reprocess, max_runs=max_runs, reverse=reverse, state=RUNNING,
                created_at=stamp, updated_at=stamp).execute()
            rows = [dict(backfill=backfill_id, slot_at=clock.to_text(slot_at), action=action,
                         state=DONE if action == LEAVE else PENDING, run=run_id, tries=0,
                         outcome=LEFT if action == LEAVE else None, reason=reason)
                    for slot_at, action, run_id, reason in slots]
            for i in range(0, len(rows), 200):
                BackfillSlot.insert_many(rows[i:i + 200]).execute()
        return self.get(backfill_id)

    def get(self, backfill_id: int) -> Backfill:
        row = BackfillModel.select().where(BackfillModel.id == backfill_id).dicts().first()
        if row is None:
            raise UsageError(f"no backfill {backfill_id} (see `featherflow backfill list`)")
        backfill = as_backfill(row)
        backfill.counts = self.counts(backfill_id)
        return backfill

    def list(self, schedule_id: Optional[int] = None, states_in: Optional[Iterable[str]] = None,
             limit: Optional[int] = None) -> List[Backfill]:
        """Newest first, each with its counts."""
        query = BackfillModel.select().order_by(BackfillModel.id.desc())
        if schedule_id is not None:
            query = query.where(BackfillModel.schedule == schedule_id)
        if states_in is not None:
            query = query.where(BackfillModel.state.in_(list(states_in)))
        if limit:
            query = query.limit(limit)
        found = [as_backfill(row) for row in query.dicts()]
        for backfill in found:
            backfill.counts = self.counts(backfill.id)
        return found

    def counts(self, backfill_id: int) -> Dict[str, int]:
        """Slots by progress (pending, launched, done) and the done ones by outcome."""
        return backfill_counts(BackfillSlot.select(BackfillSlot.state, BackfillSlot.outcome, fn.COUNT(BackfillSlot.id))
                         .where(BackfillSlot.backfill == backfill_id)
                         .group_by(BackfillSlot.state, BackfillSlot.outcome).tuples())

    def slots(self, backfill_id: int, open_only: bool = False, state: Optional[str] = None,
              limit: Optional[int] = None, newest_first: bool = False) -> List[SlotRow]:
        """Oldest first (or newest first), each with the state of its run; only open ones (not
        done), or in one `state`, at most `limit`."""
        query = (BackfillSlot.select(BackfillSlot, FlowRun.state.alias("run_state"),
                                     FlowRun.resumes.alias("run_resumes"), FlowRun.pid.alias("run_pid"),
                                     FlowRun.pid_start.alias("run_pid_start"), FlowRun.boot_id.alias("run_boot_id"),
                                     FlowRun.auto_resumed.alias("run_auto_resumed"))
                 .join(FlowRun, JOIN.LEFT_OUTER, on=(BackfillSlot.run == FlowRun.id))
                 .where(BackfillSlot.backfill == backfill_id)
                 .order_by(BackfillSlot.slot_at.desc() if newest_first else BackfillSlot.slot_at))
        if open_only:
            query = query.where(BackfillSlot.state != DONE)
        if state is not None:
            query = query.where(BackfillSlot.state == state)
        if limit:
            query = query.limit(limit)
        return [_slot(row) for row in query.dicts()]

    def backfill_of_run(self, run_id: int) -> Optional[int]:
        """The newest backfill that ran (or resumed) this run, if any."""
        return (BackfillSlot.select(fn.MAX(BackfillSlot.backfill)).where(BackfillSlot.run == run_id).scalar())

    def end(self, backfill_id: int, state: str, reason: Optional[str], now: datetime) -> bool:
        """Move a running backfill to `state` (success, failed, cancelled); a cancel also closes its
        pending slots (left). False when it was not running any more."""
        stamp = clock.to_text(now)
        with self.db.atomic("IMMEDIATE"):
            moved = BackfillModel.update(state=state, reason=reason, updated_at=stamp, ended_at=stamp).where(
                BackfillModel.id == backfill_id, BackfillModel.state == RUNNING).execute()
            if moved and state == CANCELLED:
                BackfillSlot.update(state=DONE, outcome=LEFT, reason="the backfill was cancelled first").where(
                    BackfillSlot.backfill == backfill_id, BackfillSlot.state == PENDING).execute()
        return bool(moved)

    # -- a slot's steps, each one transaction --

    def fire(self, backfill_id: int, slot_id: int, schedule_id: int, slot_at: datetime, run: NewRun,
             now: datetime) -> Optional[Run]:
        """Fire a pending slot: its schedule_slot row and queued run (trigger `backfill`) and the
        backfill slot's link, in ONE transaction. None when the slot was taken meanwhile (by the
        scheduler or another backfill: the slot is then left, linked to that run) or the slot is
        no longer pending."""
        stamp = clock.to_text(now)
        key = clock.to_text(slot_at)
        with self.db.atomic("IMMEDIATE"):
            row = BackfillSlot.select(BackfillSlot.state).where(BackfillSlot.id == slot_id).first()
            if row is None or row.state != PENDING or not self._running(backfill_id):
                return None
            state, holder, _ = self.slot_holders(schedule_id, [slot_at]).get(clock.as_utc(slot_at), (None, None, None))
            if holder is not None or state == "fired":
                BackfillSlot.update(state=DONE, outcome=LEFT, run=holder, reason=(
                    f"run {holder} filled it meanwhile" if holder else "fired meanwhile (its run was deleted)")
                ).where(BackfillSlot.id == slot_id).execute()
                return None
            new = self.runs.create_run(replace(run, trigger="backfill", schedule_id=schedule_id,
                                               scheduled_at=slot_at), now=now)
            reason = f"backfill {backfill_id}"
            if state is None:
                ScheduleSlot.insert(schedule=schedule_id, slot_at=key, state="fired", reason=reason,
                                    run=new.id, created_at=stamp).execute()
            else:  # waiting or skipped: the backfill fills it now
                ScheduleSlot.update(state="fired", reason=reason, run=new.id).where(
                    ScheduleSlot.schedule == schedule_id, ScheduleSlot.slot_at == key).execute()
            BackfillSlot.update(state=LAUNCHED, run=new.id, tries=BackfillSlot.tries + 1).where(
                BackfillSlot.id == slot_id).execute()
            self._touch(backfill_id, stamp)
        return new

    def claim_resume(self, backfill_id: int, slot_id: int, pid: int, pid_start: Optional[int],
                     boot_id: Optional[str], allowed: Sequence[str], now: datetime,
                     relaunch: bool = False) -> Optional[int]:
        """Take a slot to resume (or re-run) its run: returns the run's resume count to pass to
        the resuming process, or None (not pending, the backfill stopped, or the run moved on:
        then the slot is left). `relaunch` takes a launched slot again whose launcher died before
        the run was resumed (it keeps the count recorded first)."""
        stamp = clock.to_text(now)
        with self.db.atomic("IMMEDIATE"):
            slot = BackfillSlot.select().where(BackfillSlot.id == slot_id).first()
            if slot is None or slot.state != (LAUNCHED if relaunch else PENDING) or not self._running(backfill_id):
                return None
            run = FlowRun.select(FlowRun.state, FlowRun.resumes).where(FlowRun.id == slot.run_id).first()
            base = slot.resumes if relaunch else (run.resumes if run else None)
            if relaunch and run is not None and run.resumes != base:
                return None  # resumed meanwhile: the step follows that run now
            if run is None or run.state not in allowed or run.resumes != base:
                BackfillSlot.update(state=DONE, outcome=LEFT if run else "deleted", reason=(
                    f"its run is {run.state} now" if run else "its run was deleted")).where(
                    BackfillSlot.id == slot_id).execute()
                return None
            BackfillSlot.update(state=LAUNCHED, resumes=base, tries=BackfillSlot.tries + 1, launcher_pid=pid,
                                launcher_start=pid_start, launcher_boot=boot_id).where(
                BackfillSlot.id == slot_id).execute()
            self._touch(backfill_id, stamp)
        return base

    def set_launcher(self, slot_id: int, pid: int, pid_start: Optional[int], boot_id: Optional[str]) -> None:
        with self.db.atomic("IMMEDIATE"):
            BackfillSlot.update(launcher_pid=pid, launcher_start=pid_start, launcher_boot=boot_id).where(
                BackfillSlot.id == slot_id).execute()

    def finish_slot(self, backfill_id: int, slot_id: int, outcome: str, reason: Optional[str],
                    now: datetime) -> None:
        with self.db.atomic("IMMEDIATE"):
            BackfillSlot.update(state=DONE, outcome=outcome, reason=reason).where(
                BackfillSlot.id == slot_id, BackfillSlot.state != DONE).execute()
            self._touch(backfill_id, clock.to_text(now))

    def count_try(self, slot_id: int) -> None:
        with self.db.atomic("IMMEDIATE"):
            BackfillSlot.update(tries=BackfillSlot.tries + 1).where(BackfillSlot.id == slot_id).execute()

    def _running(self, backfill_id: int) -> bool:
        return BackfillModel.select(BackfillModel.state).where(BackfillModel.id == backfill_id).scalar() == RUNNING

    def _touch(self, backfill_id: int, stamp: str) -> None:
        BackfillModel.update(updated_at=stamp).where(BackfillModel.id == backfill_id).execute()

