"""Pools: named limits on how many tasks run at once across every run of a database.

- pool: a name and its number of slots, set by `featherflow pool set`. A pool that
  a task names but that has no row here has one slot. The slots themselves are
  not rows: a task holds one with a `flock` on a file beside the database
  (<database dir>/pools/NAME/slot.K), which the kernel releases when the holder
  dies, so no crash can leave a slot taken.
"""

STATEMENTS = [
    """CREATE TABLE pool (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        slots INTEGER NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL
    )""",
]


def up(db):
    for statement in STATEMENTS:
        db.execute_sql(statement)
