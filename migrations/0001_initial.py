"""The first schema: runs, task attempts, schedules, fired slots, the scheduler row."""

STATEMENTS = [
    """CREATE TABLE schedule (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        flow_name TEXT NOT NULL,
        cron TEXT NOT NULL,
        tz TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        catchup TEXT NOT NULL DEFAULT 'latest',
        overlap TEXT NOT NULL DEFAULT 'skip',
        on_interrupt TEXT NOT NULL DEFAULT 'resume',
        enabled INTEGER NOT NULL DEFAULT 1,
        description TEXT NOT NULL DEFAULT '',
        flows_dir TEXT NOT NULL,
        tasks_dir TEXT NOT NULL,
        output_dir TEXT NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL
    )""",
    """CREATE TABLE flow_run (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid TEXT NOT NULL UNIQUE,
        flow_name TEXT NOT NULL,
        state TEXT NOT NULL,
        trigger TEXT NOT NULL,
        params TEXT NOT NULL,
        snapshot TEXT NOT NULL,
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
    "CREATE INDEX flow_run_flow_name ON flow_run (flow_name, id)",
    "CREATE INDEX flow_run_state ON flow_run (state, id)",
    "CREATE INDEX flow_run_schedule ON flow_run (schedule_id, id)",
    """CREATE TABLE task_attempt (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES flow_run (id) ON DELETE CASCADE,
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at DATETIME NOT NULL,
        started_at DATETIME,
        ended_at DATETIME,
        exit_code INTEGER,
        reason TEXT,
        UNIQUE (run_id, task_id, attempt)
    )""",
    "CREATE INDEX task_attempt_state ON task_attempt (state)",
    """CREATE TABLE schedule_slot (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        schedule_id INTEGER NOT NULL REFERENCES schedule (id) ON DELETE CASCADE,
        slot_at DATETIME NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        run_id INTEGER REFERENCES flow_run (id) ON DELETE SET NULL,
        created_at DATETIME NOT NULL,
        UNIQUE (schedule_id, slot_at)
    )""",
    "CREATE INDEX schedule_slot_run ON schedule_slot (run_id)",
    """CREATE TABLE scheduler (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        pid_start INTEGER,
        boot_id TEXT,
        started_at DATETIME NOT NULL,
        heartbeat_at DATETIME NOT NULL,
        stopped_at DATETIME
    )""",
]


def up(db):
    for statement in STATEMENTS:
        db.execute_sql(statement)
