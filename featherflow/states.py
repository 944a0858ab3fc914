"""The state machine of runs and task attempts, and the one place that moves them.

Standard library only: the `_mark` fast path imports this on every task
transition. Both apply functions take a DB-API cursor inside a transaction the
caller opened (BEGIN IMMEDIATE), so peewee code and the raw `_mark` path move
states through exactly the same checks.

Repeating a transition is harmless (a crash can fall between doing and
recording); an illegal one raises IllegalTransition and changes nothing.
"""

import time

from featherflow.errors import ConflictError

SCHEMA_VERSION = 8  # the number of the newest migration

# The scheduler writes its heartbeat every tick, and a tick comes at least every
# HEARTBEAT_EVERY seconds. A scheduler whose heartbeat is older than HEARTBEAT_STALE
# (two and a half ticks) is not running: it is hung or gone. The daemon, `doctor` and
# the dashboard use these; they live in the kernel so the pure screen loads no store.
HEARTBEAT_EVERY = 60.0
HEARTBEAT_STALE = 150.0

QUEUED, RUNNING, SUCCESS, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "success", "failed", "cancelled", "interrupted")
PENDING, UPSTREAM_FAILED, SKIPPED = "pending", "upstream_failed", "skipped"
# Not a state: the word of `_mark` that notes why a pending attempt waits (note_waiting).
WAITING = "waiting"

# What started a run (flow_run.trigger, FEATHERFLOW_TRIGGER): by hand, a schedule's slot, a backfill's slot.
TRIGGERS = ("manual", "schedule", "backfill")

RUN_STATES = (QUEUED, RUNNING, SUCCESS, FAILED, CANCELLED, INTERRUPTED)
ATTEMPT_STATES = (PENDING, RUNNING, SUCCESS, FAILED, UPSTREAM_FAILED, SKIPPED, CANCELLED, INTERRUPTED)
RUN_FINISHED = (SUCCESS, FAILED, CANCELLED, INTERRUPTED)
RESUMABLE = (FAILED, INTERRUPTED)
RERUNNABLE = (SUCCESS, CANCELLED)  # a backfill's --reprocess all runs these again (rerun=True)
ATTEMPT_FINISHED = (SUCCESS, FAILED, UPSTREAM_FAILED, SKIPPED, CANCELLED, INTERRUPTED)

RUN_MOVES = {
    QUEUED: (RUNNING, FAILED, CANCELLED, INTERRUPTED),
    RUNNING: (SUCCESS, FAILED, CANCELLED, INTERRUPTED),
    FAILED: (RUNNING,),  # resume only
    INTERRUPTED: (RUNNING,),  # resume only
    SUCCESS: (),
    CANCELLED: (),
}
ATTEMPT_MOVES = {
    PENDING: (RUNNING, UPSTREAM_FAILED, SKIPPED, CANCELLED),  # skipped: its run_if said no
    RUNNING: (SUCCESS, FAILED, CANCELLED, INTERRUPTED),
}

# What a run's end does to attempts still open, so that no attempt stays
# `running` (or waits `pending`) in a run that is over.
_CASCADE = {
    CANCELLED: {RUNNING: CANCELLED, PENDING: CANCELLED},
    INTERRUPTED: {RUNNING: INTERRUPTED},
    FAILED: {RUNNING: FAILED},
}


class IllegalTransition(ConflictError):
    """A move the state machine does not allow."""


def stamp() -> str:
    """Now in UTC in the stored text form (clock.to_text's), without datetime, whose import
    costs `_mark` 2 ms: the one clock reading that does not go through clock.py."""
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}"


# The event a run's move becomes in the notification outbox (DESIGN: "the outbox").
RUN_EVENTS = {RUNNING: "started", SUCCESS: "succeeded", FAILED: "failed",
              CANCELLED: "cancelled", INTERRUPTED: "interrupted"}


def apply_run(cur, run_id, new, now=None, reason=None, pid=None, pid_start=None,
              boot_id=None, resume=False, events=None, rerun=False) -> str:
    """Move run `run_id` to `new`; returns the state it was in.

    The move's event goes into the outbox in the same transaction, when a channel
    is enabled (no channel: nothing to tell, and adding one later does not replay
    history). `events`, a list, gets the id of an event written. `rerun` lets a finished
    run (RERUNNABLE) run again: only a backfill's `--reprocess all` asks for it.
    """
    now = now or stamp()
    row = cur.execute("SELECT state FROM flow_run WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise IllegalTransition(f"run {run_id} does not exist")
    old = row[0]
    if old == new:
        if pid is not None:
            cur.execute("UPDATE flow_run SET pid = ?, pid_start = ?, boot_id = ? WHERE id = ?",
                        (pid, pid_start, boot_id, run_id))
        return old
    rerunning = rerun and new == RUNNING and old in RERUNNABLE
    if not rerunning and (new not in RUN_MOVES.get(old, ()) or (old in RESUMABLE and not resume)):
        hint = " (resume it with `featherflow runs resume`)" if old in RESUMABLE else ""
        raise IllegalTransition(f"run {run_id} cannot go from {old} to {new}{hint}")
    if new == SUCCESS:
        open_task = cur.execute(
            "SELECT task_id FROM task_attempt WHERE run_id = ? AND state IN (?, ?) LIMIT 1",
            (run_id, PENDING, RUNNING)).fetchone()
        if open_task is not None:
            raise IllegalTransition(
                f"run {run_id} cannot succeed while task {open_task[0]!r} is still open")
    sets, values = ["state = ?", "reason = ?"], [new, reason]
    if new == RUNNING:
        sets.append("started_at = COALESCE(started_at, ?)")
        values.append(now)
        sets.append("ended_at = NULL")
    if new in RUN_FINISHED:
        sets.append("ended_at = ?")
        values.append(now)
    if pid is not None:
        sets += ["pid = ?", "pid_start = ?", "boot_id = ?"]
        values += [pid, pid_start, boot_id]
    cur.execute(f"UPDATE flow_run SET {', '.join(sets)} WHERE id = ?", values + [run_id])
    for open_state, closed in _CASCADE.get(new, {}).items():
        cur.execute(
            "UPDATE task_attempt SET state = ?, ended_at = ?, reason = COALESCE(reason, ?) "
            "WHERE run_id = ? AND state = ?",
            (closed, now, f"run {new}", run_id, open_state))
    record_event(cur, RUN_EVENTS[new], now, run_id=run_id, events=events)
    return old


def record_event(cur, kind, now, run_id=None, schedule_id=None, slot_at=None, detail="{}",
                 events=None):
    """Write an outbox event inside the caller's transaction, if any channel is enabled."""
    if cur.execute("SELECT 1 FROM channel WHERE enabled = 1 LIMIT 1").fetchone() is None:
        return None
    cur.execute("INSERT INTO event (kind, run_id, schedule_id, slot_at, detail, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (kind, run_id, schedule_id, slot_at, detail, now))
    if events is not None:
        events.append(cur.lastrowid)
    return cur.lastrowid


def _require_running_run(cur, run_id):
    run = cur.execute("SELECT state FROM flow_run WHERE id = ?", (run_id,)).fetchone()
    if run is None:
        raise IllegalTransition(f"run {run_id} does not exist")
    if run[0] != RUNNING:
        raise IllegalTransition(f"run {run_id} is {run[0]}: no attempt can start")


def apply_attempt(cur, run_id, task_id, attempt, new, now=None, exit_code=None,
                  reason=None, outputs=None) -> str:
    """Move attempt `attempt` of `task_id` to `new`; returns its previous state.

    `outputs` (the stored text of the task's outputs) is kept with a success, in the
    same transaction: a success is never recorded without what it produced.

    An attempt that does not exist yet is created (a retry, or a resume) when
    it is the next number for that task, the previous one has finished, and it
    starts `pending` or `running`. Only a running run starts attempts.
    """
    now = now or stamp()
    row = cur.execute(
        "SELECT state FROM task_attempt WHERE run_id = ? AND task_id = ? AND attempt = ?",
        (run_id, task_id, attempt)).fetchone()
    if new == RUNNING and (row is None or row[0] != RUNNING):
        _require_running_run(cur, run_id)
    if row is None:
        if new not in (PENDING, RUNNING):
            raise IllegalTransition(f"attempt {attempt} of task {task_id!r} in run {run_id} does not exist")
        last = cur.execute(
            "SELECT attempt, state FROM task_attempt WHERE run_id = ? AND task_id = ? "
            "ORDER BY attempt DESC LIMIT 1", (run_id, task_id)).fetchone()
        if last is None:
            raise IllegalTransition(f"run {run_id} has no task {task_id!r}")
        if attempt != last[0] + 1:
            raise IllegalTransition(
                f"attempt {attempt} of task {task_id!r} is out of order (next is {last[0] + 1})")
        if last[1] not in ATTEMPT_FINISHED:
            raise IllegalTransition(
                f"attempt {attempt} of task {task_id!r} cannot start: attempt {last[0]} is {last[1]}")
        _require_running_run(cur, run_id)
        cur.execute(
            "INSERT INTO task_attempt (run_id, task_id, attempt, state, created_at, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, task_id, attempt, new, now, now if new == RUNNING else None))
        return PENDING
    old = row[0]
    if old == new:
        return old
    if new not in ATTEMPT_MOVES.get(old, ()):
        raise IllegalTransition(
            f"task {task_id!r} attempt {attempt} of run {run_id} cannot go from {old} to {new}")
    if new == RUNNING:
        cur.execute(
            "UPDATE task_attempt SET state = ?, started_at = ?, reason = NULL "
            "WHERE run_id = ? AND task_id = ? AND attempt = ?",
            (new, now, run_id, task_id, attempt))
    else:
        cur.execute(
            "UPDATE task_attempt SET state = ?, ended_at = ?, exit_code = ?, reason = ?, outputs = ? "
            "WHERE run_id = ? AND task_id = ? AND attempt = ?",
            (new, now, exit_code, reason, outputs if new == SUCCESS else None, run_id, task_id, attempt))
    return old


def note_waiting(cur, run_id, task_id, attempt, reason) -> None:
    """Say why a pending attempt waits (for a slot of a pool): its reason, until it starts
    (apply_attempt clears it then). Not a move: an attempt that is no longer pending is
    left as it is, so a late note changes nothing."""
    cur.execute("UPDATE task_attempt SET reason = ? WHERE run_id = ? AND task_id = ? AND attempt = ? "
                "AND state = ?", (reason, run_id, task_id, attempt, PENDING))
