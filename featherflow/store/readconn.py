"""A read-only SQLite connection without peewee: what the dashboard and the status page read through.

They never write and only run raw SQL, so they need three methods of a peewee
database (`execute_sql`, `atomic`, `close`), not the ORM, whose import alone
costs `featherflow serve` some 8 MB of its idle memory. The rules are those of
db.open_read_only (which uses this for every caller that does not bind the
models): a `mode=ro` URI, so SQLite itself refuses any write; the file's header
checked before SQLite touches it; a schema newer than the code refused.

One connection per thread, opened when that thread first uses it and closed by
that thread's `close()`, as peewee does: the status page answers each request
in a thread of its own and closes that thread's connection when it is done.
"""

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from featherflow import states
from featherflow.errors import READ_ONLY, DatabaseError, database_error, filesystem_state, is_database_error

SQLITE_HEADER = b"SQLite format 3\x00"
READ_ONLY_TIMEOUT = 2  # seconds; a reader in WAL mode waits only while the WAL index is rebuilt


def check_header(path: Path) -> bool:
    """Refuse a file that is not SQLite before SQLite touches it; whether its header says
    WAL (read and write versions, bytes 18 and 19, are 2).

    Never call this while this process has the file open through SQLite: closing any
    descriptor of a file drops every POSIX lock the process holds on it, SQLite's too.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise DatabaseError(f"cannot read {path}: {exc.strerror}") from None
    wal = head[18:20] == b"\x02\x02"
    head = head[:len(SQLITE_HEADER)]
    if head and head != SQLITE_HEADER:
        raise DatabaseError(
            f"{path} is not a SQLite database (not created by Featherflow?); "
            "move it aside or point --db / FEATHERFLOW_DB elsewhere — it was not changed")
    return wal


def refuse_newer(version: int, latest: int, path: Path) -> None:
    if version > latest:
        raise DatabaseError(
            f"{path} has schema version {version}, newer than this Featherflow understands "
            f"({latest}); upgrade Featherflow (pip install -U featherflow) — the file was not changed")


def read_only_uri(path: Path) -> str:
    """A read-only SQLite URI for `path`; `immutable=1` when the filesystem is read-only and
    the file has no -wal and no -shm beside it.

    A WAL reader needs the -shm file; on a read-only filesystem it cannot create
    one, and SQLite refuses ("unable to open database file"). When there is no
    WAL either, the main file holds every committed transaction and nobody can
    change it, so reading it as immutable (no locks, no -shm) is exact. With a
    -shm present SQLite reads it (and the WAL) read-only by itself; a -wal
    without its -shm is not read as immutable, which would ignore the WAL.
    """
    uri = f"file:{quote(str(Path(path).absolute()))}?mode=ro"
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if filesystem_state(path) == READ_ONLY and not shm.exists() and not (wal.exists() and wal.stat().st_size):
        uri += "&immutable=1"
    return uri


class ReadOnlyConnection:
    """`execute_sql`, `atomic` and `close` of a peewee database, over sqlite3, one connection a thread."""

    def __init__(self, uri: str, timeout: float = READ_ONLY_TIMEOUT):
        self.uri = uri
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:  # autocommit (as peewee): a transaction is only what atomic() begins
            con = sqlite3.connect(self.uri, uri=True, timeout=self.timeout, isolation_level=None)
            self._local.con, self._local.depth = con, 0
        return con

    def execute_sql(self, sql: str, params=()) -> sqlite3.Cursor:
        return self._connection().execute(sql, tuple(params or ()))

    @contextmanager
    def atomic(self):
        """One read transaction (BEGIN ... COMMIT, ROLLBACK on an error); nested ones join it."""
        con = self._connection()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        con.execute("BEGIN")
        self._local.depth = 1
        try:
            yield
        except BaseException:
            self._local.depth = 0
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        self._local.depth = 0
        if con.in_transaction:
            con.execute("COMMIT")

    def close(self) -> None:
        """Close the calling thread's connection (the next use opens a new one)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            self._local.con = None
            con.close()


def open_plain(path: Path) -> ReadOnlyConnection:
    """db.open_read_only without peewee and without binding the models (see the module's doc)."""
    path = Path(path).absolute()
    if not path.is_file():
        raise DatabaseError(
            f"no database at {path} yet (the first `featherflow run` or the scheduler creates it; "
            "or point --db / FEATHERFLOW_DB at one)")
    check_header(path)
    db = ReadOnlyConnection(read_only_uri(path))
    try:
        version = db.execute_sql("PRAGMA user_version").fetchall()[0][0]
    except Exception as exc:  # sqlite3 errors
        db.close()
        if is_database_error(exc):
            raise database_error(path, exc, "cannot read it") from None
        raise
    try:
        refuse_newer(version, states.SCHEMA_VERSION, path)
    except DatabaseError:
        db.close()
        raise
    return db
