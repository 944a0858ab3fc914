"""The notification outbox: channels, events and their deliveries.

- channel: where to send (kind command/webhook/email/ping, its target and options as JSON,
  never a password: only the name of the variable or file that holds one), which events,
  flows and schedules it wants, and its storm control (repeat period, or every event).
- event: one row per thing someone may be told about, written in the same transaction
  as the state change it reports (states.apply_run for runs; the scheduler's slot
  decision for `missed`; its start for `scheduler`). `fanned_at` is set when it has been
  turned into deliveries (outside every transaction the payload is built first).
- delivery: one event for one channel, claimed under the write lock before sending
  (`sending`, with the claimer's pid) and marked `sent`/`failed` after; `tries` and the
  receiver's last `answer` kept; every try in delivery_try.
"""

STATEMENTS = [
    """CREATE TABLE channel (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        events TEXT NOT NULL,
        flows TEXT NOT NULL DEFAULT '[]',
        schedules TEXT NOT NULL DEFAULT '[]',
        repeat_seconds REAL NOT NULL,
        every INTEGER NOT NULL DEFAULT 0,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL
    )""",
    """CREATE TABLE event (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        run_id INTEGER REFERENCES flow_run (id) ON DELETE CASCADE,
        schedule_id INTEGER REFERENCES schedule (id) ON DELETE SET NULL,
        slot_at DATETIME,
        detail TEXT NOT NULL DEFAULT '{}',
        created_at DATETIME NOT NULL,
        fanned_at DATETIME
    )""",
    "CREATE INDEX event_unfanned ON event (fanned_at, id)",
    "CREATE INDEX event_run ON event (run_id)",
    """CREATE TABLE delivery (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id INTEGER NOT NULL REFERENCES event (id) ON DELETE CASCADE,
        channel_id INTEGER NOT NULL REFERENCES channel (id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        group_key TEXT NOT NULL,
        state TEXT NOT NULL,
        payload TEXT NOT NULL,
        key TEXT NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        next_try_at DATETIME NOT NULL,
        claimed_by INTEGER,
        claim_start INTEGER,
        claim_boot TEXT,
        claimed_at DATETIME,
        answer TEXT,
        created_at DATETIME NOT NULL,
        sent_at DATETIME,
        UNIQUE (event_id, channel_id)
    )""",
    "CREATE INDEX delivery_due ON delivery (state, next_try_at)",
    "CREATE INDEX delivery_group ON delivery (channel_id, group_key, kind, id)",
    """CREATE TABLE delivery_try (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id INTEGER NOT NULL REFERENCES delivery (id) ON DELETE CASCADE,
        at DATETIME NOT NULL,
        ok INTEGER NOT NULL,
        answer TEXT NOT NULL
    )""",
    "CREATE INDEX delivery_try_delivery ON delivery_try (delivery_id)",
]


def up(db):
    for statement in STATEMENTS:
        db.execute_sql(statement)
