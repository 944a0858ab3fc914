"""Exceptions callers tell apart, and the exit code each one maps to.

The CLI turns any FeatherflowError into one `error:` line and its exit code;
the library never prints and never exits.
"""

import os

# Exit codes are part of the interface (README, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # a run failed, or a check found problems
EXIT_USAGE = 2  # invalid input: arguments, flow files, params, unknown names
EXIT_CONFLICT = 3  # the state does not allow it: illegal transition, run not resumable
EXIT_DATABASE = 4  # the database (or a disk it needs) cannot be used: locked, corrupt, newer, read-only, full
EXIT_CANCELLED = 5  # the run was cancelled or interrupted


class FeatherflowError(Exception):
    """Base of every error Featherflow reports to a user."""

    exit_code = EXIT_USAGE


class UsageError(FeatherflowError):
    """Bad arguments or a name that does not exist."""


class ValidationError(FeatherflowError):
    """A flow file (or params) is invalid; carries every problem found."""

    def __init__(self, errors, source=None):
        self.errors = list(errors)
        self.source = source
        super().__init__("; ".join(self.errors))


class ConflictError(FeatherflowError):
    """The current state does not allow the request."""

    exit_code = EXIT_CONFLICT


class DatabaseError(FeatherflowError):
    """The database cannot be opened, migrated or written."""

    exit_code = EXIT_DATABASE


class DiskError(FeatherflowError):
    """A file Featherflow must write (a run's script, its dirs) cannot be written: the disk
    is full or read-only, or failed. The environment, not the input: exit 4, like the database."""

    exit_code = EXIT_DATABASE


# -- what a SQLite error says about the file ------------------------------------------
# A full or read-only disk must never be reported as a damaged database: the
# advice for damage (move the file aside, restore a backup) loses history when
# the file is intact. Python 3.11 gives the SQLite code; 3.9 only the message.

LOCKED, FULL, READ_ONLY, IO, CANT_OPEN, DAMAGED, OTHER = (
    "locked", "full", "read-only", "io", "cant-open", "damaged", "other")
_BY_NAME = (("SQLITE_BUSY", LOCKED), ("SQLITE_LOCKED", LOCKED), ("SQLITE_FULL", FULL),
            ("SQLITE_READONLY", READ_ONLY), ("SQLITE_IOERR", IO), ("SQLITE_CANTOPEN", CANT_OPEN),
            ("SQLITE_CORRUPT", DAMAGED), ("SQLITE_NOTADB", DAMAGED))
_BY_TEXT = (("locked", LOCKED), ("busy", LOCKED), ("disk is full", FULL), ("readonly", READ_ONLY),
            ("read-only", READ_ONLY), ("disk i/o error", IO), ("unable to open", CANT_OPEN),
            ("malformed", DAMAGED), ("not a database", DAMAGED))
DAMAGED_FIX = ("stop the scheduler, move it aside with its -wal and -shm files and copy a backup in its "
               "place (README, \"Backups\")")


def is_database_error(exc: BaseException) -> bool:
    """Whether `exc` came from SQLite: sqlite3's own errors, or peewee's wrappers of them
    (peewee re-raises them as classes of its own module, e.g. peewee.OperationalError)."""
    import sqlite3  # here, not at the top: `_mark` imports this module and does its own

    return isinstance(exc, sqlite3.Error) or (
        exc.__class__.__module__ == "peewee" and exc.__class__.__name__.endswith("Error"))


def sqlite_cause(exc: BaseException) -> BaseException:
    """The sqlite3 error behind peewee's wrapper of it (peewee passes it as the first arg)."""
    for _ in range(3):
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc.__context__
        if exc.__class__.__module__ != "peewee" or inner is None:
            break
        exc = inner
    return exc


def sqlite_fault(exc: BaseException) -> str:
    """LOCKED, FULL, READ_ONLY, IO, CANT_OPEN, DAMAGED or OTHER for a sqlite3 (or peewee) error."""
    exc = sqlite_cause(exc)
    name = getattr(exc, "sqlite_errorname", None) or ""
    for prefix, kind in _BY_NAME:
        if name == prefix or name.startswith(prefix + "_"):
            return kind
    text = str(exc).lower()
    for words, kind in _BY_TEXT:
        if words in text:
            return kind
    return OTHER


def filesystem_state(path) -> str:
    """FULL or READ_ONLY when the filesystem holding `path` (or its nearest existing parent)
    is; "" otherwise. An I/O error or an unopenable file is often just that."""
    path = os.path.abspath(str(path))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except OSError:
        return ""
    if st.f_flag & os.ST_RDONLY:
        return READ_ONLY
    if st.f_bavail * st.f_frsize < 64 * 1024:  # not even room for a -shm file and a WAL frame
        return FULL
    return ""


def environment_fault(path, exc: BaseException) -> str:
    """The kind of fault, with an I/O error or an unopenable file checked against the disk."""
    kind = sqlite_fault(exc)
    if kind in (IO, CANT_OPEN, READ_ONLY, FULL):
        return filesystem_state(path) or kind
    return kind


def database_error(path, exc: BaseException, what: str = "") -> "DatabaseError":
    """One DatabaseError whose advice fits the fault: free space or remount for a full or
    read-only disk (nothing is damaged), a backup only for a damaged file."""
    cause = sqlite_cause(exc)
    kind = environment_fault(path, exc)
    doing = f"{what}: " if what else ""
    if kind == FULL:
        return DatabaseError(f"{doing}the disk holding {path} is full ({cause}): free space there "
                             "(`featherflow runs prune --older-than 30d` deletes old runs' logs) and retry; "
                             "nothing is damaged")
    if kind == READ_ONLY:
        return DatabaseError(f"{doing}{path} is on a read-only filesystem or cannot be written ({cause}): "
                             "remount it read-write (mount -o remount,rw ...) or fix the file's permissions "
                             "and retry; nothing is damaged")
    if kind == LOCKED:
        return DatabaseError(f"{doing}{path} is locked by another process ({cause}); retry once it is done "
                             "(a long `sqlite3` shell or backup holds it)")
    if kind == DAMAGED:
        return DatabaseError(f"{doing}{path} is damaged ({cause}): retrying cannot help; `featherflow doctor` "
                             f"runs integrity_check on it; {DAMAGED_FIX}")
    if kind == IO:
        return DatabaseError(f"{doing}a disk I/O error on {path} ({cause}): check the disk (dmesg) and retry; "
                             "the file is probably intact — `featherflow doctor` runs integrity_check on it; "
                             "do not move it aside")
    if kind == CANT_OPEN:
        return DatabaseError(f"{doing}cannot open {path} ({cause}): check that its directory exists and can be "
                             "written (SQLite creates its -wal and -shm files beside it); nothing is damaged")
    return DatabaseError(f"{doing}{path}: {cause} (`featherflow doctor` checks it)")
