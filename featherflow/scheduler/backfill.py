"""Backfill: fill a schedule's slots over a range on purpose, at most N runs at a time, durably.

A backfill is rows (store/backfills.py): its range, options, state and one row per
slot. Driving it is a series of steps, each a pure reading of those rows plus a few
one-transaction moves, so any process may drive it after any crash: the CLI in the
foreground, `backfill resume ID`, or the scheduler daemon on each tick. One driver
at a time per backfill: a step holds <config dir>/backfills/ID.lock (flock: the
kernel releases it when the holder dies). Runs are launched in their own session,
like the scheduler's, so a driver killed at any point leaves them running.

Slots are the schedule's own (slots.slots_between: the same cron, zone and DST rules
as its firing) and fired under the scheduler's exactly-once key with trigger
`backfill` (store/backfills.py), so nothing ever doubles a slot.
"""

import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from featherflow import clock, config as configmod, flow as flowmod, graph, proc, states
from featherflow.config import Config
from featherflow.engine import launch, limits, reconcile
from featherflow.errors import ConflictError, FeatherflowError, UsageError
from featherflow.scheduler import slots
from featherflow.store import Store
from featherflow.store import backfills as rows
from featherflow.store.records import NewRun

log = logging.getLogger(__name__)

REPROCESS = ("none", "failed", "all")
MAX_SLOTS = 5000  # slots one backfill covers at most: a bigger range is refused (split it)
MAX_LAUNCHES = 3  # processes started for one slot before it is given up as failed
POLL = 0.25  # seconds between two steps of the foreground driver
LOG_NAME = "backfill.log"
# Where a driver given FEATHERFLOW_FAULT (a test-only hook) kills itself: between the steps
# of launching a slot's run, to show that each crash is taken up by the next driver.
FAULT_POINTS = ("backfill-after-fire", "backfill-after-spawn", "backfill-after-claim", "backfill-after-resume-spawn")
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
    states_of = {}
    run_ids = [h[1] for h in holders.values() if h[1] is not None]
    for run_id in run_ids:
        states_of[run_id] = store.runs.get_run(run_id).state
    planned = []
    for slot_at in found:
        slot_state, run_id = holders.get(slot_at, (None, None))
        action, reason = action_for(reprocess, slot_state, run_id, states_of.get(run_id))
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
    if not create:
        limits.load_flow(config.flows_dir, req.flow, config.tasks_dir)
        return _StandIn(req.flow, expr, tz), True
    from featherflow.scheduler import admin  # here: admin -> control -> daemon imports this module

    schedule = admin.add_schedule(
        config, store, req.flow, cron=expr, tz=tz, name=implicit_name(req.flow, expr, tz), enabled=False,
        description=f"made by `featherflow backfill --flow {req.flow} --cron '{expr}'`: holds the slots "
                    "of its backfills (disabled: it never fires by itself)", now=now)
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


# -- driving one ---------------------------------------------------------------------------

def lock_path(config: Config, backfill_id: int) -> Path:
    return config.config_dir / "backfills" / f"{backfill_id}.lock"


def take_lock(config: Config, backfill_id: int) -> Optional[int]:
    """The open fd that holds the backfill's driver lock, or None when another process holds it."""
    path = lock_path(config, backfill_id)
    configmod.ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def lock_holder(config: Config, backfill_id: int) -> str:
    try:
        return lock_path(config, backfill_id).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def release_lock(config: Config, backfill_id: int, fd: int, finished: bool = False) -> None:
    if finished:  # a finished backfill needs no lock: a later driver finds it finished
        try:
            lock_path(config, backfill_id).unlink()
        except OSError:
            pass
    os.close(fd)


class Driver:
    """Moves backfills on: launches their runs, follows them, ends the backfill. Takes what it
    uses (a config, a store); `spawn(argv, run) -> pid` can be replaced in tests."""

    def __init__(self, config: Config, store: Store, spawn: Optional[Callable] = None,
                 fault: Optional[str] = None):
        self.fault = fault if fault in FAULT_POINTS else None
        self.config = config
        self.store = store
        self.pid = os.getpid()
        self.identity = proc.identity(self.pid)
        self.spawn = spawn or self._spawn
        self.log_path = config.log_dir / LOG_NAME

    def _fault(self, point: str) -> None:
        if self.fault == point:
            log.warning("FEATHERFLOW_FAULT: killing myself at %s", point)
            os.kill(self.pid, signal.SIGKILL)

    def step(self, backfill_id: int, now: datetime) -> List[str]:
        """One pass over the backfill's open slots (the caller holds its lock); what happened, in
        words. The order keeps every slot exactly once whatever crashed before: runs already
        launched are followed (re-launched when their launcher died) before new ones start."""
        store, said = self.store, []
        backfill = store.backfills.get(backfill_id)
        if backfill.state != rows.RUNNING:
            return said
        schedule = store.schedules.get_schedule(backfill.schedule_id)
        open_slots = store.backfills.slots(backfill_id, open_only=True)
        launched = [s for s in open_slots if s.state == rows.LAUNCHED]
        if any(s.run_state in (states.QUEUED, states.RUNNING) for s in launched):
            self._adopt(launched, said)
            reconcile.reconcile(store)
            launched = [s for s in store.backfills.slots(backfill_id, open_only=True) if s.state == rows.LAUNCHED]
        active = 0
        for slot in launched:
            active += self._follow(backfill, schedule, slot, now, said)
        pending = [s for s in open_slots if s.state == rows.PENDING]
        pending.sort(key=lambda s: s.slot_at, reverse=backfill.reverse)
        for slot in pending:
            if active >= backfill.max_runs:
                break
            active += self._start(backfill, schedule, slot, now, said)
        counts = store.backfills.counts(backfill_id)
        if counts[rows.PENDING] == 0 and counts[rows.LAUNCHED] == 0:
            bad = sum(n for k, n in counts.items() if k not in (rows.PENDING, rows.LAUNCHED, rows.DONE,
                                                                states.SUCCESS, rows.LEFT))
            state = rows.FAILED if bad else rows.SUCCESS
            if store.backfills.end(backfill_id, state, f"{bad} slot(s) did not succeed" if bad else None, now):
                log.info("backfill %s ended: %s", backfill_id, state)
        return said

    def _adopt(self, launched, said: List[str]) -> None:
        """Queued runs of this backfill whose launcher died (before or while starting them)."""
        for slot in launched:
            if slot.run_state != states.QUEUED or slot.run_pid == self.pid:
                continue
            if proc.is_alive(slot.run_pid, slot.run_pid_start, slot.run_boot_id):
                continue
            if slot.tries >= MAX_LAUNCHES:
                self.store.runs.interrupt(slot.run_id, states.QUEUED, f"could not start it ({MAX_LAUNCHES} tries; "
                                          f"see {self.log_path})", new=states.FAILED)
                continue
            if self.store.runs.adopt_run(slot.run_id, slot.run_pid, self.pid, *self.identity):
                self.store.backfills.count_try(slot.id)
                self._launch_queued(self.store.runs.get_run(slot.run_id))
                said.append(f"run {slot.run_id}: its launcher is gone; started it again")

    def _follow(self, backfill, schedule, slot, now: datetime, said: List[str]) -> int:
        """1 while the slot's run (or its resume) is active, else 0 (and the slot is done)."""
        store = self.store
        when = in_zone(slot.slot_at, schedule.tz)
        ours = slot.action == rows.RUN or (slot.run_resumes or 0) > (slot.resumes or 0)
        if not ours:  # a resume launched, not yet taken by its process
            if proc.is_alive(slot.launcher_pid, slot.launcher_start, slot.launcher_boot):
                return 1
            if slot.tries >= MAX_LAUNCHES:
                store.backfills.finish_slot(backfill.id, slot.id, states.FAILED,
                                            f"could not resume run {slot.run_id} (see {self.log_path})", now)
                said.append(f"slot {when}: could not resume run {slot.run_id}")
                return 0
            return self._resume(backfill, slot, when, now, said, relaunch=True)
        if slot.run_state is None:
            store.backfills.finish_slot(backfill.id, slot.id, "deleted", "its run was deleted", now)
            return 0
        if slot.run_state in (states.QUEUED, states.RUNNING):
            return 1
        if slot.run_state == states.INTERRUPTED and not slot.run_auto_resumed:
            if store.schedules.claim_auto_resume(slot.run_id):  # once, as the scheduler does
                self._spawn_logged(["_start-run", str(slot.run_id), "--resume"], store.runs.get_run(slot.run_id))
                said.append(f"slot {when}: run {slot.run_id} was interrupted; resuming it once")
                return 1
        store.backfills.finish_slot(backfill.id, slot.id, slot.run_state, None, now)
        said.append(f"slot {when}: run {slot.run_id} {slot.run_state}")
        return 0

    def _start(self, backfill, schedule, slot, now: datetime, said: List[str]) -> int:
        when = in_zone(slot.slot_at, schedule.tz)
        if slot.action in (rows.RESUME, rows.RERUN):
            return self._resume(backfill, slot, when, now, said)
        try:
            new = self.new_run(schedule)
        except FeatherflowError as exc:
            first = exc.errors[0] if getattr(exc, "errors", None) else str(exc)
            self.store.backfills.finish_slot(backfill.id, slot.id, states.FAILED,
                                             f"not run: flow {schedule.flow_name!r} cannot run ({first})", now)
            said.append(f"slot {when}: not run: {first}")
            return 0
        run = self.store.backfills.fire(backfill.id, slot.id, schedule.id, slot.slot_at, new, now)
        if run is None:
            said.append(f"slot {when}: taken meanwhile; left alone")
            return 0
        said.append(f"slot {when}: run {run.id} started")
        self._fault("backfill-after-fire")
        return 1 if self._launch_queued(run) else 0

    def _resume(self, backfill, slot, when: str, now: datetime, said: List[str], relaunch: bool = False) -> int:
        allowed = states.RESUMABLE + (states.RERUNNABLE if slot.action == rows.RERUN else ())
        base = self.store.backfills.claim_resume(backfill.id, slot.id, self.pid, *self.identity, allowed,
                                                 now, relaunch=relaunch)
        if base is None:
            return 0
        self._fault("backfill-after-claim")
        argv = ["_backfill-resume", str(slot.run_id), "--resumes", str(base)]
        pid = self._spawn_logged(argv + (["--all"] if slot.action == rows.RERUN else []),
                                 self.store.runs.get_run(slot.run_id))
        self._fault("backfill-after-resume-spawn")
        if pid:
            self.store.backfills.set_launcher(slot.id, pid, proc.start_time(pid), proc.boot_id())
        verb = "re-running" if slot.action == rows.RERUN else "resuming"
        said.append(f"slot {when}: {verb} run {slot.run_id}")
        return 1

    def new_run(self, schedule) -> NewRun:
        """The run a slot of `schedule` creates (the flow as it is now), held by this driver."""
        flow = flowmod.load(Path(schedule.flows_dir), schedule.flow_name, Path(schedule.tasks_dir))
        params = launch.merge_params(flow, schedule.params)
        limits.check(flow, params, schedule.tasks_dir, "the schedule's params",
                     str(flowmod.flow_path(Path(schedule.flows_dir), flow.name)))
        start, boot = self.identity
        return NewRun(flow_name=flow.name, task_ids=graph.topological_order(flow.edges),
                      snapshot=flow.snapshot(), params=params, trigger="backfill",
                      flows_dir=schedule.flows_dir, tasks_dir=schedule.tasks_dir, output_dir=schedule.output_dir,
                      max_parallel=flow.max_parallel or launch.default_parallel(),
                      pid=self.pid, pid_start=start, boot_id=boot)

    def _launch_queued(self, run) -> Optional[int]:
        pid = self._spawn_logged(["_start-run", str(run.id), "--launcher", str(self.pid)], run)
        self._fault("backfill-after-spawn")
        if pid:
            self.store.runs.adopt_run(run.id, self.pid, pid, proc.start_time(pid), proc.boot_id())
        else:
            self.store.runs.interrupt(run.id, states.QUEUED, f"could not start it (see {self.log_path})",
                                      new=states.FAILED)
        return pid

    def _spawn_logged(self, argv: List[str], run) -> Optional[int]:
        try:
            return self.spawn(argv, run)
        except OSError as exc:
            log.error("run %s: could not start it: %s", run.id, exc)
            return None

    def _spawn(self, argv: List[str], run) -> int:
        """`featherflow ... ARGV` in its own session, from the parent of the flows dir, never waited on."""
        cfg = self.config
        full = [sys.executable, "-m", "featherflow", "-f", run.flows_dir, "-t", run.tasks_dir,
                "-o", run.output_dir, "--config-dir", str(cfg.config_dir), "--db", str(cfg.db_path)] + argv
        cwd = Path(run.flows_dir).parent
        env = dict(os.environ)
        env.pop("FEATHERFLOW_FAULT", None)
        configmod.ensure_private_dir(self.log_path.parent)
        with open(self.log_path, "ab") as errors:
            child = subprocess.Popen(full, cwd=str(cwd) if cwd.is_dir() else "/", env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                     start_new_session=True, close_fds=True)
        return child.pid


def drive(config: Config, store: Store, backfill_id: int, on_line: Callable[[str], None] = lambda line: None,
          poll: float = POLL, driver: Optional[Driver] = None) -> rows.Backfill:
    """Drive one backfill in the foreground until it ends; returns it. ConflictError (exit 3)
    when another process drives it or it is not running. Ctrl-C (KeyboardInterrupt) stops
    driving and leaves it running: the scheduler daemon or `backfill resume` continues it."""
    backfill = store.backfills.get(backfill_id)
    if backfill.state != rows.RUNNING:
        raise ConflictError(f"backfill {backfill_id} is {backfill.state}: nothing to resume")
    fd = take_lock(config, backfill_id)
    if fd is None:
        raise ConflictError(f"backfill {backfill_id} is being driven by process {lock_holder(config, backfill_id)} "
                            "(the scheduler daemon or another `featherflow backfill`)")
    driver = driver or Driver(config, store)
    finished = False
    try:
        while True:
            for line in driver.step(backfill_id, clock.now()):
                on_line(line)
            backfill = store.backfills.get(backfill_id)
            if backfill.state != rows.RUNNING:
                finished = True
                return backfill
            time.sleep(poll)
    finally:
        release_lock(config, backfill_id, fd, finished)


def tick(config: Config, store: Store, now: datetime, driver: Optional[Driver] = None) -> int:
    """The scheduler daemon's part: one step of every running backfill no one else drives.
    Returns how many it stepped; a backfill that fails is logged and the others go on."""
    stepped = 0
    for backfill in store.backfills.list(states_in=[rows.RUNNING]):
        fd = take_lock(config, backfill.id)
        if fd is None:
            continue
        finished = False
        try:
            driver = driver or Driver(config, store)
            for line in driver.step(backfill.id, now):
                log.info("backfill %s: %s", backfill.id, line)
            finished = store.backfills.get(backfill.id).state != rows.RUNNING
            stepped += 1
        except Exception:
            log.exception("backfill %s: step failed", backfill.id)
        finally:
            release_lock(config, backfill.id, fd, finished)
    return stepped


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
    """`3/10 done (2 success, 1 left), 1 running, 6 to go`."""
    total = sum(counts.get(k, 0) for k in (rows.PENDING, rows.LAUNCHED, rows.DONE))
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())
                         if k not in (rows.PENDING, rows.LAUNCHED, rows.DONE) and n)
    text = f"{counts.get(rows.DONE, 0)}/{total} done" + (f" ({outcomes})" if outcomes else "")
    if counts.get(rows.LAUNCHED):
        text += f", {counts[rows.LAUNCHED]} running"
    if counts.get(rows.PENDING):
        text += f", {counts[rows.PENDING]} to go"
    return text
