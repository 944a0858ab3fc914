"""The retention policy: which finished runs the scheduler deletes by itself, once a day.

- retention_rule: one row per scope, `*` for the global rule, else a flow name (a flow's
  rule replaces the global one for that flow). `older_than_seconds` and `keep_last` as
  `runs prune` takes them (NULL: no limit of that kind); `enabled` 0 is an explicit "off".
- retention_applied: one row (id 1), when the policy last ran to its end and what it
  deleted, so the daemon applies it once a day across restarts and doctor can tell.

A database that never had a run (a new one) gets the default global rule (older than
30 days, always keeping the newest 100 runs of each flow); one with history keeps
today's behaviour, nothing deleted by itself, until `featherflow retention set`.
"""

DEFAULT_OLDER_THAN = 30 * 86400
DEFAULT_KEEP_LAST = 100

STATEMENTS = [
    """CREATE TABLE retention_rule (
        scope TEXT NOT NULL PRIMARY KEY,
        older_than_seconds INTEGER,
        keep_last INTEGER,
        enabled INTEGER NOT NULL DEFAULT 1,
        updated_at DATETIME NOT NULL
    )""",
    """CREATE TABLE retention_applied (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at DATETIME NOT NULL,
        runs INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    )""",
]


def up(db):
    had_runs = db.execute_sql("SELECT EXISTS (SELECT 1 FROM flow_run) OR EXISTS "
                              "(SELECT 1 FROM sqlite_sequence WHERE name = 'flow_run' AND seq > 0)").fetchone()[0]
    for statement in STATEMENTS:
        db.execute_sql(statement)
    if not had_runs:
        db.execute_sql("INSERT INTO retention_rule (scope, older_than_seconds, keep_last, enabled, updated_at) "
                       "VALUES ('*', ?, ?, 1, strftime('%Y-%m-%d %H:%M:%f000', 'now'))",
                       [DEFAULT_OLDER_THAN, DEFAULT_KEEP_LAST])
