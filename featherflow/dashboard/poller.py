"""The dashboard's reading: one `Snapshot` of the database per refresh, in one short
read-only transaction, and the tail of the log being watched.

It holds no state that matters: kill it at any moment and the next poll reads the
database afresh. Only this module (and the log file it tails) does I/O for the screen;
`screen.render` turns a Snapshot into lines.
"""

import os
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from featherflow import clock, flow as flowmod, paths, proc, states
from featherflow.errors import is_database_error
from featherflow.rules import task_rules
from featherflow.dashboard.keys import ViewState
from featherflow.scheduler.slots import next_slot
from featherflow.store.readonly import Reader
from featherflow.text import local

MAX_SCHEDULES, MAX_RUNNING, MAX_RECENT = 100, 50, 30
LOG_LINES = 10_000  # lines of a log kept in memory (the newest)
LOG_FIRST_READ = 1 << 20  # bytes read from the end when a log is opened
LOG_READ = 4 << 20  # bytes read per refresh at most; further behind, skip ahead

DONE, RUNNING_, PENDING_, FAILED_ = "done", "running", "pending", "failed"
_COUNT_OF = {states.SUCCESS: DONE, states.RUNNING: RUNNING_, states.PENDING: PENDING_,
             states.FAILED: FAILED_, states.UPSTREAM_FAILED: FAILED_, states.INTERRUPTED: FAILED_,
             states.CANCELLED: FAILED_, states.SKIPPED: DONE}  # skipped: its run_if said no


# -- what is shown ------------------------------------------------------------

@dataclass(frozen=True)
class SchedulerInfo:
    pid: int
    started_at: Optional[datetime]
    heartbeat_at: Optional[datetime]
    stopped_at: Optional[datetime]
    alive: bool  # the recorded process (pid + start time + boot) still exists


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    flow_name: str
    cron: str
    tz: str
    enabled: bool
    next_at: Optional[datetime] = None  # UTC
    next_error: Optional[str] = None
    last_slot_at: Optional[datetime] = None
    last_state: Optional[str] = None  # fired | skipped
    last_reason: Optional[str] = None
    last_run_id: Optional[int] = None
    last_run_state: Optional[str] = None


@dataclass(frozen=True)
class Counts:
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.done + self.running + self.pending + self.failed


@dataclass(frozen=True)
class RunInfo:
    id: int
    flow_name: str
    state: str
    trigger: str
    created_at: Optional[datetime]
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    reason: Optional[str] = None
    counts: Counts = Counts()
    gone: bool = False  # queued/running, but its process no longer exists
    failed_tasks: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    state: str  # of the latest attempt; "-" when it has none
    attempt: int = 0
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    rule: str = ""  # run_if or cleanup, when the task has one


@dataclass(frozen=True)
class RunDetail:
    run: RunInfo
    tasks: Tuple[TaskInfo, ...]
    uid: str = ""
    output_dir: str = ""


@dataclass(frozen=True)
class LogInfo:
    task_id: str
    attempt: int
    state: str
    path: str
    lines: Tuple[str, ...] = ()
    first: int = 0  # line number (0-based) of lines[0] among the lines read
    skipped: int = 0  # bytes at the start of the file not read
    error: Optional[str] = None  # e.g. no log yet


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime  # UTC, aware like every time the store returns
    db_path: str = ""
    scheduler: Optional[SchedulerInfo] = None
    schedules: Tuple[ScheduleInfo, ...] = ()
    running: Tuple[RunInfo, ...] = ()
    recent: Tuple[RunInfo, ...] = ()
    detail: Optional[RunDetail] = None
    log: Optional[LogInfo] = None
    problem: Optional[str] = None  # shown on every view, e.g. the database could not be read


# -- reading (the only I/O besides the terminal) -------------------------------

class LogTail:
    """A log file read incrementally: only new bytes each refresh, the newest lines kept."""

    def __init__(self, path: Path, keep: int = LOG_LINES):
        self.path = path
        self.lines: deque = deque(maxlen=keep)
        self.count = 0  # lines read so far (the number after lines[-1])
        self.partial = b""
        self.position: Optional[int] = None
        self.skipped = 0

    def poll(self) -> Tuple[Tuple[str, ...], int, int, Optional[str]]:
        """(lines, number of the first, bytes skipped at the start, error)."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if self.position is None or size < self.position:  # first read, or truncated
                    self._reset(f, size, LOG_FIRST_READ)
                elif size - self.position > LOG_READ:  # far behind: skip ahead
                    self._reset(f, size, LOG_FIRST_READ)
                f.seek(self.position)
                chunk = f.read(min(size - self.position, LOG_READ))
        except FileNotFoundError:
            return (), 0, 0, "no log file (yet)"
        except OSError as exc:
            return (), 0, 0, f"cannot read the log: {exc.strerror}"
        self.position += len(chunk)
        data = self.partial + chunk.replace(b"\0", b"")  # a capped log's hole reads as zeros
        *complete, self.partial = data.split(b"\n")
        for raw in complete:
            self.lines.append(raw.rstrip(b"\r").decode("utf-8", "replace"))
        self.count += len(complete)
        lines = tuple(self.lines)
        if self.partial:
            lines += (self.partial.decode("utf-8", "replace"),)
        return lines, self.count - len(self.lines), self.skipped, None

    def _reset(self, f, size: int, keep_bytes: int) -> None:
        self.lines.clear()
        self.count, self.partial = 0, b""
        start = max(0, size - keep_bytes)
        if start:
            f.seek(start)
            start += len(f.readline())  # begin at a line start
        self.position = self.skipped = start


class Poller:
    """Reads Snapshots: each refresh is one short read transaction, nothing held between.

    `alive` and `next_slot` are parameters so tests decide what is alive and
    when schedules fire.
    """

    def __init__(self, reader: Reader, db_path: str = "", alive: Callable = proc.is_alive,
                 next_slot: Callable = next_slot):
        self.reader = reader
        self.db_path = str(db_path)
        self.alive = alive
        self.next_slot = next_slot
        # (cron, tz) -> (computed at, next slot, error)
        self._next_cache: Dict[Tuple[str, str], Tuple[datetime, Optional[datetime], Optional[str]]] = {}
        self._tail: Optional[Tuple[Tuple, LogTail]] = None
        self._last: Optional[Snapshot] = None

    def poll(self, state: ViewState, now: datetime) -> Snapshot:
        want_detail = state.view in ("run", "log") and state.run_id is not None
        try:
            with self.reader.transaction():
                version = self.reader.schema_version()
                if version == 0:
                    return Snapshot(now, self.db_path, problem="the database is empty (nothing has run yet)")
                raw_scheduler = self.reader.scheduler()
                raw_schedules = self.reader.schedules(state.flow, MAX_SCHEDULES)
                raw_running = self.reader.runs(True, state.flow, MAX_RUNNING)
                raw_recent = self.reader.runs(False, state.flow, MAX_RECENT)
                attempts = self.reader.attempt_states(
                    [r["id"] for r in raw_running]
                    + [r["id"] for r in raw_recent if r["state"] in states.RESUMABLE])
                run = self.reader.run(state.run_id) if want_detail else None
                run_attempts = self.reader.attempts(run.id) if run else []
        except Exception as exc:  # sqlite3's errors (or peewee's wrappers, if a peewee database was passed)
            if not is_database_error(exc):
                raise
            last = self._last or Snapshot(now, self.db_path)
            when = local(last.taken_at, "%H:%M:%S")
            return replace(last, problem=f"cannot read the database ({exc}); showing {when}")
        # Outside the transaction: /proc, cron arithmetic and the log file.
        latest = _latest_states(attempts)
        snap = Snapshot(
            taken_at=now, db_path=self.db_path,
            scheduler=self._scheduler(raw_scheduler),
            schedules=tuple(self._schedule(row, now) for row in raw_schedules),
            running=tuple(self._run(row, latest.get(row["id"], {})) for row in raw_running),
            recent=tuple(self._run(row, latest.get(row["id"], {})) for row in raw_recent),
            detail=_detail(run, run_attempts, self._run) if run else None,
        )
        if state.view == "log" and snap.detail is not None:
            snap = replace(snap, log=self._log(snap.detail, state, run))
        else:
            self._tail = None
        self._last = snap
        return snap

    def _scheduler(self, row: Optional[Dict]) -> Optional[SchedulerInfo]:
        if row is None:
            return None
        alive = row["stopped_at"] is None and bool(self.alive(row["pid"], row["pid_start"], row["boot_id"]))
        return SchedulerInfo(row["pid"], row["started_at"], row["heartbeat_at"], row["stopped_at"], alive)

    def _schedule(self, row: Dict, now: datetime) -> ScheduleInfo:
        next_at = error = None
        if row["enabled"]:
            next_at, error = self._next_fire(row["cron"], row["tz"], now)
        return ScheduleInfo(row["name"], row["flow_name"], row["cron"], row["tz"], bool(row["enabled"]),
                            next_at, error, row["last_slot_at"], row["last_state"], row["last_reason"],
                            row["last_run_id"], row["last_run_state"])

    def _next_fire(self, cron: str, tz: str, now: datetime) -> Tuple[Optional[datetime], Optional[str]]:
        """Cached until the slot passes: cron arithmetic for every schedule every second is not light."""
        cached = self._next_cache.get((cron, tz))
        if cached and cached[0] <= now and (cached[1] is None or now < cached[1]):
            return cached[1], cached[2]
        try:
            moment = self.next_slot(cron, tz, clock.as_utc(now))
            if moment is not None and now.tzinfo is None:  # a caller that works in naive UTC
                moment = clock.as_utc(moment).replace(tzinfo=None)
            result = (moment, None)
        except Exception as exc:  # a bad cron or zone in the database must not stop the screen
            result = (None, f"invalid: {exc}")
        self._next_cache[(cron, tz)] = (now,) + result
        return result

    def _run(self, row: Dict, latest: Dict[str, str]) -> RunInfo:
        counts: Dict[str, int] = {}
        for task_state in latest.values():
            kind = _COUNT_OF.get(task_state, PENDING_)
            counts[kind] = counts.get(kind, 0) + 1
        gone = (row["state"] in (states.QUEUED, states.RUNNING)
                and not self.alive(row["pid"], row["pid_start"], row["boot_id"]))
        failed = tuple(t for t, s in latest.items() if s in (states.FAILED, states.INTERRUPTED))
        return RunInfo(row["id"], row["flow_name"], row["state"], row["trigger"], row["created_at"],
                       row["started_at"], row["ended_at"], row["reason"], Counts(**counts), gone,
                       failed if row["state"] in states.RESUMABLE else ())

    def _log(self, detail: RunDetail, state: ViewState, run) -> LogInfo:
        task = next((t for t in detail.tasks if t.task_id == state.task_id), None)
        attempt = state.attempt or (task.attempt if task else 0)
        task_state = task.state if task and task.attempt == attempt else "?"
        if task is not None and attempt and task.attempt != attempt:
            task_state = "superseded"  # a newer attempt started; this log is final
        path = paths.log_path(run, state.task_id, attempt)
        key = (run.id, state.task_id, attempt)
        if self._tail is None or self._tail[0] != key:
            self._tail = (key, LogTail(path))
        lines, first, skipped, error = self._tail[1].poll()
        if error and task_state in (states.PENDING, "-"):
            error = f"no log yet: attempt {attempt} is {task_state}"
        return LogInfo(state.task_id, attempt, task_state, str(path), lines, first, skipped, error)


def _latest_states(rows: List[Dict]) -> Dict[int, Dict[str, str]]:
    """{run: {task: state of its latest attempt}} from rows ordered by run, task, attempt."""
    latest: Dict[int, Dict[str, str]] = {}
    for row in rows:
        latest.setdefault(row["run_id"], {})[row["task_id"]] = row["state"]
    return latest


def _detail(run, attempts, make_run) -> RunDetail:
    """The run's tasks in dependency order (its stored definition), each with its latest attempt."""
    latest = {a.task_id: a for a in attempts}  # ordered by attempt number
    try:
        order = flowmod.task_order(run.snapshot)
        rules = task_rules(run.snapshot)
    except Exception:  # a definition we cannot read still shows its attempts
        order, rules = [], {}
    order += sorted(set(latest) - set(order))
    tasks = tuple(
        TaskInfo(t, latest[t].state, latest[t].attempt, latest[t].started_at, latest[t].ended_at,
                 latest[t].exit_code, latest[t].reason, rules.get(t, ""))
        if t in latest else TaskInfo(t, "-", rule=rules.get(t, ""))
        for t in order)
    row = {"id": run.id, "flow_name": run.flow_name, "state": run.state, "trigger": run.trigger,
           "created_at": run.created_at, "started_at": run.started_at, "ended_at": run.ended_at,
           "reason": run.reason, "pid": run.pid, "pid_start": run.pid_start, "boot_id": run.boot_id}
    info = make_run(row, {a.task_id: a.state for a in latest.values()})
    return RunDetail(info, tasks, run.uid, run.output_dir)
