"""Backfill: fill a schedule's slots over a range on purpose, at most N runs at a time, durably.

A backfill is rows (store/backfills.py): its range, options, state and one row per
slot. This module checks a request, plans what happens to each slot of the range
(the policy is action_for's docstring), records it, cancels it and says how far it
got; backfill_driver.py drives it (the CLI in the foreground, `backfill resume ID`,
or the scheduler daemon on each tick).

Slots are the schedule's own (slots.slots_between, which the daemon's firing uses:
the same cron, zone and DST rules) and are fired under the scheduler's exactly-once
key with trigger `backfill` (store/backfills.py), so nothing ever doubles a slot.
"""

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import List, Optional, Tuple

from featherflow import clock, config as configmod, states
from featherflow.config import Config
from featherflow.engine import limits
from featherflow.errors import ConflictError, UsageError
from featherflow.scheduler import slots
from featherflow.store import Store
from featherflow.store import backfills as rows

log = logging.getLogger(__name__)

REPROCESS = ("none", "failed", "all")
MAX_SLOTS = 5000  # slots one backfill covers at most: a bigger range is refused (split it)
WHEN_FORMAT = ("valid: a date YYYY-MM-DD or a time YYYY-MM-DDTHH:MM[:SS], in the schedule's time zone "
               "unless it ends in Z or +HH:MM")


# -- the range and the plan (pure) ---------------------------------------------------------

def in_zone(moment: Optional[datetime], tz: str) -> str:
    """`2026-03-29 03:00:00 CEST`: a slot as the schedule's wall clock shows it."""
    if moment is None:
        return "-"
    return clock.as_utc(moment).astimezone(slots.zone(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def parse_when(text: str, tz: str, option: str, end: bool = False) -> datetime:
    """--from/--to as an aware UTC instant. A date is the start of that day in `tz` (for --to, its
    end: --to is inclusive, as in Airflow); a time without an offset is a wall time in `tz`."""
    raw = (text or "").strip()
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"bad {option} {text!r} ({WHEN_FORMAT})") from None
    is_date = len(raw) == 10
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=slots.zone(tz))
    if is_date and end:
        moment = moment.replace(tzinfo=None) + timedelta(days=1)
        return clock.as_utc(moment.replace(tzinfo=slots.zone(tz))) - timedelta(microseconds=1)
    return clock.as_utc(moment)


def range_slots(cron: str, tz: str, start: datetime, end: datetime) -> List[datetime]:
    """The schedule's slots in [start, end], oldest first (its own generator); more than
    MAX_SLOTS is refused."""
    found, more = slots.slots_between(cron, tz, start - timedelta(microseconds=1), end, MAX_SLOTS)
    if more:
        raise UsageError(f"the range holds more than {MAX_SLOTS} slots of '{cron}' (valid: at most "
                         f"{MAX_SLOTS} per backfill; split the range into several backfills)")
    return found


def action_for(reprocess: str, slot_state: Optional[str], run_id: Optional[int],
               run_state: Optional[str]) -> Tuple[str, Optional[str]]:
    """What a backfill does with one slot, and why (None: it just runs).

    - A slot without a run (never recorded, skipped as missed, or waiting) gets a new run.
    - A slot whose run is queued or running is left alone, whatever --reprocess says.
    - A slot fired whose run was deleted (`runs prune`) is left alone.
    - `--reprocess none` (default) leaves every slot that has a run.
    - `failed`: a failed or interrupted run is resumed (same run, the tasks that did not
      succeed run again as new attempts); the others are left.
    - `all`: a failed or interrupted run is resumed, a succeeded or cancelled one is re-run,
      both with EVERY task as a new attempt of the same run (the slot keeps its one run).
    """
    if run_id is None and slot_state == "fired":
        return rows.LEAVE, "its run was deleted"
    if run_id is None:
        return rows.RUN, None
    if run_state in (states.QUEUED, states.RUNNING):
        return rows.LEAVE, f"run {run_id} is {run_state}"
    if reprocess == "all":
        return (rows.RERUN, f"re-runs run {run_id} ({run_state}), every task")
    if reprocess == "failed" and run_state in states.RESUMABLE:
        return rows.RESUME, f"resumes run {run_id} ({run_state})"
    return rows.LEAVE, f"run {run_id} is {run_state} (--reprocess {reprocess})"


@dataclass
class Planned:
    slot_at: datetime
    action: str
    run_id: Optional[int]
    reason: Optional[str]


def plan(store: Optional[Store], schedule, start: datetime, end: datetime, reprocess: str) -> List[Planned]:
    """Every slot of the range and what happens to it (a schedule not yet recorded: all run)."""
    found = range_slots(schedule.cron, schedule.tz, start, end)
    holders = store.backfills.slot_holders(schedule.id, found) if store is not None and schedule.id else {}
    planned = []
    for slot_at in found:
        slot_state, run_id, run_state = holders.get(slot_at, (None, None, None))
        action, reason = action_for(reprocess, slot_state, run_id, run_state)
        planned.append(Planned(slot_at, action, run_id, reason))
    return planned


# -- creating one --------------------------------------------------------------------------

@dataclass
class Request:
    schedule: Optional[str] = None
    flow: Optional[str] = None
    cron: Optional[str] = None
    tz: Optional[str] = None
    start: Optional[str] = None
    end: Optional[str] = None
    reprocess: str = "none"
    max_runs: int = 1
    reverse: bool = False


@dataclass
class Created:
    schedule: object
    planned: List[Planned]
    backfill: Optional[rows.Backfill]  # None for a dry run
    implicit: bool = False  # the schedule was made for --flow/--cron (disabled, holds the slots)


def implicit_name(flow: str, cron: str, tz: str) -> str:
    """The name of the disabled schedule that holds the slots of `--flow F --cron EXPR --tz TZ`."""
    digest = hashlib.sha1(f"{cron}\n{tz}".encode()).hexdigest()[:8]
    return f"{flow}.backfill-{digest}"


def resolve_schedule(config: Config, store: Store, req: Request, now: datetime, create: bool):
    """The schedule whose slots a request fills: named, or for --flow/--cron one of the flow
    with the same cron and zone, else the implicit disabled one (made unless `create` is False:
    then an unsaved stand-in with id None)."""
    if req.schedule and (req.flow or req.cron):
        raise UsageError("give a SCHEDULE, or --flow FLOW --cron EXPR, not both")
    if req.schedule:
        if req.tz:
            raise UsageError("--tz goes with --flow/--cron (a schedule has its own zone)")
        return store.schedules.get_schedule(req.schedule), False
    if not (req.flow and req.cron):
        raise UsageError("say what to backfill: a SCHEDULE name, or --flow FLOW --cron EXPR [--tz ZONE]")
    try:
        expr = slots.parse_cron(req.cron)
        tz = req.tz or slots.local_zone_name(configmod.scheduler_env()["tz"])
        slots.zone(tz)
    except slots.ScheduleError as exc:
        raise UsageError(str(exc)) from None
    for schedule in store.schedules.list_schedules():
        if (schedule.flow_name, schedule.cron, schedule.tz) == (req.flow, expr, tz):
            return schedule, schedule.name == implicit_name(req.flow, expr, tz)
    flow = limits.load_flow(config.flows_dir, req.flow, config.tasks_dir)
    if not create:
        return _StandIn(flow.name, expr, tz), True
    schedule = store.schedules.add_schedule(
        implicit_name(flow.name, expr, tz), flow.name, expr, tz, {}, str(config.flows_dir), str(config.tasks_dir),
        str(config.output_dir), enabled=False, now=now,
        description=f"made by `featherflow backfill --flow {flow.name} --cron '{expr}'`: holds the slots "
                    "of its backfills (disabled: it never fires by itself)")
    return schedule, True


@dataclass
class _StandIn:
    flow_name: str
    cron: str
    tz: str
    id: Optional[int] = None
    name: str = ""

    def __post_init__(self):
        self.name = implicit_name(self.flow_name, self.cron, self.tz)


def create(config: Config, store: Store, req: Request, now: datetime, dry_run: bool = False) -> Created:
    """Check a request, plan its slots and (unless `dry_run`) record the backfill, running."""
    if req.reprocess not in REPROCESS:
        raise UsageError(f"bad --reprocess {req.reprocess!r} (valid: {', '.join(REPROCESS)})")
    if req.max_runs < 1:
        raise UsageError(f"--max-runs must be at least 1, not {req.max_runs}")
    schedule, implicit = resolve_schedule(config, store, req, now, create=False)
    if not req.start or not req.end:
        raise UsageError(f"give the range: --from WHEN --to WHEN ({WHEN_FORMAT})")
    start = parse_when(req.start, schedule.tz, "--from")
    end = parse_when(req.end, schedule.tz, "--to", end=True)
    if start > end:
        raise UsageError(f"--from {req.start} is after --to {req.end} (valid: --from at or before --to)")
    if start > clock.as_utc(now):
        raise UsageError(f"--from {req.start} is in the future (valid: a range that starts before now; "
                         "slots to come are the scheduler's)")
    end = min(end, clock.as_utc(now))  # slots after now are the scheduler's to fire
    planned = plan(store, schedule, start, end, req.reprocess)
    if not planned:
        raise UsageError(f"no slot of '{schedule.cron}' ({schedule.tz}) falls from {req.start} to {req.end}")
    if dry_run:
        return Created(schedule, planned, None, implicit)
    if schedule.id is None:
        schedule, implicit = resolve_schedule(config, store, req, now, create=True)
    backfill = store.backfills.create(
        schedule.id, start, end, req.reprocess, req.max_runs, req.reverse,
        [(p.slot_at, p.action, p.run_id, p.reason) for p in planned], now)
    log.debug("backfill %s of schedule %s: %d slots", backfill.id, schedule.name, len(planned))
    return Created(schedule, planned, backfill, implicit)


def cancel(store: Store, backfill_id: int, now: datetime) -> rows.Backfill:
    """Stop starting runs: pending slots are left, runs already started go on to their end
    (`runs cancel` stops one); the backfill is `cancelled` at once."""
    backfill = store.backfills.get(backfill_id)
    if backfill.state != rows.RUNNING or not store.backfills.end(backfill_id, rows.CANCELLED, "cancelled", now):
        raise ConflictError(f"backfill {backfill_id} is {backfill.state}: only a running one can be cancelled")
    return store.backfills.get(backfill_id)


# -- what list/show print ------------------------------------------------------------------

def as_json(store: Store, backfill: rows.Backfill, with_slots: bool = False) -> dict:
    """The stable JSON form of a backfill (and its slots)."""
    schedule = store.schedules.get_schedule(backfill.schedule_id)
    data = {"id": backfill.id, "schedule": schedule.name, "flow": schedule.flow_name, "cron": schedule.cron,
            "tz": schedule.tz, "from": clock.iso(backfill.range_from), "to": clock.iso(backfill.range_to),
            "reprocess": backfill.reprocess, "max_runs": backfill.max_runs, "reverse": backfill.reverse,
            "state": backfill.state, "reason": backfill.reason, "created_at": clock.iso(backfill.created_at),
            "updated_at": clock.iso(backfill.updated_at), "ended_at": clock.iso(backfill.ended_at),
            "progress": dict(backfill.counts or {})}
    if with_slots:
        data["slots"] = [{"slot_at": clock.iso(s.slot_at), "action": s.action, "state": s.state,
                          "run_id": s.run_id, "run_state": s.run_state, "outcome": s.outcome, "reason": s.reason,
                          "tries": s.tries} for s in store.backfills.slots(backfill.id)]
    return data


def progress_text(counts: dict) -> str:
    """`3/10 done (2 success, 1 left), 1 started, 6 to go` (started: its run has not ended yet)."""
    total = sum(counts.get(k, 0) for k in (rows.PENDING, rows.LAUNCHED, rows.DONE))
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())
                         if k not in (rows.PENDING, rows.LAUNCHED, rows.DONE) and n)
    text = f"{counts.get(rows.DONE, 0)}/{total} done" + (f" ({outcomes})" if outcomes else "")
    if counts.get(rows.LAUNCHED):
        text += f", {counts[rows.LAUNCHED]} started"
    if counts.get(rows.PENDING):
        text += f", {counts[rows.PENDING]} to go"
    return text
