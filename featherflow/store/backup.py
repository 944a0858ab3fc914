"""`featherflow db backup`: a consistent copy of the database, taken while runs write to it.

SQLite's online backup API copies the pages of one read snapshot: in WAL mode
that snapshot never blocks a `_mark` (writers go on appending to the WAL), and
the copy holds every transaction committed before it started and none after.
The copy is written to a temp file beside PATH, made a single self-contained
file (rollback journal, no -wal beside it), checked with `PRAGMA
integrity_check`, flushed to disk and only then given its name — by a hard
link, so an existing PATH is never replaced, even one created meanwhile. A
half-written or failed copy never carries the name PATH.
"""

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from featherflow import errors, states
from featherflow.store.db import SQLITE_HEADER, read_only_uri
from featherflow.errors import DatabaseError, UsageError



@dataclass
class BackupReport:
    source: str
    path: str
    bytes: int
    schema_version: int
    runs: int
    integrity: str  # "ok"


def backup(db_path: Path, dest: Path) -> BackupReport:
    """Copy the database at `db_path` to the new file `dest` (0600); refuse to overwrite."""
    db_path = Path(db_path).absolute()
    dest = Path(os.path.abspath(Path(dest).expanduser()))
    _check_destination(db_path, dest)
    source = _open_source(db_path)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        except OSError as exc:
            raise UsageError(f"cannot write the backup in {dest.parent}: {exc.strerror}") from None
        try:
            version, runs = _copy(source, tmp, db_path)
        finally:
            source.close()
        try:
            _fsync(tmp)
            _publish(tmp, dest)
        except OSError as exc:
            raise UsageError(f"cannot write the backup {dest}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(tmp)
        _remove(Path(str(tmp) + "-journal"))
        raise
    _fsync_dir(dest.parent)
    return BackupReport(str(db_path), str(dest), dest.stat().st_size, version, runs, "ok")


def _check_destination(db_path: Path, dest: Path) -> None:
    """PATH must be a new file in an existing directory, and not the database itself."""
    targets = {os.path.realpath(db_path)} | {os.path.realpath(f"{db_path}{s}") for s in ("-wal", "-shm", "-journal")}
    if os.path.realpath(dest) in targets:
        raise UsageError(f"{dest} is the database itself (or one of its files); back up to another path")
    if os.path.lexists(dest):
        raise UsageError(f"{dest} exists; refusing to overwrite it (choose a new path, or remove it first)")
    if not dest.parent.is_dir():
        raise UsageError(f"cannot write the backup: directory {dest.parent} does not exist")


def _open_source(db_path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing Featherflow database (never created here)."""
    if not db_path.is_file():
        raise DatabaseError(f"no database at {db_path} to back up (check --db / FEATHERFLOW_DB)")
    try:
        with open(db_path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise DatabaseError(f"cannot read {db_path}: {exc.strerror}") from None
    if head != SQLITE_HEADER:
        raise DatabaseError(f"{db_path} is not a SQLite database; nothing was backed up")
    try:
        con = sqlite3.connect(read_only_uri(db_path), uri=True, timeout=10)
        version = con.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise errors.database_error(db_path, exc, "nothing was backed up") from None
    if version == 0 or version > states.SCHEMA_VERSION:
        con.close()
        what = ("not a Featherflow database" if version == 0
                else f"schema version {version}, newer than this Featherflow")
        raise DatabaseError(f"{db_path}: {what}; nothing was backed up")
    return con


def _copy(source: sqlite3.Connection, tmp: Path, db_path: Path):
    """Online backup into `tmp` in one step (one snapshot), then check the copy."""
    target = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        try:
            source.backup(target)  # pages=-1: every page from one read snapshot
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot back up {db_path} ({exc}); nothing was backed up — "
                                "see `featherflow doctor`") from None
        try:
            target.execute("PRAGMA journal_mode = DELETE")  # one file: no -wal needed beside it
            problems = [row[0] for row in target.execute("PRAGMA integrity_check")]
            version = target.execute("PRAGMA user_version").fetchone()[0]
            runs = target.execute("SELECT COUNT(*) FROM flow_run").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"the copy of {db_path} cannot be checked ({exc}); nothing was backed up") from None
        if problems != ["ok"]:
            raise DatabaseError(
                f"the copy of {db_path} fails integrity_check, so the database itself is damaged "
                f"({'; '.join(problems[:3])}); nothing was backed up — `featherflow doctor` says the same; "
                f"{errors.DAMAGED_FIX}")
        return version, runs
    finally:
        target.close()


def _publish(tmp: Path, dest: Path) -> None:
    """Give the finished copy its name without ever replacing an existing file."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise UsageError(f"{dest} appeared while the backup ran; refusing to overwrite it") from None
    except OSError:
        # No hard links here (FAT/exFAT on a USB stick): check, then rename.
        if os.path.lexists(dest):
            raise UsageError(f"{dest} exists; refusing to overwrite it") from None
        os.rename(tmp, dest)
        return
    os.unlink(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
