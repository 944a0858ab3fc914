"""Everything that touches SQLite: opening and migrating the file, the models, and the
queries and transactions on runs, attempts, schedules and slots. Other layers get
plain records (records.py), never a peewee row.

`Store` is one database: `store.runs` (runs and attempts) and `store.schedules`
(schedules, slots, the scheduler's row), `store.outbox` (notification channels,
events and deliveries) and `store.rules` (the retention policy), composed over one connection.
"""

from peewee import SqliteDatabase

from featherflow.store.outbox import OutboxStore
from featherflow.store.rules import RuleStore
from featherflow.store.runs import RunStore
from featherflow.store.schedules import ScheduleStore


class Store:
    def __init__(self, db: SqliteDatabase):
        self.db = db
        self.runs = RunStore(db)
        self.schedules = ScheduleStore(db, self.runs)
        self.outbox = OutboxStore(db)
        self.rules = RuleStore(db)  # the retention policy (store/retention.py applies it)

    def close(self) -> None:
        self.db.close()

    def compact(self, vacuum: bool = True) -> None:
        """Give space back after deletions: checkpoint the WAL; VACUUM when a quarter is free
        (unless not `vacuum`: the free pages are then reused by the rows written next)."""
        pages = self.db.execute_sql("PRAGMA page_count").fetchone()[0]
        free = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
        if vacuum and pages and free * 4 >= pages:
            self.db.execute_sql("VACUUM")
        self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
