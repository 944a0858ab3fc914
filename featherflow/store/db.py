"""Open the SQLite database: private file, pragmas, numbered migrations.

WAL with synchronous=FULL because on a Pi the usual fault is a power cut;
a busy timeout so concurrent `_mark` calls wait instead of failing; foreign
keys on. Migrations run on open, each in the IMMEDIATE transaction that sets
`PRAGMA user_version`, so a database is always wholly at one version.
"""

import importlib.util
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from peewee import SqliteDatabase

from featherflow import states
from featherflow.config import ensure_private_dir
from featherflow.errors import DatabaseError, database_error, is_database_error
from featherflow.store.models import MODELS
# The checks a read-only open shares with readconn (peewee-free, for the screens); named here as before.
from featherflow.store.readconn import READ_ONLY_TIMEOUT, SQLITE_HEADER, open_plain, read_only_uri  # noqa: F401
from featherflow.store.readconn import check_header as _check_header, refuse_newer as _refuse_newer

BUSY_TIMEOUT = 10  # seconds
# journal_mode is set apart (_use_wal): switching a new file to WAL takes an
# exclusive lock that SQLite does not wait for under its busy timeout.
PRAGMAS = {
    "synchronous": "full",
    "foreign_keys": 1,
    "busy_timeout": BUSY_TIMEOUT * 1000,
}


def migrations_dir() -> Path:
    """Where the numbered migrations are: `featherflow/migrations/` in a wheel, the top-level
    `migrations/` of a source tree (a clone, or an editable install of one).

    Found by file, not by importing `featherflow.migrations`: from a clone the
    package on sys.path is the clone's `featherflow/`, which has no such subpackage
    (the install maps it there), so a bench run from the clone would fail.
    """
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "0001_initial.py").is_file():
            return candidate
    raise DatabaseError(f"no migrations beside {package} (broken install? reinstall featherflow)")


def migration_modules() -> List[Tuple[int, object]]:
    """(number, module) of every `NNNN_name.py`, in order; each loaded once per process."""
    found = []
    for path in sorted(migrations_dir().glob("[0-9][0-9][0-9][0-9]_*.py")):
        name = f"featherflow.migrations.{path.stem}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[name] = module
        found.append((int(path.stem[:4]), module))
    if [n for n, _ in found] != list(range(1, len(found) + 1)):
        raise DatabaseError("migrations are not numbered 0001, 0002, ... without gaps (broken install?)")
    return found


def chunks(items: Sequence, size: int = 500) -> Iterator[list]:
    """`items` in lists of at most `size`: SQLite before 3.32 allows 999 variables a statement."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def open_database(path: Path, private_dir: Optional[Path] = None, migrate: bool = True) -> SqliteDatabase:
    """Open (creating if needed) and migrate the database at `path`; bind the models."""
    path = Path(path)
    if private_dir is not None and path.parent == private_dir:
        ensure_private_dir(private_dir)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create {path.parent}: {exc.strerror}") from None
    _create_private(path)
    wal = _check_header(path)  # before connecting: closing a file of ours drops SQLite's locks on it
    _tighten(path)
    db = SqliteDatabase(str(path), pragmas=PRAGMAS, timeout=BUSY_TIMEOUT)
    db.bind(MODELS, bind_refs=False, bind_backrefs=False)
    try:
        db.connect()  # its pragmas write nothing to the file
        # The common case, a current database already in WAL mode, costs one read of
        # user_version: no migration file is loaded, no pragma that could write is run.
        current = migrate and wal and schema_version(db) == states.SCHEMA_VERSION
        if migrate and not current:  # before journal_mode=wal, which would rewrite a newer file's header
            version, tables = _peek(path)
            _refuse_newer(version, len(migration_modules()), path)
            _refuse_foreign(version, tables, path)
        if not current:
            _use_wal(db)
        if migrate and not current:
            apply_migrations(db, path)
    except DatabaseError:
        db.close()
        raise
    except Exception as exc:  # sqlite3 errors, or peewee's wrappers of them
        db.close()
        if is_database_error(exc):
            raise database_error(path, exc) from None
        raise
    return db


DAEMON_CACHE_KIB = 256  # the scheduler daemon's page cache (SQLite's default is 2 MiB)


def small_cache(db: SqliteDatabase, kib: int = DAEMON_CACHE_KIB) -> None:
    """A page cache of `kib` KiB on this connection (kept if peewee reconnects): for a
    process that lives for months, where the 2 MiB default is resident memory.

    Safe for the daemon's connection: its queries are small index lookups (schedules,
    the newest slot of each, active runs), and every commit of another process (each
    `_mark`) invalidates this connection's cache anyway, so a bigger cache seldom hits;
    a miss reads from the OS's page cache, not the disk. The daily retention pass
    deletes in chunks and reads more pages, once a day.
    """
    db.pragma("cache_size", -int(kib), permanent=True)


def _use_wal(db: SqliteDatabase, wait: float = BUSY_TIMEOUT) -> None:
    """`PRAGMA journal_mode = wal`, retried while other processes hold the file.

    Only the first switch of a new file does any work, and it needs the file to
    itself: when several processes open a new database at the same instant,
    SQLite answers "database is locked" at once instead of waiting (the busy
    handler is not used for it), so wait here, as the busy timeout would.
    """
    give_up = time.monotonic() + wait
    while True:
        try:
            db.execute_sql("PRAGMA journal_mode = wal").fetchall()
            return
        except Exception as exc:  # sqlite3.OperationalError, or peewee's wrapper of it
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= give_up:
                raise
            time.sleep(0.01)


def apply_migrations(db: SqliteDatabase, path: Path) -> int:
    """Bring the schema to the newest version; refuse a database newer than the code."""
    pending = migration_modules()
    latest = len(pending)
    assert latest == states.SCHEMA_VERSION, "states.SCHEMA_VERSION must match the migrations"
    version = schema_version(db)
    _refuse_newer(version, latest, path)
    if version == latest:
        return version
    # A migration that rebuilds a table others reference (FOREIGN_KEYS_OFF) needs foreign
    # keys off, which SQLite only allows outside a transaction; they are checked before commit.
    keys_off = any(getattr(m, "FOREIGN_KEYS_OFF", False) for _, m in pending[version:])
    if keys_off:
        db.execute_sql("PRAGMA foreign_keys = OFF")
    try:
        with db.atomic("IMMEDIATE"):
            version = schema_version(db)  # another process may have migrated meanwhile
            _refuse_newer(version, latest, path)
            for number, module in pending[version:]:
                module.up(db)
                db.execute_sql(f"PRAGMA user_version = {int(number)}")
            broken = db.execute_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise DatabaseError(f"{path}: migration left {len(broken)} broken reference(s), e.g. "
                                    f"{broken[0]}; nothing was changed")
    finally:
        if keys_off:
            db.execute_sql("PRAGMA foreign_keys = ON")
    return latest


def schema_version(db: SqliteDatabase) -> int:
    return db.execute_sql("PRAGMA user_version").fetchone()[0]


def _peek(path: Path) -> Tuple[int, int]:
    """(user_version, number of tables) through a plain connection: no pragma that writes.

    Both are read in one read transaction, so they come from one snapshot: read
    apart, another process's first migration could commit between the two and
    its tables be counted against the version from before (0), which looks
    exactly like someone else's database.
    """
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        con.execute("BEGIN")
        tables = con.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchone()[0]
        version = con.execute("PRAGMA user_version").fetchone()[0]
        con.execute("COMMIT")
        return version, tables
    finally:
        con.close()


def _refuse_foreign(version: int, tables: int, path: Path) -> None:
    """A SQLite file with tables but no schema version was not made by Featherflow:
    migrating it would add our tables to someone else's database."""
    if version == 0 and tables:
        raise DatabaseError(
            f"{path} is a SQLite database but not a Featherflow one ({tables} table(s), no "
            "Featherflow schema version); point --db / FEATHERFLOW_DB elsewhere or move it aside "
            "— it was not changed")


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would honour the umask)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise DatabaseError(f"cannot create {path}: {exc.strerror}") from None


def _tighten(path: Path) -> None:
    """An existing database (checked to be SQLite) is made private too."""
    if path.stat().st_mode & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass


def open_read_only(path: Path, bind_models: bool = False):
    """Open an existing database for reading only: no file created, no migration, no pragma.

    For the dashboard, which must never write: SQLite itself refuses writes
    through a `mode=ro` connection, and a reader never blocks `_mark` in WAL
    mode. Without `bind_models` the answer is readconn's peewee-free
    ReadOnlyConnection (the screens' raw SQL needs no ORM); with it, a peewee
    database the models are bound to (a process that reads only through Store).
    """
    if not bind_models:
        return open_plain(path)
    path = Path(path).absolute()
    if not path.is_file():
        raise DatabaseError(
            f"no database at {path} yet (the first `featherflow run` or the scheduler creates it; "
            "or point --db / FEATHERFLOW_DB at one)")
    _check_header(path)
    db = SqliteDatabase(read_only_uri(path), uri=True, timeout=READ_ONLY_TIMEOUT)
    try:
        db.connect()
        version = db.execute_sql("PRAGMA user_version").fetchall()[0][0]
    except Exception as exc:  # sqlite3 errors, or peewee's wrappers of them
        db.close()
        if is_database_error(exc):
            raise database_error(path, exc, "cannot read it") from None
        raise
    try:
        _refuse_newer(version, states.SCHEMA_VERSION, path)
        if version != states.SCHEMA_VERSION:  # the models describe the current schema only
            raise DatabaseError(f"{path} has schema version {version} and cannot be upgraded here (it cannot be "
                                f"written); make it writable and any command upgrades it to {states.SCHEMA_VERSION}")
    except DatabaseError:
        db.close()
        raise
    db.bind(MODELS, bind_refs=False, bind_backrefs=False)  # the models may use it (runs list on a read-only disk)
    return db
