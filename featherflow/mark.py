"""`featherflow _mark`: record state transitions reported by a run's script.

    mark.py DB RUN_ID [--wait SECONDS] [--outputs DIR] [--pid PID] [--run STATE[:REASON]]
            [TASK:ATTEMPT:STATE[:EXIT[:REASON]] ...]
    mark.py DB RUN_ID [--wait SECONDS] [--outputs DIR] [--idle SECONDS] --serve

With --outputs, a success of attempt N of TASK stores the outputs the task wrote to
DIR/TASK.N (outputs.py's format), in the transaction that records the success; a
file that cannot be stored (over the cap, not in the format) records the attempt
failed with the reason instead.

With --serve it is the run's co-process: it reads one call per line on stdin
(the same words, separated by tabs), records it, and only then answers with
the exit code on a line of its own. One process and one SQLite connection
for a burst of transitions: each costs a fraction of a millisecond instead of
a process start (tens of them). The connection is closed as soon as no call
has come for BURST seconds, so that between bursts nothing holds the database
open (a restore, a move aside or a read-only remount sees no writer). End of
input ends the process, and so do --idle seconds without a call (default 3):
while tasks run for minutes, no Python waits in memory for nothing; the
script starts another co-process when it next needs one.

STATE `waiting` is no move: it gives a pending attempt its reason (it waits for
a slot of a pool: states.note_waiting).

This is on the path of every task, so it is kept to the standard library: the
generated script runs it as `python -I -S .../featherflow/_mark.py` (LAUNCHER, which
imports this module), which skips site-packages, peewee and argparse. All transitions of one call commit in one
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
IDLE = 3.0  # seconds --serve waits for a call before it ends (--idle)
BURST = 0.1  # seconds without a call after which --serve closes its connection
USAGE = ("usage: _mark DB RUN_ID [--wait SECONDS] [--outputs DIR] [--pid PID] [--run STATE[:REASON]] "
         "[TASK:ATTEMPT:STATE[:EXIT[:REASON]] ...] | _mark DB RUN_ID [--wait S] [--idle S] --serve")


def parse(argv):
    if len(argv) < 2:
        raise ValueError("the database and the run id are required")
    db, run_id, rest = argv[0], int(argv[1]), list(argv[2:])
    pid = run = outputs = None
    wait, idle = DEADLINE, IDLE
    specs = []
    while rest:
        word = rest.pop(0)
        if word == "--serve":
            if specs:
                raise ValueError("--serve takes no transitions: they come on stdin")
            specs = None
        elif word == "--pid":
            pid = int(rest.pop(0))
        elif word == "--outputs":
            outputs = rest.pop(0)
        elif word in ("--wait", "--idle"):
            seconds = float(rest.pop(0))
            if not 0 <= seconds < float("inf"):
                raise ValueError(f"{word} must be a number of seconds >= 0, not {seconds}")
            if word == "--wait":
                wait = seconds
            else:
                idle = seconds
        elif word == "--run":
            state, _, reason = rest.pop(0).partition(":")
            run = (state, reason or None)
        else:
            if specs is None:
                raise ValueError("--serve takes no transitions: they come on stdin")
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
    return db, run_id, pid, run, specs, wait, idle, outputs


def _uri(path):
    """A read-write, never-create SQLite URI: a missing database is an error, not a new file."""
    path = os.path.abspath(path)
    for char, code in (("%", "%25"), ("?", "%3f"), ("#", "%23")):
        path = path.replace(char, code)
    return f"file:{path}?mode=rw"


def with_outputs(specs, outputs_dir):
    """Each transition with the stored text of its outputs (None without a file). Read
    before the transaction: no file I/O while the write lock is held."""
    out = []
    for task_id, attempt, state, exit_code, reason in specs:
        text = None
        path = os.path.join(outputs_dir, f"{task_id}.{attempt}") if outputs_dir and state == "success" else None
        if path and os.path.exists(path):
            from featherflow import outputs  # lazy: only tasks that wrote outputs pay for it

            try:
                text = outputs.to_text(outputs.read(path))
            except outputs.OutputError as exc:
                state, exit_code, reason = "failed", exit_code, str(exc)
        out.append((task_id, attempt, state, exit_code, reason, text))
    return out


def record(db, run_id, pid, run, specs, states, deadline=DEADLINE, kept=None, outputs_dir=None):
    """Apply every transition in one transaction; retry while the database is locked.

    `kept` (a dict) lends a connection from one call to the next: taken from
    kept["conn"] when there, put back there after a commit; any error closes it.
    """
    from featherflow import proc  # lazy: the `_mark` import budget (only --pid calls need it)

    specs = with_outputs(specs, outputs_dir)

    start, boot = proc.identity(pid) if pid else (None, None)
    if pid and (start is None and os.path.isdir("/proc") or not proc.is_alive(pid, start, boot, boot)):
        # Recording a dead pid would leave the run `running` for any process that reuses it.
        raise states.IllegalTransition(f"process {pid} of run {run_id} is gone: not recorded")
    give_up = time.monotonic() + deadline
    while True:
        conn = kept.pop("conn", None) if kept is not None else None
        try:
            if conn is None:
                # The same busy timeout for a kept connection: `deadline` is the same on every call.
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
                now = states.stamp()
                events = []
                if run is not None and run[0] == states.RUNNING:
                    states.apply_run(cur, run_id, run[0], now, run[1], pid, start, boot, events=events)
                for task_id, attempt, state, exit_code, reason, text in specs:
                    if state == states.WAITING:  # a pending attempt waits for a slot of a pool
                        states.note_waiting(cur, run_id, task_id, attempt, reason)
                    else:
                        states.apply_attempt(cur, run_id, task_id, attempt, state, now, exit_code, reason, text)
                if run is not None and run[0] != states.RUNNING:
                    states.apply_run(cur, run_id, run[0], now, run[1], pid, start, boot, events=events)
                cur.execute("COMMIT")
                if events:
                    flush_outbox(db)
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            if kept is not None:
                kept["conn"], conn = conn, None
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= give_up:
                raise
            time.sleep(0.05)
        finally:
            if conn is not None:
                conn.close()


def flush_outbox(db) -> None:
    """Deliver the event this mark wrote, in a process of its own: a notification never
    slows the run (DESIGN: "the outbox"). Not inside any transaction: after the commit."""
    from featherflow import proc  # lazy: only a run's start and end write events

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc.detach([sys.executable, "-m", "featherflow", "--db", os.path.abspath(db), "notify", "flush",
                     "--quiet"], env)
    except OSError:
        pass  # the daemon, the next command or `notify flush` delivers it


def call(argv, states, kept=None) -> int:
    """One `_mark` call: its exit code, and its error on stderr (`kept`: see record)."""
    try:
        db, run_id, pid, run, specs, wait, _, outputs_dir = parse(argv)
        if specs is None:
            raise ValueError("--serve is a whole process, not one call")
    except (ValueError, IndexError) as exc:
        print(f"featherflow _mark: error: {exc} ({USAGE})", file=sys.stderr)
        return 2
    try:
        record(db, run_id, pid, run, specs, states, deadline=wait, kept=kept, outputs_dir=outputs_dir)
    except states.IllegalTransition as exc:
        print(f"featherflow _mark: error: {exc}", file=sys.stderr)
        return 3
    except sqlite3.Error as exc:
        print(f"featherflow _mark: error: cannot record run {run_id} in {db}: {exc}", file=sys.stderr)
        return 4
    return 0


def serve(db, run_id, wait, states, lines, answer, outputs_dir=None) -> None:
    """Answer each call read from `lines` (tab-separated words) with its exit code.

    `lines` ends at the end of input or when it has been idle too long; a None
    in it is a pause between bursts. The calls of a burst share one connection
    (opening one, its pragmas and the checkpoint at its close cost ~2 ms a call);
    a pause and the end close it, so that between bursts the database is not
    held open (a remount read-only, a move aside or a restore sees no writer).
    """
    kept = {}
    try:
        for line in lines:
            if line is None:
                _let_go(kept)
                continue
            words = line.decode("utf-8", "surrogateescape").split("\t")
            head = [db, str(run_id), "--wait", repr(wait)] + (["--outputs", outputs_dir] if outputs_dir else [])
            answer(f"{call(head + words, states, kept)}\n")
    finally:
        _let_go(kept)


def _let_go(kept) -> None:
    conn = kept.pop("conn", None)
    if conn is not None:
        conn.close()


def main(argv=None) -> int:
    from featherflow import states  # here: run as a script, sys.path gets the package only at the bottom

    argv = sys.argv[1:] if argv is None else argv
    if "--serve" not in argv:
        return call(argv, states)
    try:
        db, run_id, _, _, _, wait, idle, outputs_dir = parse(argv)
    except (ValueError, IndexError) as exc:
        print(f"featherflow _mark: error: {exc} ({USAGE})", file=sys.stderr)
        return 2

    def answer(text):
        os.write(1, text.encode())

    serve(db, run_id, wait, states, lines(0, idle), answer, outputs_dir)
    return 0


def lines(fd, idle, burst=BURST):
    """Lines read from `fd` until its end or `idle` seconds without one, and a None
    after the first `burst` seconds of each pause.

    Unbuffered reads, so that no call waits in a buffer while select sees an
    empty pipe; the script sends one call at a time and waits for the answer.
    """
    import select  # lazy: only the co-process (`--serve`) waits on a pipe

    pending = b""
    burst = min(burst, idle)
    while True:
        if not pending and not select.select([fd], [], [], burst)[0]:
            yield None
            if not select.select([fd], [], [], idle - burst)[0]:
                return
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line


# What the generated script runs: a few lines that import this module (from its cached
# bytecode) instead of this file, which `python FILE` would compile on every start (~4 ms).
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mark.py")


def script() -> None:
    """A `_mark` process of its own (started through LAUNCHER, or this file): its exit code."""
    # A Ctrl-C at the terminal (or a TERM/HUP sent to the whole process group)
    # reaches us too: a mark that is under way finishes (it takes milliseconds)
    # and the script, which traps these signals, cancels the run.
    # (_signal, not signal: the latter imports enum, 5 ms on every task transition.)
    import _signal

    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, _signal.SIG_IGN)
    sys.exit(main())


if __name__ == "__main__":
    # Started as a file with `python -I -S`: the package's parent is not on sys.path.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script()
