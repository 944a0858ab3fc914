"""Backfills: a durable request to fill a schedule's slots over a range, and its slots.

- backfill: the schedule, the range (UTC instants, both ends included), the options
  (reprocess, max_runs, reverse), its state (running -> success | failed | cancelled)
  and when it was created, last updated and ended.
- backfill_slot: one row per slot of the range: what the backfill does with it
  (`action` run | resume | rerun | leave), how far it got (`state` pending ->
  launched -> done), its run, the `resumes` count of that run before a resume or
  re-run was launched (the resume happened once that count grew: a stale launch can
  never resume it twice), the process that launched it, how many launches it took,
  and the `outcome` (the run's end state, or why the slot was left alone).

The exactly-once key of a slot stays the scheduler's: schedule_slot UNIQUE
(schedule_id, slot_at); a backfill fires a slot in the same transaction as that row.
"""

STATEMENTS = [
    """CREATE TABLE backfill (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        schedule_id INTEGER NOT NULL REFERENCES schedule (id) ON DELETE CASCADE,
        range_from DATETIME NOT NULL,
        range_to DATETIME NOT NULL,
        reprocess TEXT NOT NULL,
        max_runs INTEGER NOT NULL,
        reverse INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        reason TEXT,
        created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL,
        ended_at DATETIME
    )""",
    "CREATE INDEX backfill_state ON backfill (state, id)",
    "CREATE INDEX backfill_schedule ON backfill (schedule_id, id)",
    """CREATE TABLE backfill_slot (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        backfill_id INTEGER NOT NULL REFERENCES backfill (id) ON DELETE CASCADE,
        slot_at DATETIME NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        run_id INTEGER REFERENCES flow_run (id) ON DELETE SET NULL,
        resumes INTEGER,
        launcher_pid INTEGER,
        launcher_start INTEGER,
        launcher_boot TEXT,
        tries INTEGER NOT NULL DEFAULT 0,
        outcome TEXT,
        reason TEXT,
        UNIQUE (backfill_id, slot_at)
    )""",
    "CREATE INDEX backfill_slot_run ON backfill_slot (run_id)",
]


def up(db):
    for statement in STATEMENTS:
        db.execute_sql(statement)
