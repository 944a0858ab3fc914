"""One daemon per config dir and database: the lock file, and whether a scheduler row is alive.

Below both the daemon (which takes the lock) and control.py (which starts,
stops and reports the daemon, and so imports it): the two meet here instead of
importing each other.
"""

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Optional

from featherflow import config as configmod, proc
from featherflow.errors import ConflictError, FeatherflowError

LOCK_NAME = "scheduler.lock"


def row_alive(row) -> bool:
    """True when the scheduler row (store.SchedulerRow or None) is of a process still running."""
    return bool(row) and row.stopped_at is None and proc.is_alive(row.pid, row.pid_start, row.boot_id)


def take(config_dir: Path, pid: int) -> int:
    """Lock <config dir>/scheduler.lock and write `pid` in it; the open fd holds the lock.
    ConflictError (exit 3) names the pid of the scheduler that holds it."""
    configmod.ensure_private_dir(config_dir)
    path = config_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        held = exc.errno in (errno.EWOULDBLOCK, errno.EACCES)
        holder = holder_of(fd) if held else None
        os.close(fd)
        if not held:
            raise FeatherflowError(f"cannot lock {path}: {exc.strerror}") from None
        raise ConflictError(f"the scheduler already runs (pid {holder or 'unknown'}) for {config_dir}; "
                            "`featherflow scheduler stop` stops it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    os.close(fd)  # releases the flock


def holder_of(fd: int, wait: float = 2.0) -> Optional[int]:
    """The pid written in the lock file (its holder writes it right after locking)."""
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
