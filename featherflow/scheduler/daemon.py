"""The scheduler daemon: fires due slots into runs, one daemon per database.

It keeps no state of its own. Schedules, every fired, waiting or skipped slot
and the daemon's heartbeat are rows in the database; a fired slot and its
queued run commit in one transaction under UNIQUE(schedule, slot), so the
daemon can be SIGKILLed or unplugged at any moment and a restart continues:

    tick(now): adopt queued runs whose launcher died -> reconcile orphans ->
               auto-resume interrupted scheduled runs (once) -> for each
               schedule: decide (schedules.decide), record, launch.

Runs are launched as `python -m featherflow ... _start-run RUN_ID` in their own
session and never waited on (only reaped), so they outlive the daemon. Signal
handlers only set flags; the loop sleeps until the next slot or the check
interval. `scheduler start/stop/status` and `get_scheduler()` are here too.

    from featherflow.scheduler import daemon as scheduler
    s = scheduler.get_scheduler(flows_dir="flows", tasks_dir="tasks", output_dir="out")
    s.schedule_manager.add_schedule("etl", "30 3 * * *", description="nightly")
    s.start(); s.is_running(); s.stop()

Managing schedules from outside the daemon (add/list/show, the systemd unit,
the classes behind get_scheduler) is in schedule_admin.py.
"""

import errno
import logging
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

from featherflow import config as configmod, flow as flowmod, graph, proc, states
from featherflow.engine import limits
from featherflow.engine import launch, reconcile
from featherflow.scheduler import slots as schedules
from featherflow.errors import ConflictError, FeatherflowError, UsageError


# The heartbeat is written every tick and a tick comes at least this often; a
# heartbeat older than HEARTBEAT_STALE (two and a half ticks) means the daemon
# is hung or gone. `doctor` and the dashboard judge it by the same limit.
HEARTBEAT_EVERY = 60.0
HEARTBEAT_STALE = 150.0
log = logging.getLogger(__name__)

LOCK_NAME = "scheduler.lock"
LOG_NAME = "scheduler.log"
FAULT_POINTS = ("before-slot-commit", "after-slot-commit", "after-launch")
START_DEADLINE = 15.0  # seconds `scheduler start` waits for the daemon to report
STOP_DEADLINE = 30.0  # seconds `scheduler stop` waits for it to exit
SLOTS_KEPT = 5000  # slot rows kept per schedule (the newest); trimmed hourly
WAKE_MARGIN = 0.005  # wake this much after a slot, never a hair before it
MAX_LAUNCHES = 3  # processes started for one run before it is marked failed


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def check_root(allow_root: bool, euid: Optional[int] = None) -> None:
    euid = os.geteuid() if euid is None else euid
    if euid == 0 and not allow_root:
        raise UsageError("refusing to run the scheduler as root: every scheduled flow would run as root "
                         "(run it as a normal user, see `featherflow scheduler install`, or pass --allow-root)")


def _failure(message: str, code: int) -> FeatherflowError:
    exc = FeatherflowError(message)
    exc.exit_code = code
    return exc


def next_fire(store, schedule, now: datetime) -> Optional[datetime]:
    """When the schedule fires next (UTC), None when disabled."""
    if not schedule.enabled:
        return None
    starts = [t for t in (now, store.latest_slot_at(schedule.id), schedule.updated_at) if t is not None]
    return schedules.next_slot(schedule.cron, schedule.tz, max(schedules.as_utc(t) for t in starts))


def _iso(moment: Optional[datetime]) -> Optional[str]:
    return schedules.as_utc(moment).isoformat().replace("+00:00", "Z") if moment else None


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


def _row_alive(row) -> bool:
    return bool(row) and row.stopped_at is None and proc.is_alive(row.pid, row.pid_start, row.boot_id)


class Scheduler:
    """One scheduler for the database of `app` (a Featherflow)."""

    def __init__(self, app, check_interval: float = 60.0, allow_root: bool = False,
                 fault: Optional[str] = None, launch=None):
        if check_interval <= 0:
            raise UsageError(f"--check-interval must be > 0 seconds, not {check_interval}")
        if fault is not None and fault not in FAULT_POINTS:
            raise UsageError(f"FEATHERFLOW_FAULT={fault!r} (valid: {', '.join(FAULT_POINTS)})")
        self.app = app
        self.check_interval = float(check_interval)
        self.allow_root = allow_root
        self.fault = fault
        self.launch = launch or self._spawn  # (run, resume) -> pid; tests pass their own
        self.pid = os.getpid()
        self.identity = proc.identity(self.pid)
        self.log_path = app.config.log_dir / LOG_NAME
        self._lock_fd: Optional[int] = None
        self._children: Dict[int, subprocess.Popen] = {}
        self._resuming: Dict[int, int] = {}  # run id -> pid of the process resuming it
        self._launches: Dict[int, int] = {}  # run id -> processes started for it
        self._stop = False
        self._trimmed = 0.0
        self._last_tick: Optional[datetime] = None  # `now` of the latest tick (None: not ticked yet)

    # -- lock and heartbeat --

    def acquire(self, now: datetime) -> None:
        """Take the lock file and the database's scheduler row; ConflictError (exit 3) names the
        pid of the scheduler that already runs."""
        check_root(self.allow_root)
        cfg = self.app.config
        configmod.ensure_private_dir(cfg.config_dir)
        path = cfg.config_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _lock_holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EACCES) else None
            os.close(fd)
            if holder is None and exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise FeatherflowError(f"cannot lock {path}: {exc.strerror}") from None
            raise ConflictError(f"the scheduler already runs (pid {holder or 'unknown'}) for {cfg.config_dir}; "
                                "`featherflow scheduler stop` stops it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.pid}\n".encode(), 0)
        self._lock_fd = fd
        other = self.app.store.scheduler_started(self.pid, *self.identity, now, _row_alive)
        if other is not None:
            self.release(now, stopped=False)
            raise ConflictError(f"the scheduler already runs (pid {other.pid}) for the database "
                                f"{cfg.db_path} (with another config dir); stop it first")

    def release(self, now: Optional[datetime] = None, stopped: bool = True) -> None:
        if self._lock_fd is None:
            return
        if stopped:
            try:
                self.app.store.scheduler_stopped(self.pid, now or utcnow())
            except Exception as exc:  # the lock still goes: a dead row is told apart by its pid
                log.warning("could not record the scheduler's stop: %s", exc)
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = None

    def _fault(self, point: str) -> None:
        if self.fault == point:
            log.warning("FEATHERFLOW_FAULT: killing myself at %s", point)
            os.kill(self.pid, signal.SIGKILL)

    # -- one tick --

    def tick(self, now: datetime) -> TickReport:
        """Everything due at `now`, in the order that keeps runs exactly-once."""
        store = self.app.store
        report = TickReport()
        # Taken before anything can fail: a slot left unrecorded by a tick that raised is then
        # told apart from one that fell while the daemon did not tick at all (SIGSTOP, suspend).
        last_tick, self._last_tick = self._last_tick, now
        self._reap()
        store.scheduler_heartbeat(self.pid, now)
        # Adopt queued runs whose launcher died (between firing and launching, or before
        # the launched process took the run) *before* reconcile, which would call them orphans.
        for run in store.list_runs(state=states.QUEUED, limit=None):
            if run.schedule_id is None or run.pid == self.pid or run.pid in self._children:
                continue
            if proc.is_alive(run.pid, run.pid_start, run.boot_id):
                continue
            if self._launches.get(run.id, 0) >= MAX_LAUNCHES:  # its process keeps dying before it starts
                store.transition_run(run.id, states.FAILED, reason=f"could not start it ({MAX_LAUNCHES} tries; "
                                     f"see {self.log_path})")
                continue
            if store.adopt_run(run.id, run.pid, self.pid, *self.identity):
                log.info("run %s: its launcher (pid %s) is gone; starting it", run.id, run.pid)
                report.adopted += 1
                report.launched += bool(self._launch(run))
        for run_id, reason in reconcile.reconcile(store):
            log.warning("run %s is now interrupted: %s", run_id, reason)
            report.interrupted += 1
        for run in store.runs_to_auto_resume():
            if store.claim_auto_resume(run.id):
                log.info("run %s (schedule %s) was interrupted; resuming it once", run.id, run.schedule_id)
                pid = self._launch(run, resume=True)
                if pid:
                    self._resuming[run.id] = pid
                report.resumed += 1
        for schedule in store.list_schedules(enabled_only=True):
            try:
                self._tick_schedule(schedule, now, report, last_tick)
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule %s: tick failed", schedule.name)
        if time.monotonic() - self._trimmed > 3600:
            self._trimmed = time.monotonic()
            for schedule in store.list_schedules():
                store.trim_slots(schedule.id, SLOTS_KEPT)
        return report

    def _tick_schedule(self, schedule, now: datetime, report: TickReport,
                       last_tick: Optional[datetime] = None) -> None:
        store = self.app.store
        active = [r.id for r in store.schedule_runs(schedule.id, (states.QUEUED, states.RUNNING))]
        active += [run_id for run_id, pid in self._resuming.items()
                   if pid in self._children and store.get_run(run_id).schedule_id == schedule.id]
        decision = schedules.decide(schedule, store.latest_slot_at(schedule.id), now,
                                    active[0] if active else None, store.waiting_slots(schedule.id),
                                    last_tick=last_tick)
        if not decision:
            return
        skip, fire, notes = list(decision.skip), [], dict(decision.notes)
        for slot in decision.fire:
            try:
                fire.append((slot, self._run_args(schedule), notes.get(slot)))
            except FeatherflowError as exc:
                first = exc.errors[0] if getattr(exc, "errors", None) else str(exc)
                skip.append((slot, f"not run: flow {schedule.flow_name!r} cannot run ({first})"))
        created = store.record_decision(schedule.id, skip, decision.wait, fire, now,
                                        before_commit=lambda: self._fault("before-slot-commit"))
        self._fault("after-slot-commit")
        report.skipped += len(skip)
        report.waiting += len(decision.wait)
        report.fired += len(created)
        for slot, reason in skip:
            log.info("schedule %s: slot %s skipped: %s", schedule.name, _iso(slot), reason)
        for run in created:
            log.info("schedule %s: slot %s fired run %s", schedule.name, _iso(run.scheduled_at), run.id)
            report.launched += bool(self._launch(run))

    def _run_args(self, schedule) -> Dict:
        """Store.create_run's arguments for a run of `schedule` (the flow as it is now)."""
        flow = flowmod.load(Path(schedule.flows_dir), schedule.flow_name, Path(schedule.tasks_dir))
        params = launch.merge_params(flow, schedule.params)
        limits.check(flow, params, schedule.tasks_dir, "the schedule's params",
                     str(flowmod.flow_path(Path(schedule.flows_dir), flow.name)))
        start, boot = self.identity
        return dict(flow_name=flow.name, task_ids=graph.topological_order(flow.edges),
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
                self.app.store.transition_run(run.id, states.FAILED, reason=f"the scheduler could not start it: {exc}")
            return None
        self._fault("after-launch")
        if pid and not resume:  # the run is now held by its own process, not by us
            self.app.store.adopt_run(run.id, self.pid, pid, proc.start_time(pid), proc.boot_id())
        return pid

    def _spawn(self, run, resume: bool) -> int:
        """`featherflow _start-run RUN_ID` in its own session, from the parent of the flows dir."""
        cfg = self.app.config
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
        store = self.app.store
        soonest = min(self.check_interval, HEARTBEAT_EVERY)
        for schedule in store.list_schedules(enabled_only=True):
            try:
                nxt = next_fire(store, schedule, now)
            except schedules.ScheduleError:
                continue
            soonest = min(soonest, (nxt - schedules.as_utc(now)).total_seconds() + WAKE_MARGIN)
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
                self.acquire(utcnow())
            except FeatherflowError as exc:
                _report(ready_fd, f"err {exc.exit_code} {exc}")
                raise
            log.info("scheduler started: pid %s, database %s, check interval %ss",
                     self.pid, self.app.config.db_path, self.check_interval)
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
                self.release(utcnow())
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
        from featherflow import errors

        is_db = isinstance(exc, (sqlite3.Error, errors.DatabaseError)) or (
            exc.__class__.__module__ == "peewee" and "Error" in exc.__class__.__name__)
        if not is_db or errors.sqlite_fault(exc) == errors.LOCKED:
            return None
        if isinstance(exc, errors.DatabaseError):
            return exc
        return errors.database_error(self.app.config.db_path, exc, "the scheduler stops")

    def _loop(self, wake_fd: int, up=lambda: None) -> None:
        while not self._stop:
            try:
                report = self.tick(utcnow())
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
                delay = self.next_wake(utcnow())
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


def _lock_holder(fd: int, wait: float = 2.0) -> Optional[int]:
    """The pid written in the lock file (its holder writes it right after locking)."""
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


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


# -- start, stop, status ----------------------------------------------------------------

def start_background(cfg, check_interval: float = 60.0, allow_root: bool = False, fault: Optional[str] = None,
                     log_level: str = "INFO", deadline: float = START_DEADLINE) -> int:
    """Start the daemon detached (double fork, setsid, stdio to <log dir>/scheduler.log) and
    return its pid once it holds the lock; its own error (e.g. already running) is raised here."""
    check_root(allow_root)
    configmod.ensure_private_dir(cfg.config_dir)
    configmod.ensure_private_dir(cfg.log_dir)
    log_path = cfg.log_dir / LOG_NAME
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:  # pragma: no cover (runs in the forked processes)
        code = 1
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() > 0:
                os._exit(0)
            os.chdir("/")
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            configure_logging(log_level)
            from featherflow.api import Featherflow

            app = Featherflow(cfg.flows_dir, cfg.tasks_dir, cfg.output_dir, cfg.config_dir, cfg.db_path,
                              cfg.log_dir)
            code = Scheduler(app, check_interval, allow_root, fault).serve(ready_fd=write_fd)
        except FeatherflowError as exc:
            code = exc.exit_code
        except BaseException:
            log.exception("the scheduler failed")
        finally:
            os._exit(code)
    os.close(write_fd)
    os.waitpid(first, 0)
    line = b""
    end = time.monotonic() + deadline
    try:
        while not line.endswith(b"\n") and time.monotonic() < end:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            line += chunk
    finally:
        os.close(read_fd)
    word, _, rest = line.decode(errors="replace").strip().partition(" ")
    if word == "ok":
        return int(rest)
    if word == "err":
        code, _, message = rest.partition(" ")
        raise _failure(message, int(code) if code.isdigit() else 1)
    raise _failure(f"the scheduler did not come up within {deadline:.0f}s; see {log_path}", 1)


def notify(store) -> bool:
    """Wake the running scheduler (SIGHUP) so a schedule change counts at once, not within
    the check interval; False when none runs or it is not ours to signal."""
    row = store.scheduler_row()
    if not _row_alive(row):
        return False
    try:
        os.kill(row.pid, signal.SIGHUP)
    except OSError:
        return False
    return True


def stop(store, deadline: float = STOP_DEADLINE) -> Optional[int]:
    """SIGTERM the running scheduler and wait until it exits; its pid, or None if none ran."""
    row = store.scheduler_row()
    if not _row_alive(row):
        return None
    try:
        os.kill(row.pid, signal.SIGTERM)
    except ProcessLookupError:
        return row.pid
    except PermissionError:
        raise ConflictError(f"the scheduler (pid {row.pid}) belongs to another user; stop it as that user") from None
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not proc.is_alive(row.pid, row.pid_start, row.boot_id):
            return row.pid
        time.sleep(0.05)
    raise ConflictError(f"the scheduler (pid {row.pid}) did not stop within {deadline:.0f}s "
                        f"(`kill -9 {row.pid}` ends it; runs keep going)")


@dataclass
class Status:
    running: bool
    row: Optional[object]  # store.SchedulerRow
    schedules: List[tuple]  # (store.Schedule, next fire time in UTC or None)
    runs: List[object]  # store.Run, queued or running


def status(store, now: datetime) -> Status:
    row = store.scheduler_row()
    rows = [(s, next_fire(store, s, now)) for s in store.list_schedules()]
    runs = store.list_runs(states_in=(states.QUEUED, states.RUNNING), limit=None)
    return Status(_row_alive(row), row, rows, runs)


def get_scheduler(flows_dir="./flows", tasks_dir="./tasks", output_dir="./featherflow_output",
                  config_dir=None, log_dir=None, check_interval=60, db=None, allow_root=False):
    """The scheduler of the database these dirs resolve to (config_dir/db as for the CLI):
    start()/stop()/is_running(), and schedules through .schedule_manager."""
    from featherflow.api import Featherflow
    from featherflow.scheduler.admin import SchedulerHandle

    return SchedulerHandle(Featherflow(flows_dir, tasks_dir, output_dir, config_dir, db, log_dir),
                           check_interval, allow_root)
