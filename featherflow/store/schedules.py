"""The schedules' part of the store: schedules, the slots they fired, queued or
skipped, and the scheduler's own row; `store.Store` inherits it.

UNIQUE(schedule_id, slot_at) means a slot is recorded once, whatever crashes;
a fired slot and its queued run are written in the same transaction, so no
fired slot lacks its run. Each write is one short BEGIN IMMEDIATE transaction.
"""

import json
from dataclasses import replace
from datetime import datetime
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from peewee import JOIN, SqliteDatabase

from featherflow import clock, states
from featherflow.errors import ConflictError, UsageError
from featherflow.store.models import FlowRun, Schedule as ScheduleModel, ScheduleSlot, SchedulerState
from featherflow.store.records import Run, Schedule, SchedulerRow, Slot, as_run, as_schedule, as_slot, parse_times
from featherflow.store.runs import RunStore


class ScheduleStore:
    """Schedules, their slots and the scheduler's row; a fired slot's run is created through
    `runs` in the slot's own transaction."""

    def __init__(self, db: SqliteDatabase, runs: RunStore):
        self.db = db
        self.runs = runs

    def add_schedule(self, name: str, flow_name: str, cron: str, tz: str, params: Dict,
                     flows_dir: str, tasks_dir: str, output_dir: str, catchup: str = "latest",
                     overlap: str = "skip", on_interrupt: str = "resume", enabled: bool = True,
                     description: str = "", now: Optional[datetime] = None) -> "Schedule":
        stamp = clock.to_text(now or clock.now())
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
        return as_schedule(row)

    def list_schedules(self, enabled_only: bool = False) -> List["Schedule"]:
        query = ScheduleModel.select().order_by(ScheduleModel.name)
        if enabled_only:
            query = query.where(ScheduleModel.enabled == True)  # noqa: E712 (peewee expression)
        return [as_schedule(row) for row in query.dicts()]

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
        stamp = clock.to_text(now or clock.now())
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
        return clock.from_text(row.slot_at) if row else None

    def waiting_slots(self, schedule_id: int) -> List[datetime]:
        query = (ScheduleSlot.select(ScheduleSlot.slot_at)
                 .where(ScheduleSlot.schedule == schedule_id, ScheduleSlot.state == SLOT_WAITING)
                 .order_by(ScheduleSlot.slot_at))
        return [clock.from_text(row.slot_at) for row in query]

    def record_decision(self, schedule_id: int, skip: Sequence = (), wait: Sequence = (),
                        fire: Sequence = (), now: Optional[datetime] = None,
                        before_commit: "Optional[Callable[[], None]]" = None) -> List[Run]:
        """Record skipped and waiting slots, and fire slots, all in ONE transaction.

        `skip` and `wait` are (slot, reason) pairs; `fire` is (slot, run) pairs where
        `run` is the NewRun to create, or (slot, run, reason) (why it fired
        late: catch-up, waited). A fired slot gets its queued run (trigger `schedule`,
        scheduled_at = the slot) in the same transaction. A slot already recorded is left
        alone, except a waiting one, which may fire or be skipped now: its reason is
        replaced (a fired slot no longer says it waits). Returns the runs created. `before_commit` is called just before
        the commit (fault-injection tests).
        """
        stamp = clock.to_text(now or clock.now())
        created = []
        with self.db.atomic("IMMEDIATE"):
            for slot_at, reason in skip:
                if self._put_slot(schedule_id, slot_at, SLOT_SKIPPED, reason, stamp):
                    # A skipped slot is a `missed` notification, in the decision's own transaction.
                    flow = ScheduleModel.select(ScheduleModel.flow_name).where(ScheduleModel.id == schedule_id).scalar()
                    states.record_event(self.db.cursor(), "missed", stamp, schedule_id=schedule_id,
                                        slot_at=clock.to_text(slot_at),
                                        detail=json.dumps({"reason": reason, "flow": flow}, sort_keys=True))
            for slot_at, reason in wait:
                self._put_slot(schedule_id, slot_at, SLOT_WAITING, reason, stamp)
            for slot_at, run, *note in fire:
                if self._slot_state(schedule_id, slot_at) not in (None, SLOT_WAITING):
                    continue
                new = self.runs.create_run(replace(run, trigger="schedule", schedule_id=schedule_id,
                                                   scheduled_at=slot_at), now=now)
                self._put_slot(schedule_id, slot_at, SLOT_FIRED, note[0] if note else None, stamp, run_id=new.id)
                created.append(new)
            if before_commit is not None:
                before_commit()
        return created

    def _slot_state(self, schedule_id: int, slot_at: datetime) -> Optional[str]:
        row = (ScheduleSlot.select(ScheduleSlot.state)
               .where(ScheduleSlot.schedule == schedule_id,
                      ScheduleSlot.slot_at == clock.to_text(slot_at)).first())
        return row.state if row else None

    def _put_slot(self, schedule_id, slot_at, state, reason, stamp, run_id=None) -> bool:
        """Insert the slot, or move a waiting one on; inside the caller's transaction."""
        key = clock.to_text(slot_at)
        old = self._slot_state(schedule_id, slot_at)
        if old is None:
            ScheduleSlot.insert(schedule=schedule_id, slot_at=key, state=state, reason=reason,
                                run=run_id, created_at=stamp).execute()
            return True
        if old == SLOT_WAITING and state != SLOT_WAITING:
            updates = {ScheduleSlot.state: state, ScheduleSlot.run: run_id, ScheduleSlot.reason: reason}
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
        return [as_slot(row) for row in query.dicts()]

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
        return [as_run(row) for row in query.dicts()]

    def runs_to_auto_resume(self) -> List[Run]:
        """Interrupted scheduled runs never auto-resumed, of enabled schedules with on_interrupt=resume."""
        query = (FlowRun.select(FlowRun).join(ScheduleModel, on=(FlowRun.schedule == ScheduleModel.id))
                 .where(FlowRun.state == states.INTERRUPTED, FlowRun.auto_resumed == False,  # noqa: E712
                        FlowRun.trigger == "schedule", ScheduleModel.on_interrupt == "resume",
                        ScheduleModel.enabled == True)  # noqa: E712
                 .order_by(FlowRun.id))
        return [as_run(row) for row in query.dicts()]

    def claim_auto_resume(self, run_id: int) -> bool:
        """Mark an interrupted run auto-resumed BEFORE resuming it: at most once, whatever crashes."""
        with self.db.atomic("IMMEDIATE"):
            return FlowRun.update(auto_resumed=True).where(
                FlowRun.id == run_id, FlowRun.state == states.INTERRUPTED,
                FlowRun.auto_resumed == False).execute() == 1  # noqa: E712

    def scheduler_row(self) -> Optional["SchedulerRow"]:
        row = SchedulerState.select().where(SchedulerState.id == 1).dicts().first()
        if row is None:
            return None
        row.pop("id")
        return SchedulerRow(**parse_times(dict(row), "started_at", "heartbeat_at", "stopped_at"))

    def scheduler_started(self, pid: int, pid_start: Optional[int], boot_id: Optional[str],
                          now: datetime, is_alive: "Callable[[SchedulerRow], bool]",
                          downtime: "Optional[Callable[[SchedulerRow], Optional[Dict]]]" = None
                          ) -> Optional["SchedulerRow"]:
        """Record this process as the database's scheduler; if another live one is, return it instead.

        `downtime(previous row)` may return the detail of a `scheduler` notification (the
        daemon was down long enough to say so), written in the same transaction."""
        stamp = clock.to_text(now)
        with self.db.atomic("IMMEDIATE"):
            row = self.scheduler_row()
            if row is not None and row.stopped_at is None and row.pid != pid and is_alive(row):
                return row
            detail = downtime(row) if downtime is not None and row is not None else None
            if detail is not None:
                states.record_event(self.db.cursor(), "scheduler", stamp,
                                    detail=json.dumps(detail, sort_keys=True))
            SchedulerState.replace(id=1, pid=pid, pid_start=pid_start, boot_id=boot_id, started_at=stamp,
                                   heartbeat_at=stamp, stopped_at=None).execute()
        return None

    def scheduler_heartbeat(self, pid: int, now: datetime) -> None:
        with self.db.atomic("IMMEDIATE"):
            SchedulerState.update(heartbeat_at=clock.to_text(now)).where(
                SchedulerState.id == 1, SchedulerState.pid == pid).execute()

    def scheduler_stopped(self, pid: int, now: datetime) -> None:
        with self.db.atomic("IMMEDIATE"):
            SchedulerState.update(stopped_at=clock.to_text(now)).where(
                SchedulerState.id == 1, SchedulerState.pid == pid).execute()


# -- schedules (plain objects) --------------------------------------------------

SLOT_FIRED, SLOT_WAITING, SLOT_SKIPPED = "fired", "waiting", "skipped"
