"""Each run's snapshot in a table of its own, `run_snapshot`, keyed by run id.

SQLite rewrites a whole row (its overflow pages included) on every UPDATE:
with the snapshot in flow_run, each state change of a run with a large flow
wrote the whole definition again (a 50 MB description grew the database by
100 MB), and every query that read flow_run rows read it too. Now the
snapshot is written once, when the run is created (and again only when a
resume replaces the definition); `_mark` and `runs list` never touch it.

flow_run is rebuilt without the column (SQLite's documented 12-step way:
DROP COLUMN needs SQLite 3.35, newer than some systems this runs on), with
its indexes from 0001 and 0002 and its AUTOINCREMENT counter, so a run id of
a deleted run is still never given again. db.apply_migrations runs this with
foreign keys off (dropping flow_run would otherwise delete every attempt by
cascade) and checks them before the version is committed.
"""

COLUMNS = ("id, uid, flow_name, state, trigger, params, flows_dir, tasks_dir, output_dir, "
           "max_parallel, schedule_id, scheduled_at, created_at, started_at, ended_at, pid, "
           "pid_start, boot_id, reason, resumes, auto_resumed")

STATEMENTS = [
    """CREATE TABLE run_snapshot (
        run_id INTEGER NOT NULL PRIMARY KEY REFERENCES flow_run (id) ON DELETE CASCADE,
        snapshot TEXT NOT NULL
    )""",
    "INSERT INTO run_snapshot (run_id, snapshot) SELECT id, snapshot FROM flow_run",
    """CREATE TABLE flow_run_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid TEXT NOT NULL UNIQUE,
        flow_name TEXT NOT NULL,
        state TEXT NOT NULL,
        trigger TEXT NOT NULL,
        params TEXT NOT NULL,
        flows_dir TEXT NOT NULL,
        tasks_dir TEXT NOT NULL,
        output_dir TEXT NOT NULL,
        max_parallel INTEGER NOT NULL,
        schedule_id INTEGER REFERENCES schedule (id) ON DELETE SET NULL,
        scheduled_at DATETIME,
        created_at DATETIME NOT NULL,
        started_at DATETIME,
        ended_at DATETIME,
        pid INTEGER,
        pid_start INTEGER,
        boot_id TEXT,
        reason TEXT,
        resumes INTEGER NOT NULL DEFAULT 0,
        auto_resumed INTEGER NOT NULL DEFAULT 0
    )""",
    f"INSERT INTO flow_run_new ({COLUMNS}) SELECT {COLUMNS} FROM flow_run",
    "DROP TABLE flow_run",
    "ALTER TABLE flow_run_new RENAME TO flow_run",
    "CREATE INDEX flow_run_flow_name ON flow_run (flow_name, id)",
    "CREATE INDEX flow_run_state ON flow_run (state, id)",
    "CREATE INDEX flow_run_schedule ON flow_run (schedule_id, id)",
    "CREATE INDEX flow_run_created ON flow_run (created_at)",
    "CREATE INDEX flow_run_flow_state ON flow_run (flow_name, state, id)",
]

FOREIGN_KEYS_OFF = True  # db.apply_migrations: this migration rebuilds a referenced table


def up(db):
    row = db.execute_sql("SELECT seq FROM sqlite_sequence WHERE name = 'flow_run'").fetchone()
    for statement in STATEMENTS:
        db.execute_sql(statement)
    if row is not None:  # the counter of the old table, never lower than the rows copied
        db.execute_sql("DELETE FROM sqlite_sequence WHERE name = 'flow_run'")
        db.execute_sql("INSERT INTO sqlite_sequence (name, seq) VALUES ('flow_run', "
                       "MAX(?, (SELECT COALESCE(MAX(id), 0) FROM flow_run)))", [row[0]])
