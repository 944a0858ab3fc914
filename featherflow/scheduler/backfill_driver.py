"""Driving a backfill: launch its slots' runs, follow them, end it; one driver at a time.

Driving is a series of steps, each a reading of the backfill's rows plus a few
one-transaction moves (store/backfills.py), so any process may drive it after any
crash: the CLI in the foreground, `backfill resume ID`, or the scheduler daemon on
each tick (tick() here: the daemon's change is one line). One driver at a time per
backfill: a step holds <config dir>/backfills/ID.lock (flock: the kernel releases it
when its holder dies). Runs are launched in their own session, like the scheduler's,
so a driver killed at any point leaves them running; the next step adopts a queued
run whose launcher died, and a resume is taken by its process only if the run's
resume count is still the one recorded when it was launched.
"""

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, List, Optional

from featherflow import clock, config as configmod, flow as flowmod, graph, proc, states
from featherflow.config import Config
from featherflow.engine import launch, limits, reconcile
from featherflow.errors import ConflictError, FeatherflowError
from featherflow.scheduler.backfill import in_zone
from featherflow.store import Store
from featherflow.store import backfills as rows
from featherflow.store.records import NewRun

log = logging.getLogger(__name__)

MAX_LAUNCHES = 3  # processes started for one slot before it is given up as failed
POLL = 0.25  # seconds between two steps of the foreground driver
PENDING_READ = 20  # pending slots a step reads beyond --max-runs (some may be taken meanwhile)
LOCK_WAIT = 3.0  # how long a foreground driver waits for the lock the daemon holds during a step
LOG_NAME = "backfill.log"
# Where a driver given FEATHERFLOW_FAULT (a test-only hook) kills itself: between the steps
# of launching a slot's run, to show that each crash is taken up by the next driver.
FAULT_POINTS = ("backfill-after-fire", "backfill-after-spawn", "backfill-after-claim", "backfill-after-resume-spawn")


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
        self._children: List[subprocess.Popen] = []  # reaped each step (never waited on)

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
        self._reap()
        launched = store.backfills.slots(backfill_id, state=rows.LAUNCHED)
        if any(s.run_state in (states.QUEUED, states.RUNNING) for s in launched):
            self._adopt(launched, said)
            reconcile.reconcile(store)
            launched = store.backfills.slots(backfill_id, state=rows.LAUNCHED)
        active = 0
        for slot in launched:
            active += self._follow(backfill, schedule, slot, now, said)
        # Only the next few pending slots are read: a step of a 5000-slot backfill stays small.
        pending = store.backfills.slots(backfill_id, state=rows.PENDING, limit=backfill.max_runs + PENDING_READ,
                                        newest_first=backfill.reverse)
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

    def _reap(self) -> None:
        self._children = [child for child in self._children if child.poll() is None]

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
            # Resumed once, as the scheduler does (the claim is the run's auto_resumed flag); its
            # launcher is recorded so that the slot waits for it to take the run.
            store.backfills.set_launcher(slot.id, self.pid, *self.identity)
            if store.schedules.claim_auto_resume(slot.run_id):
                pid = self._spawn_logged(["_start-run", str(slot.run_id), "--resume"], store.runs.get_run(slot.run_id))
                if pid:
                    store.backfills.set_launcher(slot.id, pid, proc.start_time(pid), proc.boot_id())
                said.append(f"slot {when}: run {slot.run_id} was interrupted; resuming it once")
                return 1
        if slot.run_state == states.INTERRUPTED and proc.is_alive(slot.launcher_pid, slot.launcher_start,
                                                                  slot.launcher_boot):
            return 1  # its resume is starting
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
        self._children.append(child)
        return child.pid


def drive(config: Config, store: Store, backfill_id: int, on_line: Callable[[str], None] = lambda line: None,
          poll: float = POLL, driver: Optional[Driver] = None, lock_wait: float = LOCK_WAIT) -> rows.Backfill:
    """Drive one backfill in the foreground until it ends; returns it. ConflictError (exit 3)
    when another process drives it (still after `lock_wait` seconds: the daemon holds the lock
    only for the moment of a step) or it is not running. Ctrl-C (KeyboardInterrupt) stops
    driving and leaves it running: the scheduler daemon or `backfill resume` continues it."""
    backfill = store.backfills.get(backfill_id)
    if backfill.state != rows.RUNNING:
        raise ConflictError(f"backfill {backfill_id} is {backfill.state}: nothing to resume")
    deadline = time.monotonic() + lock_wait
    fd = take_lock(config, backfill_id)
    while fd is None and time.monotonic() < deadline:
        time.sleep(0.05)
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
