"""Helpers the test files share: one way to wait, to fake a run, to read /proc and to
check a database. Fixtures live in conftest.py; tests import these with
`from helpers import ...` (pytest puts tests/ on sys.path: it has no __init__.py).

/proc is read here directly, not through featherflow.proc, so that the tests do
not check the code with itself.
"""

import contextlib
import json
import os
import sqlite3
import time

from featherflow import proc, states
from featherflow.store.records import NewRun


def wait_for(predicate, what="a condition", timeout=30.0, interval=0.01) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def integrity(db) -> str:
    """PRAGMA integrity_check through a read-only connection: "ok", or every problem joined by "; "."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return "; ".join(row[0] for row in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


# -- /proc -------------------------------------------------------------------------------

def read(path) -> bytes:
    """A file's bytes, or b"" if it cannot be read (a process gone meanwhile)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (state first), or [] if it is gone."""
    stat = read(f"/proc/{pid}/stat")
    return stat[stat.rindex(b")") + 2:].split() if stat else []


def alive(pid: int, needle: str = "") -> bool:
    """The process exists, is not a zombie, and (if given) its command line holds `needle`."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return False
    return not needle or needle.encode() in read(f"/proc/{pid}/cmdline").replace(b"\0", b" ")


def group_members(pgid: int):
    """The live (not zombie) processes of process group `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                found.append(int(entry))
    return found


@contextlib.contextmanager
def umask_022():
    """Run the block (and the processes it starts, which inherit it) under umask 022."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# -- runs --------------------------------------------------------------------------------

def this_process() -> dict:
    """The identity of this test process, as fake_run takes it: a run it owns looks alive."""
    me = os.getpid()
    return dict(pid=me, pid_start=proc.start_time(me), boot_id=proc.boot_id())


def fake_run(store, flow="f", tasks=None, *, outcomes=None, depends_on=None, snapshot=None,
             state=states.RUNNING, pid=None, pid_start=None, boot_id=None,
             flows_dir="/f", tasks_dir="/t", output="/o", max_parallel=1):
    """A run made through the state machine without running anything; returns it as stored.

    `tasks` are its task ids (default: the keys of `outcomes`, else "a" and "b").
    `outcomes` maps a task id to the states its attempts end in, in order, e.g.
    {"a": ["failed", "success"]}: each attempt starts and ends so ("running" stays
    running; "pending" and "upstream_failed" are set without a start).
    `depends_on` maps a task id to its upstream ids, in the snapshot made from the
    tasks unless `snapshot` (the text) is given. `pid`, `pid_start`, `boot_id` are
    the process that owns the run (`**this_process()`: this one). `state` is the
    run's own state at the end (queued: never started).
    """
    outcomes = outcomes or {}
    depends_on = depends_on or {}
    tasks = list(tasks if tasks is not None else outcomes or ("a", "b"))
    if snapshot is None:
        snapshot = json.dumps({"name": flow, "tasks": [
            {"id": t, "script": "ok.sh", "depends_on": depends_on.get(t, [])} for t in tasks]})
    run = store.runs.create_run(NewRun(flow, tasks, snapshot, {}, "manual", str(flows_dir), str(tasks_dir), str(output),
                           max_parallel, pid=pid, pid_start=pid_start, boot_id=boot_id))
    if state == states.QUEUED:
        assert not outcomes, "a queued run has no attempt started"
        return store.runs.get_run(run.id)
    store.runs.transition_run(run.id, states.RUNNING)
    for task_id, ends in outcomes.items():
        for number, end in enumerate(ends, 1):
            if end in (states.PENDING, states.UPSTREAM_FAILED):
                store.runs.transition_attempt(run.id, task_id, number, end)
                continue
            store.runs.transition_attempt(run.id, task_id, number, states.RUNNING)
            if end != states.RUNNING:
                code = 0 if end == states.SUCCESS else 3
                store.runs.transition_attempt(run.id, task_id, number, end, exit_code=code,
                                         reason=None if code == 0 else "exit code 3")
    if state != states.RUNNING:
        store.runs.transition_run(run.id, state)
    return store.runs.get_run(run.id)


# -- what only tests do to a database ----------------------------------------------------

def set_process(store, run_id: int, pid: int, pid_start, boot_id) -> None:
    """Say that run `run_id` is held by another process (a dead one, usually)."""
    with store.db.atomic("IMMEDIATE"):
        store.db.execute_sql("UPDATE flow_run SET pid = ?, pid_start = ?, boot_id = ? WHERE id = ?",
                             (pid, pid_start, boot_id, run_id))


def slot_count(store, schedule_id: int) -> int:
    """Slot rows of a schedule, whatever their state."""
    return store.db.execute_sql("SELECT COUNT(*) FROM schedule_slot WHERE schedule_id = ?",
                                (schedule_id,)).fetchone()[0]


def fire_slot(store, schedule_id: int, slot_at, run):
    """Record one fired slot with its queued run, as a tick would; None if already recorded."""
    created = store.schedules.record_decision(schedule_id, fire=[(slot_at, run)])
    return created[0] if created else None
