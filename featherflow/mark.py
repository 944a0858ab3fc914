"""`featherflow _mark`: record state transitions reported by a run's script.

    mark.py DB RUN_ID [--wait SECONDS] [--pid PID] [--run STATE[:REASON]]
            [TASK:ATTEMPT:STATE[:EXIT[:REASON]] ...]

This is on the path of every task, so it is kept to the standard library: the
generated script runs it as `python -I -S .../featherflow/mark.py`, which skips
site-packages, peewee and argparse. All transitions of one call commit in one
BEGIN IMMEDIATE transaction, so a task's end and its dependents' start cost a
single process start and a single fsync.

Exit codes: 0 recorded, 2 bad arguments, 3 illegal transition, 4 the database
could not record it (locked past --wait seconds, read-only, disk full, missing:
it is never created here).

FEATHERFLOW_MARK_DEADLINE=SECONDS, when set, replaces --wait: how long a
transition retries a locked database before it fails (and the run stops). It is
the one variable read here, outside config.py, because importing config would
cost every task transition; tests set it to a second to keep lock faults quick.
"""

import os
import sqlite3
import sys
import time

BUSY_TIMEOUT = 10.0  # seconds SQLite waits for the write lock, per try
DEADLINE = 30.0  # seconds before giving up on "database is locked" for good (--wait)
USAGE = ("usage: _mark DB RUN_ID [--wait SECONDS] [--pid PID] [--run STATE[:REASON]] "
         "[TASK:ATTEMPT:STATE[:EXIT[:REASON]] ...]")


def parse(argv):
    if len(argv) < 2:
        raise ValueError("the database and the run id are required")
    db, run_id, rest = argv[0], int(argv[1]), list(argv[2:])
    pid = run = None
    wait = DEADLINE
    specs = []
    while rest:
        word = rest.pop(0)
        if word == "--pid":
            pid = int(rest.pop(0))
        elif word == "--wait":
            wait = float(rest.pop(0))
            if not wait >= 0:
                raise ValueError(f"--wait must be a number of seconds >= 0, not {wait}")
        elif word == "--run":
            state, _, reason = rest.pop(0).partition(":")
            run = (state, reason or None)
        else:
            parts = word.split(":", 4)
            if len(parts) < 3:
                raise ValueError(f"bad transition {word!r} (TASK:ATTEMPT:STATE[:EXIT[:REASON]])")
            exit_code = int(parts[3]) if len(parts) > 3 and parts[3] != "" else None
            reason = parts[4] if len(parts) > 4 and parts[4] else None
            specs.append((parts[0], int(parts[1]), parts[2], exit_code, reason))
    override = os.environ.get("FEATHERFLOW_MARK_DEADLINE", "")
    if override:
        try:
            wait = float(override)
        except ValueError:
            wait = -1.0
        if not 0 <= wait < float("inf"):
            raise ValueError(f"FEATHERFLOW_MARK_DEADLINE must be a number of seconds >= 0, not {override!r}")
    return db, run_id, pid, run, specs, wait


def _uri(path):
    """A read-write, never-create SQLite URI: a missing database is an error, not a new file."""
    path = os.path.abspath(path)
    for char, code in (("%", "%25"), ("?", "%3f"), ("#", "%23")):
        path = path.replace(char, code)
    return f"file:{path}?mode=rw"


def record(db, run_id, pid, run, specs, states, deadline=DEADLINE):
    """Apply every transition in one transaction; retry while the database is locked."""
    from featherflow import proc

    start, boot = proc.identity(pid) if pid else (None, None)
    if pid and (start is None and os.path.isdir("/proc") or not proc.is_alive(pid, start, boot)):
        # Recording a dead pid would leave the run `running` for any process that reuses it.
        raise states.IllegalTransition(f"process {pid} of run {run_id} is gone: not recorded")
    give_up = time.monotonic() + deadline
    while True:
        conn = None
        try:
            wait = max(0.0, min(BUSY_TIMEOUT, give_up - time.monotonic()))
            conn = sqlite3.connect(_uri(db), timeout=wait, isolation_level=None, uri=True)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                # Read under the write lock: a migration that committed while this
                # call waited for the lock has changed the schema this code knows.
                version = cur.execute("PRAGMA user_version").fetchone()[0]
                if version != states.SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(
                        f"schema version {version}, expected {states.SCHEMA_VERSION}")
                now = states.utcnow()
                if run is not None and run[0] == states.RUNNING:
                    states.apply_run(cur, run_id, run[0], now, run[1], pid, start, boot)
                for task_id, attempt, state, exit_code, reason in specs:
                    states.apply_attempt(cur, run_id, task_id, attempt, state, now, exit_code, reason)
                if run is not None and run[0] != states.RUNNING:
                    states.apply_run(cur, run_id, run[0], now, run[1], pid, start, boot)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= give_up:
                raise
            time.sleep(0.05)
        finally:
            if conn is not None:
                conn.close()


def main(argv=None) -> int:
    from featherflow import states

    argv = sys.argv[1:] if argv is None else argv
    try:
        db, run_id, pid, run, specs, wait = parse(argv)
    except (ValueError, IndexError) as exc:
        print(f"featherflow _mark: error: {exc} ({USAGE})", file=sys.stderr)
        return 2
    try:
        record(db, run_id, pid, run, specs, states, deadline=wait)
    except states.IllegalTransition as exc:
        print(f"featherflow _mark: error: {exc}", file=sys.stderr)
        return 3
    except sqlite3.Error as exc:
        print(f"featherflow _mark: error: cannot record run {run_id} in {db}: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    # Started as a file with `python -I -S`: the package's parent is not on sys.path.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # A Ctrl-C at the terminal (or a TERM/HUP sent to the whole process group)
    # reaches us too: a mark that is under way finishes (it takes milliseconds)
    # and the script, which traps these signals, cancels the run.
    # (_signal, not signal: the latter imports enum, 5 ms on every task transition.)
    import _signal

    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, _signal.SIG_IGN)
    sys.exit(main())
