"""The scheduler daemon: fires due slots into runs, one daemon per database.

It keeps no state of its own. Schedules, every fired, waiting or skipped slot
and the daemon's heartbeat are rows in the database; a fired slot and its
queued run commit in one transaction under UNIQUE(schedule, slot), so the
daemon can be SIGKILLed or unplugged at any moment and a restart continues:

    tick(now): adopt queued runs whose launcher died -> reconcile orphans ->
               auto-resume interrupted scheduled runs (once) -> for each
               schedule: decide (policy.decide), record, launch -> one step
               of each unfinished backfill (backfill_driver.py) -> once a day,
               the retention policy (housekeeping.py).

Runs are launched as `python -m featherflow ... _start-run RUN_ID` in their own
session and never waited on (only reaped), so they outlive the daemon. Signal
handlers only set flags; the loop sleeps until the next slot or the check
interval. It takes what it uses, a config and a store, and `now` is an
argument of every tick (tests pass their own times and launcher).

Starting it detached, stopping and reporting it are in control.py; managing
schedules (add/list/show) in admin.py; the original Python API in compat.py.
"""

import logging
import os
import select
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, Optional

from featherflow import clock, config as configmod, errors, flow as flowmod, graph, proc, states
from featherflow.config import Config
from featherflow.engine import limits
from featherflow.engine import launch, reconcile
from featherflow.errors import ConflictError, FeatherflowError, UsageError
from featherflow.notify import deliver
from featherflow.scheduler import backfill_driver, housekeeping, lock, policy, slots
from featherflow.store import Store
from featherflow.store import db as dbmod
from featherflow.store.records import NewRun

log = logging.getLogger(__name__)

LOG_NAME = "scheduler.log"
FAULT_POINTS = ("before-slot-commit", "after-slot-commit", "after-launch")
SLOTS_KEPT = 5000  # slot rows kept per schedule (the newest); trimmed hourly
TRIM_EVERY = timedelta(hours=1)
WAKE_MARGIN = 0.005  # wake this much after a slot, never a hair before it
MAX_LAUNCHES = 3  # processes started for one run before it is marked failed


def check_root(allow_root: bool, euid: Optional[int] = None) -> None:
    euid = os.geteuid() if euid is None else euid
    if euid == 0 and not allow_root:
        raise UsageError("refusing to run the scheduler as root: every scheduled flow would run as root "
                         "(run it as a normal user, see `featherflow scheduler install`, or pass --allow-root)")


# -- the daemon ------------------------------------------------------------------------

@dataclass
class TickReport:
    adopted: int = 0
    interrupted: int = 0
    resumed: int = 0
    fired: int = 0
    waiting: int = 0
    skipped: int = 0
    launched: int = 0
    backfills: int = 0  # running backfills stepped
    pruned: int = 0  # runs the daily retention deleted


class Scheduler:
    """One scheduler for the database of `store`, with the dirs and paths of `config`."""

    def __init__(self, config: Config, store: Store, check_interval: float = 60.0, allow_root: bool = False,
                 fault: Optional[str] = None, launch=None, deliver=None):
        if check_interval <= 0:
            raise UsageError(f"--check-interval must be > 0 seconds, not {check_interval}")
        if fault is not None and fault not in FAULT_POINTS:
            raise UsageError(f"FEATHERFLOW_FAULT={fault!r} (valid: {', '.join(FAULT_POINTS)})")
        self.config = config
        self.store = store
        dbmod.small_cache(store.db)  # it runs for months: its memory (db.small_cache says why it is safe)
        self.check_interval = float(check_interval)
        self.allow_root = allow_root
        self.fault = fault
        self.launch = launch or self._spawn  # (run, resume) -> pid; tests pass their own
        self.deliver = deliver or self._notify  # () -> None: start delivering the outbox
        self.pid = os.getpid()
        self.identity = proc.identity(self.pid)
        self.log_path = config.log_dir / LOG_NAME
        self._lock_fd: Optional[int] = None
        self._children: Dict[int, subprocess.Popen] = {}
        self._resuming: Dict[int, int] = {}  # run id -> pid of the process resuming it
        self._launches: Dict[int, int] = {}  # run id -> processes started for it
        self._stop = False
        self._trimmed: Optional[datetime] = None  # `now` of the latest slot trim
        self._last_tick: Optional[datetime] = None  # `now` of the latest tick (None: not ticked yet)
        self._flusher: Optional[subprocess.Popen] = None  # the `notify flush` child, while it runs
        self.backfills = backfill_driver.Driver(config, store)  # steps unfinished backfills each tick

    # -- lock and heartbeat --

    def acquire(self, now: datetime) -> None:
        """Take the lock file and the database's scheduler row; ConflictError (exit 3) names the
        pid of the scheduler that already runs."""
        check_root(self.allow_root)
        self._lock_fd = lock.take(self.config.config_dir, self.pid)
        other = self.store.schedules.scheduler_started(self.pid, *self.identity, now, lock.row_alive,
                                                       downtime=lambda row: self.downtime(row, now))
        if other is not None:
            self.release(now, stopped=False)
            raise ConflictError(f"the scheduler already runs (pid {other.pid}) for the database "
                                f"{self.config.db_path} (with another config dir); stop it first")

    def downtime(self, previous, now: datetime) -> Optional[Dict]:
        """The `scheduler` notification's detail when the daemon was down (its last heartbeat is
        stale): for how long, and the slots of enabled schedules that fell in that time."""
        last = previous.heartbeat_at
        down = (now - last).total_seconds()
        if down < states.HEARTBEAT_STALE:
            return None
        missed, count = [], 0
        for schedule in self.store.schedules.list_schedules(enabled_only=True):
            found, more = slots.slots_between(schedule.cron, schedule.tz, last, now, 20)
            count += len(found) + (1 if more else 0)
            missed += [{"schedule": schedule.name, "slot": clock.iso(slot)} for slot in found]
        return {"down_seconds": round(down), "last_heartbeat": clock.iso(last),
                "stopped": previous.stopped_at is not None, "missed_count": count, "missed": missed[:50]}

    def release(self, now: Optional[datetime] = None, stopped: bool = True) -> None:
        if self._lock_fd is None:
            return
        if stopped:
            try:
                self.store.schedules.scheduler_stopped(self.pid, now or clock.now())
            except Exception as exc:  # the lock still goes: a dead row is told apart by its pid
                log.warning("could not record the scheduler's stop: %s", exc)
        lock.release(self._lock_fd)
        self._lock_fd = None

    def _fault(self, point: str) -> None:
        if self.fault == point:
            log.warning("FEATHERFLOW_FAULT: killing myself at %s", point)
            os.kill(self.pid, signal.SIGKILL)

    # -- one tick --

    def tick(self, now: datetime) -> TickReport:
        """Everything due at `now`, in the order that keeps runs exactly-once."""
        store = self.store
        report = TickReport()
        # Taken before anything can fail: a slot left unrecorded by a tick that raised is then
        # told apart from one that fell while the daemon did not tick at all (SIGSTOP, suspend).
        last_tick, self._last_tick = self._last_tick, now
        self._reap()
        store.schedules.scheduler_heartbeat(self.pid, now)
        # Adopt queued runs whose launcher died (between firing and launching, or before
        # the launched process took the run) *before* reconcile, which would call them orphans.
        queued = store.runs.list_runs(state=states.QUEUED, limit=None)
        # Launch counts matter only while a run is queued: forget the others, or the map
        # grows by one entry a run for the daemon's whole life (found by bench/soak.py).
        waiting = {r.id for r in queued}
        self._launches = {i: n for i, n in self._launches.items() if i in waiting}
        for run in queued:
            if run.schedule_id is None or run.pid == self.pid or run.pid in self._children:
                continue
            if proc.is_alive(run.pid, run.pid_start, run.boot_id):
                continue
            if self._launches.get(run.id, 0) >= MAX_LAUNCHES:  # its process keeps dying before it starts
                store.runs.transition_run(run.id, states.FAILED, reason=f"could not start it ({MAX_LAUNCHES} tries; "
                                     f"see {self.log_path})")
                continue
            if store.runs.adopt_run(run.id, run.pid, self.pid, *self.identity):
                log.info("run %s: its launcher (pid %s) is gone; starting it", run.id, run.pid)
                report.adopted += 1
                report.launched += bool(self._launch(run))
        for run_id, reason in reconcile.reconcile(store):
            log.warning("run %s is now interrupted: %s", run_id, reason)
            report.interrupted += 1
        for run in store.schedules.runs_to_auto_resume():
            if store.schedules.claim_auto_resume(run.id):
                log.info("run %s (schedule %s) was interrupted; resuming it once", run.id, run.schedule_id)
                pid = self._launch(run, resume=True)
                if pid:
                    self._resuming[run.id] = pid
                report.resumed += 1
        for schedule in store.schedules.list_schedules(enabled_only=True):
            try:
                self._tick_schedule(schedule, now, report, last_tick)
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule %s: tick failed", schedule.name)
        report.backfills = backfill_driver.tick(self.config, store, now, self.backfills)  # no one else drives
        deliver.heartbeats(store, now)
        try:  # once a day; never in the way of the slots (they were fired above)
            pruned = housekeeping.daily_retention(store, self.config.db_path, now)
            report.pruned = len(pruned.runs) if pruned else 0
        except Exception:
            log.exception("retention failed; trying again next tick")
        if store.outbox.has_due(now):
            self.deliver()
        if self._trimmed is None or abs(now - self._trimmed) > TRIM_EVERY:  # by `now`, as every decision
            self._trimmed = now
            for schedule in store.schedules.list_schedules():
                store.schedules.trim_slots(schedule.id, SLOTS_KEPT)
        return report

    def _tick_schedule(self, schedule, now: datetime, report: TickReport,
                       last_tick: Optional[datetime] = None) -> None:
        store = self.store
        active = [r.id for r in store.schedules.schedule_runs(schedule.id, (states.QUEUED, states.RUNNING))]
        active += [run_id for run_id, pid in self._resuming.items()
                   if pid in self._children and store.runs.get_run(run_id).schedule_id == schedule.id]
        decision = policy.decide(schedule, store.schedules.latest_slot_at(schedule.id), now,
                                    active[0] if active else None, store.schedules.waiting_slots(schedule.id),
                                    last_tick=last_tick)
        if not decision:
            return
        skip, fire, notes = list(decision.skip), [], dict(decision.notes)
        for slot in decision.fire:
            try:
                fire.append((slot, self.new_run(schedule), notes.get(slot)))
            except FeatherflowError as exc:
                first = exc.errors[0] if getattr(exc, "errors", None) else str(exc)
                skip.append((slot, f"not run: flow {schedule.flow_name!r} cannot run ({first})"))
        created = store.schedules.record_decision(schedule.id, skip, decision.wait, fire, now,
                                        before_commit=lambda: self._fault("before-slot-commit"))
        self._fault("after-slot-commit")
        report.skipped += len(skip)
        report.waiting += len(decision.wait)
        report.fired += len(created)
        for slot, reason in skip:
            log.info("schedule %s: slot %s skipped: %s", schedule.name, clock.iso(slot), reason)
        for run in created:
            log.info("schedule %s: slot %s fired run %s", schedule.name, clock.iso(run.scheduled_at), run.id)
            report.launched += bool(self._launch(run))

    def new_run(self, schedule) -> NewRun:
        """The run a slot of `schedule` creates (the flow as it is now), held by this daemon."""
        flow = flowmod.load(Path(schedule.flows_dir), schedule.flow_name, Path(schedule.tasks_dir))
        params = launch.merge_params(flow, schedule.params)
        limits.check(flow, params, schedule.tasks_dir, "the schedule's params",
                     str(flowmod.flow_path(Path(schedule.flows_dir), flow.name)))
        start, boot = self.identity
        return NewRun(flow_name=flow.name, task_ids=graph.topological_order(flow.edges),
                    snapshot=flow.snapshot(), params=params, trigger="schedule",
                    flows_dir=schedule.flows_dir, tasks_dir=schedule.tasks_dir,
                    output_dir=schedule.output_dir,
                    max_parallel=flow.max_parallel or launch.default_parallel(),
                    pid=self.pid, pid_start=start, boot_id=boot)

    # -- launching runs --

    def _launch(self, run, resume: bool = False) -> Optional[int]:
        self._launches[run.id] = self._launches.get(run.id, 0) + 1
        try:
            pid = self.launch(run, resume)
        except OSError as exc:
            log.error("run %s: could not start it: %s", run.id, exc)
            if not resume:
                self.store.runs.transition_run(run.id, states.FAILED, reason=f"the scheduler could not start it: {exc}")
            return None
        self._fault("after-launch")
        if pid and not resume:  # the run is now held by its own process, not by us
            self.store.runs.adopt_run(run.id, self.pid, pid, proc.start_time(pid), proc.boot_id())
        return pid

    def _spawn(self, run, resume: bool) -> int:
        """`featherflow _start-run RUN_ID` in its own session, from the parent of the flows dir."""
        cfg = self.config
        argv = [sys.executable, "-m", "featherflow", "-f", run.flows_dir, "-t", run.tasks_dir,
                "-o", run.output_dir, "--config-dir", str(cfg.config_dir), "--db", str(cfg.db_path),
                "_start-run", str(run.id), "--launcher", str(self.pid)] + (["--resume"] if resume else [])
        cwd = Path(run.flows_dir).parent
        env = dict(os.environ)
        env.pop("FEATHERFLOW_FAULT", None)
        configmod.ensure_private_dir(self.log_path.parent)
        with open(self.log_path, "ab") as errors:
            child = subprocess.Popen(argv, cwd=str(cwd) if cwd.is_dir() else "/", env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                     start_new_session=True, close_fds=True)
        self._children[child.pid] = child
        return child.pid

    def _notify(self) -> None:
        """Deliver the outbox in a child of its own (`notify flush`), one at a time: a receiver
        that hangs never delays a slot."""
        if self._flusher is not None and self._flusher.poll() is None:
            return
        cfg = self.config
        argv = [sys.executable, "-m", "featherflow", "--config-dir", str(cfg.config_dir), "--db", str(cfg.db_path),
                "notify", "flush", "--quiet"]
        configmod.ensure_private_dir(self.log_path.parent)
        with open(self.log_path, "ab") as errors:
            self._flusher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=errors, start_new_session=True, close_fds=True)

    def _reap(self) -> None:
        """Collect exited children (never wait for a running one)."""
        for pid, child in list(self._children.items()):
            code = child.poll()
            if code is None:
                continue
            del self._children[pid]
            if code:
                log.debug("child %s exited with %s", pid, code)
        for run_id, pid in list(self._resuming.items()):
            if pid not in self._children:
                del self._resuming[run_id]

    # -- the loop --

    def next_wake(self, now: datetime) -> float:
        """Seconds until the next due slot, or the check interval, whichever is sooner
        (and never more than HEARTBEAT_EVERY, so the heartbeat stays fresh)."""
        store = self.store
        soonest = min(self.check_interval, states.HEARTBEAT_EVERY)
        for schedule in store.schedules.list_schedules(enabled_only=True):
            try:
                nxt = policy.next_fire(schedule, store.schedules.latest_slot_at(schedule.id), now)
            except slots.ScheduleError:
                continue
            soonest = min(soonest, (nxt - clock.as_utc(now)).total_seconds() + WAKE_MARGIN)
        return max(0.01, soonest)

    def _on_stop(self, signum, frame) -> None:
        self._stop = True

    def serve(self, ready_fd: Optional[int] = None) -> int:
        """Take the lock, then tick until SIGTERM/SIGINT; returns 0. `ready_fd` gets one line,
        `ok PID` or `err CODE MESSAGE`, for `scheduler start`."""
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handlers = {sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda signum, frame: None)  # notify()
        handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the loop
        try:
            try:
                self.acquire(clock.now())
            except FeatherflowError as exc:
                _report(ready_fd, f"err {exc.exit_code} {exc}")
                raise
            log.info("scheduler started: pid %s, database %s, check interval %ss",
                     self.pid, self.config.db_path, self.check_interval)
            # `scheduler start` hears "ok" only once a whole tick has read the database:
            # a damaged file must fail the start (exit 4), not a daemon that looks healthy.
            ready = [ready_fd]

            def up() -> None:
                if ready[0] is not None:
                    _report(ready[0], f"ok {self.pid}")
                    ready[0] = None

            try:
                self._loop(wake_r, up)
            except FeatherflowError as exc:
                if ready[0] is not None:
                    _report(ready[0], f"err {exc.exit_code} {exc}")
                raise
            finally:
                self.release(clock.now())
                log.info("scheduler stopped")
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        return 0

    def _fatal(self, exc: Exception) -> Optional[FeatherflowError]:
        """The error that stops the daemon, or None to try again next tick.

        A locked database passes; any other database error (damaged, full,
        read-only, I/O) does not heal by retrying every interval: the daemon exits
        non-zero with one `error:` line, so systemd's Restart= and the user see it
        instead of a daemon that looks healthy and never fires.
        """
        is_db = isinstance(exc, errors.DatabaseError) or errors.is_database_error(exc)
        if not is_db or errors.sqlite_fault(exc) == errors.LOCKED:
            return None
        if isinstance(exc, errors.DatabaseError):
            return exc
        return errors.database_error(self.config.db_path, exc, "the scheduler stops")

    def _loop(self, wake_fd: int, up=lambda: None) -> None:
        while not self._stop:
            try:
                report = self.tick(clock.now())
                log.debug("tick: %s", report)
                up()
            except Exception as exc:
                fatal = self._fatal(exc)
                if fatal is not None:
                    log.error("error: %s", fatal)
                    raise fatal from None
                log.exception("tick failed; trying again in %ss", self.check_interval)
                if not isinstance(exc, sqlite3.Error) and exc.__class__.__module__ != "peewee":
                    up()  # the database was readable: the daemon is up (a bug is logged, not fatal)
            if self._stop:
                break
            try:
                delay = self.next_wake(clock.now())
            except Exception as exc:
                fatal = self._fatal(exc)
                if fatal is not None:
                    log.error("error: %s", fatal)
                    raise fatal from None
                log.exception("could not compute the next slot")
                delay = self.check_interval
            log.debug("sleeping %.3fs", delay)
            select.select([wake_fd], [], [], delay)
            try:
                while os.read(wake_fd, 512):
                    pass
            except BlockingIOError:
                pass


def _report(fd: Optional[int], line: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
        os.close(fd)
    except OSError:
        pass  # `scheduler start` gave up waiting


def configure_logging(level: str = "INFO") -> None:
    """Timestamps in the daemon's log (the CLI's own handler has none)."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
