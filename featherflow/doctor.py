"""`featherflow doctor`: check an installation and say how to fix what is wrong.

Each check returns Findings (name, status, detail, fix) and never prints,
exits or writes: the doctor reads the database through a read-only
connection and does not create, migrate or reconcile anything, so it can be
run on a machine in trouble. The deciding parts are pure functions of what
was read (mount table, clock state, heartbeat time, `now`), tested without
the machine they describe.

Statuses: `ok`; `warning` (worth knowing, not a failure: the clock state is
unknown, logs take space); `problem` (something will go wrong or is wrong:
`featherflow doctor` exits 1).
"""

import os
import shlex
import shutil
import sqlite3
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from featherflow import clock, errors, proc, scaffold, states
from featherflow.host import (
    OK, PROBLEM, PRUNE, WARNING, Finding, check_clock, parse_time, check_scheduler, check_filesystem, check_free_space, clock_synchronised,
    free_spaces, read_mountinfo)
from featherflow.store import db
from featherflow.store.rules import GLOBAL, Rule, describe
from featherflow.text import duration, megabytes


WAL_WARN_BYTES = 64 * 1024 * 1024  # a WAL this big means a reader keeps it from being checkpointed
LOGS_WARN_BYTES = 1024 ** 3
HISTORY_WARN_RUNS = 10000  # with no retention policy, this much history is worth a warning
HISTORY_WARN_BYTES = 256 * 1024 * 1024
RETAIN = "featherflow retention set --older-than 30d --keep-last 100"
def problems(findings: Iterable[Finding]) -> List[Finding]:
    return [f for f in findings if f.status == PROBLEM]


def diagnose(config, now: datetime) -> List[Finding]:
    """Every check, in the order a person would look (`now`: UTC)."""
    db_path = Path(config.db_path)
    findings = [check_filesystem(db_path, read_mountinfo())]
    con, finding = _connect(db_path)
    findings.append(finding)
    history = None
    if con is not None:
        try:
            findings += _database_checks(con, db_path, now)
            history = _history(con)
        finally:
            con.close()
    findings.append(check_wal_size(_size(Path(f"{db_path}-wal"))))
    findings += check_permissions(db_path, Path(config.config_dir), Path(config.output_dir), os.getuid())
    findings.append(check_project(Path(config.flows_dir), Path(config.tasks_dir),
                                  scaffold.loose_paths(Path(config.flows_dir), Path(config.tasks_dir))))
    findings += check_free_space(free_spaces([db_path.parent, Path(config.output_dir)]))
    findings.append(check_clock(clock_synchronised(), now))
    logs = log_usage(Path(config.output_dir) / "runs")
    findings.append(check_logs(*logs))
    if history is not None:
        findings.append(check_retention(history, logs[0], logs[1], _size(db_path) or 0,
                                        _size(Path(f"{db_path}-wal")) or 0, now))
    findings.append(check_pools(shutil.which("flock")))
    return sorted(findings, key=lambda f: ORDER.index(f.name) if f.name in ORDER else len(ORDER))


# The order a person reads them in: the database, the machine, then what runs.
ORDER = ["database filesystem", "database integrity", "schema version", "database tables", "WAL size",
         "database permissions", "config dir permissions", "output dir permissions", "project permissions",
         "free disk space",
         "clock", "scheduler", "stuck runs", "orphaned processes", "logs disk use", "retention", "pools"]


# -- database ------------------------------------------------------------------

def _connect(db_path: Path):
    """A read-only connection and the integrity finding; no connection if unusable."""
    name = "database integrity"
    if not db_path.exists():
        return None, Finding(name, WARNING, f"no database at {db_path} yet",
                             "the first `featherflow run` or `featherflow scheduler start` creates it")
    try:
        with open(db_path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return None, Finding(name, PROBLEM, f"cannot read {db_path}: {exc.strerror}",
                             f"check its owner and mode (ls -l {db_path})")
    if head and head != db.SQLITE_HEADER:
        return None, Finding(name, PROBLEM, f"{db_path} is not a SQLite database",
                             "move it aside and point --db / FEATHERFLOW_DB at the real database")
    con = None
    try:
        # integrity_check, not quick_check: only it compares each index with its table, and
        # an index out of step (a WAL of another database replayed into this one) is damage
        # that `db backup` refuses and that writes would spread.
        con = sqlite3.connect(db.read_only_uri(db_path), uri=True, timeout=5)
        result = [row[0] for row in con.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        if con is not None:
            con.close()
        return None, _unreadable(db_path, exc)
    if result != ["ok"]:
        con.close()
        return None, Finding(name, PROBLEM, f"{db_path} is damaged (integrity_check: {'; '.join(result[:3])})",
                             _restore(db_path))
    return con, Finding(name, OK, f"integrity_check ok ({db_path})")


def _unreadable(db_path: Path, exc) -> Finding:
    """A database that cannot be read: damaged, or on a disk that is full, read-only or
    failing — which leaves the file intact, so the fix must not be to move it aside."""
    kind = errors.environment_fault(db_path, exc)
    detail = f"{db_path} cannot be read: {exc}"
    if kind == errors.FULL:
        fix = f"free space on the disk holding it (`{PRUNE}` deletes old runs' logs); nothing is damaged"
    elif kind == errors.READ_ONLY:
        fix = "remount its filesystem read-write (mount -o remount,rw ...) or fix its permissions; nothing is damaged"
    elif kind == errors.LOCKED:
        fix = "another process holds it locked (a long `sqlite3` shell?); run doctor again once it is done"
    elif kind == errors.DAMAGED:
        return Finding("database integrity", PROBLEM, f"{db_path} is damaged ({exc})", _restore(db_path))
    else:
        fix = ("check the disk (dmesg) and its directory; the file is probably intact: do not move it aside "
               "before an integrity check passes or fails")
    return Finding("database integrity", PROBLEM, detail, fix)


def _restore(db_path: Path) -> str:
    # Its -wal and -shm go too: a leftover -wal would be replayed into the restored copy.
    # The same advice as `db backup` and every command that meets a damaged file (errors.DAMAGED_FIX).
    return (f"{errors.DAMAGED_FIX} (for f in {shlex.quote(str(db_path))}*; do mv \"$f\" \"$f.damaged\"; done); "
            "with no backup, the next command then starts an empty database: the history is lost")


def _database_checks(con, db_path: Path, now: datetime) -> List[Finding]:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    finding = check_schema(version, _table_count(con), states.SCHEMA_VERSION)
    found = [finding]
    if finding.status == PROBLEM or version < 1:
        return found
    try:
        row = con.execute("SELECT pid, pid_start, boot_id, heartbeat_at, stopped_at FROM scheduler "
                          "WHERE id = 1").fetchone()
        enabled = con.execute("SELECT COUNT(*) FROM schedule WHERE enabled = 1").fetchone()[0]
        active = con.execute("SELECT id, flow_name, state, pid, pid_start, boot_id FROM flow_run "
                             "WHERE state IN ('queued', 'running') ORDER BY id").fetchall()
        by_pid = uids_by_pid()
        uids = set(by_pid.values())
        known = {}
        if uids:
            marks = ", ".join("?" * len(uids))
            known = {uid: (run_id, state) for uid, run_id, state in con.execute(
                f"SELECT uid, id, state FROM flow_run WHERE uid IN ({marks})", sorted(uids))}
    except sqlite3.Error as exc:
        return found + [Finding("database tables", PROBLEM, f"cannot read {db_path}: {exc}", _restore(db_path))]
    alive = proc.is_alive(row[0], row[1], row[2]) if row else False
    found.append(check_scheduler(row and {"pid": row[0], "heartbeat_at": row[3], "stopped_at": row[4]},
                                 alive, enabled, now))
    stuck = [(run_id, flow, state) for run_id, flow, state, pid, start, boot in active
             if not proc.is_alive(pid, start, boot)]
    found.append(check_stuck(stuck))
    leftovers = {pid: known[uid] for pid, uid in by_pid.items() if uid in known}
    found.append(check_orphans(leftovers))
    if version >= 4:
        try:
            failed = con.execute("SELECT COUNT(*), MAX(id) FROM delivery WHERE state = 'failed'").fetchone()
            last = con.execute("SELECT c.name, d.answer FROM delivery d JOIN channel c ON c.id = d.channel_id "
                               "WHERE d.id = ?", (failed[1],)).fetchone() if failed[1] else None
            channels = con.execute("SELECT COUNT(*) FROM channel WHERE enabled = 1").fetchone()[0]
        except sqlite3.Error as exc:
            return found + [Finding("notifications", PROBLEM, f"cannot read {db_path}: {exc}", _restore(db_path))]
        found.append(check_notifications(channels, failed[0], last))
    return found


def check_notifications(channels: int, failed: int, last) -> Finding:
    """Deliveries that ran out of retries: someone was not told."""
    name = "notifications"
    if failed:
        who = f"; the last to {last[0]!r}: {last[1]}" if last else ""
        return Finding(name, PROBLEM, f"{failed} notification(s) could not be delivered{who}",
                       "`featherflow notify log --state failed` shows each; fix the channel and "
                       "check it with `featherflow notify test NAME`")
    if not channels:
        return Finding(name, OK, "no channel: nobody is told when a run fails "
                       "(`featherflow notify add` sets one up)")
    return Finding(name, OK, f"{channels} channel(s), nothing undelivered")


def _table_count(con) -> int:
    return con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
                       "AND name NOT LIKE 'sqlite_%'").fetchone()[0]


def check_schema(version: int, tables: int, latest: int) -> Finding:
    name = "schema version"
    if version == 0 and tables:
        return Finding(name, PROBLEM, f"a SQLite database with {tables} table(s) but no Featherflow schema",
                       "this is not a Featherflow database: point --db / FEATHERFLOW_DB at the right file")
    if version == 0:
        return Finding(name, OK, "empty: the next command creates the tables")
    if version > latest:
        return Finding(name, PROBLEM, f"version {version}, newer than this Featherflow ({latest})",
                       "upgrade Featherflow (pip install -U featherflow); the database is refused, never altered")
    if version < latest:
        return Finding(name, OK, f"version {version}; the next command upgrades it to {latest} "
                                 "(back it up first: featherflow db backup PATH)")
    return Finding(name, OK, f"version {version} (current)")


def check_wal_size(size: Optional[int]) -> Finding:
    name = "WAL size"
    if size is None:
        return Finding(name, OK, "no WAL file (nothing written since the last checkpoint)")
    if size > WAL_WARN_BYTES:
        return Finding(name, WARNING, f"{megabytes(size)}: a long-lived reader keeps it from being checkpointed",
                       "close long-running readers (an open dashboard, a `sqlite3` shell); "
                       f"`{PRUNE}` checkpoints and truncates it")
    return Finding(name, OK, megabytes(size))


# -- permissions -----------------------------------------------------------------

def check_permissions(db_path: Path, config_dir: Path, output_dir: Path, uid: int) -> List[Finding]:
    """Database files 0600 and the config dir 0700, owned by us; the output dir
    (logs may hold secrets; a writable one lets others plant files) private too."""
    found = []
    files = []
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        st = _lstat(path)
        if st is not None:
            files.append(_private(path, st, uid, 0o077, "600"))
    bad = [f for f in files if f]
    found.append(Finding("database permissions", PROBLEM if bad else OK,
                         "; ".join(d for d, _ in bad) if bad else "private to its owner (0600)",
                         "; ".join(x for _, x in bad)))
    st = _lstat(config_dir)
    if st is None:
        found.append(Finding("config dir permissions", OK, f"{config_dir} does not exist yet (created 0700)"))
    else:
        problem = _private(config_dir, st, uid, 0o077, "700")
        found.append(Finding("config dir permissions", PROBLEM if problem else OK,
                             problem[0] if problem else f"{config_dir} is private (0700)",
                             problem[1] if problem else ""))
    found.append(check_output_dir(output_dir, uid))
    return found


def check_output_dir(output_dir: Path, uid: int) -> Finding:
    name = "output dir permissions"
    details, fixes, status = [], [], OK
    for path in (output_dir, output_dir / "runs"):
        st = _lstat(path)
        if st is None:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != uid:
            status = PROBLEM
            details.append(f"{path} is owned by uid {st.st_uid}, not you ({uid})")
            fixes.append(f"chown -R $(id -u) {path}")
        if mode & 0o022:
            status = PROBLEM
            details.append(f"{path} is {mode:04o}: others can write into it (and plant files or symlinks)")
            fixes.append(f"chmod go-rwx {path}")
        elif mode & 0o044:
            status = WARNING if status == OK else status
            details.append(f"{path} is {mode:04o}: others can read task logs")
            fixes.append(f"chmod go-rwx {path}")
    if not details:
        return Finding(name, OK, f"{output_dir} is private" if output_dir.exists()
                       else f"{output_dir} does not exist yet (created 0700)")
    return Finding(name, status, "; ".join(details), "; ".join(dict.fromkeys(fixes)))


def check_project(flows_dir: Path, tasks_dir: Path, loose: Sequence[Tuple[str, int]]) -> Finding:
    """Flows, task scripts and their dirs that others can write (`loose`: (path, mode) pairs,
    from scaffold.loose_paths): whoever can write them chooses what a run executes."""
    name = "project permissions"
    if not loose:
        there = [str(d) for d in (flows_dir, tasks_dir) if d.is_dir()]
        return Finding(name, OK, f"only their owner can write {' and '.join(there)}" if there else
                       f"no {flows_dir} or {tasks_dir} here (run doctor in the project folder, or pass -f/-t)")
    shown = "; ".join(f"{path} is {mode:04o}" for path, mode in loose[:5])
    more = f" and {len(loose) - 5} more" if len(loose) > 5 else ""
    paths = [path for path, _ in loose] if len(loose) <= 5 else [str(d) for d in (flows_dir, tasks_dir) if d.is_dir()]
    fix = "chmod " + ("-R " if len(loose) > 5 else "") + "go-w " + " ".join(shlex.quote(p) for p in paths)
    return Finding(name, WARNING, f"{shown}{more}: others can change what a run executes", fix)


def _private(path: Path, st, uid: int, forbidden: int, wanted: str) -> Optional[Tuple[str, str]]:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink", f"replace {path} by the file it points to"
    if st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not you ({uid})", f"chown $(id -u) {path}"
    if mode & forbidden:
        return f"{path} is {mode:04o}, readable or writable by others", f"chmod {wanted} {path}"
    return None


# -- filesystem and disk ---------------------------------------------------------------

def log_usage(runs_dir: Path) -> Tuple[int, int, str]:
    """(bytes, run dirs, where) of the scripts and logs under <output>/runs; symlinks not followed."""
    total = dirs = 0
    try:
        entries = list(os.scandir(runs_dir))
    except OSError:
        return 0, 0, str(runs_dir)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            dirs += 1
            for root, subdirs, files in os.walk(entry.path):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(root, name)).st_size
                    except OSError:
                        pass
    return total, dirs, str(runs_dir)


def check_logs(size: int, dirs: int, where: str) -> Finding:
    detail = f"{megabytes(size)} in {dirs} run dir(s) under {where}"
    if size > LOGS_WARN_BYTES:
        return Finding("logs disk use", WARNING, detail, f"`{PRUNE}` deletes finished runs older than 30 days")
    return Finding("logs disk use", OK, detail, f"to free it: `{PRUNE}`" if dirs else "")


def _history(con) -> Optional[Dict]:
    """How many runs, since when, and the retention policy (None: cannot be read)."""
    try:
        runs, oldest = con.execute("SELECT COUNT(*), MIN(created_at) FROM flow_run").fetchone()
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'retention_rule'").fetchone():
            return {"runs": runs, "oldest": parse_time(oldest), "rules": None, "applied": None}
        rows = con.execute("SELECT scope, older_than_seconds, keep_last, enabled FROM retention_rule").fetchall()
        applied = con.execute("SELECT at FROM retention_applied WHERE id = 1").fetchone()
    except sqlite3.Error:
        return None
    found = {scope: Rule(scope, None if age is None else timedelta(seconds=age), keep, bool(on))
             for scope, age, keep, on in rows}
    return {"runs": runs, "oldest": parse_time(oldest), "rules": found,
            "applied": parse_time(applied[0]) if applied else None}


def check_retention(history: Dict, log_bytes: int, log_dirs: int, db_bytes: int, wal_bytes: int,
                    now: datetime) -> Finding:
    """The space the history takes against the policy: a warning when nothing bounds a large
    history, or when a policy is set but has not run for days (no scheduler to apply it)."""
    name, rules = "retention", history["rules"] or {}
    oldest = history["oldest"]
    age = f", the oldest {duration((clock.as_utc(now) - oldest).total_seconds())} old" if oldest else ""
    space = (f"logs {megabytes(log_bytes)} in {log_dirs} run dir(s); database {megabytes(db_bytes)} "
             f"(+ WAL {megabytes(wal_bytes)}) for {history['runs']} run(s){age}")
    own = [r for scope, r in rules.items() if scope != GLOBAL]
    policy = f"policy: {describe(rules.get(GLOBAL))}" + (f" (+ {len(own)} flow rule(s))" if own else "")
    applied = history["applied"]
    since = (clock.as_utc(now) - applied).total_seconds() if applied else None
    detail = f"{space}; {policy}; last applied {'never' if since is None else duration(since) + ' ago'}"
    if not any(r.active for r in rules.values()):
        if history["runs"] >= HISTORY_WARN_RUNS or log_bytes + db_bytes >= HISTORY_WARN_BYTES:
            return Finding(name, WARNING, detail, f"`{RETAIN}` (the scheduler then prunes once a day)")
        return Finding(name, OK, detail, f"to bound it: `{RETAIN}`")
    # Overdue: not applied for two days, and the history holds runs older than a rule allows.
    ages = [r.older_than for r in rules.values() if r.active and r.older_than is not None]
    if (since is None or since > 2 * 86400) and oldest and ages and \
            clock.as_utc(now) - oldest > min(ages) + timedelta(days=1):
        return Finding(name, WARNING, detail, "the scheduler applies it once a day: is it running? "
                       "`featherflow runs prune --policy` applies it now")
    return Finding(name, OK, detail)


# -- clock -------------------------------------------------------------------------

def check_pools(flock: Optional[str]) -> Finding:
    """Tasks that name a pool hold their slot with flock(1) (util-linux)."""
    if flock:
        return Finding("pools", OK, f"flock found ({flock}): tasks with a \"pool\" can hold its slots")
    return Finding("pools", WARNING, "flock not found on PATH: a flow whose tasks name a \"pool\" cannot run",
                   "install util-linux (apt install util-linux)")


def check_stuck(stuck: Sequence[Tuple[int, str, str]]) -> Finding:
    """Queued or running in the database, but their process is gone."""
    if not stuck:
        return Finding("stuck runs", OK, "none: every queued or running run has a live process")
    ids = ", ".join(f"{run_id} ({flow}, {state})" for run_id, flow, state in stuck)
    return Finding("stuck runs", PROBLEM, f"{len(stuck)} run(s) whose process is gone: {ids}",
                   "`featherflow runs list` marks them interrupted and stops what they left; "
                   "then `featherflow runs resume RUN_ID`")


def check_orphans(leftovers: Dict[int, Tuple[int, str]]) -> Finding:
    """Processes of runs that are over: they run untracked."""
    over = {pid: run for pid, run in leftovers.items() if run[1] not in (states.QUEUED, states.RUNNING)}
    if not over:
        return Finding("orphaned processes", OK, "none: no task runs outside a live run")
    listed = ", ".join(f"pid {pid} (run {run_id}, {state})" for pid, (run_id, state) in sorted(over.items()))
    return Finding("orphaned processes", PROBLEM, f"{len(over)} process(es) of finished runs still run: {listed}",
                   f"kill {' '.join(str(p) for p in sorted(over))}")


def uids_by_pid() -> Dict[int, str]:
    """{pid: FEATHERFLOW_RUN_UID} of the live processes we can read (Linux /proc)."""
    found = {}
    for pid, env in proc.each_process("environ"):
        for item in env.split(b"\0"):
            if item.startswith(b"FEATHERFLOW_RUN_UID="):
                if not proc.is_zombie(pid):
                    found[pid] = item.partition(b"=")[2].decode("ascii", "replace")
                break
    return found


# -- small helpers --------------------------------------------------------------------

def _lstat(path: Path):
    try:
        return os.lstat(path)
    except OSError:
        return None


def _size(path: Path) -> Optional[int]:
    st = _lstat(path)
    return st.st_size if st is not None else None


