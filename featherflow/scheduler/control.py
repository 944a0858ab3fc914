"""The daemon from outside it: start it detached, stop it, wake it, report its status.

`featherflow scheduler start/stop/status`, `schedule add/remove/enable/disable`
(which wake it) and the Python API (compat.py) call these. The daemon is found
through its row in the database (pid, process start time, boot id), never by
name: lock.row_alive says whether that row's process still runs. (`doctor` and
the dashboard also judge its heartbeat, by states.HEARTBEAT_STALE.)
"""

import logging
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import List, Optional

from featherflow import config as configmod, proc, states
from featherflow.config import Config
from featherflow.errors import ConflictError, FeatherflowError
from featherflow.scheduler import lock, policy
from featherflow.scheduler.daemon import LOG_NAME, Scheduler, check_root, configure_logging
from featherflow.store import db
from featherflow.store import Store

log = logging.getLogger(__name__)

START_DEADLINE = 15.0  # seconds `scheduler start` waits for the daemon to report
STOP_DEADLINE = 30.0  # seconds `scheduler stop` waits for it to exit


def failure(message: str, code: int) -> FeatherflowError:
    """A FeatherflowError with the exit code the daemon reported."""
    exc = FeatherflowError(message)
    exc.exit_code = code
    return exc


def start_background(cfg: Config, check_interval: float = 60.0, allow_root: bool = False,
                     fault: Optional[str] = None, log_level: str = "INFO",
                     deadline: float = START_DEADLINE) -> int:
    """Start the daemon detached (double fork, setsid, stdio to <log dir>/scheduler.log) and
    return its pid once its first tick has read the database; its own error (e.g. already
    running: ConflictError, exit 3) is raised here."""
    check_root(allow_root)
    configmod.ensure_private_dir(cfg.config_dir)
    configmod.ensure_private_dir(cfg.log_dir)
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:  # pragma: no cover (runs in the forked processes)
        os.close(read_fd)
        _serve_detached(cfg, write_fd, check_interval, allow_root, fault, log_level)
    os.close(write_fd)
    os.waitpid(first, 0)
    word, _, rest = _read_line(read_fd, deadline).partition(" ")
    if word == "ok":
        return int(rest)
    if word == "err":
        code, _, message = rest.partition(" ")
        raise failure(message, int(code) if code.isdigit() else 1)
    raise failure(f"the scheduler did not come up within {deadline:.0f}s; see {cfg.log_dir / LOG_NAME}", 1)


def _serve_detached(cfg: Config, ready_fd: int, check_interval: float, allow_root: bool,
                    fault: Optional[str], log_level: str) -> None:  # pragma: no cover (forked)
    """The first child: setsid, fork again, and serve in the grandchild; never returns."""
    code = 1
    try:
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(cfg.log_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        # Nothing else of the caller's stays open in the daemon (a pipe of the caller's would
        # never see EOF; a caller's database connection is not the daemon's to touch).
        os.closerange(3, ready_fd)
        os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))
        # The caller may be any Python program (the Python API starts the daemon too), whose
        # sys.stderr and log handlers are not fd 2: log and print to the log file instead.
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(logging.StreamHandler(sys.stderr))
        configure_logging(log_level)
        store = Store(db.open_database(cfg.db_path, cfg.config_dir))
        code = Scheduler(cfg, store, check_interval, allow_root, fault).serve(ready_fd=ready_fd)
    except FeatherflowError as exc:
        code = exc.exit_code
    except BaseException:
        log.exception("the scheduler failed")
    finally:
        os._exit(code)


def _read_line(fd: int, deadline: float) -> str:
    """The one line the daemon reports on `fd` (empty if none came within `deadline` s)."""
    line = b""
    end = time.monotonic() + deadline
    try:
        while not line.endswith(b"\n") and time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            line += chunk
    finally:
        os.close(fd)
    return line.decode(errors="replace").strip()


def next_fire(store: Store, schedule, now: datetime) -> Optional[datetime]:
    """When `schedule` fires next (aware UTC; None when disabled), from what `store` recorded."""
    return policy.next_fire(schedule, store.schedules.latest_slot_at(schedule.id), now)


def is_running(store: Store) -> bool:
    """True when the daemon recorded for this database still runs."""
    return lock.row_alive(store.schedules.scheduler_row())


def notify(store: Store) -> bool:
    """Wake the running scheduler (SIGHUP) so a schedule change counts at once, not within
    the check interval; False when none runs or it is not ours to signal."""
    row = store.schedules.scheduler_row()
    if not lock.row_alive(row):
        return False
    try:
        os.kill(row.pid, signal.SIGHUP)
    except OSError:
        return False
    return True


def stop(store: Store, deadline: float = STOP_DEADLINE) -> Optional[int]:
    """SIGTERM the running scheduler and wait until it exits; its pid, or None if none ran."""
    row = store.schedules.scheduler_row()
    if not lock.row_alive(row):
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


def status(store: Store, now: datetime) -> Status:
    """`scheduler status`: the daemon's row, every schedule with its next fire time, active runs."""
    row = store.schedules.scheduler_row()
    rows = [(s, next_fire(store, s, now)) for s in store.schedules.list_schedules()]
    runs = store.runs.list_runs(states_in=(states.QUEUED, states.RUNNING), limit=None)
    return Status(lock.row_alive(row), row, rows, runs)
