"""What the status page reads, and nothing else: one read-only connection (store/readonly),
the dashboard's Poller for the snapshot (so the page and the dashboard show the same
facts), report.py for the JSON documents (the CLI's `--json`), and log files found by
(run id, task id, attempt number) inside the run's own log dir.

No transaction is held between requests: each read is one short transaction, and each
request thread closes its connection when it is answered (Site.done).
"""

import json
import os
import stat
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from featherflow import errors, flow as flowmod, paths, proc, report, states
from featherflow.dashboard.keys import ViewState
from featherflow.dashboard.poller import Poller, Snapshot
from featherflow.host import OK, Finding, check_scheduler
from featherflow.scheduler import policy
from featherflow.scheduler.slots import next_slot
from featherflow.store.readonly import Reader

API_RUNS, API_RUNS_MAX = 20, 500  # /api/runs: the CLI's default limit, and the most asked at once
RUNS_PAGE = 50  # runs on a /runs page
SLOTS_SHOWN = 30  # slots on a schedule's page
FAILURES_SHOWN, FAILURE_LINES = 5, 5  # recent failures on the home page, log lines of each
LOG_TAIL_BYTES, LOG_TAIL_LINES = 64 * 1024, 200  # a log page shows at most this much of the end
EXTRA_TABLES = ("pool",)  # shown as rows where the schema has them and they hold some


class NotFound(errors.UsageError):
    """Answered 404: no such run, task, attempt, schedule or log (or not one we may show)."""


@dataclass(frozen=True)
class Health:
    ok: bool  # the scheduler runs with a fresh heartbeat, and the database was read
    reason: str
    finding: Optional[Finding] = None  # doctor's verdict on the scheduler


@dataclass(frozen=True)
class Failure:
    run_id: int
    flow_name: str
    state: str
    ended_at: Optional[datetime]
    task_id: Optional[str]
    attempt: int
    lines: Tuple[str, ...]


def judge(snap: Snapshot, now: datetime) -> Health:
    """Healthy when the database was read and the scheduler is alive with a fresh heartbeat;
    the verdict on the scheduler is doctor's (host.check_scheduler)."""
    if snap.problem:
        return Health(False, snap.problem)
    info = snap.scheduler
    row = None if info is None else {"pid": info.pid, "heartbeat_at": info.heartbeat_at,
                                     "stopped_at": info.stopped_at}
    finding = check_scheduler(row, bool(info and info.alive), sum(s.enabled for s in snap.schedules), now)
    running = info is not None and info.stopped_at is None and info.alive
    return Health(finding.status == OK and running, f"scheduler {finding.detail}", finding)


class Site:
    """The reading side of the server; `alive` and `next_slot` are parameters for tests."""

    def __init__(self, db_path: Path, alive: Callable = proc.is_alive, next_slot: Callable = next_slot):
        self.db_path = Path(db_path)
        self.reader = Reader.open(self.db_path)
        self.poller = Poller(self.reader, str(db_path), alive=alive, next_slot=next_slot)
        self._lock = threading.Lock()  # the poller keeps caches: one poll at a time

    def close(self) -> None:
        self.reader.close()

    def done(self) -> None:
        """The calling thread's connection closes: nothing stays open between requests."""
        self.reader.db.close()

    # -- pages ------------------------------------------------------------------

    def snapshot(self, now: datetime, run_id: Optional[int] = None) -> Snapshot:
        state = ViewState(view="run", run_id=run_id) if run_id is not None else ViewState()
        with self._lock:
            return self.poller.poll(state, now)

    def extras(self) -> Dict:
        """Deliveries by state and the tables other versions add (pools, backfills)."""
        with self.reader.transaction():
            if self.reader.schema_version() == 0:
                return {"outbox": {}, "tables": {}}
            outbox = self.reader.outbox_counts()
            tables = {name: self.reader.rows_of(name, 20) for name in EXTRA_TABLES if self.reader.has_table(name)}
            backfills = self.reader.backfills(None, report.BACKFILLS_SHOWN)
            names = {s.id: s.name for s in self.reader.schedule_records(1000)} if backfills else {}
        return {"outbox": outbox, "tables": {k: v for k, v in tables.items() if v},
                "backfills": [(b, names.get(b.schedule_id, "?")) for b in backfills]}

    def failures(self, snap: Snapshot) -> List[Failure]:
        """The newest failed or interrupted runs, each with its failing task's last log lines."""
        found = []
        for info in [r for r in snap.recent if r.state in states.RESUMABLE][:FAILURES_SHOWN]:
            with self.reader.transaction():
                run = self.reader.run(info.id)
                attempts = self.reader.attempts(info.id) if run else []
            if run is None:
                continue
            latest = {a.task_id: a for a in attempts}
            bad = [a for a in latest.values() if a.state in (states.FAILED, states.INTERRUPTED)]
            task = bad[0] if bad else None
            lines: Tuple[str, ...] = ()
            if task is not None:
                try:
                    lines = tail(self.log_path(run, task.task_id, task.attempt), FAILURE_LINES)[0]
                except NotFound:
                    lines = ()
            found.append(Failure(run.id, run.flow_name, run.state, run.ended_at,
                                 task.task_id if task else None, task.attempt if task else 0, lines))
        return found

    def run_record(self, run_id: int):
        """(run with its graph, attempts) or NotFound."""
        with self.reader.transaction():
            run = self.reader.run(run_id)
            attempts = self.reader.attempts(run_id) if run else []
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run, attempts

    def schedule(self, name: str, now: datetime):
        """(schedule, next fire time, its newest slots) or NotFound."""
        if not flowmod.NAME_RE.fullmatch(name):
            raise NotFound(f"no schedule {name!r}")
        with self.reader.transaction():
            found = self.reader.schedule_record(name)
            if found is None:
                raise NotFound(f"no schedule {name!r}")
            recent = self.reader.slots(found.id, SLOTS_SHOWN)
            latest = self.reader.latest_slot_at(found.id)
        return found, _next_fire(found, latest, now), recent

    def history(self, before: Optional[int], limit: int = RUNS_PAGE):
        with self.reader.transaction():
            return self.reader.run_records(limit, before)

    # -- JSON: the CLI's documents (report.py) -------------------------------------

    def runs_document(self, now: datetime, limit: int = API_RUNS, before: Optional[int] = None) -> List[Dict]:
        """`runs list --json --limit N`."""
        return [report.run_json(r, now) for r in self.history(before, limit)]

    def run_document(self, run_id: int, now: datetime) -> Dict:
        """`runs show ID --json`."""
        run, attempts = self.run_record(run_id)
        if run.state == states.FAILED:
            latest = {a.task_id: a.state for a in attempts}
            run.failed_tasks = [t for t, s in latest.items() if s == states.FAILED]
        return report.run_document(run, order_of(run), attempts, now)

    def schedules_document(self, now: datetime) -> List[Dict]:
        """`schedule list --json`."""
        with self.reader.transaction():
            found = self.reader.schedule_records(1000)
            rows = [(s, self.reader.slots(s.id, 1), self.reader.latest_slot_at(s.id),
                     self.reader.backfills(s.id, report.BACKFILLS_SHOWN)) for s in found]
        return [report.schedule_document(s, recent, _next_fire(s, latest, now), backfills)
                for s, recent, latest, backfills in rows]

    # -- logs --------------------------------------------------------------------

    def attempt_log(self, run_id: int, task_id: str, attempt: int):
        """(run, the attempt, its log's real path) for an attempt the database knows, or NotFound."""
        if not flowmod.ID_RE.fullmatch(task_id):
            raise NotFound(f"no task {task_id!r}")
        run, attempts = self.run_record(run_id)
        mine = next((a for a in attempts if a.task_id == task_id and a.attempt == attempt), None)
        if mine is None:
            raise NotFound(f"run {run_id} has no attempt {attempt} of {task_id!r}")
        return run, mine, self.log_path(run, task_id, attempt)

    @staticmethod
    def log_path(run, task_id: str, attempt: int) -> Path:
        """The attempt's log, checked before anything opens it: its real path (symlinks
        resolved) must be the file of that name in `logs/` of the run's real directory, so a
        symlink in place of the log, or of the logs dir, pointing elsewhere is refused."""
        path = paths.log_path(run, task_id, attempt)
        real_run = os.path.realpath(paths.run_dir(run))
        real = os.path.realpath(path)
        if real != os.path.join(real_run, "logs", path.name):
            raise NotFound(f"the log of {task_id} attempt {attempt} is not a file in its run's log dir")
        return Path(real)


def order_of(run) -> List[str]:
    try:
        return flowmod.task_order(run.snapshot)
    except Exception:  # a definition we cannot read still shows its attempts
        return []


def depends_of(run) -> Dict[str, List[str]]:
    """{task: its upstream tasks} from the run's stored definition (the graph)."""
    try:
        return {t["id"]: list(t.get("depends_on", [])) for t in json.loads(run.snapshot)["tasks"]}
    except Exception:
        return {}


def _next_fire(schedule, latest, now: datetime) -> Optional[datetime]:
    try:
        return policy.next_fire(schedule, latest, now)
    except Exception:  # a bad cron or zone in the database must not take the page down
        return None


def open_log(path: Path) -> Tuple[int, int]:
    """(fd, size) of a regular file opened without following a symlink and without
    blocking on a FIFO; NotFound otherwise (missing, a device, a pipe)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise NotFound(f"no log at {path} (yet)") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotFound(f"{path} is not a regular file")
    return fd, st.st_size


def tail(path: Path, lines: int = LOG_TAIL_LINES, limit: int = LOG_TAIL_BYTES) -> Tuple[Tuple[str, ...], int, int]:
    """(the last `lines` lines among the last `limit` bytes, bytes before them not read, size)."""
    fd, size = open_log(path)
    try:
        start = max(0, size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        data = os.read(fd, size - start)
    finally:
        os.close(fd)
    if start:
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    kept = deque((raw.rstrip(b"\r").decode("utf-8", "replace") for raw in data.split(b"\n")), maxlen=lines + 1)
    if kept and kept[-1] == "":
        kept.pop()
    while len(kept) > lines:
        kept.popleft()
    return tuple(kept), start, size
